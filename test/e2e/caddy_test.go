package e2e

// caddy_test.go: real Caddy (Debian's caddy 2.6, which `make test-deps`
// installs) runs config/caddy/Caddyfile as it is, configured only through
// its environment variables, in front of a small application; the client
// sees 200, 401, 403 and 429, and the application sees keymint's identity,
// never the client's own.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/keymint/keymint/internal/testenv"
)

// caddyfile is the shipped configuration, relative to the repository root.
const caddyfile = "config/caddy/Caddyfile"

// startCaddy runs caddy with the shipped Caddyfile in front of appURL and
// returns its URL; it stops with the spec tree.
func startCaddy(checkURL, caFile, appURL string) string {
	GinkgoHelper()
	bin, err := exec.LookPath("caddy")
	Expect(err).NotTo(HaveOccurred(), "caddy is not installed: make test-deps installs Debian's")
	home, err := os.MkdirTemp("", "keymint-caddy-")
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(os.RemoveAll, home)
	keymint, err := url.Parse(checkURL)
	Expect(err).NotTo(HaveOccurred())
	var (
		port   int
		cmd    *exec.Cmd
		exited chan error
		log    *bytes.Buffer
	)
	Expect(testenv.OnFreePorts(1, func(ports []int) error {
		port = ports[0]
		cmd = exec.Command(bin, "run", "--adapter", "caddyfile", "--config", filepath.Join(root, caddyfile))
		cmd.Env = append(os.Environ(),
			"XDG_DATA_HOME="+home, "XDG_CONFIG_HOME="+home, "HOME="+home,
			fmt.Sprintf("CADDY_LISTEN=127.0.0.1:%d", port), "KEYMINT_CHECK="+keymint.Host,
			"KEYMINT_NAME=localhost", // make run's certificate is for 127.0.0.1 and localhost
			"KEYMINT_CA="+caFile, "APP="+strings.TrimPrefix(appURL, "http://"))
		var err error
		exited, log, err = startListening(cmd, "caddy", port, 20*time.Second)
		return err
	})).To(Succeed())
	DeferCleanup(func() {
		By("stopping caddy (SIGTERM)")
		Expect(cmd.Process.Signal(syscall.SIGTERM)).To(Succeed())
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			Fail("caddy did not stop within 20 s of SIGTERM:\n" + log.String())
		}
	})
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

var _ = Describe("Caddy with config/caddy/Caddyfile", Ordered, func() {
	var (
		caddyURL  string
		appHits   atomic.Int64
		fullToken string // holds reports:write, the scope the Caddyfile asks for
		readToken string // invoices:read only
		plain     string // all scopes, no metadata
		quota     string // all scopes, one use a day
	)
	client := &http.Client{Timeout: 5 * time.Second}

	BeforeAll(func() {
		out, _ := exec.Command("caddy", "version").CombinedOutput()
		GinkgoWriter.Printf("caddy %s", out)
		manifest := `apiVersion: keymint.io/v1alpha1
kind: ServiceUser
metadata: {name: caddy-e2e}
spec:
  permissions: [invoices:read, reports:write]
  tokenPolicy: {requestsPerMinute: 1000}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: caddy-e2e-full}
spec: {serviceUser: caddy-e2e, metadata: {team: payments}}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: caddy-e2e-read}
spec: {serviceUser: caddy-e2e, scopes: [invoices:read]}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: caddy-e2e-plain}
spec: {serviceUser: caddy-e2e}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: caddy-e2e-quota}
spec: {serviceUser: caddy-e2e, quota: {uses: 1, refill: {every: 24h}}}
`
		path := filepath.Join(devDir, "caddy-e2e.yaml")
		Expect(os.WriteFile(path, []byte(manifest), 0o600)).To(Succeed())
		mustKubectl("apply", "-f", path)
		mustKubectl("wait", "--for=condition=Ready", "apitoken/caddy-e2e-full", "apitoken/caddy-e2e-read", "apitoken/caddy-e2e-plain", "apitoken/caddy-e2e-quota", "--timeout=60s")
		fullToken, readToken = secretToken("caddy-e2e-full"), secretToken("caddy-e2e-read")
		plain, quota = secretToken("caddy-e2e-plain"), secretToken("caddy-e2e-quota")

		app := proxiedApp(&appHits)
		caddyURL = startCaddy(env["KEYMINT_CHECK_URL"], env["KEYMINT_CA_FILE"], app.URL)
	})

	get := func(path, tok string, headers ...string) (*http.Response, []byte) {
		GinkgoHelper()
		return getThrough(client, caddyURL, path, tok, headers...)
	}

	It("lets a token with the scope through: 200, and the application sees keymint's identity and metadata, not the client's", func() {
		var resp *http.Response
		var body []byte
		Eventually(func() int {
			resp, body = get("/reports/2026", fullToken,
				"X-Keymint-User", "keymint:default:admin", "X-Keymint-Meta-Team", "root", "X-Keymint-Scopes", "everything:admin")
			return resp.StatusCode
		}).Should(Equal(http.StatusOK), "%s", body)
		var app appView
		Expect(json.Unmarshal(body, &app)).To(Succeed(), "%s", body)
		Expect(app).To(Equal(appView{
			User: "keymint:default:caddy-e2e", Token: "default/caddy-e2e-full", Scopes: "invoices:read,reports:write",
			Path: "/reports/2026", MetaTeam: "payments",
		}))

		By("a token without metadata: the client's own X-Keymint-Meta-Team is dropped, not passed on")
		resp, body = get("/reports/2026", plain, "X-Keymint-Meta-Team", "root")
		Expect(resp.StatusCode).To(Equal(http.StatusOK), "%s", body)
		var bare appView
		Expect(json.Unmarshal(body, &bare)).To(Succeed(), "%s", body)
		Expect(bare.User).To(Equal("keymint:default:caddy-e2e"))
		Expect(bare.MetaTeam).To(BeEmpty(), "the client's own metadata header (or Caddy 2.6's placeholder text) reached the application")
	})

	It("refuses a missing, malformed or unknown token: 401 with keymint's WWW-Authenticate, and the application sees none", func() {
		expectUnauthenticated(get, &appHits)
	})

	It("refuses a token without the scope: 403 insufficient_scope", func() {
		hits := appHits.Load()
		resp, body := get("/reports/2026", readToken)
		Expect(resp.StatusCode).To(Equal(http.StatusForbidden), "%s", body)
		Expect(errorCode(body)).To(Equal("insufficient_scope"))
		Expect(appHits.Load()).To(Equal(hits))
	})

	It("answers 429 quota_exceeded with Retry-After once a token's quota is spent", func() {
		resp, body := get("/reports/2026", quota)
		Expect(resp.StatusCode).To(Equal(http.StatusOK), "its one use: %s", body)
		Expect(resp.Header.Get("X-Quota-Remaining")).To(BeEmpty(), "keymint's headers on a 200 are for the application, not the client")
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
