package check

import (
	"cmp"
	"context"
	"errors"
	"fmt"
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
	DefaultRequestsPerMinute int
	// FlushInterval is how often lastUsedAt is written; each token is
	// written at most once a minute whatever it is.
	FlushInterval time.Duration
	// FlushMinGap is the least time between two writes of one token's uses
	// by this replica; zero means a minute. Tests shorten it.
	FlushMinGap time.Duration
	Clock       clock.WithTicker
	Registerer  prometheus.Registerer
	// Limiter, when set, keeps the rate-limit budgets (a RedisLimiter, to
	// share them across replicas); nil keeps them in process.
	Limiter RateLimiter
	// Listener, when set, is served instead of listening on Addr.
	Listener net.Listener
	// CertReady, when set, closes once CertFile and KeyFile exist.
	CertReady <-chan struct{}
}

// MaxRequestsPerMinute bounds --default-requests-per-minute, as the CRDs
// bound the per-token and per-user rates.
const MaxRequestsPerMinute = 1_000_000

// Validate says what is wrong with the options a user sets, in the words of
// keymint's flags.
func (o *Options) Validate() error {
	if o.DefaultRequestsPerMinute < 1 || o.DefaultRequestsPerMinute > MaxRequestsPerMinute {
		return fmt.Errorf("--default-requests-per-minute must be between 1 and %d, not %d", MaxRequestsPerMinute, o.DefaultRequestsPerMinute)
	}
	if o.FlushInterval <= 0 {
		return fmt.Errorf("--last-used-flush-interval must be positive, not %s", o.FlushInterval)
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return errors.New("set both --check-tls-cert-file and --check-tls-key-file, or neither")
	}
	return nil
}

// Setup adds the check server, its index feed and the lastUsedAt flusher to
// the manager, and a readiness check that passes once the index has synced.
func Setup(ctx context.Context, mgr ctrl.Manager, opts Options) error {
	if err := opts.Validate(); err != nil {
		return err
	}
	index := NewIndex()
	handler := NewHandler(index, opts.Clock, int32(opts.DefaultRequestsPerMinute), opts.Registerer)
	if opts.Limiter != nil {
		handler.Limiter = opts.Limiter
	}
	synced, err := Feed(ctx, mgr.GetCache(), index, handler.Usage.Forget, handler.Limiter.Forget)
	if err != nil {
		return err
	}
	server := &Server{
		Addr: opts.Addr, CertFile: opts.CertFile, KeyFile: opts.KeyFile, EnableHTTP2: opts.EnableHTTP2,
		Handler: handler.ServeMux(), Listener: opts.Listener, CertReady: opts.CertReady,
	}
	if err := mgr.Add(server); err != nil {
		return err
	}
	if err := mgr.Add(&UsageFlusher{
		Usage: handler.Usage, Client: mgr.GetClient(), Clock: opts.Clock, Interval: opts.FlushInterval, MinGap: cmp.Or(opts.FlushMinGap, time.Minute),
	}); err != nil {
		return err
	}
	return mgr.AddReadyzCheck("check-server", func(*http.Request) error {
		switch {
		case !synced():
			return errors.New("the token index has not synced yet")
		case !server.listening.Load():
			return errors.New("the check server is not listening yet")
		}
		return nil
	})
}
