package fault

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
)

const (
	// outageDown is how long kube-apiserver stays dead (issue 11).
	outageDown = 20 * time.Second
	// maxStaleness is keymint's --max-index-staleness default.
	maxStaleness = 10 * time.Second
	// freshBound bounds the time from kube-apiserver answering /healthz
	// again to keymint's index being current (measured 5 to 6 s): keymint
	// tries a refused Watch again within 1.5 s; the restarted kube-apiserver
	// holds it some 3 s while it readies its watch cache, then refuses its
	// old resource version as too old; client-go's reflector lists again
	// after one wait of its backoff (0.8 to 3.2 s so early). Without
	// keymint's retries, the reflector's backoff (waits of up to 30 to 60 s)
	// kept the index stale 20 to 100 s after the return.
	freshBound = 20 * time.Second
	// checkEvery is the pause between two rounds of checks.
	checkEvery = 10 * time.Millisecond
)

// TestAPIServerOutage kills kube-apiserver for 20 s while keymint's check
// server is under load (issue 11): checks go on being answered from the
// index, with expiry still decided by the clock; keymint_index_stale and
// /readyz report the index stale once it is older than
// --max-index-staleness; once kube-apiserver is back, the index is current
// again within freshBound and a new revocation is refused. A token revoked
// before the outage is never accepted, and the check server never fails.
func TestAPIServerOutage(t *testing.T) {
	ctx, c, bin, kubeconfig, dir, api := setupWithAPIServer(t)
	must := mustFor(t)

	const ns = "default"
	// Checks every 10 ms must stay under the rate: 429s are not what this
	// test looks for.
	must(c.Create(ctx, testenv.ServiceUser(ns, "outage", testenv.WithRequestsPerMinute(1_000_000))))
	keymint := start(t, bin, kubeconfig, dir, true)
	httpc := checkClient(t, keymint.caFile)

	check := func(plain string) answer {
		a := answer{sent: time.Now()}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+keymint.checkAddr+"/check", nil)
		req.Header.Set("Authorization", "Bearer "+plain)
		resp, err := httpc.Do(req)
		a.got, a.err = time.Now(), err
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			a.status, a.code = resp.StatusCode, resp.Header.Get("X-Keymint-Error")
		}
		return a
	}
	newToken := func(name string, opts ...testenv.ApiTokenOption) {
		must(c.Create(ctx, testenv.ApiToken(ns, name, "outage", opts...)))
	}
	revoke := func(name string) {
		tok := &keymintv1alpha1.ApiToken{}
		must(c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, tok))
		patch := client.MergeFrom(tok.DeepCopy())
		tok.Spec.Revoked = true
		must(c.Patch(ctx, tok, patch))
	}
	// refusedWithin polls /check until it refuses the token as revoked.
	refusedWithin := func(plain string, bound time.Duration) time.Duration {
		t.Helper()
		begin := time.Now()
		for {
			if a := check(plain); a.status == http.StatusUnauthorized && a.code == "revoked_token" {
				return time.Since(begin)
			}
			if time.Since(begin) > bound {
				t.Fatalf("a revoked token still not refused after %v", bound)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// Before the outage: a valid token, one revoked (and refused), one to
	// revoke after the outage, then one that expires in the middle of it.
	for _, name := range []string{"valid", "revoked", "later"} {
		newToken(name)
	}
	plain := map[string]string{}
	for _, name := range []string{"valid", "revoked", "later"} {
		plain[name], _ = readyToken(ctx, t, c, ns, name)
	}
	revoke("revoked")
	t.Logf("token revoked before the outage refused by /check after %v", refusedWithin(plain["revoked"], 5*time.Second).Round(time.Millisecond))
	// It expires 8 s after the kill, which comes as soon as everything runs.
	newToken("expiring", testenv.WithLifetime(15*time.Second))
	var expiresAt time.Time
	plain["expiring"], expiresAt = readyToken(ctx, t, c, ns, "expiring")
	killAt := expiresAt.Add(-8 * time.Second)
	if time.Until(killAt) < time.Second {
		t.Fatalf("the expiring token was Ready only %v before it was due to expire: the machine is too slow for this test's timings", time.Until(expiresAt))
	}

	// Checks all along, and the staleness signals every 100 ms.
	load := &recorder{}
	obs := &observer{metrics: fmt.Sprintf("http://127.0.0.1:%d/metrics", keymint.Ports.Metrics), probe: "http://" + keymint.probeAddr}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			for _, name := range []string{"valid", "revoked", "expiring", "later"} {
				a := check(plain[name])
				a.token = name
				load.add(a)
			}
			select {
			case <-stop:
				return
			case <-time.After(checkEvery):
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			obs.sample(ctx)
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopLoad)

	// The outage.
	sleepUntil(ctx, t, killAt)
	killing := time.Now()
	must(api.Kill())
	killed := time.Now()
	sleepUntil(ctx, t, killed.Add(outageDown))
	// Down for sure until Start is called; answering from some moment of
	// Start's wait for its readiness, which a watch retrying may see first.
	starting := time.Now()
	must(api.Start())
	back := time.Now()
	t.Logf("kube-apiserver killed, started again %v later, answering %v after the kill (started in %v)",
		outageDown, back.Sub(killed).Round(time.Millisecond), (back.Sub(killed) - outageDown).Round(time.Millisecond))

	// Current again, then a revocation made after the outage is refused.
	var fresh time.Time
	for {
		if s, ok := obs.last(); ok && s.at.After(back) && s.current() {
			fresh = s.at
			break
		}
		if time.Since(back) > freshBound {
			t.Fatalf("the index was not current %v after kube-apiserver answered again; last signals: %s", freshBound, obs.lastString())
		}
		time.Sleep(50 * time.Millisecond)
	}
	revokingLater := time.Now()
	revoke("later")
	refusedWithin(plain["later"], 5*time.Second)
	laterRefused := time.Since(revokingLater)
	time.Sleep(500 * time.Millisecond)
	stopLoad()

	// What the checks answered.
	stats := load.judge(t, judgement{killed: killed, back: back, expiresAt: expiresAt, revokedLater: revokingLater})
	// What the signals said.
	sig := obs.judge(t, killing, killed, starting, fresh)

	t.Logf("checks answered during the outage (%v, kill to kube-apiserver answering): %d (%d with 200), %d in all, %d failed",
		back.Sub(killed).Round(time.Millisecond), stats.duringOutage, stats.okDuringOutage, stats.total, stats.failed)
	t.Logf("expiring token: expired %v after the kill, first refused as expired %v after its expiry",
		expiresAt.Sub(killed).Round(time.Millisecond), stats.expiredAfter.Round(time.Millisecond))
	t.Logf("time to stale: keymint_index_stale_seconds above 0 %v after the kill; keymint_index_stale 1 and /readyz failing %v after it (--max-index-staleness %v)",
		sig.detected.Round(time.Millisecond), sig.stale.Round(time.Millisecond), maxStaleness)
	t.Logf("readiness said: %s", sig.message)
	t.Logf("time to fresh: metric 0 and /readyz passing %v after kube-apiserver answered again (%v after the kill)",
		fresh.Sub(back).Round(time.Millisecond), fresh.Sub(killed).Round(time.Millisecond))
	t.Logf("token revoked after the outage refused by /check %v after the patch was sent", laterRefused.Round(time.Millisecond))
	for _, line := range strings.Split(keymint.log.String(), "\n") {
		if strings.Contains(line, `"check-index"`) {
			t.Logf("keymint: %s", line)
		}
	}
}

// readyToken waits until an ApiToken is issued and returns its plaintext
// and expiry.
func readyToken(ctx context.Context, t *testing.T, c client.Client, ns, name string) (string, time.Time) {
	t.Helper()
	plain, tok, err := testenv.WaitIssued(ctx, c, ns, name, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var expires time.Time
	if tok.Status.ExpiresAt != nil {
		expires = tok.Status.ExpiresAt.Time
	}
	return plain, expires
}

func sleepUntil(ctx context.Context, t *testing.T, at time.Time) {
	t.Helper()
	select {
	case <-time.After(time.Until(at)):
	case <-ctx.Done():
		t.Fatal("the test ran out of time")
	}
}

// answer is one /check.
type answer struct {
	token     string
	sent, got time.Time
	status    int
	code      string // X-Keymint-Error
	err       error
}

// recorder keeps every answer.
type recorder struct {
	mu      sync.Mutex
	answers []answer
}

func (r *recorder) add(a answer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answers = append(r.answers, a)
}

type judgement struct {
	killed, back, expiresAt time.Time
	revokedLater            time.Time // when the patch revoking "later" was sent
}

type checkStats struct {
	total, failed, duringOutage, okDuringOutage int
	expiredAfter                                time.Duration // from the expiry to the first expired_token answer
}

// judge fails t for each answer that breaks the rules, reporting at most
// three per rule.
func (r *recorder) judge(t *testing.T, j judgement) checkStats {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var st checkStats
	broken := map[string]int{}
	report := func(rule string, a answer) {
		t.Helper()
		if broken[rule]++; broken[rule] <= 3 {
			t.Errorf("%s: %s check sent %v after the kill: status %d %q, error %v",
				rule, a.token, a.sent.Sub(j.killed).Round(time.Millisecond), a.status, a.code, a.err)
		}
	}
	var laterRefused time.Time // when a check first refused "later"
	var expired time.Time      // when a check first refused "expiring"
	for _, a := range r.answers {
		st.total++
		if a.err != nil || a.status >= 500 {
			st.failed++
			report("the check server failed", a)
			continue
		}
		if !a.sent.Before(j.killed) && !a.got.After(j.back) {
			st.duringOutage++
			if a.status == http.StatusOK {
				st.okDuringOutage++
			}
		}
		refusedAs := func(code string) bool { return a.status == http.StatusUnauthorized && a.code == code }
		switch a.token {
		case "valid":
			if a.status != http.StatusOK {
				report("the valid token was refused", a)
			}
		case "revoked":
			if !refusedAs("revoked_token") {
				report("the token revoked before the outage was not refused as revoked", a)
			}
		case "expiring":
			switch {
			case a.got.Before(j.expiresAt) && a.status != http.StatusOK:
				report("the expiring token was refused before its expiry", a)
			case a.sent.After(j.expiresAt) && !refusedAs("expired_token"):
				report("the expiring token was not refused as expired after its expiry", a)
			case expired.IsZero() && refusedAs("expired_token"):
				expired = a.got
				st.expiredAfter = expired.Sub(j.expiresAt)
			}
		case "later":
			switch {
			case a.got.Before(j.revokedLater) && a.status != http.StatusOK:
				report("the token revoked after the outage was refused before its revocation", a)
			case !laterRefused.IsZero() && a.sent.After(laterRefused) && !refusedAs("revoked_token"):
				report("the token revoked after the outage was accepted again after a refusal", a)
			case laterRefused.IsZero() && refusedAs("revoked_token"):
				laterRefused = a.got
			}
		}
	}
	// A count that proves the checks ran through the outage, not a rate: a
	// loaded 2-core machine manages far fewer than an idle one.
	if st.duringOutage < 100 {
		t.Errorf("only %d checks answered during the outage: the check server was hardly asked", st.duringOutage)
	}
	if expired.IsZero() {
		t.Error("the expiring token was never refused as expired")
	}
	return st
}

// signals is what keymint's metrics and readiness said at one instant.
type signals struct {
	at           time.Time
	stale        float64            // keymint_index_stale
	staleSeconds map[string]float64 // keymint_index_stale_seconds by kind
	ready        int                // /readyz status
	readyBody    string
	fresh        string // /readyz/index-fresh body
	err          error
}

// current says whether every signal says the index is current.
func (s signals) current() bool {
	if s.err != nil || s.stale != 0 || s.ready != http.StatusOK || len(s.staleSeconds) != 2 {
		return false
	}
	for _, v := range s.staleSeconds {
		if v != 0 {
			return false
		}
	}
	return true
}

func (s signals) String() string {
	return fmt.Sprintf("keymint_index_stale %v, keymint_index_stale_seconds %v, /readyz %d %q, /readyz/index-fresh %q, error %v",
		s.stale, s.staleSeconds, s.ready, s.readyBody, s.fresh, s.err)
}

// observer samples keymint's staleness signals.
type observer struct {
	metrics, probe string
	mu             sync.Mutex
	samples        []signals
}

func (o *observer) sample(ctx context.Context) {
	s := signals{at: time.Now(), staleSeconds: map[string]float64{}, stale: -1}
	get := func(url string) (int, string) {
		if s.err != nil {
			return 0, ""
		}
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			s.err = err
			return 0, ""
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		s.err = err
		return resp.StatusCode, string(body)
	}
	_, metrics := get(o.metrics)
	for _, line := range strings.Split(metrics, "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		if name == "keymint_index_stale" {
			s.stale = v
		} else if kind, ok := strings.CutPrefix(name, `keymint_index_stale_seconds{kind="`); ok {
			s.staleSeconds[strings.TrimSuffix(kind, `"}`)] = v
		}
	}
	s.ready, s.readyBody = get(o.probe + "/readyz")
	_, s.fresh = get(o.probe + "/readyz/index-fresh")
	o.mu.Lock()
	defer o.mu.Unlock()
	o.samples = append(o.samples, s)
}

func (o *observer) last() (signals, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.samples) == 0 {
		return signals{}, false
	}
	return o.samples[len(o.samples)-1], true
}

func (o *observer) lastString() string {
	s, _ := o.last()
	return s.String()
}

type signalTimes struct {
	detected, stale time.Duration // after the kill
	message         string        // what /readyz/index-fresh said
}

// judge checks the signals: current before the kill; stale (the gauge at 1,
// /readyz failing on index-fresh and saying why) from --max-index-staleness
// after the kill, give or take a sample and a second, until kube-apiserver
// is being started again (a watch may reconnect before Start returns);
// current from fresh on.
func (o *observer) judge(t *testing.T, killing, killed, starting, fresh time.Time) signalTimes {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	var st signalTimes
	broken := map[string]int{}
	report := func(rule string, s signals) {
		t.Helper()
		if broken[rule]++; broken[rule] <= 3 {
			t.Errorf("%s, %v after the kill: %s", rule, s.at.Sub(killed).Round(time.Millisecond), s)
		}
	}
	staleFrom := killed.Add(maxStaleness + time.Second)
	for _, s := range o.samples {
		switch {
		case s.err != nil:
			report("metrics or readiness did not answer", s)
		case s.at.Before(killing.Add(-200*time.Millisecond)) || !s.at.Before(fresh):
			if !s.current() {
				report("the index was not reported current", s)
			}
		case s.at.After(staleFrom) && s.at.Before(starting):
			if s.stale != 1 || s.ready != http.StatusInternalServerError || !strings.Contains(s.readyBody, "[-]index-fresh failed") ||
				!strings.Contains(s.readyBody, "[+]check-server ok") ||
				!strings.HasPrefix(s.fresh, "internal server error: token index stale for ") ||
				!strings.Contains(s.fresh, "ApiToken") || !strings.Contains(s.fresh, "ServiceUser") {
				report("the index was not reported stale", s)
			}
		}
		if s.at.After(killed) && s.err == nil {
			if st.detected == 0 && s.staleSeconds["ApiToken"] > 0 && s.staleSeconds["ServiceUser"] > 0 {
				st.detected = s.at.Sub(killed)
			}
			if st.stale == 0 && s.stale == 1 && s.ready != http.StatusOK {
				st.stale, st.message = s.at.Sub(killed), strings.TrimSpace(s.fresh)
			}
			// The watches break as the process dies, a little before
			// Kill returns: allow a second.
			if s.at.Before(killed.Add(maxStaleness-time.Second)) && (s.stale != 0 || s.ready != http.StatusOK) {
				report("the index was reported stale before --max-index-staleness", s)
			}
		}
	}
	if st.detected == 0 || st.stale == 0 {
		t.Errorf("the outage was never reported: detected after %v, stale after %v", st.detected, st.stale)
	}
	return st
}
