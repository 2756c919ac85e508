package controllers

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

func TestMintLimiterBoundsOneApiToken(t *testing.T) {
	var m mintLimiter
	at := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	for i := range mintBurst {
		if _, ok := m.reserve("a", at); !ok {
			t.Fatalf("mint %d of a burst of %d refused", i+1, mintBurst)
		}
	}
	wait, ok := m.reserve("a", at)
	if ok || wait != mintInterval {
		t.Fatalf("mint past the burst: ok %v, wait %v; want a wait of %v", ok, wait, mintInterval)
	}
	if _, ok := m.reserve("b", at); !ok {
		t.Error("another ApiToken's mint was held back")
	}
	if _, ok := m.reserve("a", at.Add(mintInterval)); !ok {
		t.Error("no mint after the interval")
	}
	// Full buckets are pruned once the map grows; busy ones stay.
	for i := range 1100 {
		m.reserve(types.UID(fmt.Sprint("t", i)), at.Add(time.Hour))
	}
	if _, ok := m.buckets["a"]; ok {
		t.Error("the full bucket of a was kept")
	}
}
