package check

// leaklimit.go: who sends a leak report, and how often reports may come:
// a token bucket per client address and one for all. Anyone may post to
// the GitHub-shaped endpoint, so a client's address is read from
// X-Forwarded-For only behind a proxy the operator trusts.

import (
	"container/list"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// MaxLeakClients bounds the client addresses whose buckets are kept; past
// it, the one idle longest is forgotten (and starts afresh if it returns).
const MaxLeakClients = 10_000

// ClientAddr returns the address a request comes from: the connection's
// own, unless that is inside one of the trusted proxies' prefixes. Then
// X-Forwarded-For is read from the right (each proxy appends the address
// it was called from), past the trusted proxies, and the first address
// that is not one of them is the client. An entry that does not parse
// stops the reading at the last trusted hop: whoever wrote it is not
// trusted to name the client.
func ClientAddr(r *http.Request, trusted []netip.Prefix) netip.Addr {
	addr := remoteAddr(r.RemoteAddr)
	if !inAny(addr, trusted) {
		return addr
	}
	values := r.Header.Values("X-Forwarded-For")
	for i := len(values) - 1; i >= 0; i-- {
		hops := values[i]
		for hops != "" {
			var entry string
			if j := strings.LastIndexByte(hops, ','); j >= 0 {
				hops, entry = hops[:j], hops[j+1:]
			} else {
				hops, entry = "", hops
			}
			hop, ok := parseHop(strings.TrimSpace(entry))
			if !ok {
				return addr
			}
			if !inAny(hop, trusted) {
				return hop
			}
			addr = hop
		}
	}
	// Trusted all the way: the leftmost hop is the client.
	return addr
}

// remoteAddr is the address of a connection's "host:port"; the zero Addr
// when it has none (a test's fake request, a Unix socket). net/http writes
// it, "[host]:port" for IPv6, so the port is not read: only the host is
// parsed (a third of the cost, on the path of every check of a token
// restricted to sources).
func remoteAddr(hostport string) netip.Addr {
	if i := strings.LastIndexByte(hostport, ':'); i > 0 {
		host := hostport[:i]
		bracketed := len(host) > 2 && host[0] == '[' && host[len(host)-1] == ']'
		if bracketed {
			host = host[1 : len(host)-1]
		}
		// An IPv6 address is bracketed when a port follows: "1::2:3" is an
		// address, not "1::2" and a port.
		if bracketed || strings.IndexByte(host, ':') < 0 {
			if a, err := netip.ParseAddr(host); err == nil {
				return a.Unmap().WithZone("")
			}
		}
	}
	a, _ := parseHop(hostport)
	return a
}

// parseHop reads one X-Forwarded-For entry: an address, or an address and
// port, as some proxies write it.
func parseHop(s string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone(""), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone(""), true
	}
	return netip.Addr{}, false
}

func inAny(a netip.Addr, prefixes []netip.Prefix) bool {
	if !a.IsValid() {
		return false
	}
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

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
