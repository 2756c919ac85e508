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

	"github.com/spf13/cobra"

	"github.com/keymint/keymint/internal/token"
)

func newScanCommand(o Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "scan PATH...",
		Short: "Find keymint tokens in files (for CI and pre-commit hooks)",
		Long: `Find keymint tokens in files and directories: strings with a token's shape
whose checksum matches, so typos and look-alikes are not reported. Prints
file:line and the token's public prefix only, never the token.

Directories are walked; .git directories, binary files (a NUL byte in the
first 8000 bytes) and symbolic links inside directories are skipped. "-"
reads standard input.

Exit status: 0 when no token is found, 1 when any is, 2 when a path could
not be read (then the scan is incomplete, whatever it found).`,
		Example: `  kubectl keymint scan .
  git diff --cached --name-only -z --diff-filter=ACM | xargs -0 -r kubectl keymint scan`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return &exitError{code: ExitScanError, err: errors.New("scan needs at least one PATH (a file, a directory, or - for standard input)")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			s := &scanner{out: o.Streams.Out, errOut: o.Streams.ErrOut}
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
			switch {
			case s.errors > 0:
				return &exitError{code: ExitScanError}
			case s.found > 0:
				fmt.Fprintln(o.Streams.ErrOut, "scan: treat every token found as leaked: rotate it (kubectl keymint rotate NAME) or revoke it, then remove it from the file and its history")
				return &exitError{code: ExitFound}
			}
			return nil
		},
	}
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
	for line, text := 1, data; len(text) > 0; line++ {
		end := bytes.IndexByte(text, '\n')
		if end < 0 {
			end = len(text)
		}
		if bytes.Contains(text[:end], []byte(IgnoreMarker)) {
			text = text[min(end+1, len(text)):]
			continue
		}
		for _, display := range FindTokens(text[:end]) {
			fmt.Fprintf(s.out, "%s:%d: %s...\n", name, line, display)
			found++
		}
		for _, display := range FindEncodedTokens(text[:end]) {
			fmt.Fprintf(s.out, "%s:%d: %s... (base64-encoded)\n", name, line, display)
			found++
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
func FindTokens(line []byte) []string {
	var found []string
	tail := token.SecretLen + token.ChecksumLen
	for i := token.MinPrefixLen; i+1+tail <= len(line); i++ {
		if line[i] != '_' || !allBase62(line[i+1:i+1+tail]) {
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
				found = append(found, token.Display(candidate))
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
// token: the base64 length of the shortest one.
var minEncodedRun = base64.RawStdEncoding.EncodedLen(token.MinLen)

// FindEncodedTokens returns the displayable prefix of every keymint token
// held base64-encoded in line, as a Secret's data shows it (kubectl get
// secret -o yaml): each run of base64 characters long enough to hold a
// token is decoded and searched.
func FindEncodedTokens(line []byte) []string {
	var found []string
	for i := 0; i < len(line); {
		if !isBase64(line[i]) {
			i++
			continue
		}
		j := i
		for j < len(line) && isBase64(line[j]) {
			j++
		}
		if run := bytes.TrimRight(line[i:j], "="); len(run) >= minEncodedRun {
			for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
				if decoded, err := enc.DecodeString(string(run)); err == nil {
					found = append(found, FindTokens(decoded)...)
					break
				}
			}
		}
		i = j
	}
	return found
}

func isBase64(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '-' || c == '_' || c == '='
}
