package e2e

// traefik_test.go: real Traefik (v3.6, built from its Go module by
// `make traefik` into bin/k8s beside the control plane) runs
// config/traefik/traefik.yaml and dynamic.yaml as shipped, changed only on
// the lines marked CHANGE (where it listens, keymint's address and CA, the
// application, the file's own path), in front of a small application: the
// client sees 200, 401, 403 and 429, and the application sees keymint's
// identity and metadata, never the client's own.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/keymint/keymint/internal/testenv"
)

// The shipped Traefik configuration, relative to the repository root.
const (
	traefikStatic  = "config/traefik/traefik.yaml"
	traefikDynamic = "config/traefik/dynamic.yaml"
)

// yamlChange matches a YAML line a user adapts: `key: value  # CHANGE(what)`,
// or `- key: value  # CHANGE(what)`.
var yamlChange = regexp.MustCompile(`^(\s*(?:- )?[A-Za-z]+: )(\S+)(\s+# CHANGE\(([a-z-]+)\)\s*)$`)

// changeRecipe returns file with the value of each line marked CHANGE(what)
// rewritten by values[what], everything else unchanged. Every marked line
// must have a function and every function a marked line.
func changeRecipe(file string, values map[string]func(old string) string) []byte {
	GinkgoHelper()
	in, err := os.ReadFile(filepath.Join(root, file))
	Expect(err).NotTo(HaveOccurred())
	lines := strings.Split(string(in), "\n")
	seen := map[string]bool{}
	for i, line := range lines {
		if !strings.Contains(line, "# CHANGE(") || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		m := yamlChange.FindStringSubmatch(line)
		Expect(m).NotTo(BeNil(), "%s:%d: a CHANGE mark on a line that is not `key: value  # CHANGE(what)`", file, i+1)
		change, ok := values[m[4]]
		Expect(ok).To(BeTrue(), "%s:%d: CHANGE(%s) has no value in the suite", file, i+1, m[4])
		seen[m[4]] = true
		lines[i] = m[1] + change(m[2]) + m[3]
	}
	for what := range values {
		Expect(seen).To(HaveKey(what), "%s marks no CHANGE(%s)", file, what)
	}
	return []byte(strings.Join(lines, "\n"))
}

// startTraefik runs traefik with the shipped configuration in front of
// appURL and returns its URL; it stops with the spec tree.
func startTraefik(checkURL, caFile, appURL string) string {
	GinkgoHelper()
	bin, err := exec.LookPath("traefik")
	if err != nil {
		bin, err = exec.LookPath(filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "traefik"))
	}
	Expect(err).NotTo(HaveOccurred(), "traefik is neither on PATH nor in KUBEBUILDER_ASSETS: make traefik builds it into bin/k8s/<Kubernetes version>/")
	dir, err := os.MkdirTemp("", "keymint-traefik-")
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(os.RemoveAll, dir)

	dynamic := changeRecipe(traefikDynamic, map[string]func(string) string{
		// https://localhost:8443/check?scope=... keeps its path and query.
		"keymint":    func(old string) string { return regexp.MustCompile(`^https://[^/]+`).ReplaceAllString(old, checkURL) },
		"keymint-ca": func(string) string { return caFile },
		"app":        func(string) string { return appURL },
	})
	dynamicFile := filepath.Join(dir, "dynamic.yaml")
	Expect(os.WriteFile(dynamicFile, dynamic, 0o600)).To(Succeed())

	var (
		port   int
		cmd    *exec.Cmd
		exited chan error
		log    *bytes.Buffer
	)
	version, _ := exec.Command(bin, "version").CombinedOutput()
	GinkgoWriter.Printf("%s version:\n%s", bin, version)
	Expect(testenv.OnFreePorts(1, func(ports []int) error {
		port = ports[0]
		static := changeRecipe(traefikStatic, map[string]func(string) string{
			"listen":  func(string) string { return fmt.Sprintf("127.0.0.1:%d", port) },
			"dynamic": func(string) string { return dynamicFile },
		})
		staticFile := filepath.Join(dir, "traefik.yaml")
		if err := os.WriteFile(staticFile, static, 0o600); err != nil {
			return err
		}
		cmd = exec.Command(bin, "--configFile="+staticFile)
		cmd.Dir = dir
		var err error
		exited, log, err = startListening(cmd, "traefik", port, 20*time.Second)
		return err
	})).To(Succeed())
	stopOnCleanup("traefik", cmd, exited, log)
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

var _ = Describe("Traefik with config/traefik", Ordered, func() {
	var (
		traefikURL string
		appHits    atomic.Int64
		tokens     proxyTokens
	)
	client := &http.Client{Timeout: 5 * time.Second}

	BeforeAll(func() {
		tokens = issueProxyTokens("traefik-e2e")
		app := proxiedApp(&appHits)
		traefikURL = startTraefik(env["KEYMINT_CHECK_URL"], env["KEYMINT_CA_FILE"], app.URL)
	})

	get := func(path, tok string, headers ...string) (*http.Response, []byte) {
		GinkgoHelper()
		return getThrough(client, traefikURL, path, tok, headers...)
	}

	It("lets a token with the scope through: 200, and the application sees keymint's identity and metadata, not the client's or the token", func() {
		expectIdentityNotTheClients(get, "traefik-e2e", tokens)
	})

	It("refuses a missing, malformed or unknown token: 401 with keymint's WWW-Authenticate, and the application sees none", func() {
		expectUnauthenticated(get, &appHits)
	})

	It("asks each router's scope: a read-only token is refused 403 insufficient_scope on /reports/, let through on /invoices/", func() {
		hits := appHits.Load()
		resp, body := get("/reports/2026", tokens.read)
		Expect(resp.StatusCode).To(Equal(http.StatusForbidden), "%s", body)
		Expect(errorCode(body)).To(Equal("insufficient_scope"))
		Expect(appHits.Load()).To(Equal(hits))

		resp, body = get("/invoices/7", tokens.read)
		Expect(resp.StatusCode).To(Equal(http.StatusOK), "%s", body)
		var app appView
		Expect(json.Unmarshal(body, &app)).To(Succeed(), "%s", body)
		Expect(app.Token).To(Equal("default/traefik-e2e-read"))
	})

	It("answers 429 quota_exceeded with Retry-After once a token's quota is spent", func() {
		expectQuotaExceeded(get, &appHits, tokens)
	})
})
