package plugin

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/spf13/cobra"

	"github.com/keymint/keymint/internal/token"
)

func newScanCommand(o Options) *cobra.Command {
	var rf reportFlags
	cmd := &cobra.Command{
		Use:   "scan PATH...",
		Short: "Find keymint tokens in files (for CI and pre-commit hooks), and report them to keymint",
		Long: `Find keymint tokens in files and directories: strings with a token's shape
whose checksum matches, so typos and look-alikes are not reported. Prints
file:line and the token's public prefix only, never the token.

Directories are walked; .git directories, binary files (a NUL byte in the
first 8000 bytes) and symbolic links inside directories are skipped. "-"
reads standard input.

--report URL sends the distinct tokens found to keymint's leak report
endpoint (POST /credentials/revoke on the check server, served with
keymint's --leak-reports; a URL without a path gets that one), as
{"credentials": [...]}, in batches of at most 1000. keymint refuses each
token it issued and still accepts, on every replica, and rotates it at
once; it answers 202 to every well-formed report, whether it knew the
tokens or not. For each batch, scan prints the answer and each token's
prefix and where it was found. --report-ca-file trusts a CA (PEM) instead
of the system's; --report-insecure-skip-tls-verify trusts any certificate
(a test server only). kubeconfig's TLS flags do not apply.

Exit status: 0 when no token is found, 1 when any is (and, with --report,
every one was reported), 2 when a path or a flag could not be used (then
the scan is incomplete, whatever it found), 3 when tokens were found and
--report could not report every one of them (a network error, or an
answer other than 202: each batch says which tokens it held); 3 wins over
2, since a leaked token keymint still accepts is the more urgent news.`,
		Example: `  kubectl keymint scan .
  git diff --cached --name-only -z --diff-filter=ACM | xargs -0 -r kubectl keymint scan
  kubectl keymint scan --report https://keymint.example.com .`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return &exitError{code: ExitScanError, err: errors.New("scan needs at least one PATH (a file, a directory, or - for standard input)")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			rep, err := rf.reporter()
			if err != nil {
				return &exitError{code: ExitScanError, err: err}
			}
			s := &scanner{out: o.Streams.Out, errOut: o.Streams.ErrOut}
			if rep != nil {
				s.seen = map[string]*finding{}
			}
			for _, p := range args {
				if p == "-" {
					s.reader("(stdin)", o.Streams.In)
					continue
				}
				s.path(p)
			}
			fmt.Fprintf(o.Streams.ErrOut, "scan: %d keymint token(s) found in %d of %d file(s) scanned", s.found, s.filesWithTokens, s.files)
			if s.binary > 0 {
				fmt.Fprintf(o.Streams.ErrOut, "; %d binary file(s) skipped", s.binary)
			}
			if s.errors > 0 {
				fmt.Fprintf(o.Streams.ErrOut, "; %d path(s) could not be read", s.errors)
			}
			fmt.Fprintln(o.Streams.ErrOut)
			unreported := 0
			if rep != nil {
				unreported = rep.report(cmd.Context(), s.findings, o.Streams.ErrOut)
			}
			switch {
			case unreported > 0:
				fmt.Fprintf(o.Streams.ErrOut, "scan: %d of %d token(s) found could not be reported: keymint may still accept them. Rotate or revoke each (kubectl keymint rotate NAME), or run scan --report again; then remove them from the files and their history\n",
					unreported, len(s.findings))
				return &exitError{code: ExitReportFailed}
			case s.errors > 0:
				return &exitError{code: ExitScanError}
			case s.found > 0 && rep != nil:
				fmt.Fprintln(o.Streams.ErrOut, "scan: every token found was reported: keymint refuses and replaces each one it issued and still accepted. Still remove them from the files and their history")
				return &exitError{code: ExitFound}
			case s.found > 0:
				fmt.Fprintln(o.Streams.ErrOut, "scan: treat every token found as leaked: rotate it (kubectl keymint rotate NAME) or revoke it, then remove it from the file and its history")
				return &exitError{code: ExitFound}
			}
			return nil
		},
	}
	rf.addFlags(cmd)
	// A CI job must tell "found a token" (1) from "could not scan" (2),
	// a mistyped flag included.
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: ExitScanError, err: err}
	})
	return cmd
}

// scanner finds tokens and keeps count.
type scanner struct {
	out, errOut                   io.Writer
	files, filesWithTokens, found int
	errors, binary                int
	// findings holds each distinct token found, in the order first found,
	// with where it was: only with --report, which sends them to keymint.
	findings []*finding
	seen     map[string]*finding
}

// finding is one distinct token and where it was found (file:line).
type finding struct {
	token string
	where []string
}

// keep records tok, found at where, if the scan reports what it finds.
func (s *scanner) keep(tok, where string) {
	if s.seen == nil {
		return
	}
	f := s.seen[tok]
	if f == nil {
		f = &finding{token: tok}
		s.seen[tok] = f
		s.findings = append(s.findings, f)
	}
	f.where = append(f.where, where)
}

func (s *scanner) fail(path string, err error) {
	s.errors++
	fmt.Fprintf(s.errOut, "scan: %s: %v\n", path, err)
}

func (s *scanner) path(root string) {
	info, err := os.Stat(root)
	if err != nil {
		s.fail(root, err)
		return
	}
	if !info.IsDir() {
		s.file(root)
		return
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			s.fail(p, err)
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		switch {
		case d.IsDir() && d.Name() == ".git":
			return fs.SkipDir
		case d.Type().IsRegular():
			s.file(p)
		}
		// Symbolic links and other special files are not followed: they
		// may point outside the tree, or loop.
		return nil
	})
	if err != nil {
		s.fail(root, err)
	}
}

func (s *scanner) file(path string) {
	f, err := os.Open(path)
	if err != nil {
		s.fail(path, err)
		return
	}
	defer f.Close()
	s.reader(path, f)
}

// IgnoreMarker on a line tells scan to skip it: for tokens that are meant
// to be there (test vectors, documentation), as gitleaks:allow does.
const IgnoreMarker = "keymint-scan:ignore"

// binarySniffLen is how much of a file is looked at for a NUL byte, as git
// decides whether a file is binary.
const binarySniffLen = 8000

func (s *scanner) reader(name string, r io.Reader) {
	data, err := io.ReadAll(r)
	if err != nil {
		s.fail(name, err)
		return
	}
	if bytes.IndexByte(data[:min(len(data), binarySniffLen)], 0) >= 0 {
		s.binary++
		return
	}
	s.files++
	found := 0
	var tokens []string
	for line, text := 1, data; len(text) > 0; line++ {
		end := bytes.IndexByte(text, '\n')
		if end < 0 {
			end = len(text)
		}
		if bytes.Contains(text[:end], []byte(IgnoreMarker)) {
			text = text[min(end+1, len(text)):]
			continue
		}
		tokens = tokensIn(tokens[:0], text[:end])
		plain := len(tokens)
		tokens = encodedTokensIn(tokens, text[:end])
		for i, tok := range tokens {
			encoded := ""
			if i >= plain {
				encoded = " (base64-encoded)"
			}
			fmt.Fprintf(s.out, "%s:%d: %s...%s\n", name, line, token.Display(tok), encoded)
			found++
			s.keep(tok, fmt.Sprintf("%s:%d", name, line))
		}
		text = text[min(end+1, len(text)):]
	}
	if found > 0 {
		s.found += found
		s.filesWithTokens++
	}
}

// FindTokens returns the displayable prefix (token.Display) of every keymint
// token in line: a string of a token's shape that token.Parse accepts, so
// its checksum matches. The tokens themselves are never returned.
func FindTokens(line []byte) []string { return displays(tokensIn(nil, line)) }

// displays replaces each token in place by its displayable prefix.
func displays(tokens []string) []string {
	for i, t := range tokens {
		tokens[i] = token.Display(t)
	}
	return tokens
}

// tokensIn appends to found every keymint token in line, whole: only scan
// --report keeps them, to send them to keymint, and never prints them.
func tokensIn(found []string, line []byte) []string {
	tail := token.SecretLen + token.ChecksumLen
	for i := token.MinPrefixLen; i+1+tail <= len(line); i++ {
		next := bytes.IndexByte(line[i:len(line)-tail], '_')
		if next < 0 {
			break
		}
		i += next
		if !allBase62(line[i+1 : i+1+tail]) {
			continue
		}
		// The prefix is the run of lowercase letters and digits before the
		// underscore, or its end: "xkm_..." may hold a token "km_...".
		// Parse decides; the checksum makes a wrong split fail.
		for n := token.MinPrefixLen; n <= token.MaxPrefixLen && n <= i; n++ {
			c := line[i-n]
			if !isLowerAlnum(c) {
				break
			}
			candidate := string(line[i-n : i+1+tail])
			if _, err := token.Parse(candidate); err == nil {
				found = append(found, candidate)
				i += tail
				break
			}
		}
	}
	return found
}

func isLowerAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

func allBase62(b []byte) bool {
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// minEncodedRun is the shortest run of base64 characters that can hold a
// token: the base64 length of the shortest one, unpadded. A token at any
// byte offset of the encoded bytes still needs this many characters.
var minEncodedRun = base64.RawStdEncoding.EncodedLen(token.MinLen)

// FindEncodedTokens returns the displayable prefix of every keymint token
// held base64-encoded in line (standard or URL alphabet, padded or not), as
// a Secret's data shows it (kubectl get secret -o yaml), or as a value after
// "KEY=", "key:" or a quote. The token may sit at any byte offset of the
// encoded bytes.
func FindEncodedTokens(line []byte) []string { return displays(encodedTokensIn(nil, line)) }

// encodedTokensIn appends to found every keymint token held base64-encoded
// in line, whole, as tokensIn does.
//
// A run of base64 characters long enough to hold a token may start with
// characters that are not part of the encoded value: in KEYMINT_TOKEN_B64=...
// the key, "_" and "=" are base64 characters too. Base64 decodes in quanta of
// four characters, each on its own, so the run is decoded quantum by quantum
// from each of its first four characters: from the one whose offset matches
// the value's start, every quantum of the value decodes to the value's own
// bytes, whatever precedes it. That is four linear passes, with no guess
// about where a key ends.
func encodedTokensIn(found []string, line []byte) []string {
	var decoded []byte
	for i := 0; i < len(line); {
		if !isBase64(line[i]) {
			i++
			continue
		}
		j := i
		for j < len(line) && isBase64(line[j]) {
			j++
		}
		for offset := 0; offset < 4 && j-(i+offset) >= minEncodedRun; offset++ {
			decoded = decodeQuanta(decoded[:0], line[i+offset:j])
			found = tokensIn(found, decoded)
		}
		i = j
	}
	return found
}

// decodeQuanta appends to dst the base64 decoding of run, four characters
// at a time. A quantum may end in "=" padding, and the run in a short
// quantum of two or three characters. A quantum that is not base64 ("Y=ab",
// from a key decoded at the wrong offset) appends a space instead, which no
// token contains, so that no token is joined across it.
func decodeQuanta(dst, run []byte) []byte {
	dst = slices.Grow(dst, len(run)/4*3+3)
	for len(run) > 0 {
		if len(run) >= 4 {
			a, b, c, d := base64Values[run[0]], base64Values[run[1]], base64Values[run[2]], base64Values[run[3]]
			if (a|b|c|d)&0x80 == 0 {
				v := uint32(a)<<18 | uint32(b)<<12 | uint32(c)<<6 | uint32(d)
				dst = append(dst, byte(v>>16), byte(v>>8), byte(v))
				run = run[4:]
				continue
			}
		}
		q := run[:min(4, len(run))]
		run = run[len(q):]
		dst = decodeShortQuantum(dst, q)
	}
	return dst
}

// decodeShortQuantum decodes a quantum with "=" padding, a run's last two
// or three characters, or a quantum that is not base64.
func decodeShortQuantum(dst, q []byte) []byte {
	n := len(q)
	for n > 2 && q[n-1] == '=' && len(q)-n < 2 {
		n--
	}
	var v uint32
	var bad byte
	for _, c := range q[:n] {
		d := base64Values[c]
		bad |= d
		v = v<<6 | uint32(d&0x3f)
	}
	if bad&0x80 != 0 || n < 2 {
		return append(dst, ' ')
	}
	v <<= 6 * (4 - n)
	dst = append(dst, byte(v>>16), byte(v>>8), byte(v))
	return dst[:len(dst)-(4-n)]
}

// base64Values maps a character of either base64 alphabet to its value,
// "+" and "-" to 62, "/" and "_" to 63, and any other byte ("=" included)
// to 0xff. Reading both alphabets at once is sound: a mixed string decodes
// to bytes too, and only a checksum-valid token among them is reported.
var base64Values = func() (t [256]byte) {
	const std = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range t {
		t[i] = 0xff
	}
	for i := range len(std) {
		t[std[i]] = byte(i)
	}
	t['-'], t['_'] = 62, 63
	return t
}()

func isBase64(c byte) bool {
	return base64Values[c] != 0xff || c == '='
}
