package check

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	clocktesting "k8s.io/utils/clock/testing"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// newSourcesFixture is a check server over loopback (its clients are
// 127.0.0.1) that believes X-Forwarded-For from trusted.
func newSourcesFixture(t *testing.T, trusted []netip.Prefix, tokenReviewIgnores bool) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: clocktesting.NewFakeClock(t0), index: NewIndex()}
	h := NewHandler(f.index, f.clock, 500, prometheus.NewRegistry())
	h.TrustedProxies, h.TokenReviewIgnoresSources = trusted, tokenReviewIgnores
	f.usage, f.metrics = h.Usage, h.Metrics
	f.server = httptest.NewServer(h.ServeMux())
	t.Cleanup(f.server.Close)
	return f
}

func sources(cidrs ...string) func(*keymintv1alpha1.ApiToken) {
	return func(t *keymintv1alpha1.ApiToken) { t.Spec.AllowedSourceCIDRs = cidrs }
}

// TestCheckAllowedSources: a token restricted to source addresses passes
// /check only from them, the address read from X-Forwarded-For only behind
// a trusted proxy; its ServiceUser's list narrows the token's; a refusal
// is 403 source_not_allowed and spends none of the token's budget.
func TestCheckAllowedSources(t *testing.T) {
	xff := func(addr string) []string { return []string{"X-Forwarded-For", addr} }

	t.Run("from the connection's own address", func(t *testing.T) {
		f := newSourcesFixture(t, nil, false)
		f.user("exporter")
		loopback := f.token("loopback", "exporter", sources("127.0.0.0/8"))
		office := f.token("office", "exporter", sources("10.0.0.0/8"))
		anywhere := f.token("anywhere", "exporter")

		if a := f.check(loopback, ""); a.status != http.StatusOK {
			t.Errorf("from 127.0.0.1, allowed 127.0.0.0/8: %d %v", a.status, a.body)
		}
		if a := f.check(anywhere, ""); a.status != http.StatusOK {
			t.Errorf("no list: %d %v", a.status, a.body)
		}
		expectError(t, f.check(office, ""), http.StatusForbidden, SourceNotAllowed)
		// Not behind a trusted proxy: what X-Forwarded-For says is not read.
		expectError(t, f.check(office, "", xff("10.1.2.3")...), http.StatusForbidden, SourceNotAllowed)
	})

	t.Run("behind a trusted proxy", func(t *testing.T) {
		f := newSourcesFixture(t, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, false)
		f.user("exporter")
		office := f.token("office", "exporter", sources("10.0.0.0/8", "2001:db8::/32"))

		if a := f.check(office, "", xff("10.1.2.3")...); a.status != http.StatusOK {
			t.Errorf("client 10.1.2.3 through the proxy: %d %v", a.status, a.body)
		}
		if a := f.check(office, "", xff("2001:db8::7")...); a.status != http.StatusOK {
			t.Errorf("client 2001:db8::7 through the proxy: %d %v", a.status, a.body)
		}
		// The rightmost untrusted hop is the client: one the client wrote
		// itself, to the left, is not.
		expectError(t, f.check(office, "", xff("10.1.2.3, 192.0.2.9")...), http.StatusForbidden, SourceNotAllowed)
		// The proxy itself, with no header: 127.0.0.1, not allowed.
		expectError(t, f.check(office, ""), http.StatusForbidden, SourceNotAllowed)
		// A header that does not parse names no client.
		expectError(t, f.check(office, "", xff("not-an-address")...), http.StatusForbidden, SourceNotAllowed)
		// A trusted proxy is never the client, even when a token allows
		// its address: one that names no client leaves it unknown.
		local := f.token("local", "exporter", sources("127.0.0.0/8"))
		expectError(t, f.check(local, ""), http.StatusForbidden, SourceNotAllowed)
		if a := f.check(local, "", xff("127.0.0.9")...); a.status != http.StatusOK {
			t.Errorf("client 127.0.0.9 through the trusted 127.0.0.1: %d %v", a.status, a.body)
		}
	})

	t.Run("the ServiceUser's list narrows the token's", func(t *testing.T) {
		f := newSourcesFixture(t, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, false)
		f.user("exporter", func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.AllowedSourceCIDRs = []string{"10.1.0.0/16"} })
		wide := f.token("wide", "exporter", sources("10.0.0.0/8"))
		none := f.token("none", "exporter")

		if a := f.check(wide, "", xff("10.1.2.3")...); a.status != http.StatusOK {
			t.Errorf("in both lists: %d %v", a.status, a.body)
		}
		expectError(t, f.check(wide, "", xff("10.2.0.1")...), http.StatusForbidden, SourceNotAllowed)
		if a := f.check(none, "", xff("10.1.9.9")...); a.status != http.StatusOK {
			t.Errorf("the user's list alone, inside: %d %v", a.status, a.body)
		}
		expectError(t, f.check(none, "", xff("192.0.2.1")...), http.StatusForbidden, SourceNotAllowed)
	})

	t.Run("a refusal spends no budget", func(t *testing.T) {
		f := newSourcesFixture(t, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, false)
		f.user("exporter")
		tok := f.token("office", "exporter", sources("10.0.0.0/8"), func(t *keymintv1alpha1.ApiToken) { t.Spec.RequestsPerMinute = ptrTo(int32(2)) })
		for range 5 {
			expectError(t, f.check(tok, "", xff("192.0.2.1")...), http.StatusForbidden, SourceNotAllowed)
		}
		for i := range 2 {
			if a := f.check(tok, "", xff("10.0.0.1")...); a.status != http.StatusOK {
				t.Fatalf("check %d from inside after 5 refusals outside: %d %v", i+1, a.status, a.body)
			}
		}
		expectError(t, f.check(tok, "", xff("10.0.0.1")...), http.StatusTooManyRequests, RateLimited)
	})
}

// TestTokenReviewAllowedSources: TokenReview carries no client address, so
// a token restricted to sources is refused there, unless the flag says its
// callers are trusted.
func TestTokenReviewAllowedSources(t *testing.T) {
	for _, ignores := range []bool{false, true} {
		f := newSourcesFixture(t, nil, ignores)
		f.user("exporter")
		restricted := f.token("office", "exporter", sources("10.0.0.0/8"))
		free := f.token("free", "exporter")

		a := f.do(http.MethodPost, TokenReviewV1, nil, reviewBody("authentication.k8s.io/v1", restricted))
		status := a.body["status"].(map[string]any)
		if got := status["authenticated"] == true; got != ignores {
			t.Errorf("--tokenreview-ignores-source-cidrs=%v: authenticated %v (%v)", ignores, got, status)
		}
		if !ignores && status["error"] != SourceNotAllowed.Message() {
			t.Errorf("refused with %v, want %q", status["error"], SourceNotAllowed.Message())
		}
		a = f.do(http.MethodPost, TokenReviewV1, nil, reviewBody("authentication.k8s.io/v1", free))
		if a.body["status"].(map[string]any)["authenticated"] != true {
			t.Errorf("a token without a list refused: %v", a.body)
		}
	}
}

func ptrTo[T any](v T) *T { return &v }
