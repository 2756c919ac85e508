package main

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/keymint/keymint/internal/testenv"
)

// TestConfigureLocal checks that make run's control plane is the tests' one
// (testenv.New) plus its data directory and token authentication flags.
func TestConfigureLocal(t *testing.T) {
	assets := t.TempDir()
	t.Setenv("KUBEBUILDER_ASSETS", assets) // no binaries needed: nothing starts
	dir := t.TempDir()
	env, err := testenv.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := configureLocal(env, dir, "/x/token-webhook.kubeconfig", "/x/static-tokens.csv"); err != nil {
		t.Fatal(err)
	}

	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if env.BinaryAssetsDirectory != assets {
		t.Errorf("BinaryAssetsDirectory = %q, want %q", env.BinaryAssetsDirectory, assets)
	}
	if want := []string{filepath.Join(root, "config", "crd", "bases")}; !slices.Equal(env.CRDDirectoryPaths, want) || !env.ErrorIfCRDPathMissing {
		t.Errorf("CRDDirectoryPaths = %q (must exist: %v), want %q and must exist", env.CRDDirectoryPaths, env.ErrorIfCRDPathMissing, want)
	}
	if env.Scheme != testenv.Scheme {
		t.Error("the environment does not use testenv.Scheme")
	}

	etcdDir := filepath.Join(dir, "etcd")
	if env.ControlPlane.Etcd == nil || env.ControlPlane.Etcd.DataDir != etcdDir {
		t.Errorf("etcd data directory = %+v, want %s", env.ControlPlane.Etcd, etcdDir)
	}
	if fi, err := os.Stat(etcdDir); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v, %v; want a directory only its owner reads", etcdDir, fi, err)
	}

	args := env.ControlPlane.GetAPIServer().Configure()
	for flag, want := range map[string]string{
		"authentication-token-webhook-config-file": "/x/token-webhook.kubeconfig",
		"authentication-token-webhook-version":     "v1",
		"authentication-token-webhook-cache-ttl":   "5s",
		"token-auth-file":                          "/x/static-tokens.csv",
	} {
		if got := args.Get(flag).Get(nil); !slices.Equal(got, []string{want}) {
			t.Errorf("--%s = %q, want %q", flag, got, want)
		}
	}
}

// TestServeKeymintReturnsWhenKeymintExitsEarly: a keymint that dies before it
// is ready must not leave make run (and its control plane) hanging.
func TestServeKeymintReturnsWhenKeymintExitsEarly(t *testing.T) {
	bin, err := exec.LookPath("false")
	if err != nil {
		t.Skip("no false on PATH")
	}
	dir := t.TempDir()
	done := make(chan error, 1)
	go func() {
		done <- serveKeymint(t.Context(), options{keymintBin: bin}, dir, dir, filepath.Join(dir, "keymint.env"), "", "", nil, nil)
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "exited before it was ready") {
			t.Errorf("serveKeymint = %v, want keymint exited before it was ready", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serveKeymint still waiting 30s after keymint exited")
	}
}

// TestMetricsOnLoopback: keymint.env names the metrics endpoint keymint is
// told to serve, on 127.0.0.1 and over plain HTTP (a plain curl reads it);
// the end-to-end suite curls it on a running make run.
func TestMetricsOnLoopback(t *testing.T) {
	certs := certFiles("/x")
	if o := keymintOptions("/x/keymint", "/x/kubeconfig", certs, nil, nil); !o.Metrics {
		t.Error("make run starts keymint without its metrics server")
	}
	p := testenv.KeymintPorts{Check: 8443, Probe: 40001, Webhook: 40002, Metrics: 40003}
	env := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(envVars("/x/kubeconfig", certs, []testenv.KeymintPorts{p}, []int{1234}, "", "/x/leak-report-gitlab-token")), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("keymint.env line %q is not NAME=value", line)
		}
		env[k] = v
	}
	for k, want := range map[string]string{
		"KUBECONFIG":          "/x/kubeconfig",
		"KEYMINT_CHECK_URL":   "https://127.0.0.1:8443",
		"KEYMINT_CA_FILE":     certs.CAFile,
		"KEYMINT_METRICS_URL": "http://127.0.0.1:40003/metrics",
		// The file, never the token in it.
		"KEYMINT_LEAK_REPORT_GITLAB_TOKEN_FILE": "/x/leak-report-gitlab-token",
	} {
		if env[k] != want {
			t.Errorf("keymint.env %s=%q, want %q", k, env[k], want)
		}
	}
}

// TestEnvOfReplicas: with two replicas sharing a local Redis, keymint.env
// lists every replica's check URL, metrics URL and process, and the Redis;
// the first replica's stay in the single-valued names.
func TestEnvOfReplicas(t *testing.T) {
	certs := certFiles("/x")
	one := testenv.KeymintPorts{Check: 8443, Probe: 40001, Webhook: 40002, Metrics: 40003}
	two := testenv.KeymintPorts{Check: 40004, Probe: 40005, Webhook: 40006, Metrics: 40007}
	got := envVars("/x/kubeconfig", certs, []testenv.KeymintPorts{one, two}, []int{11, 22}, "redis://:pw@127.0.0.1:6390/0", "/x/t")
	for _, want := range []string{
		"KEYMINT_CHECK_URL=https://127.0.0.1:8443\n",
		"KEYMINT_CHECK_URLS=\"https://127.0.0.1:8443 https://127.0.0.1:40004\"\n",
		"KEYMINT_METRICS_URLS=\"http://127.0.0.1:40003/metrics http://127.0.0.1:40007/metrics\"\n",
		"KEYMINT_PIDS=\"11 22\"\n",
		"KEYMINT_REDIS_URL=redis://:pw@127.0.0.1:6390/0\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("keymint.env lacks %q:\n%s", want, got)
		}
	}
	if single := envVars("/x/kubeconfig", certs, []testenv.KeymintPorts{one}, []int{11}, "", "/x/t"); strings.Contains(single, "KEYMINT_CHECK_URLS") {
		t.Errorf("with one replica and no Redis, keymint.env is as before:\n%s", single)
	}
}

// TestAwaitUsableRecordKey: with a record key Secret keymint would refuse,
// make run does not start keymint (which would exit and stop make run and
// its control plane); it says once what is wrong, names the Secret and the
// kubectl commands that repair or delete it, never changes the Secret
// itself, and goes on once it is fixed.
func TestAwaitUsableRecordKey(t *testing.T) {
	scheme := runtime.NewScheme()
	_ = corev1.AddToScheme(scheme)
	bad := func() *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: recordKey.Namespace, Name: recordKey.Name},
			Data: map[string][]byte{"active": []byte("k1"), "k1": []byte("too short")}}
	}

	t.Run("unusable, then deleted by hand", func(t *testing.T) {
		c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(bad()).Build()
		out := &testenv.LogBuffer{}
		done := make(chan error, 1)
		go func() { done <- awaitUsableRecordKey(t.Context(), c, "/x/.dev/kubeconfig", out, 10*time.Millisecond) }()

		deadline := time.After(10 * time.Second)
		for !strings.Contains(out.String(), "kubectl -n keymint-system delete secret") {
			select {
			case err := <-done:
				t.Fatalf("awaitUsableRecordKey returned %v with an unusable key Secret; keymint would exit at start", err)
			case <-deadline:
				t.Fatalf("no help after 10s:\n%s", out.String())
			case <-time.After(10 * time.Millisecond):
			}
		}
		time.Sleep(100 * time.Millisecond) // several more checks
		help := out.String()
		for _, want := range []string{
			"keymint cannot start: record key Secret keymint-system/keymint-record-key is unusable: key \"k1\" has 9 bytes; at least 32 are needed",
			"never replaces",
			"export KUBECONFIG=/x/.dev/kubeconfig",
			"kubectl -n keymint-system edit secret keymint-record-key",
			"kubectl -n keymint-system delete secret keymint-record-key",
		} {
			if !strings.Contains(help, want) {
				t.Errorf("the help lacks %q:\n%s", want, help)
			}
		}
		if n := strings.Count(help, "keymint cannot start"); n != 1 {
			t.Errorf("the help is printed %d times, want once:\n%s", n, help)
		}
		got := &corev1.Secret{}
		if err := c.Get(t.Context(), recordKey, got); err != nil || string(got.Data["k1"]) != "too short" {
			t.Fatalf("make run changed the key Secret (%v): %v", err, got.Data)
		}

		if err := c.Delete(t.Context(), got); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("awaitUsableRecordKey = %v after the Secret was deleted, want nil (keymint creates a new one)", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("still waiting 10s after the Secret was deleted")
		}
	})

	t.Run("usable or absent: no wait, no word", func(t *testing.T) {
		usable := bad()
		usable.Data["k1"] = []byte(strings.Repeat("k", 32))
		for name, c := range map[string]client.Reader{
			"absent": fake.NewClientBuilder().WithScheme(scheme).Build(),
			"usable": fake.NewClientBuilder().WithScheme(scheme).WithObjects(usable).Build(),
		} {
			out := &testenv.LogBuffer{}
			if err := awaitUsableRecordKey(t.Context(), c, "", out, time.Hour); err != nil || out.String() != "" {
				t.Errorf("%s: awaitUsableRecordKey = %v, printed %q", name, err, out.String())
			}
		}
	})

	t.Run("Ctrl-C while unusable", func(t *testing.T) {
		c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(bad()).Build()
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		err := awaitUsableRecordKey(ctx, c, "", io.Discard, time.Hour)
		if err == nil || !strings.Contains(err.Error(), "keymint-system/keymint-record-key") {
			t.Errorf("awaitUsableRecordKey = %v, want an error naming the Secret", err)
		}
	})
}

// TestServeKeymintWaitsForTheRecordKey: keymint is not started while the
// record key cannot be used.
func TestServeKeymintWaitsForTheRecordKey(t *testing.T) {
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	bin := filepath.Join(dir, "keymint")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\ntouch "+started+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	refused := errors.New("record key unusable")
	err := serveKeymint(t.Context(), options{keymintBin: bin}, dir, dir, filepath.Join(dir, "keymint.env"), "", "", nil,
		func(context.Context) error { return refused })
	if !errors.Is(err, refused) {
		t.Errorf("serveKeymint = %v, want the record key's error", err)
	}
	if _, err := os.Stat(started); err == nil {
		t.Error("keymint was started with a record key it cannot use")
	}
}

// TestLeakReportToken: make run keeps GitLab's leak report token in Secret
// keymint-system/keymint-leak-report-gitlab (key token), made once, random,
// and kept across runs, and copies it into a file only its owner reads,
// which keymint is pointed at.
func TestLeakReportToken(t *testing.T) {
	scheme := runtime.NewScheme()
	_ = corev1.AddToScheme(scheme)
	ctx := t.Context()
	file := filepath.Join(t.TempDir(), ".dev", "leak-report-gitlab-token")
	check := func(t *testing.T, c client.Client) string {
		t.Helper()
		secret := &corev1.Secret{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: "keymint-system", Name: "keymint-leak-report-gitlab"}, secret); err != nil {
			t.Fatal(err)
		}
		tok := string(secret.Data["token"])
		got, err := os.ReadFile(file)
		if err != nil || string(got) != tok {
			t.Fatalf("%s holds %d bytes (%v), not the Secret's token", file, len(got), err)
		}
		if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want mode 0600", file, fi.Mode(), err)
		}
		return tok
	}

	c := fake.NewClientBuilder().WithScheme(scheme).Build()
	if err := syncLeakReportToken(ctx, c, file); err != nil {
		t.Fatal(err)
	}
	first := check(t, c)
	if len(first) != 64 || strings.Trim(first, "0123456789abcdef") != "" {
		t.Errorf("the token is %d characters, want 32 random bytes in hex", len(first))
	}

	// The next run keeps it, and puts the file right whatever it was.
	if err := os.WriteFile(file, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syncLeakReportToken(ctx, c, file); err != nil {
		t.Fatal(err)
	}
	if again := check(t, c); again != first {
		t.Error("a second run changed the token: a GitLab configured with the first would be refused")
	}

	// A Secret without a token gets one.
	empty := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "keymint-system", Name: "keymint-leak-report-gitlab"}}
	c = fake.NewClientBuilder().WithScheme(scheme).WithObjects(empty).Build()
	if err := syncLeakReportToken(ctx, c, file); err != nil {
		t.Fatal(err)
	}
	if tok := check(t, c); len(tok) != 64 || tok == first {
		t.Errorf("the empty Secret got a token of %d characters, the same as before: %v", len(tok), tok == first)
	}
}

// TestServeKeymintTurnsLeakReportsOn: keymint runs with both forms of leak
// reports, GitLab's reading the token file make run writes, and with the
// trusted proxies -trusted-proxy-cidrs names.
func TestServeKeymintTurnsLeakReportsOn(t *testing.T) {
	dir := t.TempDir()
	argsFile := filepath.Join(dir, "args")
	bin := filepath.Join(dir, "keymint")
	// A keymint that writes down its arguments and exits.
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nprintf '%s\\n' \"$@\" > "+argsFile+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := serveKeymint(t.Context(), options{keymintBin: bin, trustedProxies: "127.0.0.1/32"}, dir, dir, filepath.Join(dir, "keymint.env"), "", "", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") {
		t.Fatalf("serveKeymint = %v, want keymint exited before it was ready", err)
	}
	raw, err := os.ReadFile(argsFile)
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(strings.TrimSpace(string(raw)), "\n")
	for _, want := range []string{"--leak-reports", "--leak-report-gitlab-token-file=" + filepath.Join(dir, "leak-report-gitlab-token"),
		"--trusted-proxy-cidrs=127.0.0.1/32"} {
		if !slices.Contains(args, want) {
			t.Errorf("keymint's args %q lack %s", args, want)
		}
	}
}

// TestNextSteps: the ready banner says where the leak report endpoints and
// GitLab's token are, with a curl for each form, and never holds the token.
func TestNextSteps(t *testing.T) {
	root := t.TempDir()
	file := leakReportTokenFile(filepath.Join(root, ".dev"))
	secret := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	if err := writePrivate(file, []byte(secret)); err != nil {
		t.Fatal(err)
	}
	banner := nextSteps(root, filepath.Join(root, ".dev", "keymint.env"), false, "https://127.0.0.1:8443", file)
	for _, want := range []string{
		"source .dev/keymint.env",
		"GitHub's form, unauthenticated:  https://127.0.0.1:8443/credentials/revoke\n",
		"GitLab's Token Revocation API:   https://127.0.0.1:8443/v1/revocable_token_types\n",
		"https://127.0.0.1:8443/v1/revoke_tokens\n",
		"Secret keymint-system/keymint-leak-report-gitlab (key token)",
		".dev/leak-report-gitlab-token (--leak-report-gitlab-token-file",
		`curl --cacert "$KEYMINT_CA_FILE" -H 'Content-Type: application/json' -d '{"credentials": ["'"$TOKEN"'"]}' "$KEYMINT_CHECK_URL/credentials/revoke"`,
		`bin/kubectl-keymint scan --report "$KEYMINT_CHECK_URL" --report-ca-file "$KEYMINT_CA_FILE" -`,
		`-H @<(printf 'Authorization: %s\n' "$(<.dev/leak-report-gitlab-token)") "$KEYMINT_CHECK_URL/v1/revocable_token_types"`,
		`"type": "gitleaks_rule_id_keymint_api_token", "token": "'"$TOKEN"'"`,
		`"$KEYMINT_CHECK_URL/v1/revoke_tokens"`,
	} {
		if !strings.Contains(banner, want) {
			t.Errorf("the banner lacks %q:\n%s", want, banner)
		}
	}
	if strings.Contains(banner, secret[:16]) {
		t.Errorf("the banner holds GitLab's token:\n%s", banner)
	}
	if !strings.HasSuffix(banner, "\nCtrl-C here stops keymint, kube-apiserver and etcd.\n\n") {
		t.Errorf("the banner does not end with how to stop make run:\n%s", banner)
	}
	if strings.Contains(banner, "KEYMINT_CHECK_URLS") {
		t.Error("the replicas' lines with one replica")
	}
}
