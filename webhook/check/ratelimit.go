package check

// ratelimit.go: checks per token per minute.

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Limiter counts checks per token in fixed one-minute windows aligned to the
// clock's minutes: a token may pass `limit` checks in each minute, and its
// count resets at the top of the next one. Each replica counts on its own:
// behind N replicas a token may pass up to N × limit a minute.
type Limiter struct {
	mu      sync.Mutex
	windows map[types.NamespacedName]*window
}

type window struct {
	start time.Time
	count int32
}

// Decision is the outcome of one Allow, with what the rate-limit headers say.
type Decision struct {
	Allowed   bool
	Limit     int32
	Remaining int32
	// Reset is when the current window ends and the count starts again.
	Reset time.Time
}

// NewLimiter returns an empty limiter.
func NewLimiter() *Limiter {
	return &Limiter{windows: map[types.NamespacedName]*window{}}
}

// Allow counts one check of the token at now against limit per minute.
func (l *Limiter) Allow(key types.NamespacedName, limit int32, now time.Time) Decision {
	start := now.Truncate(time.Minute)
	l.mu.Lock()
	w, ok := l.windows[key]
	if !ok {
		w = &window{}
		l.windows[key] = w
	}
	if !w.start.Equal(start) {
		w.start, w.count = start, 0
	}
	d := Decision{Limit: limit, Reset: start.Add(time.Minute)}
	if w.count < limit {
		w.count++
		d.Allowed = true
	}
	// A rate lowered mid-window can leave the count above it.
	d.Remaining = max(0, limit-w.count)
	l.mu.Unlock()
	return d
}

// Forget drops a token's window; the feed calls it when the token goes, so
// the limiter holds windows of live tokens only.
func (l *Limiter) Forget(key types.NamespacedName) {
	l.mu.Lock()
	delete(l.windows, key)
	l.mu.Unlock()
}
