package main

import (
	"runtime/debug"
	"testing"
	"testing/fstest"

	"github.com/go-logr/logr"
)

func TestCgroupMemoryLimit(t *testing.T) {
	for name, tc := range map[string]struct {
		files map[string]string
		want  int64
		ok    bool
	}{
		"cgroup v2, 256Mi":        {files: map[string]string{"memory.max": "268435456\n"}, want: 268435456, ok: true},
		"cgroup v2, no limit":     {files: map[string]string{"memory.max": "max\n"}},
		"cgroup v1, 512Mi":        {files: map[string]string{"memory/memory.limit_in_bytes": "536870912\n"}, want: 536870912, ok: true},
		"cgroup v1, no limit":     {files: map[string]string{"memory/memory.limit_in_bytes": "9223372036854771712\n"}},
		"v2 first where both are": {files: map[string]string{"memory.max": "100000000", "memory/memory.limit_in_bytes": "536870912"}, want: 100000000, ok: true},
		"no cgroup filesystem":    {files: map[string]string{}},
		"garbage is no limit":     {files: map[string]string{"memory.max": "lots"}},
	} {
		root := fstest.MapFS{}
		for f, v := range tc.files {
			root[f] = &fstest.MapFile{Data: []byte(v)}
		}
		if got, ok := cgroupMemoryLimit(root); got != tc.want || ok != tc.ok {
			t.Errorf("%s: %d %v, want %d %v", name, got, ok, tc.want, tc.ok)
		}
	}
}

// TestSetMemoryLimit: 90% of the container's limit becomes the runtime's,
// unless GOMEMLIMIT says otherwise.
func TestSetMemoryLimit(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	root := fstest.MapFS{"memory.max": &fstest.MapFile{Data: []byte("268435456\n")}}
	t.Setenv("GOMEMLIMIT", "")
	if got := setMemoryLimit(root, logr.Discard()); got != 241591910 || debug.SetMemoryLimit(-1) != 241591910 {
		t.Errorf("set %d, runtime has %d; want 90%% of 256Mi, 241591910", got, debug.SetMemoryLimit(-1))
	}
	t.Setenv("GOMEMLIMIT", "100MiB")
	if got := setMemoryLimit(root, logr.Discard()); got != 0 {
		t.Errorf("with GOMEMLIMIT set: set %d, want none", got)
	}
}
