package main

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// dockerfileFinal reads the Dockerfile's final stage: USER, WORKDIR,
// ENTRYPOINT, and the go build line of the builder stage.
func dockerfileFinal(t *testing.T) (user, workdir string, entrypoint []string, build string) {
	t.Helper()
	f, err := os.Open("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	scan := bufio.NewScanner(f)
	for scan.Scan() {
		line := strings.TrimSpace(scan.Text())
		keyword, rest, _ := strings.Cut(line, " ")
		switch keyword {
		case "FROM":
			user, workdir, entrypoint = "", "", nil
		case "USER":
			user = rest
		case "WORKDIR":
			workdir = rest
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &entrypoint); err != nil {
				t.Fatalf("ENTRYPOINT %s: %v", rest, err)
			}
		case "RUN":
			if strings.Contains(rest, "go build") {
				build = rest
			}
		}
	}
	return user, workdir, entrypoint, build
}

// The image make cluster builds must be the one the Dockerfile describes:
// what a user's cluster runs is what the suite tested.
func TestKeymintImageMatchesTheDockerfile(t *testing.T) {
	user, workdir, entrypoint, build := dockerfileFinal(t)
	spec := keymintImageSpec
	if spec.user != user {
		t.Errorf("image user %q, Dockerfile USER %q", spec.user, user)
	}
	if spec.workdir != workdir {
		t.Errorf("image working directory %q, Dockerfile WORKDIR %q", spec.workdir, workdir)
	}
	if want := []string{"/" + spec.name}; !slices.Equal(entrypoint, want) {
		t.Errorf("Dockerfile ENTRYPOINT %q, image entry point %q", entrypoint, want)
	}
	for _, flag := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags="-s -w"`, spec.pkg} {
		if !strings.Contains(build, flag) {
			t.Errorf("Dockerfile build %q lacks %s, which the image's build uses", build, flag)
		}
	}
	if !slices.Contains(goBuildArgs, "-trimpath") || !slices.Contains(goBuildArgs, "-ldflags=-s -w") {
		t.Errorf("image build args %q lack the Dockerfile's flags", goBuildArgs)
	}
}

// The binary is static (no interpreter), as distroless/static needs, and
// the image's config says what the Dockerfile says.
func TestKeymintImageIsStaticAndNonRoot(t *testing.T) {
	if testing.Short() {
		t.Skip("builds keymint: skipped with -short")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "keymint")
	cmd := exec.Command("go", append(goBuildArgs, "-o", bin, keymintImageSpec.pkg)...)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("keymint is dynamically linked: distroless/static has no libc")
		}
	}
	f.Close()
	img, err := keymintImageSpec.image(bin)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Config.User != "65532:65532" || !slices.Equal(cfg.Config.Entrypoint, []string{"/keymint"}) || cfg.OS != "linux" {
		t.Errorf("image config %+v", cfg.Config)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("want one layer, got %d (%v)", len(layers), err)
	}
}
