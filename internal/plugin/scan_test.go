package plugin_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/keymint/keymint/internal/plugin"
	"github.com/keymint/keymint/internal/token"
)

func mint(t *testing.T, prefix string) string {
	t.Helper()
	tok, err := token.Mint(prefix)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// broken returns tok with its last checksum character changed: the shape
// of a token, a checksum that does not match.
func broken(t *testing.T, tok string) string {
	t.Helper()
	last := tok[len(tok)-1]
	repl := byte('A')
	if last == 'A' {
		repl = 'B'
	}
	b := tok[:len(tok)-1] + string(repl)
	if _, err := token.Parse(b); err != token.ErrChecksum {
		t.Fatalf("broken token parses with %v, want a checksum error", err)
	}
	return b
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The scan tests need no cluster: no --kubeconfig is passed.
var noCluster cluster

func TestScan(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	leaked := mint(t, token.DefaultPrefix)
	custom := mint(t, "billing")
	inGit := mint(t, token.DefaultPrefix)
	inBinary := mint(t, token.DefaultPrefix)
	typo := broken(t, mint(t, token.DefaultPrefix))

	write(t, filepath.Join(dir, "deploy", ".env"), "# exporter\nURL=https://example.test\nKEYMINT_TOKEN="+leaked+"\n")
	write(t, filepath.Join(dir, "src", "client.go"), "package client\n\nconst auth = \"Bearer "+custom+"\" // TODO remove\n")
	write(t, filepath.Join(dir, "docs", "typo.md"), "A token with a typo: "+typo+"\n")
	write(t, filepath.Join(dir, ".git", "objects", "packed"), leaked+"\n"+inGit+"\n")
	write(t, filepath.Join(dir, "bin", "tool"), "\x7fELF\x00\x00"+inBinary+"\n")
	all := []string{leaked, custom, inGit, inBinary}

	t.Run("finds checksummed tokens, prints file:line and prefix only", func(t *testing.T) {
		r := noCluster.run(t, plugin.Options{}, "scan", dir)
		g.Expect(r.code).To(Equal(1), r.stderr)
		g.Expect(r.stdout).To(Equal(
			filepath.Join(dir, "deploy", ".env") + ":3: " + token.Display(leaked) + "...\n" +
				filepath.Join(dir, "src", "client.go") + ":3: " + token.Display(custom) + "...\n"))
		g.Expect(r.stderr).To(HavePrefix("scan: 2 keymint token(s) found in 2 of 3 file(s) scanned; 1 binary file(s) skipped\n"))
		for _, tok := range all {
			// Not the token, nor one character more of it than status
			// shows anyway.
			g.Expect(r.stdout + r.stderr).NotTo(ContainSubstring(tok[:token.DisplayLen+1]))
		}
	})

	t.Run("a broken checksum is not a token", func(t *testing.T) {
		r := noCluster.run(t, plugin.Options{}, "scan", filepath.Join(dir, "docs"))
		g.Expect(r.code).To(Equal(0), r.stderr)
		g.Expect(r.stdout).To(BeEmpty())
		g.Expect(r.stderr).To(Equal("scan: 0 keymint token(s) found in 0 of 1 file(s) scanned\n"))
	})

	t.Run("files and standard input", func(t *testing.T) {
		r := noCluster.run(t, plugin.Options{Streams: streamsIn(strings.NewReader("a\nb\n" + leaked + "\n"))},
			"scan", filepath.Join(dir, "docs", "typo.md"), "-")
		g.Expect(r.code).To(Equal(1), r.stderr)
		g.Expect(r.stdout).To(Equal("(stdin):3: " + token.Display(leaked) + "...\n"))
	})

	t.Run("an unreadable path is an error, even with tokens found", func(t *testing.T) {
		r := noCluster.run(t, plugin.Options{}, "scan", dir, filepath.Join(dir, "nope"))
		g.Expect(r.code).To(Equal(2))
		g.Expect(r.stdout).To(ContainSubstring(token.Display(leaked)))
		g.Expect(r.stderr).To(ContainSubstring("scan: " + filepath.Join(dir, "nope") + ": stat " + filepath.Join(dir, "nope") + ": no such file or directory\n"))
		g.Expect(r.stderr).To(ContainSubstring("1 path(s) could not be read"))

		r = noCluster.run(t, plugin.Options{}, "scan")
		g.Expect(r.code).To(Equal(2))
		g.Expect(r.stderr).To(Equal("error: scan needs at least one PATH (a file, a directory, or - for standard input)\n"))

		r = noCluster.run(t, plugin.Options{}, "scan", "--recursive", dir)
		g.Expect(r.code).To(Equal(2))
		g.Expect(r.stderr).To(Equal("error: unknown flag: --recursive\n"))
	})
}

func TestFindTokens(t *testing.T) {
	km := mint(t, token.DefaultPrefix)
	other := mint(t, "acme")
	typo := broken(t, km)
	cases := map[string]struct {
		line string
		want []string
	}{
		"alone":                            {km, []string{token.Display(km)}},
		"after a word and an underscore":   {"KEYMINT_" + km, []string{token.Display(km)}},
		"glued to lowercase letters":       {"xyz" + km, []string{token.Display(km)}}, // the prefix is found inside the run
		"two on a line":                    {km + " " + other, []string{token.Display(km), token.Display(other)}},
		"followed by more characters":      {km + "XYZ", []string{token.Display(km)}},
		"a broken checksum":                {typo, nil},
		"cut short":                        {km[:len(km)-1], nil},
		"no prefix":                        {km[len(token.DefaultPrefix):], nil},
		"an uppercase prefix is not valid": {strings.ToUpper(km[:2]) + km[2:], nil},
		// As files hold them: after =, : and quotes, with and without spaces.
		".env":                          {"KEYMINT_TOKEN=" + km, []string{token.Display(km)}},
		".env, spaces around =":         {"KEYMINT_TOKEN = " + km, []string{token.Display(km)}},
		"shell export, double quotes":   {`export T="` + km + `"`, []string{token.Display(km)}},
		"shell, single quotes":          {"T='" + km + "'", []string{token.Display(km)}},
		"backticks":                     {"T=`" + km + "`", []string{token.Display(km)}},
		"JSON":                          {`{"token":"` + km + `"}`, []string{token.Display(km)}},
		"JSON, spaces":                  {`{"token": "` + km + `"}`, []string{token.Display(km)}},
		"YAML":                          {"token: " + km, []string{token.Display(km)}},
		"YAML, no space after :":        {"token:" + km, []string{token.Display(km)}},
		"YAML, double quotes":           {`token: "` + km + `"`, []string{token.Display(km)}},
		"shell export":                  {"export T=" + km, []string{token.Display(km)}},
		"URL query":                     {"https://example.test/?t=" + km + "&x=1", []string{token.Display(km)}},
		"Secret stringData entry":       {"  token: " + km, []string{token.Display(km)}},
		"a broken checksum after =":     {"KEYMINT_TOKEN=" + typo, nil},
		"a broken checksum in JSON":     {`{"token":"` + typo + `"}`, nil},
		"glued to a key of lower alnum": {"token=x" + km, []string{token.Display(km)}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			NewWithT(t).Expect(plugin.FindTokens([]byte(c.line))).To(Equal(c.want))
		})
	}
}

func TestScanFindsTokensAsSecretsHoldThem(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	tok := mint(t, "billing")
	typo := broken(t, mint(t, token.DefaultPrefix))
	// What `kubectl get secret -o yaml` shows, committed by mistake.
	write(t, filepath.Join(dir, "secret.yaml"), "apiVersion: v1\nkind: Secret\ndata:\n  token: "+base64.StdEncoding.EncodeToString([]byte(tok))+
		"\n  typo: "+base64.StdEncoding.EncodeToString([]byte(typo))+"\n")
	r := noCluster.run(t, plugin.Options{}, "scan", dir)
	g.Expect(r.code).To(Equal(1), r.stderr)
	g.Expect(r.stdout).To(Equal(filepath.Join(dir, "secret.yaml") + ":4: " + token.Display(tok) + "... (base64-encoded)\n"))
	g.Expect(r.stdout + r.stderr).NotTo(ContainSubstring(tok[:token.DisplayLen+1]))
	g.Expect(r.stdout + r.stderr).NotTo(ContainSubstring(base64.StdEncoding.EncodeToString([]byte(tok))[:24]))
}

func TestScanSkipsLinesMarkedToIgnore(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	vector, leaked := mint(t, token.DefaultPrefix), mint(t, token.DefaultPrefix)
	encoded := mint(t, token.DefaultPrefix)
	write(t, filepath.Join(dir, "vectors_test.go"), "var v = \""+vector+"\" // "+plugin.IgnoreMarker+"\nvar w = \""+leaked+"\"\n"+
		"KEYMINT_TOKEN_B64="+base64.StdEncoding.EncodeToString([]byte(encoded))+" # "+plugin.IgnoreMarker+"\n")
	r := noCluster.run(t, plugin.Options{}, "scan", dir)
	g.Expect(r.code).To(Equal(1), r.stderr)
	g.Expect(r.stdout).To(Equal(filepath.Join(dir, "vectors_test.go") + ":2: " + token.Display(leaked) + "...\n"))
}

// encodings are the ways FindEncodedTokens decodes: base64 with the
// standard and the URL alphabets, padded or not, holding the token alone or
// at any byte offset among other bytes. The bytes 0xfb 0xff 0xbf encode to
// the characters that differ between the alphabets ("+/+/" or "-_-_"); a
// token's own characters never do.
var encodings = []struct {
	name   string
	encode func(tok string) string
}{
	{"base64", func(tok string) string { return base64.StdEncoding.EncodeToString([]byte(tok)) }},
	{"base64 unpadded", func(tok string) string { return base64.RawStdEncoding.EncodeToString([]byte(tok)) }},
	{"base64url", func(tok string) string { return base64.URLEncoding.EncodeToString([]byte(tok)) }},
	{"base64url unpadded", func(tok string) string { return base64.RawURLEncoding.EncodeToString([]byte(tok)) }},
	{"base64, token at byte 1", func(tok string) string {
		return base64.StdEncoding.EncodeToString([]byte("\xff" + tok + "\xfb\xff"))
	}},
	{"base64, token at byte 2", func(tok string) string {
		return base64.StdEncoding.EncodeToString([]byte("\xfb\xff" + tok + "\xbf"))
	}},
	{"base64, token at byte 3", func(tok string) string {
		return base64.StdEncoding.EncodeToString([]byte("\xfb\xff\xbf" + tok))
	}},
	{"base64url, token at byte 2", func(tok string) string {
		return base64.URLEncoding.EncodeToString([]byte("\xfb\xff" + tok + "\n"))
	}},
	{"base64url unpadded, token at byte 1", func(tok string) string {
		return base64.RawURLEncoding.EncodeToString([]byte("\xff" + tok + "\xfb\xff"))
	}},
	{"base64 of a .env file", func(tok string) string {
		return base64.StdEncoding.EncodeToString([]byte("URL=https://example.test\nKEYMINT_TOKEN=" + tok + "\n"))
	}},
}

// encodedForms are the places an encoded token is written: after =, : and
// quotes, with and without spaces. A key glued to the value with = is made
// of base64 characters itself, "=" included; the keys A= to ABCD= put the
// value at each of the four offsets a base64 quantum can start at.
var encodedForms = []struct{ name, format string }{
	{"alone", "%s"},
	{".env", "KEYMINT_TOKEN_B64=%s"},
	{".env, spaces around =", "KEYMINT_TOKEN_B64 = %s"},
	{"key A=", "A=%s"},
	{"key AB=", "AB=%s"},
	{"key ABC=", "ABC=%s"},
	{"key ABCD=", "ABCD=%s"},
	{"key of base64url characters", "keymint-token_b64=%s"},
	{"shell export", "export T=%s"},
	{"shell export, double quotes", `export T="%s"`},
	{"shell, single quotes", "T='%s'"},
	{"backticks", "T=`%s`"},
	{"JSON", `{"token":"%s"}`},
	{"JSON, spaces", `{"token": "%s"}`},
	{"YAML", "token: %s"},
	{"YAML, no space after :", "token:%s"},
	{"YAML, double quotes", `token: "%s"`},
	{"Secret data entry", "  token: %s"},
	{"Secret as JSON", `{"apiVersion":"v1","kind":"Secret","data":{"token":"%s"}}`},
	{"URL query", "https://example.test/?t=%s&x=1"},
}

func TestFindEncodedTokens(t *testing.T) {
	for _, form := range encodedForms {
		for _, enc := range encodings {
			t.Run(form.name+"/"+enc.name, func(t *testing.T) {
				g := NewWithT(t)
				// A fresh token per row: no real token sits in the repository.
				tok := mint(t, "billing")
				line := fmt.Sprintf(form.format, enc.encode(tok))
				g.Expect(plugin.FindEncodedTokens([]byte(line))).To(Equal([]string{token.Display(tok)}), line)
				g.Expect(plugin.FindTokens([]byte(line))).To(BeEmpty(), line)

				// The same line with a checksum that does not match.
				typo := fmt.Sprintf(form.format, enc.encode(broken(t, mint(t, "billing"))))
				g.Expect(plugin.FindEncodedTokens([]byte(typo))).To(BeEmpty(), typo)
			})
		}
	}
}

func TestFindEncodedTokensRefusesLookAlikes(t *testing.T) {
	km := mint(t, token.DefaultPrefix)
	b64 := base64.StdEncoding.EncodeToString
	cases := map[string]struct {
		line string
		want []string
	}{
		"two on a line": {"A=" + b64([]byte(km)) + " B=" + b64([]byte("x"+km)),
			[]string{token.Display(km), token.Display(km)}},
		"two in JSON": {`{"a":"` + b64([]byte(km)) + `","b":"` + b64([]byte(km)) + `"}`,
			[]string{token.Display(km), token.Display(km)}},
		"a broken checksum":          {"T=" + b64([]byte(broken(t, km))), nil},
		"cut short":                  {"T=" + b64([]byte(km[:len(km)-1])), nil},
		"one character of it lost":   {"T=" + b64([]byte(km))[1:], nil},
		"no prefix":                  {"T=" + b64([]byte(km[len(token.DefaultPrefix):])), nil},
		"an uppercase prefix":        {"T=" + b64([]byte(strings.ToUpper(km[:2])+km[2:])), nil},
		"the plain token":            {"T=" + km, nil},
		"long base64 of other bytes": {"T=" + b64(bytes.Repeat([]byte("km_0123456789"), 40)), nil},
		"a long run of one letter":   {strings.Repeat("A", 10000), nil},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			NewWithT(t).Expect(plugin.FindEncodedTokens([]byte(c.line))).To(Equal(c.want))
		})
	}
}

func TestScanFindsEncodedTokensAfterKeys(t *testing.T) {
	g := NewWithT(t)
	dir := t.TempDir()
	env, shell, js := mint(t, token.DefaultPrefix), mint(t, "billing"), mint(t, "acme")
	b64 := func(tok string) string { return base64.StdEncoding.EncodeToString([]byte(tok)) }
	write(t, filepath.Join(dir, "a.env"), "# exporter\nKEYMINT_TOKEN_B64="+b64(env)+"\n")
	write(t, filepath.Join(dir, "b.sh"), "#!/bin/sh\nexport T="+b64(shell)+"\n")
	write(t, filepath.Join(dir, "c.json"), `{"token":"`+base64.RawURLEncoding.EncodeToString([]byte(js))+`"}`+"\n")
	r := noCluster.run(t, plugin.Options{}, "scan", dir)
	g.Expect(r.code).To(Equal(1), r.stderr)
	g.Expect(r.stdout).To(Equal(
		filepath.Join(dir, "a.env") + ":2: " + token.Display(env) + "... (base64-encoded)\n" +
			filepath.Join(dir, "b.sh") + ":2: " + token.Display(shell) + "... (base64-encoded)\n" +
			filepath.Join(dir, "c.json") + ":1: " + token.Display(js) + "... (base64-encoded)\n"))
	for _, tok := range []string{env, shell, js} {
		g.Expect(r.stdout + r.stderr).NotTo(ContainSubstring(tok[:token.DisplayLen+1]))
		g.Expect(r.stdout + r.stderr).NotTo(ContainSubstring(b64(tok)[:24]))
	}
}

// Every combination of what can surround an encoded token: bytes before and
// after it inside the encoding, base64 characters glued before the value,
// both alphabets, padded or not.
func TestFindEncodedTokensAtEveryOffset(t *testing.T) {
	tok := mint(t, "acme")
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		for before := range 6 {
			for after := range 4 {
				for glue := range 5 {
					value := enc.EncodeToString([]byte(strings.Repeat("\xfb", before) + tok + strings.Repeat("\xff", after)))
					line := "x " + "Kz9+_="[:glue] + value + " y"
					if got := plugin.FindEncodedTokens([]byte(line)); len(got) != 1 || got[0] != token.Display(tok) {
						t.Errorf("%q: found %q, want the token once", line, got)
					}
				}
			}
		}
	}
}

// FindEncodedTokens is linear in the line's length: a minified file or a
// data: URL can be one long line.
func BenchmarkFindEncodedTokens(b *testing.B) {
	blob := make([]byte, 3<<20/4)
	for i := range blob {
		blob[i] = byte(i * 7)
	}
	line := []byte("DATA=" + base64.StdEncoding.EncodeToString(blob))
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		if found := plugin.FindEncodedTokens(line); len(found) != 0 {
			b.Fatal(found)
		}
	}
}
