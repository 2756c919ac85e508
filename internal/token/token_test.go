package token

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"math/big"
	"strings"
	"testing"
)

func TestMintShape(t *testing.T) {
	for _, prefix := range []string{"km", "acme", "a1", "abcdefghijklmnop"} {
		tok, err := Mint(prefix)
		if err != nil {
			t.Fatalf("Mint(%q): %v", prefix, err)
		}
		if want := len(prefix) + 1 + SecretLen + ChecksumLen; len(tok) != want {
			t.Errorf("Mint(%q) = %d characters, want %d", prefix, len(tok), want)
		}
		if !strings.HasPrefix(tok, prefix+"_") {
			t.Errorf("Mint(%q) = %q, want the prefix and an underscore first", prefix, tok)
		}
		got, err := Parse(tok)
		if err != nil || got != prefix {
			t.Errorf("Parse(Mint(%q)) = %q, %v; want the prefix back", prefix, got, err)
		}
	}
}

func TestMintRefusesBadPrefix(t *testing.T) {
	for _, prefix := range []string{"", "k", "KM", "1km", "k_m", "k-m", "abcdefghijklmnopq"} {
		if _, err := Mint(prefix); !errors.Is(err, ErrPrefix) {
			t.Errorf("Mint(%q) error = %v, want ErrPrefix", prefix, err)
		}
	}
}

func TestMintEncodesAll256Bits(t *testing.T) {
	// The largest and smallest secrets still fit 43 characters, and different
	// secrets give different tokens: no bits are lost to the encoding.
	cases := map[string][]byte{
		"zero":      make([]byte, 32),
		"all ones":  bytes.Repeat([]byte{0xff}, 32),
		"one bit":   append(make([]byte, 31), 1),
		"high byte": append([]byte{0x80}, make([]byte, 31)...),
	}
	seen := map[string]string{}
	for name, secret := range cases {
		tok, err := mint("km", bytes.NewReader(secret))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(tok) != 3+SecretLen+ChecksumLen {
			t.Errorf("%s: %q has %d characters", name, tok, len(tok))
		}
		if _, err := Parse(tok); err != nil {
			t.Errorf("%s: Parse(%q) = %v", name, tok, err)
		}
		body := tok[3 : 3+SecretLen]
		if name == "all ones" && body != maxSecret {
			t.Errorf("all ones encode to %q, want maxSecret %q", body, maxSecret)
		}
		if other, dup := seen[body]; dup {
			t.Errorf("%s and %s encode to the same secret %q", name, other, body)
		}
		seen[body] = name
	}
}

func TestMintIsRandom(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		tok, err := Mint("km")
		if err != nil {
			t.Fatal(err)
		}
		if seen[tok] {
			t.Fatalf("Mint returned %s twice", Display(tok))
		}
		seen[tok] = true
	}
}

func TestMintFailsWhenRandomnessFails(t *testing.T) {
	if _, err := mint("km", bytes.NewReader(make([]byte, 10))); err == nil {
		t.Error("want an error when crypto/rand returns too few bytes")
	}
}

func TestParse(t *testing.T) {
	good, err := mint("km", bytes.NewReader(bytes.Repeat([]byte{7}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'a' {
			b[i] = 'b'
		} else {
			b[i] = 'a'
		}
		return string(b)
	}
	tests := map[string]struct {
		in      string
		wantErr error
	}{
		"a minted token":                 {in: good},
		"empty":                          {in: "", wantErr: ErrMalformed},
		"one character short":            {in: good[:len(good)-1], wantErr: ErrMalformed},
		"one character long":             {in: good + "a", wantErr: ErrMalformed},
		"typo in the secret":             {in: flip(good, 10), wantErr: ErrChecksum},
		"typo in the checksum":           {in: flip(good, len(good)-1), wantErr: ErrChecksum},
		"typo in the prefix":             {in: "kn" + good[2:], wantErr: ErrChecksum},
		"no underscore":                  {in: "kmx" + good[3:], wantErr: ErrMalformed},
		"upper-case prefix":              {in: "KM" + good[2:], wantErr: ErrMalformed},
		"non-base62 character":           {in: good[:10] + "-" + good[11:], wantErr: ErrMalformed},
		"a GitHub-style token":           {in: "ghp_" + strings.Repeat("a", 36), wantErr: ErrMalformed},
		"a JWT":                          {in: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", wantErr: ErrMalformed},
		"too long for any prefix":        {in: strings.Repeat("a", MaxLen+1), wantErr: ErrMalformed},
		"checksum above 32 bits":         {in: good[:len(good)-ChecksumLen] + "zzzzzz", wantErr: ErrChecksum},
		"valid shape, prefix with digit": {in: retag(t, "k8", good), wantErr: nil},
		// The secret is 256 bits; 43 base62 characters can hold more. The
		// checksums match, so only the value is wrong.
		"secret of 2^256 - 1, the largest":  {in: withChecksum("km_" + secretOf(pow2(256, -1))), wantErr: nil},
		"secret of 2^256 - 2":               {in: withChecksum("km_" + secretOf(pow2(256, -2))), wantErr: nil},
		"secret of 2^255":                   {in: withChecksum("km_" + secretOf(pow2(255, 0))), wantErr: nil},
		"secret of 2^256":                   {in: withChecksum("km_" + secretOf(pow2(256, 0))), wantErr: ErrMalformed},
		"secret of 2^256 + 62^42":           {in: withChecksum("km_" + secretOf(new(big.Int).Add(pow2(256, 0), pow62(42)))), wantErr: ErrMalformed},
		"secret all 'z' (62^43 - 1)":        {in: withChecksum("km_" + strings.Repeat("z", SecretLen)), wantErr: ErrMalformed},
		"secret first character 'z'":        {in: withChecksum("km_z" + strings.Repeat("0", SecretLen-1)), wantErr: ErrMalformed},
		"secret of 2^256, checksum wrong":   {in: "km_" + secretOf(pow2(256, 0)) + "000000", wantErr: ErrMalformed},
		"secret of 2^256, 16-letter prefix": {in: withChecksum("abcdefghijklmnop_" + secretOf(pow2(256, 0))), wantErr: ErrMalformed},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Parse(tc.in)
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("Parse = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// withChecksum appends to body the checksum that matches it, computed by
// the package's own functions.
func withChecksum(body string) string {
	return string(appendBase62([]byte(body), big.NewInt(int64(crcString(body))), ChecksumLen))
}

// secretOf encodes n as a secret: SecretLen base62 characters.
func secretOf(n *big.Int) string { return string(appendBase62(nil, n, SecretLen)) }

// pow2 returns 2^e + d; pow62 returns 62^e.
func pow2(e uint, d int64) *big.Int {
	return new(big.Int).Add(new(big.Int).Lsh(big.NewInt(1), e), big.NewInt(d))
}
func pow62(e int64) *big.Int { return new(big.Int).Exp(big.NewInt(62), big.NewInt(e), nil) }

func TestMaxSecretIs2To256Minus1(t *testing.T) {
	if got := secretOf(pow2(256, -1)); got != maxSecret {
		t.Errorf("2^256 - 1 encodes to %q, maxSecret is %q", got, maxSecret)
	}
	// SecretLen digits hold 2^256 - 1 (so Mint loses no bit) and more.
	if pow62(SecretLen).Cmp(pow2(256, 0)) <= 0 || pow62(SecretLen-1).Cmp(pow2(256, 0)) >= 0 {
		t.Errorf("62^%d does not bound 2^256 from above or 62^%d from below", SecretLen, SecretLen-1)
	}
	// The alphabet is in ASCII order: comparing strings compares values.
	for i := 1; i < len(alphabet); i++ {
		if alphabet[i-1] >= alphabet[i] {
			t.Fatalf("alphabet not in ASCII order at %d", i)
		}
	}
}

// Mint never makes a secret Parse refuses: 32 random bytes are at most
// 2^256 - 1, and appendBase62 writes them in SecretLen digits exactly. Many
// tokens from crypto/rand, and many whose secret sits just under 2^256 (the
// 1 in 86 that start with maxSecret's first character, where the whole
// secret is compared), all parse.
func TestMintedSecretsAlwaysParse(t *testing.T) {
	n := 20000
	if testing.Short() {
		n = 2000
	}
	for range n {
		tok, err := Mint("km")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(tok); err != nil {
			t.Fatalf("Parse(Mint()) = %v for %s", err, Display(tok))
		}
	}
	random := make([]byte, 32*n)
	if _, err := rand.Read(random); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		secret := random[32*i : 32*i+32]
		// High bytes set, so the value is within 2^256 / 2^(8*k) of the top.
		for k := range i % 32 {
			secret[k] = 0xff
		}
		tok, err := mint("km", bytes.NewReader(secret))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(tok); err != nil {
			t.Fatalf("Parse(mint(%x)) = %v", secret, err)
		}
	}
}
func retag(t *testing.T, prefix, tok string) string {
	t.Helper()
	body := prefix + tok[strings.IndexByte(tok, '_'):len(tok)-ChecksumLen]
	return string(appendBase62([]byte(body), big.NewInt(int64(crc32.ChecksumIEEE([]byte(body)))), ChecksumLen))
}

func TestCRCStringMatchesTheStandardLibrary(t *testing.T) {
	for _, s := range []string{"", "a", "km_abc", strings.Repeat("xyz", 40)} {
		if got, want := crcString(s), crc32.ChecksumIEEE([]byte(s)); got != want {
			t.Errorf("crcString(%q) = %x, want %x", s, got, want)
		}
	}
}

func TestHashString(t *testing.T) {
	tok, _ := Mint("km")
	sum := sha256.Sum256([]byte(tok))
	want := "sha256:" + hex.EncodeToString(sum[:])
	if got := HashString(tok); got != want {
		t.Errorf("HashString = %s, want %s", got, want)
	}
	if h, ok := ParseHash(want); !ok || h != sum {
		t.Errorf("ParseHash(%s) = %x, %v", want, h, ok)
	}
	if !Matches(tok, want) {
		t.Error("Matches(token, its hash) = false")
	}
	other, _ := Mint("km")
	if Matches(other, want) {
		t.Error("Matches(another token, hash) = true")
	}
}

func TestParseHashRefusesOtherForms(t *testing.T) {
	good := HashString("x")
	for _, s := range []string{"", "sha256:", good[:len(good)-1], strings.ToUpper(good), "md5:" + good[7:], good[:10] + "g" + good[11:]} {
		if _, ok := ParseHash(s); ok {
			t.Errorf("ParseHash(%q) accepted", s)
		}
		if Matches("x", s) {
			t.Errorf("Matches(x, %q) = true", s)
		}
	}
}

func TestDisplayShowsOnlyTheLeadingCharacters(t *testing.T) {
	tok, _ := Mint("km")
	if got := Display(tok); got != tok[:12] {
		t.Errorf("Display = %q, want %q", got, tok[:12])
	}
	if got := Display("short"); got != "short" {
		t.Errorf("Display(short) = %q", got)
	}
}

func TestParseDoesNotAllocate(t *testing.T) {
	tok, _ := Mint("km")
	if n := testing.AllocsPerRun(100, func() { _, _ = Parse(tok) }); n != 0 {
		t.Errorf("Parse allocates %v times per call, want 0", n)
	}
}
