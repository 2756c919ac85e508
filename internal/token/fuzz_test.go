package token

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary strings to Parse: it must never panic, must only
// return its two errors, and must accept a string only if it has the token's
// exact shape, so that it round-trips with the prefix it returns.
func FuzzParse(f *testing.F) {
	tok, _ := Mint("km")
	for _, seed := range []string{"", "km_", tok, tok[:len(tok)-1], strings.ToUpper(tok), "Bearer " + tok, "km_" + strings.Repeat("0", 49)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		prefix, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrChecksum) {
				t.Fatalf("Parse(%q) returned an unexpected error %v", s, err)
			}
			return
		}
		if !ValidPrefix(prefix) || len(s) != len(prefix)+1+SecretLen+ChecksumLen || s[len(prefix)] != '_' {
			t.Fatalf("Parse accepted %q with prefix %q", s, prefix)
		}
	})
}

// FuzzMintParse mints from fuzzed randomness: every minted token parses.
func FuzzMintParse(f *testing.F) {
	f.Add([]byte(strings.Repeat("\x00", 32)), "km")
	f.Add([]byte(strings.Repeat("\xff", 32)), "abcdefghijklmnop")
	f.Fuzz(func(t *testing.T, random []byte, prefix string) {
		tok, err := mint(prefix, strings.NewReader(string(random)))
		if err != nil {
			return
		}
		got, err := Parse(tok)
		if err != nil || got != prefix {
			t.Fatalf("Parse(mint(%q)) = %q, %v", prefix, got, err)
		}
	})
}
