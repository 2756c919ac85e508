package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/keymint/keymint/internal/freshness"
	"github.com/keymint/keymint/internal/tokenmetrics"
)

// registerMetrics adds keymint's collectors computed at scrape time: the
// check index's staleness and the token metrics (expiry, counts by state),
// both read from the manager's cache on every replica. The check server
// registers its own counters (check.Options.Registerer), controller-runtime
// its reconcile, work queue and webhook metrics.
func registerMetrics(reg prometheus.Registerer, mgr ctrl.Manager, fresh *freshness.Tracker, maxStale time.Duration) error {
	if err := reg.Register(fresh.Collector(maxStale)); err != nil {
		return err
	}
	return reg.Register(tokenmetrics.New(mgr.GetCache(), clock.RealClock{}))
}
