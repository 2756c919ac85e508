package fault

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
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
	must(c.Create(ctx, &keymintv1alpha1.ServiceUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ci"},
		// Checks every 20 ms must stay under the rate: 429s are not outages.
		Spec: keymintv1alpha1.ServiceUserSpec{TokenPolicy: keymintv1alpha1.TokenPolicy{RequestsPerMinute: 100_000}},
	}))
	readyToken := func(name string) string {
		t.Helper()
		for {
			tok := &keymintv1alpha1.ApiToken{}
			sec := &corev1.Secret{}
			if c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, tok) == nil &&
				meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady) &&
				c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, sec) == nil {
				return string(sec.Data[keymintv1alpha1.SecretTokenKey])
			}
			if ctx.Err() != nil {
				t.Fatalf("ApiToken %s never became Ready", name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// The leader starts first and issues a token; the second replica waits.
	leader := start(t, bin, kubeconfig, dir, "--leader-elect")
	must(c.Create(ctx, &keymintv1alpha1.ApiToken{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "before"}, Spec: keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci"}}))
	plain := readyToken("before")
	survivor := start(t, bin, kubeconfig, dir, "--leader-elect")
	t.Cleanup(func() { _ = survivor.Process.Signal(syscall.SIGTERM); _ = survivor.Wait() })

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

	must(leader.Process.Signal(syscall.SIGKILL))
	_ = leader.Wait()
	killed := time.Now()
	must(c.Create(ctx, &keymintv1alpha1.ApiToken{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "after"}, Spec: keymintv1alpha1.ApiTokenSpec{ServiceUser: "ci"}}))
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
