package plugin_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/controllers"
	"github.com/keymint/keymint/internal/plugin"
	"github.com/keymint/keymint/internal/testenv"
	"github.com/keymint/keymint/internal/token"
)

// One control plane for the package's cluster tests, started by the first
// test that needs it (scan tests need none), with keymint's real
// controllers. The controllers see only the namespaces in
// controlledNamespaces: elsewhere a test writes an ApiToken's status itself,
// to pin a state (an expiry two hours ago, a tampered Secret) that the
// controllers would move on from.
var (
	clusterOnce sync.Once
	clusterEnv  *testenv.Environment
	clusterErr  error
	shared      cluster
)

// Namespaces the real controllers manage.
const (
	nsRotate  = "rotate"
	nsRevoke  = "revoke"
	nsApprove = "approve"
)

var controlledNamespaces = []string{nsRotate, nsRevoke, nsApprove}

type cluster struct {
	c          client.Client
	kubeconfig string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if clusterEnv != nil {
		if err := clusterEnv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = max(code, 1)
		}
	}
	os.Exit(code)
}

func startCluster(t *testing.T) cluster {
	t.Helper()
	clusterOnce.Do(func() { clusterErr = bootCluster() })
	if clusterErr != nil {
		t.Fatalf("starting the control plane: %v", clusterErr)
	}
	return shared
}

func bootCluster() error {
	ctx := context.Background()
	controlled := func(o *cache.Options) {
		o.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range controlledNamespaces {
			o.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	env, err := testenv.Run(ctx, testenv.RunInput{
		ManagerOptions: func(o *ctrl.Options) { controlled(&o.Cache) },
		SetupReconcilers: func(ctx context.Context, e *testenv.Environment) error {
			c, err := controllers.NewCache(e.Manager, controlled)
			if err != nil {
				return err
			}
			return controllers.Setup(ctx, e.Manager, controllers.Options{RequesterWebhook: testenv.RequesterWebhookName, Keyring: e.Keyring, Cache: c})
		},
	})
	if err != nil {
		return err
	}
	clusterEnv = env
	dir, err := os.MkdirTemp("", "kubectl-keymint-test-")
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := testenv.WriteKubeconfig(env.Config, kubeconfig); err != nil {
		return err
	}
	for _, ns := range controlledNamespaces {
		if err := env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return err
		}
	}
	shared = cluster{c: env.Client, kubeconfig: kubeconfig}
	return nil
}

// result is what one run of the plugin left behind.
type result struct {
	code           int
	stdout, stderr string
}

// run runs the plugin as `kubectl keymint args...`, against the test cluster
// when one was started.
func (cl cluster) run(t *testing.T, o plugin.Options, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	o.Streams = genericiooptions.IOStreams{In: o.Streams.In, Out: &out, ErrOut: &errOut}
	if o.Streams.In == nil {
		o.Streams.In = strings.NewReader("")
	}
	if cl.kubeconfig != "" {
		args = append([]string{"--kubeconfig", cl.kubeconfig}, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := plugin.Run(ctx, args, o)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

func newNamespace(t *testing.T, cl cluster, name string) {
	t.Helper()
	if err := cl.c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
}

func createUser(t *testing.T, cl cluster, ns, name string) {
	t.Helper()
	if err := cl.c.Create(context.Background(), testenv.ServiceUser(ns, name, testenv.WithPermissions("invoices:read"))); err != nil {
		t.Fatal(err)
	}
}

func createToken(t *testing.T, cl cluster, ns, name, user string, opts ...testenv.ApiTokenOption) *keymintv1alpha1.ApiToken {
	t.Helper()
	tok := testenv.ApiToken(ns, name, user, opts...)
	if err := cl.c.Create(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	return tok
}

// issue plays keymint issuing a token for tok: a Secret with the plaintext
// and a status that records its hash, written through the status
// subresource as the controller writes it.
func issue(t *testing.T, cl cluster, tok *keymintv1alpha1.ApiToken, secretName string, issuedAt time.Time, st keymintv1alpha1.ApiTokenStatus) string {
	t.Helper()
	ctx := context.Background()
	plain, err := token.Mint(token.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: tok.Namespace, Name: secretName},
		Data:       map[string][]byte{keymintv1alpha1.SecretTokenKey: []byte(plain)},
	}
	if err := cl.c.Create(ctx, sec); err != nil {
		t.Fatal(err)
	}
	st.TokenHash = token.HashString(plain)
	st.TokenPrefix = token.Display(plain)
	st.SecretName = secretName
	st.Serial = 1
	st.IssuedAt = &metav1.Time{Time: issuedAt}
	cond := metav1.Condition{Type: keymintv1alpha1.ApiTokenConditionReady, Status: metav1.ConditionTrue,
		Reason: keymintv1alpha1.ApiTokenReasonIssued, LastTransitionTime: metav1.Now()}
	st.Conditions = append(st.Conditions, cond)
	setStatus(t, cl, tok, st)
	return plain
}

func setStatus(t *testing.T, cl cluster, tok *keymintv1alpha1.ApiToken, st keymintv1alpha1.ApiTokenStatus) {
	t.Helper()
	tok.Status = st
	if err := cl.c.Status().Update(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
}

// table splits the plugin's table into rows of cells keyed by header.
func table(t *testing.T, out string) map[string]map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	header := splitCells(lines[0])
	rows := map[string]map[string]string{}
	for _, l := range lines[1:] {
		cells := splitCells(l)
		if len(cells) != len(header) {
			t.Fatalf("row %q has %d cells, header %q has %d", l, len(cells), lines[0], len(header))
		}
		r := map[string]string{}
		for i, h := range header {
			r[h] = cells[i]
		}
		rows[r["NAME"]] = r
	}
	return rows
}

// splitCells splits on runs of two or more spaces: cells themselves hold
// single spaces ("in 6d3h").
func splitCells(line string) []string {
	var cells []string
	for _, c := range strings.Split(line, "  ") {
		if c = strings.TrimSpace(c); c != "" {
			cells = append(cells, c)
		}
	}
	return cells
}

// streamsIn returns streams that read standard input from in; run sets the
// outputs.
func streamsIn(in io.Reader) genericiooptions.IOStreams { return genericiooptions.IOStreams{In: in} }

func objectKey(ns, name string) client.ObjectKey { return client.ObjectKey{Namespace: ns, Name: name} }

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	g := NewWithT(t)
	g.Eventually(cond).WithTimeout(20*time.Second).WithPolling(100*time.Millisecond).Should(BeTrue(), what)
}
