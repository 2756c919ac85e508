package e2e

// nginx_test.go: real nginx (the Debian package `make test-deps` installs)
// runs config/nginx/keymint.conf in front of a small application, and the
// client sees 200, 401, 403 and 429 with Retry-After.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
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

// nginxConf is the shipped configuration, relative to the repository root.
const nginxConf = "config/nginx/keymint.conf"

// changeLine is a line of nginxConf a user adapts: `directive value;  # CHANGE(name)`.
var changeLine = regexp.MustCompile(`^(\s*)([a-z_]+)\s+[^;#]*;\s*# CHANGE\(([a-z-]+)\)\s*$`)

// configureNginx returns conf with the value of each line marked CHANGE(name)
// set to values[name], the directive and everything else unchanged. Every
// marked line must have a value and every value a marked line.
func configureNginx(conf string, values map[string]string) (string, error) {
	lines := strings.Split(conf, "\n")
	seen := map[string]bool{}
	for i, line := range lines {
		if !strings.Contains(line, "# CHANGE(") || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		m := changeLine.FindStringSubmatch(line)
		if m == nil {
			return "", fmt.Errorf("line %d: a CHANGE mark on a line that is not `directive value;  # CHANGE(name)`: %q", i+1, line)
		}
		name := m[3]
		value, ok := values[name]
		if !ok {
			return "", fmt.Errorf("line %d: CHANGE(%s) has no value in the test", i+1, name)
		}
		if seen[name] {
			return "", fmt.Errorf("line %d: CHANGE(%s) appears twice", i+1, name)
		}
		seen[name] = true
		lines[i] = m[1] + m[2] + " " + value + ";"
	}
	for name := range values {
		if !seen[name] {
			return "", fmt.Errorf("no line is marked CHANGE(%s)", name)
		}
	}
	return strings.Join(lines, "\n"), nil
}

// nginxBinary finds nginx on PATH or where Debian puts it (/usr/sbin is not
// on every user's PATH).
func nginxBinary() string {
	GinkgoHelper()
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	Fail("the end-to-end suite runs nginx and none is installed: run `make test-deps` (Debian: apt-get install nginx)")
	return ""
}

// childrenOf lists the processes whose parent is pid (nginx's workers).
func childrenOf(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at its last ')'.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// nginxAlive lists which of pids are still running nginx processes.
func nginxAlive(pids []int) []string {
	var alive []string
	for _, pid := range pids {
		cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err == nil && strings.HasPrefix(string(cmdline), "nginx") {
			alive = append(alive, fmt.Sprintf("%d: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " ")))
		}
	}
	return alive
}

// nginx is a running nginx with config/nginx/keymint.conf.
type nginx struct {
	// url is where it listens; prefix is its directory (logs, config).
	url, prefix string
}

// startNginx writes nginxConf with only its CHANGE(...) values set, in
// front of keymint at checkURL (its CA in caFile) and the application at
// appURL, starts nginx, and stops it gracefully when the calling node ends,
// failing if a process is left behind.
func startNginx(checkURL, caFile, appURL string) *nginx {
	GinkgoHelper()
	nginxBin := nginxBinary()
	By("writing " + nginxConf + " with only its CHANGE(...) values set")
	// Workers run as nobody when the suite runs as root: the prefix (temporary
	// files) must be reachable for them, so not under a 0700 test directory.
	prefix, err := os.MkdirTemp("", "keymint-nginx-")
	Expect(err).NotTo(HaveOccurred())
	Expect(os.Chmod(prefix, 0o755)).To(Succeed())
	DeferCleanup(os.RemoveAll, prefix)
	shipped, err := os.ReadFile(filepath.Join(root, nginxConf))
	Expect(err).NotTo(HaveOccurred())
	keymintURL, err := url.Parse(checkURL)
	Expect(err).NotTo(HaveOccurred())
	// nginx binds a port number of its config: one taken meanwhile is
	// picked again.
	var (
		port     int
		cmd      *exec.Cmd
		exited   chan error
		nginxLog *bytes.Buffer
	)
	Expect(testenv.OnFreePorts(1, func(ports []int) error {
		port = ports[0]
		conf, err := configureNginx(string(shipped), map[string]string{
			"listen":       fmt.Sprintf("127.0.0.1:%d", port),
			"keymint":      keymintURL.Host,
			"keymint-name": "localhost", // make run's certificate is for 127.0.0.1 and localhost
			"keymint-ca":   caFile,
			"app":          strings.TrimPrefix(appURL, "http://"),
		})
		Expect(err).NotTo(HaveOccurred())
		confPath := filepath.Join(prefix, "keymint.conf")
		Expect(os.WriteFile(confPath, []byte(conf), 0o644)).To(Succeed())
		args := []string{"-p", prefix + "/", "-e", "stderr", "-c", confPath}
		out, err := exec.Command(nginxBin, append(args, "-t")...).CombinedOutput()
		Expect(err).NotTo(HaveOccurred(), "nginx -t:\n%s", out)

		By("starting nginx")
		cmd = exec.Command(nginxBin, append(args, "-g", "daemon off;")...)
		exited, nginxLog, err = startListening(cmd, "nginx", port, 10*time.Second)
		return err
	})).To(Succeed())
	var pids []int
	DeferCleanup(func() {
		By("stopping nginx gracefully (SIGQUIT, as nginx -s quit)")
		pids = append(append(pids, cmd.Process.Pid), childrenOf(cmd.Process.Pid)...)
		Expect(cmd.Process.Signal(syscall.SIGQUIT)).To(Succeed())
		select {
		case err := <-exited:
			Expect(err).NotTo(HaveOccurred(), "nginx exited with an error:\n%s", nginxLog.String())
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			Fail("nginx did not stop within 20 s of SIGQUIT:\n" + nginxLog.String())
		}
		Eventually(func() []string { return nginxAlive(pids) }, 10*time.Second).Should(BeEmpty(), "nginx processes left behind")
		Expect(processesUsing(prefix)).To(BeEmpty(), "processes left behind")
	})
	Eventually(func() []int { pids = childrenOf(cmd.Process.Pid); return pids }, 10*time.Second).ShouldNot(BeEmpty(), "nginx's workers")
	return &nginx{url: fmt.Sprintf("http://127.0.0.1:%d", port), prefix: prefix}
}

var _ = Describe("nginx with config/nginx/keymint.conf", Ordered, func() {
	const limit = 2 // the ServiceUser's requestsPerMinute
	var (
		prefix    string
		nginxURL  string
		client    *http.Client
		appHits   atomic.Int64
		fullToken string // holds reports:write, the scope the configuration asks for
		readToken string // invoices:read only
	)

	BeforeAll(func() {
		nginxBin := nginxBinary()
		out, _ := exec.Command(nginxBin, "-v").CombinedOutput()
		GinkgoWriter.Printf("%s", out)

		By("creating a ServiceUser limited to 2 checks a minute, and two tokens")
		manifest := fmt.Sprintf(`apiVersion: keymint.io/v1alpha1
kind: ServiceUser
metadata: {name: nginx-e2e}
spec:
  permissions: [invoices:read, reports:write]
  tokenPolicy: {requestsPerMinute: %d}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: nginx-e2e-full}
spec: {serviceUser: nginx-e2e, metadata: {team: payments}}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: nginx-e2e-read}
spec: {serviceUser: nginx-e2e, scopes: [invoices:read]}
`, limit)
		path := filepath.Join(devDir, "nginx-e2e.yaml")
		Expect(os.WriteFile(path, []byte(manifest), 0o600)).To(Succeed())
		mustKubectl("apply", "-f", path)
		mustKubectl("wait", "--for=condition=Ready", "apitoken/nginx-e2e-full", "apitoken/nginx-e2e-read", "--timeout=60s")
		fullToken = secretToken("nginx-e2e-full")
		readToken = secretToken("nginx-e2e-read")

		By("starting the application nginx protects")
		app := proxiedApp(&appHits)

		var n *nginx
		n, client = startNginx(env["KEYMINT_CHECK_URL"], env["KEYMINT_CA_FILE"], app.URL), &http.Client{Timeout: 5 * time.Second}
		nginxURL, prefix = n.url, n.prefix
	})

	AfterEach(func() {
		if !CurrentSpecReport().Failed() {
			return
		}
		for _, name := range []string{"error.log", "access.log"} {
			b, err := os.ReadFile(filepath.Join(prefix, name))
			GinkgoWriter.Printf("--- nginx %s (%v):\n%s\n", name, err, b)
		}
	})

	// get asks nginx for path with tok (none if ""), and extra headers.
	get := func(path, tok string, headers ...string) (*http.Response, []byte) {
		GinkgoHelper()
		return getThrough(client, nginxURL, path, tok, headers...)
	}

	It("lets a token with the scope through: 200, and the application sees who called, not what the client claims", func() {
		resp, body := get("/reports/2026", fullToken, "X-Keymint-User", "keymint:default:someone-else", "X-Keymint-Meta-Team", "admins")
		Expect(resp.StatusCode).To(Equal(http.StatusOK), "%s", body)
		var app appView
		Expect(json.Unmarshal(body, &app)).To(Succeed(), "%s", body)
		Expect(app).To(Equal(appView{
			User: "keymint:default:nginx-e2e", Token: "default/nginx-e2e-full", Scopes: "invoices:read,reports:write",
			Path:     "/reports/2026", // and no Authorization: the token stays at nginx
			MetaTeam: "payments",      // the token's metadata, not the client's header
		}))
		Expect(resp.Header.Get("X-RateLimit-Limit")).To(Equal(strconv.Itoa(limit)))
	})

	It("refuses a missing, malformed or unknown token: 401 with keymint's WWW-Authenticate", func() {
		expectUnauthenticated(get, &appHits)
	})

	It("refuses a token without the scope: 403", func() {
		hits := appHits.Load()
		resp, body := get("/reports/2026", readToken)
		Expect(resp.StatusCode).To(Equal(http.StatusForbidden), "%s", body)
		Expect(errorCode(body)).To(Equal("insufficient_scope"))
		Expect(resp.Header.Get("X-Keymint-Error")).To(Equal("insufficient_scope"))
		Expect(resp.Header.Values("Retry-After")).To(BeEmpty())
		Expect(appHits.Load()).To(Equal(hits))
	})

	It("answers 429 with Retry-After once the token's rate is used up", func() {
		// The client's own rate_limit_status=429 must not reach keymint: if it
		// did, keymint would answer 429 to the subrequest and nginx the client 500.
		// Windows are aligned to the minute: if one ends during the loop, the
		// count starts again, hence up to 3 × limit requests.
		var resp *http.Response
		var body []byte
		for i := 0; i < 3*limit+1; i++ {
			hits := appHits.Load()
			resp, body = get("/reports/2026?rate_limit_status=429", fullToken)
			if resp.StatusCode == http.StatusTooManyRequests {
				Expect(appHits.Load()).To(Equal(hits), "a rate-limited request never reaches the application")
				break
			}
			Expect(resp.StatusCode).To(Equal(http.StatusOK), "request %d: %s", i+1, body)
		}
		Expect(resp.StatusCode).To(Equal(http.StatusTooManyRequests), "%s", body)
		retryAfter, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		Expect(err).NotTo(HaveOccurred(), "Retry-After: %q", resp.Header.Get("Retry-After"))
		Expect(retryAfter).To(And(BeNumerically(">", 0), BeNumerically("<=", 60)))
		Expect(resp.Header.Get("X-Keymint-Error")).To(Equal("rate_limited"))
		Expect(resp.Header.Get("X-RateLimit-Limit")).To(Equal(strconv.Itoa(limit)))
		Expect(resp.Header.Get("X-RateLimit-Remaining")).To(Equal("0"))
		Expect(resp.Header.Get("Content-Type")).To(Equal("application/json"))
		Expect(string(body)).To(MatchJSON(fmt.Sprintf(`{"error": "rate_limited", "retryAfter": %d}`, retryAfter)))
		GinkgoWriter.Printf("429 with Retry-After: %d\n", retryAfter)
	})

	It("answers 429 quota_exceeded, with the quota's headers and when it refills, once the token's quota is spent", func() {
		path := filepath.Join(devDir, "nginx-e2e-quota.yaml")
		Expect(os.WriteFile(path, []byte(`apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: nginx-e2e-quota}
spec: {serviceUser: nginx-e2e, quota: {uses: 1, refill: {every: 24h}}}
`), 0o600)).To(Succeed())
		mustKubectl("apply", "-f", path)
		mustKubectl("wait", "--for=condition=Ready", "apitoken/nginx-e2e-quota", "--timeout=60s")
		first, resp := expectQuotaExceeded(get, &appHits, proxyTokens{quota: secretToken("nginx-e2e-quota")})
		Expect(first.Header.Get("X-Quota-Limit")).To(Equal("1"), "the quota's headers on the application's answer")
		Expect(first.Header.Get("X-Quota-Remaining")).To(Equal("0"))
		Expect(resp.Header.Get("X-Quota-Limit")).To(Equal("1"))
		refill := time.Now().UTC().Truncate(24 * time.Hour).Add(24 * time.Hour)
		Expect(resp.Header.Get("X-Quota-Reset")).To(Equal(strconv.FormatInt(refill.Unix(), 10)))
		retryAfter, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		Expect(err).NotTo(HaveOccurred(), "Retry-After: %q", resp.Header.Get("Retry-After"))
		Expect(retryAfter).To(BeNumerically("~", time.Until(refill).Seconds(), 5))
	})

	It("refuses a token restricted to the client's address while keymint does not trust nginx: 403 source_not_allowed", func() {
		path := filepath.Join(devDir, "nginx-e2e-pinned.yaml")
		Expect(os.WriteFile(path, []byte(`apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: nginx-e2e-pinned}
spec: {serviceUser: nginx-e2e, allowedSourceCIDRs: ["127.0.0.5/32"]}
`), 0o600)).To(Succeed())
		mustKubectl("apply", "-f", path)
		mustKubectl("wait", "--for=condition=Ready", "apitoken/nginx-e2e-pinned", "--timeout=60s")
		pinned := secretToken("nginx-e2e-pinned")
		from := clientFrom("127.0.0.5")
		// keymint sees nginx's connection (127.0.0.1), not the client, and
		// make run trusts no proxy: the token is refused from everywhere.
		Eventually(func() int {
			req, _ := http.NewRequest(http.MethodGet, nginxURL+"/reports", nil)
			req.Header.Set("Authorization", "Bearer "+pinned)
			resp, err := from.Do(req)
			if err != nil {
				return 0
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode == http.StatusForbidden {
				Expect(resp.Header.Get("X-Keymint-Error")).To(Equal("source_not_allowed"), "%s", body)
			}
			return resp.StatusCode
		}).Should(Equal(http.StatusForbidden))
	})
})

// clientFrom is an HTTP client whose connections come from addr, one of the
// loopback addresses.
func clientFrom(addr string) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(addr)}}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}
