package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// fakeBinary writes an executable shell script that prints version.
func fakeBinary(t *testing.T, path, version string) {
	t.Helper()
	script := "#!/bin/sh\necho '" + version + "'\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// recorder returns binaries whose build writes a fake of the right version and
// records that it ran.
func recorder(built *[]string) []binary {
	mk := func(name, version string) binary {
		return binary{name: name, versionArgs: []string{"--version"}, wantVersion: version,
			build: func(_ context.Context, out string) error {
				*built = append(*built, name)
				return os.WriteFile(out, []byte("#!/bin/sh\necho '"+version+"'\n"), 0o755)
			}}
	}
	return []binary{mk("etcd", "etcd Version: 3.6.16"), mk("kube-apiserver", "Kubernetes v1.36.3")}
}

func TestEnsure(t *testing.T) {
	tests := map[string]struct {
		// present maps a binary already in the directory to what it prints.
		present   map[string]string
		wantBuilt []string
	}{
		"empty directory builds both": {
			wantBuilt: []string{"etcd", "kube-apiserver"},
		},
		"both present with the right versions builds nothing": {
			present:   map[string]string{"etcd": "etcd Version: 3.6.16", "kube-apiserver": "Kubernetes v1.36.3"},
			wantBuilt: nil,
		},
		"an older kube-apiserver is rebuilt, etcd is kept": {
			present:   map[string]string{"etcd": "etcd Version: 3.6.16", "kube-apiserver": "Kubernetes v1.35.0"},
			wantBuilt: []string{"kube-apiserver"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			for bin, version := range tc.present {
				fakeBinary(t, filepath.Join(dir, bin), version)
			}
			var built []string
			if err := ensure(context.Background(), dir, recorder(&built), io.Discard); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(built, tc.wantBuilt) {
				t.Errorf("built %v, want %v", built, tc.wantBuilt)
			}
			// A second run over the result is a no-op: the idempotence make test relies on.
			built = nil
			if err := ensure(context.Background(), dir, recorder(&built), io.Discard); err != nil {
				t.Fatal(err)
			}
			if len(built) != 0 {
				t.Errorf("second run built %v, want nothing", built)
			}
		})
	}
}

func TestEnsureLeavesNoBinaryWhenBuildFails(t *testing.T) {
	dir := t.TempDir()
	bins := []binary{{name: "etcd", versionArgs: []string{"--version"}, wantVersion: "etcd Version: 3.6.16",
		build: func(_ context.Context, out string) error {
			_ = os.WriteFile(out, []byte("half a binary"), 0o755)
			return errors.New("killed")
		}}}
	if err := ensure(context.Background(), dir, bins, io.Discard); err == nil {
		t.Fatal("want the build error")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("directory holds %v after a failed build, want it empty", entries)
	}
}

func TestEnsureRefusesABuildThatReportsTheWrongVersion(t *testing.T) {
	dir := t.TempDir()
	bins := []binary{{name: "etcd", versionArgs: []string{"--version"}, wantVersion: "etcd Version: 3.6.16",
		build: func(_ context.Context, out string) error {
			return os.WriteFile(out, []byte("#!/bin/sh\necho 'etcd Version: 3.5.0'\n"), 0o755)
		}}}
	if err := ensure(context.Background(), dir, bins, io.Discard); err == nil {
		t.Fatal("want an error for a binary that reports another version")
	}
}

func TestStagingReplaces(t *testing.T) {
	goMod := []byte(`module k8s.io/kubernetes

go 1.26.0

require k8s.io/api v0.0.0

replace (
	github.com/example/fork => github.com/example/fork v1.2.3
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
)
`)
	got, err := stagingReplaces(goMod, "v0.36.3")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"k8s.io/api => k8s.io/api v0.36.3", "k8s.io/client-go => k8s.io/client-go v0.36.3"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}

	if _, err := stagingReplaces([]byte("module x\n"), "v0.36.3"); err == nil {
		t.Error("want an error for a go.mod without staging replaces")
	}
}

func TestInheritedDirectives(t *testing.T) {
	goMod := []byte(`module github.com/traefik/traefik/v3

go 1.24.0

replace (
	github.com/abbot/go-http-auth => github.com/containous/go-http-auth v0.4.1-0.20200324110947-a37a7636d23e
	github.com/example/pinned v1.0.0 => github.com/example/fork v1.0.1
)

exclude github.com/tencentcloud/tencentcloud-sdk-go v3.0.83+incompatible
`)
	got, err := inheritedDirectives(goMod)
	if err != nil {
		t.Fatal(err)
	}
	want := "replace github.com/abbot/go-http-auth => github.com/containous/go-http-auth v0.4.1-0.20200324110947-a37a7636d23e\n" +
		"replace github.com/example/pinned v1.0.0 => github.com/example/fork v1.0.1\n" +
		"exclude github.com/tencentcloud/tencentcloud-sdk-go v3.0.83+incompatible\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}

	if _, err := inheritedDirectives([]byte("module x\n\nreplace a => ./a\n")); err == nil {
		t.Error("want an error for a replace by a local path, which a dependent module cannot see")
	}
}

func TestLinkComponentsReplacesAStandaloneBinary(t *testing.T) {
	dir := t.TempDir()
	fakeBinary(t, filepath.Join(dir, "kube"), "Kubernetes v1.36.3")
	// An older keymint built kube-apiserver on its own.
	fakeBinary(t, filepath.Join(dir, "kube-apiserver"), "Kubernetes v1.36.3")
	for range 2 { // the second run finds the links and keeps them
		if err := linkComponents(dir, "kube", []string{"kube-apiserver", "kubelet"}); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"kube-apiserver", "kubelet"} {
			if link, err := os.Readlink(filepath.Join(dir, name)); err != nil || link != "kube" {
				t.Errorf("%s links to %q (%v), want kube", name, link, err)
			}
		}
	}
}
