package check

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"

	"github.com/keymint/keymint/internal/tokenstate"
)

// benchIndex indexes n tokens of 100 users and returns the index and one
// token's plaintext.
func benchIndex(b *testing.B, n int) (*Index, string) {
	b.Helper()
	index, toks := benchIndexTokens(b, n)
	return index, toks[len(toks)-1]
}

// benchIndexTokens is benchIndex, returning every token's plaintext.
func benchIndexTokens(b *testing.B, n int) (*Index, []string) {
	b.Helper()
	index := NewIndex()
	for u := range 100 {
		index.UpsertUser(&keymintv1alpha1.ServiceUser{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("u%d", u)},
			Spec:       keymintv1alpha1.ServiceUserSpec{Permissions: []string{"links:read", "links:write", "qr:read"}, Groups: []string{"g"}},
		})
	}
	issued := metav1.NewTime(t0)
	toks := make([]string, n)
	for i := range n {
		plain, err := token.Mint("km")
		if err != nil {
			b.Fatal(err)
		}
		index.UpsertToken(&keymintv1alpha1.ApiToken{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("t%d", i)},
			Spec: keymintv1alpha1.ApiTokenSpec{
				ServiceUser: fmt.Sprintf("u%d", i%100), Scopes: []string{"links:read"},
				Lifetime: &metav1.Duration{Duration: 100 * 365 * 24 * time.Hour},
			},
			Status: keymintv1alpha1.ApiTokenStatus{TokenHash: token.HashString(plain), IssuedAt: &issued},
		})
		toks[i] = plain
	}
	return index, toks
}

// sizes are the index sizes of the handler benchmarks; checkSizes, of the
// check and its baseline, reach a million to show the check stays flat.
var (
	sizes      = []int{10, 100_000}
	checkSizes = []int{10, 100_000, 1_000_000}
)

// BenchmarkCheck is one in-process check: parse, hash, lookup, policy.
func BenchmarkCheck(b *testing.B) {
	for _, n := range checkSizes {
		// Built inside Run (which b.Loop runs once, untimed), so -bench can
		// pick one size without building the others.
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			index, tok := benchIndex(b, n)
			c := &Checker{Index: index}
			b.ReportAllocs()
			for b.Loop() {
				if f := c.Check(tok, Requirements{}, t0).Failure; f != OK {
					b.Fatal(f)
				}
			}
		})
	}
}

// BenchmarkIndexMemory reports the heap an index holds per token: 100,000
// tokens of 100 users, after a GC, what the benchmark's ApiTokens leave in
// it included; unchecked, then with every token checked once (each caches
// its answer). Run it with -benchtime 1x.
func BenchmarkIndexMemory(b *testing.B) {
	const n = 100_000
	for b.Loop() {
		before := heapAlloc()
		index, toks := benchIndexTokens(b, n)
		built := heapAlloc()
		c := &Checker{Index: index}
		for _, tok := range toks {
			if f := c.Check(tok, Requirements{}, t0).Failure; f != OK {
				b.Fatal(f)
			}
		}
		checked := heapAlloc()
		clear(toks) // the plaintexts go; their slice's 16 B each stay
		all := heapAlloc() - before - n*16
		b.ReportMetric(float64(all-(checked-built))/n, "B/token")
		b.ReportMetric(float64(all)/n, "B/checked-token")
		runtime.KeepAlive(index)
	}
}

// heapAlloc is the live heap after a GC.
func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkBaselineHashLookup is the least a hashed-token check can do: a
// SHA-256 and a map read, with no format check and no policy.
func BenchmarkBaselineHashLookup(b *testing.B) {
	for _, n := range checkSizes {
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			m := make(map[[sha256.Size]byte]*tokenEntry, n)
			var tok string
			for range n {
				tok, _ = token.Mint("km")
				m[sha256.Sum256([]byte(tok))] = &tokenEntry{}
			}
			b.ReportAllocs()
			for b.Loop() {
				if m[sha256.Sum256([]byte(tok))] == nil {
					b.Fatal("missing")
				}
			}
		})
	}
}

// BenchmarkCheckHandler is a whole /check answer in-process: routing,
// header parsing, check, rate limit, scope, headers and body. The writer is
// reused (its header map cleared), as net/http's costs are not keymint's.
func BenchmarkCheckHandler(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("tokens=%d", n), func(b *testing.B) {
			index, tok := benchIndex(b, n)
			// 10,000 checks a minute, the clock stepping a minute every
			// 10,000: the rate-limit headers stay in their usual range.
			serveChecks(b, index, tok, 10_000)
		})
	}
}

// serveChecks is the loop of the handler benchmarks: /check with tok and
// one scope, through a reused writer, the clock stepping a minute every
// perMinute checks (the rate-limit headers stay in their usual range).
func serveChecks(b *testing.B, index *Index, tok string, perMinute int) {
	b.Helper()
	clk := clocktesting.NewFakeClock(t0)
	h := NewHandler(index, clk, 10_000, prometheus.NewRegistry()).ServeMux()
	req := httptest.NewRequest(http.MethodGet, CheckPath+"?scope=links:read", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	w := &reusedWriter{header: http.Header{}}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if i%perMinute == 0 {
			clk.Step(time.Minute)
		}
		w.reset()
		h.ServeHTTP(w, req)
		if w.code != http.StatusOK {
			b.Fatal(w.code)
		}
	}
}

// BenchmarkCheckHandlerPolicies is BenchmarkCheckHandler (10 tokens) for a
// token under each policy of issue 22, and all of them at once: a quota
// (one use spent per check, in process), approval (a recorded grant),
// source addresses (the client's address read), metadata (two headers).
// Each is held to within 10% of the token without policies.
func BenchmarkCheckHandlerPolicies(b *testing.B) {
	quota := func(t *keymintv1alpha1.ApiToken, _ *keymintv1alpha1.ServiceUser) {
		// Refilled each minute, the clock stepping a minute every 9,000
		// checks: never spent, and its headers in the table of numbers.
		t.Spec.Quota = &keymintv1alpha1.Quota{Uses: 9_999, Refill: &keymintv1alpha1.QuotaRefill{Every: metav1.Duration{Duration: time.Minute}}}
	}
	approval := func(t *keymintv1alpha1.ApiToken, u *keymintv1alpha1.ServiceUser) {
		u.Spec.TokenPolicy.RequireApproval = true
		t.Status.Approval = &keymintv1alpha1.ApprovalStatus{Decision: keymintv1alpha1.DecisionApproved, By: "erin", Grant: tokenstate.GrantDigest(&t.Spec)}
	}
	sources := func(t *keymintv1alpha1.ApiToken, _ *keymintv1alpha1.ServiceUser) {
		t.Spec.AllowedSourceCIDRs = []string{"192.0.2.0/24"} // httptest's client address
	}
	metadata := func(t *keymintv1alpha1.ApiToken, _ *keymintv1alpha1.ServiceUser) {
		t.Spec.Metadata = map[string]keymintv1alpha1.MetadataValue{"team": "payments", "tier": "gold"}
	}
	for _, p := range []struct {
		name   string
		change []func(*keymintv1alpha1.ApiToken, *keymintv1alpha1.ServiceUser)
	}{
		{"quota", []func(*keymintv1alpha1.ApiToken, *keymintv1alpha1.ServiceUser){quota}},
		{"approval", []func(*keymintv1alpha1.ApiToken, *keymintv1alpha1.ServiceUser){approval}},
		{"sources", []func(*keymintv1alpha1.ApiToken, *keymintv1alpha1.ServiceUser){sources}},
		{"metadata", []func(*keymintv1alpha1.ApiToken, *keymintv1alpha1.ServiceUser){metadata}},
		{"all", []func(*keymintv1alpha1.ApiToken, *keymintv1alpha1.ServiceUser){quota, sources, metadata, approval}},
	} {
		b.Run("policy="+p.name, func(b *testing.B) {
			index, _ := benchIndex(b, 10)
			plain, err := token.Mint("km")
			if err != nil {
				b.Fatal(err)
			}
			issued := metav1.NewTime(t0)
			u := &keymintv1alpha1.ServiceUser{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "policies"},
				Spec:       keymintv1alpha1.ServiceUserSpec{Permissions: []string{"links:read", "links:write", "qr:read"}, Groups: []string{"g"}},
			}
			tok := &keymintv1alpha1.ApiToken{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "policies"},
				Spec: keymintv1alpha1.ApiTokenSpec{ServiceUser: "policies", Scopes: []string{"links:read"},
					Lifetime: &metav1.Duration{Duration: 100 * 365 * 24 * time.Hour}},
				Status: keymintv1alpha1.ApiTokenStatus{TokenHash: token.HashString(plain), IssuedAt: &issued},
			}
			for _, c := range p.change {
				c(tok, u)
			}
			index.UpsertUser(u)
			index.UpsertToken(tok)
			// A minute every 9,000 checks: the quota of 9,999 a minute is
			// never spent.
			serveChecks(b, index, plain, 9_000)
		})
	}
}

// BenchmarkBaselineHandler is the handler benchmark's yardstick: the same
// mux, request and reused writer, with a handler that writes a fixed 200.
func BenchmarkBaselineHandler(b *testing.B) {
	mux := http.NewServeMux()
	mux.HandleFunc(CheckPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}` + "\n"))
	})
	req := httptest.NewRequest(http.MethodGet, CheckPath+"?scope=links:read", nil)
	req.Header.Set("Authorization", "Bearer km_x")
	w := &reusedWriter{header: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		w.reset()
		mux.ServeHTTP(w, req)
		if w.code != 0 && w.code != http.StatusOK {
			b.Fatal(w.code)
		}
	}
}

// reusedWriter is a ResponseWriter a benchmark reuses across requests.
type reusedWriter struct {
	header http.Header
	code   int
	n      int
}

func (w *reusedWriter) Header() http.Header         { return w.header }
func (w *reusedWriter) WriteHeader(code int)        { w.code = code }
func (w *reusedWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }
func (w *reusedWriter) reset()                      { clear(w.header); w.code, w.n = 0, 0 }

// BenchmarkLimiter is one rate-limit decision for one of 1,000 tokens: in
// process (the default), and shared through a real redis-server on loopback
// (one EVALSHA round trip). The difference is what sharing budgets across
// replicas costs each check.
func BenchmarkLimiter(b *testing.B) {
	tokens := make([]types.NamespacedName, 1000)
	for i := range tokens {
		tokens[i] = types.NamespacedName{Namespace: "ns", Name: fmt.Sprintf("t%d", i)}
	}
	var bs tokenstate.Budgets
	bs.Add("", 1_000_000)
	run := func(b *testing.B, l RateLimiter) {
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		i := 0
		for b.Loop() {
			if !l.Allow(ctx, tokens[i%len(tokens)], bs, time.Now()).Allowed {
				b.Fatal("refused")
			}
			i++
		}
	}
	b.Run("backend=local", func(b *testing.B) { run(b, NewLimiter()) })
	for _, leases := range []bool{true, false} {
		b.Run(fmt.Sprintf("backend=redis/leases=%v", leases), func(b *testing.B) {
			srv, err := testenv.StartRedis(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = srv.Stop() }()
			client := redis.NewClient(&redis.Options{Addr: srv.Addr})
			defer client.Close()
			l, err := NewRedisLimiter(client, FailClosed, nil)
			if err != nil {
				b.Fatal(err)
			}
			l.NoLeases = !leases
			run(b, l)
		})
	}
}

// watchServer serves, over loopback HTTP, a watch of ApiTokens that sends
// n ADDED events of testdata/apitoken.json (an ApiToken as kube-apiserver
// sends it: Ready, its requester record, the managed fields of its two
// writers) and ends.
func watchServer(b *testing.B, n int) rest.Interface {
	b.Helper()
	obj, err := os.ReadFile("testdata/apitoken.json")
	if err != nil {
		b.Fatal(err)
	}
	event := append(append([]byte(`{"type":"ADDED","object":`), obj...), "}\n"...)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		for range n {
			_, _ = w.Write(event)
		}
	}))
	b.Cleanup(srv.Close)
	rc, err := TokenRESTClient(&rest.Config{Host: srv.URL}, srv.Client(), newScheme(b))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(event)))
	return rc
}

// drain reads a watch to its end, checking each event is a token.
func drain(b *testing.B, w watch.Interface, n int) {
	b.Helper()
	seen := 0
	for ev := range w.ResultChan() {
		if _, ok := ev.Object.(*keymintv1alpha1.ApiToken); !ok || ev.Type != watch.Added {
			b.Fatalf("a %s of %T", ev.Type, ev.Object)
		}
		seen++
	}
	if seen != n {
		b.Fatalf("%d events, want %d", seen, n)
	}
}

// BenchmarkFeedWatch is the index's watch (WatchTokens) reading ApiToken
// events over loopback HTTP: what a replica spends per token when it
// starts and streams every ApiToken.
func BenchmarkFeedWatch(b *testing.B) {
	rc := watchServer(b, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	w, err := WatchTokens(b.Context(), rc, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	drain(b, w, b.N)
}

// BenchmarkBaselineClientGoWatch is the same stream through client-go's
// own watch decoding into whole ApiTokens, as an informer reads it.
func BenchmarkBaselineClientGoWatch(b *testing.B) {
	rc := watchServer(b, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	w, err := rc.Get().Resource("apitokens").VersionedParams(&metav1.ListOptions{Watch: true}, metav1.ParameterCodec).Watch(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	drain(b, w, b.N)
}
