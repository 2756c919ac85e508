package token

import "testing"

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
