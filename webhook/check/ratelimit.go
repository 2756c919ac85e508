package check

// ratelimit.go: how many checks a token may pass a minute. Each budget is a
// GCRA bucket (the generic cell rate algorithm): a rate of n a minute lets n
// checks through at once, then one more each minute/n, so there is no
// boundary at which twice the rate gets through. The state of a budget is
// one time, its theoretical arrival time (TAT), which makes it cheap to keep
// in process (LocalLimiter) and to share through Redis (RedisLimiter).

import (
	"context"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/keymint/keymint/internal/tokenstate"
)

// ratePeriod is what a rate counts over.
const ratePeriod = time.Minute

// Decision is the outcome of one Allow, with what the rate-limit headers say.
type Decision struct {
	Allowed bool
	// Limit, Remaining and Reset describe the budget that binds: the one
	// that refused, or the one with the least left. Reset is when that
	// budget is whole again.
	Limit     int32
	Remaining int32
	Reset     time.Time
	// Scope is that budget's scope, "" for the token's own.
	Scope string
	// RetryAfter is, for a refusal, how long until the check would pass.
	RetryAfter time.Duration
	// Unavailable is true for a refusal because the shared budgets cannot
	// be reached (RedisLimiter failing closed).
	Unavailable bool
}

// RateLimiter decides whether one more check of a token fits its budgets,
// and counts it if so: against every budget, or against none.
type RateLimiter interface {
	Allow(ctx context.Context, token types.NamespacedName, budgets tokenstate.Budgets, now time.Time) Decision
	// SpendQuota takes one use of the token's quota (quota.go), once Allow
	// let the check through.
	SpendQuota(ctx context.Context, token types.NamespacedName, q tokenstate.QuotaUse, now time.Time) QuotaDecision
	// Forget drops what is kept of a deleted token.
	Forget(token types.NamespacedName)
}

// emission is the time one check takes out of a budget of limit a minute.
func emission(limit int32) int64 {
	if limit < 1 {
		limit = 1
	}
	return int64(ratePeriod) / int64(limit)
}

// gcra decides one budget at now (Unix nanoseconds), given its TAT (zero
// when unused). It returns the TAT after counting the check when allowed,
// and what the headers say of this budget.
func gcra(tat, now int64, limit int32) (next int64, allowed bool, remaining int32, reset, retry int64) {
	t := emission(limit)
	tat = max(tat, now)
	next = tat + t
	if allowAt := next - int64(ratePeriod); now < allowAt {
		return tat, false, 0, tat, allowAt - now
	}
	remaining = int32((now + int64(ratePeriod) - next) / t)
	return next, true, min(remaining, limit), next, 0
}

// decideAll runs gcra on every budget with its TAT in tats, and updates
// tats when the check passes all of them. The decision is about the
// refusing budget that waits longest, or the allowing one with least left.
func decideAll(bs *tokenstate.Budgets, tats []int64, now int64) Decision {
	var nexts [tokenstate.MaxBudgets]int64
	var d Decision
	d.Allowed = true
	for i := range bs.N {
		b := bs.List[i]
		next, ok, remaining, reset, retry := gcra(tats[i], now, b.Limit)
		nexts[i] = next
		switch {
		case !ok && (d.Allowed || time.Duration(retry) > d.RetryAfter):
			d = Decision{Limit: b.Limit, Reset: time.Unix(0, reset), Scope: b.Scope, RetryAfter: time.Duration(retry)}
		case ok && d.Allowed && (i == 0 || remaining < d.Remaining):
			d = Decision{Allowed: true, Limit: b.Limit, Remaining: remaining, Reset: time.Unix(0, reset), Scope: b.Scope}
		}
	}
	if d.Allowed {
		copy(tats, nexts[:bs.N])
	}
	return d
}

// LocalLimiter keeps budgets in this process: behind N replicas a token may
// pass up to N times its rate, and a restart starts it afresh. It is the
// default, and what RedisLimiter falls back to when Redis cannot be reached
// and it is set to fail open.
type LocalLimiter struct {
	mu     sync.Mutex
	tokens map[types.NamespacedName]*tokenBudgets
}

// tokenBudgets is a token's TATs: its own, and one per rated scope it was
// checked for; and its quota's count, kept beside them: one entry per token
// to keep and to forget (Allow and SpendQuota each still look it up).
type tokenBudgets struct {
	own    int64
	scopes []scopeTAT
	quota  quotaCount
}

type scopeTAT struct {
	scope string
	tat   int64
}

// NewLimiter returns an empty in-process limiter.
func NewLimiter() *LocalLimiter {
	return &LocalLimiter{tokens: map[types.NamespacedName]*tokenBudgets{}}
}

// Allow implements RateLimiter.
func (l *LocalLimiter) Allow(_ context.Context, token types.NamespacedName, bs tokenstate.Budgets, now time.Time) Decision {
	var tats [tokenstate.MaxBudgets]int64
	var where [tokenstate.MaxBudgets]*int64
	l.mu.Lock()
	defer l.mu.Unlock()
	tb := l.budgetsLocked(token)
	for i := range bs.N {
		tb.add(bs.List[i].Scope)
	}
	// Pointers only once every budget exists: adding one may move the rest.
	for i := range bs.N {
		where[i] = tb.tat(bs.List[i].Scope)
		tats[i] = *where[i]
	}
	d := decideAll(&bs, tats[:bs.N], now.UnixNano())
	if d.Allowed {
		for i := range bs.N {
			*where[i] = tats[i]
		}
	}
	return d
}

// budgetsLocked returns the token's budgets, made on first use.
func (l *LocalLimiter) budgetsLocked(token types.NamespacedName) *tokenBudgets {
	tb := l.tokens[token]
	if tb == nil {
		tb = &tokenBudgets{}
		l.tokens[token] = tb
	}
	return tb
}

// add keeps a budget for scope from now on. The scope strings are the
// specs' own (tokenstate.ScopeRate), not a request's.
func (tb *tokenBudgets) add(scope string) {
	if scope != "" && tb.tat(scope) == nil {
		tb.scopes = append(tb.scopes, scopeTAT{scope: scope})
	}
}

// tat returns where a budget's TAT is kept; nil for a scope not added.
func (tb *tokenBudgets) tat(scope string) *int64 {
	if scope == "" {
		return &tb.own
	}
	for i := range tb.scopes {
		if tb.scopes[i].scope == scope {
			return &tb.scopes[i].tat
		}
	}
	return nil
}

// Forget drops a token's budgets; the feed calls it when the token goes, so
// the limiter holds budgets of live tokens only.
func (l *LocalLimiter) Forget(token types.NamespacedName) {
	l.mu.Lock()
	delete(l.tokens, token)
	l.mu.Unlock()
}

// SpendQuota takes one use of the token's quota in q's period, if one is
// left; a refused check takes none.
func (l *LocalLimiter) SpendQuota(_ context.Context, token types.NamespacedName, q tokenstate.QuotaUse, now time.Time) QuotaDecision {
	l.mu.Lock()
	d := l.budgetsLocked(token).quota.spend(q, now.UnixNano())
	l.mu.Unlock()
	return d
}
