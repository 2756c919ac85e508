package check

import (
	"net/url"
	"regexp"
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

// oracleFault says whether url.ParseQuery shows a query to be one /check
// must refuse: one it cannot parse, an unknown key, an empty item in a scope
// or audience value, an empty rate_limit_status (a key without "=" has an
// empty value), or rate_limit_status given twice. ok is false when the query
// asks for more requirements than parse reads.
func oracleFault(q url.Values, err error) (fault, ok bool) {
	if err != nil {
		return true, true
	}
	for key, vs := range q {
		if key != "scope" && key != "audience" && key != RateLimitStatusParam {
			return true, true
		}
		if key == RateLimitStatusParam && len(vs) > 1 {
			return true, true
		}
	}
	if len(parseQueryOracle(q, "scope")) > maxRequirements || len(parseQueryOracle(q, "audience")) > maxRequirements {
		return false, false // parse stops reading one past the limit
	}
	if q.Has(RateLimitStatusParam) && q.Get(RateLimitStatusParam) == "" {
		return true, true
	}
	for _, key := range []string{"scope", "audience"} {
		for _, v := range q[key] {
			for item := range strings.SplitSeq(v, ",") {
				if strings.TrimSpace(item) == "" {
					return true, true
				}
			}
		}
	}
	return false, true
}

func FuzzQueryRequirements(f *testing.F) {
	for _, seed := range []string{
		"scope=a,b&scope=c", "scope=links%3Aread", "scope=a+b", "%73cope=x", "scope=%zz&scope=y",
		"scope=a;b&scope=c", "audience=vault&scope=", "scope", "=x&scope==y", "scope=%2C,a",
		"rate_limit_status=403&rate_limit_status=429", "rate_limit_status=%zz&rate_limit_status=4%303",
		"audience=a,b&audience=&scope=c&audience=%2Cd", "scope=a&&audience=b&", "Scope=a", "%", "scope=a,,b",
		"rate_limit_status=4%303", "rate_limit_status=,0", "sc%zzope=x", "scope=a:b;scope=c:d",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q := checkQuery{}.parse(raw)
		want, err := url.ParseQuery(raw)
		wantFault, comparable := oracleFault(want, err)
		if q.fault != queryRead {
			if msg := q.faultMessage(); comparable && !wantFault {
				t.Fatalf("%q refused (%s), url.ParseQuery gives %q, %v", raw, msg, want, err)
			}
			return
		}
		if comparable && wantFault {
			t.Fatalf("%q read as scopes %q, audiences %q; url.ParseQuery gives %q, %v", raw, q.scopes, q.audiences, want, err)
		}
		for key, got := range map[string][]string{"scope": q.scopes, "audience": q.audiences} {
			if w := parseQueryOracle(want, key); comparable && !slices.Equal(got, w) {
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

var escapeRE = regexp.MustCompile(`\\x[0-9a-f]{2}`)

// FuzzQuoteQueryText: what an error message repeats of a query is short,
// printable ASCII, free of markup, and holds no long run of letters and
// digits (a token's secret).
func FuzzQuoteQueryText(f *testing.F) {
	for _, seed := range []string{"", "%", "Scope", "sc%zzope", "<script>", "km_" + strings.Repeat("aZ9", 20), strings.Repeat("%6b", 40), "\x00\xff\"\\"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := quoteQueryText(s)
		if len(got) > 4*maxEchoed+8 {
			t.Fatalf("%q quoted in %d bytes", s, len(got))
		}
		for i := 0; i < len(got); i++ {
			if c := got[i]; c < 0x20 || c >= 0x7f || c == '<' || c == '>' || c == '&' || c == '\'' || c == '`' {
				t.Fatalf("%q quoted as %q: byte %q", s, got, c)
			}
		}
		// Runs are counted in what s gave, each \xNN escape a separator.
		bare := escapeRE.ReplaceAllString(got, " ")
		run := 0
		for i := 0; i < len(bare); i++ {
			c := bare[i]
			if run = run + 1; !isRunByte(c) {
				run = 0
			}
			if run > maxEchoedRun {
				t.Fatalf("%q quoted as %q: a run of %d letters and digits", s, got, run)
			}
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
