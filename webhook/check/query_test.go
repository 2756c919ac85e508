package check

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// parseQueryOracle is what requirements meant before the query was parsed
// by hand: url.ParseQuery, then comma-separated, trimmed items.
func parseQueryOracle(raw, key string) []string {
	q, _ := url.ParseQuery(raw)
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
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		r := &http.Request{URL: &url.URL{RawQuery: raw}, Header: http.Header{}}
		got := appendRequirements(nil, r, "scope", HeaderScope, true)
		if want := parseQueryOracle(raw, "scope"); !slices.Equal(got, want) {
			t.Fatalf("requirements(%q) = %q, url.ParseQuery gives %q", raw, got, want)
		}
	})
}

func TestQueryRequirementsAllocateNothing(t *testing.T) {
	r := &http.Request{URL: &url.URL{RawQuery: "audience=vault&scope=links:read,qr:read&rate_limit_status=403"}, Header: http.Header{}}
	if n := testing.AllocsPerRun(100, func() {
		var buf [8]string
		if n := len(appendRequirements(buf[:0], r, "scope", HeaderScope, true)); n != 2 {
			t.Fatal(n)
		}
	}); n != 0 {
		t.Errorf("%v allocations", n)
	}
}
