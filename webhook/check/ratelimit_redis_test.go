package check

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"k8s.io/apimachinery/pkg/types"

	"github.com/keymint/keymint/internal/testenv"

	"github.com/keymint/keymint/internal/tokenstate"
)

// startRedis starts a real redis-server for one test.
func startRedis(t *testing.T) *testenv.Redis {
	t.Helper()
	r, err := testenv.StartRedis(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Stop() })
	return r
}

// replica is one check server's limiter over the shared Redis, as a replica
// builds it.
func replica(t *testing.T, addr string, mode FailureMode) (*RedisLimiter, *prometheus.Registry) {
	t.Helper()
	client := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond, ReadTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = client.Close() })
	reg := prometheus.NewRegistry()
	l, err := NewRedisLimiter(client, mode, reg)
	if err != nil {
		t.Fatal(err)
	}
	return l, reg
}

func TestRedisBudgetsHoldAcrossReplicasAndRestarts(t *testing.T) {
	srv := startRedis(t)
	ctx := context.Background()
	tok := types.NamespacedName{Namespace: "team-a", Name: "exporter"}
	a, _ := replica(t, srv.Addr, FailOpen)
	b, _ := replica(t, srv.Addr, FailOpen)

	start := time.Now()
	passed := 0
	for i := range 40 {
		l := a
		if i%2 == 1 {
			l = b
		}
		if l.Allow(ctx, tok, own(60), time.Now()).Allowed {
			passed++
		}
	}
	// A replica restarted midway: a new limiter, nothing kept in process.
	restarted, _ := replica(t, srv.Addr, FailOpen)
	var last Decision
	for range 40 {
		if last = restarted.Allow(ctx, tok, own(60), time.Now()); last.Allowed {
			passed++
		}
	}
	elapsed := time.Since(start)
	// 60 at once, then one a second: what came back while the test ran is
	// the only slack.
	if refill := int(elapsed / time.Second); passed < 60 || passed > 60+refill {
		t.Errorf("%d checks passed across 3 limiters in %v; want 60 (plus %d refilled)", passed, elapsed, refill)
	}
	if last.Allowed || last.RetryAfter <= 0 || last.RetryAfter > time.Second || last.Remaining != 0 {
		t.Errorf("the last check: %+v; want refused, retry within 1s, 0 left", last)
	}
	t.Logf("%d of 80 checks passed across 3 limiters in %v", passed, elapsed)
}

func TestRedisCountsACheckAgainstAllItsBudgetsOrNone(t *testing.T) {
	srv := startRedis(t)
	ctx := context.Background()
	l, _ := replica(t, srv.Addr, FailClosed)
	tok := types.NamespacedName{Namespace: "ns", Name: "t"}
	var both, reads tokenstate.Budgets
	both.Add("links:write", 1)
	both.Add("links:read", 100)
	reads.Add("links:read", 100)
	if d := l.Allow(ctx, tok, both, time.Now()); !d.Allowed || d.Scope != "links:write" || d.Remaining != 0 {
		t.Fatalf("first: %+v", d)
	}
	if d := l.Allow(ctx, tok, both, time.Now()); d.Allowed || d.Scope != "links:write" || d.RetryAfter < 59*time.Second {
		t.Fatalf("second: %+v, want refused by links:write for about a minute", d)
	}
	if d := l.Allow(ctx, tok, reads, time.Now()); !d.Allowed || d.Remaining != 98 {
		t.Errorf("links:read: %+v, want 98 left: the refused check took nothing", d)
	}
}

func TestRedisDownFailsOpenOrClosedAndRecovers(t *testing.T) {
	srv := startRedis(t)
	ctx := context.Background()
	tok := types.NamespacedName{Namespace: "ns", Name: "t"}
	// A rate under 50 a minute leases one check at a time: every check asks Redis.
	open, openReg := replica(t, srv.Addr, FailOpen)
	closed, closedReg := replica(t, srv.Addr, FailClosed)
	for _, l := range []*RedisLimiter{open, closed} {
		if d := l.Allow(ctx, tok, own(40), time.Now()); !d.Allowed {
			t.Fatalf("with Redis up: %+v", d)
		}
	}

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if d := open.Allow(ctx, tok, own(40), now); !d.Allowed || d.Unavailable {
		t.Errorf("fail open, Redis down: %+v; want allowed by the replica's own budget", d)
	}
	if d := open.Allow(ctx, tok, own(40), now); !d.Allowed || d.Remaining != 38 {
		t.Errorf("fail open counts in process meanwhile: %+v, want 38 left", d)
	}
	if d := closed.Allow(ctx, tok, own(40), now); d.Allowed || !d.Unavailable || d.RetryAfter != redisBackoff {
		t.Errorf("fail closed, Redis down: %+v; want refused as unavailable, retry in %v", d, redisBackoff)
	}
	if open.Up() || closed.Up() {
		t.Error("Up() says Redis answers")
	}
	if got := testutil.ToFloat64(open.up); got != 0 {
		t.Errorf("keymint_rate_limit_backend_up = %v, want 0", got)
	}
	for name, reg := range map[string]*prometheus.Registry{"open": openReg, "closed": closedReg} {
		if n, err := testutil.GatherAndCount(reg, "keymint_rate_limit_degraded_total"); err != nil || n != 1 {
			t.Errorf("%s: keymint_rate_limit_degraded_total series %d (%v)", name, n, err)
		}
	}

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	// Within the back-off nothing asks Redis; after it, the next check does.
	later := now.Add(redisBackoff + time.Millisecond)
	for _, l := range []*RedisLimiter{open, closed} {
		if d := l.Allow(ctx, tok, own(40), later); !d.Allowed || d.Unavailable || !l.Up() {
			t.Errorf("Redis back (mode %s): %+v, up %v", l.mode, d, l.Up())
		}
	}
	if got := testutil.ToFloat64(open.up); got != 1 {
		t.Errorf("keymint_rate_limit_backend_up = %v after recovery, want 1", got)
	}
}

func TestRedisLeasesNeverExceedARateAcrossReplicas(t *testing.T) {
	srv := startRedis(t)
	ctx := context.Background()
	tok := types.NamespacedName{Namespace: "ns", Name: "busy"}
	const rate = 6000 // leases of 120 checks
	replicas := []*RedisLimiter{}
	for range 3 {
		l, _ := replica(t, srv.Addr, FailClosed)
		replicas = append(replicas, l)
	}
	start := time.Now()
	passed := 0
	for i := range 3 * rate {
		if replicas[i%3].Allow(ctx, tok, own(rate), time.Now()).Allowed {
			passed++
		}
	}
	elapsed := time.Since(start)
	refill := int(elapsed * rate / time.Minute)
	// Never more than the rate (plus its refill); at most one lease per
	// replica left unspent.
	if passed > rate+refill || passed < rate-3*int(leaseSize(rate)) {
		t.Errorf("%d checks passed across 3 replicas in %v; want at most %d (+%d refilled), at least %d", passed, elapsed, rate, refill, rate-3*int(leaseSize(rate)))
	}
	t.Logf("%d of %d checks passed at %d a minute across 3 replicas in %v (leases of %d)", passed, 3*rate, rate, elapsed, leaseSize(rate))

	// A refusal is repeated locally until its retry time, without asking
	// Redis: at 1 a minute, for a minute.
	slow := types.NamespacedName{Namespace: "ns", Name: "slow"}
	if d := replicas[0].Allow(ctx, slow, own(1), time.Now()); !d.Allowed {
		t.Fatalf("first check at 1 a minute: %+v", d)
	}
	d := replicas[0].Allow(ctx, slow, own(1), time.Now())
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if again := replicas[0].Allow(ctx, slow, own(1), time.Now()); d.Allowed || again.Allowed || again.Unavailable || again.RetryAfter > d.RetryAfter {
		t.Errorf("refused %+v, then with Redis down %+v; want the same refusal, from the lease", d, again)
	}
}
