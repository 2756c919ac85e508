// Command controlplane builds, from Go modules, the Kubernetes binaries that
// envtest, `make run` and `make cluster` use, on a machine where setup-envtest
// cannot download them: etcd; kube, one binary holding kube-apiserver,
// kube-controller-manager, kube-scheduler, kubelet and kube-proxy, with a link
// named after each; and CoreDNS. kubectl is built too when none is on PATH.
//
// The binaries land in <dir>/<kubernetes-version>/. A second run finds them,
// checks that each reports the expected version, and does nothing.
package main

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/mod/modfile"
)

// The main packages of kube and coredns, written into throwaway modules.
var (
	//go:embed sources/kube.go.txt
	kubeMain []byte
	//go:embed sources/coredns.go.txt
	corednsMain []byte
)

// kubeComponents are the links to kube, one per component it runs.
var kubeComponents = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"}

func main() {
	opts := options{}
	flag.StringVar(&opts.dir, "dir", "bin/k8s", "directory that holds one sub-directory per Kubernetes version")
	flag.StringVar(&opts.kubernetesVersion, "kubernetes-version", "1.36.3", "version of k8s.io/kubernetes to build kube-apiserver (and kubectl) from")
	flag.StringVar(&opts.etcdVersion, "etcd-version", "3.6.16", "version of go.etcd.io/etcd/server/v3 to build etcd from")
	flag.StringVar(&opts.corednsVersion, "coredns-version", "1.14.7", "version of github.com/coredns/coredns to build coredns from")
	flag.StringVar(&opts.kubectl, "kubectl", "auto", "build kubectl: auto (only when none is on PATH), always or never")
	flag.StringVar(&opts.traefikVersion, "traefik-version", "", "version of github.com/traefik/traefik/v3 to build traefik from, for the proxy suites (empty: none; make traefik sets it)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	out, err := run(ctx, opts, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "controlplane: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(out)
}

type options struct {
	dir               string
	kubernetesVersion string
	etcdVersion       string
	corednsVersion    string
	kubectl           string
	traefikVersion    string
}

// binary is one program to provide: how to tell a good copy is already there,
// and how to build one.
type binary struct {
	name string
	// versionArgs make the binary print a line containing wantVersion.
	versionArgs []string
	wantVersion string
	build       func(ctx context.Context, out string) error
}

// run ensures every binary is present in the version directory and returns
// that directory's absolute path.
func run(ctx context.Context, opts options, log io.Writer) (string, error) {
	dir, err := filepath.Abs(filepath.Join(opts.dir, opts.kubernetesVersion))
	if err != nil {
		return "", err
	}
	wantKubectl := false
	switch opts.kubectl {
	case "always":
		wantKubectl = true
	case "auto":
		_, err := exec.LookPath("kubectl")
		wantKubectl = err != nil
	case "never":
	default:
		return "", fmt.Errorf("-kubectl must be auto, always or never, not %q", opts.kubectl)
	}
	b := builder{log: log, kubernetesVersion: opts.kubernetesVersion, etcdVersion: opts.etcdVersion, corednsVersion: opts.corednsVersion}
	bins := []binary{
		{name: "etcd", versionArgs: []string{"--version"}, wantVersion: "etcd Version: " + opts.etcdVersion, build: b.etcd},
		{name: "kube", versionArgs: []string{"kube-apiserver", "--version"}, wantVersion: "Kubernetes v" + opts.kubernetesVersion, build: b.kube},
		{name: "coredns", versionArgs: []string{"-version"}, wantVersion: "CoreDNS-" + opts.corednsVersion, build: b.coredns},
	}
	if wantKubectl {
		bins = append(bins, binary{name: "kubectl", versionArgs: []string{"version", "--client"}, wantVersion: "Client Version: v" + opts.kubernetesVersion,
			build: func(ctx context.Context, out string) error { return b.kubernetes(ctx, "kubectl", nil, out) }})
	}
	if opts.traefikVersion != "" {
		bins = append(bins, binary{name: "traefik", versionArgs: []string{"version"}, wantVersion: "Version:      " + opts.traefikVersion,
			build: func(ctx context.Context, out string) error { return b.traefik(ctx, opts.traefikVersion, out) }})
	}
	if err := ensure(ctx, dir, bins, log); err != nil {
		return "", err
	}
	return dir, linkComponents(dir, "kube", kubeComponents)
}

// linkComponents makes each name in dir a symbolic link to target, replacing
// whatever is there (a kube-apiserver built on its own by an older keymint).
func linkComponents(dir, target string, names []string) error {
	for _, name := range names {
		path := filepath.Join(dir, name)
		if link, err := os.Readlink(path); err == nil && link == target {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err := os.Symlink(target, path); err != nil {
			return err
		}
	}
	return nil
}

// ensure builds each binary that is missing from dir or reports another
// version. A binary is built under a temporary name and renamed into place, so
// an interrupted build never leaves a file that looks finished.
func ensure(ctx context.Context, dir string, bins []binary, log io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, bin := range bins {
		path := filepath.Join(dir, bin.name)
		if hasVersion(ctx, path, bin.versionArgs, bin.wantVersion) {
			fmt.Fprintf(log, "%s: %s is up to date\n", bin.name, path)
			continue
		}
		fmt.Fprintf(log, "%s: building %s\n", bin.name, bin.wantVersion)
		start := time.Now()
		tmp := path + ".partial"
		if err := bin.build(ctx, tmp); err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("building %s: %w", bin.name, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
		if !hasVersion(ctx, path, bin.versionArgs, bin.wantVersion) {
			return fmt.Errorf("built %s but it does not report %q", path, bin.wantVersion)
		}
		fmt.Fprintf(log, "%s: built %s in %s\n", bin.name, path, time.Since(start).Round(time.Second))
	}
	return nil
}

// hasVersion reports whether the executable at path prints want.
func hasVersion(ctx context.Context, path string, args []string, want string) bool {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	return err == nil && bytes.Contains(out, []byte(want))
}

type builder struct {
	log               io.Writer
	kubernetesVersion string
	etcdVersion       string
	corednsVersion    string
}

// kube builds the multi-component binary from sources/kube.go.txt.
func (b builder) kube(ctx context.Context, out string) error {
	return b.kubernetes(ctx, "kube", kubeMain, out)
}

// kubernetes builds k8s.io/kubernetes/cmd/<cmd>, or with mainSource the
// main package it holds. k8s.io/kubernetes replaces its staging modules with
// local paths, which a dependent module cannot see, so a throwaway module pins
// each of them to the matching v0.X.Y release.
func (b builder) kubernetes(ctx context.Context, cmd string, mainSource []byte, out string) error {
	modDir, err := os.MkdirTemp("", "keymint-"+cmd+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(modDir)

	root := "k8s.io/kubernetes@v" + b.kubernetesVersion
	fmt.Fprintf(b.log, "%s: reading %s's go.mod\n", cmd, root)
	goMod, err := downloadGoMod(ctx, modDir, root)
	if err != nil {
		return err
	}
	replaces, err := stagingReplaces(goMod, "v0."+strings.TrimPrefix(b.kubernetesVersion, "1."))
	if err != nil {
		return err
	}
	extra := "require k8s.io/kubernetes v" + b.kubernetesVersion + "\n\nreplace (\n"
	for _, r := range replaces {
		extra += "\t" + r + "\n"
	}
	if err := writeModule(modDir, "controlplane", extra+")\n", mainSource); err != nil {
		return err
	}
	pkg := "k8s.io/kubernetes/cmd/" + cmd
	if mainSource != nil {
		pkg = "."
	}
	if err := b.goCmd(ctx, modDir, cmd, "get", "k8s.io/kubernetes@v"+b.kubernetesVersion); err != nil {
		return err
	}
	if err := b.goCmd(ctx, modDir, cmd, "mod", "tidy"); err != nil {
		return err
	}
	major, minor, _ := strings.Cut(b.kubernetesVersion, ".")
	minor, _, _ = strings.Cut(minor, ".")
	ldflags := strings.Join([]string{
		"-s", "-w",
		"-X k8s.io/component-base/version.gitVersion=v" + b.kubernetesVersion,
		"-X k8s.io/component-base/version.gitMajor=" + major,
		"-X k8s.io/component-base/version.gitMinor=" + minor,
		"-X k8s.io/component-base/version.gitTreeState=clean",
		"-X k8s.io/client-go/pkg/version.gitVersion=v" + b.kubernetesVersion,
		"-X k8s.io/client-go/pkg/version.gitMajor=" + major,
		"-X k8s.io/client-go/pkg/version.gitMinor=" + minor,
	}, " ")
	return b.build(ctx, modDir, cmd, pkg, out, ldflags)
}

// etcd builds etcd from go.etcd.io/etcd/server/v3, whose module root is the
// etcd main package.
func (b builder) etcd(ctx context.Context, out string) error {
	modDir, err := os.MkdirTemp("", "keymint-etcd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(modDir)
	if err := writeModule(modDir, "etcd", "", nil); err != nil {
		return err
	}
	pkg := "go.etcd.io/etcd/server/v3"
	if err := b.goCmd(ctx, modDir, "etcd", "get", pkg+"@v"+b.etcdVersion); err != nil {
		return err
	}
	return b.build(ctx, modDir, "etcd", pkg, out, "-s -w")
}

// coredns builds CoreDNS with the plugins of sources/coredns.go.txt.
func (b builder) coredns(ctx context.Context, out string) error {
	modDir, err := os.MkdirTemp("", "keymint-coredns-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(modDir)
	if err := writeModule(modDir, "coredns", "", corednsMain); err != nil {
		return err
	}
	if err := b.goCmd(ctx, modDir, "coredns", "get", "github.com/coredns/coredns@v"+b.corednsVersion); err != nil {
		return err
	}
	if err := b.goCmd(ctx, modDir, "coredns", "mod", "tidy"); err != nil {
		return err
	}
	// CoreDNS prints its version from a variable its own build sets.
	ldflags := "-s -w -X github.com/coredns/coredns/coremain.GitCommit=v" + b.corednsVersion
	return b.build(ctx, modDir, "coredns", ".", out, ldflags)
}

// traefik builds Traefik's own command, for the proxy suites to run the
// shipped recipe (config/traefik). Traefik's go.mod replaces and excludes
// modules, which a dependent module does not inherit: the throwaway module
// repeats them.
func (b builder) traefik(ctx context.Context, version, out string) error {
	modDir, err := os.MkdirTemp("", "keymint-traefik-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(modDir)
	root := "github.com/traefik/traefik/v3@v" + version
	fmt.Fprintf(b.log, "traefik: reading %s's go.mod\n", root)
	goMod, err := downloadGoMod(ctx, modDir, root)
	if err != nil {
		return err
	}
	extra, err := inheritedDirectives(goMod)
	if err != nil {
		return err
	}
	if err := writeModule(modDir, "traefik", extra, nil); err != nil {
		return err
	}
	if err := b.goCmd(ctx, modDir, "traefik", "get", root); err != nil {
		return err
	}
	// traefik version prints it; "dev" would also skip the update check.
	ldflags := "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=" + version
	return b.build(ctx, modDir, "traefik", "github.com/traefik/traefik/v3/cmd/traefik", out, ldflags)
}

// inheritedDirectives returns a module's replace (to versions, not local
// paths) and exclude directives as go.mod lines.
func inheritedDirectives(goMod []byte) (string, error) {
	f, err := modfile.Parse("go.mod", goMod, nil)
	if err != nil {
		return "", err
	}
	var lines strings.Builder
	for _, r := range f.Replace {
		if r.New.Version == "" {
			return "", fmt.Errorf("%s is replaced by a local path, %s", r.Old.Path, r.New.Path)
		}
		old := r.Old.Path
		if r.Old.Version != "" {
			old += " " + r.Old.Version
		}
		fmt.Fprintf(&lines, "replace %s => %s %s\n", old, r.New.Path, r.New.Version)
	}
	for _, x := range f.Exclude {
		fmt.Fprintf(&lines, "exclude %s %s\n", x.Mod.Path, x.Mod.Version)
	}
	return lines.String(), nil
}

// writeModule makes modDir the throwaway module keymint.local/<name>, with
// extra go.mod lines and, given mainSource, its main package.
func writeModule(modDir, name, extra string, mainSource []byte) error {
	mod := "module keymint.local/" + name + "\n\ngo 1.26.0\n\n" + extra
	if err := os.WriteFile(filepath.Join(modDir, "go.mod"), []byte(mod), 0o644); err != nil {
		return err
	}
	if mainSource == nil {
		return nil
	}
	return os.WriteFile(filepath.Join(modDir, "main.go"), mainSource, 0o644)
}

// build compiles pkg into out and reports progress every few seconds, since a
// cold kube-apiserver build takes minutes and must not look hung.
func (b builder) build(ctx context.Context, modDir, name, pkg, out, ldflags string) error {
	total := countPackages(ctx, modDir, pkg)
	cmd := exec.CommandContext(ctx, "go", "build", "-v", "-trimpath", "-ldflags", ldflags, "-o", out, pkg)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	var compiled atomic.Int64
	var lastLines lines
	done := make(chan struct{})
	go func() {
		defer close(done)
		scan := bufio.NewScanner(stderr)
		for scan.Scan() {
			compiled.Add(1)
			lastLines.add(scan.Text())
		}
	}()
	start := time.Now()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-tick.C:
			progress := fmt.Sprintf("%d packages compiled", compiled.Load())
			if total > 0 {
				progress = fmt.Sprintf("%d of at most %d packages compiled", compiled.Load(), total)
			}
			fmt.Fprintf(b.log, "%s: still building, %s, %s elapsed\n", name, progress, time.Since(start).Round(time.Second))
		}
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, lastLines.String())
	}
	return nil
}

// goCmd runs one go command in modDir and returns its output on failure.
func (b builder) goCmd(ctx context.Context, modDir, name string, args ...string) error {
	fmt.Fprintf(b.log, "%s: go %s\n", name, strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// countPackages returns how many packages pkg depends on, or 0 if go list
// fails: the count only makes progress lines readable.
func countPackages(ctx context.Context, modDir, pkg string) int {
	cmd := exec.CommandContext(ctx, "go", "list", "-deps", pkg)
	cmd.Dir = modDir
	out, err := cmd.Output()
	if err != nil {
		return 0
	}
	return bytes.Count(out, []byte("\n"))
}

// downloadGoMod returns the go.mod of module@version from the module cache.
func downloadGoMod(ctx context.Context, dir, moduleAtVersion string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", moduleAtVersion)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			return nil, fmt.Errorf("go mod download %s: %w\n%s%s", moduleAtVersion, err, out, exitErr.Stderr)
		}
		return nil, err
	}
	var info struct{ GoMod string }
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, err
	}
	return os.ReadFile(info.GoMod)
}

// stagingReplaces turns k8s.io/kubernetes's local replace directives
// (k8s.io/api => ./staging/src/k8s.io/api) into replace lines that pin each
// staging module to its published release.
func stagingReplaces(goMod []byte, stagingVersion string) ([]string, error) {
	f, err := modfile.Parse("go.mod", goMod, nil)
	if err != nil {
		return nil, err
	}
	var lines []string
	for _, r := range f.Replace {
		if r.New.Version == "" && strings.HasPrefix(r.New.Path, "./staging/") {
			lines = append(lines, r.Old.Path+" => "+r.Old.Path+" "+stagingVersion)
		}
	}
	if len(lines) == 0 {
		return nil, errors.New("k8s.io/kubernetes go.mod has no staging replace directives")
	}
	return lines, nil
}

// lines keeps the last few lines of a command's output for its error message.
type lines struct{ buf []string }

func (l *lines) add(s string) {
	l.buf = append(l.buf, s)
	if len(l.buf) > 40 {
		l.buf = l.buf[1:]
	}
}

func (l *lines) String() string { return strings.Join(l.buf, "\n") }
