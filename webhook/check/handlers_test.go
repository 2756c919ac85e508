package check

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
)

// t0 is a minute boundary plus 15 s, so rate-limit windows are predictable.
var t0 = time.Date(2026, 11, 23, 12, 0, 15, 0, time.UTC)

// fixture is a check server on a loopback listener with an index the test
// fills as the informers would.
type fixture struct {
	t       *testing.T
	metrics *Metrics
	clock   *clocktesting.FakeClock
	index   *Index
	server  *httptest.Server
	usage   *Usage
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, clock: clocktesting.NewFakeClock(t0), index: NewIndex()}
	h := NewHandler(f.index, f.clock, 500, prometheus.NewRegistry())
	f.usage, f.metrics = h.Usage, h.Metrics
	f.server = httptest.NewServer(h.ServeMux())
	t.Cleanup(f.server.Close)
	return f
}

func (f *fixture) user(name string, mutate ...func(*keymintv1alpha1.ServiceUser)) {
	u := &keymintv1alpha1.ServiceUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: name, UID: types.UID("uid-" + name)},
		Spec: keymintv1alpha1.ServiceUserSpec{
			Permissions: []string{"links:read", "links:write", "qr:read"},
			Groups:      []string{"payments"},
		},
	}
	for _, m := range mutate {
		m(u)
	}
	f.index.UpsertUser(u)
}

// token indexes an issued ApiToken of user and returns its plaintext.
func (f *fixture) token(name, user string, mutate ...func(*keymintv1alpha1.ApiToken)) string {
	plain, err := token.Mint("km")
	if err != nil {
		f.t.Fatal(err)
	}
	f.tokenWithPlain(plain, name, user, mutate...)
	return plain
}

// tokenWithPlain indexes the ApiToken token would, for a plaintext minted
// already: the same token on another replica.
func (f *fixture) tokenWithPlain(plain, name, user string, mutate ...func(*keymintv1alpha1.ApiToken)) {
	issued := metav1.NewTime(f.clock.Now())
	t := &keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: name},
		Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: user},
		Status:     keymintv1alpha1.ApiTokenStatus{TokenHash: token.HashString(plain), IssuedAt: &issued},
	}
	for _, m := range mutate {
		m(t)
	}
	f.index.UpsertToken(t)
}

type answer struct {
	status int
	header http.Header
	body   map[string]any
}

func (f *fixture) do(method, path string, header http.Header, body []byte) answer {
	f.t.Helper()
	req, err := http.NewRequest(method, f.server.URL+path, bytes.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := f.server.Client().Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header}
	if err := json.Unmarshal(raw, &a.body); err != nil {
		f.t.Fatalf("%s %s answered %d with a body that is not JSON: %q", method, path, resp.StatusCode, raw)
	}
	return a
}

func (f *fixture) check(tok string, query string, extra ...string) answer {
	f.t.Helper()
	h := http.Header{}
	if tok != "" {
		h.Set("Authorization", "Bearer "+tok)
	}
	for i := 0; i+1 < len(extra); i += 2 {
		h.Add(extra[i], extra[i+1])
	}
	path := CheckPath
	if query != "" {
		path += "?" + query
	}
	return f.do(http.MethodGet, path, h, nil)
}

func expectError(t *testing.T, a answer, status int, code Failure) {
	t.Helper()
	if a.status != status || a.body["error"] != string(code) {
		t.Fatalf("answer %d %v, want %d with error %q", a.status, a.body, status, code)
	}
	if msg, _ := a.body["message"].(string); msg == "" {
		t.Errorf("error %q has no message", code)
	}
	if a.header.Get("Content-Type") != "application/json" {
		t.Errorf("Content-Type %q", a.header.Get("Content-Type"))
	}
}

func TestCheckAcceptsAGoodToken(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	tok := f.token("exporter-prod", "exporter")

	a := f.check(tok, "")
	if a.status != http.StatusOK {
		t.Fatalf("status %d %v", a.status, a.body)
	}
	for header, want := range map[string]string{
		HeaderUser:              "keymint:team-a:exporter",
		HeaderToken:             "team-a/exporter-prod",
		HeaderScopes:            "links:read,links:write,qr:read",
		"X-RateLimit-Limit":     "500",
		"X-RateLimit-Remaining": "499",
		// One check takes a minute/500 = 120 ms out of the budget, whole
		// again by the end of the second that ends in.
		"X-RateLimit-Reset": strconv.FormatInt(t0.Unix()+1, 10),
	} {
		if got := a.header.Get(header); got != want {
			t.Errorf("%s = %q, want %q", header, got, want)
		}
	}
	if a.body["user"] != "keymint:team-a:exporter" || a.body["token"] != "team-a/exporter-prod" {
		t.Errorf("body %v", a.body)
	}
	if seen, _, _ := f.usage.take(); !seen[usageKey{types.NamespacedName{Namespace: "team-a", Name: "exporter-prod"}, token.Hash(tok)}].Equal(t0) {
		t.Error("a successful check was not recorded for lastUsedAt, under the hash it presented")
	}
}

func TestCheckReadsTheForwardedHeaderAndAnyCaseOfBearer(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	tok := f.token("exporter-prod", "exporter")
	if a := f.do(http.MethodPost, CheckPath, http.Header{HeaderForwarded: {"Bearer " + tok}}, nil); a.status != http.StatusOK {
		t.Errorf("X-Forwarded-Authorization: %d %v", a.status, a.body)
	}
	if a := f.do(http.MethodGet, CheckPath, http.Header{"Authorization": {"bearer " + tok}}, nil); a.status != http.StatusOK {
		t.Errorf("lower-case scheme: %d %v", a.status, a.body)
	}
	if a := f.do(http.MethodGet, CheckPath+"/api/v1/links", http.Header{"Authorization": {"Bearer " + tok}}, nil); a.status != http.StatusOK {
		t.Errorf("a path under /check, as Envoy sends it: %d %v", a.status, a.body)
	}
}

func TestCheckRefusals(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	f.user("disabled", func(u *keymintv1alpha1.ServiceUser) { u.Spec.Disabled = true })
	good := f.token("good", "exporter")
	revoked := f.token("revoked", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true })
	ofDisabled := f.token("of-disabled", "disabled")
	ofMissing := f.token("of-missing", "nobody")
	unknown, _ := token.Mint("km")
	typo := []byte(good)
	typo[10] ^= 1

	tests := map[string]struct {
		header http.Header
		code   Failure
	}{
		"no Authorization header":        {header: http.Header{}, code: MissingToken},
		"a Basic credential":             {header: http.Header{"Authorization": {"Basic dXNlcjpwYXNz"}}, code: MissingToken},
		"Bearer with nothing after it":   {header: http.Header{"Authorization": {"Bearer "}}, code: MissingToken},
		"a token with a typo":            {header: http.Header{"Authorization": {"Bearer " + string(typo)}}, code: MalformedToken},
		"not a keymint token":            {header: http.Header{"Authorization": {"Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"}}, code: MalformedToken},
		"a well-formed unknown token":    {header: http.Header{"Authorization": {"Bearer " + unknown}}, code: InvalidToken},
		"revoked by spec":                {header: http.Header{"Authorization": {"Bearer " + revoked}}, code: RevokedToken},
		"its ServiceUser is disabled":    {header: http.Header{"Authorization": {"Bearer " + ofDisabled}}, code: RevokedToken},
		"its ServiceUser does not exist": {header: http.Header{"Authorization": {"Bearer " + ofMissing}}, code: RevokedToken},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a := f.do(http.MethodGet, CheckPath, tc.header, nil)
			expectError(t, a, http.StatusUnauthorized, tc.code)
			if !strings.HasPrefix(a.header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate = %q", a.header.Get("WWW-Authenticate"))
			}
			// The answer never echoes what was presented, beyond its scheme.
			_, presented, _ := strings.Cut(tc.header.Get("Authorization"), " ")
			if body, _ := json.Marshal(a.body); len(presented) > 8 && strings.Contains(string(body), presented[3:]) {
				t.Errorf("the answer echoes the presented token: %s", body)
			}
		})
	}
}

func TestCheckRefusesATokenTheClockHasExpiredBeforeTheControllerNoticed(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	tok := f.token("short", "exporter", func(t *keymintv1alpha1.ApiToken) {
		t.Spec.Lifetime = &metav1.Duration{Duration: time.Hour}
	})
	if a := f.check(tok, ""); a.status != http.StatusOK {
		t.Fatalf("before expiry: %d", a.status)
	}
	f.clock.Step(time.Hour) // the status still says nothing of expiry
	expectError(t, f.check(tok, ""), http.StatusUnauthorized, ExpiredToken)
}

func TestCheckHonoursTheUsersMaxLifetimeAtOnce(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	tok := f.token("long", "exporter")
	f.clock.Step(48 * time.Hour)
	if a := f.check(tok, ""); a.status != http.StatusOK {
		t.Fatalf("no expiry: %d", a.status)
	}
	f.user("exporter", func(u *keymintv1alpha1.ServiceUser) {
		u.Spec.TokenPolicy.MaxLifetime = &metav1.Duration{Duration: 24 * time.Hour}
	})
	expectError(t, f.check(tok, ""), http.StatusUnauthorized, ExpiredToken)
}

func TestCheckAcceptsAPreviousHashOnlyDuringItsGracePeriod(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	old, _ := token.Mint("km")
	current := f.token("rotated", "exporter", func(t *keymintv1alpha1.ApiToken) {
		t.Status.PreviousTokens = []keymintv1alpha1.PreviousToken{{TokenHash: token.HashString(old), ValidUntil: metav1.NewTime(t0.Add(time.Hour))}}
	})
	if a := f.check(old, ""); a.status != http.StatusOK || a.header.Get(HeaderToken) != "team-a/rotated" {
		t.Fatalf("old token in grace: %d %v", a.status, a.body)
	}
	f.clock.Step(time.Hour)
	expectError(t, f.check(old, ""), http.StatusUnauthorized, InvalidToken)
	if a := f.check(current, ""); a.status != http.StatusOK {
		t.Errorf("current token after the grace period: %d", a.status)
	}
}

func TestCheckScopes(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	tok := f.token("scoped", "exporter", func(t *keymintv1alpha1.ApiToken) {
		// admin:write is not among the user's permissions, so never granted.
		t.Spec.Scopes = []string{"links:read", "admin:write"}
	})

	a := f.check(tok, "scope=links:read")
	if a.status != http.StatusOK || a.header.Get(HeaderScopes) != "links:read" {
		t.Errorf("held scope: %d, scopes %q (want only the intersection)", a.status, a.header.Get(HeaderScopes))
	}
	expectError(t, f.check(tok, "scope=links:write"), http.StatusForbidden, InsufficientScope)
	expectError(t, f.check(tok, "scope=admin:write"), http.StatusForbidden, InsufficientScope)
	a = f.check(tok, "scope=links:read&scope=links:write")
	expectError(t, a, http.StatusForbidden, InsufficientScope)
	if msg := a.body["message"].(string); !strings.Contains(msg, "links:write") || strings.Contains(msg, "links:read") {
		t.Errorf("message %q should name only the missing scope", msg)
	}
	if a.header.Get("X-RateLimit-Limit") == "" {
		t.Error("a 403 carries no rate-limit headers")
	}
}

func TestCheckRateLimitsPerToken(t *testing.T) {
	f := newFixture(t)
	f.user("exporter", func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.RequestsPerMinute = 5 })
	limited := f.token("limited", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.RequestsPerMinute = ptr.To[int32](2) })
	other := f.token("other", "exporter")

	// 2 a minute: both at once, each taking 30 s out of the budget, which is
	// whole again 30 s, then 60 s, from now.
	for i, want := range []struct{ remaining, reset string }{
		{"1", strconv.FormatInt(t0.Unix()+30, 10)},
		{"0", strconv.FormatInt(t0.Unix()+60, 10)},
	} {
		a := f.check(limited, "")
		if a.status != http.StatusOK || a.header.Get("X-RateLimit-Limit") != "2" || a.header.Get("X-RateLimit-Remaining") != want.remaining || a.header.Get("X-RateLimit-Reset") != want.reset {
			t.Fatalf("request %d: %d limit %s remaining %s reset %s; want remaining %s reset %s", i+1, a.status, a.header.Get("X-RateLimit-Limit"),
				a.header.Get("X-RateLimit-Remaining"), a.header.Get("X-RateLimit-Reset"), want.remaining, want.reset)
		}
	}
	a := f.check(limited, "")
	expectError(t, a, http.StatusTooManyRequests, RateLimited)
	if a.header.Get("Retry-After") != "30" || a.body["retryAfter"] != float64(30) || a.header.Get("X-RateLimit-Remaining") != "0" {
		t.Errorf("429: Retry-After %q, retryAfter %v, remaining %q; want 30, 30, 0", a.header.Get("Retry-After"), a.body["retryAfter"], a.header.Get("X-RateLimit-Remaining"))
	}

	if a := f.check(other, ""); a.status != http.StatusOK || a.header.Get("X-RateLimit-Limit") != "5" {
		t.Errorf("another token of the same user is limited separately at the user's rate: %d limit %s", a.status, a.header.Get("X-RateLimit-Limit"))
	}

	f.clock.Step(30 * time.Second)
	if a := f.check(limited, ""); a.status != http.StatusOK || a.header.Get("X-RateLimit-Remaining") != "0" {
		t.Errorf("30 s later, one check has come back: %d remaining %s; want 200, 0", a.status, a.header.Get("X-RateLimit-Remaining"))
	}
	f.clock.Step(60 * time.Second)
	if a := f.check(limited, ""); a.status != http.StatusOK || a.header.Get("X-RateLimit-Remaining") != "1" {
		t.Errorf("a minute later, the budget is whole: %d remaining %s; want 200, 1", a.status, a.header.Get("X-RateLimit-Remaining"))
	}
}

func TestCheckAudiences(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	tok := f.token("vault-only", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Audiences = []string{"vault"} })
	expectError(t, f.check(tok, ""), http.StatusUnauthorized, WrongAudience)
	expectError(t, f.check(tok, "audience=grafana"), http.StatusUnauthorized, WrongAudience)
	if a := f.check(tok, "audience=vault"); a.status != http.StatusOK {
		t.Errorf("matching audience: %d", a.status)
	}
	// nginx and Traefik pass the client's headers to /check: a header must
	// not widen what the auth URL's query asks for.
	expectError(t, f.check(tok, "audience=reports", HeaderAudience, "vault"), http.StatusUnauthorized, WrongAudience)
	expectError(t, f.check(tok, "", HeaderAudience, "vault"), http.StatusUnauthorized, WrongAudience)
}

func TestCheckAnswersAnyMethodAsProxiesForwardIt(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	tok := f.token("t", "exporter")
	for _, method := range []string{http.MethodDelete, http.MethodPut, http.MethodPatch, http.MethodOptions} {
		if a := f.do(method, CheckPath+"/api/links/7", http.Header{"Authorization": {"Bearer " + tok}}, nil); a.status != http.StatusOK {
			t.Errorf("%s /check/api/links/7: %d %v", method, a.status, a.body)
		}
	}
}

func TestUnderCheckPathOnlyHeadersSetRequirements(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	vault := f.token("vault-only", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Audiences = []string{"vault"} })
	auth := http.Header{"Authorization": {"Bearer " + vault}}

	// Behind Envoy the client's own query follows the path: naming an
	// audience there must not unlock a token restricted to it.
	expectError(t, f.do(http.MethodGet, CheckPath+"/anything?audience=vault", auth, nil), http.StatusUnauthorized, WrongAudience)
	withHeader := http.Header{"Authorization": {"Bearer " + vault}, HeaderAudience: {"vault"}}
	if a := f.do(http.MethodGet, CheckPath+"/anything?audience=grafana", withHeader, nil); a.status != http.StatusOK {
		t.Errorf("audience from the proxy's header: %d %v", a.status, a.body)
	}
	// Nor can a client's query add or drop a scope requirement there.
	scoped := http.Header{"Authorization": {"Bearer " + vault}, HeaderScope: {"admin:write"}}
	expectError(t, f.do(http.MethodGet, CheckPath+"/x?scope=links:read", scoped, nil), http.StatusUnauthorized, WrongAudience)
	plain := f.token("plain", "exporter")
	if a := f.do(http.MethodGet, CheckPath+"/x?scope=admin:write", http.Header{"Authorization": {"Bearer " + plain}}, nil); a.status != http.StatusOK {
		t.Errorf("a client's scope query under /check/ is ignored: %d %v", a.status, a.body)
	}
}

func TestCheckWithATrailingSlashRefusesQueryRequirements(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	tok := f.token("scoped", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"links:read"} })
	auth := http.Header{"Authorization": {"Bearer " + tok}}
	// An auth URL written "/check/?scope=..." must not pass a token that
	// lacks the scope because the query is not read there.
	a := f.do(http.MethodGet, CheckPath+"/?scope=links:write", auth, nil)
	if a.status != http.StatusBadRequest || a.body["error"] != "bad_request" || !strings.Contains(a.body["message"].(string), "/check?scope=") {
		t.Errorf("/check/?scope=: %d %v, want 400 pointing at /check?scope=", a.status, a.body)
	}
	expectError(t, f.check(tok, "scope=links:write"), http.StatusForbidden, InsufficientScope)
	if a := f.do(http.MethodGet, CheckPath+"/", auth, nil); a.status != http.StatusOK {
		t.Errorf("/check/ without requirements (Envoy, client path /): %d %v", a.status, a.body)
	}
}

func TestRateLimitStatusForNginx(t *testing.T) {
	f := newFixture(t)
	f.user("exporter", func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.RequestsPerMinute = 1 })
	tok := f.token("t", "exporter")
	f.check(tok, "")
	a := f.check(tok, RateLimitStatusParam+"=403")
	expectError(t, a, http.StatusForbidden, RateLimited)
	if a.header.Get(HeaderError) != "rate_limited" || a.header.Get("Retry-After") != "60" {
		t.Errorf("headers %v: want X-Keymint-Error rate_limited and Retry-After 60", a.header)
	}
	expectError(t, f.check(tok, ""), http.StatusTooManyRequests, RateLimited)
	if a := f.check(tok, RateLimitStatusParam+"=500"); a.status != http.StatusBadRequest {
		t.Errorf("rate_limit_status=500: %d %v", a.status, a.body)
	}
}

func reviewBody(apiVersion, tok string, audiences ...string) []byte {
	spec := map[string]any{"token": tok}
	if len(audiences) > 0 {
		spec["audiences"] = audiences
	}
	b, _ := json.Marshal(map[string]any{"apiVersion": apiVersion, "kind": "TokenReview", "spec": spec})
	return b
}

func TestTokenReview(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	tok := f.token("exporter-prod", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"qr:read"} })
	revoked := f.token("revoked", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true })

	for path, apiVersion := range map[string]string{TokenReviewV1: "authentication.k8s.io/v1", TokenReviewV1beta: "authentication.k8s.io/v1beta1"} {
		t.Run(apiVersion, func(t *testing.T) {
			a := f.do(http.MethodPost, path, nil, reviewBody(apiVersion, tok))
			if a.status != http.StatusOK || a.body["apiVersion"] != apiVersion || a.body["kind"] != "TokenReview" {
				t.Fatalf("answer %d %v", a.status, a.body)
			}
			status := a.body["status"].(map[string]any)
			user := status["user"].(map[string]any)
			if status["authenticated"] != true || user["username"] != "keymint:team-a:exporter" || user["uid"] != "uid-exporter" {
				t.Errorf("status %v", status)
			}
			groups, _ := json.Marshal(user["groups"])
			if string(groups) != `["keymint:serviceusers","keymint:serviceusers:team-a","payments"]` {
				t.Errorf("groups %s", groups)
			}
			extra, _ := json.Marshal(user["extra"])
			if string(extra) != `{"keymint.io/scopes":["qr:read"],"keymint.io/token":["team-a/exporter-prod"]}` {
				t.Errorf("extra %s", extra)
			}

			a = f.do(http.MethodPost, path, nil, reviewBody(apiVersion, revoked))
			status = a.body["status"].(map[string]any)
			if a.status != http.StatusOK || status["authenticated"] == true || status["error"] != RevokedToken.Message() || status["user"] != nil && len(status["user"].(map[string]any)) > 0 {
				t.Errorf("revoked: %d %v", a.status, status)
			}
		})
	}
}

func TestTokenReviewAudiences(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	plain := f.token("plain", "exporter")
	vault := f.token("vault", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Audiences = []string{"vault", "nomad"} })
	review := func(tok string, auds ...string) map[string]any {
		return f.do(http.MethodPost, TokenReviewV1, nil, reviewBody("authentication.k8s.io/v1", tok, auds...)).body["status"].(map[string]any)
	}
	if s := review(plain, "https://kubernetes.default.svc"); s["authenticated"] != true || s["audiences"] != nil {
		t.Errorf("a token without audiences answers no audience (valid for kube-apiserver itself): %v", s)
	}
	if s := review(vault, "vault", "consul"); s["authenticated"] != true || s["audiences"].([]any)[0] != "vault" || len(s["audiences"].([]any)) != 1 {
		t.Errorf("intersection: %v", s)
	}
	if s := review(vault); s["authenticated"] == true {
		t.Errorf("a token restricted to audiences, asked for none: %v", s)
	}
	if s := review(vault, "consul"); s["authenticated"] == true || s["error"] != WrongAudience.Message() {
		t.Errorf("no common audience: %v", s)
	}
}

func TestTokenReviewBadRequests(t *testing.T) {
	f := newFixture(t)
	tests := map[string]struct {
		path string
		body []byte
	}{
		"not JSON":                  {path: TokenReviewV1, body: []byte("token=abc")},
		"empty":                     {path: TokenReviewV1, body: nil},
		"another kind":              {path: TokenReviewV1, body: []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"SubjectAccessReview","spec":{}}`)},
		"v1beta1 body on v1 path":   {path: TokenReviewV1, body: reviewBody("authentication.k8s.io/v1beta1", "x")},
		"a body over the size cap":  {path: TokenReviewV1, body: reviewBody("authentication.k8s.io/v1", strings.Repeat("a", maxBodyBytes+1))},
		"a spec.token of bad shape": {path: TokenReviewV1, body: []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{"token":42}}`)},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			expectError(t, f.do(http.MethodPost, tc.path, nil, tc.body), http.StatusBadRequest, "bad_request")
		})
	}
	if a := f.do(http.MethodGet, TokenReviewV1, nil, nil); a.status != http.StatusMethodNotAllowed {
		t.Errorf("GET tokenreviews: %d", a.status)
	}
}

func TestIndexReplacesAndForgetsHashes(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	first := f.token("t", "exporter")
	second := f.token("t", "exporter") // the controller rotated without grace
	expectError(t, f.check(first, ""), http.StatusUnauthorized, InvalidToken)
	if a := f.check(second, ""); a.status != http.StatusOK {
		t.Errorf("the new hash: %d", a.status)
	}
	f.index.DeleteToken(types.NamespacedName{Namespace: "team-a", Name: "t"})
	expectError(t, f.check(second, ""), http.StatusUnauthorized, InvalidToken)
	if f.index.Len() != 0 {
		t.Errorf("index holds %d hashes after the delete", f.index.Len())
	}
}

func TestARevokedTokenStaysRevokedOnceTheControllerClearsItsHash(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	old := f.token("t", "exporter")

	// The controller's revocation: the spec says revoked, then the status
	// drops the hash and says Revoked.
	revoked := &keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "t"},
		Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "exporter", Revoked: true},
		Status: keymintv1alpha1.ApiTokenStatus{Conditions: []metav1.Condition{{
			Type: keymintv1alpha1.ApiTokenConditionRevoked, Status: metav1.ConditionTrue, Reason: keymintv1alpha1.ApiTokenReasonRevokedBySpec,
		}}},
	}
	f.index.UpsertToken(revoked)
	expectError(t, f.check(old, ""), http.StatusUnauthorized, RevokedToken)
	f.index.UpsertToken(revoked) // a later resync keeps the answer
	expectError(t, f.check(old, ""), http.StatusUnauthorized, RevokedToken)

	// Un-revoked: a new token is issued, and the old one is never accepted.
	fresh := f.token("t", "exporter")
	if a := f.check(fresh, ""); a.status != http.StatusOK {
		t.Fatalf("the new token: %d", a.status)
	}
	expectError(t, f.check(old, ""), http.StatusUnauthorized, InvalidToken)

	f.index.DeleteToken(types.NamespacedName{Namespace: "team-a", Name: "t"})
	if f.index.Len() != 0 {
		t.Errorf("index holds %d hashes after the delete", f.index.Len())
	}
}

func TestMetricsCountChecksByEndpointAndResult(t *testing.T) {
	f := newFixture(t)
	f.user("exporter", func(u *keymintv1alpha1.ServiceUser) { u.Spec.TokenPolicy.RequestsPerMinute = 1 })
	tok := f.token("t", "exporter")
	f.check(tok, "")
	f.check(tok, "") // rate limited
	f.check("", "")
	f.do(http.MethodPost, TokenReviewV1, nil, reviewBody("authentication.k8s.io/v1", tok))

	for labels, want := range map[[2]string]float64{
		{"check", "ok"}: 1, {"check", "rate_limited"}: 1, {"check", "missing_token"}: 1, {"tokenreview", "ok"}: 1,
	} {
		if got := testutil.ToFloat64(f.metrics.checks.WithLabelValues(labels[0], labels[1])); got != want {
			t.Errorf("keymint_checks_total%v = %v, want %v", labels, got, want)
		}
	}
	if got := testutil.ToFloat64(f.metrics.rateLimited); got != 1 {
		t.Errorf("keymint_rate_limited_total = %v, want 1", got)
	}
	if got := testutil.ToFloat64(f.metrics.indexSize); got != 1 {
		t.Errorf("keymint_index_tokens = %v, want 1", got)
	}
	if n := testutil.CollectAndCount(f.metrics.latency); n != 2 {
		t.Errorf("latency histograms for %d endpoints, want 2", n)
	}
}

// TestCheckRefusesALongListOfRequirements: requirements are read before the
// token, so a long list is refused rather than built for anyone who asks.
func TestCheckRefusesALongListOfRequirements(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	tok := f.token("scoped", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Scopes = []string{"links:read"} })
	long := "scope=links:read" + strings.Repeat(",links:read", maxRequirements)
	for _, bearer := range []string{tok, "not-a-token"} {
		a := f.check(bearer, long)
		if a.status != http.StatusBadRequest || !strings.Contains(a.body["message"].(string), "at most 64 scopes") {
			t.Errorf("%d scopes: %d %v, want 400 saying at most 64", maxRequirements+1, a.status, a.body)
		}
	}
	if a := f.check(tok, "scope=links:read"+strings.Repeat(",links:read", maxRequirements-1)); a.status != http.StatusOK {
		t.Errorf("%d scopes: %d %v, want 200", maxRequirements, a.status, a.body)
	}
}

func TestScopesWithRatesOfTheirOwn(t *testing.T) {
	f := newFixture(t)
	f.user("exporter", func(u *keymintv1alpha1.ServiceUser) {
		u.Spec.Permissions = []string{"links:read", "links:write"}
		u.Spec.TokenPolicy.RequestsPerMinute = 1000
		u.Spec.TokenPolicy.ScopeRequestsPerMinute = []keymintv1alpha1.ScopeRate{{Scope: "links:write", RequestsPerMinute: 2}, {Scope: "links:read", RequestsPerMinute: 100}}
	})
	tok := f.token("t", "exporter", func(t *keymintv1alpha1.ApiToken) {
		// The token's own entry wins over its user's, scope by scope.
		t.Spec.ScopeRequestsPerMinute = []keymintv1alpha1.ScopeRate{{Scope: "links:read", RequestsPerMinute: 3}}
	})

	for range 2 {
		if a := f.check(tok, "scope=links:write"); a.status != http.StatusOK || a.header.Get(HeaderRateLimitScope) != "links:write" || a.header.Get("X-RateLimit-Limit") != "2" {
			t.Fatalf("links:write: %d scope %q limit %q", a.status, a.header.Get(HeaderRateLimitScope), a.header.Get("X-RateLimit-Limit"))
		}
	}
	a := f.check(tok, "scope=links:write")
	expectError(t, a, http.StatusTooManyRequests, RateLimited)
	if a.header.Get(HeaderRateLimitScope) != "links:write" || a.header.Get("Retry-After") != "30" {
		t.Errorf("429 names scope %q, Retry-After %q; want links:write, 30", a.header.Get(HeaderRateLimitScope), a.header.Get("Retry-After"))
	}
	if a := f.check(tok, "scope=links:read"); a.status != http.StatusOK || a.header.Get("X-RateLimit-Limit") != "3" || a.header.Get("X-RateLimit-Remaining") != "2" {
		t.Errorf("links:read has its own budget, at the token's rate of 3: %d limit %q remaining %q", a.status, a.header.Get("X-RateLimit-Limit"), a.header.Get("X-RateLimit-Remaining"))
	}
	if a := f.check(tok, "scope=links:read&scope=links:write"); a.status != http.StatusTooManyRequests {
		t.Errorf("a check requiring both counts against both, and links:write is spent: %d", a.status)
	}
	if a := f.check(tok, "scope=links:read"); a.header.Get("X-RateLimit-Remaining") != "1" {
		t.Errorf("the refused check took nothing from links:read: remaining %q, want 1", a.header.Get("X-RateLimit-Remaining"))
	}
	if a := f.check(tok, ""); a.status != http.StatusOK || a.header.Get(HeaderRateLimitScope) != "" || a.header.Get("X-RateLimit-Limit") != "1000" {
		t.Errorf("a check requiring no rated scope counts against the token's own rate: %d scope %q limit %q", a.status, a.header.Get(HeaderRateLimitScope), a.header.Get("X-RateLimit-Limit"))
	}
}
