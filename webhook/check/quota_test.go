package check

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/tokenstate"
)

// quotaReplicas are check servers over one clock, each with its own index
// fed the same objects and its own limiter, as replicas are.
func quotaReplicas(t *testing.T, limiters ...RateLimiter) []*fixture {
	t.Helper()
	clock := clocktesting.NewFakeClock(t0)
	var out []*fixture
	for _, l := range limiters {
		f := &fixture{t: t, clock: clock, index: NewIndex()}
		h := NewHandler(f.index, clock, 500, prometheus.NewRegistry())
		h.Limiter = l
		f.usage, f.metrics = h.Usage, h.Metrics
		f.server = httptest.NewServer(h.ServeMux())
		t.Cleanup(f.server.Close)
		out = append(out, f)
	}
	return out
}

// withQuota sets the token's quota: uses, per refill period when every > 0.
func withQuota(uses int64, every time.Duration) func(*keymintv1alpha1.ApiToken) {
	return func(t *keymintv1alpha1.ApiToken) {
		t.Spec.Quota = &keymintv1alpha1.Quota{Uses: uses}
		if every > 0 {
			t.Spec.Quota.Refill = &keymintv1alpha1.QuotaRefill{Every: metav1.Duration{Duration: every}}
		}
	}
}

// issueEverywhere indexes one user and one token on every replica and
// returns the token.
func issueEverywhere(replicas []*fixture, mutate ...func(*keymintv1alpha1.ApiToken)) string {
	var plain string
	for i, f := range replicas {
		f.user("exporter", func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.RequestsPerMinute = 1000000 })
		if i == 0 {
			plain = f.token("exporter-token", "exporter", mutate...)
			continue
		}
		f.tokenWithPlain(plain, "exporter-token", "exporter", mutate...)
	}
	return plain
}

// TestQuotaIsExactAcrossReplicasWithRedis: a quota of 100 uses an hour,
// checked through two replicas that share Redis, passes exactly 100 checks
// and refuses the 101st with 429 quota_exceeded, saying it is the quota
// and when it refills; TokenReview refuses it too; the next period passes
// again.
func TestQuotaIsExactAcrossReplicasWithRedis(t *testing.T) {
	srv := startRedis(t)
	a, _ := replica(t, srv.Addr, FailClosed)
	b, _ := replica(t, srv.Addr, FailClosed)
	replicas := quotaReplicas(t, a, b)
	tok := issueEverywhere(replicas, withQuota(100, time.Hour))

	for i := range 100 {
		r := replicas[i%2].check(tok, "")
		if r.status != http.StatusOK {
			t.Fatalf("check %d of 100 through replica %d: %d %v", i+1, i%2, r.status, r.body)
		}
		if got, want := r.header.Get(HeaderQuotaRemaining), strconv.Itoa(99-i); got != want {
			t.Fatalf("check %d: X-Quota-Remaining %q, want %q (one count across replicas)", i+1, got, want)
		}
	}
	refill := t0.Truncate(time.Hour).Add(time.Hour)
	for _, f := range replicas {
		r := f.check(tok, "")
		expectError(t, r, http.StatusTooManyRequests, QuotaExceeded)
		if msg, _ := r.body["message"].(string); !strings.Contains(msg, "quota, not the rate limit") || !strings.Contains(msg, refill.Format(time.RFC3339)) {
			t.Errorf("the refusal's message %q does not say it is the quota and when it refills", msg)
		}
		if got, want := r.header.Get("Retry-After"), strconv.Itoa(int(refill.Sub(t0).Seconds())); got != want {
			t.Errorf("Retry-After %q, want %q: seconds until the refill", got, want)
		}
		if r.header.Get(HeaderQuotaRemaining) != "0" || r.header.Get(HeaderQuotaLimit) != "100" || r.header.Get(HeaderQuotaReset) != strconv.Itoa(int(refill.Unix())) {
			t.Errorf("quota headers %v", r.header)
		}
		if r.header.Get("X-Ratelimit-Remaining") == "0" {
			t.Error("the rate is spent too: the refusal would not be the quota's")
		}
	}
	st := replicas[1].do(http.MethodPost, TokenReviewV1, nil, reviewBody("authentication.k8s.io/v1", tok)).body["status"].(map[string]any)
	if st["authenticated"] == true || st["error"] != QuotaExceeded.Message() {
		t.Errorf("TokenReview with the quota spent: %v", st)
	}

	replicas[0].clock.SetTime(refill)
	for _, f := range replicas {
		if r := f.check(tok, ""); r.status != http.StatusOK {
			t.Errorf("after the refill: %d %v", r.status, r.body)
		}
	}
}

// TestQuotaInProcessBound: with budgets in process each replica counts
// alone, so behind N replicas a token passes at most N × its uses in a
// period (docs/checks.md), and one replica is exact. Without refill the
// uses are for good, and the refusal says so.
func TestQuotaInProcessBound(t *testing.T) {
	replicas := quotaReplicas(t, NewLimiter(), NewLimiter())
	tok := issueEverywhere(replicas, withQuota(10, 24*time.Hour))
	passed := 0
	for i := range 30 {
		if replicas[i%2].check(tok, "").status == http.StatusOK {
			passed++
		}
	}
	if passed != 2*10 {
		t.Errorf("two replicas in process passed %d checks of a quota of 10, want the documented bound 2 × 10", passed)
	}

	one := quotaReplicas(t, NewLimiter())
	tok = issueEverywhere(one, withQuota(3, 0))
	for i := range 3 {
		if r := one[0].check(tok, ""); r.status != http.StatusOK || r.header.Get(HeaderQuotaReset) != "" {
			t.Fatalf("check %d of 3: %d, X-Quota-Reset %q (none without refill)", i+1, r.status, r.header.Get(HeaderQuotaReset))
		}
	}
	r := one[0].check(tok, "")
	expectError(t, r, http.StatusTooManyRequests, QuotaExceeded)
	if msg, _ := r.body["message"].(string); !strings.Contains(msg, "for good") || r.header.Get("Retry-After") != "" {
		t.Errorf("a quota without refill: message %q, Retry-After %q", msg, r.header.Get("Retry-After"))
	}
	one[0].clock.Step(365 * 24 * time.Hour)
	expectError(t, one[0].check(tok, ""), http.StatusTooManyRequests, QuotaExceeded)
	// rate_limit_status=403 answers a spent quota as it does a rate.
	expectError(t, one[0].check(tok, "rate_limit_status=403"), http.StatusForbidden, QuotaExceeded)
}

// TestQuotaFromTheServiceUser: a token without a quota of its own counts
// against its user's; its own applies where it is narrower, and the
// user's bounds one that asks for more.
func TestQuotaFromTheServiceUser(t *testing.T) {
	f := quotaReplicas(t, NewLimiter())[0]
	f.user("exporter", func(u *keymintv1alpha1.ServiceUser) {
		u.Spec.TokenPolicy.Quota = &keymintv1alpha1.Quota{Uses: 2}
	})
	inherits := f.token("inherits", "exporter")
	narrower := f.token("narrower", "exporter", withQuota(1, 0))
	wider := f.token("wider", "exporter", withQuota(5, 0))
	for name, tc := range map[string]struct {
		tok  string
		uses int
	}{"inherits": {inherits, 2}, "narrower": {narrower, 1}, "asks for more": {wider, 2}} {
		for i := range tc.uses {
			if r := f.check(tc.tok, ""); r.status != http.StatusOK || r.header.Get(HeaderQuotaLimit) != strconv.Itoa(tc.uses) {
				t.Fatalf("%s: check %d: %d, X-Quota-Limit %q, want %d", name, i+1, r.status, r.header.Get(HeaderQuotaLimit), tc.uses)
			}
		}
		expectError(t, f.check(tc.tok, ""), http.StatusTooManyRequests, QuotaExceeded)
	}
}

// TestRedisQuotaRefusalsTakeNothing: a refused use is taken back, so
// raising a spent quota mid-period lets exactly the difference through.
func TestRedisQuotaRefusalsTakeNothing(t *testing.T) {
	srv := startRedis(t)
	l, _ := replica(t, srv.Addr, FailClosed)
	ctx := t.Context()
	tok := types.NamespacedName{Namespace: "team-a", Name: "exporter"}
	q := tokenstate.QuotaUse{Uses: 2, Refill: t0.Add(time.Hour)}
	var got []bool
	for range 5 {
		got = append(got, l.SpendQuota(ctx, tok, q, t0).Allowed)
	}
	q.Uses = 3
	got = append(got, l.SpendQuota(ctx, tok, q, t0).Allowed, l.SpendQuota(ctx, tok, q, t0).Allowed)
	if want := []bool{true, true, false, false, false, true, false}; !slices.Equal(got, want) {
		t.Errorf("uses 2 five times, then 3 twice: %v, want %v", got, want)
	}
}

// TestEditingTheRefillStartsNoFreshCount: a period is counted until it
// ends, whatever the refill says meanwhile. Changing refill.every (even to
// a longer, narrower period, which needs no mint), or dropping the refill,
// never starts a fresh count: in process and in Redis alike. The changed
// refill takes effect at the next period, and a lifetime count that gets a
// refill becomes the current period's.
func TestEditingTheRefillStartsNoFreshCount(t *testing.T) {
	srv := startRedis(t)
	redisLimiter, _ := replica(t, srv.Addr, FailClosed)
	for name, l := range map[string]RateLimiter{"in process": NewLimiter(), "redis": redisLimiter} {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			tok := types.NamespacedName{Namespace: "team-a", Name: "edited-" + strings.ReplaceAll(name, " ", "-")}
			quota := func(every time.Duration, at time.Time) tokenstate.QuotaUse {
				q := &keymintv1alpha1.Quota{Uses: 10}
				if every > 0 {
					q.Refill = &keymintv1alpha1.QuotaRefill{Every: metav1.Duration{Duration: every}}
				}
				return tokenstate.QuotaAt(q, at)
			}
			spend := func(q tokenstate.QuotaUse, at time.Time, n int) (passed int, last QuotaDecision) {
				for range n {
					if last = l.SpendQuota(ctx, tok, q, at); last.Allowed {
						passed++
					}
				}
				return passed, last
			}
			day := quota(24*time.Hour, t0)
			if passed, _ := spend(day, t0, 12); passed != 10 {
				t.Fatalf("a quota of 10 a day passed %d of 12", passed)
			}
			for i, every := range []time.Duration{24*time.Hour + time.Minute, 24*time.Hour + 2*time.Minute, 48 * time.Hour, time.Hour, 0} {
				if passed, d := spend(quota(every, t0), t0, 5); passed != 0 || !d.Refill.Equal(day.Refill) {
					t.Errorf("edit %d (every %v): %d more checks passed, refill %v; want none until the day's end, %v", i+1, every, passed, d.Refill, day.Refill)
				}
			}
			// At the day's end the edited quota, a lifetime one, takes
			// effect: a fresh count, for good.
			after := day.Refill
			if passed, d := spend(quota(0, after), after, 12); passed != 10 || !d.Refill.IsZero() {
				t.Errorf("after the day's end, without refill: %d passed, refill %v; want 10, none", passed, d.Refill)
			}
			// The lifetime count, given a refill, is the current hour's.
			hour := quota(time.Hour, after.Add(time.Minute))
			if passed, d := spend(hour, after.Add(time.Minute), 3); passed != 0 || !d.Refill.Equal(hour.Refill) {
				t.Errorf("a spent lifetime quota given a refill: %d passed, refill %v; want none until %v", passed, d.Refill, hour.Refill)
			}
			if passed, _ := spend(quota(time.Hour, hour.Refill), hour.Refill, 12); passed != 10 {
				t.Errorf("the next hour: %d passed, want 10", passed)
			}
		})
	}
}

// TestQuotaStoreDownFailsClosedAsUnavailable: with Redis down and keymint
// set to fail closed, a quota token is refused on /check and by
// TokenReview with words that say the store is unreachable, not that the
// token spent its quota.
func TestQuotaStoreDownFailsClosedAsUnavailable(t *testing.T) {
	srv := startRedis(t)
	l, _ := replica(t, srv.Addr, FailClosed)
	replicas := quotaReplicas(t, l)
	tok := issueEverywhere(replicas, withQuota(100, time.Hour))
	f := replicas[0]
	if r := f.check(tok, ""); r.status != http.StatusOK {
		t.Fatalf("with Redis up: %d %v", r.status, r.body)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}

	r := f.check(tok, "")
	expectError(t, r, http.StatusTooManyRequests, QuotaExceeded)
	if msg, _ := r.body["message"].(string); !strings.Contains(msg, "unreachable") || strings.Contains(msg, "has used its quota") {
		t.Errorf("/check with the store down: message %q, want one saying the store is unreachable", msg)
	}
	if got := r.header.Get("Retry-After"); got != strconv.Itoa(int(redisBackoff/time.Second)) {
		t.Errorf("Retry-After %q, want the back-off, %v", got, redisBackoff)
	}
	if r.header.Get(HeaderQuotaRemaining) != "" || r.header.Get(HeaderQuotaReset) != "" {
		t.Errorf("quota headers %v with the store down: they would say the quota is spent", r.header)
	}
	st := f.do(http.MethodPost, TokenReviewV1, nil, reviewBody("authentication.k8s.io/v1", tok)).body["status"].(map[string]any)
	if msg, _ := st["error"].(string); st["authenticated"] == true || !strings.Contains(msg, "unreachable") {
		t.Errorf("TokenReview with the store down: %v; want refused, saying the store is unreachable", st)
	}
}

// TestRedisQuotaWithoutRefillGoesWithItsToken: a quota without refill
// counts for good, but not past its token: deleting the ApiToken deletes
// its count (off the feed's goroutine), so one created again under the
// name starts afresh.
func TestRedisQuotaWithoutRefillGoesWithItsToken(t *testing.T) {
	srv := startRedis(t)
	a, _ := replica(t, srv.Addr, FailClosed)
	b, _ := replica(t, srv.Addr, FailClosed)
	ctx := t.Context()
	tok := types.NamespacedName{Namespace: "team-a", Name: "exporter"}
	q := tokenstate.QuotaUse{Uses: 1}
	if !a.SpendQuota(ctx, tok, q, t0).Allowed || b.SpendQuota(ctx, tok, q, t0).Allowed {
		t.Fatal("one use across two replicas: want the first allowed and the second refused")
	}
	a.Forget(tok)
	b.Forget(tok) // every replica sees the deletion; the second finds nothing
	err := testenv.Poll(ctx, 5*time.Second, "the deleted token's quota key to go", func(ctx context.Context) error {
		if n, err := a.client.Exists(ctx, quotaKey(tok)).Result(); err != nil || n != 0 {
			return fmt.Errorf("exists %d (%v)", n, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !b.SpendQuota(ctx, tok, q, t0).Allowed {
		t.Error("a token created again under the name continues the deleted one's count")
	}
	if !a.Up() || !b.Up() {
		t.Error("forgetting a token marked Redis down")
	}
}
