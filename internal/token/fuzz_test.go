package token

import (
	"errors"
	"hash/crc32"
	"math/big"
	"regexp"
	"strings"
	"testing"
)

// The oracle below restates the package doc's format without calling any
// function of this package, so that Parse is checked against the spec rather
// than against itself.

// specShape is <prefix>_<secret><checksum>: a 2-16 character prefix, 43
// base62 characters of secret and 6 of checksum.
var specShape = regexp.MustCompile(`\A([a-z][a-z0-9]{1,15})_([0-9A-Za-z]{43})([0-9A-Za-z]{6})\z`)

const specAlphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// specSecretLimit is 2^256: the secret encodes 256 bits, so its value is
// below it.
var specSecretLimit = new(big.Int).Lsh(big.NewInt(1), 256)

// specParse reports whether s has the token's shape and, if so, its prefix
// and whether its checksum is the CRC-32 (IEEE) of everything before it.
// The shape includes the secret's value: 43 base62 characters can encode
// numbers up to 62^43 - 1, but a secret is 256 bits, at most 2^256 - 1.
func specParse(s string) (prefix string, shaped, checksumOK bool) {
	m := specShape.FindStringSubmatch(s)
	if m == nil || specNumber(m[2]).Cmp(specSecretLimit) >= 0 {
		return "", false, false
	}
	// Big integers, so that a checksum above 32 bits can never wrap onto a
	// matching CRC.
	sum := specNumber(m[3])
	want := new(big.Int).SetUint64(uint64(crc32.ChecksumIEEE([]byte(s[:len(s)-len(m[3])]))))
	return m[1], true, sum.Cmp(want) == 0
}

// specNumber reads base62 digits as a number.
func specNumber(digits string) *big.Int {
	n := new(big.Int)
	for _, c := range []byte(digits) {
		n.Mul(n, big.NewInt(62))
		n.Add(n, big.NewInt(int64(strings.IndexByte(specAlphabet, c))))
	}
	return n
}

// Known answers computed outside Go (Python's zlib.crc32 and its own base62).
// The second one's secret is 2^256 - 1, the largest Mint can make.
var specVectors = []string{
	"km_00000000000000000000000000000000000000000001NLtxW",               // keymint-scan:ignore (a known-answer vector)
	"km_yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp1473YmU",               // keymint-scan:ignore (a known-answer vector)
	"abcdefghijklmnop_Az09Az09Az09Az09Az09Az09Az09Az09Az09Az09xyz3vSeHR", // keymint-scan:ignore (a known-answer vector)
}

// specOverflows are known answers computed the same way whose checksum is
// right but whose secret is above 2^256 - 1 (2^256, then 62^43 - 1), so
// Mint never makes them: malformed.
var specOverflows = []string{
	"km_yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp22E8ppU", // keymint-scan:ignore (a known-answer vector)
	"km_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz0jnowp", // keymint-scan:ignore (a known-answer vector)
}

// specWrapped is specVectors[0] with its CRC plus 2^32 as the checksum: equal
// to the CRC in its low 32 bits only, which a fuzzer would not find alone.
const specWrapped = "km_000000000000000000000000000000000000000000064199a"

// TestOracle shows the oracle itself right: it accepts minted tokens and
// outside vectors, and refuses broken ones for the right reason.
func TestOracle(t *testing.T) {
	var good []string
	for _, prefix := range []string{"km", "a1", "acme", "abcdefghijklmnop"} {
		tok, err := Mint(prefix)
		if err != nil {
			t.Fatalf("Mint(%q): %v", prefix, err)
		}
		good = append(good, tok)
	}
	for _, tok := range append(good, specVectors...) {
		if prefix, shaped, ok := specParse(tok); !shaped || !ok || prefix != tok[:strings.IndexByte(tok, '_')] {
			t.Errorf("specParse(%q) = %q, shaped %v, checksum %v; want it accepted", tok, prefix, shaped, ok)
		}
	}

	tok := good[0] // km_...
	swap := func(i int) string {
		b := []byte(tok)
		if b[i] == 'a' {
			b[i] = 'b'
		} else {
			b[i] = 'a'
		}
		return string(b)
	}
	badSum := map[string]string{
		"typo in the secret":     swap(10),
		"typo in the checksum":   swap(len(tok) - 1),
		"typo in the prefix":     "kn" + tok[2:],
		"checksum above 32 bits": tok[:len(tok)-6] + "zzzzzz",
		"checksum all zeros":     tok[:len(tok)-6] + "000000",
		"checksum wraps to CRC":  specWrapped,
	}
	for name, s := range badSum {
		if _, shaped, ok := specParse(s); !shaped || ok {
			t.Errorf("%s: specParse(%q) shaped %v, checksum %v; want the shape but not the checksum", name, s, shaped, ok)
		}
	}
	badShape := map[string]string{
		"empty":                     "",
		"truncated":                 tok[:len(tok)-1],
		"one character long":        tok + "a",
		"no underscore":             "kmx" + tok[3:],
		"upper-case prefix":         "KM" + tok[2:],
		"prefix of one":             "k" + tok[2:],
		"prefix of 17":              "abcdefghijklmnopq" + good[3][16:],
		"prefix with a digit first": "1m" + tok[2:],
		"non-base62 character":      tok[:10] + "-" + tok[11:],
		"trailing newline":          tok + "\n",
		"leading space":             " " + tok[1:],
		"bearer scheme":             "Bearer " + tok,
		"secret of 2^256":           specOverflows[0],
		"secret of 62^43 - 1":       specOverflows[1],
	}
	for name, s := range badShape {
		if _, shaped, _ := specParse(s); shaped {
			t.Errorf("%s: specParse(%q) accepted the shape", name, s)
		}
	}
}

// FuzzParse checks Parse against the oracle: it accepts exactly what the
// spec accepts and returns its prefix, returns ErrChecksum exactly when the
// shape is right and the checksum wrong, and ErrMalformed otherwise.
func FuzzParse(f *testing.F) {
	tok, _ := Mint("km")
	seeds := []string{"", "km_", tok, tok[:len(tok)-1], strings.ToUpper(tok), "Bearer " + tok, tok + "\n",
		"km_" + strings.Repeat("0", 49), tok[:len(tok)-6] + "zzzzzz", "abcdefghijklmnopq" + tok[2:], specWrapped}
	for _, seed := range append(append(seeds, specVectors...), specOverflows...) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		prefix, err := Parse(s)
		wantPrefix, shaped, checksumOK := specParse(s)
		switch {
		case !shaped:
			if !errors.Is(err, ErrMalformed) || prefix != "" {
				t.Fatalf("Parse(%q) = %q, %v; the spec says malformed", s, prefix, err)
			}
		case !checksumOK:
			if !errors.Is(err, ErrChecksum) || prefix != "" {
				t.Fatalf("Parse(%q) = %q, %v; the spec says a checksum mismatch", s, prefix, err)
			}
		default:
			if err != nil || prefix != wantPrefix {
				t.Fatalf("Parse(%q) = %q, %v; the spec says valid with prefix %q", s, prefix, err, wantPrefix)
			}
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
