package fault

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keymint/keymint/internal/testenv"
)

// leaseDuration is controller-runtime's default, which keymint keeps.
const leaseDuration = 15 * time.Second

// TestLeaderKilled runs two replicas with leader election, kills the leader
// with SIGKILL, and checks that the other takes over reconciling within
// about one lease duration, while its check server never stops answering.
func TestLeaderKilled(t *testing.T) {
	ctx, c, bin, kubeconfig, dir := setup(t)
	must := mustFor(t)

	const ns = "default"
	// Checks every 20 ms must stay under the rate: 429s are not outages.
	must(c.Create(ctx, testenv.ServiceUser(ns, "ci", testenv.WithRequestsPerMinute(100_000))))
	readyToken := func(name string) string {
		t.Helper()
		plain, _, err := testenv.WaitIssued(ctx, c, ns, name, time.Minute)
		must(err)
		return plain
	}

	// The leader starts first and issues a token; the second replica waits.
	leader := start(t, bin, kubeconfig, dir, false, "--leader-elect")
	must(c.Create(ctx, testenv.ApiToken(ns, "before", "ci")))
	plain := readyToken("before")
	survivor := start(t, bin, kubeconfig, dir, false, "--leader-elect")

	// Check with the survivor all along.
	httpc := checkClient(t, survivor.caFile)
	var answered, failed atomic.Int64
	stopChecks := make(chan struct{})
	started := time.Now()
	checksDone := make(chan struct{})
	go func() {
		defer close(checksDone)
		for {
			select {
			case <-stopChecks:
				return
			default:
			}
			req, _ := http.NewRequest(http.MethodGet, "https://"+survivor.checkAddr+"/check", nil)
			req.Header.Set("Authorization", "Bearer "+plain)
			resp, err := httpc.Do(req)
			if err != nil || resp.StatusCode != http.StatusOK {
				if n := failed.Add(1); n <= 3 {
					status := 0
					if resp != nil {
						status = resp.StatusCode
					}
					t.Logf("check %v after the start: status %d, error %v", time.Since(started).Round(time.Millisecond), status, err)
				}
			} else {
				answered.Add(1)
			}
			if resp != nil {
				resp.Body.Close()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	must(leader.Kill())
	killed := time.Now()
	must(c.Create(ctx, testenv.ApiToken(ns, "after", "ci")))
	readyToken("after")
	takeover := time.Since(killed)
	close(stopChecks)
	<-checksDone

	t.Logf("leader killed: the survivor issued a new token %v later (lease duration %v); checks on the survivor: %d answered 200, %d failed",
		takeover.Round(time.Millisecond), leaseDuration, answered.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d checks failed on the survivor during the takeover", failed.Load())
	}
	if answered.Load() < 100 {
		t.Errorf("only %d checks answered: the survivor was not really asked", answered.Load())
	}
	// One lease duration for the dead leader's lease to lapse, one retry
	// period (2 s) to take it, and slack for a loaded machine.
	if takeover > leaseDuration+10*time.Second {
		t.Errorf("the survivor took %v to reconcile, more than a lease duration (%v) and its retry", takeover, leaseDuration)
	}
}

func checkClient(t *testing.T, caFile string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}}}
}
