package main

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Images built here: there is no registry to pull from.
const (
	keymintImage = "keymint.local/keymint:dev"
	pauseImage   = "keymint.local/pause:dev"
	corednsImage = "keymint.local/coredns:dev"
	testappImage = "keymint.local/testapp:dev"
)

// imageSpec is a one-layer image: a static binary at /<name> and the few
// files a distroless image has.
type imageSpec struct {
	ref string
	// binary is built from pkg, or copied from a file built elsewhere.
	name, pkg, file string
	user            string
	workdir         string
}

// keymintImageSpec matches the Dockerfile's final stage: the same static
// binary, entry point, working directory and non-root user (a test checks).
var keymintImageSpec = imageSpec{ref: keymintImage, name: "keymint", pkg: "./cmd/keymint", user: "65532:65532", workdir: "/"}

// goBuildArgs are the Dockerfile's build flags, with CGO_ENABLED=0.
var goBuildArgs = []string{"build", "-trimpath", "-ldflags=-s -w"}

func (c *cluster) imageSpecs() []imageSpec {
	return []imageSpec{
		keymintImageSpec,
		{ref: pauseImage, name: "pause", pkg: "./hack/cluster/pause", user: "65535:65535", workdir: "/"},
		// CoreDNS binds port 53 as root in its own network namespace.
		{ref: corednsImage, name: "coredns", file: filepath.Join(c.bin, "coredns"), user: "0:0", workdir: "/"},
		{ref: testappImage, name: "testapp", pkg: "./test/cluster/testapp", user: "65532:65532", workdir: "/"},
	}
}

// buildImages builds every image as an image archive in dir and returns
// their paths.
func (c *cluster) buildImages(ctx context.Context, dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var archives []string
	for _, spec := range c.imageSpecs() {
		bin := spec.file
		if spec.pkg != "" {
			bin = filepath.Join(dir, spec.name)
			cmd := exec.CommandContext(ctx, "go", append(goBuildArgs, "-o", bin, spec.pkg)...)
			cmd.Dir = c.repo
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
			if out, err := cmd.CombinedOutput(); err != nil {
				return nil, fmt.Errorf("go build %s: %v\n%s", spec.pkg, err, out)
			}
		}
		img, err := spec.image(bin)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", spec.ref, err)
		}
		tag, err := name.NewTag(spec.ref)
		if err != nil {
			return nil, err
		}
		archive := filepath.Join(dir, spec.name+".tar")
		if err := tarball.WriteToFile(archive, tag, img); err != nil {
			return nil, fmt.Errorf("writing %s: %w", archive, err)
		}
		archives = append(archives, archive)
	}
	return archives, nil
}

// image assembles the image from the binary at bin.
func (spec imageSpec) image(bin string) (v1.Image, error) {
	layerTar, err := spec.layer(bin)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Config: v1.Config{
			Entrypoint: []string{"/" + spec.name},
			User:       spec.user,
			WorkingDir: spec.workdir,
			Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		},
	})
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(img, layer)
}

// layer is the image's one layer: the binary, /etc/passwd and /etc/group
// naming root and the distroless users, the host's CA bundle, and /tmp.
func (spec imageSpec) layer(bin string) ([]byte, error) {
	binary, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// A fixed time: the same binary gives the same layer digest.
	when := time.Unix(0, 0)
	dir := func(name string, mode int64, owner int) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: owner, Gid: owner, ModTime: when})
	}
	file := func(name string, mode int64, content []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(content)), ModTime: when}); err != nil {
			return err
		}
		_, err := tw.Write(content)
		return err
	}
	ca, _ := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	steps := []func() error{
		func() error { return dir("etc", 0o755, 0) },
		func() error {
			return file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"))
		},
		func() error {
			return file("etc/group", 0o644, []byte("root:x:0:\nnonroot:x:65532:\nnobody:x:65534:\n"))
		},
		func() error { return dir("etc/ssl", 0o755, 0) },
		func() error { return dir("etc/ssl/certs", 0o755, 0) },
		func() error { return file("etc/ssl/certs/ca-certificates.crt", 0o644, ca) },
		func() error { return dir("tmp", 0o1777, 0) },
		func() error { return dir("home", 0o755, 0) },
		func() error { return dir("home/nonroot", 0o700, 65532) },
		func() error { return file(spec.name, 0o755, binary) },
		tw.Close,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// importImages loads image archives into containerd's k8s.io namespace, the
// one the kubelet's CRI uses, as `kind load` does.
func (c *cluster) importImages(ctx context.Context, archives []string) error {
	for _, a := range archives {
		out, err := exec.CommandContext(ctx, "ctr", "-a", c.containerdSocket(), "-n", "k8s.io", "images", "import", a).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ctr images import %s: %v\n%s", a, err, out)
		}
	}
	return nil
}
