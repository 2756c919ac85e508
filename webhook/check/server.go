package check

// server.go: the check handler over TLS, with certificate reload.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
)

// Server serves the check Handler over TLS. It runs on every replica.
type Server struct {
	Addr     string
	CertFile string
	KeyFile  string
	// EnableHTTP2 turns HTTP/2 on; it is off by default, as for Kubernetes
	// webhooks, to stay clear of HTTP/2 rapid-reset attacks.
	EnableHTTP2 bool
	Handler     http.Handler
	// CertReady, when set, is waited for before the certificate files are
	// read: self-managed certificates appear after the manager starts.
	CertReady <-chan struct{}
	// Listener, when set, is served instead of listening on Addr: the
	// caller bound it, so its address is known before the server starts.
	Listener net.Listener
	// listening is set once the server accepts connections: readiness
	// waits for it, so no request is sent to a port nobody answers.
	listening atomic.Bool
}

// NeedLeaderElection is false: every replica answers checks.
func (s *Server) NeedLeaderElection() bool { return false }

// Start serves until ctx ends, reloading the certificate when its files
// change.
func (s *Server) Start(ctx context.Context) error {
	log := logf.FromContext(ctx).WithName("check-server")
	if s.CertReady != nil {
		select {
		case <-s.CertReady:
		case <-ctx.Done():
			return nil
		}
	}
	watcher, err := certwatcher.New(s.CertFile, s.KeyFile)
	if err != nil {
		return fmt.Errorf("loading the check server certificate: %w", err)
	}
	go func() {
		if err := watcher.Start(ctx); err != nil {
			log.Error(err, "Certificate watcher stopped")
		}
	}()
	tlsConfig := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: watcher.GetCertificate,
		NextProtos:     []string{"http/1.1"},
	}
	if s.EnableHTTP2 {
		tlsConfig.NextProtos = []string{"h2", "http/1.1"}
	}
	srv := &http.Server{
		Handler:           s.Handler,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          stdlog.New(errorLogWriter{log}, "", 0),
	}
	if !s.EnableHTTP2 {
		// A non-nil empty map keeps net/http from enabling HTTP/2 by itself.
		srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	ln := s.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", s.Addr); err != nil {
			return fmt.Errorf("listening on %s: %w", s.Addr, err)
		}
	}
	log.Info("Serving token checks", "address", ln.Addr().String(), "http2", s.EnableHTTP2)
	s.listening.Store(true)
	defer s.listening.Store(false)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(tls.NewListener(ln, tlsConfig)) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}

// errorLogWriter sends net/http's own error log to the structured log. TLS
// handshake errors (TCP probes, scanners) go to debug level: they are noise.
type errorLogWriter struct{ log logr.Logger }

func (w errorLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if strings.Contains(msg, "TLS handshake error") {
		w.log.V(1).Info(msg)
	} else {
		w.log.Info(msg)
	}
	return len(p), nil
}
