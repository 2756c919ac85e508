package main

// http.go: the http section. keymint's check server and a bare one, both
// check.Server (same TLS, limits and timeouts, HTTP/1.1), each in a child
// process of this program, driven with vegeta from this process over
// loopback TLS. The two sides of every comparison run back to back in each
// round, so a busy minute of the machine hits both.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	vegeta "github.com/tsenart/vegeta/v12/lib"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/selfsigned"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/webhook/check"
)

var httpCPUProfile = benchFlags.String("http-cpuprofile", "",
	"`dir`ectory for a CPU profile of each server of the http section (baseline.pprof, keymint-10.pprof, …), from its first request to its exit")

// serverArg, as the first argument, makes this program one of the http
// section's servers instead of the bench (see serveHTTP). The section starts
// its servers this way, so that no server shares a heap, a scheduler or a
// garbage collector with the load generator or with another server.
const serverArg = "http-server"

func init() {
	if len(os.Args) > 1 && os.Args[1] == serverArg {
		os.Exit(serveHTTP(os.Args[2:]))
	}
}

// httpPlan is how long and how often the section drives each server.
type httpPlan struct {
	rounds       int
	run, openRun time.Duration // one measured run, closed and open loop
	warmup       time.Duration // before each run, same client, not measured
	conns        int
	openFraction float64 // the open-loop rate, as a fraction of the baseline's closed-loop maximum
	tokens       int     // the large index, compared with smallTokens
}

const smallTokens = 10

func planFor(quick bool) httpPlan {
	if quick {
		return httpPlan{rounds: 1, run: time.Second, openRun: time.Second, warmup: 100 * time.Millisecond, conns: 8, openFraction: 0.5, tokens: 100_000}
	}
	return httpPlan{rounds: 5, run: 3 * time.Second, openRun: 4 * time.Second, warmup: 300 * time.Millisecond, conns: 8, openFraction: 0.5, tokens: 100_000}
}

// The request every /check run sends, to keymint and to the baseline alike.
var checkQuery = check.CheckPath + "?scope=links:read"

// A side is one server of a comparison and the request it is sent.
type side struct {
	label  string
	srv    *server
	target vegeta.Target
	// check says what is wrong with an answer, or "".
	check func(*vegeta.Result) string
}

// A scenario compares a candidate with a baseline, run for run.
type scenario struct {
	title      string
	conns      int
	rate       int // requests/s of an open loop, sent on schedule; 0: closed loop
	base, cand side
	minRPS     float64 // target: candidate requests/s at least this × the baseline's (0: none)
	maxP99     float64 // target: candidate p99 at most this × the baseline's (0: none)
	// One sample per round, in round order.
	baseRuns, candRuns []sample
}

// runHTTP starts the servers, runs every closed-loop scenario round by round,
// then the open-loop one at a rate set from the closed-loop baseline.
func runHTTP(ctx context.Context, e *env) (string, error) {
	p := planFor(e.quick)
	dir, err := os.MkdirTemp("", "keymint-bench-http-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	files, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		return "", err
	}
	caPEM, err := os.ReadFile(files.CAFile)
	if err != nil {
		return "", err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return "", errors.New("the test CA does not parse")
	}
	profileDir := *httpCPUProfile
	if profileDir != "" {
		if profileDir, err = filepath.Abs(profileDir); err != nil {
			return "", err
		}
		if err := os.MkdirAll(profileDir, 0o755); err != nil {
			return "", err
		}
	}

	var servers []*server
	defer func() {
		for _, s := range servers {
			if err := s.stop(); err != nil {
				e.log("http: %s server: %v", s.name, err)
			}
		}
		if profileDir != "" {
			e.log("http: CPU profiles in %s", profileDir)
		}
	}()
	start := func(name string, args ...string) (*server, error) {
		args = append(args, "-cert", files.CertFile, "-key", files.KeyFile)
		if profileDir != "" {
			args = append(args, "-cpuprofile", filepath.Join(profileDir, name+".pprof"))
		}
		e.log("http: starting the %s server", name)
		s, err := startServer(ctx, name, args...)
		if err == nil {
			servers = append(servers, s)
		}
		return s, err
	}
	bare, err := start("baseline", "-handler", "baseline")
	if err != nil {
		return "", err
	}
	small, err := start(fmt.Sprintf("keymint-%d", smallTokens), "-handler", "keymint", "-tokens", fmt.Sprint(smallTokens))
	if err != nil {
		return "", err
	}
	large, err := start(fmt.Sprintf("keymint-%d", p.tokens), "-handler", "keymint", "-tokens", fmt.Sprint(p.tokens))
	if err != nil {
		return "", err
	}
	rdb, err := testenv.StartRedis(dir)
	if err != nil {
		return "", err
	}
	defer func() { _ = rdb.Stop() }()
	shared, err := start(fmt.Sprintf("keymint-%d-redis", smallTokens), "-handler", "keymint", "-tokens", fmt.Sprint(smallTokens), "-redis", rdb.Addr)
	if err != nil {
		return "", err
	}

	checkGet := func(s *server) vegeta.Target {
		return vegeta.Target{Method: http.MethodGet, URL: s.URL + checkQuery, Header: http.Header{"Authorization": {"Bearer " + small.Token}}}
	}
	review := func(s *server, tok string) vegeta.Target {
		return vegeta.Target{Method: http.MethodPost, URL: s.URL + check.TokenReviewV1, Body: tokenReviewBody(tok),
			Header: http.Header{"Content-Type": {"application/json"}}}
	}
	baseGet := side{label: "baseline: bare handler, same TLS server", srv: bare, target: checkGet(bare), check: baselineAnswer}
	smallCheck := side{label: fmt.Sprintf("keymint `/check`, %d tokens", smallTokens), srv: small, target: checkGet(small), check: checkAnswer(small.User)}
	largeTarget := checkGet(large)
	largeTarget.Header = http.Header{"Authorization": {"Bearer " + large.Token}}
	largeCheck := side{label: fmt.Sprintf("keymint `/check`, %s tokens", thousands(p.tokens)), srv: large, target: largeTarget, check: checkAnswer(large.User)}
	roundTrip, err := start(fmt.Sprintf("keymint-%d-redis-no-leases", smallTokens), "-handler", "keymint", "-tokens", fmt.Sprint(smallTokens), "-redis", rdb.Addr, "-no-leases")
	if err != nil {
		return "", err
	}
	roundTripTarget := checkGet(roundTrip)
	roundTripTarget.Header = http.Header{"Authorization": {"Bearer " + roundTrip.Token}}
	roundTripCheck := side{label: fmt.Sprintf("keymint `/check`, %d tokens, budgets in Redis, a round trip per check", smallTokens), srv: roundTrip,
		target: roundTripTarget, check: checkAnswer(roundTrip.User)}
	sharedTarget := checkGet(shared)
	sharedTarget.Header = http.Header{"Authorization": {"Bearer " + shared.Token}}
	sharedCheck := side{label: fmt.Sprintf("keymint `/check`, %d tokens, budgets in Redis", smallTokens), srv: shared, target: sharedTarget, check: checkAnswer(shared.User)}

	closed := []*scenario{
		{title: fmt.Sprintf("`/check`, %d connections", p.conns), conns: p.conns, base: baseGet, cand: smallCheck, minRPS: 0.90, maxP99: 1.5},
		{title: fmt.Sprintf("TokenReview, %d connections", p.conns), conns: p.conns,
			base:   side{label: "baseline: bare handler, same TLS server", srv: bare, target: review(bare, small.Token), check: baselineAnswer},
			cand:   side{label: fmt.Sprintf("keymint TokenReview v1, %d tokens", smallTokens), srv: small, target: review(small, small.Token), check: reviewAnswer(small.User)},
			minRPS: 0.75, maxP99: 1.5},
		{title: "`/check`, 1 connection", conns: 1, base: baseGet, cand: smallCheck},
		{title: fmt.Sprintf("`/check`, %s tokens indexed against %d, %d connections", thousands(p.tokens), smallTokens, p.conns), conns: p.conns,
			base: smallCheck, cand: largeCheck, minRPS: 0.95},
		{title: fmt.Sprintf("`/check` with budgets shared in Redis against the bare server, %d connections", p.conns), conns: p.conns,
			base: baseGet, cand: sharedCheck, minRPS: 0.85, maxP99: 1.5},
		{title: fmt.Sprintf("`/check` with budgets shared in Redis against in-process budgets, %d connections", p.conns), conns: p.conns,
			base: smallCheck, cand: sharedCheck, minRPS: 0.90},
		{title: fmt.Sprintf("`/check` with a Redis round trip per check (no leases) against in-process budgets, %d connections", p.conns), conns: p.conns,
			base: smallCheck, cand: roundTripCheck},
	}
	for round := range p.rounds {
		for _, sc := range closed {
			if err := sc.runRound(ctx, e, p, pool, round); err != nil {
				return "", err
			}
		}
	}
	var baseMax []float64
	for _, s := range closed[0].baseRuns {
		baseMax = append(baseMax, s.rps)
	}
	rate := openRate(baseMax, p.openFraction)
	open := &scenario{title: fmt.Sprintf("`/check`, open loop at %d requests/s, %d connections", rate, p.conns), conns: p.conns, rate: rate,
		base: baseGet, cand: smallCheck, maxP99: 1.5}
	for round := range p.rounds {
		if err := open.runRound(ctx, e, p, pool, round); err != nil {
			return "", err
		}
	}

	all := append(closed, open)
	out := httpReport(p, rate, all)
	var failed []string
	for _, sc := range all {
		for _, sd := range []struct {
			side
			runs []sample
		}{{sc.base, sc.baseRuns}, {sc.cand, sc.candRuns}} {
			if n, why := failuresOf(sd.runs); n > 0 {
				failed = append(failed, fmt.Sprintf("%s, %s: %d failed answers (%s)", sc.title, sd.label, n, strings.Join(why, "; ")))
			}
		}
	}
	if len(failed) > 0 {
		return "", fmt.Errorf("answers failed:\n%s\n\n%s", strings.Join(failed, "\n"), out)
	}
	return out, nil
}

// runRound runs both sides once: the baseline first in the first, third, …
// round, the candidate first in the others.
func (sc *scenario) runRound(ctx context.Context, e *env, p httpPlan, pool *x509.CertPool, round int) error {
	d := p.run
	if sc.rate > 0 {
		d = p.openRun
	}
	sides := []*side{&sc.base, &sc.cand}
	runs := []*[]sample{&sc.baseRuns, &sc.candRuns}
	if round%2 == 1 {
		slices.Reverse(sides)
		slices.Reverse(runs)
	}
	for i, s := range sides {
		if err := ctx.Err(); err != nil {
			return err
		}
		e.log("http: round %d/%d, %s: %s", round+1, p.rounds, sc.title, s.label)
		*runs[i] = append(*runs[i], drive(*s, pool, sc.conns, sc.rate, p.warmup, d).sample())
	}
	return nil
}

// tally is what one run of one side measured.
type tally struct {
	requests  int
	elapsed   time.Duration // first request sent to last answer read
	latencies []time.Duration
	serverCPU time.Duration // the server process's CPU time over the run; 0 if unknown
	failures  int
	reasons   []string // distinct, the first few
}

func (r *tally) fail(why string) {
	r.failures++
	if len(r.reasons) < 3 && !slices.Contains(r.reasons, why) {
		r.reasons = append(r.reasons, why)
	}
}

// drive sends s's request on conns keep-alive connections for d, after a
// warm-up on the same connections: closed loop (conns workers, each sending
// when its last answer is read) when rate is 0, else rate requests a second
// on schedule, whatever the answers (vegeta starts more workers, which wait
// for a connection: that wait counts in the latency). Every answer is
// checked, the warm-up's too.
func drive(s side, pool *x509.CertPool, conns, rate int, warmup, d time.Duration) tally {
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		// HTTP/1.1, as the server speaks.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	var r tally
	attack := func(rate int, d time.Duration, measure bool) {
		opts := []func(*vegeta.Attacker){vegeta.Client(client), vegeta.Workers(uint64(conns))}
		pacer := vegeta.ConstantPacer{} // zero: no pacing, the workers go as fast as answers come
		if rate > 0 {
			pacer = vegeta.ConstantPacer{Freq: rate, Per: time.Second}
		} else {
			opts = append(opts, vegeta.MaxWorkers(uint64(conns)))
		}
		var first, last time.Time
		for res := range vegeta.NewAttacker(opts...).Attack(vegeta.NewStaticTargeter(s.target), pacer, d, "") {
			if why := s.check(res); why != "" {
				r.fail(why)
			}
			if !measure {
				continue
			}
			r.requests++
			r.latencies = append(r.latencies, res.Latency)
			if first.IsZero() || res.Timestamp.Before(first) {
				first = res.Timestamp
			}
			if end := res.End(); end.After(last) {
				last = end
			}
		}
		if measure {
			r.elapsed = last.Sub(first)
		}
	}
	if warmup > 0 {
		attack(0, warmup, false)
	}
	before, ok := s.srv.cpu()
	attack(rate, d, true)
	if after, ok2 := s.srv.cpu(); ok && ok2 {
		r.serverCPU = after - before
	}
	return r
}

// sample is one run in figures.
type sample struct {
	rps            float64
	p50, p99, p999 time.Duration
	cpuPerRequest  time.Duration // the server's; 0 if unknown
	failures       int
	reasons        []string
}

func (r tally) sample() sample {
	s := slices.Clone(r.latencies)
	slices.Sort(s)
	out := sample{p50: percentile(s, 0.50), p99: percentile(s, 0.99), p999: percentile(s, 0.999), failures: r.failures, reasons: r.reasons}
	if r.elapsed > 0 {
		out.rps = float64(r.requests) / r.elapsed.Seconds()
	}
	if r.requests > 0 {
		out.cpuPerRequest = r.serverCPU / time.Duration(r.requests)
	}
	return out
}

// summary is a side's rounds in one row: medians, and every failure.
type summary struct {
	rps, rpsLo, rpsHi float64 // median, and the range over rounds
	p50, p99, p999    time.Duration
	cpuPerRequest     time.Duration
	failures          int
}

func summarize(runs []sample) summary {
	var rps, p50, p99, p999, cpu []float64
	s := summary{}
	for i, r := range runs {
		rps = append(rps, r.rps)
		p50, p99, p999 = append(p50, float64(r.p50)), append(p99, float64(r.p99)), append(p999, float64(r.p999))
		cpu = append(cpu, float64(r.cpuPerRequest))
		s.failures += r.failures
		if i == 0 {
			s.rpsLo, s.rpsHi = r.rps, r.rps
		}
		s.rpsLo, s.rpsHi = min(s.rpsLo, r.rps), max(s.rpsHi, r.rps)
	}
	s.rps = median(rps)
	s.p50, s.p99, s.p999 = time.Duration(median(p50)), time.Duration(median(p99)), time.Duration(median(p999))
	s.cpuPerRequest = time.Duration(median(cpu))
	return s
}

// ratios of a candidate to its baseline: each the median of the rounds'
// ratios, the two sides of a round having run back to back, so that a
// round's ratio cancels most of what the machine was doing then.
type ratios struct {
	rps, rpsLo, rpsHi float64 // requests/s, median and range
	p99               float64
	cpu               float64 // server CPU per request; 0 if unknown
}

func pairedRatios(base, cand []sample) ratios {
	var rs, ps, cs []float64
	for i := range min(len(base), len(cand)) {
		if base[i].rps > 0 {
			rs = append(rs, cand[i].rps/base[i].rps)
		}
		if base[i].p99 > 0 {
			ps = append(ps, float64(cand[i].p99)/float64(base[i].p99))
		}
		if base[i].cpuPerRequest > 0 && cand[i].cpuPerRequest > 0 {
			cs = append(cs, float64(cand[i].cpuPerRequest)/float64(base[i].cpuPerRequest))
		}
	}
	r := ratios{rps: median(rs), p99: median(ps), cpu: median(cs)}
	if len(rs) > 0 {
		r.rpsLo, r.rpsHi = slices.Min(rs), slices.Max(rs)
	}
	return r
}

// failuresOf counts a side's failed answers over its rounds, with a few reasons.
func failuresOf(runs []sample) (int, []string) {
	n, why := 0, []string{}
	for _, r := range runs {
		n += r.failures
		for _, w := range r.reasons {
			if len(why) < 3 && !slices.Contains(why, w) {
				why = append(why, w)
			}
		}
	}
	return n, why
}

// openRate is fraction of the median of the baseline's closed-loop
// requests/s, rounded down to a hundred (at least 100).
func openRate(baselineRPS []float64, fraction float64) int {
	return max(100, int(median(baselineRPS)*fraction)/100*100)
}

// httpReport is the section's Markdown.
func httpReport(p httpPlan, rate int, scenarios []*scenario) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[vegeta](https://github.com/tsenart/vegeta) (`lib`) from this process; each server a `check.Server` (same TLS, limits, timeouts, HTTP/1.1) "+
		"in a child process of its own. Load generator and servers share this machine's %d cores, so the requests/s are the pair's, not a server's alone. "+
		"HTTPS over loopback, keep-alive. %s; in each, a scenario's two sides run back to back, the baseline first in odd rounds and second in even ones, "+
		"%s each after %s of warm-up on the same connections (%s in the open loop). Figures are medians of the rounds; a ratio is the median of the rounds' ratios.\n\n",
		runtime.NumCPU(), plural(p.rounds, "round"), seconds(p.run), seconds(p.warmup), seconds(p.openRun))
	fmt.Fprintf(&b, "Closed loop: as many workers as connections, each sending its next request when the last answer is read. "+
		"Open loop: %d requests/s (%.0f%% of the baseline's closed-loop maximum), sent on schedule whatever the answers, "+
		"so a slow answer is not hidden by the requests it delays (no coordinated omission); latency counts any wait for a free connection.\n\n",
		rate, p.openFraction*100)
	fmt.Fprintf(&b, "Every answer is checked: `/check` 200 with `%s` naming the token's user; TokenReview 200 with `\"authenticated\":true` and that user; "+
		"the baseline 200 with its fixed body. Server CPU/request is the server process's user and system CPU time over a run (from /proc, 10 ms ticks) over its requests: "+
		"it moves less than requests/s with what else the machine runs (the Go scheduler's idle spinning counts in it). keymint's tokens require scope `links:read` (asked by the query) and have no rate limit worth the name (10⁹ a minute).\n",
		check.HeaderUser)
	for _, sc := range scenarios {
		httpTable(&b, sc)
	}
	return b.String()
}

func httpTable(b *strings.Builder, sc *scenario) {
	fmt.Fprintf(b, "\n**%s**\n\n", sc.title)
	b.WriteString("| server | requests/s (range) | p50 | p99 | p99.9 | server CPU/request | failures | requests/s ratio (range) | p99 ratio | CPU/request ratio | target |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	base, cand := summarize(sc.baseRuns), summarize(sc.candRuns)
	row := func(label string, s summary, r []string, target string) {
		rps := fmt.Sprintf("%.0f", s.rps)
		if s.rpsHi > s.rpsLo {
			rps += fmt.Sprintf(" (%.0f–%.0f)", s.rpsLo, s.rpsHi)
		}
		cpu := "?"
		if s.cpuPerRequest > 0 {
			cpu = ms(s.cpuPerRequest)
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %d | %s | %s |\n", label, rps, ms(s.p50), ms(s.p99), ms(s.p999), cpu, s.failures, strings.Join(r, " | "), target)
	}
	row(sc.base.label, base, []string{"", "", ""}, "")
	r := pairedRatios(sc.baseRuns, sc.candRuns)
	rr := fmt.Sprintf("%.2f", r.rps)
	if r.rpsHi > r.rpsLo {
		rr += fmt.Sprintf(" (%.2f–%.2f)", r.rpsLo, r.rpsHi)
	}
	cr := "?"
	if r.cpu > 0 {
		cr = fmt.Sprintf("%.2f", r.cpu)
	}
	var targets []string
	if sc.minRPS > 0 {
		targets = append(targets, fmt.Sprintf("requests/s ≥ %.2f×: %s", sc.minRPS, verdict(r.rps >= sc.minRPS)))
	}
	if sc.maxP99 > 0 {
		targets = append(targets, fmt.Sprintf("p99 ≤ %.1f×: %s", sc.maxP99, verdict(r.p99 <= sc.maxP99)))
	}
	if len(targets) == 0 {
		targets = append(targets, "none, for the record")
	}
	row(sc.cand.label, cand, []string{rr, fmt.Sprintf("%.2f", r.p99), cr}, strings.Join(targets, "; "))
	if n := behind(sc); n > 0 {
		fmt.Fprintf(b, "\nIn %d of %d runs the load generator sent under 95%% of the %d requests/s asked: the machine could not keep the schedule, "+
			"so those runs were not an open loop, and their latencies are mostly the queue.\n", n, len(sc.baseRuns)+len(sc.candRuns), sc.rate)
	}
}

// behind counts the runs of an open loop that fell behind its rate.
func behind(sc *scenario) int {
	n := 0
	if sc.rate == 0 {
		return 0
	}
	for _, r := range slices.Concat(sc.baseRuns, sc.candRuns) {
		if r.rps < 0.95*float64(sc.rate) {
			n++
		}
	}
	return n
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// seconds writes d as "0.3 s", "3 s".
func seconds(d time.Duration) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.1f", d.Seconds()), "0"), ".") + " s"
}

// baselineBody is what the baseline answers to every request.
var baselineBody = []byte(`{"ok":true}` + "\n")

func answerError(r *vegeta.Result) string {
	if r.Error != "" {
		return r.Error
	}
	if r.Code != http.StatusOK {
		return fmt.Sprintf("status %d", r.Code)
	}
	return ""
}

func baselineAnswer(r *vegeta.Result) string {
	if why := answerError(r); why != "" {
		return why
	}
	if !bytes.Equal(r.Body, baselineBody) {
		return fmt.Sprintf("body %q", r.Body)
	}
	return ""
}

// checkAnswer accepts a /check success for user.
func checkAnswer(user string) func(*vegeta.Result) string {
	return func(r *vegeta.Result) string {
		if why := answerError(r); why != "" {
			return why
		}
		if got := r.Headers.Get(check.HeaderUser); got != user {
			return fmt.Sprintf("%s %q, want %q", check.HeaderUser, got, user)
		}
		return ""
	}
}

// reviewAnswer accepts a TokenReview that authenticated user. It looks for
// the two fields in the body rather than decoding it: the load generator
// shares the cores with the servers, and must not spend more on one side's
// answers than on the other's.
func reviewAnswer(user string) func(*vegeta.Result) string {
	name := []byte(`"username":"` + user + `"`)
	return func(r *vegeta.Result) string {
		if why := answerError(r); why != "" {
			return why
		}
		if !bytes.Contains(r.Body, []byte(`"authenticated":true`)) || !bytes.Contains(r.Body, name) {
			return fmt.Sprintf("not authenticated as %s: %.200s", user, r.Body)
		}
		return ""
	}
}

func tokenReviewBody(tok string) []byte {
	b, _ := json.Marshal(map[string]any{
		"apiVersion": "authentication.k8s.io/v1",
		"kind":       "TokenReview",
		"spec":       map[string]any{"token": tok},
	})
	return b
}

// server is a child process serving one handler.
type server struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	serverReady
}

// serverReady is the one line a server prints on stdout once it listens.
type serverReady struct {
	URL   string `json:"url"`
	Token string `json:"token,omitempty"` // keymint: one indexed token's plaintext
	User  string `json:"user,omitempty"`  // its X-Keymint-User
}

// startServer runs this program as a server and waits until it listens.
func startServer(ctx context.Context, name string, args ...string) (*server, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe, append([]string{serverArg}, args...)...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{name: name, cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &s.serverReady)
	}
	if err != nil {
		_ = s.stop()
		return nil, fmt.Errorf("%s server did not start: %w", name, err)
	}
	return s, nil
}

// cpu is the server process's CPU time so far, user and system, from
// /proc (Linux); false where there is none.
func (s *server) cpu() (time.Duration, bool) {
	if s == nil || s.cmd.Process == nil {
		return 0, false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0, false
	}
	return statCPU(string(stat))
}

// statCPU reads utime and stime from a /proc/PID/stat line, in clock ticks
// of 1/100 s (USER_HZ, 100 on every Linux Go runs on).
func statCPU(stat string) (time.Duration, bool) {
	// The command name, in parentheses, may hold spaces: count after it.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, true
}

// stop closes the server's stdin, which ends it, and waits for it.
func (s *server) stop() error {
	_ = s.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
		return errors.New("did not stop within 15 s: killed")
	}
}

// serveHTTP is a server of the http section: a check.Server with the
// baseline handler or keymint's, on a free loopback port. It prints a
// serverReady line once it listens, and serves until its stdin closes.
func serveHTTP(args []string) int {
	fs := flag.NewFlagSet(serverArg, flag.ContinueOnError)
	handler := fs.String("handler", "baseline", "baseline (200 and a fixed body) or keymint (check.NewHandler)")
	tokens := fs.Int("tokens", smallTokens, "keymint: tokens indexed")
	cert := fs.String("cert", "", "serving certificate file")
	key := fs.String("key", "", "its key file")
	profile := fs.String("cpuprofile", "", "write a CPU profile of the serving (not of the index build) to this file")
	redisAddr := fs.String("redis", "", "keymint: keep rate-limit budgets in the Redis at this host:port, as --rate-limit-backend=redis does")
	noLeases := fs.Bool("no-leases", false, "keymint with -redis: one round trip to Redis per check, no leases")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := serve(*handler, *tokens, *cert, *key, *profile, *redisAddr, *noLeases); err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", serverArg, err)
		return 1
	}
	return 0
}

func serve(kind string, tokens int, cert, key, profile, redisAddr string, noLeases bool) error {
	logf.SetLogger(logr.Discard())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		// EOF when the bench closes stdin, or exits.
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()

	var ready serverReady
	var h http.Handler
	switch kind {
	case "baseline":
		h = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(baselineBody)
		})
	case "keymint":
		var err error
		if h, ready.Token, ready.User, err = keymintHandler(tokens, redisAddr, noLeases); err != nil {
			return err
		}
	default:
		return fmt.Errorf("-handler %q: want baseline or keymint", kind)
	}
	url, done, err := listen(ctx, h, cert, key)
	if err != nil {
		return err
	}
	ready.URL = url
	var f *os.File
	if profile != "" {
		if f, err = os.Create(profile); err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(ready); err != nil {
		return err
	}
	err = <-done
	if f != nil {
		pprof.StopCPUProfile()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// listen starts a check.Server with h on a loopback listener it binds, and
// returns its URL once it accepts connections, and the channel of Start's
// return.
func listen(ctx context.Context, h http.Handler, cert, key string) (string, <-chan error, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := ln.Addr().String()
	s := &check.Server{Listener: ln, CertFile: cert, KeyFile: key, Handler: h}
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	err = testenv.Poll(ctx, 10*time.Second, "the check server to listen on "+addr, func(ctx context.Context) error {
		select {
		case err := <-done:
			return testenv.Permanent(fmt.Errorf("it stopped: %w", err))
		default:
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return "https://" + addr, done, err
}

// benchUsers is how many ServiceUsers the tokens are spread across.
const benchUsers = 100

// keymintHandler is the check server's handler with n tokens indexed, and
// one token's plaintext and user name.
func keymintHandler(n int, redisAddr string, noLeases bool) (http.Handler, string, string, error) {
	const ns = "bench"
	index := check.NewIndex()
	for u := range benchUsers {
		index.UpsertUser(&keymintv1alpha1.ServiceUser{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("u%d", u)},
			Spec:       keymintv1alpha1.ServiceUserSpec{Permissions: []string{"links:read", "links:write", "qr:read"}, Groups: []string{"g"}},
		})
	}
	issued := metav1.NewTime(time.Now())
	var plain, user string
	for i := range n {
		p, err := token.Mint("km")
		if err != nil {
			return nil, "", "", err
		}
		u := fmt.Sprintf("u%d", i%benchUsers)
		index.UpsertToken(&keymintv1alpha1.ApiToken{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("t%d", i)},
			Spec: keymintv1alpha1.ApiTokenSpec{
				ServiceUser: u, Scopes: []string{"links:read"},
				Lifetime: &metav1.Duration{Duration: 100 * 365 * 24 * time.Hour},
			},
			Status: keymintv1alpha1.ApiTokenStatus{TokenHash: token.HashString(p), IssuedAt: &issued},
		})
		plain, user = p, check.Username(ns, u)
	}
	h := check.NewHandler(index, clock.RealClock{}, 1_000_000_000, prometheus.NewRegistry())
	if redisAddr != "" {
		// As cmd/keymint sets it up: no retries on the check path.
		client := redis.NewClient(&redis.Options{Addr: redisAddr, MaxRetries: -1, PoolSize: 32})
		l, err := check.NewRedisLimiter(client, check.FailClosed, nil)
		if err != nil {
			return nil, "", "", err
		}
		l.NoLeases = noLeases
		h.Limiter = l
	}
	return h.ServeMux(), plain, user, nil
}
