package check

// leakmetrics.go: the leak report endpoints' Prometheus series. No label
// ever holds a token or a hash.

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Endpoints of the leak report metrics.
const (
	leakEndpointGitHub = "github"
	leakEndpointGitLab = "gitlab"
)

// LeakMetrics count leak reports, per credential and per request.
type LeakMetrics struct {
	reports  *prometheus.CounterVec
	requests *prometheus.CounterVec
	// outcomes are the series of reports, looked up once: a request
	// counts up to MaxLeakCredentials.
	outcomes map[string]*[numLeakOutcomes]prometheus.Counter
}

// NewLeakMetrics creates the metrics of the reporter and the writer and
// registers them with reg.
func NewLeakMetrics(reg prometheus.Registerer, r *LeakReporter, w *LeakWriter) *LeakMetrics {
	m := &LeakMetrics{
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keymint_leak_reports_total",
			Help: "Credentials reported leaked, by endpoint (github, gitlab) and outcome: queued (a token checks accepted, to be written to its ApiToken's status.leakReports), not_keymint (not a keymint token, or a checksum that fails), not_accepted (a keymint token checks do not accept now, or one already reported), dropped (the queue was full).",
		}, []string{"endpoint", "outcome"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keymint_leak_report_requests_total",
			Help: "Requests to the leak report endpoints, by endpoint (github, gitlab) and HTTP status code.",
		}, []string{"endpoint", "code"}),
		outcomes: map[string]*[numLeakOutcomes]prometheus.Counter{},
	}
	for _, e := range []string{leakEndpointGitHub, leakEndpointGitLab} {
		var series [numLeakOutcomes]prometheus.Counter
		for o := range numLeakOutcomes {
			series[o] = m.reports.WithLabelValues(e, o.String())
		}
		m.outcomes[e] = &series
	}
	dropped := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "keymint_leak_report_queue_dropped_total",
		Help: "Leak reports of tokens checks accepted that were dropped because the queue already held reports of " + strconv.Itoa(MaxLeakQueue) + " ApiTokens.",
	}, func() float64 { return float64(r.Dropped()) })
	queued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keymint_leak_report_queue_apitokens",
		Help: "ApiTokens whose leak reports wait to be written to their status.",
	}, func() float64 { return float64(r.Queued()) })
	reg.MustRegister(m.reports, m.requests, dropped, queued)
	for result, n := range map[string]func() uint64{
		"written": w.written.Load, "unchanged": w.unchanged.Load, "gone": w.gone.Load, "failed": w.failed.Load,
	} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "keymint_leak_report_status_updates_total",
			Help:        "ApiTokens the leak report writer handled, by result: written (one status patch adding reports), unchanged (nothing to add: reported already, by this replica or another, or no longer named), gone (the ApiToken was deleted), failed (tried again later, or given up when the API server refused the write).",
			ConstLabels: prometheus.Labels{"result": result},
		}, func() float64 { return float64(n()) }))
	}
	return m
}

// report counts the report of one credential.
func (m *LeakMetrics) report(endpoint string, o LeakOutcome) {
	m.outcomes[endpoint][o].Inc()
}

// request counts one request and its answer's status.
func (m *LeakMetrics) request(endpoint string, code int) {
	m.requests.WithLabelValues(endpoint, strconv.Itoa(code)).Inc()
}
