package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// runInfo says where and when the figures were measured, and how to get them
// again.
func runInfo(ctx context.Context, e *env) (string, error) {
	goVersion, err := exec.CommandContext(ctx, "go", "env", "GOVERSION").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOVERSION: %w", err)
	}
	commit := "unknown"
	if out, err := exec.CommandContext(ctx, "git", "-C", e.root, "describe", "--always", "--dirty").Output(); err == nil {
		commit = strings.TrimSpace(string(out))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| | |\n|---|---|\n")
	fmt.Fprintf(&b, "| measured | %s |\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "| commit | `%s` |\n", commit)
	fmt.Fprintf(&b, "| machine | %s, %d cores (GOMAXPROCS %d), %s RAM, %s/%s |\n", cpuModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), memTotal(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&b, "| Go | %s |\n", strings.TrimSpace(string(goVersion)))
	fmt.Fprintf(&b, "| load average at start | %s |\n", loadAverage())
	fmt.Fprintf(&b, "| sections measured in this run | %s |\n", strings.Join(e.sections, ", "))
	if e.quick {
		fmt.Fprintf(&b, "| mode | **quick** (`-quick`): short runs to try the harness, not figures to compare |\n")
	}
	b.WriteString("\nReproduce with `make bench` (everything: about 45 minutes on the 2-core development machine, most of it issuing\n" +
		"100,000 tokens for the memory figure) or `go run ./hack/bench -only micro,http` for some parts;\n" +
		"`go run ./hack/bench -h` lists them. `-print` prints the blocks instead of rewriting this file.\n")
	return b.String(), nil
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func memTotal() string {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "?"
	}
	var kb int64
	for _, line := range strings.Split(string(data), "\n") {
		if _, err := fmt.Sscanf(line, "MemTotal: %d kB", &kb); err == nil {
			return fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
		}
	}
	return "?"
}

func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
