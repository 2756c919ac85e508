package servingcert_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	"github.com/keymint/keymint/controllers"
	"github.com/keymint/keymint/internal/servingcert"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/webhook/check"
)

// TestSelfManagedCertificates runs the rotator against kube-apiserver with
// the shipped webhook configuration, and the check server on what it
// writes: a client that trusts only the CA in the webhook configuration's
// caBundle reaches the check server by the Service's DNS name.
func TestSelfManagedCertificates(t *testing.T) {
	logf.SetLogger(zap.New(zap.WriteTo(testWriter{t}), zap.UseDevMode(true)))
	cfg, c := testenv.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	const ns = "keymint-system" // testenv.Start made it, for the record key
	root, _ := testenv.RepoRoot()
	raw, err := os.ReadFile(filepath.Join(root, "config", "webhook", "validating.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	if err := yaml.Unmarshal(raw, vwc); err != nil {
		t.Fatal(err)
	}
	vwc.Name = "keymint-validating-webhook-configuration"
	for i := range vwc.Webhooks {
		vwc.Webhooks[i].ClientConfig.Service.Name, vwc.Webhooks[i].ClientConfig.Service.Namespace = "keymint-webhook", ns
	}
	if err := c.Create(ctx, vwc); err != nil {
		t.Fatal(err)
	}

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: testenv.Scheme, Cache: controllers.CacheOptions(), Metrics: metricsserver.Options{BindAddress: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	opts := servingcert.Options{
		Secret: types.NamespacedName{Namespace: ns, Name: "keymint-serving-certs"}, Service: "keymint-webhook",
		WebhookConfiguration: vwc.Name, Dir: t.TempDir(),
		// A serving certificate of one minute, renewed 50 s before it
		// expires: the first rotation is due about 10 s after issue.
		Timing: servingcert.Timing{CA: time.Hour, Server: time.Minute, RenewBefore: 50 * time.Second, CheckEvery: time.Second},
	}
	ready, err := servingcert.Setup(ctx, mgr, opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := check.Setup(ctx, mgr, check.Options{
		Listener: ln, CertFile: opts.CertFile(), KeyFile: opts.KeyFile(), CertReady: ready,
		DefaultRequestsPerMinute: 500, FlushInterval: time.Second, Clock: clock.RealClock{}, Registerer: prometheus.NewRegistry(),
	}); err != nil {
		t.Fatal(err)
	}
	kubeletDone, mgrDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(kubeletDone)
		playKubelet(ctx, t, c, opts.Secret, opts.Dir)
	}()
	go func() {
		defer close(mgrDone)
		if err := mgr.Start(ctx); err != nil {
			t.Errorf("the manager stopped: %v", err)
		}
	}()
	// Both write into opts.Dir: they stop before t.TempDir's cleanup (which
	// runs later, cleanups being last in, first out) removes it.
	t.Cleanup(func() {
		cancel()
		<-kubeletDone
		<-mgrDone
	})

	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		t.Fatal("the serving certificate was not ready within 60 s")
	}

	// The CA reaches the webhook configuration.
	var caBundle []byte
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		got := &admissionregistrationv1.ValidatingWebhookConfiguration{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(vwc), got); err != nil {
			t.Fatal(err)
		}
		if caBundle = got.Webhooks[0].ClientConfig.CABundle; len(caBundle) > 0 && string(caBundle) == string(got.Webhooks[1].ClientConfig.CABundle) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(caBundle) == 0 {
		t.Fatal("no caBundle in the webhook configuration")
	}
	sec := &corev1.Secret{}
	if err := c.Get(ctx, opts.Secret, sec); err != nil {
		t.Fatalf("the certificate Secret: %v", err)
	}
	if string(sec.Data["ca.crt"]) != string(caBundle) {
		t.Error("the caBundle is not the Secret's CA")
	}

	// A client trusting only that CA reaches the check server by the
	// Service's DNS name.
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caBundle) {
		t.Fatal("the caBundle holds no certificate")
	}
	for _, name := range []string{"keymint-webhook.keymint-system.svc", "keymint-webhook.keymint-system.svc.cluster.local"} {
		var conn *tls.Conn
		for time.Now().Before(deadline) {
			if conn, err = tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: name, MinVersion: tls.VersionTLS12}); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("TLS to the check server as %s: %v", name, err)
		}
		cert := conn.ConnectionState().PeerCertificates[0]
		_ = conn.Close()
		if left := time.Until(cert.NotAfter); left <= 0 {
			t.Errorf("the serving certificate has expired: %v", cert.NotAfter)
		}
	}

	// Before it expires, the certificate is renewed, and the check server
	// serves the new one without a restart.
	first := sec.Data["tls.crt"]
	deadline = time.Now().Add(45 * time.Second)
	var renewed []byte
	for time.Now().Before(deadline) && renewed == nil {
		now := &corev1.Secret{}
		if err := c.Get(ctx, opts.Secret, now); err == nil && len(now.Data["tls.crt"]) > 0 && string(now.Data["tls.crt"]) != string(first) {
			renewed = now.Data["tls.crt"]
		}
		time.Sleep(200 * time.Millisecond)
	}
	if renewed == nil {
		t.Fatal("the serving certificate was not renewed before it expired")
	}
	block, _ := pem.Decode(renewed)
	want, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for {
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "keymint-webhook.keymint-system.svc", MinVersion: tls.VersionTLS12})
		if err == nil {
			served := conn.ConnectionState().PeerCertificates[0]
			_ = conn.Close()
			if served.SerialNumber.Cmp(want.SerialNumber) == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the check server still serves the old certificate (%v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// playKubelet does what the kubelet does for the Deployment's Secret volume
// (config/manager): it writes the Secret's keys as files into dir, and again
// whenever they change.
func playKubelet(ctx context.Context, t *testing.T, c client.Client, key types.NamespacedName, dir string) {
	for ctx.Err() == nil {
		sec := &corev1.Secret{}
		if err := c.Get(ctx, key, sec); err == nil {
			for name, data := range sec.Data {
				path := filepath.Join(dir, name)
				if old, _ := os.ReadFile(path); string(old) != string(data) {
					if err := os.WriteFile(path, data, 0o600); err != nil {
						t.Error(err)
					}
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testWriter sends the manager's log to the test's, shown on failure.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
