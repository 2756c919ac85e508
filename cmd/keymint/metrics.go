package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	"github.com/keymint/keymint/internal/freshness"
	"github.com/keymint/keymint/internal/tokenmetrics"
)

// registerMetrics adds keymint's collectors computed at scrape time: the
// check index's staleness, on every replica, and the token metrics
// (expiry, counts by state), read from the controllers' cache, which only
// the leader fills: the other replicas send no token series. The check
// server registers its own counters (check.Options.Registerer),
// controller-runtime its reconcile, work queue and webhook metrics.
func registerMetrics(reg prometheus.Registerer, c cache.Cache, fresh *freshness.Tracker, maxStale time.Duration) error {
	if err := reg.Register(fresh.Collector(maxStale)); err != nil {
		return err
	}
	return reg.Register(tokenmetrics.New(c, clock.RealClock{}))
}
