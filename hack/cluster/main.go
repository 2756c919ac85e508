// Command cluster runs a one-node Kubernetes cluster on this machine, in the
// foreground, and installs keymint into it with its Helm chart: etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, the kubelet on
// containerd, kube-proxy, a CNI bridge and CoreDNS, every component a host
// process (as Kubernetes' hack/local-up-cluster.sh runs them) and every image
// built here. Ctrl-C stops it and puts the machine back as it was found.
//
// It runs as root and expects the binaries `make control-plane` builds.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/keymint/keymint/hack/cluster/machine"
)

//go:embed manifests/addons.yaml
var addonsManifest []byte

func main() {
	var o options
	flag.StringVar(&o.dir, "dir", ".dev/cluster", "directory for the cluster's state, removed on stop; component logs go to DIR-logs and stay")
	flag.StringVar(&o.envFile, "env", ".dev/cluster.env", "file to write KUBECONFIG, KEYMINT_IN_CLUSTER_CHECK_URL and CONTAINERD_ADDRESS into once the cluster is ready")
	flag.StringVar(&o.bin, "kubernetes-dir", "bin/k8s/1.36.3", "directory holding kube (and its links), etcd and coredns from make control-plane")
	flag.StringVar(&o.helm, "helm", "bin/helm", "helm binary")
	flag.StringVar(&o.chart, "chart", "dist/chart", "keymint's Helm chart")
	flag.BoolVar(&o.keymint, "keymint", true, "install keymint with Helm and point kube-apiserver's token webhook at it")
	flag.BoolVar(&o.down, "down", false, "only clean up after a cluster that was killed (SIGKILL, a crash) and could not clean up itself, then exit")
	flag.Parse()

	// SIGHUP too: a closed terminal or ssh session must clean up like Ctrl-C.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	c, err := newCluster(o, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster: %v\n", err)
		os.Exit(1)
	}
	unlock, err := lock()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cluster: %v\n", err)
		os.Exit(1)
	}
	defer unlock()
	if o.down {
		if err := c.cleanupKilledRun(); err != nil {
			fmt.Fprintf(os.Stderr, "cluster: %v\n", err)
			unlock()
			os.Exit(1)
		}
		return
	}
	code := 0
	if err := c.up(ctx); err != nil {
		if ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "\n==> the cluster did not start: %v\n    component logs: %s\n\n", err, c.logs)
			code = 1
		}
	} else {
		c.printNextSteps(os.Stdout)
		select {
		case <-ctx.Done():
		case p := <-c.exited:
			fmt.Fprintf(os.Stderr, "\n==> %s exited (%v); stopping the cluster. Its log: %s\n", p.name, p.err, p.logFile)
			code = 1
		}
	}
	// From here a Ctrl-C (a second one, or make's) must not cut the cleanup
	// short: it would leave mounts, rules and processes behind.
	stop()
	signal.Ignore(os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	fmt.Fprintln(os.Stderr, "\n==> stopping the cluster and putting the machine back as it was")
	if err := c.down(); err != nil {
		fmt.Fprintf(os.Stderr, "==> %v\n", err)
		code = 1
	}
	unlock()
	os.Exit(code)
}

// lockFile keeps two clusters (make cluster, and make test's in-cluster
// suite) from running at once: they would share ports, the bridge and runDir.
const lockFile = "/run/keymint-cluster.lock"

func lock() (func(), error) {
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another one-node cluster runs on this machine (make cluster, or make test's in-cluster suite): stop it first (%w)", err)
	}
	// The file stays: removing it would let a run that opened it lock it
	// while another creates and locks a new one.
	return func() { f.Close() }, nil
}

type options struct {
	dir, envFile, bin, helm, chart string
	keymint, down                  bool
}

// cluster is one run of the cluster: its directories, its processes, and
// what the machine looked like before it started.
type cluster struct {
	options
	repo   string // the repository, where images are built from
	run    string // sockets and runtime state, on tmpfs
	logs   string
	nodeIP string
	pki    *pki
	log    io.Writer
	procs  []*process
	exited chan *process
	before *machine.State
	// loadedModules are the kernel modules this run loaded.
	loadedModules []string
}

// moduleLoaded reports whether a kernel module is loaded (not built in).
func moduleLoaded(name string) bool {
	b, _ := os.ReadFile("/proc/modules")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+" ") {
			return true
		}
	}
	return false
}

// runDir is short: unix socket paths are limited to 108 bytes.
const runDir = "/run/keymint-cluster"

func newCluster(o options, log io.Writer) (*cluster, error) {
	repo, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	for _, p := range []*string{&o.dir, &o.envFile, &o.bin, &o.helm, &o.chart} {
		if *p, err = filepath.Abs(*p); err != nil {
			return nil, err
		}
	}
	return &cluster{options: o, repo: repo, run: runDir, logs: o.dir + "-logs",
		log: log, exited: make(chan *process, 16)}, nil
}

func (c *cluster) path(name string) string { return filepath.Join(c.dir, name) }

func (c *cluster) step(format string, args ...any) {
	fmt.Fprintf(c.log, "cluster: "+format+"\n", args...)
}

// stateDir holds what a cleanup needs (the machine's state before the
// cluster, its processes, its directories), where only root writes and
// nothing outlives a reboot, as nothing it describes does.
const stateDir = "/run/keymint-cluster-state"

// beforeFile records the machine's state before the cluster changed it; its
// presence at start means a run that never cleaned up.
func (c *cluster) beforeFile() string { return filepath.Join(stateDir, "machine-before.json") }

// runFile records the run's directory and env file, for a cleanup started
// with other flags.
func (c *cluster) runFile() string { return filepath.Join(stateDir, "run") }

// up starts every component and installs keymint.
func (c *cluster) up(ctx context.Context) error {
	start := time.Now()
	if err := c.preflight(ctx); err != nil {
		return err
	}
	var err error
	if c.before, err = machine.Read(); err != nil {
		return fmt.Errorf("reading the machine's state: %w", err)
	}
	for _, d := range []string{c.dir, c.run, c.logs, stateDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := os.WriteFile(c.path(markerFile), nil, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(c.runFile(), []byte(c.dir+"\n"+c.envFile+"\n"), 0o600); err != nil {
		return err
	}
	if err := c.before.Save(c.beforeFile()); err != nil {
		return err
	}
	if c.nodeIP, err = nodeIP(); err != nil {
		return err
	}
	if err := c.writeConfigs(); err != nil {
		return err
	}
	if err := setSysctls(map[string]string{"net/bridge/bridge-nf-call-iptables": "1", "net/bridge/bridge-nf-call-ip6tables": "1", "net/ipv4/ip_forward": "1"}); err != nil {
		return err
	}

	c.step("building images (keymint, pause, coredns, testapp)")
	archives, err := c.buildImages(ctx, c.path("images"))
	if err != nil {
		return err
	}
	if err := c.startContainerd(ctx); err != nil {
		return err
	}
	if err := c.importImages(ctx, archives); err != nil {
		return err
	}
	if err := c.startControlPlane(ctx, nil); err != nil {
		return err
	}
	if err := c.startNode(ctx); err != nil {
		return err
	}
	if err := c.kubectl(ctx, addonsManifest, "apply", "-f", "-"); err != nil {
		return fmt.Errorf("installing CoreDNS and kube-apiserver's kubelet access: %w", err)
	}
	if err := c.waitRollout(ctx, "kube-system", "deployment/coredns"); err != nil {
		return err
	}
	if c.keymint {
		if err := c.installKeymint(ctx); err != nil {
			return err
		}
	}
	if err := c.writeEnv(); err != nil {
		return err
	}
	c.step("ready in %s", time.Since(start).Round(time.Second))
	return nil
}

// preflight checks for root, installs the Debian packages the node needs if
// any is missing, and cleans up after a run that was killed.
func (c *cluster) preflight(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("the cluster needs root: the kubelet and containerd create namespaces, mounts, cgroups and iptables rules")
	}
	for _, bin := range []string{"kube", "etcd", "coredns"} {
		if _, err := os.Stat(filepath.Join(c.bin, bin)); err != nil {
			return fmt.Errorf("%s is missing from %s: run make control-plane", bin, c.bin)
		}
	}
	if err := c.checkDir(); err != nil {
		return err
	}
	if err := installPackages(ctx, c.log); err != nil {
		return err
	}
	// The kubelet and kube-proxy need bridged traffic to pass iptables; the
	// modules loaded here are unloaded on stop.
	for _, mod := range []string{"br_netfilter", "overlay"} {
		if !moduleLoaded(mod) {
			if exec.CommandContext(ctx, "modprobe", mod).Run() == nil && moduleLoaded(mod) {
				c.loadedModules = append(c.loadedModules, mod)
			}
		}
	}
	if err := c.cleanupKilledRun(); err != nil {
		return err
	}
	// Another Kubernetes on this machine would share ports, and kube-proxy
	// and the kubelet would fight over its rules.
	for _, port := range []int{apiserverPort, etcdPort, etcdPeerPort, 10248, 10249, 10250, 10256, 10257, 10259} {
		if l, err := net.Listen("tcp", fmt.Sprintf(":%d", port)); err != nil {
			return fmt.Errorf("port %d is in use (another Kubernetes, or a make cluster that was killed: make cluster-down): %w", port, err)
		} else {
			l.Close()
		}
	}
	// The last run's logs stay readable, once.
	if _, err := os.Stat(c.logs); err == nil {
		if err := os.RemoveAll(c.logs + ".previous"); err != nil {
			return err
		}
		return os.Rename(c.logs, c.logs+".previous")
	}
	return nil
}

// cleanupKilledRun cleans up after a run that could not (killed with
// SIGKILL, a crash), using the machine's state it recorded before starting.
func (c *cluster) cleanupKilledRun() error {
	if _, err := os.Stat(c.beforeFile()); err == nil {
		// The killed run's own directories, whatever this run's flags say.
		killed := *c
		if b, err := os.ReadFile(c.runFile()); err == nil {
			if f := strings.Split(strings.TrimSpace(string(b)), "\n"); len(f) == 2 {
				killed.dir, killed.envFile = f[0], f[1]
			}
		}
		c.step("a previous cluster in %s did not stop cleanly; cleaning up after it", killed.dir)
		before, err := machine.Load(c.beforeFile())
		if err != nil {
			return err
		}
		killed.before = before
		if err := killed.cleanup(); err != nil {
			// Once only: a record kept after a failed cleanup would be
			// replayed at every start, later and later.
			c.step("could not undo everything the killed cluster did; check and remove by hand:\n%v", err)
			_ = os.RemoveAll(stateDir)
		}
		_ = os.Remove(killed.envFile)
	}
	if err := os.Remove(c.envFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return c.removeDir()
}

// removeDir removes the cluster's directory, if it is one (checkDir).
func (c *cluster) removeDir() error {
	if _, err := os.Stat(c.path(markerFile)); err != nil {
		return nil
	}
	return os.RemoveAll(c.dir)
}

// markerFile says a directory is a cluster's: only such a directory, or a
// new or empty one, is ever removed.
const markerFile = ".keymint-cluster"

func (c *cluster) checkDir() error {
	entries, err := os.ReadDir(c.dir)
	if errors.Is(err, os.ErrNotExist) || (err == nil && len(entries) == 0) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := os.Stat(c.path(markerFile)); err != nil {
		return fmt.Errorf("%s holds files but is not a cluster's directory (no %s): choose another -dir; the cluster removes its directory when it stops", c.dir, markerFile)
	}
	if info, err := os.Lstat(c.envFile); err == nil && !info.Mode().IsRegular() {
		return fmt.Errorf("-env %s is not a regular file", c.envFile)
	}
	return nil
}

// packages are the Debian packages of the node, and a command each installs.
var packages = map[string]string{
	"containerd": "containerd", "runc": "runc", "containernetworking-plugins": "/usr/lib/cni/bridge",
	"iptables": "iptables", "conntrack": "conntrack",
	// nft removes the nftables tables that iptables-nft leaves behind, empty.
	"nftables": "nft",
}

func installPackages(ctx context.Context, log io.Writer) error {
	var missing []string
	for pkg, bin := range packages {
		if strings.HasPrefix(bin, "/") {
			if _, err := os.Stat(bin); err != nil {
				missing = append(missing, pkg)
			}
		} else if _, err := exec.LookPath(bin); err != nil {
			if _, err := os.Stat("/usr/sbin/" + bin); err != nil {
				missing = append(missing, pkg)
			}
		}
	}
	if len(missing) == 0 {
		return nil
	}
	fmt.Fprintf(log, "cluster: installing %s (apt-get)\n", strings.Join(missing, " "))
	cmd := exec.CommandContext(ctx, "sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "+strings.Join(missing, " "))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("installing %v: %v\n%s", missing, err, out)
	}
	return nil
}

// nodeIP is the address of the interface of the default route: pods reach
// kube-apiserver there, through Service kubernetes.
func nodeIP() (string, error) {
	out, err := exec.Command("ip", "-4", "-o", "route", "get", "1.1.1.1").Output()
	if err == nil {
		f := strings.Fields(string(out))
		for i := range f[:max(len(f)-1, 0)] {
			if f[i] == "src" {
				return f[i+1], nil
			}
		}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.String(), nil
		}
	}
	return "", errors.New("no IPv4 address for the node")
}

func setSysctls(values map[string]string) error {
	for name, v := range values {
		if err := os.WriteFile(filepath.Join("/proc/sys", name), []byte(v), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", name, v, err)
		}
	}
	return nil
}

// writeConfigs writes certificates, kubeconfigs and component configurations.
func (c *cluster) writeConfigs() error {
	var err error
	if c.pki, err = newPKI(c.path("pki")); err != nil {
		return err
	}
	certs := []struct {
		name, user string
		groups     []string
		hosts      []string // with any, a server certificate too
	}{
		{"apiserver", "kube-apiserver", nil, []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc." + clusterDomain, "127.0.0.1", kubernetesIP, c.nodeIP}},
		// Bound to system:kubelet-api-admin (manifests/addons.yaml), not
		// system:masters: kube-apiserver only needs the kubelet's API.
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", nil, nil},
		{"etcd", "etcd", nil, []string{"localhost", "127.0.0.1"}},
		{"apiserver-etcd-client", "kube-apiserver-etcd-client", nil, nil},
		{"admin", "keymint-cluster-admin", []string{"system:masters"}, nil},
		{"controller-manager", "system:kube-controller-manager", nil, nil},
		{"scheduler", "system:kube-scheduler", nil, nil},
		{"kubelet", "system:node:" + nodeName, []string{"system:nodes"}, nil},
		{"kube-proxy", "system:kube-proxy", nil, nil},
	}
	for _, crt := range certs {
		if err := c.pki.issue(crt.name, crt.user, crt.groups, crt.hosts...); err != nil {
			return err
		}
	}
	for _, name := range []string{"admin", "controller-manager", "scheduler", "kubelet", "kube-proxy", "token"} {
		if err := c.kubeconfig(name); err != nil {
			return err
		}
	}
	for _, d := range []string{"cni", "cni-ipam", "pod-logs", "kubelet", "etcd"} {
		if err := os.MkdirAll(c.path(d), 0o755); err != nil {
			return err
		}
	}
	files := map[string]string{
		"containerd.toml":          c.containerdConfig(),
		"cni/10-keymint.conflist":  c.cniConfig(),
		"kubelet.yaml":             c.kubeletConfig(),
		"kube-proxy.yaml":          c.kubeProxyConfig(),
		"token-webhook.kubeconfig": "",
	}
	for name, content := range files {
		if err := os.WriteFile(c.path(name), []byte(content), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// writeEnv writes the file that `source .dev/cluster.env` reads.
func (c *cluster) writeEnv() error {
	env := fmt.Sprintf(`# The one-node cluster of make cluster; it lives while make cluster runs.
export KUBECONFIG=%s
# keymint's /check as pods call it, by the Service's cluster DNS name.
export KEYMINT_IN_CLUSTER_CHECK_URL=https://keymint-webhook.keymint-system.svc/check
# containerd's socket: ctr -a "$CONTAINERD_ADDRESS" -n k8s.io images import IMAGE.tar
export CONTAINERD_ADDRESS=%s
# The cluster without a client certificate: kubectl --kubeconfig "$KEYMINT_TOKEN_KUBECONFIG" --token ...
export KEYMINT_TOKEN_KUBECONFIG=%s
# kubectl, if make control-plane built it (none was on PATH).
export PATH="$PATH:%s"
`, c.path("admin.kubeconfig"), c.containerdSocket(), c.path("token.kubeconfig"), c.bin)
	// A new file, never through a link someone left at its name.
	tmp := c.envFile + ".partial"
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(env); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, c.envFile)
}

func (c *cluster) printNextSteps(w io.Writer) {
	if !c.keymint {
		fmt.Fprintf(w, `
==> A one-node cluster runs here (keymint not installed). In a second terminal, as root:

  source %[1]s
  kubectl get pods -A

    Component logs: %[2]s. Ctrl-C stops the cluster and removes what it added to this machine.
`, c.envFile, c.logs)
		return
	}
	fmt.Fprintf(w, `
==> A one-node cluster runs here, with keymint installed from %[1]s (release keymint,
    namespace keymint-system). In a second terminal, as root:

  source %[2]s
  kubectl get pods -A
  kubectl -n keymint-system logs deploy/keymint-manager

  # A ServiceUser and two ApiTokens; keymint writes each token to a Secret.
  kubectl create namespace demo
  kubectl -n demo apply -f config/samples/keymint_v1alpha1_serviceuser.yaml -f config/samples/keymint_v1alpha1_apitoken.yaml
  TOKEN=$(kubectl -n demo get secret billing-exporter-token -o jsonpath='{.data.token}' | base64 -d)

  # kube-apiserver asks keymint about the token (this kubeconfig has no client certificate,
  # which kube-apiserver would prefer to the token):
  kubectl --kubeconfig "$KEYMINT_TOKEN_KUBECONFIG" --token "$TOKEN" auth whoami

  # /check from this machine (the host reaches ClusterIPs), as pods call $KEYMINT_IN_CLUSTER_CHECK_URL:
  kubectl -n keymint-system get secret keymint-serving-certs -o jsonpath='{.data.ca\.crt}' | base64 -d > /tmp/keymint-ca.crt
  curl --cacert /tmp/keymint-ca.crt -H "Authorization: Bearer $TOKEN" \
    --resolve keymint-webhook.keymint-system.svc:443:$(kubectl -n keymint-system get svc keymint-webhook -o jsonpath='{.spec.clusterIP}') \
    "$KEYMINT_IN_CLUSTER_CHECK_URL"

  # Pods that call /check trust that CA; copy it into their namespace (a pod mounts only its own):
  kubectl -n demo create configmap keymint-ca --from-file=ca.crt=/tmp/keymint-ca.crt

  # Your own image, as kind load does; run it with imagePullPolicy: Never:
  ctr -a "$CONTAINERD_ADDRESS" -n k8s.io images import my-image.tar

    Component logs: %[3]s (kept after the cluster stops). Ctrl-C stops the cluster and removes
    what it added to this machine; start it again to run a changed keymint (the image is rebuilt).
`, c.chart, c.envFile, c.logs)
}
