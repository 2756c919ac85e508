package check

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
)

// Options configure the check server.
type Options struct {
	// Addr is the address to listen on, such as ":8443".
	Addr string
	// CertFile and KeyFile are the serving certificate and key, reloaded
	// when they change.
	CertFile, KeyFile string
	EnableHTTP2       bool
	// DefaultRequestsPerMinute applies to tokens whose ApiToken and
	// ServiceUser set no rate.
	DefaultRequestsPerMinute int32
	// FlushInterval is how often lastUsedAt is written; each token is
	// written at most once a minute whatever it is.
	FlushInterval time.Duration
	Clock         clock.WithTicker
	Registerer    prometheus.Registerer
	// Listener, when set, is served instead of listening on Addr.
	Listener net.Listener
}

// Setup adds the check server, its index feed and the lastUsedAt flusher to
// the manager, and a readiness check that passes once the index has synced.
func Setup(ctx context.Context, mgr ctrl.Manager, opts Options) error {
	if opts.DefaultRequestsPerMinute <= 0 {
		return errors.New("the default requests per minute must be positive")
	}
	if opts.FlushInterval <= 0 {
		return errors.New("the lastUsedAt flush interval must be positive")
	}
	index := NewIndex()
	synced, err := Feed(ctx, mgr.GetCache(), index)
	if err != nil {
		return err
	}
	handler := NewHandler(index, opts.Clock, opts.DefaultRequestsPerMinute, opts.Registerer)
	if err := mgr.Add(&Server{
		Addr: opts.Addr, CertFile: opts.CertFile, KeyFile: opts.KeyFile, EnableHTTP2: opts.EnableHTTP2,
		Handler: handler.ServeMux(), listener: opts.Listener,
	}); err != nil {
		return err
	}
	if err := mgr.Add(&UsageFlusher{
		Usage: handler.Usage, Client: mgr.GetClient(), Clock: opts.Clock, Interval: opts.FlushInterval, MinGap: time.Minute,
		Limiter: handler.Limiter,
	}); err != nil {
		return err
	}
	return mgr.AddReadyzCheck("check-index", func(*http.Request) error {
		if !synced() {
			return errors.New("the token index has not synced yet")
		}
		return nil
	})
}
