package e2e

// proxied_test.go: what the proxy suites (nginx, Caddy, Traefik) share:
// starting and stopping the proxy, the tokens they present, the
// application behind the proxy, a client's request through it, the error
// code of an answer.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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
	"github.com/keymint/keymint/internal/token"
)

// startListening starts a proxy's cmd, its output into the returned log
// and the spec's, and waits up to within for it to listen on port of
// 127.0.0.1. exited receives cmd's end. A proxy that exits first fails
// (testenv.AddrInUse when its port was taken meanwhile: pick another).
func startListening(cmd *exec.Cmd, name string, port int, within time.Duration) (exited chan error, log *bytes.Buffer, err error) {
	log = &bytes.Buffer{}
	cmd.Stdout = io.MultiWriter(log, GinkgoWriter)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, log, err
	}
	exited = make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return exited, log, testenv.Poll(context.Background(), within, fmt.Sprintf("%s to listen on 127.0.0.1:%d", name, port), func(ctx context.Context) error {
		select {
		case err := <-exited:
			exited <- err
			return testenv.Permanent(testenv.AddrInUse(fmt.Errorf("%s exited: %v\n%s", name, err, log), log.String()))
		default:
		}
		d := net.Dialer{Timeout: time.Second}
		c, err := d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return err
		}
		return c.Close()
	})
}

// stopOnCleanup stops a proxy started by startListening with SIGTERM when
// the spec tree ends, and fails if it does not exit within 20 s.
func stopOnCleanup(name string, cmd *exec.Cmd, exited chan error, log *bytes.Buffer) {
	DeferCleanup(func() {
		By("stopping " + name + " (SIGTERM)")
		Expect(cmd.Process.Signal(syscall.SIGTERM)).To(Succeed())
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			Fail(name + " did not stop within 20 s of SIGTERM:\n" + log.String())
		}
	})
}

// proxyTokens are the tokens a proxy suite presents, of ServiceUser
// <suite> (permissions invoices:read and reports:write).
type proxyTokens struct {
	full  string // both scopes, metadata team=payments
	read  string // invoices:read only
	plain string // both scopes, no metadata
	quota string // both scopes, one use a day
}

// issueProxyTokens applies the suite's ServiceUser and ApiTokens
// (<suite>-full, -read, -plain, -quota) and returns their tokens once
// ready.
func issueProxyTokens(suite string) proxyTokens {
	GinkgoHelper()
	manifest := strings.NewReplacer("SUITE", suite).Replace(`apiVersion: keymint.io/v1alpha1
kind: ServiceUser
metadata: {name: SUITE}
spec:
  permissions: [invoices:read, reports:write]
  tokenPolicy: {requestsPerMinute: 1000}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: SUITE-full}
spec: {serviceUser: SUITE, metadata: {team: payments}}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: SUITE-read}
spec: {serviceUser: SUITE, scopes: [invoices:read]}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: SUITE-plain}
spec: {serviceUser: SUITE}
---
apiVersion: keymint.io/v1alpha1
kind: ApiToken
metadata: {name: SUITE-quota}
spec: {serviceUser: SUITE, quota: {uses: 1, refill: {every: 24h}}}
`)
	path := filepath.Join(devDir, suite+".yaml")
	Expect(os.WriteFile(path, []byte(manifest), 0o600)).To(Succeed())
	mustKubectl("apply", "-f", path)
	mustKubectl("wait", "--for=condition=Ready", "apitoken/"+suite+"-full", "apitoken/"+suite+"-read", "apitoken/"+suite+"-plain", "apitoken/"+suite+"-quota", "--timeout=60s")
	return proxyTokens{full: secretToken(suite + "-full"), read: secretToken(suite + "-read"), plain: secretToken(suite + "-plain"), quota: secretToken(suite + "-quota")}
}

// expectIdentityNotTheClients asks through get with the full token and
// forged identity headers, then with the plain token and a forged metadata
// header: the application sees keymint's identity and metadata (user
// keymint:default:<suite>), never the client's, nor the token.
func expectIdentityNotTheClients(get func(path, tok string, headers ...string) (*http.Response, []byte), suite string, tokens proxyTokens) {
	GinkgoHelper()
	var resp *http.Response
	var body []byte
	// The proxy may read its configuration just after it listens.
	Eventually(func() int {
		resp, body = get("/reports/2026", tokens.full,
			"X-Keymint-User", "keymint:default:admin", "X-Keymint-Meta-Team", "root", "X-Keymint-Scopes", "everything:admin")
		return resp.StatusCode
	}).Should(Equal(http.StatusOK), "%s", body)
	var app appView
	Expect(json.Unmarshal(body, &app)).To(Succeed(), "%s", body)
	Expect(app).To(Equal(appView{
		User: "keymint:default:" + suite, Token: "default/" + suite + "-full", Scopes: "invoices:read,reports:write",
		Path: "/reports/2026", MetaTeam: "payments",
	}), "the token itself is kept from the application too")

	By("a token without metadata: the client's own X-Keymint-Meta-Team is dropped, not passed on")
	resp, body = get("/reports/2026", tokens.plain, "X-Keymint-Meta-Team", "root")
	Expect(resp.StatusCode).To(Equal(http.StatusOK), "%s", body)
	var bare appView
	Expect(json.Unmarshal(body, &bare)).To(Succeed(), "%s", body)
	Expect(bare.User).To(Equal("keymint:default:" + suite))
	Expect(bare.MetaTeam).To(BeEmpty(), "the client's own metadata header (or a proxy's placeholder text) reached the application")
}

// expectQuotaExceeded spends the quota token's one use through get, then
// expects 429 quota_exceeded with Retry-After and X-Quota-Remaining 0, and
// the application (counting in hits) not reached. It returns both answers.
func expectQuotaExceeded(get func(path, tok string, headers ...string) (*http.Response, []byte), hits *atomic.Int64, tokens proxyTokens) (first, refused *http.Response) {
	GinkgoHelper()
	var body []byte
	// The proxy may see the token only once keymint's index has it.
	Eventually(func() int { first, body = get("/reports/2026", tokens.quota); return first.StatusCode }).Should(Equal(http.StatusOK), "its one use: %s", body)
	before := hits.Load()
	resp, body := get("/reports/2026", tokens.quota)
	Expect(resp.StatusCode).To(Equal(http.StatusTooManyRequests), "%s", body)
	Expect(errorCode(body)).To(Equal("quota_exceeded"))
	Expect(resp.Header.Get("X-Quota-Remaining")).To(Equal("0"))
	retry, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	Expect(err).NotTo(HaveOccurred())
	Expect(retry).To(BeNumerically(">", 0))
	Expect(hits.Load()).To(Equal(before), "a request past the quota never reaches the application")
	Expect(resp.Header.Get("X-Keymint-Error")).To(Equal("quota_exceeded"))
	return first, resp
}

// appView is what the application behind a proxy received.
type appView struct {
	User, Token, Scopes, Authorization, Path string
	// MetaTeam is X-Keymint-Meta-Team, the metadata key the shipped
	// configurations forward.
	MetaTeam string `json:",omitempty"`
}

// proxiedApp is the application behind a proxy: it counts its requests in
// hits and answers with what it received, as an appView. It stops with the
// spec tree.
func proxiedApp(hits *atomic.Int64) *httptest.Server {
	GinkgoHelper()
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(appView{
			User: r.Header.Get("X-Keymint-User"), Token: r.Header.Get("X-Keymint-Token"),
			Scopes: r.Header.Get("X-Keymint-Scopes"), Authorization: r.Header.Get("Authorization"), Path: r.URL.RequestURI(),
			MetaTeam: r.Header.Get("X-Keymint-Meta-Team"),
		})
	}))
	DeferCleanup(app.Close)
	return app
}

// getThrough asks the proxy at base for path with tok (none if "") and
// extra headers, and returns the answer and its body.
func getThrough(client *http.Client, base, path, tok string, headers ...string) (*http.Response, []byte) {
	GinkgoHelper()
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	Expect(err).NotTo(HaveOccurred())
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	Expect(err).NotTo(HaveOccurred())
	return resp, body
}

// expectUnauthenticated asks through get with a missing, a malformed and an
// unknown token: each is answered 401 with keymint's WWW-Authenticate,
// X-Keymint-Error and error code, and the application behind (counting in
// hits) sees none of them.
func expectUnauthenticated(get func(path, tok string, headers ...string) (*http.Response, []byte), hits *atomic.Int64) {
	GinkgoHelper()
	before := hits.Load()
	unknown, err := token.Mint("km")
	Expect(err).NotTo(HaveOccurred())
	for tok, code := range map[string]string{"": "missing_token", "km_not-a-token": "malformed_token", unknown: "invalid_token"} {
		resp, body := get("/reports/2026", tok)
		Expect(resp.StatusCode).To(Equal(http.StatusUnauthorized), "%s: %s", code, body)
		Expect(resp.Header.Values("WWW-Authenticate")).To(HaveExactElements(HavePrefix(`Bearer realm="keymint"`)), code)
		Expect(resp.Header.Get("X-Keymint-Error")).To(Equal(code))
		Expect(errorCode(body)).To(Equal(code))
	}
	Expect(hits.Load()).To(Equal(before), "the application saw none of them")
}

// errorCode is the "error" of a JSON error body.
func errorCode(body []byte) any {
	GinkgoHelper()
	var b map[string]any
	Expect(json.Unmarshal(body, &b)).To(Succeed(), "a JSON body: %s", body)
	return b["error"]
}
