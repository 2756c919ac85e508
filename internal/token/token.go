// Package token owns keymint's bearer token format: minting, parsing,
// checksum and hashing. It has no Kubernetes imports.
//
// A token reads <prefix>_<secret><checksum>:
//   - prefix: 2 to 16 characters, a lowercase letter then lowercase letters or
//     digits (the ServiceUser's tokenPolicy.prefix, "km" by default);
//   - secret: 43 base62 characters encoding 256 bits from crypto/rand, so a
//     value of at most 2^256 - 1. 43 base62 digits could hold more (up to
//     62^43 - 1, about 2^256.03): Parse refuses those as malformed;
//   - checksum: 6 base62 characters encoding the CRC-32 (IEEE) of everything
//     before it, prefix and underscore included.
//
// The checksum lets leak scanners and the check server tell a keymint token
// from a typo or from garbage without any lookup; it is not a secret and adds
// no strength. Only the SHA-256 hash of a token is ever stored.
package token

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"io"
	"math/big"
	"unsafe"
)

const (
	// SecretLen is the number of base62 characters that encode 256 random bits.
	SecretLen = 43
	// ChecksumLen is the number of base62 characters that encode a CRC-32.
	ChecksumLen = 6
	// MinPrefixLen and MaxPrefixLen bound the prefix.
	MinPrefixLen = 2
	MaxPrefixLen = 16
	// DefaultPrefix is used when a ServiceUser sets none.
	DefaultPrefix = "km"
	// DisplayLen is how many leading characters of a token may be shown to
	// humans (in status and listings) to tell tokens apart.
	DisplayLen = 12
	// HashPrefix starts every stored hash: "sha256:<64 lowercase hex>".
	HashPrefix = "sha256:"

	// MinLen and MaxLen are the shortest and the longest well-formed token.
	MinLen = MinPrefixLen + 1 + SecretLen + ChecksumLen
	MaxLen = MaxPrefixLen + 1 + SecretLen + ChecksumLen

	alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

	// maxSecret is 2^256 - 1 in base62, SecretLen characters: the largest
	// secret. The alphabet is in ASCII order, so among strings of SecretLen
	// base62 characters, comparing as strings compares the values.
	maxSecret = "yhjskwdA6OZ1AL1YmHWZWm8LLG7HjnuCA2j5rOw8Xp1"
)

var (
	// ErrMalformed says the string does not have the token's shape, a
	// secret above 2^256 - 1 included.
	ErrMalformed = errors.New("token is malformed")
	// ErrChecksum says the string has the token's shape but its checksum does
	// not match: a typo, a truncation or a forgery.
	ErrChecksum = errors.New("token checksum does not match")
	// ErrPrefix says a prefix is not 2 to 16 lowercase letters and digits
	// starting with a letter.
	ErrPrefix = errors.New("token prefix must be 2 to 16 lowercase letters or digits, starting with a letter")
)

// Mint returns a new token with the given prefix, reading 256 bits from
// crypto/rand.
func Mint(prefix string) (string, error) {
	return mint(prefix, rand.Reader)
}

func mint(prefix string, random io.Reader) (string, error) {
	if !validPrefix(prefix) {
		return "", ErrPrefix
	}
	var secret [32]byte
	if _, err := io.ReadFull(random, secret[:]); err != nil {
		return "", err
	}
	buf := make([]byte, 0, len(prefix)+1+SecretLen+ChecksumLen)
	buf = append(buf, prefix...)
	buf = append(buf, '_')
	buf = appendBase62(buf, new(big.Int).SetBytes(secret[:]), SecretLen)
	buf = appendBase62(buf, big.NewInt(int64(crcString(string(buf)))), ChecksumLen)
	return string(buf), nil
}

// Parse checks that s is a well-formed token with a matching checksum and
// returns its prefix. It allocates nothing and reads s once; its cost does
// not depend on any stored token.
func Parse(s string) (prefix string, err error) {
	if len(s) < MinLen || len(s) > MaxLen {
		return "", ErrMalformed
	}
	underscore := len(s) - SecretLen - ChecksumLen - 1
	if s[underscore] != '_' || !validPrefix(s[:underscore]) {
		return "", ErrMalformed
	}
	// One table lookup per character; any byte outside the alphabet sets
	// the high bit of bad.
	var bad byte
	for i := underscore + 1; i < len(s)-ChecksumLen; i++ {
		bad |= digits[s[i]]
	}
	var sum uint64
	for i := len(s) - ChecksumLen; i < len(s); i++ {
		d := digits[s[i]]
		bad |= d
		sum = sum*62 + uint64(d)
	}
	if bad&0x80 != 0 {
		return "", ErrMalformed
	}
	// A secret above 2^256 - 1 is not one Mint makes. Its first character
	// settles it for all but about 1 in 86 minted secrets (those starting
	// with maxSecret's 'y'), so the whole secret is rarely compared.
	if s[underscore+1] >= maxSecret[0] && s[underscore+1:len(s)-ChecksumLen] > maxSecret {
		return "", ErrMalformed
	}
	if sum != uint64(crcString(s[:len(s)-ChecksumLen])) {
		return "", ErrChecksum
	}
	return s[:underscore], nil
}

// digits maps a byte to its base62 value, or 0xff when it is not one.
var digits = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i := range len(alphabet) {
		t[alphabet[i]] = byte(i)
	}
	return t
}()

// Hash returns the SHA-256 of a token: the only form keymint stores. It
// reads the string in place, allocating nothing.
func Hash(s string) [sha256.Size]byte {
	return sha256.Sum256(bytesOf(s))
}

// bytesOf views a string's bytes without copying them; callers only read.
func bytesOf(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// HashString returns "sha256:<64 lowercase hex>" for a token, the form used in
// ApiToken status and Secret annotations.
func HashString(s string) string {
	return FormatHash(Hash(s))
}

// FormatHash renders a raw hash as "sha256:<64 lowercase hex>".
func FormatHash(h [sha256.Size]byte) string {
	buf := make([]byte, len(HashPrefix)+hex.EncodedLen(len(h)))
	copy(buf, HashPrefix)
	hex.Encode(buf[len(HashPrefix):], h[:])
	return string(buf)
}

// ParseHash reads "sha256:<64 lowercase hex>" back into a raw hash.
func ParseHash(s string) ([sha256.Size]byte, bool) {
	var h [sha256.Size]byte
	if len(s) != len(HashPrefix)+2*sha256.Size || s[:len(HashPrefix)] != HashPrefix {
		return h, false
	}
	for _, c := range s[len(HashPrefix):] {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return h, false
		}
	}
	if _, err := hex.Decode(h[:], []byte(s[len(HashPrefix):])); err != nil {
		return h, false
	}
	return h, true
}

// Matches reports, in constant time, whether token hashes to hash.
func Matches(token, hash string) bool {
	want, ok := ParseHash(hash)
	if !ok {
		return false
	}
	got := Hash(token)
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

// Display returns the leading characters of a token that may be shown to
// humans; the rest stays secret.
func Display(s string) string {
	if len(s) <= DisplayLen {
		return s
	}
	return s[:DisplayLen]
}

// crcString is crc32.ChecksumIEEE (hardware-accelerated where the CPU can)
// over a string, read in place so that Parse allocates nothing.
func crcString(s string) uint32 {
	return crc32.ChecksumIEEE(bytesOf(s))
}

func validPrefix(p string) bool {
	if len(p) < MinPrefixLen || len(p) > MaxPrefixLen || p[0] < 'a' || p[0] > 'z' {
		return false
	}
	for i := 1; i < len(p); i++ {
		c := p[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// ValidPrefix reports whether p can prefix a token.
func ValidPrefix(p string) bool { return validPrefix(p) }

// appendBase62 appends n in base62, left-padded with '0' to width characters.
func appendBase62(buf []byte, n *big.Int, width int) []byte {
	out := make([]byte, width)
	base := big.NewInt(62)
	rem := new(big.Int)
	n = new(big.Int).Set(n)
	for i := width - 1; i >= 0; i-- {
		n.DivMod(n, base, rem)
		out[i] = alphabet[rem.Int64()]
	}
	return append(buf, out...)
}
