package e2e

// proxied_test.go: what the proxy suites (nginx, Caddy) share: the
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
	"os/exec"
	"sync/atomic"
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
