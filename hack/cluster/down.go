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
	// kube-proxy knows its own rules best.
	if out, err := exec.Command(c.component("kube-proxy"), "--cleanup").CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("kube-proxy --cleanup: %v: %s", err, lastLine(out)))
	}
	if c.before != nil {
		if err := c.before.Restore(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range []string{c.dir, c.run} {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killRecorded kills the components a killed run recorded in pids, if they
// still run the same program.
func (c *cluster) killRecorded() {
	b, err := os.ReadFile(c.path("pids"))
	if err != nil {
		return
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		pid, err := strconv.Atoi(f[0])
		if err != nil {
			continue
		}
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && bytes.Contains(cmdline, []byte(f[1])) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
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

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
