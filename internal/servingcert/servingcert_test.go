package servingcert_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/yaml"

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
	const ns = "keymint-system" // Run made it, for the record key
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
	opts := servingcert.Options{
		Secret: types.NamespacedName{Namespace: ns, Name: "keymint-serving-certs"}, Service: "keymint-webhook",
		WebhookConfiguration: vwc.Name, Dir: t.TempDir(),
		// A serving certificate of one minute, renewed 50 s before it
		// expires: the first rotation is due about 10 s after issue.
		Timing: servingcert.Timing{CA: time.Hour, Server: time.Minute, RenewBefore: 50 * time.Second, CheckEvery: time.Second},
	}
	ln := testenv.Listen(t)
	var ready <-chan struct{}
	// The kubelet's stand-in writes into opts.Dir until the environment
	// stops: it has stopped before t.TempDir's cleanup removes the
	// directory (cleanups run last in, first out).
	var kubelet sync.WaitGroup
	t.Cleanup(kubelet.Wait)
	e := testenv.RunT(t, testenv.RunInput{
		SetupReconcilers: func(ctx context.Context, e *testenv.Environment) error {
			if err := e.Client.Create(ctx, vwc); err != nil {
				return err
			}
			var err error
			if ready, err = servingcert.Setup(ctx, e.Manager, opts); err != nil {
				return err
			}
			kubelet.Go(func() { playKubelet(ctx, t, e.Client, opts.Secret, opts.Dir) })
			return check.Setup(ctx, e.Manager, check.Options{
				Listener: ln, CertFile: opts.CertFile(), KeyFile: opts.KeyFile(), CertReady: ready,
				DefaultRequestsPerMinute: 500, FlushInterval: time.Second, Clock: clock.RealClock{}, Registerer: prometheus.NewRegistry(),
			})
		},
	})
	c, ctx := e.Client, t.Context()

	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		t.Fatal("the serving certificate was not ready within 60 s")
	}

	// The CA reaches the webhook configuration.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	var caBundle []byte
	must(testenv.Poll(ctx, 30*time.Second, "the same caBundle in both webhooks of the configuration", func(ctx context.Context) error {
		got := &admissionregistrationv1.ValidatingWebhookConfiguration{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(vwc), got); err != nil {
			return testenv.Permanent(err)
		}
		if caBundle = got.Webhooks[0].ClientConfig.CABundle; len(caBundle) == 0 || string(caBundle) != string(got.Webhooks[1].ClientConfig.CABundle) {
			return errors.New("not yet")
		}
		return nil
	}))
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
	served := func(ctx context.Context, name string) (*x509.Certificate, error) {
		d := tls.Dialer{Config: &tls.Config{RootCAs: pool, ServerName: name, MinVersion: tls.VersionTLS12}}
		conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		return conn.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
	}
	for _, name := range []string{"keymint-webhook.keymint-system.svc", "keymint-webhook.keymint-system.svc.cluster.local"} {
		var cert *x509.Certificate
		must(testenv.Poll(ctx, 30*time.Second, "TLS to the check server as "+name, func(ctx context.Context) (err error) {
			cert, err = served(ctx, name)
			return err
		}))
		if left := time.Until(cert.NotAfter); left <= 0 {
			t.Errorf("the serving certificate has expired: %v", cert.NotAfter)
		}
	}

	// Before it expires, the certificate is renewed, and the check server
	// serves the new one without a restart.
	first := sec.Data["tls.crt"]
	var renewed []byte
	must(testenv.Poll(ctx, 45*time.Second, "the serving certificate to be renewed before it expires", func(ctx context.Context) error {
		now := &corev1.Secret{}
		if err := c.Get(ctx, opts.Secret, now); err != nil {
			return err
		}
		if len(now.Data["tls.crt"]) == 0 || string(now.Data["tls.crt"]) == string(first) {
			return errors.New("still the first certificate")
		}
		renewed = now.Data["tls.crt"]
		return nil
	}))
	block, _ := pem.Decode(renewed)
	want, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	must(testenv.Poll(ctx, 15*time.Second, "the check server to serve the renewed certificate", func(ctx context.Context) error {
		cert, err := served(ctx, "keymint-webhook.keymint-system.svc")
		if err != nil {
			return err
		}
		if cert.SerialNumber.Cmp(want.SerialNumber) != 0 {
			return fmt.Errorf("it serves serial %v", cert.SerialNumber)
		}
		return nil
	}))
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
