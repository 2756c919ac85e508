package check

// leaklimit.go: who sends a leak report, and how often reports may come:
// a token bucket per client address and one for all. Anyone may post to
// the GitHub-shaped endpoint, so a client's address is read from
// X-Forwarded-For only behind a proxy the operator trusts.

import (
	"container/list"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// MaxLeakClients bounds the client addresses whose buckets are kept; past
// it, the one idle longest is forgotten (and starts afresh if it returns).
const MaxLeakClients = 10_000

// clientKey is what a client's bucket is kept under: its IPv4 address, or
// its IPv6 /64, since one host commonly holds a whole /64 and could
// otherwise take a fresh bucket per request.
func clientKey(a netip.Addr) netip.Prefix {
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits) // the zero Prefix for the zero Addr: one bucket for all such
	return p
}

// leakLimits are the leak endpoints' token buckets: rates a minute, each
// letting a minute's worth through at once, as the check rates do.
type leakLimits struct {
	global *rate.Limiter
	// authenticated is the budget of requests with GitLab's shared token:
	// apart from the anonymous one, so that a flood of anonymous reports
	// cannot hold up the reports of the GitLab instance the operator wired.
	authenticated *rate.Limiter

	mu        sync.Mutex
	perClient int
	clients   map[netip.Prefix]*list.Element // → *clientBucket
	idle      list.List                      // most recently used at the front
}

type clientBucket struct {
	key     netip.Prefix
	limiter *rate.Limiter
}

func newLeakLimits(perMinute, perClientPerMinute int) *leakLimits {
	return &leakLimits{
		global:        rate.NewLimiter(perMinuteRate(perMinute), perMinute),
		authenticated: rate.NewLimiter(perMinuteRate(perMinute), perMinute),
		perClient:     perClientPerMinute,
		clients:       map[netip.Prefix]*list.Element{},
	}
}

func perMinuteRate(n int) rate.Limit { return rate.Limit(float64(n) / ratePeriod.Seconds()) }

// allow takes one request out of client's bucket and the global one, both
// or neither. When refused, it says how long until the request would pass.
func (l *leakLimits) allow(client netip.Addr, now time.Time) (bool, time.Duration) {
	own, d := reserve(l.bucket(client), now)
	if own == nil {
		return false, d
	}
	if all, d := reserve(l.global, now); all == nil {
		own.CancelAt(now)
		return false, d
	}
	return true, 0
}

// allowAuthenticated takes one request with the shared token out of their
// own budget; when refused, it says how long until it would pass.
func (l *leakLimits) allowAuthenticated(now time.Time) (bool, time.Duration) {
	r, d := reserve(l.authenticated, now)
	return r != nil, d
}

// reserve takes one request out of b at now; when it would have to wait,
// it takes nothing and returns nil and how long.
func reserve(b *rate.Limiter, now time.Time) (*rate.Reservation, time.Duration) {
	r := b.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return nil, d
	}
	return r, 0
}

// bucket returns client's bucket, making it (and forgetting the one idle
// longest, past MaxLeakClients) on first use.
func (l *leakLimits) bucket(client netip.Addr) *rate.Limiter {
	key := clientKey(client)
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.clients[key]; ok {
		l.idle.MoveToFront(e)
		return e.Value.(*clientBucket).limiter
	}
	if l.idle.Len() >= MaxLeakClients {
		oldest := l.idle.Back()
		l.idle.Remove(oldest)
		delete(l.clients, oldest.Value.(*clientBucket).key)
	}
	b := &clientBucket{key: key, limiter: rate.NewLimiter(perMinuteRate(l.perClient), l.perClient)}
	l.clients[key] = l.idle.PushFront(b)
	return b.limiter
}

// clientCount returns how many clients' buckets are kept.
func (l *leakLimits) clientCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.idle.Len()
}
