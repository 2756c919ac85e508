package check

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// InvalidQuery is the error code of a query /check cannot read exactly.

// TestCheckRefusesAQueryItCannotReadExactly: a requirement /check cannot
// read must not be dropped, which would let a token through without it. Each
// malformed form is a 400 whose message names the parameter at fault.
func TestCheckRefusesAQueryItCannotReadExactly(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	// The token holds links:read and qr:read, never admin:write.
	tok := f.token("scoped", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"links:read", "qr:read"} })
	auth := http.Header{"Authorization": {"Bearer " + tok}}

	tests := []struct {
		name, target string
		// names is what the message must contain: the parameter, quoted.
		names string
	}{
		{"a semicolon after the value", "/check?scope=admin:write;", `"scope"`},
		{"a bad escape in the value", "/check?scope=admin%ZZwrite", `"scope"`},
		{"a miscased key", "/check?Scope=admin:write", `"Scope"`},
		{"a key with no value", "/check?scope=a:b&scope", `"scope"`},
		{"a lone percent sign", "/check?%", `"%"`},
		{"a bad escape in an audience", "/check?audience=%zz", `"audience"`},
		{"an unknown key", "/check?foo=bar", `"foo"`},
		{"a semicolon between pairs", "/check?scope=a:b;scope=c:d", `"scope"`},
		{"a key with a bad escape", "/check?sc%zzope=admin:write", `"sc%zzope"`},
		{"an empty value", "/check?scope=", `"scope"`},
		{"an empty item in a list", "/check?scope=links:read,,admin:write", `"scope"`},
		{"an unknown key beside a good pair", "/check?scope=links:read&Audience=vault", `"Audience"`},
		{"an empty key", "/check?scope=links:read&=admin:write", `""`},
		{"a key that unescapes to another", "/check?scope%20=admin:write", `"scope "`},
		{"rate_limit_status twice", "/check?rate_limit_status=403&rate_limit_status=500", `"rate_limit_status"`},
		{"an empty rate_limit_status", "/check?rate_limit_status=", `"rate_limit_status"`},
		{"a miscased key on /check/", "/check/?Scope=admin:write", `"Scope"`},
		{"a bad escape on /check/", "/check/?scope=%zz", `"scope"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := f.do(http.MethodGet, tc.target, auth, nil)
			expectError(t, a, http.StatusBadRequest, InvalidQuery)
			msg, _ := a.body["message"].(string)
			if !strings.Contains(msg, tc.names) {
				t.Errorf("%s: message %q does not name %s", tc.target, msg, tc.names)
			}
			t.Logf("%s: %s", tc.target, msg)
			if got := a.header.Get(HeaderError); got != string(InvalidQuery) {
				t.Errorf("%s = %q", HeaderError, got)
			}
		})
	}

	// What the message echoes is capped, escaped, and never a token.
	for _, target := range []string{
		"/check?" + tok,                                  // a token as a key
		"/check?access_token=" + tok,                     // a token as a value
		"/check?scope=links:read;access_token=" + tok,    // after a semicolon
		"/check?x" + strings.Repeat("%6b", 30) + "%zz=1", // a long key with a bad escape
		"/check?" + strings.Repeat("a_", 200) + "=1",     // a long key
		"/check?%3Cscript%3E=1",                          // markup
	} {
		a := f.do(http.MethodGet, target, auth, nil)
		expectError(t, a, http.StatusBadRequest, InvalidQuery)
		body, _ := json.Marshal(a.body)
		msg, _ := a.body["message"].(string)
		if strings.Contains(string(body), tok[3:15]) || strings.Contains(msg, "<") || strings.Contains(msg, strings.Repeat("a_", 40)) ||
			strings.Contains(msg, strings.Repeat("%6b", 10)) || len(msg) > 400 {
			t.Errorf("%.40s...: the message echoes too much: %q", target, msg)
		}
		t.Logf("%.40s...: %s", target, msg)
	}
}

// TestCheckStillReadsAWellFormedQuery: the forms /check has always read
// answer as before.
func TestCheckStillReadsAWellFormedQuery(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	tok := f.token("scoped", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"links:read", "qr:read"} })
	auth := http.Header{"Authorization": {"Bearer " + tok}}
	tests := []struct {
		target string
		status int
	}{
		{"/check", http.StatusOK},
		{"/check?", http.StatusOK},
		{"/check?scope=links:read", http.StatusOK},
		{"/check?scope=links:read&scope=qr:read", http.StatusOK},
		{"/check?scope=links:read,+qr:read", http.StatusOK},
		{"/check?scope=links%3Aread", http.StatusOK},
		{"/check?%73cope=links:read", http.StatusOK},
		{"/check?scope=links:read&", http.StatusOK},
		{"/check?scope=links:read&&audience=vault", http.StatusOK},
		{"/check?scope=links:read&rate_limit_status=403", http.StatusOK},
		{"/check?rate_limit_status=429", http.StatusOK},
		{"/check?scope=admin:write", http.StatusForbidden},
		{"/check?scope=links:read&scope=admin:write&rate_limit_status=403", http.StatusForbidden},
		{"/check?scope=links:read,admin:write", http.StatusForbidden},
		// Under /check/<path> the query is the client's (Envoy appends it)
		// and is not read: no form of it is refused.
		{"/check/envoy/reports?Scope=admin:write;x=%zz&%", http.StatusOK},
		{"/check/", http.StatusOK},
	}
	for _, tc := range tests {
		if a := f.do(http.MethodGet, tc.target, auth, nil); a.status != tc.status {
			t.Errorf("%s: %d %v, want %d", tc.target, a.status, a.body, tc.status)
		}
	}
	// A misplaced auth URL is refused as before, nginx's rate_limit_status
	// included: it would be ignored there.
	for _, target := range []string{"/check/?scope=links:read", "/check/?audience=vault", "/check/?rate_limit_status=403", "/check?rate_limit_status=500"} {
		if a := f.do(http.MethodGet, target, auth, nil); a.status != http.StatusBadRequest || a.body["error"] != "bad_request" {
			t.Errorf("%s: %d %v, want 400 bad_request", target, a.status, a.body)
		}
	}
}
