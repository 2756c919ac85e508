package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// process is one component running as a host process.
type process struct {
	name    string
	cmd     *exec.Cmd
	logFile string
	done    chan struct{}
	err     error
	// stopping is set before a deliberate stop, so that its exit is not
	// reported as a crash.
	stopping atomic.Bool
}

// start runs a component with its output in logs/<name>.log. It runs in its
// own process group, so that Ctrl-C reaches this program alone, which stops
// the components in order.
func (c *cluster) start(name, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(c.logs, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// The kubelet and kube-proxy find iptables, mount and the CNI plugins here.
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logFile: logPath, done: make(chan struct{})}
	c.procs = append(c.procs, p)
	if err := c.savePIDs(); err != nil {
		return nil, err
	}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
		if !p.stopping.Load() {
			c.exited <- p
		}
	}()
	return p, nil
}

// savePIDs records the running components, for the cleanup after a run that
// was killed.
func (c *cluster) savePIDs() error {
	var b strings.Builder
	for _, p := range c.procs {
		if exe, started := identify(p.cmd.Process.Pid); exe != "" {
			fmt.Fprintf(&b, "%d %s %s\n", p.cmd.Process.Pid, exe, started)
		}
	}
	return os.WriteFile(filepath.Join(stateDir, "pids"), []byte(b.String()), 0o600)
}

// stop sends SIGTERM, then SIGKILL after the grace period.
func (p *process) stop(grace time.Duration) {
	p.stopping.Store(true)
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (c *cluster) proc(name string) *process {
	for _, p := range c.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

func (c *cluster) component(name string) string { return filepath.Join(c.bin, name) }

func (c *cluster) startContainerd(ctx context.Context) error {
	c.step("starting containerd")
	if _, err := c.start("containerd", "containerd", "--config", c.path("containerd.toml")); err != nil {
		return err
	}
	return c.waitFor(ctx, "containerd", time.Minute, func() error {
		return exec.CommandContext(ctx, "ctr", "-a", c.containerdSocket(), "version").Run()
	})
}

// apiserverArgs are kube-apiserver's flags, with extra ones (the token
// webhook) appended.
func (c *cluster) apiserverArgs(extra []string) []string {
	p := c.pki.path
	return append([]string{
		"--etcd-servers=https://127.0.0.1:" + strconv.Itoa(etcdPort),
		"--etcd-cafile=" + p("ca.crt"),
		"--etcd-certfile=" + p("apiserver-etcd-client.crt"),
		"--etcd-keyfile=" + p("apiserver-etcd-client.key"),
		// It listens on every address (pods reach it through the node's),
		// so nobody gets in without credentials.
		"--anonymous-auth=false",
		"--bind-address=0.0.0.0",
		"--secure-port=" + strconv.Itoa(apiserverPort),
		"--advertise-address=" + c.nodeIP,
		"--service-cluster-ip-range=" + serviceCIDR,
		"--client-ca-file=" + p("ca.crt"),
		"--tls-cert-file=" + p("apiserver.crt"),
		"--tls-private-key-file=" + p("apiserver.key"),
		"--kubelet-client-certificate=" + p("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + p("apiserver-kubelet-client.key"),
		"--service-account-key-file=" + p("sa.pub"),
		"--service-account-signing-key-file=" + p("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc." + clusterDomain,
		"--authorization-mode=Node,RBAC",
		// The node's name is not in any DNS this machine asks.
		"--kubelet-preferred-address-types=InternalIP",
		"--enable-admission-plugins=NodeRestriction",
		"--cert-dir=" + c.path("apiserver"),
		"--profiling=false",
	}, extra...)
}

// startControlPlane starts etcd (unless running), kube-apiserver,
// kube-controller-manager and kube-scheduler.
func (c *cluster) startControlPlane(ctx context.Context, apiserverExtra []string) error {
	if c.proc("etcd") == nil {
		c.step("starting etcd")
		// TLS with client certificates on both ports: any local user could
		// otherwise write to etcd, and so run a privileged pod.
		peer := "https://127.0.0.1:" + strconv.Itoa(etcdPeerPort)
		client := "https://127.0.0.1:" + strconv.Itoa(etcdPort)
		p := c.pki.path
		if _, err := c.start("etcd", c.component("etcd"), "--data-dir", c.path("etcd"),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", "default="+peer,
			"--cert-file", p("etcd.crt"), "--key-file", p("etcd.key"), "--client-cert-auth", "--trusted-ca-file", p("ca.crt"),
			"--peer-cert-file", p("etcd.crt"), "--peer-key-file", p("etcd.key"), "--peer-client-cert-auth", "--peer-trusted-ca-file", p("ca.crt"),
			"--unsafe-no-fsync", "--log-level", "warn"); err != nil {
			return err
		}
	}
	c.step("starting kube-apiserver")
	if _, err := c.start("kube-apiserver", c.component("kube-apiserver"), c.apiserverArgs(apiserverExtra)...); err != nil {
		return err
	}
	if err := c.waitFor(ctx, "kube-apiserver", 2*time.Minute, c.apiserverReady); err != nil {
		return err
	}
	if c.proc("kube-controller-manager") != nil {
		// kube-apiserver took its address out of Service kubernetes as it
		// stopped; until kube-proxy routes it again, pods' calls fail.
		return c.waitKubernetesService(ctx)
	}
	c.step("starting kube-controller-manager and kube-scheduler")
	kcm := c.path("controller-manager.kubeconfig")
	if _, err := c.start("kube-controller-manager", c.component("kube-controller-manager"),
		"--kubeconfig="+kcm, "--authentication-kubeconfig="+kcm, "--authorization-kubeconfig="+kcm,
		"--service-account-private-key-file="+c.pki.path("sa.key"), "--root-ca-file="+c.pki.path("ca.crt"),
		"--use-service-account-credentials", "--leader-elect=false", "--bind-address=127.0.0.1"); err != nil {
		return err
	}
	sched := c.path("scheduler.kubeconfig")
	_, err := c.start("kube-scheduler", c.component("kube-scheduler"),
		"--kubeconfig="+sched, "--authentication-kubeconfig="+sched, "--authorization-kubeconfig="+sched,
		"--leader-elect=false", "--bind-address=127.0.0.1")
	return err
}

// restartAPIServer stops kube-apiserver and starts it with extra flags: it
// reads its token webhook configuration only at start.
func (c *cluster) restartAPIServer(ctx context.Context, extra []string) error {
	p := c.proc("kube-apiserver")
	// Quickly: every client, keymint's leader among them, waits meanwhile.
	p.stop(3 * time.Second)
	c.procs = slices.DeleteFunc(c.procs, func(q *process) bool { return q == p })
	return c.startControlPlane(ctx, extra)
}

// waitKubernetesService waits until Service kubernetes reaches
// kube-apiserver through kube-proxy's rules, as pods reach it.
func (c *cluster) waitKubernetesService(ctx context.Context) error {
	return c.waitFor(ctx, "Service kubernetes through kube-proxy", 2*time.Minute, func() error {
		client, err := c.adminHTTP()
		if err != nil {
			return err
		}
		resp, err := client.Get("https://" + kubernetesIP + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz through %s: %s", kubernetesIP, resp.Status)
		}
		return nil
	})
}

// apiserverReady asks /readyz as the cluster admin.
func (c *cluster) apiserverReady() error {
	client, err := c.adminHTTP()
	if err != nil {
		return err
	}
	resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d/readyz", apiserverPort))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz: %s", resp.Status)
	}
	return nil
}

func (c *cluster) adminHTTP() (*http.Client, error) {
	cert, err := tls.LoadX509KeyPair(c.pki.path("admin.crt"), c.pki.path("admin.key"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(c.pki.ca.Cert)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}}, nil
}

// startNode starts the kubelet and kube-proxy and waits for the node to be
// Ready.
func (c *cluster) startNode(ctx context.Context) error {
	c.step("starting the kubelet and kube-proxy")
	if _, err := c.start("kubelet", c.component("kubelet"), "--config="+c.path("kubelet.yaml"),
		"--kubeconfig="+c.path("kubelet.kubeconfig"), "--root-dir="+c.path("kubelet"),
		"--cert-dir="+c.path("kubelet-pki"), "--hostname-override="+nodeName, "--node-ip="+c.nodeIP); err != nil {
		return err
	}
	if _, err := c.start("kube-proxy", c.component("kube-proxy"), "--config="+c.path("kube-proxy.yaml")); err != nil {
		return err
	}
	if err := c.waitKubernetesService(ctx); err != nil {
		return err
	}
	return c.waitFor(ctx, "node "+nodeName+" Ready", 3*time.Minute, func() error {
		out, err := c.kubectlOutput(ctx, "get", "node", nodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "True" {
			return fmt.Errorf("Ready is %q", out)
		}
		return nil
	})
}

// kubectlPath prefers the kubectl on PATH, else the one make control-plane
// built.
func (c *cluster) kubectlPath() string {
	if p, err := exec.LookPath("kubectl"); err == nil {
		return p
	}
	return c.component("kubectl")
}

func (c *cluster) kubectl(ctx context.Context, stdin []byte, args ...string) error {
	cmd := exec.CommandContext(ctx, c.kubectlPath(), append([]string{"--kubeconfig", c.path("admin.kubeconfig")}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (c *cluster) kubectlOutput(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.kubectlPath(), append([]string{"--kubeconfig", c.path("admin.kubeconfig")}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			return "", fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, exitErr.Stderr)
		}
		return "", err
	}
	return string(out), nil
}

func (c *cluster) waitRollout(ctx context.Context, namespace, what string) error {
	c.step("waiting for %s in %s", what, namespace)
	return c.kubectl(ctx, nil, "-n", namespace, "rollout", "status", what, "--timeout=3m")
}

// waitFor polls check every half second until it passes, the timeout ends,
// or a component exits.
func (c *cluster) waitFor(ctx context.Context, what string, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w", what, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case p := <-c.exited:
			c.exited <- p // main reports it too
			return fmt.Errorf("%s exited while waiting for %s (%v); its log: %s", p.name, what, p.err, p.logFile)
		case <-time.After(500 * time.Millisecond):
		}
	}
}
