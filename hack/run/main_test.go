package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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
		done <- serveKeymint(t.Context(), options{keymintBin: bin}, dir, dir, filepath.Join(dir, "keymint.env"), "", "", nil)
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
	p := ports{check: 8443, probe: 40001, webhook: 40002, metrics: 40003}
	args := strings.Join(keymintArgs(certs, p), " ")
	for _, want := range []string{"--metrics-bind-address 127.0.0.1:40003", "--metrics-secure=false"} {
		if !strings.Contains(args, want) {
			t.Errorf("keymint runs with %q, missing %q", args, want)
		}
	}
	env := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(envVars("/x/kubeconfig", certs, []ports{p}, []int{1234}, "")), "\n") {
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
	one := ports{check: 8443, probe: 40001, webhook: 40002, metrics: 40003}
	two := ports{check: 40004, probe: 40005, webhook: 40006, metrics: 40007}
	got := envVars("/x/kubeconfig", certs, []ports{one, two}, []int{11, 22}, "redis://:pw@127.0.0.1:6390/0")
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
	if single := envVars("/x/kubeconfig", certs, []ports{one}, []int{11}, ""); strings.Contains(single, "KEYMINT_CHECK_URLS") {
		t.Errorf("with one replica and no Redis, keymint.env is as before:\n%s", single)
	}
}
