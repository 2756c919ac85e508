package main

import (
	"math"
	"testing"
	"time"
)

// TestLastUsedSimulation: tokens in constant use are written once per
// recording gap, whatever the number of replicas; an idle rule makes the
// gap shorter.
func TestLastUsedSimulation(t *testing.T) {
	f, err := newScaleFixture(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		run           lastUsedRun
		wantPerHour   float64
		wantMillionPS int
	}{
		// No idle rule: once every 3 hours (tokenstate.DefaultUseRecordingGap).
		{run: lastUsedRun{n: 10, replicas: 1, span: 6 * time.Hour, flush: time.Minute}, wantPerHour: 1.0 / 3, wantMillionPS: 92},
		{run: lastUsedRun{n: 10, replicas: 3, span: 6 * time.Hour, flush: time.Minute}, wantPerHour: 1.0 / 3, wantMillionPS: 92},
		{run: lastUsedRun{n: 10, replicas: 3, span: 6 * time.Hour, maxIdle: time.Hour, flush: time.Minute}, wantPerHour: 4, wantMillionPS: 1111},
	} {
		r, err := simulateLastUsed(t.Context(), f, tc.run)
		if err != nil {
			t.Fatal(err)
		}
		// The index sends a token to the API server only when a write is
		// due: one read a write, not one a flush.
		if r.reads != r.writes {
			t.Errorf("%+v: %d reads for %d writes, want one each", tc.run, r.reads, r.writes)
		}
		perHour := float64(r.writes) / float64(r.n) / r.span.Hours()
		if math.Abs(perHour-tc.wantPerHour) > 1e-9 || int(r.perSecondAt(scaleMillion)) != tc.wantMillionPS || r.bytes == 0 {
			t.Errorf("%+v: %d writes (%.2f a token an hour, %d/s at a million, %d bytes); want %.2f an hour, %d/s",
				tc.run, r.writes, perHour, int(r.perSecondAt(scaleMillion)), r.bytes, tc.wantPerHour, tc.wantMillionPS)
		}
	}
}
