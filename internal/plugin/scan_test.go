package plugin_test

import (
	"encoding/base64"
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
	write(t, filepath.Join(dir, "vectors_test.go"), "var v = \""+vector+"\" // "+plugin.IgnoreMarker+"\nvar w = \""+leaked+"\"\n")
	r := noCluster.run(t, plugin.Options{}, "scan", dir)
	g.Expect(r.code).To(Equal(1), r.stderr)
	g.Expect(r.stdout).To(Equal(filepath.Join(dir, "vectors_test.go") + ":2: " + token.Display(leaked) + "...\n"))
}
