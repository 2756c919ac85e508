package check

import (
	"net/url"
	"slices"
	"strings"
	"testing"
)

// parseQueryOracle is what requirements meant before the query was parsed
// by hand: url.ParseQuery, then comma-separated, trimmed items.
func parseQueryOracle(q url.Values, key string) []string {
	var out []string
	for _, v := range q[key] {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

func FuzzQueryRequirements(f *testing.F) {
	for _, seed := range []string{
		"scope=a,b&scope=c", "scope=links%3Aread", "scope=a+b", "%73cope=x", "scope=%zz&scope=y",
		"scope=a;b&scope=c", "audience=vault&scope=", "scope", "=x&scope==y", "scope=%2C,a",
		"rate_limit_status=403&rate_limit_status=429", "rate_limit_status=%zz&rate_limit_status=4%303",
		"audience=a,b&audience=&scope=c&audience=%2Cd",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q := checkQuery{}.parse(raw)
		want, _ := url.ParseQuery(raw)
		for key, got := range map[string][]string{"scope": q.scopes, "audience": q.audiences} {
			if w := parseQueryOracle(want, key); !slices.Equal(got, w) {
				t.Fatalf("%s requirements of %q = %q, url.ParseQuery gives %q", key, raw, got, w)
			}
		}
		if q.hasScope != want.Has("scope") || q.hasAudience != want.Has("audience") {
			t.Fatalf("%q: has scope %v, audience %v; url.ParseQuery gives %q", raw, q.hasScope, q.hasAudience, want)
		}
		if q.rateLimitStatus != want.Get(RateLimitStatusParam) || q.hasRateLimitStatus != want.Has(RateLimitStatusParam) {
			t.Fatalf("%q: %s %q (%v), url.ParseQuery gives %q", raw, RateLimitStatusParam, q.rateLimitStatus, q.hasRateLimitStatus, want)
		}
	})
}

func TestQueryRequirementsAllocateNothing(t *testing.T) {
	raw := "audience=vault&scope=links:read,qr:read&rate_limit_status=403"
	if n := testing.AllocsPerRun(100, func() {
		var scopes [8]string
		var audiences [4]string
		q := checkQuery{scopes: scopes[:0], audiences: audiences[:0]}.parse(raw)
		if len(q.scopes) != 2 || len(q.audiences) != 1 || q.rateLimitStatus != "403" {
			t.Fatal(len(q.scopes), len(q.audiences), q.rateLimitStatus == "403")
		}
	}); n != 0 {
		t.Errorf("%v allocations", n)
	}
}
