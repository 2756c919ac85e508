package check

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/keymint/keymint/internal/tokenstate"
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
	// written at most once per recording gap (tokenstate.UseRecordingGap).
	FlushInterval time.Duration
	// FlushMinGap, when set, replaces both the least time between two
	// writes of one token by this replica (a minute) and every token's
	// recording gap. Tests shorten it.
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

	// LeakReports serves the leak report endpoints on the check server:
	// POST /credentials/revoke and, with GitLabTokenFile, GitLab's Token
	// Revocation API.
	LeakReports bool
	// GitLabTokenFile holds the token GitLab authenticates with (a mounted
	// Secret), read again when it changes; "" leaves GitLab's endpoints
	// unserved.
	GitLabTokenFile string
	// LeakReportRate bounds the leak reports of all clients a minute, and
	// LeakReportClientRate those of one client on POST /credentials/revoke.
	LeakReportRate, LeakReportClientRate int
	// TrustedProxies are the proxies in front of the check server whose
	// X-Forwarded-For names the client: what a leak report rate counts
	// against, and what allowedSourceCIDRs admit on /check.
	TrustedProxies []netip.Prefix
	// TokenReviewIgnoresSources accepts, in TokenReview, tokens restricted
	// to allowedSourceCIDRs (TokenReview carries no client address).
	TokenReviewIgnoresSources bool
	// TrackTokens, when set, wraps the ListerWatcher of the index's
	// ApiTokens (freshness.Tracker.ListerWatcher).
	TrackTokens func(toolscache.ListerWatcher) toolscache.ListerWatcher
	// IndexSynced, when set, is given the function that reports whether
	// the index has listed every ApiToken and ServiceUser once (the
	// controllers' cache waits for it: controllers.Cache.StartAfter).
	IndexSynced func(synced func() bool)
}

// MaxRequestsPerMinute bounds --default-requests-per-minute, as the CRDs
// bound the per-token and per-user rates.
const MaxRequestsPerMinute = 1_000_000

// MaxFlushInterval is the longest --last-used-flush-interval: a use must
// reach its status well within tokenstate.UseRecordingSlack, retries
// included, or idle revocation could overtake it.
const MaxFlushInterval = time.Minute

// Validate says what is wrong with the options a user sets, in the words of
// keymint's flags.
func (o *Options) Validate() error {
	if o.DefaultRequestsPerMinute < 1 || o.DefaultRequestsPerMinute > MaxRequestsPerMinute {
		return fmt.Errorf("--default-requests-per-minute must be between 1 and %d, not %d", MaxRequestsPerMinute, o.DefaultRequestsPerMinute)
	}
	if o.FlushInterval <= 0 || o.FlushInterval > MaxFlushInterval {
		return fmt.Errorf("--last-used-flush-interval must be positive and at most %s (idle revocation waits %s for uses on their way), not %s",
			MaxFlushInterval, tokenstate.UseRecordingSlack, o.FlushInterval)
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return errors.New("set both --check-tls-cert-file and --check-tls-key-file, or neither")
	}
	return o.validateLeakReports()
}

// validateLeakReports says what is wrong with the leak report options.
func (o *Options) validateLeakReports() error {
	for _, p := range o.TrustedProxies {
		switch {
		case !p.IsValid():
			return errors.New("--trusted-proxy-cidrs holds an invalid prefix")
		case p.Bits() == 0:
			return fmt.Errorf("--trusted-proxy-cidrs %s trusts every address, so any client could name itself in X-Forwarded-For: list the proxies' own ranges", p)
		}
	}
	if !o.LeakReports {
		if o.GitLabTokenFile != "" {
			return errors.New("--leak-report-gitlab-token-file serves GitLab's Token Revocation API, which needs --leak-reports")
		}
		return nil
	}
	if o.LeakReportRate < 1 || o.LeakReportRate > MaxRequestsPerMinute {
		return fmt.Errorf("--leak-report-requests-per-minute must be between 1 and %d, not %d", MaxRequestsPerMinute, o.LeakReportRate)
	}
	if o.LeakReportClientRate < 1 || o.LeakReportClientRate > MaxRequestsPerMinute {
		return fmt.Errorf("--leak-report-client-requests-per-minute must be between 1 and %d, not %d", MaxRequestsPerMinute, o.LeakReportClientRate)
	}
	return nil
}

// Setup adds the check server, its index feed and the lastUsedAt flusher to
// the manager, and a readiness check that passes once the index has synced;
// with LeakReports, the leak report endpoints and the writer of their
// reports too.
func Setup(ctx context.Context, mgr ctrl.Manager, opts Options) error {
	if err := opts.Validate(); err != nil {
		return err
	}
	index := NewIndex()
	handler := NewHandler(index, opts.Clock, int32(opts.DefaultRequestsPerMinute), opts.Registerer)
	handler.TrustedProxies, handler.TokenReviewIgnoresSources = opts.TrustedProxies, opts.TokenReviewIgnoresSources
	if opts.Limiter != nil {
		handler.Limiter = opts.Limiter
	}
	synced, err := Feed(ctx, mgr, index, opts.TrackTokens, handler.Usage.Forget, handler.Limiter.Forget)
	if err != nil {
		return err
	}
	if opts.IndexSynced != nil {
		opts.IndexSynced(synced)
	}
	mux := handler.ServeMux()
	if opts.LeakReports {
		if err := setupLeakReports(mgr, opts, index, mux); err != nil {
			return err
		}
	}
	server := &Server{
		Addr: opts.Addr, CertFile: opts.CertFile, KeyFile: opts.KeyFile, EnableHTTP2: opts.EnableHTTP2,
		Handler: mux, Listener: opts.Listener, CertReady: opts.CertReady,
	}
	if err := mgr.Add(server); err != nil {
		return err
	}
	flusher := &UsageFlusher{
		Usage: handler.Usage, Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Index: index, Clock: opts.Clock, Interval: opts.FlushInterval,
		MinGap: cmp.Or(opts.FlushMinGap, tokenstate.MinUseRecordingGap),
	}
	if gap := opts.FlushMinGap; gap > 0 {
		flusher.Gap = func(*tokenstate.Token, *tokenstate.User) time.Duration { return gap }
	}
	if err := mgr.Add(flusher); err != nil {
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

// setupLeakReports serves the leak report endpoints on mux and adds the
// writer of their reports to the manager.
func setupLeakReports(mgr ctrl.Manager, opts Options, index *Index, mux *http.ServeMux) error {
	reporter := NewLeakReporter(index)
	writer := &LeakWriter{Reporter: reporter, Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Clock: opts.Clock}
	handler, err := NewLeakHandler(reporter, opts.Clock, NewLeakMetrics(opts.Registerer, reporter, writer), LeakConfig{
		RequestsPerMinute: opts.LeakReportRate, ClientRequestsPerMinute: opts.LeakReportClientRate,
		TrustedProxies: opts.TrustedProxies, GitLabTokenFile: opts.GitLabTokenFile,
	})
	if err != nil {
		return err
	}
	handler.Register(mux)
	return mgr.Add(writer)
}
