// Command loadgen drives keymint's check server over HTTPS on loopback and,
// in the same run, a baseline: the same server (TLS, limits, timeouts) with a
// handler that only answers 200 and a small JSON body. It prints requests per
// second and latency percentiles for each, as a Markdown table.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/selfsigned"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/webhook/check"
)

func main() {
	duration := flag.Duration("duration", 5*time.Second, "how long to drive each server")
	connections := flag.Int("connections", 16, "concurrent keep-alive connections")
	tokens := flag.Int("tokens", 100_000, "tokens in the check server's index")
	flag.Parse()
	if err := run(*duration, *connections, *tokens); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

type result struct {
	name     string
	requests int
	failures int
	elapsed  time.Duration
	latency  []time.Duration
}

func run(duration time.Duration, connections, tokens int) error {
	dir, err := os.MkdirTemp("", "keymint-loadgen-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	files, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(files.CAFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)

	handler, tok, err := checkHandler(tokens)
	if err != nil {
		return err
	}
	baseline := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok":true}`+"\n")
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var results []result
	for _, target := range []struct {
		name    string
		handler http.Handler
		path    string
	}{
		{"baseline: bare Go handler behind the same TLS server", baseline, "/"},
		{fmt.Sprintf("keymint /check, %d tokens indexed, scope required", tokens), handler, check.CheckPath + "?scope=links:read"},
	} {
		url, err := serve(ctx, target.handler, files)
		if err != nil {
			return err
		}
		results = append(results, drive(target.name, url+target.path, tok, pool, connections, duration))
	}

	fmt.Printf("%d connections, %s each, GOMAXPROCS shared by load and servers\n\n", connections, duration)
	fmt.Println("| target | requests/s | p50 | p99 | p99.9 | failures |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	for _, r := range results {
		slices.Sort(r.latency)
		fmt.Printf("| %s | %.0f | %s | %s | %s | %d |\n", r.name, float64(r.requests)/r.elapsed.Seconds(),
			pct(r.latency, 0.50), pct(r.latency, 0.99), pct(r.latency, 0.999), r.failures)
	}
	for _, r := range results {
		if r.failures > 0 {
			return fmt.Errorf("%s: %d requests failed", r.name, r.failures)
		}
	}
	return nil
}

// checkHandler returns the check server's handler with n tokens indexed, and
// one of their plaintexts.
func checkHandler(n int) (http.Handler, string, error) {
	index := check.NewIndex()
	index.UpsertUser(&keymintv1alpha1.ServiceUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: "u"},
		Spec:       keymintv1alpha1.ServiceUserSpec{Permissions: []string{"links:read"}},
	})
	issued := metav1.NewTime(time.Now())
	var last string
	for i := range n {
		plain, err := token.Mint("km")
		if err != nil {
			return nil, "", err
		}
		index.UpsertToken(&keymintv1alpha1.ApiToken{
			ObjectMeta: metav1.ObjectMeta{Namespace: "bench", Name: fmt.Sprintf("t%d", i)},
			Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "u"},
			Status:     keymintv1alpha1.ApiTokenStatus{TokenHash: token.HashString(plain), IssuedAt: &issued},
		})
		last = plain
	}
	h := check.NewHandler(index, clock.RealClock{}, 1_000_000_000, prometheus.NewRegistry())
	return h.ServeMux(), last, nil
}

// serve starts a check.Server (the production TLS server) with handler on a
// loopback port and returns its base URL once it accepts connections.
func serve(ctx context.Context, handler http.Handler, files selfsigned.Files) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &check.Server{Addr: addr, CertFile: files.CertFile, KeyFile: files.KeyFile, Handler: handler}
	go func() { _ = s.Start(ctx) }()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return "https://" + addr, nil
		}
	}
	return "", fmt.Errorf("server on %s never listened", addr)
}

// drive sends requests from connections goroutines for duration.
func drive(name, url, tok string, pool *x509.CertPool, connections int, duration time.Duration) result {
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: connections,
		MaxConnsPerHost:     connections,
	}
	client := &http.Client{Transport: transport, Timeout: 5 * time.Second}
	defer transport.CloseIdleConnections()

	var mu sync.Mutex
	res := result{name: name}
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(duration)
	for range connections {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			var fails int
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			for time.Now().Before(stop) {
				t := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					fails++
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					fails++
				}
				lat = append(lat, time.Since(t))
			}
			mu.Lock()
			res.latency = append(res.latency, lat...)
			res.requests += len(lat)
			res.failures += fails
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

func pct(sorted []time.Duration, p float64) string {
	if len(sorted) == 0 {
		return "-"
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))].Round(time.Microsecond).String()
}
