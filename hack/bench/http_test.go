package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/keymint/keymint/webhook/check"
)

func TestTallySample(t *testing.T) {
	r := tally{requests: 4, elapsed: 2 * time.Second, failures: 1, reasons: []string{"status 500"}}
	for _, ms := range []int{4, 1, 3, 2} { // unsorted, as answers arrive
		r.latencies = append(r.latencies, time.Duration(ms)*time.Millisecond)
	}
	s := r.sample()
	if s.rps != 2 {
		t.Errorf("rps = %v, want 2", s.rps)
	}
	if s.p50 != 2*time.Millisecond || s.p99 != 4*time.Millisecond || s.p999 != 4*time.Millisecond {
		t.Errorf("p50, p99, p99.9 = %v, %v, %v; want 2ms, 4ms, 4ms", s.p50, s.p99, s.p999)
	}
	if s.failures != 1 || len(s.reasons) != 1 {
		t.Errorf("failures %d %v, want 1 [status 500]", s.failures, s.reasons)
	}
	if r.latencies[0] != 4*time.Millisecond {
		t.Error("sample sorted the tally's latencies in place")
	}
	if (tally{}).sample().rps != 0 {
		t.Error("an empty run has a rate")
	}
}

func TestTallyFailKeepsAFewDistinctReasons(t *testing.T) {
	var r tally
	for _, why := range []string{"a", "a", "b", "c", "d", "b"} {
		r.fail(why)
	}
	if r.failures != 6 || strings.Join(r.reasons, ",") != "a,b,c" {
		t.Errorf("failures %d, reasons %v; want 6, [a b c]", r.failures, r.reasons)
	}
}

func TestSummarize(t *testing.T) {
	runs := []sample{
		{rps: 100, p50: 1, p99: 10, p999: 100, cpuPerRequest: 7, failures: 1},
		{rps: 300, p50: 3, p99: 30, p999: 300, cpuPerRequest: 5},
		{rps: 200, p50: 2, p99: 20, p999: 200, cpuPerRequest: 6, failures: 2},
	}
	got := summarize(runs)
	want := summary{rps: 200, rpsLo: 100, rpsHi: 300, p50: 2, p99: 20, p999: 200, cpuPerRequest: 6, failures: 3}
	if got != want {
		t.Errorf("summarize = %+v, want %+v", got, want)
	}
	if (summarize(nil) != summary{}) {
		t.Error("no rounds, yet a summary")
	}
}

func TestPairedRatios(t *testing.T) {
	// The median of each round's ratio (0.9, 0.95, 0.7), not the ratio of
	// the medians (190/200).
	base := []sample{{rps: 100, p99: 10, cpuPerRequest: 10}, {rps: 200, p99: 40, cpuPerRequest: 20}, {rps: 300, p99: 5, cpuPerRequest: 10}}
	cand := []sample{{rps: 90, p99: 12, cpuPerRequest: 11}, {rps: 190, p99: 48, cpuPerRequest: 30}, {rps: 210, p99: 6, cpuPerRequest: 12}}
	r := pairedRatios(base, cand)
	if !near(r.rps, 0.9) || !near(r.rpsLo, 0.7) || !near(r.rpsHi, 0.95) || !near(r.p99, 1.2) || !near(r.cpu, 1.2) {
		t.Errorf("pairedRatios = %+v; want requests/s 0.9 (0.7–0.95), p99 1.2, CPU 1.2", r)
	}
	// Rounds pair by index; an empty baseline round is skipped, and so is an
	// unknown CPU time.
	r = pairedRatios([]sample{{rps: 0}, {rps: 100}}, []sample{{rps: 50}, {rps: 80, cpuPerRequest: 3}, {rps: 1}})
	if !near(r.rps, 0.8) || r.cpu != 0 {
		t.Errorf("pairedRatios with an empty baseline round = %+v, want requests/s 0.8, no CPU ratio", r)
	}
}

func TestStatCPU(t *testing.T) {
	// A command name with a space and a parenthesis; utime 250, stime 50 ticks.
	stat := "4242 (bench (x) y) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 9 0 100 1000 10"
	if got, ok := statCPU(stat); !ok || got != 3*time.Second {
		t.Errorf("statCPU = %v, %v; want 3s, true", got, ok)
	}
	for _, bad := range []string{"", "4242 (bench", "4242 (bench) S 1 2"} {
		if _, ok := statCPU(bad); ok {
			t.Errorf("statCPU(%q) ok", bad)
		}
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestFailuresOf(t *testing.T) {
	n, why := failuresOf([]sample{{failures: 2, reasons: []string{"x", "y"}}, {}, {failures: 3, reasons: []string{"y", "z", "w"}}})
	if n != 5 || strings.Join(why, ",") != "x,y,z" {
		t.Errorf("failuresOf = %d, %v; want 5, [x y z]", n, why)
	}
}

func TestOpenRate(t *testing.T) {
	for _, c := range []struct {
		rps      []float64
		fraction float64
		want     int
	}{
		{[]float64{15047, 14000, 16000}, 0.5, 7500},
		{[]float64{1234}, 0.5, 600},
		{[]float64{50}, 0.5, 100},
		{nil, 0.5, 100},
	} {
		if got := openRate(c.rps, c.fraction); got != c.want {
			t.Errorf("openRate(%v, %v) = %d, want %d", c.rps, c.fraction, got, c.want)
		}
	}
}

func TestFormatting(t *testing.T) {
	for n, want := range map[int]string{10: "10", 1000: "1,000", 100000: "100,000", 1000000: "1,000,000"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
	for d, want := range map[time.Duration]string{3 * time.Second: "3 s", 300 * time.Millisecond: "0.3 s", 10 * time.Second: "10 s", 1500 * time.Millisecond: "1.5 s"} {
		if got := seconds(d); got != want {
			t.Errorf("seconds(%v) = %q, want %q", d, got, want)
		}
	}
	if plural(1, "round") != "1 round" || plural(5, "round") != "5 rounds" {
		t.Error("plural")
	}
}

func TestAnswerChecks(t *testing.T) {
	user := check.Username("bench", "u9")
	good := &vegeta.Result{Code: 200, Headers: http.Header{check.HeaderUser: {user}}}
	for _, c := range []struct {
		name string
		fn   func(*vegeta.Result) string
		r    *vegeta.Result
		ok   bool
	}{
		{"check 200 for the user", checkAnswer(user), good, true},
		{"check 200 for another user", checkAnswer(user), &vegeta.Result{Code: 200, Headers: http.Header{check.HeaderUser: {"keymint:bench:u1"}}}, false},
		{"check 401", checkAnswer(user), &vegeta.Result{Code: 401, Error: "401 Unauthorized"}, false},
		{"check 403 without error", checkAnswer(user), &vegeta.Result{Code: 403}, false},
		{"transport error", checkAnswer(user), &vegeta.Result{Error: "connection reset"}, false},
		{"review authenticated", reviewAnswer(user), &vegeta.Result{Code: 200, Body: []byte(`{"status":{"authenticated":true,"user":{"username":"` + user + `"}}}`)}, true},
		{"review refused, still 200", reviewAnswer(user), &vegeta.Result{Code: 200, Body: []byte(`{"status":{"user":{},"error":"The token is revoked."}}`)}, false},
		{"review for another user", reviewAnswer(user), &vegeta.Result{Code: 200, Body: []byte(`{"status":{"authenticated":true,"user":{"username":"keymint:bench:u1"}}}`)}, false},
		{"baseline body", baselineAnswer, &vegeta.Result{Code: 200, Body: baselineBody}, true},
		{"baseline other body", baselineAnswer, &vegeta.Result{Code: 200, Body: []byte("{}")}, false},
	} {
		if why := c.fn(c.r); (why == "") != c.ok {
			t.Errorf("%s: %q, want ok = %v", c.name, why, c.ok)
		}
	}
}

func TestHTTPTable(t *testing.T) {
	sc := &scenario{
		title: "`/check`, 8 connections", minRPS: 0.90, maxP99: 1.5,
		base:     side{label: "baseline"},
		cand:     side{label: "keymint"},
		baseRuns: []sample{{rps: 1000, p99: 2 * time.Millisecond}},
		candRuns: []sample{{rps: 850, p99: 2 * time.Millisecond}},
	}
	var b strings.Builder
	httpTable(&b, sc)
	out := b.String()
	for _, want := range []string{"| keymint | 850 |", "| 0.85 | 1.00 | ? |", "requests/s ≥ 0.90×: **missed**", "p99 ≤ 1.5×: met"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[2:] {
		if n := strings.Count(line, "|"); n != 12 {
			t.Errorf("%d pipes in %q, want 12 (11 columns)", n, line)
		}
	}
	sc.rate = 1000
	b.Reset()
	httpTable(&b, sc)
	if !strings.Contains(b.String(), "In 1 of 2 runs the load generator sent under 95% of the 1000 requests/s") {
		t.Errorf("an open loop that sent under its rate is not flagged:\n%s", b.String())
	}
}
