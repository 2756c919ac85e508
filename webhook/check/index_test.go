package check

import (
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
)

// TestDisablingAUserRefusesItsTokensWhateverOrderEventsArriveIn plays the
// informers delivering the user's re-enable before the token's revocation:
// the token disabled users had never passes again on this replica.
func TestDisablingAUserRefusesItsTokensWhateverOrderEventsArriveIn(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	old := f.token("t", "exporter")
	if a := f.check(old, ""); a.status != http.StatusOK {
		t.Fatalf("before: %d", a.status)
	}
	f.user("exporter", func(u *keymintv1alpha1.ServiceUser) { u.Spec.Disabled = true })
	expectError(t, f.check(old, ""), http.StatusUnauthorized, RevokedToken)

	// Re-enabled; the token's own update (hash cleared) is still on its way.
	f.user("exporter")
	expectError(t, f.check(old, ""), http.StatusUnauthorized, RevokedToken)

	// A resync of the token as it was (still naming the old hash) keeps it refused.
	f.index.UpsertToken(&keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "t"},
		Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "exporter"},
		Status:     keymintv1alpha1.ApiTokenStatus{TokenHash: token.HashString(old), IssuedAt: ptr.To(metav1.NewTime(t0))},
	})
	expectError(t, f.check(old, ""), http.StatusUnauthorized, RevokedToken)

	// The controller's new token for the re-enabled user passes.
	fresh := f.token("t", "exporter")
	if a := f.check(fresh, ""); a.status != http.StatusOK {
		t.Errorf("the new token: %d %v", a.status, a.body)
	}
}

func TestAHashTwoApiTokensClaimIsRefusedForBoth(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	f.user("admin")
	shared := f.token("intern", "exporter")
	f.token("root", "admin", func(t *keymintv1alpha1.ApiToken) { t.Status.TokenHash = token.HashString(shared) })

	expectError(t, f.check(shared, ""), http.StatusUnauthorized, RevokedToken)
	if got := testutil.ToFloat64(f.metrics.contested); got != 1 {
		t.Errorf("keymint_contested_hashes_total = %v, want 1", got)
	}
	// One claimant letting go does not hand the hash to the other.
	f.index.DeleteToken(types.NamespacedName{Namespace: "team-a", Name: "root"})
	expectError(t, f.check(shared, ""), http.StatusUnauthorized, InvalidToken)

	// Both reissued: each new token passes.
	intern := f.token("intern", "exporter")
	root := f.token("root", "admin")
	for _, tok := range []string{intern, root} {
		if a := f.check(tok, ""); a.status != http.StatusOK {
			t.Errorf("a reissued token: %d %v", a.status, a.body)
		}
	}
	if f.index.Len() != 2 {
		t.Errorf("index holds %d hashes, want the 2 live ones", f.index.Len())
	}
}

func TestRemainingNeverGoesBelowZeroWhenARateIsLowered(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	tok := f.token("t", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.RequestsPerMinute = ptr.To[int32](10) })
	// 8 of 10 used: 48 s of the minute's budget.
	for range 8 {
		f.check(tok, "")
	}
	f.token("t", "exporter", func(t *keymintv1alpha1.ApiToken) {
		t.Spec.RequestsPerMinute = ptr.To[int32](2)
		t.Status.TokenHash = token.HashString(tok)
	})
	a := f.check(tok, "")
	expectError(t, a, http.StatusTooManyRequests, RateLimited)
	if got := a.header.Get("X-RateLimit-Remaining"); got != "0" {
		t.Errorf("X-RateLimit-Remaining = %q, want 0", got)
	}
}

func TestUsageForgetsDeletedTokens(t *testing.T) {
	u := NewUsage()
	key := types.NamespacedName{Namespace: "team-a", Name: "t"}
	current, previous := hash{1}, hash{2}
	u.Record(key, current, t0)
	u.Record(key, current, t0.Add(-time.Second)) // an older check recorded late does not move it back
	u.Record(key, previous, t0.Add(-time.Minute))
	seen, _, _ := u.take()
	if at := seen[usageKey{key, current}]; !at.Equal(t0) {
		t.Errorf("recorded %v for the current hash, want %v", at, t0)
	}
	if at := seen[usageKey{key, previous}]; !at.Equal(t0.Add(-time.Minute)) {
		t.Errorf("recorded %v for the rotated-out hash, want its own use %v", at, t0.Add(-time.Minute))
	}
	u.Record(key, current, t0.Add(time.Second))
	u.Record(key, previous, t0.Add(time.Second))
	u.Forget(key)
	seen, _, gone := u.take()
	if len(seen) != 0 {
		t.Errorf("a forgotten token's uses are still pending: %v", seen)
	}
	if _, ok := gone[key]; !ok {
		t.Error("the flusher is not told the token went")
	}
	if seen, _, gone := u.take(); seen != nil || gone != nil {
		t.Errorf("a second take returned %v %v, want nothing", seen, gone)
	}
}

func TestTheIndexForgetsUsersAndTokensThatGo(t *testing.T) {
	f := newFixture(t)
	ix := f.index
	f.user("exporter")
	f.token("a", "exporter")
	f.token("b", "ghost") // a token of a user not indexed
	ix.DeleteToken(types.NamespacedName{Namespace: "team-a", Name: "a"})
	ix.DeleteToken(types.NamespacedName{Namespace: "team-a", Name: "b"})
	ix.DeleteUser(types.NamespacedName{Namespace: "team-a", Name: "exporter"})
	if len(ix.users) != 0 || len(ix.byUser) != 0 || len(ix.tokens) != 0 || ix.Len() != 0 {
		t.Errorf("left behind: %d users, %d user lists, %d tokens, %d hashes", len(ix.users), len(ix.byUser), len(ix.tokens), ix.Len())
	}
}

// TestATokenFirstSeenWhileItsUserIsDisabledStaysRefused: a token issued just
// before its user was disabled, whose status reaches this replica only after
// the disable, is refused for good too: re-enabling the user before its
// revocation arrives does not let it in.
func TestATokenFirstSeenWhileItsUserIsDisabledStaysRefused(t *testing.T) {
	f := newFixture(t)
	f.user("exporter", func(u *keymintv1alpha1.ServiceUser) { u.Spec.Disabled = true })
	late := f.token("t", "exporter")
	expectError(t, f.check(late, ""), http.StatusUnauthorized, RevokedToken)
	f.user("exporter")
	expectError(t, f.check(late, ""), http.StatusUnauthorized, RevokedToken)
	// A token issued after the re-enable passes.
	if a := f.check(f.token("u", "exporter"), ""); a.status != http.StatusOK {
		t.Errorf("a token issued after the re-enable: %d %v", a.status, a.body)
	}
}

// TestANameMovingToAnotherUser: after a relist, an ApiToken deleted and
// recreated for another ServiceUser arrives as one update. Disabling the
// first user afterwards refuses nothing of the second's, and nothing panics
// once the token is gone.
func TestANameMovingToAnotherUser(t *testing.T) {
	f := newFixture(t)
	f.user("a")
	f.user("b")
	f.token("t", "a")
	moved := f.token("t", "b")
	f.user("a", func(u *keymintv1alpha1.ServiceUser) { u.Spec.Disabled = true })
	if a := f.check(moved, ""); a.status != http.StatusOK {
		t.Errorf("b's token after a was disabled: %d %v", a.status, a.body)
	}
	f.index.DeleteToken(types.NamespacedName{Namespace: "team-a", Name: "t"})
	f.index.DeleteUser(types.NamespacedName{Namespace: "team-a", Name: "a"}) // panicked before
	f.user("a", func(u *keymintv1alpha1.ServiceUser) { u.Spec.Disabled = true })
}

// Tokens applied from one template share one spec in the index; a token
// whose spec differs in anything a rule reads keeps its own, so sharing
// never lends one token another's scopes. Once no token holds a spec, the
// index lets it go.
func TestTokensShareEqualSpecsOnly(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	readOnly := func(t *keymintv1alpha1.ApiToken) {
		t.Spec.Scopes = []string{"links:read"}
		t.Spec.Description = "one of many" // not read by any rule: stripped by the feed
	}
	a := f.token("a", "exporter", readOnly, func(t *keymintv1alpha1.ApiToken) { StripToken(t) })
	b := f.token("b", "exporter", readOnly, func(t *keymintv1alpha1.ApiToken) { StripToken(t) })
	wide := f.token("c", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"links:read", "links:write"} })

	entry := func(name string) *tokenEntry {
		f.index.mu.RLock()
		defer f.index.mu.RUnlock()
		return f.index.tokens[types.NamespacedName{Namespace: "team-a", Name: name}]
	}
	if entry("a").state.Spec != entry("b").state.Spec {
		t.Error("two tokens with equal specs hold two copies")
	}
	if entry("a").state.Spec == entry("c").state.Spec {
		t.Fatal("tokens with different scopes share a spec")
	}
	for tok, want := range map[string]string{a: "links:read", b: "links:read", wide: "links:read,links:write"} {
		if got := f.check(tok, "").header.Get(HeaderScopes); got != want {
			t.Errorf("scopes %q, want %q", got, want)
		}
	}
	// Widening one token's scopes gives it a spec of its own; the other
	// keeps the narrow one.
	f.tokenWithPlain(b, "b", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"links:read", "qr:read"} })
	if got := f.check(a, "").header.Get(HeaderScopes); got != "links:read" {
		t.Errorf("token a after b changed: scopes %q", got)
	}
	if got := f.check(b, "").header.Get(HeaderScopes); got != "links:read,qr:read" {
		t.Errorf("token b after its change: scopes %q", got)
	}

	for _, name := range []string{"a", "b", "c"} {
		f.index.DeleteToken(types.NamespacedName{Namespace: "team-a", Name: name})
	}
	// Specs go with the last token holding them (after a GC runs their
	// cleanups, in the background).
	deadline := time.Now().Add(10 * time.Second)
	for f.index.specs.len() > 0 && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if n := f.index.specs.len(); n != 0 {
		t.Errorf("%d specs left with no token holding them", n)
	}
}
