package check

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/keymint/keymint/internal/selfsigned"
)

// servedSerial dials the server and returns the serial of the certificate it
// presents.
func servedSerial(t *testing.T, addr string) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // the test reads the certificate, it trusts nothing
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func TestServerReloadsItsCertificateWhenTheFilesChange(t *testing.T) {
	dir := t.TempDir()
	files, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &Server{CertFile: files.CertFile, KeyFile: files.KeyFile, Handler: http.NotFoundHandler(), Listener: ln}
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()

	var first string
	for deadline := time.Now().Add(10 * time.Second); ; {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server never listened")
		}
		time.Sleep(20 * time.Millisecond)
	}
	first = servedSerial(t, ln.Addr().String())

	if _, err := selfsigned.Write(dir, "127.0.0.1"); err != nil { // as cert-manager renews it
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); servedSerial(t, ln.Addr().String()) == first; {
		if time.Now().After(deadline) {
			t.Fatal("the server still presents the old certificate 20 s after the files changed")
		}
		time.Sleep(50 * time.Millisecond)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Start returned %v after its context ended", err)
	}
}
