package check

import (
	"strings"
	"testing"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
)

// A check skips the parse of a token whose hash it has seen parse: the
// answers stay those of parsing every time, also for a status that names
// the hash of something that is not a token.
func TestCheckParsesUntilATokenWithTheHashParsed(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	c := &Checker{Index: f.index}
	good := f.token("good", "exporter")
	typo := []byte(good)
	typo[10] ^= 1
	// Only keymint writes the status, and it mints well-formed tokens; this
	// one names the hash of a typo all the same.
	f.token("odd", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Status.TokenHash = token.HashString(string(typo)) })
	unknown, _ := token.Mint("km")

	for round := range 3 {
		for presented, want := range map[string]Failure{
			good:                                OK,
			string(typo):                        MalformedToken,
			unknown:                             InvalidToken,
			unknown[:len(unknown)-1] + "!":      MalformedToken,
			strings.Repeat("a", token.MaxLen+1): MalformedToken,
			"km_":                               MalformedToken,
		} {
			if got := c.Check(presented, Requirements{}, t0).Failure; got != want {
				t.Errorf("round %d: Check(%.12q…) = %q, want %q", round, presented, got, want)
			}
		}
	}
	ref, _, _ := f.index.lookup(token.Hash(good))
	if !ref.parsedBefore() {
		t.Error("the good token's hash is not marked parsed after a check")
	}
	if ref, _, _ := f.index.lookup(token.Hash(string(typo))); ref.parsedBefore() {
		t.Error("the typo's hash is marked parsed")
	}
	// A new entry for the token (any update) parses it again, once.
	f.token("good", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Status.TokenHash = token.HashString(good) })
	if ref, _, _ := f.index.lookup(token.Hash(good)); ref.parsedBefore() {
		t.Error("a new entry starts marked parsed")
	}
	if got := c.Check(good, Requirements{}, t0).Failure; got != OK {
		t.Errorf("after the update: %q", got)
	}
}

func TestWellFormedBits(t *testing.T) {
	e := &tokenEntry{memo: &entryMemo{}}
	cur, p0, p62, p63 := hashRef{token: e, which: -1}, hashRef{token: e, which: 0}, hashRef{token: e, which: 62}, hashRef{token: e, which: 63}
	refused := hashRef{token: e, refused: true}
	for _, r := range []hashRef{cur, p62, p63, refused} {
		r.markParsed()
	}
	if !cur.parsedBefore() || p0.parsedBefore() || !p62.parsedBefore() || p63.parsedBefore() || refused.parsedBefore() {
		t.Errorf("bits %b", e.memo.wellFormed.Load())
	}
}

// Every refusal of the rules is answered as one: none is taken for OK, and
// each says something a client can act on.
func TestEveryRefusalHasAFailure(t *testing.T) {
	for r := range tokenstate.NumRefusals {
		f := failures[r]
		switch {
		case r == tokenstate.Accepted && f != OK:
			t.Errorf("Accepted is answered %q", f)
		case r != tokenstate.Accepted && f == OK:
			t.Errorf("refusal %d is answered OK: give it a Failure in failures", r)
		case r != tokenstate.Accepted && f.Message() == "":
			t.Errorf("refusal %d's failure %q has no message", r, f)
		}
	}
}
