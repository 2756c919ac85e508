package check

import (
	"sync"
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
	// check and tokenReview are the series of each endpoint that every
	// good answer counts in.
	check, tokenReview endpointSeries
}

// endpointSeries holds an endpoint's name and its series of good answers
// and of latency, each looked up by label once, on first use: the lookup
// costs more than the count.
type endpointSeries struct {
	name    string
	ok      func() prometheus.Counter
	latency func() prometheus.Observer
}

func (m *Metrics) series(endpoint string) endpointSeries {
	return endpointSeries{
		name:    endpoint,
		ok:      sync.OnceValue(func() prometheus.Counter { return m.checks.WithLabelValues(endpoint, "ok") }),
		latency: sync.OnceValue(func() prometheus.Observer { return m.latency.WithLabelValues(endpoint) }),
	}
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
	m.check, m.tokenReview = m.series("check"), m.series("tokenreview")
	reg.MustRegister(m.checks, m.latency, m.rateLimited, m.indexSize, m.contested)
	return m
}

// observe counts one answer of an endpoint and its latency.
func (m *Metrics) observe(e *endpointSeries, result Failure, took time.Duration) {
	if result == OK {
		e.ok().Inc()
	} else {
		m.checks.WithLabelValues(e.name, string(result)).Inc()
	}
	e.latency().Observe(took.Seconds())
}
