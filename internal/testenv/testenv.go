// Package testenv is the harness keymint's tests, the bench (hack/bench)
// and make run (hack/run) share: a real kube-apiserver and etcd with the
// keymint CRDs installed (the binaries hack/controlplane builds), keymint
// processes, free ports, bounded waits and the objects the tests write.
//
//   - Run (RunT for one Go test) starts a control plane whose
//     kube-apiserver calls keymint's requester webhook for every ApiToken
//     written, as a cluster with keymint installed does, and a manager
//     against it, set up as a RunInput says; every envtest suite starts its
//     environment this way. StartWithAPIServer starts the control plane
//     alone, with its kube-apiserver to stop, kill and start again. New is
//     the envtest.Environment underneath, for callers that configure and
//     start it themselves (hack/bench, hack/run), with RecordRequesters and
//     ServeRequesters.
//   - BuildKeymint and StartKeymint build cmd/keymint and run it as a
//     process, ready once /readyz answers; StartRedis runs a redis-server.
//   - Listen hands an in-process server a listener on a free loopback port;
//     OnFreePorts gives a child process port numbers, and starts it again
//     on new ones if another process took one first.
//   - Poll waits for what happens by itself, never for longer than it is
//     told, and says what it waited for when it gives up.
//   - ServiceUser and ApiToken build fixtures with options (WithLifetime,
//     WithRotation, ...); Issued, WaitIssued, EventsAbout and Reasons read
//     back what the controllers did.
package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

// KubernetesVersion is the control-plane version the tests run against; the
// Makefile builds it into bin/k8s/<KubernetesVersion>.
const KubernetesVersion = "1.36.3"

// Scheme knows the built-in kinds and keymint's.
var Scheme = newScheme()

func newScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := keymintv1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// RepoRoot returns the directory of keymint's go.mod, found by walking up from
// the working directory (go test runs each package in its own directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// AssetsDir returns the directory holding kube-apiserver and etcd:
// KUBEBUILDER_ASSETS when set, else bin/k8s/<KubernetesVersion> in the repo.
func AssetsDir() (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "bin", "k8s", KubernetesVersion)
	if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); err != nil {
		return "", fmt.Errorf("no kube-apiserver in %s: run `make test` (or `make control-plane`) once to build it", dir)
	}
	return dir, nil
}

// New returns an envtest.Environment that installs keymint's CRDs. Callers add
// API server flags or webhook options before Start.
func New() (*envtest.Environment, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	assets, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	return &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                Scheme,
	}, nil
}

// StartWithAPIServer starts a control plane for one Go test, with no
// manager, stopped when the test ends. It returns its config, a client that
// reads and writes past any cache, and its kube-apiserver, for the test to
// stop and start again while etcd runs on. As in Run's environments,
// kube-apiserver calls keymint's requester webhook (served by the test,
// signing with the key in RecordKeySecret, which it creates) for every
// ApiToken written.
func StartWithAPIServer(t testing.TB) (*rest.Config, client.Client, *APIServer) {
	t.Helper()
	// envtest makes, and removes on Stop, a directory of its own for the
	// serving certificate unless given one: a restart would then serve a
	// new certificate, from a new CA, that no earlier client trusts.
	e, err := boot(t.Context(), false, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Stop() })
	return e.Config, e.Client, &APIServer{s: e.env.ControlPlane.GetAPIServer()}
}

// APIServer is a running control plane's kube-apiserver. Stopped and started
// again, it keeps its address, its serving certificate and CA, its client
// CA (so the users envtest made still authenticate) and, in etcd, its data:
// configs and kubeconfigs written before a stop work after the start.
type APIServer struct{ s *envtest.APIServer }

// Stop stops kube-apiserver as envtest does: SIGTERM, then SIGKILL if it
// has not exited within envtest's stop timeout (20 s unless set). With a
// watch open it takes that long: kube-apiserver stops accepting connections
// at once but goes on serving open watches while it drains.
func (a *APIServer) Stop() error { return a.s.Stop() }

// Start starts kube-apiserver again, on the same port, and returns once it
// answers /healthz. It fails if something else took the port meanwhile.
func (a *APIServer) Start() error { return a.s.Start() }

// Kill kills kube-apiserver with SIGKILL, as a crash or the loss of its node
// would, and returns once it has exited: its sockets are closed, so every
// watch on it ends at once.
func (a *APIServer) Kill() error {
	pid, err := a.pid()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("killing kube-apiserver (pid %d): %w", pid, err)
	}
	// envtest waits for its process, which removes it from /proc. (No
	// envtest Stop: it may not have noted the exit yet, and would signal a
	// process that is gone. Start makes a new process state anyway.)
	return Poll(context.Background(), 10*time.Second, fmt.Sprintf("kube-apiserver (pid %d) to exit after SIGKILL", pid), func(context.Context) error {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, fs.ErrNotExist) {
			return errors.New("still there")
		}
		return nil
	})
}

// pid finds kube-apiserver's process by its command line, which names the
// certificate directory, one of this test's own.
func (a *APIServer) pid() (int, error) {
	want := "--cert-dir=" + a.s.CertDir
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if filepath.Base(args[0]) == "kube-apiserver" && slices.Contains(args, want) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no kube-apiserver process with %s", want)
}

// Occurrences is how many times an Event happened: the events recorder
// folds repeats into one object and counts them in its series.
func Occurrences(e eventsv1.Event) int {
	if e.Series != nil {
		return int(e.Series.Count)
	}
	return max(1, int(e.DeprecatedCount))
}

// LogBuffer keeps what a manager logs, for tests that search it; safe for
// concurrent writers.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WriteKubeconfig writes a control plane's admin credentials to path, for a
// keymint binary (or kubectl) a test or the bench starts.
func WriteKubeconfig(cfg *rest.Config, path string) error {
	return clientcmd.WriteToFile(clientcmdapi.Config{
		Clusters: map[string]*clientcmdapi.Cluster{"envtest": {Server: cfg.Host, CertificateAuthorityData: cfg.CAData}},
		AuthInfos: map[string]*clientcmdapi.AuthInfo{"admin": {
			ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken,
		}},
		Contexts:       map[string]*clientcmdapi.Context{"envtest": {Cluster: "envtest", AuthInfo: "admin"}},
		CurrentContext: "envtest",
	}, path)
}
