package check

// quota.go: how many checks a token may pass in all, or per refill period
// (tokenstate.QuotaUse). A quota is a count, not a rate: each check that
// its rate lets through takes one use; once the period's uses are spent,
// checks are refused until the period refills. In process, each replica
// counts alone: behind N replicas a token may pass up to N × its uses in a
// period. With Redis every replica counts in one key with one atomic INCR
// per check, which never lets more than the uses through (no leases: a
// lease could be lost with its replica, and a quota spent is not
// refilled by time, as a rate is).

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

// decideQuota is the decision once a check made the period's count used.
func decideQuota(q tokenstate.QuotaUse, used int64) QuotaDecision {
	return QuotaDecision{Allowed: used <= q.Uses, Limit: q.Uses, Remaining: max(q.Uses-used, 0), Refill: q.Refill}
}

// quotaCount is a token's count in one period.
type quotaCount struct {
	period, used int64
}

// quotaScript counts one use in KEYS[1] and gives the key its expiry
// (ARGV[1], milliseconds; 0: none) the first time. It returns the count.
//
//go:embed quota.lua
var quotaScript string

// quotaKeyTTL keeps a period's count this long past its refill, so a
// replica whose clock runs behind still finds it.
const quotaKeyTTL = time.Hour
