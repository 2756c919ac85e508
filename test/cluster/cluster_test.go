// Package cluster runs keymint where its users run it: a one-node Kubernetes
// cluster (make cluster, started once for the whole suite), keymint
// installed from dist/chart with helm, pods that mount their tokens, and
// kube-apiserver asking keymint about bearer tokens through a Service.
//
// It needs root (the kubelet and containerd create namespaces, mounts,
// cgroups and iptables rules); elsewhere it says why and skips.
package cluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/keymint/keymint/hack/cluster/machine"
	"github.com/keymint/keymint/internal/testenv"
)

func TestCluster(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "In-cluster Suite")
}

var (
	root string
	// env is what .dev/cluster.env exports.
	env        map[string]string
	clusterCmd *exec.Cmd
	clusterOut *testenv.LogBuffer
	clusterErr chan error
	before     *machine.State
	// keymintCA trusts keymint's serving certificate.
	keymintCA *x509.CertPool
)

const (
	keymintNS      = "keymint-system"
	checkHost      = "keymint-webhook.keymint-system.svc"
	clusterTimeout = 12 * time.Minute
)

var _ = BeforeSuite(func() {
	if os.Geteuid() != 0 {
		Skip("the in-cluster suite runs a kubelet and containerd, which need root; run make test as root")
	}
	SetDefaultEventuallyTimeout(2 * time.Minute)
	SetDefaultEventuallyPollingInterval(250 * time.Millisecond)
	var err error
	root, err = testenv.RepoRoot()
	Expect(err).NotTo(HaveOccurred())

	tmp := GinkgoT().TempDir()
	bin := filepath.Join(tmp, "keymint-cluster")
	build := exec.Command("go", "build", "-o", bin, "./hack/cluster")
	build.Dir = root
	out, err := build.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), string(out))

	// What make cluster must put back. Its packages come first: installing
	// them is a change to keep.
	before, err = machine.Read()
	Expect(err).NotTo(HaveOccurred())

	By("starting the one-node cluster as make cluster does")
	envFile := filepath.Join(tmp, "cluster.env")
	// In the repository's .dev, so that the component logs outlive a failed run.
	clusterCmd = exec.Command(bin, "-dir", filepath.Join(root, ".dev", "test-cluster"), "-env", envFile,
		"-kubernetes-dir", filepath.Join(root, "bin/k8s/1.36.3"), "-helm", filepath.Join(root, "bin/helm"),
		"-chart", filepath.Join(root, "dist/chart"))
	clusterCmd.Dir = root
	clusterOut = &testenv.LogBuffer{}
	clusterCmd.Stdout, clusterCmd.Stderr = clusterOut, clusterOut
	Expect(clusterCmd.Start()).To(Succeed())
	clusterErr = make(chan error, 1)
	go func() { clusterErr <- clusterCmd.Wait() }()
	deadline := time.Now().Add(clusterTimeout)
	for {
		if _, err := os.Stat(envFile); err == nil {
			break
		}
		select {
		case err := <-clusterErr:
			Fail(fmt.Sprintf("make cluster exited before the cluster was ready (%v):\n%s", err, clusterOut.String()))
		case <-time.After(time.Second):
		}
		if time.Now().After(deadline) {
			Fail(fmt.Sprintf("the cluster was not ready after %s:\n%s", clusterTimeout, clusterOut.String()))
		}
	}
	env = readEnv(envFile)
	Expect(env).To(HaveKey("KUBECONFIG"))
	Expect(env["KEYMINT_IN_CLUSTER_CHECK_URL"]).To(Equal("https://" + checkHost + "/check"))
	Expect(env["CONTAINERD_ADDRESS"]).To(BeAnExistingFile())

	ca := secretData(keymintNS, "keymint-serving-certs", "ca.crt")
	keymintCA = x509.NewCertPool()
	Expect(keymintCA.AppendCertsFromPEM(ca)).To(BeTrue())
})

var _ = AfterSuite(func() {
	if clusterCmd == nil || clusterCmd.Process == nil {
		return
	}
	By("stopping the cluster with Ctrl-C (SIGINT)")
	Expect(clusterCmd.Process.Signal(syscall.SIGINT)).To(Succeed())
	select {
	case err := <-clusterErr:
		Expect(err).NotTo(HaveOccurred(), "make cluster did not stop cleanly:\n%s", clusterOut.String())
	case <-time.After(5 * time.Minute):
		_ = clusterCmd.Process.Kill()
		Fail("make cluster did not stop within 5 minutes:\n" + clusterOut.String())
	}
	after, err := machine.Read()
	Expect(err).NotTo(HaveOccurred())
	Expect(before.Diff(after)).To(BeEmpty(), "make cluster left the machine changed")
})

func readEnv(path string) map[string]string {
	f, err := os.Open(path)
	Expect(err).NotTo(HaveOccurred())
	defer f.Close()
	out := map[string]string{}
	scan := bufio.NewScanner(f)
	for scan.Scan() {
		if k, v, ok := strings.Cut(strings.TrimPrefix(scan.Text(), "export "), "="); ok && !strings.HasPrefix(k, "#") {
			out[k] = v
		}
	}
	return out
}

// kubectl runs kubectl as the cluster admin and returns its output.
func kubectl(args ...string) (string, error) {
	return kubectlIn(nil, args...)
}

func kubectlIn(stdin []byte, args ...string) (string, error) {
	cmd := exec.Command("kubectl", args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+env["KUBECONFIG"])
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustKubectl(args ...string) string {
	GinkgoHelper()
	out, err := kubectl(args...)
	Expect(err).NotTo(HaveOccurred(), "kubectl %s: %s", strings.Join(args, " "), out)
	return out
}

func apply(manifest string) {
	GinkgoHelper()
	out, err := kubectlIn([]byte(manifest), "apply", "-f", "-")
	Expect(err).NotTo(HaveOccurred(), out)
}

func secretData(ns, name, key string) []byte {
	GinkgoHelper()
	var b []byte
	Eventually(func() error {
		out, err := kubectl("-n", ns, "get", "secret", name, "-o", "jsonpath={.data."+strings.ReplaceAll(key, ".", `\.`)+"}")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		b, err = base64.StdEncoding.DecodeString(strings.TrimSpace(out))
		if err == nil && len(b) == 0 {
			err = fmt.Errorf("secret %s/%s has no %s", ns, name, key)
		}
		return err
	}).Should(Succeed())
	return b
}

func clusterIP(ns, service string) string {
	GinkgoHelper()
	return strings.TrimSpace(mustKubectl("-n", ns, "get", "service", service, "-o", "jsonpath={.spec.clusterIP}"))
}

// serviceClient reaches Services from this machine by ClusterIP (kube-proxy's
// rules apply to the node's own traffic too), resolving the Service names
// that certificates carry.
func serviceClient(pool *x509.CertPool, names map[string]string) *http.Client {
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			if ip, ok := names[host]; ok {
				addr = net.JoinHostPort(ip, port)
			}
			return dialer.DialContext(ctx, network, addr)
		},
		// A new connection per request: each one goes through kube-proxy's
		// choice of endpoint, as a client behind the Service would see.
		DisableKeepAlives: true,
	}}
}

// checkClient calls keymint's /check by the Service name pods use.
func checkClient() *http.Client {
	return serviceClient(keymintCA, map[string]string{checkHost: clusterIP(keymintNS, "keymint-webhook")})
}

// check asks /check about token and returns the status.
func check(client *http.Client, token string) (int, error) {
	req, err := http.NewRequest(http.MethodGet, env["KEYMINT_IN_CLUSTER_CHECK_URL"], nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// prober checks a token against /check over and over, as a workload would,
// and counts the answers that were not 200.
type prober struct {
	mu       sync.Mutex
	ok       int
	failures []string
	stop     chan struct{}
	done     chan struct{}
}

func startProber(token string) *prober {
	p := &prober{stop: make(chan struct{}), done: make(chan struct{})}
	client := checkClient()
	go func() {
		defer close(p.done)
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			code, err := check(client, token)
			p.mu.Lock()
			if err == nil && code == http.StatusOK {
				p.ok++
			} else {
				p.failures = append(p.failures, fmt.Sprintf("%s: %d %v", time.Now().Format(time.StampMilli), code, err))
			}
			p.mu.Unlock()
		}
	}()
	return p
}

// finish stops the prober and returns how many checks passed and the
// failures.
func (p *prober) finish() (int, []string) {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ok, p.failures
}

// tokenOf waits for an ApiToken to be issued and returns the token in its
// Secret.
func tokenOf(ns, apiToken, secret string) string {
	GinkgoHelper()
	Eventually(func() (string, error) {
		return kubectl("-n", ns, "get", "apitoken", apiToken, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
	}).Should(Equal("True"))
	return string(secretData(ns, secret, "token"))
}

func jsonField(out string, path ...string) any {
	var v any
	ExpectWithOffset(1, json.Unmarshal([]byte(out), &v)).To(Succeed(), out)
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}
