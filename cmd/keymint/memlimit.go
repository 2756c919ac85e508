package main

// memlimit.go: the Go runtime's soft memory limit from the container's.
// Without one, the heap may grow to twice the live heap before a
// collection (GOGC=100), and a pod whose live heap is past half its memory
// limit is killed for what a collection would have freed.

import (
	"io/fs"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/go-logr/logr"
)

// memoryLimitShare is the part of the container's memory limit the Go heap
// may take before collecting harder: the rest is the runtime's own, stacks
// and what the kernel counts besides.
const memoryLimitShare = 0.9

// cgroupMemoryLimit reads the memory limit of the cgroup the process runs
// in, from the cgroup filesystem root (/sys/fs/cgroup): cgroup v2's
// memory.max, else cgroup v1's memory/memory.limit_in_bytes. ok is false
// without a limit ("max", or v1's page-counter maximum).
func cgroupMemoryLimit(root fs.FS) (limit int64, ok bool) {
	for _, name := range []string{"memory.max", "memory/memory.limit_in_bytes"} {
		b, err := fs.ReadFile(root, name)
		if err != nil {
			continue
		}
		v := strings.TrimSpace(string(b))
		n, err := strconv.ParseInt(v, 10, 64)
		// v1 says "no limit" with the largest page-aligned int64.
		if err != nil || n <= 0 || n >= 1<<62 {
			return 0, false
		}
		return n, true
	}
	return 0, false
}

// setMemoryLimit sets the runtime's soft memory limit to a share of the
// container's, unless GOMEMLIMIT sets one or there is no container limit.
// It returns the limit set, 0 when none.
func setMemoryLimit(root fs.FS, log logr.Logger) int64 {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0
	}
	limit, ok := cgroupMemoryLimit(root)
	if !ok {
		return 0
	}
	soft := int64(float64(limit) * memoryLimitShare)
	debug.SetMemoryLimit(soft)
	log.Info("Go memory limit set from the container's", "containerLimitBytes", limit, "goMemoryLimitBytes", soft)
	return soft
}
