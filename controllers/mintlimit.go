// Mint rate limit: a token bucket per ApiToken, so no misjudged rule can mint without bound.

package controllers

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"
)

// Mints of one ApiToken are bounded, whatever asks for them: a rule that
// misjudged a token as due (an expiry read a fraction later than recorded
// once did) must cost one token a few seconds, not the API server a write
// storm and the token's consumers an outage.
const (
	mintBurst    = 10
	mintInterval = 6 * time.Second // 10 a minute, after the burst
)

// mintLimiter holds a token bucket per ApiToken that minted recently.
type mintLimiter struct {
	mu      sync.Mutex
	buckets map[types.UID]*rate.Limiter
}

// reserve takes one mint for uid at now, and reports how long to wait
// instead when the token has minted too often.
func (m *mintLimiter) reserve(uid types.UID, now time.Time) (wait time.Duration, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.buckets == nil {
		m.buckets = map[types.UID]*rate.Limiter{}
	}
	b := m.buckets[uid]
	if b == nil {
		if len(m.buckets) >= 1024 {
			m.prune(now)
		}
		b = rate.NewLimiter(rate.Every(mintInterval), mintBurst)
		m.buckets[uid] = b
	}
	r := b.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}

// prune drops the buckets that are full again: they hold nothing a new
// bucket would not.
func (m *mintLimiter) prune(now time.Time) {
	for uid, b := range m.buckets {
		if b.TokensAt(now) >= mintBurst {
			delete(m.buckets, uid)
		}
	}
}
