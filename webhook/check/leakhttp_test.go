package check

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
)

func TestClientAddr(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	for _, tc := range []struct {
		name, remote string
		xff          []string
		want         string
	}{
		{"no proxy", "203.0.113.9:4431", nil, "203.0.113.9"},
		{"spoofed X-Forwarded-For from an untrusted peer is ignored", "203.0.113.9:4431", []string{"198.51.100.1"}, "203.0.113.9"},
		{"behind a trusted proxy", "10.1.2.3:4431", []string{"198.51.100.1"}, "198.51.100.1"},
		{"behind two trusted proxies", "10.1.2.3:4431", []string{"198.51.100.1, 10.9.9.9"}, "198.51.100.1"},
		{"a client's own X-Forwarded-For is not read past the first untrusted hop", "10.1.2.3:4431", []string{"192.0.2.66, 198.51.100.1"}, "198.51.100.1"},
		{"across header lines", "10.1.2.3:4431", []string{"192.0.2.66", "198.51.100.1, 10.0.0.7"}, "198.51.100.1"},
		{"an unparseable entry stops at the last trusted hop", "10.1.2.3:4431", []string{"198.51.100.1, garbage, 10.0.0.7"}, "10.0.0.7"},
		{"an empty entry too", "10.1.2.3:4431", []string{"198.51.100.1,,"}, "10.1.2.3"},
		{"trusted all the way: the leftmost", "10.1.2.3:4431", []string{"10.0.0.1, 10.0.0.2"}, "10.0.0.1"},
		{"a trusted proxy that adds nothing", "10.1.2.3:4431", nil, "10.1.2.3"},
		{"an entry with a port", "10.1.2.3:4431", []string{"198.51.100.1:5555"}, "198.51.100.1"},
		{"IPv6 behind an IPv6 proxy", "[fd00::1]:4431", []string{"2001:db8::7"}, "2001:db8::7"},
		{"an IPv4-mapped peer", "[::ffff:10.1.2.3]:4431", []string{"198.51.100.1"}, "198.51.100.1"},
		{"an IPv6 peer with a zone", "[fe80::1%eth0]:4431", nil, "fe80::1"},
		{"an IPv6 peer written without a port is one address", "2001:db8::2:3", nil, "2001:db8::2:3"},
		{"an IPv4 peer without a port", "203.0.113.9", nil, "203.0.113.9"},
		{"a peer that is no address", "pipe:1", nil, "invalid IP"},
		{"no peer", "", nil, "invalid IP"},
	} {
		r := httptest.NewRequest(http.MethodPost, LeakReportPath, nil)
		r.RemoteAddr = tc.remote
		for _, v := range tc.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := ClientAddr(r, trusted).String(); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestClientBucketsAreBoundedAndPerIPv6Slash64(t *testing.T) {
	l := newLeakLimits(1_000_000, 1)
	if ok, _ := l.allow(netip.MustParseAddr("2001:db8::1"), t0); !ok {
		t.Fatal("first request refused")
	}
	if ok, retry := l.allow(netip.MustParseAddr("2001:db8::2"), t0); ok || retry != time.Minute {
		t.Errorf("another address of the same /64: allowed %v, retry %v", ok, retry)
	}
	for i := range MaxLeakClients + 10 {
		l.allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), t0)
	}
	if n := l.clientCount(); n != MaxLeakClients {
		t.Errorf("%d clients kept, want %d", n, MaxLeakClients)
	}
	if ok, _ := l.allow(netip.MustParseAddr("2001:db8::1"), t0); !ok {
		t.Error("the client idle longest was not forgotten")
	}
}

// leakFixture is a check server's mux with the leak report endpoints over
// the fixture's index, on a loopback listener.
type leakFixture struct {
	*fixture
	reporter  *LeakReporter
	registry  *prometheus.Registry
	tokenFile string
	url       string
}

func newLeakFixture(t *testing.T, cfg LeakConfig) *leakFixture {
	t.Helper()
	f := &leakFixture{fixture: newFixture(t), registry: prometheus.NewRegistry()}
	if cfg.GitLabTokenFile == "gitlab" {
		f.tokenFile = filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(f.tokenFile, []byte("s3cret-shared\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.GitLabTokenFile = f.tokenFile
	}
	f.reporter = NewLeakReporter(f.index)
	h, err := NewLeakHandler(f.reporter, f.clock, NewLeakMetrics(f.registry, f.reporter, &LeakWriter{}), cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

type rawAnswer struct {
	status int
	header http.Header
	body   []byte
}

func (f *leakFixture) post(path string, header http.Header, body string) rawAnswer {
	f.t.Helper()
	return f.send(http.MethodPost, path, header, body)
}

func (f *leakFixture) send(method, path string, header http.Header, body string) rawAnswer {
	f.t.Helper()
	req, err := http.NewRequest(method, f.url+path, strings.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	return rawAnswer{status: resp.StatusCode, header: resp.Header, body: raw}
}

func credentials(tokens ...string) string {
	b, _ := json.Marshal(map[string]any{"credentials": tokens})
	return string(b)
}

func generousLimits() LeakConfig {
	return LeakConfig{RequestsPerMinute: 1_000_000, ClientRequestsPerMinute: 1_000_000}
}

func TestLeakReportBodies(t *testing.T) {
	f := newLeakFixture(t, generousLimits())
	many := make([]string, MaxLeakCredentials+1)
	for i := range many {
		many[i] = "x"
	}
	for _, tc := range []struct {
		name, method, body string
		want               int
	}{
		{"a report", http.MethodPost, credentials("a", "b"), http.StatusAccepted},
		{"nothing to report", http.MethodPost, `{"credentials": []}`, http.StatusAccepted},
		{"other fields too", http.MethodPost, `{"credentials": ["a"], "source": "x"}`, http.StatusAccepted},
		{"the most credentials", http.MethodPost, credentials(many[1:]...), http.StatusAccepted},
		{"one credential too many", http.MethodPost, credentials(many...), http.StatusBadRequest},
		{"not JSON", http.MethodPost, `credentials=a`, http.StatusBadRequest},
		{"no credentials", http.MethodPost, `{"tokens": ["a"]}`, http.StatusBadRequest},
		{"null credentials", http.MethodPost, `{"credentials": null}`, http.StatusBadRequest},
		{"credentials not a list", http.MethodPost, `{"credentials": "a"}`, http.StatusBadRequest},
		{"a number", http.MethodPost, `{"credentials": ["a", 1]}`, http.StatusBadRequest},
		{"a null", http.MethodPost, `{"credentials": ["a", null]}`, http.StatusBadRequest},
		{"a bare list", http.MethodPost, `["a"]`, http.StatusBadRequest},
		{"two values", http.MethodPost, credentials("a") + credentials("b"), http.StatusBadRequest},
		{"cut short", http.MethodPost, `{"credentials": ["a"`, http.StatusBadRequest},
		{"empty", http.MethodPost, ``, http.StatusBadRequest},
		{"too large", http.MethodPost, `{"credentials": ["` + strings.Repeat("a", MaxLeakBodyBytes) + `"]}`, http.StatusRequestEntityTooLarge},
		{"GET", http.MethodGet, ``, http.StatusMethodNotAllowed},
		{"PUT", http.MethodPut, credentials("a"), http.StatusMethodNotAllowed},
	} {
		a := f.send(tc.method, LeakReportPath, http.Header{"Content-Type": {"text/plain"}}, tc.body)
		if a.status != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, a.status, a.body, tc.want)
			continue
		}
		var body map[string]any
		if err := json.Unmarshal(a.body, &body); err != nil || body["message"] == "" || a.header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: body %q, Content-Type %q", tc.name, a.body, a.header.Get("Content-Type"))
		}
		if tc.want == http.StatusMethodNotAllowed && a.header.Get("Allow") != http.MethodPost {
			t.Errorf("%s: Allow %q", tc.name, a.header.Get("Allow"))
		}
		if tc.want == http.StatusBadRequest && !strings.Contains(fmt.Sprint(body["message"]), "credentials") {
			t.Errorf("%s: message %q says nothing of the shape", tc.name, body["message"])
		}
	}
	if got := f.requests(leakEndpointGitHub, http.StatusBadRequest); got != 11 {
		t.Errorf("%v 400s counted, want 11", got)
	}
}

// counter returns the value of the series of a counter with the labels
// given (others any), 0 if there is none.
func (f *leakFixture) counter(name string, labels map[string]string) float64 {
	f.t.Helper()
	return CounterSum(f.t, f.registry, name, labels)
}

// requests returns keymint_leak_report_requests_total of an endpoint and
// status.
func (f *leakFixture) requests(endpoint string, code int) float64 {
	f.t.Helper()
	return f.counter("keymint_leak_report_requests_total", map[string]string{"endpoint": endpoint, "code": strconv.Itoa(code)})
}

// reports returns keymint_leak_reports_total of an endpoint and outcome.
func (f *leakFixture) reports(endpoint string, o LeakOutcome) float64 {
	f.t.Helper()
	return f.counter("keymint_leak_reports_total", map[string]string{"endpoint": endpoint, "outcome": o.String()})
}

// A report is answered the same, byte for byte, whatever the credential
// is: the answer tells nothing of it.
func TestLeakReportAnswersTheSameWhateverTheCredential(t *testing.T) {
	f := newLeakFixture(t, generousLimits())
	f.user("exporter")
	valid := f.token("valid", "exporter")
	revoked := f.token("revoked", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true })
	unknown, _ := token.Mint("km")
	malformed := valid[:len(valid)-1] + "!"

	var first rawAnswer
	for i, tok := range []string{valid, unknown, malformed, revoked, valid, "ghp_0123456789abcdefghijklmnopqrstuvwxyz"} {
		a := f.post(LeakReportPath, nil, credentials(tok))
		if a.status != http.StatusAccepted {
			t.Fatalf("credential %d: %d %s", i, a.status, a.body)
		}
		if i == 0 {
			first = a
			continue
		}
		if !bytes.Equal(a.body, first.body) || a.header.Get("Content-Type") != first.header.Get("Content-Type") || len(a.header) != len(first.header) {
			t.Errorf("credential %d answered %q %v, the first %q %v", i, a.body, a.header, first.body, first.header)
		}
	}
	for o, want := range map[LeakOutcome]float64{LeakQueued: 1, LeakNotAccepted: 3, LeakNotKeymint: 2} {
		if got := f.reports(leakEndpointGitHub, o); got != want {
			t.Errorf("%s: %v, want %v", o, got, want)
		}
	}
	if f.reporter.Queued() != 1 {
		t.Errorf("%d ApiTokens queued, want 1", f.reporter.Queued())
	}
}

func expectTooMany(t *testing.T, a rawAnswer, wantRetry int) {
	t.Helper()
	if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") != strconv.Itoa(wantRetry) {
		t.Fatalf("answer %d, Retry-After %q, want 429 after %d s: %s", a.status, a.header.Get("Retry-After"), wantRetry, a.body)
	}
	var body errorBody
	if err := json.Unmarshal(a.body, &body); err != nil || body.Error != RateLimited || body.RetryAfter == nil || *body.RetryAfter != int64(wantRetry) {
		t.Errorf("body %s", a.body)
	}
}

func TestLeakReportsPerClientLimit(t *testing.T) {
	f := newLeakFixture(t, LeakConfig{RequestsPerMinute: 100, ClientRequestsPerMinute: 3})
	spoofed := func(i int) http.Header { return http.Header{"X-Forwarded-For": {fmt.Sprintf("198.51.100.%d", i)}} }
	for i := range 3 {
		if a := f.post(LeakReportPath, spoofed(i), credentials("x")); a.status != http.StatusAccepted {
			t.Fatalf("report %d: %d", i, a.status)
		}
	}
	// The loopback peer is no trusted proxy: its X-Forwarded-For is not
	// read, whatever it says.
	expectTooMany(t, f.post(LeakReportPath, spoofed(9), credentials("x")), 20)
	f.clock.Step(20 * time.Second)
	if a := f.post(LeakReportPath, nil, credentials("x")); a.status != http.StatusAccepted {
		t.Errorf("after Retry-After: %d", a.status)
	}
	if got := f.requests(leakEndpointGitHub, http.StatusTooManyRequests); got != 1 {
		t.Errorf("%v 429s counted, want 1", got)
	}
}

func TestLeakReportsGlobalLimit(t *testing.T) {
	f := newLeakFixture(t, LeakConfig{RequestsPerMinute: 4, ClientRequestsPerMinute: 2, GitLabTokenFile: "gitlab",
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	// Behind a trusted proxy (the loopback peer), each client has its own
	// budget, and all share the global one.
	from := func(i int) http.Header { return http.Header{"X-Forwarded-For": {fmt.Sprintf("198.51.100.%d", i)}} }
	for i := range 2 {
		for range 2 {
			if a := f.post(LeakReportPath, from(i), credentials("x")); a.status != http.StatusAccepted {
				t.Fatalf("client %d: %d", i, a.status)
			}
		}
	}
	expectTooMany(t, f.post(LeakReportPath, from(2), credentials("x")), 15)
	// GitLab's reports, with the shared token, have a budget of their own:
	// a flood of anonymous reports cannot hold them up.
	gitlab := http.Header{"Authorization": {"s3cret-shared"}}
	for i := range 4 {
		if a := f.post(RevokeTokensPath, gitlab, `[]`); a.status != http.StatusNoContent {
			t.Fatalf("GitLab report %d with the anonymous budget spent: %d", i, a.status)
		}
	}
	expectTooMany(t, f.post(RevokeTokensPath, gitlab, `[]`), 15)
	// A wrong shared token counts against the anonymous budgets.
	expectTooMany(t, f.post(RevokeTokensPath, http.Header{"Authorization": {"guess"}}, `[]`), 15)
	f.clock.Step(15 * time.Second)
	if a := f.post(RevokeTokensPath, gitlab, `[]`); a.status != http.StatusNoContent {
		t.Errorf("GitLab after Retry-After: %d", a.status)
	}
	// A client whose own budget is left still waits for the global one.
	if a := f.post(LeakReportPath, from(3), credentials("x")); a.status != http.StatusAccepted {
		t.Errorf("the global budget's refill: %d", a.status)
	}
	expectTooMany(t, f.post(LeakReportPath, from(3), credentials("x")), 15)
}

func gitlabBody(entries ...map[string]string) string {
	b, _ := json.Marshal(entries)
	return string(b)
}

func TestGitLabRevokeTokens(t *testing.T) {
	f := newLeakFixture(t, LeakConfig{RequestsPerMinute: 1000, ClientRequestsPerMinute: 5, GitLabTokenFile: "gitlab"})
	f.user("exporter")
	valid := f.token("valid", "exporter")
	report := gitlabBody(map[string]string{"type": GitLabTokenType, "token": valid, "location": "https://gitlab.example/acme/app/-/blob/main/.env"})
	auth := func(v string) http.Header { return http.Header{"Authorization": {v}} }

	for name, h := range map[string]http.Header{
		"no Authorization":       nil,
		"a wrong token":          auth("s3cret-share"),
		"a wrong Bearer token":   auth("Bearer s3cret-sharedd"),
		"another scheme":         auth("Basic s3cret-shared"),
		"the token with a space": auth("s3cret-shared x"),
	} {
		if a := f.post(RevokeTokensPath, h, report); a.status != http.StatusUnauthorized {
			t.Errorf("%s: %d", name, a.status)
		}
	}
	// Guessing goes no faster than the per-client rate.
	expectTooMany(t, f.post(RevokeTokensPath, auth("guess"), report), 12)
	if f.reporter.Queued() != 0 {
		t.Fatal("an unauthenticated report was queued")
	}

	if a := f.post(RevokeTokensPath, auth("s3cret-shared"), report); a.status != http.StatusNoContent || len(a.body) != 0 {
		t.Errorf("the bare token: %d %q", a.status, a.body)
	}
	if a := f.post(RevokeTokensPath, auth("Bearer s3cret-shared"), report); a.status != http.StatusNoContent {
		t.Errorf("Bearer: %d", a.status)
	}
	leaks := f.reporter.take()
	if len(leaks) != 1 {
		t.Fatalf("queued %v", leaks)
	}
	for _, ls := range leaks {
		for _, l := range ls {
			if l.source != SourceGitLab || l.location != "https://gitlab.example/acme/app/-/blob/main/.env" {
				t.Errorf("queued %+v", l)
			}
		}
	}
	if f.reports(leakEndpointGitLab, LeakQueued) != 1 || f.reports(leakEndpointGitLab, LeakNotAccepted) != 1 {
		t.Errorf("the replay was not counted apart")
	}

	for name, body := range map[string]string{
		"an unsupported type": gitlabBody(map[string]string{"type": "gitleaks_rule_id_gitlab_personal_access_token", "token": valid}),
		"no type":             gitlabBody(map[string]string{"token": valid}),
		"no token":            gitlabBody(map[string]string{"type": GitLabTokenType}),
		"an object":           `{"type": "` + GitLabTokenType + `", "token": "x"}`,
		"null":                `null`,
		"a null entry":        `[null]`,
		"not JSON":            `type=x`,
		"a number token":      `[{"type": "` + GitLabTokenType + `", "token": 1}]`,
	} {
		if a := f.post(RevokeTokensPath, auth("s3cret-shared"), body); a.status != http.StatusBadRequest {
			t.Errorf("%s: %d %s", name, a.status, a.body)
		}
	}
	if a := f.post(RevokeTokensPath, auth("s3cret-shared"), "["+strings.Repeat(`"x",`, MaxLeakBodyBytes/4)+`"x"]`); a.status != http.StatusRequestEntityTooLarge {
		t.Errorf("too large: %d", a.status)
	}
	many := make([]map[string]string, MaxLeakCredentials+1)
	for i := range many {
		many[i] = map[string]string{"type": GitLabTokenType, "token": "x"}
	}
	if a := f.post(RevokeTokensPath, auth("s3cret-shared"), gitlabBody(many...)); a.status != http.StatusBadRequest {
		t.Errorf("one token too many: %d", a.status)
	}
	if a := f.send(http.MethodGet, RevokeTokensPath, auth("s3cret-shared"), ""); a.status != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", a.status)
	}
}

func TestGitLabRevocableTokenTypes(t *testing.T) {
	f := newLeakFixture(t, LeakConfig{RequestsPerMinute: 1000, ClientRequestsPerMinute: 5, GitLabTokenFile: "gitlab"})
	if a := f.send(http.MethodGet, RevocableTokenTypesPath, nil, ""); a.status != http.StatusUnauthorized {
		t.Errorf("without the token: %d", a.status)
	}
	a := f.send(http.MethodGet, RevocableTokenTypesPath, http.Header{"Authorization": {"s3cret-shared"}}, "")
	var body struct {
		Types      []string `json:"types"`
		TokenTypes []struct {
			Type, Regex   string
			RevocationURL string `json:"revocation_url"`
		} `json:"token_types"`
	}
	if err := json.Unmarshal(a.body, &body); err != nil || a.status != http.StatusOK {
		t.Fatalf("%d %s", a.status, a.body)
	}
	host := strings.TrimPrefix(f.url, "http://")
	if len(body.Types) != 1 || body.Types[0] != GitLabTokenType || len(body.TokenTypes) != 1 ||
		body.TokenTypes[0].RevocationURL != "https://"+host+RevokeTokensPath {
		t.Errorf("answer %s", a.body)
	}
	re := regexp.MustCompile(`\A` + body.TokenTypes[0].Regex + `\z`)
	for _, prefix := range []string{"km", "acme", strings.Repeat("a", token.MaxPrefixLen)} {
		tok, _ := token.Mint(prefix)
		if !re.MatchString(tok) {
			t.Errorf("the regex does not match %.8s…", tok)
		}
	}
	for _, s := range []string{"k_" + strings.Repeat("a", 49), "km_" + strings.Repeat("a", 48), "Km_" + strings.Repeat("a", 49)} {
		if re.MatchString(s) {
			t.Errorf("the regex matches %q", s)
		}
	}
}

func TestGitLabTokenFileRotation(t *testing.T) {
	f := newLeakFixture(t, LeakConfig{RequestsPerMinute: 1000, ClientRequestsPerMinute: 1000, GitLabTokenFile: "gitlab"})
	status := func(tok string) int {
		return f.post(RevokeTokensPath, http.Header{"Authorization": {tok}}, `[]`).status
	}
	if got := status("s3cret-shared"); got != http.StatusNoContent {
		t.Fatalf("before the rotation: %d", got)
	}
	// As the kubelet updates a Secret volume: a new file in its place.
	next := filepath.Join(filepath.Dir(f.tokenFile), "next")
	if err := os.WriteFile(next, []byte("rotated-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(next, later, later); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, f.tokenFile); err != nil {
		t.Fatal(err)
	}
	if got := status("rotated-token"); got != http.StatusUnauthorized {
		t.Errorf("within a second of the last look: %d, want the old token still", got)
	}
	f.clock.Step(sharedTokenRecheck)
	if got := status("rotated-token"); got != http.StatusNoContent {
		t.Errorf("the new token: %d", got)
	}
	if got := status("s3cret-shared"); got != http.StatusUnauthorized {
		t.Errorf("the old token: %d", got)
	}
	// A file that goes away keeps the token last read.
	if err := os.Remove(f.tokenFile); err != nil {
		t.Fatal(err)
	}
	f.clock.Step(sharedTokenRecheck)
	if got := status("rotated-token"); got != http.StatusNoContent {
		t.Errorf("once the file is gone: %d", got)
	}
}

func TestGitLabEndpointsNeedATokenFile(t *testing.T) {
	f := newLeakFixture(t, generousLimits())
	for _, path := range []string{RevocableTokenTypesPath, RevokeTokensPath} {
		if a := f.post(path, http.Header{"Authorization": {""}}, `[]`); a.status != http.StatusNotFound {
			t.Errorf("%s: %d", path, a.status)
		}
	}
	empty := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{empty, filepath.Join(t.TempDir(), "missing")} {
		if _, err := NewLeakHandler(f.reporter, f.clock, nil, LeakConfig{GitLabTokenFile: file}); err == nil || !strings.Contains(err.Error(), "--leak-report-gitlab-token-file") {
			t.Errorf("%s: %v", filepath.Base(file), err)
		}
	}
}

// No answer, metric or queued location ever holds a reported token.
func TestLeakReportsKeepNoToken(t *testing.T) {
	f := newLeakFixture(t, LeakConfig{RequestsPerMinute: 1000, ClientRequestsPerMinute: 1000, GitLabTokenFile: "gitlab"})
	f.user("exporter")
	valid := f.token("valid", "exporter")
	var answers bytes.Buffer
	for _, a := range []rawAnswer{
		f.post(LeakReportPath, nil, credentials(valid, valid+"x")),
		f.post(RevokeTokensPath, http.Header{"Authorization": {"s3cret-shared"}},
			gitlabBody(map[string]string{"type": GitLabTokenType, "token": valid, "location": "https://x.example/?t=" + valid})),
		f.post(RevokeTokensPath, http.Header{"Authorization": {"s3cret-shared"}}, gitlabBody(map[string]string{"type": "other", "token": valid})),
	} {
		answers.Write(a.body)
		fmt.Fprint(&answers, a.header)
	}
	mfs, _ := f.registry.Gather()
	for _, mf := range mfs {
		fmt.Fprint(&answers, mf.String())
	}
	if strings.Contains(answers.String(), valid[token.DisplayLen:]) || strings.Contains(answers.String(), token.HashString(valid)) {
		t.Error("an answer or a metric holds the token or its hash")
	}
	for _, ls := range f.reporter.take() {
		for _, l := range ls {
			if strings.Contains(l.location, valid[token.DisplayLen:]) {
				t.Errorf("queued location %q", l.location)
			}
		}
	}
}

// CounterSum returns the sum of the series of counter name in g whose
// labels match those given (others any); 0 if there is none. A test
// helper, for this package's external tests too.
func CounterSum(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue series
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
