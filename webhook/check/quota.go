package check

// quota.go: how many checks a token may pass in all, or per refill period
// (tokenstate.QuotaUse). A quota is a count, not a rate: each check that
// its rate lets through takes one use; once the period's uses are spent,
// checks are refused until the period refills. In process, each replica
// counts alone: behind N replicas a token may pass up to N × its uses in a
// period. With Redis every replica counts in one key per token with one
// atomic script per check, which never lets more than the uses through (no
// leases: a lease could be lost with its replica, and a quota spent is not
// refilled by time, as a rate is).
//
// A period is counted until it ends, whatever the quota says meanwhile
// (quotaPeriod): a changed refill takes effect at the next period, so
// editing the refill never starts a fresh count.

import (
	_ "embed"
	"time"

	"github.com/keymint/keymint/internal/tokenstate"
)

// QuotaDecision is the outcome of one SpendQuota.
type QuotaDecision struct {
	Allowed bool
	// Limit is the period's uses, Remaining what is left after this check.
	Limit, Remaining int64
	// Refill is when the period ends; zero without refill.
	Refill time.Time
	// Unavailable is true for a refusal because the shared count cannot be
	// reached (Redis failing closed).
	Unavailable bool
}

// decideQuota is the decision of a check that found used uses counted in
// the period ending at end (Unix nanoseconds; 0: never), its own among
// them when allowed.
func decideQuota(q tokenstate.QuotaUse, allowed bool, used, end int64) QuotaDecision {
	d := QuotaDecision{Allowed: allowed, Limit: q.Uses, Remaining: max(q.Uses-used, 0)}
	if end != 0 {
		d.Refill = time.Unix(0, end)
	}
	return d
}

// quotaCount is a token's count in one period: its end (Unix nanoseconds;
// 0: never) and the uses counted.
type quotaCount struct {
	end, used int64
	seen      bool
}

// spend counts one use of quota q at now (Unix nanoseconds), if one is
// left, in the period being counted (see quotaPeriod); a refused check
// counts nothing. quota.lua does the same in Redis.
func (c *quotaCount) spend(q tokenstate.QuotaUse, now int64) QuotaDecision {
	fresh := int64(0)
	if !q.Refill.IsZero() {
		fresh = q.Refill.UnixNano()
	}
	switch {
	case !c.seen:
		*c = quotaCount{end: fresh, seen: true}
	case c.end == 0:
		// A lifetime count that gets a refill becomes this period's.
		c.end = fresh
	case now >= c.end:
		c.end, c.used = fresh, 0
	}
	allowed := c.used < q.Uses
	if allowed {
		c.used++
	}
	return decideQuota(q, allowed, c.used, c.end)
}

// quotaScript counts one use in KEYS[1] and gives the key its expiry
// (ARGV[1], milliseconds; 0: none) the first time. It returns the count.
//
//go:embed quota.lua
var quotaScript string

// quotaKeyTTL keeps a period's count this long past its refill, so a
// replica whose clock runs behind still finds it.
const quotaKeyTTL = time.Hour
