package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keymint/keymint/hack/cluster/machine"
)

// down stops the components in order and puts the machine back as it was.
func (c *cluster) down() error {
	_ = os.Remove(c.envFile)
	var errs []error
	// The kubelet first, or it restarts the pods removed next.
	if p := c.proc("kubelet"); p != nil {
		p.stop(20 * time.Second)
	}
	if p := c.proc("containerd"); p != nil && !exited(p) {
		if err := c.removePods(context.Background()); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop(20 * time.Second)
	}
	if err := c.cleanup(); err != nil {
		errs = append(errs, err)
	}
	for _, mod := range c.loadedModules {
		_ = exec.Command("modprobe", "-r", mod).Run() // in use by another program: it stays
	}
	if c.before != nil {
		if after, err := machine.Read(); err == nil {
			if d := c.before.Diff(after); len(d) > 0 {
				errs = append(errs, fmt.Errorf("the machine still differs from before the cluster:\n  %s", strings.Join(d, "\n  ")))
			}
		}
	}
	if len(errs) == 0 {
		c.step("stopped; the machine is as it was (component logs kept in %s)", c.logs)
	}
	return errors.Join(errs...)
}

func exited(p *process) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// cleanup removes whatever a run left: processes of a run that was killed,
// kube-proxy's rules, container shims, mounts, network namespaces, links,
// iptables rules, sysctls and cgroups (machine.State.Restore), then the
// cluster's directories.
func (c *cluster) cleanup() error {
	var errs []error
	c.killRecorded()
	c.killByPath()
	// Connections of pods and to Services that are gone: a later cluster
	// reuses the addresses, and a stale entry would send its packets astray.
	for _, cidr := range []string{"-s " + podCIDR, "-d " + podCIDR, "-d " + serviceCIDR} {
		_ = exec.Command("conntrack", append([]string{"-D"}, strings.Fields(cidr)...)...).Run()
	}
	if c.before != nil {
		if err := c.before.Restore(c.scope()); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.removeDir(); err != nil {
		errs = append(errs, err)
	}
	if err := os.RemoveAll(c.run); err != nil {
		errs = append(errs, err)
	}
	// Last: without it, a failed cleanup could not be run again.
	if len(errs) == 0 {
		if err := os.RemoveAll(stateDir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killRecorded kills the components a killed run recorded in pids, if the
// process with that PID is still the same one: same executable, same start
// time (a PID is reused after a reboot or a long while).
func (c *cluster) killRecorded() {
	b, err := os.ReadFile(filepath.Join(stateDir, "pids"))
	if err != nil {
		return
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var pid int
		var exe, started string
		if n, _ := fmt.Sscanf(line, "%d %s %s", &pid, &exe, &started); n != 3 {
			continue
		}
		if nowExe, nowStarted := identify(pid); nowExe == exe && nowStarted == started {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// identify returns a process's executable and start time (in clock ticks
// since boot), or empty strings.
func identify(pid int) (exe, started string) {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return "", ""
	}
	// A binary replaced since it started (make control-plane) is still it.
	exe = strings.TrimSuffix(exe, " (deleted)")
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", ""
	}
	// The command name, in parentheses, may hold spaces: count from after it.
	_, rest, ok := bytes.Cut(stat, []byte(") "))
	if f := strings.Fields(string(rest)); ok && len(f) > 19 {
		return exe, f[19]
	}
	return "", ""
}

// killByPath kills every process whose command line names the cluster's
// runtime directory: containerd's shims, which outlive containerd.
func (c *cluster) killByPath() {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if bytes.Contains(cmdline, []byte(c.run+"/")) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	// Give the kernel a moment to tear down what they held.
	time.Sleep(500 * time.Millisecond)
}

// scope is what the cluster adds to the machine, by name: Restore leaves
// everything else alone.
func (c *cluster) scope() machine.Scope {
	return machine.Scope{
		MountPrefixes: []string{c.dir + "/", c.run + "/", "/run/netns/cni-", "/var/run/netns/cni-"},
		// ip netns and CNI make the namespace directory a mount of its own.
		MountPoints:    []string{"/run/netns", "/var/run/netns"},
		Bridge:         bridgeName,
		NetNSPrefixes:  []string{"cni-"},
		CgroupPrefixes: []string{"kubepods"},
		RuleMarks:      []string{"KUBE-", "CNI-"},
		// Made by libcni, the kubelet and containerd's shims where no flag
		// moves them: only their entries for this cluster go.
		PrunePaths: []string{"/var/lib/cni", "/var/log/containers", "/var/log/pods", "/run/containerd", "/run/netns", "/var/lib/kubelet"},
		Own:        c.owns,
		Sysctls: map[string]string{
			"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1", "net/bridge/bridge-nf-call-ip6tables": "1",
			// What the kubelet sets (its protectKernelDefaults is off).
			"vm/overcommit_memory": "1", "vm/panic_on_oom": "0", "kernel/panic": "10", "kernel/panic_on_oops": "1",
			"kernel/keys/root_maxkeys": "1000000", "kernel/keys/root_maxbytes": "25000000",
		},
	}
}

// owns reports whether a file the kubelet, libcni or a shim left outside the
// cluster's directories is the cluster's: a link into them (the kubelet's
// log links) or a file naming the cluster's CNI network (libcni's cache).
func (c *cluster) owns(path string) bool {
	if target, err := os.Readlink(path); err == nil {
		return strings.HasPrefix(target, c.dir+"/")
	}
	// libcni's cache of the cluster's network, and of the loopback that
	// containerd adds to every sandbox.
	if base := filepath.Base(path); strings.HasPrefix(base, "keymint-") || strings.HasPrefix(base, "cni-loopback-") {
		return true
	}
	// The kubelet's device plugin socket is at a fixed path, whatever its
	// root directory; with no kubelet running, it is nobody's.
	if path == "/var/lib/kubelet/device-plugins/kubelet.sock" {
		return !running("kubelet") && !running("kube")
	}
	// A shim's socket outlives a shim that was killed; with no containerd
	// running, none is another's.
	return strings.HasPrefix(path, "/run/containerd/s/") && !running("containerd")
}

// running reports whether a process with that command name runs.
func running(comm string) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm")); err == nil && strings.TrimSpace(string(b)) == comm {
			return true
		}
	}
	return false
}
