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
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
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
	DeferCleanup(func() {
		By("stopping traefik (SIGTERM)")
		Expect(cmd.Process.Signal(syscall.SIGTERM)).To(Succeed())
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			Fail("traefik did not stop within 20 s of SIGTERM:\n" + log.String())
		}
	})
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

var _ = Describe("Traefik with config/traefik", Ordered, func() {
	var (
		traefikURL string
		appHits    atomic.Int64
		fullToken  string // reports:write and invoices:read, metadata team=payments
		readToken  string // invoices:read only
		plain      string // all scopes, no metadata
		quota      string // all scopes, one use a day
	)
	client := &http.Client{Timeout: 5 * time.Second}

	BeforeAll(func() {
		manifest := `apiVersion: keymint.io/v1alpha1
kind: ServiceUser
metadata: {name: traefik-e2e}
spec:
  permissions: [invoices:read, reports:write]
  tokenPolicy: {requestsPerMinute: 1000}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: traefik-e2e-full}
spec: {serviceUser: traefik-e2e, metadata: {team: payments}}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: traefik-e2e-read}
spec: {serviceUser: traefik-e2e, scopes: [invoices:read]}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: traefik-e2e-plain}
spec: {serviceUser: traefik-e2e}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: traefik-e2e-quota}
spec: {serviceUser: traefik-e2e, quota: {uses: 1, refill: {every: 24h}}}
`
		path := filepath.Join(devDir, "traefik-e2e.yaml")
		Expect(os.WriteFile(path, []byte(manifest), 0o600)).To(Succeed())
		mustKubectl("apply", "-f", path)
		mustKubectl("wait", "--for=condition=Ready", "apitoken/traefik-e2e-full", "apitoken/traefik-e2e-read", "apitoken/traefik-e2e-plain", "apitoken/traefik-e2e-quota", "--timeout=60s")
		fullToken, readToken = secretToken("traefik-e2e-full"), secretToken("traefik-e2e-read")
		plain, quota = secretToken("traefik-e2e-plain"), secretToken("traefik-e2e-quota")

		app := proxiedApp(&appHits)
		traefikURL = startTraefik(env["KEYMINT_CHECK_URL"], env["KEYMINT_CA_FILE"], app.URL)
	})

	get := func(path, tok string, headers ...string) (*http.Response, []byte) {
		GinkgoHelper()
		return getThrough(client, traefikURL, path, tok, headers...)
	}

	It("lets a token with the scope through: 200, and the application sees keymint's identity and metadata, not the client's or the token", func() {
		var resp *http.Response
		var body []byte
		// Traefik reads dynamic.yaml just after it listens.
		Eventually(func() int {
			resp, body = get("/reports/2026", fullToken,
				"X-Keymint-User", "keymint:default:admin", "X-Keymint-Meta-Team", "root", "X-Keymint-Scopes", "everything:admin")
			return resp.StatusCode
		}).Should(Equal(http.StatusOK), "%s", body)
		var app appView
		Expect(json.Unmarshal(body, &app)).To(Succeed(), "%s", body)
		Expect(app).To(Equal(appView{
			User: "keymint:default:traefik-e2e", Token: "default/traefik-e2e-full", Scopes: "invoices:read,reports:write",
			Path: "/reports/2026", MetaTeam: "payments",
		}), "keymint-drop-token keeps Authorization from the application")

		By("a token without metadata: the client's own X-Keymint-Meta-Team is dropped, not passed on")
		resp, body = get("/reports/2026", plain, "X-Keymint-Meta-Team", "root")
		Expect(resp.StatusCode).To(Equal(http.StatusOK), "%s", body)
		var bare appView
		Expect(json.Unmarshal(body, &bare)).To(Succeed(), "%s", body)
		Expect(bare.User).To(Equal("keymint:default:traefik-e2e"))
		Expect(bare.MetaTeam).To(BeEmpty(), "the client's own metadata header reached the application")
	})

	It("refuses a missing, malformed or unknown token: 401 with keymint's WWW-Authenticate, and the application sees none", func() {
		expectUnauthenticated(get, &appHits)
	})

	It("asks each router's scope: a read-only token is refused 403 insufficient_scope on /reports/, let through on /invoices/", func() {
		hits := appHits.Load()
		resp, body := get("/reports/2026", readToken)
		Expect(resp.StatusCode).To(Equal(http.StatusForbidden), "%s", body)
		Expect(errorCode(body)).To(Equal("insufficient_scope"))
		Expect(appHits.Load()).To(Equal(hits))

		resp, body = get("/invoices/7", readToken)
		Expect(resp.StatusCode).To(Equal(http.StatusOK), "%s", body)
		var app appView
		Expect(json.Unmarshal(body, &app)).To(Succeed(), "%s", body)
		Expect(app.Token).To(Equal("default/traefik-e2e-read"))
	})

	It("answers 429 quota_exceeded with Retry-After once a token's quota is spent", func() {
		resp, body := get("/reports/2026", quota)
		Expect(resp.StatusCode).To(Equal(http.StatusOK), "its one use: %s", body)
		hits := appHits.Load()
		resp, body = get("/reports/2026", quota)
		Expect(resp.StatusCode).To(Equal(http.StatusTooManyRequests), "%s", body)
		Expect(errorCode(body)).To(Equal("quota_exceeded"))
		Expect(resp.Header.Get("X-Quota-Remaining")).To(Equal("0"))
		retry, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		Expect(err).NotTo(HaveOccurred())
		Expect(retry).To(BeNumerically(">", 0))
		Expect(appHits.Load()).To(Equal(hits))
	})
})
