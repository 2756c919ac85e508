package check_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/controllers"
	"github.com/keymint/keymint/internal/selfsigned"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/webhook/check"
)

// apiTokenWrites counts the writes to ApiTokens (and their status) that the
// API server accepted, from the managers whose config it wraps.
type apiTokenWrites struct{ n atomic.Int64 }

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func (w *apiTokenWrites) wrap(cfg *rest.Config) *rest.Config {
	cfg.Wrap(func(next http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := next.RoundTrip(r)
			write := r.Method == http.MethodPatch || r.Method == http.MethodPut || r.Method == http.MethodPost
			if write && strings.Contains(r.URL.Path, "/apitokens") && err == nil && resp.StatusCode < 300 {
				w.n.Add(1)
			}
			return resp, err
		})
	})
	return cfg
}

// leakReplica is one replica's check server, with the leak report
// endpoints, and what it counted.
type leakReplica struct {
	url      string
	registry *prometheus.Registry
}

// counter returns the sum of the series of a counter with the labels given.
func (r *leakReplica) counter(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	return check.CounterSum(t, r.registry, name, labels)
}

// settled reports an error until every report the replica queued has been
// handled by its writer, each to one ApiToken.
func (r *leakReplica) settled(t *testing.T) error {
	queued := r.counter(t, "keymint_leak_reports_total", map[string]string{"outcome": "queued"})
	written := r.counter(t, "keymint_leak_report_status_updates_total", map[string]string{"result": "written"})
	unchanged := r.counter(t, "keymint_leak_report_status_updates_total", map[string]string{"result": "unchanged"})
	if other := r.counter(t, "keymint_leak_report_status_updates_total", nil) - written - unchanged; other > 0 {
		return testenv.Permanent(fmt.Errorf("%v ApiTokens gone or failed", other))
	}
	if queued != written+unchanged {
		return fmt.Errorf("%v queued, %v written, %v unchanged", queued, written, unchanged)
	}
	return nil
}

// TestLeakReportsWriteEachReportOnce runs two replicas' check servers
// (two managers, no controller) against a real kube-apiserver and reports
// tokens to them: each report is written to its ApiToken's
// status.leakReports once, whatever the replays, the endpoints and the
// replicas that receive it, and garbage writes nothing.
func TestLeakReportsWriteEachReportOnce(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	files, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(files.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	httpClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	gitlabToken := filepath.Join(dir, "gitlab-token")
	if err := os.WriteFile(gitlabToken, []byte("gitlab-shared-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clk := clocktesting.NewFakeClock(time.Now().Truncate(time.Second))
	var writes apiTokenWrites
	setup := func(ctx context.Context, mgr ctrl.Manager) *leakReplica {
		ln := testenv.Listen(t)
		r := &leakReplica{url: "https://" + ln.Addr().String(), registry: prometheus.NewRegistry()}
		if err := check.Setup(ctx, mgr, check.Options{
			Listener: ln, CertFile: files.CertFile, KeyFile: files.KeyFile,
			DefaultRequestsPerMinute: 500, FlushInterval: check.MaxFlushInterval, Clock: clk, Registerer: r.registry,
			LeakReports: true, GitLabTokenFile: gitlabToken, LeakReportRate: 10_000, LeakReportClientRate: 10_000,
		}); err != nil {
			t.Fatal(err)
		}
		return r
	}

	var one *leakReplica
	env := testenv.RunT(t, testenv.RunInput{
		ManagerConfig: writes.wrap,
		SetupReconcilers: func(ctx context.Context, e *testenv.Environment) error {
			one = setup(ctx, e.Manager)
			return nil
		},
	})
	mgr, err := ctrl.NewManager(writes.wrap(rest.CopyConfig(env.Config)), ctrl.Options{
		Scheme: testenv.Scheme, Cache: controllers.CacheOptions(), Metrics: metricsserver.Options{BindAddress: "0"},
	})
	if err != nil {
		t.Fatal(err)
	}
	two := setup(ctx, mgr)
	mgrCtx, stop := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- mgr.Start(mgrCtx) }()
	t.Cleanup(func() {
		stop()
		if err := <-stopped; err != nil {
			t.Error(err)
		}
	})

	// Two ApiTokens whose status names a token, as the controller writes
	// it once it has minted one.
	const ns = "leaks"
	c := env.Client
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	user := testenv.ServiceUser(ns, "ci")
	if err := c.Create(ctx, user); err != nil {
		t.Fatal(err)
	}
	issue := func(name string) string {
		t.Helper()
		plain, err := token.Mint("km")
		if err != nil {
			t.Fatal(err)
		}
		tok := testenv.ApiToken(ns, name, "ci")
		if err := c.Create(ctx, tok); err != nil {
			t.Fatal(err)
		}
		tok.Status = keymintv1alpha1.ApiTokenStatus{
			TokenHash: token.HashString(plain), TokenPrefix: token.Display(plain), IssuedAt: &metav1.Time{Time: clk.Now()},
			ServiceUserUID: string(user.UID), Serial: 1,
		}
		if err := c.Status().Update(ctx, tok); err != nil {
			t.Fatal(err)
		}
		return plain
	}
	first, second := issue("first"), issue("second")
	for _, r := range []*leakReplica{one, two} {
		for _, plain := range []string{first, second} {
			if err := testenv.Poll(ctx, 30*time.Second, "the replica's index to accept the token", func(ctx context.Context) error {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.url+check.CheckPath, nil)
				req.Header.Set("Authorization", "Bearer "+plain)
				resp, err := httpClient.Do(req)
				if err != nil {
					return err
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("/check answered %d", resp.StatusCode)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
	}
	post := func(r *leakReplica, path string, header http.Header, body string) int {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url+path, strings.NewReader(body))
		if err != nil {
			t.Error(err)
			return 0
		}
		req.Header = header
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Error(err)
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	github := func(r *leakReplica, creds ...string) {
		t.Helper()
		body, _ := json.Marshal(map[string][]string{"credentials": creds})
		if got := post(r, check.LeakReportPath, http.Header{"Content-Type": {"application/json"}}, string(body)); got != http.StatusAccepted {
			t.Errorf("POST %s answered %d", check.LeakReportPath, got)
		}
	}
	gitlab := func(r *leakReplica, plain string) {
		t.Helper()
		body, _ := json.Marshal([]map[string]string{{"type": check.GitLabTokenType, "token": plain, "location": "https://gitlab.example/acme/app/-/blob/main/.env"}})
		if got := post(r, check.RevokeTokensPath, http.Header{"Authorization": {"gitlab-shared-secret"}}, string(body)); got != http.StatusNoContent {
			t.Errorf("POST %s answered %d", check.RevokeTokensPath, got)
		}
	}
	settle := func(replicas ...*leakReplica) {
		t.Helper()
		for _, r := range replicas {
			if err := testenv.Poll(ctx, 30*time.Second, "the replica's leak reports to be written", func(context.Context) error { return r.settled(t) }); err != nil {
				t.Fatal(err)
			}
		}
	}
	reportsOf := func(name string) []keymintv1alpha1.LeakReport {
		t.Helper()
		tok := &keymintv1alpha1.ApiToken{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, tok); err != nil {
			t.Fatal(err)
		}
		return tok.Status.LeakReports
	}
	before := writes.n.Load()

	// A report, then the same report again and through GitLab, to the
	// replica that wrote it and to one that did not.
	github(one, first)
	settle(one)
	got := reportsOf("first")
	want := keymintv1alpha1.LeakReport{TokenHash: token.HashString(first), Source: check.SourceGitHub, ReportedAt: metav1.NewTime(clk.Now())}
	if len(got) != 1 || got[0].TokenHash != want.TokenHash || got[0].Source != want.Source || got[0].Location != "" || !got[0].ReportedAt.Equal(&want.ReportedAt) {
		t.Fatalf("leakReports %+v, want one %+v", got, want)
	}
	if n := writes.n.Load() - before; n != 1 {
		t.Fatalf("%d writes for one report", n)
	}
	github(one, first)
	gitlab(one, first)
	gitlab(two, first)
	settle(one, two)
	if n := writes.n.Load() - before; n != 1 {
		t.Errorf("%d writes after the replays, want the first alone", n)
	}
	if got := reportsOf("first"); len(got) != 1 {
		t.Errorf("leakReports after the replays: %+v", got)
	}

	// Garbage: random strings, keymint tokens with a bad checksum, other
	// vendors' tokens, keymint tokens no ApiToken names.
	garbage := leakGarbage(t, first, check.MaxLeakCredentials)
	wellFormed := 0
	for _, s := range garbage {
		if _, err := token.Parse(s); err == nil {
			wellFormed++
		}
	}
	outcomes := func() (notKeymint, notAccepted, queued float64) {
		count := func(o string) float64 {
			return one.counter(t, "keymint_leak_reports_total", map[string]string{"endpoint": "github", "outcome": o})
		}
		return count("not_keymint"), count("not_accepted"), count("queued")
	}
	notKeymint, notAccepted, queued := outcomes()
	github(one, garbage...)
	afterNotKeymint, afterNotAccepted, afterQueued := outcomes()
	if afterNotKeymint-notKeymint != float64(len(garbage)-wellFormed) || afterNotAccepted-notAccepted != float64(wellFormed) {
		t.Errorf("garbage counted %v not keymint's and %v not accepted, want %d and %d",
			afterNotKeymint-notKeymint, afterNotAccepted-notAccepted, len(garbage)-wellFormed, wellFormed)
	}
	// Reports are queued in the request: none was, so none is written.
	if afterQueued != queued {
		t.Errorf("garbage queued %v reports", afterQueued-queued)
	}
	settle(one)
	if n := writes.n.Load() - before; n != 1 {
		t.Errorf("%d writes after the garbage, want the first report's alone", n)
	}

	// Both replicas receive the same report at once: one write.
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, r := range []*leakReplica{one, two} {
		wg.Go(func() {
			<-start
			github(r, second)
		})
	}
	close(start)
	wg.Wait()
	settle(one, two)
	if got := reportsOf("second"); len(got) != 1 || got[0].TokenHash != token.HashString(second) {
		t.Errorf("leakReports %+v, want one report of the second token", got)
	}
	if n := writes.n.Load() - before; n != 2 {
		t.Errorf("%d writes for two reports, want 2", n)
	}
	if testing.Verbose() {
		for i, r := range []*leakReplica{one, two} {
			t.Logf("replica %d: %v written, %v unchanged", i+1,
				r.counter(t, "keymint_leak_report_status_updates_total", map[string]string{"result": "written"}),
				r.counter(t, "keymint_leak_report_status_updates_total", map[string]string{"result": "unchanged"}))
		}
	}
}

// leakGarbage returns n strings that are no keymint token an ApiToken
// names: random bytes, random base62 of a token's shape (a checksum that
// fails), a real token with one character changed, other vendors' tokens,
// and a few well-formed keymint tokens nobody minted for an ApiToken.
func leakGarbage(t *testing.T, real string, n int) []string {
	t.Helper()
	const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	rnd := rand.New(rand.NewPCG(1, 2))
	randomOf := func(alphabet string, n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[rnd.IntN(len(alphabet))]
		}
		return string(b)
	}
	out := make([]string, 0, n)
	for i := 0; len(out) < n; i++ {
		var s string
		switch i % 6 {
		case 0:
			s = randomOf(string(rune(rnd.IntN(256)))+"\x00\xff{}\"\\ abc", rnd.IntN(100))
		case 1:
			s = "km_" + randomOf(base62, token.SecretLen+token.ChecksumLen)
		case 2:
			b := []byte(real)
			j := 3 + rnd.IntN(len(b)-3)
			for c := b[j]; b[j] == c; {
				b[j] = base62[rnd.IntN(len(base62))]
			}
			s = string(b)
		case 3:
			s = []string{"ghp_", "github_pat_", "glpat-", "xoxb-", "AKIA", "sk_live_"}[rnd.IntN(6)] + randomOf(base62, 20+rnd.IntN(60))
		case 4:
			s = randomOf(base62+"_-", token.MinLen+rnd.IntN(token.MaxLen-token.MinLen+1))
		case 5:
			if i%60 != 5 {
				continue
			}
			minted, err := token.Mint("acme")
			if err != nil {
				t.Fatal(err)
			}
			s = minted
		}
		if s != real {
			out = append(out, s)
		}
	}
	return out
}
