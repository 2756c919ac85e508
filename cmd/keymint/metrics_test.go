package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	"github.com/keymint/keymint/internal/testenv"
)

// TestMetricsNeedAuthenticationAndRBAC serves the manager's metrics as
// config/manager does and asks as Prometheus would: with no token, with a
// token RBAC does not allow, and with one bound to keymint-metrics-reader.
func TestMetricsNeedAuthenticationAndRBAC(t *testing.T) {
	// The manager makes its metrics server with metricsserver.NewServer
	// from metricsOptions; this one is made so, on a port of the kernel's
	// choosing, which it tells once it listens.
	var srv metricsserver.Server
	e := testenv.RunT(t, testenv.RunInput{
		SetupReconcilers: func(_ context.Context, e *testenv.Environment) error {
			var err error
			if srv, err = metricsserver.NewServer(metricsOptions("127.0.0.1:0", true), e.Config, e.Manager.GetHTTPClient()); err != nil {
				return err
			}
			return e.Manager.Add(srv)
		},
	})
	cfg, c, ctx := e.Config, e.Client, t.Context()
	cs := kubernetes.NewForConfigOrDie(cfg)
	ok := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// The shipped ClusterRole, bound to one service account.
	root, _ := testenv.RepoRoot()
	raw, err := os.ReadFile(filepath.Join(root, "config", "rbac", "metrics_reader_role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.ClusterRole{}
	if err := yaml.Unmarshal(raw, role); err != nil {
		t.Fatal(err)
	}
	role.Name = "keymint-metrics-reader"
	ok(c.Create(ctx, role))
	token := func(sa string) string {
		ok(c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: sa}}))
		tr, err := cs.CoreV1().ServiceAccounts("default").CreateToken(ctx, sa, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	prometheus, stranger := token("prometheus"), token("stranger")
	ok(c.Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "prometheus-reads-keymint"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "default", Name: "prometheus"}},
	}))

	var addr string
	ok(testenv.Poll(ctx, 30*time.Second, "the metrics server to listen", func(context.Context) error {
		if addr = srv.(interface{ GetBindAddr() string }).GetBindAddr(); addr == "" {
			return errors.New("no address yet")
		}
		return nil
	}))

	// Scrapers skip verification of the self-signed serving certificate.
	httpc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec
	get := func(ctx context.Context, bearer string) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/metrics", nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := httpc.Do(req)
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	ok(testenv.Poll(ctx, 30*time.Second, "prometheus, bound to keymint-metrics-reader, to get 200", func(ctx context.Context) error {
		if got := get(ctx, prometheus); got != http.StatusOK {
			return fmt.Errorf("got %d", got)
		}
		return nil
	}))
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}}) //nolint:gosec
	if err != nil {
		t.Fatal(err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
		t.Errorf("metrics negotiated %q, want http/1.1 only", p)
	}
	_ = conn.Close()
	if got := get(ctx, ""); got != http.StatusUnauthorized {
		t.Errorf("no token: %d, want 401", got)
	}
	if got := get(ctx, stranger); got != http.StatusForbidden {
		t.Errorf("a token RBAC does not allow: %d, want 403", got)
	}
}
