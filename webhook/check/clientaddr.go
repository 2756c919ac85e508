package check

// clientaddr.go: where a request comes from, for the checks of tokens
// restricted to source addresses and for leak reporters' budgets. A
// client's address is read from X-Forwarded-For only behind a proxy the
// operator trusts.

import (
	"net/http"
	"net/netip"
	"strings"
)

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
