// Package proxies tests the proxy recipes of config/envoy and config/traefik
// against a real keymint check server: for each proxy, the requests that
// proxy sends to keymint (as its documentation and source describe them),
// built from the shipped configuration file, and what the proxy then does
// with keymint's answer, as its documentation describes it. Neither Envoy nor
// Traefik is packaged by Debian, so neither runs here; nginx, which is, runs
// for real in test/e2e.
package proxies

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/selfsigned"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/webhook/check"
)

// t0 is the time of every check: the test's clock does not move.
var t0 = time.Date(2026, 11, 23, 12, 0, 15, 0, time.UTC)

// repoPath is path relative to the repository's root.
func repoPath(t *testing.T, path string) string {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, path)
}

// keymint is keymint's check server as every replica runs it: check.Server
// over TLS on a loopback port, the real handler, and an index the test fills
// with ApiTokens and ServiceUsers as the informers would.
type keymint struct {
	t     *testing.T
	addr  string
	roots *x509.CertPool
	index *check.Index
	clock *clocktesting.FakeClock
	// tokens are the plaintexts of the ApiTokens below, by name.
	tokens map[string]string
}

// The ServiceUser and tokens every proxy test uses, as in config/samples:
// billing-exporter holds invoices:read and reports:write.
const (
	namespace    = "billing"
	serviceUser  = "billing-exporter"
	wantUser     = "keymint:billing:billing-exporter"
	wantAllScope = "invoices:read,reports:write"
)

// startKeymint serves checks on loopback TLS with a certificate for
// localhost and 127.0.0.1, as `make run` writes (hack/run), until the test
// ends.
func startKeymint(t *testing.T) *keymint {
	t.Helper()
	files, err := selfsigned.Write(t.TempDir(), "127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(files.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	k := &keymint{t: t, roots: x509.NewCertPool(), index: check.NewIndex(), clock: clocktesting.NewFakeClock(t0), tokens: map[string]string{}}
	if !k.roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("the CA file holds no certificate")
	}
	handler := check.NewHandler(k.index, k.clock, 500, prometheus.NewRegistry())

	// The server gets its listener bound: its address is known at once.
	ln := testenv.Listen(t)
	k.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the check server: %v", err)
		}
	})
	srv := &check.Server{Listener: ln, CertFile: files.CertFile, KeyFile: files.KeyFile, Handler: handler.ServeMux()}
	go func() { done <- srv.Start(ctx) }()
	err = testenv.Poll(ctx, 10*time.Second, "the check server to answer on "+k.addr, func(context.Context) error {
		conn, err := tls.Dial("tcp", k.addr, &tls.Config{ServerName: "localhost", RootCAs: k.roots, MinVersion: tls.VersionTLS12})
		if err != nil {
			return err
		}
		return conn.Close()
	})
	if err != nil {
		t.Fatal(err)
	}

	k.index.UpsertUser(&keymintv1alpha1.ServiceUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: serviceUser, UID: types.UID("uid-" + serviceUser)},
		Spec:       keymintv1alpha1.ServiceUserSpec{Permissions: []string{"invoices:read", "reports:write"}},
	})
	k.issue("exporter", nil)
	k.issue("backfill", func(a *keymintv1alpha1.ApiToken) { a.Spec.Scopes = []string{"invoices:read"} })
	k.issue("limited", func(a *keymintv1alpha1.ApiToken) { a.Spec.RequestsPerMinute = ptr.To[int32](2) })
	k.issue("revoked", nil)
	k.issue("tagged", func(a *keymintv1alpha1.ApiToken) {
		a.Spec.Metadata = map[string]keymintv1alpha1.MetadataValue{"team": "payments"}
	})
	k.issue("once", func(a *keymintv1alpha1.ApiToken) {
		a.Spec.Quota = &keymintv1alpha1.Quota{Uses: 1}
	})
	return k
}

// issue indexes an issued ApiToken of billing-exporter.
func (k *keymint) issue(name string, mutate func(*keymintv1alpha1.ApiToken)) {
	plain, err := token.Mint("km")
	if err != nil {
		k.t.Fatal(err)
	}
	k.tokens[name] = plain
	k.index.UpsertToken(k.apiToken(name, mutate))
}

func (k *keymint) apiToken(name string, mutate func(*keymintv1alpha1.ApiToken)) *keymintv1alpha1.ApiToken {
	issued := metav1.NewTime(t0)
	a := &keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: serviceUser},
		Status:     keymintv1alpha1.ApiTokenStatus{TokenHash: token.HashString(k.tokens[name]), IssuedAt: &issued},
	}
	if mutate != nil {
		mutate(a)
	}
	return a
}

// revoke sets spec.revoked on an ApiToken, as `kubectl patch` would, and the
// index sees the update.
func (k *keymint) revoke(name string) {
	k.index.UpsertToken(k.apiToken(name, func(a *keymintv1alpha1.ApiToken) { a.Spec.Revoked = true }))
}

// bearer is an Authorization value for the token named.
func (k *keymint) bearer(name string) string {
	tok, ok := k.tokens[name]
	if !ok {
		k.t.Fatalf("no token %q", name)
	}
	return "Bearer " + tok
}

// typo is the token named with one character changed: its checksum no
// longer matches.
func (k *keymint) typo(name string) string {
	tok := k.tokens[name]
	last := tok[len(tok)-1]
	swap := byte('A')
	if last == 'A' {
		swap = 'B'
	}
	return "Bearer " + tok[:len(tok)-1] + string(swap)
}

// outcome is what a proxy does with a request, after asking keymint:
// either it passes the request on to the application (upstream holds the
// headers the application gets), or it answers the client itself.
type outcome struct {
	passed   bool
	upstream http.Header
	// status, header and body are the proxy's answer to the client when
	// it refused; header also holds what a pass adds to the client's answer.
	status int
	header http.Header
	body   string
}

func (o outcome) String() string {
	if o.passed {
		return fmt.Sprintf("passed to the application with %v (client gets %v)", o.upstream, o.header)
	}
	return fmt.Sprintf("refused %d %v %s", o.status, o.header, strings.TrimSpace(o.body))
}

// clientRequest is a request as a client sends it to the proxy.
func clientRequest(method, target string, header ...string) *http.Request {
	r, err := http.NewRequest(method, "http://app.example.com"+target, nil)
	if err != nil {
		panic(err)
	}
	r.RemoteAddr = "192.0.2.7:50123"
	for i := 0; i+1 < len(header); i += 2 {
		if header[i+1] != "" {
			r.Header.Add(header[i], header[i+1])
		}
	}
	return r
}

// proxy is one recipe: what it does with a client's request.
type proxy func(t *testing.T, r *http.Request) outcome

// testRecipe checks, through p, the answers every recipe must give: the
// identity on a pass, 401 for a missing, mistyped or revoked token, 403 for a
// missing scope, 429 with Retry-After past the token's rate, and scopes that
// depend on the route, never on the client.
func testRecipe(t *testing.T, k *keymint, p proxy) {
	refused := func(t *testing.T, o outcome, status int, code string) {
		t.Helper()
		if o.passed || o.status != status || o.header.Get(check.HeaderError) != code || !strings.Contains(o.body, `"error":"`+code+`"`) {
			t.Fatalf("%s; want refused %d %s, with X-Keymint-Error and the JSON body", o, status, code)
		}
		if status == http.StatusUnauthorized && !strings.HasPrefix(o.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("a 401 without WWW-Authenticate: Bearer: %s", o)
		}
	}
	passed := func(t *testing.T, o outcome, tokenName, scopes string) {
		t.Helper()
		if !o.passed {
			t.Fatalf("%s; want passed", o)
		}
		want := http.Header{check.HeaderUser: {wantUser}, check.HeaderToken: {namespace + "/" + tokenName}, check.HeaderScopes: {scopes}}
		for name, v := range want {
			if got := o.upstream.Values(name); len(got) != 1 || got[0] != v[0] {
				t.Errorf("the application gets %s %q, want %q", name, got, v[0])
			}
		}
		if got := o.upstream.Get("Authorization"); got != "" {
			t.Errorf("the application gets the token (Authorization %q)", got)
		}
	}

	t.Run("a good token with the scope passes, with its identity", func(t *testing.T) {
		passed(t, p(t, clientRequest(http.MethodGet, "/reports/2026", "Authorization", k.bearer("exporter"))), "exporter", wantAllScope)
	})
	t.Run("any method, and a body, pass the same", func(t *testing.T) {
		r := clientRequest(http.MethodPost, "/reports/2026?format=csv", "Authorization", k.bearer("exporter"), "Content-Type", "text/csv")
		r.Body = http.NoBody
		r.ContentLength = 1 << 20
		passed(t, p(t, r), "exporter", wantAllScope)
	})
	t.Run("identity headers the client sends are replaced", func(t *testing.T) {
		o := p(t, clientRequest(http.MethodGet, "/reports/2026", "Authorization", k.bearer("exporter"),
			check.HeaderUser, "keymint:kube-system:admin", check.HeaderToken, "kube-system/admin", check.HeaderScopes, "everything:write"))
		passed(t, o, "exporter", wantAllScope)
	})
	t.Run("no token is 401 missing_token", func(t *testing.T) {
		refused(t, p(t, clientRequest(http.MethodGet, "/reports/2026")), http.StatusUnauthorized, string(check.MissingToken))
	})
	t.Run("another scheme is 401 missing_token", func(t *testing.T) {
		refused(t, p(t, clientRequest(http.MethodGet, "/reports/2026", "Authorization", "Basic YWRtaW46YWRtaW4=")), http.StatusUnauthorized, string(check.MissingToken))
	})
	t.Run("a mistyped token is 401 malformed_token", func(t *testing.T) {
		refused(t, p(t, clientRequest(http.MethodGet, "/reports/2026", "Authorization", k.typo("exporter"))), http.StatusUnauthorized, string(check.MalformedToken))
	})
	t.Run("a token without the route's scope is 403 insufficient_scope", func(t *testing.T) {
		refused(t, p(t, clientRequest(http.MethodGet, "/reports/2026", "Authorization", k.bearer("backfill"))), http.StatusForbidden, string(check.InsufficientScope))
	})
	t.Run("the client cannot pick the scope it is checked for", func(t *testing.T) {
		o := p(t, clientRequest(http.MethodGet, "/reports/2026?scope=invoices:read&audience=x", "Authorization", k.bearer("backfill"),
			check.HeaderScope, "invoices:read", "X-Forwarded-Uri", "/invoices/2026"))
		refused(t, o, http.StatusForbidden, string(check.InsufficientScope))
	})
	t.Run("another route asks for another scope", func(t *testing.T) {
		passed(t, p(t, clientRequest(http.MethodGet, "/invoices/2026", "Authorization", k.bearer("backfill"))), "backfill", "invoices:read")
	})
	t.Run("a query like the auth URL's on the root passes", func(t *testing.T) {
		// Envoy appends the client's path and query to its prefix: with a
		// prefix of /check alone this reached keymint as /check/?scope=...
		passed(t, p(t, clientRequest(http.MethodGet, "/?scope=anything", "Authorization", k.bearer("exporter"))), "exporter", wantAllScope)
	})
	t.Run("past its rate a token is 429 with Retry-After", func(t *testing.T) {
		for i := range 2 {
			if o := p(t, clientRequest(http.MethodGet, "/reports/2026", "Authorization", k.bearer("limited"))); !o.passed {
				t.Fatalf("check %d of 2 allowed a minute: %s", i+1, o)
			}
		}
		o := p(t, clientRequest(http.MethodGet, "/reports/2026", "Authorization", k.bearer("limited")))
		refused(t, o, http.StatusTooManyRequests, string(check.RateLimited))
		// The seconds until the token may pass again: at most a minute for
		// 2 a minute, and the same figure as keymint's body, so the proxy
		// passed keymint's header on rather than one of its own.
		retry, err := strconv.Atoi(o.header.Get("Retry-After"))
		if err != nil || retry < 1 || retry > 60 || !strings.Contains(o.body, `"retryAfter":`+strconv.Itoa(retry)) {
			t.Errorf("Retry-After %q, want 1 to 60 s, as the body's retryAfter says", o.header.Get("Retry-After"))
		}
		if got := o.header.Get("X-RateLimit-Remaining"); got != "0" {
			t.Errorf("X-RateLimit-Remaining %q, want 0", got)
		}
	})
	t.Run("a revoked token is 401 revoked_token", func(t *testing.T) {
		if o := p(t, clientRequest(http.MethodGet, "/reports/2026", "Authorization", k.bearer("revoked"))); !o.passed {
			t.Fatalf("before its revocation: %s", o)
		}
		k.revoke("revoked")
		refused(t, p(t, clientRequest(http.MethodGet, "/reports/2026", "Authorization", k.bearer("revoked"))), http.StatusUnauthorized, string(check.RevokedToken))
	})
}
