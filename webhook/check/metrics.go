package check

// metrics.go: the check server's Prometheus series, counted per answer.

import (
	"sync"
	"sync/atomic"
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
	byUser      *prometheus.CounterVec
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
			Name: "keymint_check_duration_seconds",
			Help: "Time to answer a token check, from request routing to the answer being written.",
			// Up to 10 ms for an answer from memory; the rest for a round
			// trip to a shared rate-limit store.
			Buckets: []float64{1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25},
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
		byUser: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keymint_checks_by_service_user_total",
			Help: "Token checks of a known token (both endpoints), by the token's ServiceUser and result (ok or the error code). Checks of unknown or malformed tokens have no user and are counted only in keymint_checks_total.",
		}, []string{"namespace", "service_user", "result"}),
	}
	m.check, m.tokenReview = m.series("check"), m.series("tokenreview")
	reg.MustRegister(m.checks, m.latency, m.rateLimited, m.indexSize, m.contested, m.byUser)
	index.OnUserForgotten(func(memo any) {
		if us, ok := memo.(*userSeries); ok {
			us.forget()
		}
	})
	return m
}

// observe counts one answer of an endpoint and its latency, and, when the
// token was found in the index (user is its ServiceUser's slot), counts it
// for that user.
func (m *Metrics) observe(e *endpointSeries, result Failure, took time.Duration, user *userSlot) {
	if result == OK {
		e.ok().Inc()
	} else {
		m.checks.WithLabelValues(e.name, string(result)).Inc()
	}
	if user != nil {
		m.userCounter(user, result).Inc()
	}
	e.latency().Observe(took.Seconds())
}

// userResults are the results a check of a known token can have, in the
// order of userSeries.counters.
var userResults = [...]Failure{OK, ExpiredToken, RevokedToken, InvalidToken, WrongAudience, InsufficientScope, RateLimited, QuotaExceeded, NotApproved, SourceNotAllowed}

// userSeries holds one ServiceUser's series of keymint_checks_by_service_user_total,
// each looked up by label on its first use and then read from here, so a
// check allocates nothing. It is kept in the memo of the user's index slot,
// which every token of the user shares, and goes with it.
type userSeries struct {
	counters [len(userResults)]atomic.Pointer[prometheus.Counter]
	// delete deletes the user's series; gone is set once it has run.
	delete func()
	gone   atomic.Bool
}

// forget deletes the user's series, once the index holds neither the user
// nor any of its tokens. A check still holding the user's entry counts in a
// series no longer exported, rather than bringing the user back.
func (us *userSeries) forget() {
	us.gone.Store(true)
	us.delete()
}

// discarded counts what a forgotten user's late checks would have.
var discarded = prometheus.NewCounter(prometheus.CounterOpts{Name: "discarded"})

// userCounter returns the series of slot's ServiceUser for result.
func (m *Metrics) userCounter(slot *userSlot, result Failure) prometheus.Counter {
	us, _ := slot.memo.Load().(*userSeries)
	if us == nil {
		ns, name := slot.key.Namespace, slot.key.Name
		us = &userSeries{delete: func() {
			m.byUser.DeletePartialMatch(prometheus.Labels{"namespace": ns, "service_user": name})
		}}
		if !slot.memo.CompareAndSwap(nil, us) {
			us, _ = slot.memo.Load().(*userSeries)
		}
	}
	i, listed := userResultIndex(result)
	if listed {
		if c := us.counters[i].Load(); c != nil {
			return *c
		}
	}
	if us.gone.Load() {
		return discarded
	}
	label := string(result)
	if result == OK {
		label = "ok"
	}
	c := m.byUser.WithLabelValues(slot.key.Namespace, slot.key.Name, label)
	if listed {
		us.counters[i].Store(&c)
	}
	return c
}

// userResultIndex is result's place in userResults.
func userResultIndex(result Failure) (int, bool) {
	for i, r := range userResults {
		if r == result {
			return i, true
		}
	}
	return 0, false
}
