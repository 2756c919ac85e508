package main_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keymint/keymint/internal/token"
)

// kubectl finds the plugin as kubectl-keymint on PATH and runs it as
// `kubectl keymint`, passing its arguments and exit status through.
func TestKubectlFindsThePlugin(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("this test runs the real kubectl, and none is on PATH: %v", err)
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "kubectl-keymint"), ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	env := append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	list := exec.Command(kubectl, "plugin", "list")
	list.Env = env
	out, err := list.Output()
	// kubectl plugin list exits non-zero when some other plugin on PATH
	// has a warning; its list is still complete.
	if err != nil && !errors.As(err, new(*exec.ExitError)) {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), filepath.Join(bin, "kubectl-keymint")) {
		t.Fatalf("kubectl plugin list does not list the plugin:\n%s", out)
	}

	leak := filepath.Join(t.TempDir(), "values.yaml")
	tok, err := token.Mint(token.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(leak, []byte("apiToken: "+tok+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	scan := exec.Command(kubectl, "keymint", "scan", leak)
	scan.Env = env
	var stdout, stderr strings.Builder
	scan.Stdout, scan.Stderr = &stdout, &stderr
	err = scan.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("kubectl keymint scan: %v, want exit status 1 (a token found)\nstderr: %s", err, stderr.String())
	}
	if want := leak + ":1: " + token.Display(tok) + "...\n"; stdout.String() != want {
		t.Fatalf("kubectl keymint scan printed %q, want %q", stdout.String(), want)
	}
	if strings.Contains(stdout.String()+stderr.String(), tok) {
		t.Fatal("kubectl keymint scan printed the whole token")
	}
}
