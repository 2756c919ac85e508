package check

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the check server's Prometheus metrics.
type Metrics struct {
	checks      *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	rateLimited prometheus.Counter
	indexSize   prometheus.GaugeFunc
	contested   prometheus.CounterFunc
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer, index *Index) *Metrics {
	m := &Metrics{
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keymint_checks_total",
			Help: "Token checks answered, by endpoint (check, tokenreview) and result (ok or the error code).",
		}, []string{"endpoint", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keymint_check_duration_seconds",
			Help:    "Time to answer a token check, from request routing to the answer being written.",
			Buckets: []float64{1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2},
		}, []string{"endpoint"}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keymint_rate_limited_total",
			Help: "Checks refused with 429 because a token passed its rate.",
		}),
		indexSize: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "keymint_index_tokens",
			Help: "Token hashes in the check server's index: current, in a grace period, and refused.",
		}, func() float64 { return float64(index.Len()) }),
		contested: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "keymint_contested_hashes_total",
			Help: "Token hashes refused because two ApiTokens claimed them at once; each is refused for good and both tokens are reissued.",
		}, func() float64 { return float64(index.Contested()) }),
	}
	reg.MustRegister(m.checks, m.latency, m.rateLimited, m.indexSize, m.contested)
	return m
}

func (m *Metrics) observe(endpoint string, result Failure, took time.Duration) {
	label := string(result)
	if result == OK {
		label = "ok"
	}
	m.checks.WithLabelValues(endpoint, label).Inc()
	m.latency.WithLabelValues(endpoint).Observe(took.Seconds())
}
