package check

// ratelimit_redis.go: budgets shared by every replica through Redis, one
// round trip per check.

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"k8s.io/apimachinery/pkg/types"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/keymint/keymint/internal/tokenstate"
)

// gcraScript decides every budget of one check at once, on Redis's clock, so
// replicas whose clocks differ still share one budget; see its comments.
//
//go:embed gcra.lua
var gcraScript string

// FailureMode is what a RedisLimiter does while Redis cannot be reached.
type FailureMode string

const (
	// FailOpen decides with the replica's own LocalLimiter: limits hold per
	// replica (N × the rate behind N replicas) until Redis is back.
	FailOpen FailureMode = "open"
	// FailClosed refuses every check with 429 until Redis is back.
	FailClosed FailureMode = "closed"
)

// redisBackoff is how long a replica stops asking Redis after a failed
// round trip: a dead server costs one timeout, not one per check.
const redisBackoff = time.Second

// Leases. A check with one budget takes up to leaseShare of its rate from
// Redis at once, and the replica spends the rest locally for up to
// leaseTTL: one round trip per lease instead of per check. What a replica
// leases and does not spend in time is lost to everyone, so a rate is never
// exceeded, and at most N × leaseShare of it goes unused behind N replicas.
// Rates below 1/leaseShare lease one check at a time: exact.
const (
	leaseShare = 50 // 1/50 = 2% of the rate
	leaseMax   = 1000
	leaseTTL   = time.Second
)

// leaseSize is how many checks a single-budget check asks Redis for.
func leaseSize(limit int32) int32 {
	return min(max(1, limit/leaseShare), leaseMax)
}

// lease is what a replica holds of one budget: checks it may spend without
// asking Redis, or a refusal it may repeat, until `until`.
type lease struct {
	scope string
	left  int32 // checks left to spend; 0 with refused false: ask Redis
	// refused: Redis refused; the same answer holds until then, since a TAT
	// only moves later.
	refused bool
	until   time.Time
	d       Decision // Redis's answer at the lease, for the headers
}

// RedisLimiter keeps the budgets in Redis, so a token's rate holds across
// replicas and restarts. Each check is one EVALSHA of gcra.lua; the keys of
// one token share a hash slot ({namespace/name}), so it works with Redis
// Cluster too.
type RedisLimiter struct {
	client   redis.UniversalClient
	script   *redis.Script
	quota    *redis.Script
	prefix   string
	mode     FailureMode
	fallback *LocalLimiter

	// NoLeases makes every check a round trip to Redis: for measuring what
	// leases save, not for production.
	NoLeases bool

	mu     sync.Mutex
	leases map[types.NamespacedName][]lease

	// downUntil is when, in Unix nanoseconds, to try Redis again after a
	// failure; zero while it answers.
	downUntil atomic.Int64
	up        prometheus.Gauge
	degraded  prometheus.Counter

	// gone are the quota keys of deleted tokens, deleted one at a time off
	// the feed's goroutine by the worker forgetting starts.
	gone       chan string
	forgetting sync.Once
}

// NewRedisLimiter returns a limiter over client, with its metrics
// registered with reg.
func NewRedisLimiter(client redis.UniversalClient, mode FailureMode, reg prometheus.Registerer) (*RedisLimiter, error) {
	if mode != FailOpen && mode != FailClosed {
		return nil, fmt.Errorf("--rate-limit-redis-failure must be %q or %q, not %q", FailOpen, FailClosed, mode)
	}
	degraded := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keymint_rate_limit_degraded_total",
		Help: "Checks decided without the shared rate-limit store, by mode: open (this replica's own budgets) or closed (refused).",
	}, []string{"mode"})
	l := &RedisLimiter{
		client: client, script: redis.NewScript(gcraScript), quota: redis.NewScript(quotaScript), prefix: "keymint:rl:", mode: mode, fallback: NewLimiter(),
		gone:   make(chan string, forgetQueue),
		leases: map[types.NamespacedName][]lease{},
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keymint_rate_limit_backend_up",
			Help: "1 while the shared rate-limit store (Redis) answers this replica, 0 while checks are decided without it.",
		}),
		degraded: degraded.WithLabelValues(string(mode)),
	}
	l.up.Set(1)
	if reg != nil {
		for _, c := range []prometheus.Collector{l.up, degraded} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return l, nil
}

// Up reports whether Redis answered the last round trip.
func (l *RedisLimiter) Up() bool { return l.downUntil.Load() == 0 }

// Allow implements RateLimiter. The budget is decided on Redis's clock;
// now places Reset and times leases.
func (l *RedisLimiter) Allow(ctx context.Context, token types.NamespacedName, bs tokenstate.Budgets, now time.Time) Decision {
	single := bs.N == 1 && !l.NoLeases
	if single {
		if d, ok := l.spendLease(token, bs.List[0], now); ok {
			return d
		}
	}
	if until := l.downUntil.Load(); until != 0 && now.UnixNano() < until {
		return l.degradedDecision(ctx, token, bs, now)
	}
	keys := make([]string, bs.N)
	args := make([]any, 2*bs.N)
	tag := "{" + token.Namespace + "/" + token.Name + "}"
	for i := range bs.N {
		keys[i] = l.prefix + tag + ":" + bs.List[i].Scope
		args[2*i], args[2*i+1] = bs.List[i].Limit, 1
	}
	if single {
		args[1] = leaseSize(bs.List[0].Limit)
	}
	res, err := l.script.Run(ctx, l.client, keys, args...).Int64Slice()
	if err != nil || len(res) != 6 || res[1] < 1 || int(res[1]) > bs.N {
		if err == nil {
			err = fmt.Errorf("gcra.lua answered %v", res)
		}
		l.markDown(ctx, err, now)
		return l.degradedDecision(ctx, token, bs, now)
	}
	l.markUp(ctx)
	b := bs.List[int(res[1])-1]
	d := Decision{
		Allowed: res[0] == 1, Limit: b.Limit, Remaining: int32(res[2]), Scope: b.Scope,
		Reset: now.Add(time.Duration(res[3]) * time.Microsecond), RetryAfter: time.Duration(res[4]) * time.Microsecond,
	}
	if single && (res[5] > 1 || !d.Allowed) {
		l.keepLease(token, b.Scope, int32(max(res[5]-1, 0)), d, now)
	}
	if d.Allowed && res[5] > 1 {
		d.Remaining += int32(res[5] - 1) // leased here, not yet spent
	}
	return d
}

// spendLease answers from a lease this replica holds of the budget, if any.
func (l *RedisLimiter) spendLease(token types.NamespacedName, b tokenstate.Budget, now time.Time) (Decision, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ls := l.leases[token]
	for i := range ls {
		x := &ls[i]
		if x.scope != b.Scope || !now.Before(x.until) {
			continue
		}
		switch {
		case x.d.Limit != b.Limit:
			continue // the rate changed since: ask Redis
		case x.refused:
			d := x.d
			d.RetryAfter = x.until.Sub(now)
			return d, true
		case x.left > 0:
			x.left--
			d := x.d
			d.Remaining += x.left
			return d, true
		}
	}
	return Decision{}, false
}

// keepLease records what Redis granted beyond this check, or its refusal,
// replacing what was held of that budget.
func (l *RedisLimiter) keepLease(token types.NamespacedName, scope string, left int32, d Decision, now time.Time) {
	x := lease{scope: scope, left: left, refused: !d.Allowed, until: now.Add(leaseTTL), d: d}
	if x.refused {
		x.until = now.Add(d.RetryAfter)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ls := l.leases[token]
	for i := range ls {
		if ls[i].scope == scope {
			ls[i] = x
			return
		}
	}
	l.leases[token] = append(ls, x)
}

// markUp records that Redis answered, and says so once after a failure.
func (l *RedisLimiter) markUp(ctx context.Context) {
	if l.downUntil.Swap(0) != 0 {
		l.up.Set(1)
		logf.FromContext(ctx).Info("Rate-limit store answers again: budgets and quota counts are shared across replicas")
	}
}

// markDown stops asking Redis for redisBackoff, and says so once. A round
// trip that failed because the request's own context ended (the client
// went away) is not Redis's fault: it marks nothing, and whatever is
// answered goes nowhere.
func (l *RedisLimiter) markDown(ctx context.Context, err error, now time.Time) {
	if ctx.Err() != nil {
		return
	}
	if l.downUntil.Swap(now.Add(redisBackoff).UnixNano()) == 0 {
		l.up.Set(0)
		how := "checks use this replica's own budgets until it is back (fail open)"
		if l.mode == FailClosed {
			how = "checks are refused until it is back (fail closed)"
		}
		logf.FromContext(ctx).Error(err, "Rate-limit store unreachable: "+how)
	}
}

// degradedDecision decides without Redis, as the failure mode says.
func (l *RedisLimiter) degradedDecision(ctx context.Context, token types.NamespacedName, bs tokenstate.Budgets, now time.Time) Decision {
	l.degraded.Inc()
	if l.mode == FailOpen {
		return l.fallback.Allow(ctx, token, bs, now)
	}
	b := bs.List[0]
	return Decision{Limit: b.Limit, Scope: b.Scope, Reset: now.Add(redisBackoff), RetryAfter: redisBackoff, Unavailable: true}
}

// Forget implements RateLimiter. Rate keys expire once their budget is
// whole again, and a refilled quota's key after its period; a quota without
// refill counts in one key for good, which goes with its token: each
// replica queues its deletion (once is enough), done off the feed's
// goroutine so that a slow Redis never holds up the index. A deletion that
// fails, or finds the queue full, leaves the key: a token created again
// under the name would continue its count.
func (l *RedisLimiter) Forget(token types.NamespacedName) {
	l.fallback.Forget(token)
	l.mu.Lock()
	delete(l.leases, token)
	l.mu.Unlock()
	l.forgetting.Do(func() { go l.deleteGone() })
	select {
	case l.gone <- quotaKey(token):
	default:
	}
}

// deleteGone deletes the queued quota keys, one at a time. A failure is not
// Redis being down for the checks (markDown): only this key stays.
func (l *RedisLimiter) deleteGone() {
	for key := range l.gone {
		ctx, cancel := context.WithTimeout(context.Background(), forgetTimeout)
		_ = l.client.Del(ctx, key).Err()
		cancel()
	}
}

// forgetTimeout bounds the deletion of one deleted token's quota key, and
// forgetQueue how many wait for it.
const (
	forgetTimeout = 250 * time.Millisecond
	forgetQueue   = 4096
)

// quotaKey is where the replicas count a token's quota: one key per
// token, holding the period being counted (quota.lua).
func quotaKey(token types.NamespacedName) string {
	return "keymint:q:{" + token.Namespace + "/" + token.Name + "}"
}

// Ping asks Redis once, for a start-up check with a clear error.
func (l *RedisLimiter) Ping(ctx context.Context) error {
	if err := l.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("the rate-limit store (Redis) does not answer: %w", err)
	}
	return nil
}

// ParseFailureMode reads --rate-limit-redis-failure.
func ParseFailureMode(s string) (FailureMode, error) {
	switch m := FailureMode(strings.ToLower(s)); m {
	case FailOpen, FailClosed:
		return m, nil
	}
	return "", errors.New("--rate-limit-redis-failure must be open or closed, not " + strconv.Quote(s))
}

// SpendQuota implements the shared count: one run of quota.lua on the
// token's key, which counts a use only when one is left in the period
// being counted.
func (l *RedisLimiter) SpendQuota(ctx context.Context, token types.NamespacedName, q tokenstate.QuotaUse, now time.Time) QuotaDecision {
	if until := l.downUntil.Load(); until != 0 && now.UnixNano() < until {
		return l.degradedQuota(ctx, token, q, now)
	}
	var fresh int64
	if !q.Refill.IsZero() {
		fresh = q.Refill.UnixMilli()
	}
	res, err := l.quota.Run(ctx, l.client, []string{quotaKey(token)}, now.UnixMilli(), q.Uses, fresh, quotaKeyTTL.Milliseconds()).Int64Slice()
	if err == nil && len(res) != 3 {
		err = fmt.Errorf("quota script answered %d values, want 3", len(res))
	}
	if err != nil {
		l.markDown(ctx, err, now)
		return l.degradedQuota(ctx, token, q, now)
	}
	l.markUp(ctx)
	return decideQuota(q, res[0] == 1, res[1], res[2]*int64(time.Millisecond))
}

// degradedQuota decides without Redis, as the failure mode says.
func (l *RedisLimiter) degradedQuota(ctx context.Context, token types.NamespacedName, q tokenstate.QuotaUse, now time.Time) QuotaDecision {
	l.degraded.Inc()
	if l.mode == FailOpen {
		return l.fallback.SpendQuota(ctx, token, q, now)
	}
	return QuotaDecision{Limit: q.Uses, Refill: q.Refill, Unavailable: true}
}
