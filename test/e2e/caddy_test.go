package e2e

// caddy_test.go: real Caddy (Debian's caddy 2.6, which `make test-deps`
// installs) runs config/caddy/Caddyfile as it is, configured only through
// its environment variables, in front of a small application; the client
// sees 200, 401, 403 and 429, and the application sees keymint's identity,
// never the client's own.

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
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
	stopOnCleanup("caddy", cmd, exited, log)
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

var _ = Describe("Caddy with config/caddy/Caddyfile", Ordered, func() {
	var (
		caddyURL string
		appHits  atomic.Int64
		tokens   proxyTokens
	)
	client := &http.Client{Timeout: 5 * time.Second}

	BeforeAll(func() {
		out, _ := exec.Command("caddy", "version").CombinedOutput()
		GinkgoWriter.Printf("caddy %s", out)
		tokens = issueProxyTokens("caddy-e2e")
		app := proxiedApp(&appHits)
		caddyURL = startCaddy(env["KEYMINT_CHECK_URL"], env["KEYMINT_CA_FILE"], app.URL)
	})

	get := func(path, tok string, headers ...string) (*http.Response, []byte) {
		GinkgoHelper()
		return getThrough(client, caddyURL, path, tok, headers...)
	}

	It("lets a token with the scope through: 200, and the application sees keymint's identity and metadata, not the client's", func() {
		expectIdentityNotTheClients(get, "caddy-e2e", tokens)
	})

	It("refuses a missing, malformed or unknown token: 401 with keymint's WWW-Authenticate, and the application sees none", func() {
		expectUnauthenticated(get, &appHits)
	})

	It("refuses a token without the scope: 403 insufficient_scope", func() {
		hits := appHits.Load()
		resp, body := get("/reports/2026", tokens.read)
		Expect(resp.StatusCode).To(Equal(http.StatusForbidden), "%s", body)
		Expect(errorCode(body)).To(Equal("insufficient_scope"))
		Expect(appHits.Load()).To(Equal(hits))
	})

	It("answers 429 quota_exceeded with Retry-After once a token's quota is spent", func() {
		first, _ := expectQuotaExceeded(get, &appHits, tokens)
		Expect(first.Header.Get("X-Quota-Remaining")).To(BeEmpty(), "keymint's headers on a 200 are for the application, not the client")
	})
})
