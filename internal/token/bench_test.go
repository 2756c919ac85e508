package token

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

func BenchmarkMint(b *testing.B) {
	for b.Loop() {
		if _, err := Mint("km"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	tok, _ := Mint("km")
	for b.Loop() {
		if _, err := Parse(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseLargestSecret parses the secret 2^256 - 1: its first
// character is maxSecret's, so Parse compares the whole secret, as it does
// for about 1 in 86 minted tokens.
func BenchmarkParseLargestSecret(b *testing.B) {
	tok := withChecksum("km_" + maxSecret)
	for b.Loop() {
		if _, err := Parse(tok); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkHash(b *testing.B) {
	tok, _ := Mint("km")
	for b.Loop() {
		_ = Hash(tok)
	}
}

func BenchmarkHashString(b *testing.B) {
	tok, _ := Mint("km")
	for b.Loop() {
		_ = HashString(tok)
	}
}

// The baselines do the least a token system could: a hex string of 32 random
// bytes, and a SHA-256 of a token-sized string. Mint and Parse are measured
// against them in the same run.

func BenchmarkBaselineRandomHex(b *testing.B) {
	var buf [32]byte
	for b.Loop() {
		if _, err := rand.Read(buf[:]); err != nil {
			b.Fatal(err)
		}
		_ = hex.EncodeToString(buf[:])
	}
}

func BenchmarkBaselineSHA256(b *testing.B) {
	tok, _ := Mint("km")
	for b.Loop() {
		_ = sha256.Sum256([]byte(tok))
	}
}
