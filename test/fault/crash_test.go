// Package fault runs keymint's real binary against a real control plane and
// breaks things on purpose: nothing may be lost.
package fault

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
)

const tokens = 200

// TestKill9WhileIssuing kills the manager with SIGKILL while it issues 200
// tokens, starts it again, and checks that every ApiToken ends Ready with
// exactly one accepted token whose hash is its Secret's, that every token
// Secret belongs to an ApiToken, and that every record has its Secret.
func TestKill9WhileIssuing(t *testing.T) {
	ctx, c, bin, kubeconfig, dir := setup(t)
	must := mustFor(t)

	const ns = "default"
	must(c.Create(ctx, testenv.ServiceUser(ns, "batch", testenv.WithPermissions("jobs:run"))))
	for i := range tokens {
		must(c.Create(ctx, testenv.ApiToken(ns, fmt.Sprintf("t%03d", i), "batch")))
	}

	ready := func() int {
		var list keymintv1alpha1.ApiTokenList
		must(c.List(ctx, &list, client.InNamespace(ns)))
		n := 0
		for _, tok := range list.Items {
			if meta.IsStatusConditionTrue(tok.Status.Conditions, keymintv1alpha1.ApiTokenConditionReady) {
				n++
			}
		}
		return n
	}

	// First run: killed with SIGKILL part-way through issuing.
	first := start(t, bin, kubeconfig, dir, false)
	for ready() < tokens/4 {
		if ctx.Err() != nil {
			t.Fatal("the first run issued too few tokens before the deadline")
		}
		time.Sleep(20 * time.Millisecond)
	}
	must(first.Kill())
	killedAt := ready()
	t.Logf("killed with SIGKILL after %d of %d tokens were Ready; %d Secrets held a token their status did not name yet",
		killedAt, tokens, writtenBeforeStatus(t, c, ns))
	if killedAt >= tokens {
		t.Fatal("every token was issued before the kill: the test proves nothing; issue more tokens")
	}

	// Second run: finishes the job.
	start(t, bin, kubeconfig, dir, false)
	for ready() < tokens {
		if ctx.Err() != nil {
			t.Fatalf("only %d of %d tokens Ready after the restart", ready(), tokens)
		}
		time.Sleep(100 * time.Millisecond)
	}

	var list keymintv1alpha1.ApiTokenList
	must(c.List(ctx, &list, client.InNamespace(ns)))
	owners := map[types.UID]string{}
	for _, tok := range list.Items {
		owners[tok.UID] = tok.Name
		sec := &corev1.Secret{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: tok.Name}, sec); err != nil {
			t.Errorf("%s: Ready, but its Secret: %v", tok.Name, err)
			continue
		}
		plain := string(sec.Data[keymintv1alpha1.SecretTokenKey])
		switch {
		case !token.Matches(plain, tok.Status.TokenHash):
			t.Errorf("%s: the Secret's token is not the one the status accepts", tok.Name)
		case len(tok.Status.PreviousTokens) != 0:
			t.Errorf("%s: %d more hashes accepted besides the current one", tok.Name, len(tok.Status.PreviousTokens))
		case sec.Annotations[keymintv1alpha1.RecordSignatureAnnotation] == "":
			t.Errorf("%s: the Secret carries no signed record", tok.Name)
		}
	}
	var secrets corev1.SecretList
	must(c.List(ctx, &secrets, client.InNamespace(ns), client.HasLabels{keymintv1alpha1.TokenLabel}))
	if len(secrets.Items) != tokens {
		t.Errorf("%d token Secrets for %d ApiTokens", len(secrets.Items), tokens)
	}
	for _, sec := range secrets.Items {
		owner := metav1.GetControllerOf(&sec)
		if owner == nil || owners[owner.UID] != sec.Name {
			t.Errorf("Secret %s belongs to no ApiToken of its name", sec.Name)
		}
	}
}

// writtenBeforeStatus counts token Secrets whose ApiToken status names no
// token yet: the crash window between the two writes.
func writtenBeforeStatus(t *testing.T, c client.Client, ns string) int {
	t.Helper()
	var list keymintv1alpha1.ApiTokenList
	if err := c.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, tok := range list.Items {
		sec := &corev1.Secret{}
		if tok.Status.TokenHash == "" && c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: tok.Name}, sec) == nil &&
			len(sec.Data[keymintv1alpha1.SecretTokenKey]) > 0 {
			n++
		}
	}
	return n
}

// replica is one running keymint.
type replica struct {
	*testenv.Keymint
	checkAddr string             // host:port of its check server
	probeAddr string             // host:port of its /healthz and /readyz
	caFile    string             // the CA its self-signed check certificate chains to
	log       *testenv.LogBuffer // its stdout and stderr
}

// start runs keymint as a deployment would, on free loopback ports, with
// its metrics server if asked and extra flags, and waits until it is
// ready. It is stopped when the test ends, if it still runs.
func start(t *testing.T, bin, kubeconfig, dir string, metrics bool, extra ...string) replica {
	t.Helper()
	certs, err := os.MkdirTemp(dir, "certs-")
	if err != nil {
		t.Fatal(err)
	}
	log := &testenv.LogBuffer{}
	k, err := testenv.StartKeymint(t.Context(), testenv.KeymintOptions{
		Binary: bin, Kubeconfig: kubeconfig, Metrics: metrics, Log: log, ReadyWithin: time.Minute,
		Args: append([]string{"--check-self-signed-dir", certs, "--mutating-webhook-configuration", testenv.RequesterWebhookName}, extra...),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Stop() })
	return replica{
		Keymint: k, log: log, caFile: filepath.Join(certs, "ca.crt"),
		checkAddr: "127.0.0.1:" + strconv.Itoa(k.Ports.Check), probeAddr: "127.0.0.1:" + strconv.Itoa(k.Ports.Probe),
	}
}

// setup builds the keymint binary, starts a control plane with keymint's
// namespace, and writes a kubeconfig for the binary. The context ends the
// test after three minutes at most.
func setup(t *testing.T) (ctx context.Context, c client.Client, bin, kubeconfig, dir string) {
	t.Helper()
	ctx, c, bin, kubeconfig, dir, _ = setupWithAPIServer(t)
	return ctx, c, bin, kubeconfig, dir
}

// setupWithAPIServer is setup, and also returns the kube-apiserver, for a
// test to kill and start again.
func setupWithAPIServer(t *testing.T) (ctx context.Context, c client.Client, bin, kubeconfig, dir string, api *testenv.APIServer) {
	t.Helper()
	var err error
	dir = t.TempDir()
	if bin, err = testenv.BuildKeymint(t.Context(), dir); err != nil {
		t.Fatal(err)
	}
	cfg, c, api := testenv.StartWithAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	must := mustFor(t)
	// keymint-system exists: the environment's requester webhook keeps the
	// record key there, as keymint does.
	kubeconfig = filepath.Join(dir, "kubeconfig")
	must(testenv.WriteKubeconfig(cfg, kubeconfig))
	return ctx, c, bin, kubeconfig, dir, api
}

// mustFor fails t on an error.
func mustFor(t *testing.T) func(error) {
	return func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}
