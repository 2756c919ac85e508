package plugin_test

import (
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/keymint/keymint/internal/plugin"
	"github.com/keymint/keymint/internal/token"
)

// leakServer plays keymint's check server with --leak-reports on loopback
// HTTPS: it records every request and answers what answer says (202 when
// nil).
type leakServer struct {
	*httptest.Server
	caFile string

	mu     sync.Mutex
	got    []leakRequest
	answer func(n int, w http.ResponseWriter) // n: the request's index
}

type leakRequest struct {
	method, path, contentType string
	credentials               []string
}

func newLeakServer(t *testing.T, answer func(n int, w http.ResponseWriter)) *leakServer {
	t.Helper()
	s := &leakServer{answer: answer}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Credentials []string `json:"credentials"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		n := len(s.got)
		s.got = append(s.got, leakRequest{r.Method, r.URL.Path, r.Header.Get("Content-Type"), body.Credentials})
		s.mu.Unlock()
		if s.answer != nil {
			s.answer(n, w)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(s.Close)
	s.caFile = filepath.Join(t.TempDir(), "ca.crt")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Certificate().Raw})
	if err := os.WriteFile(s.caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *leakServer) requests() []leakRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// report runs scan --report against s, trusting its CA.
func (s *leakServer) report(t *testing.T, url string, args ...string) result {
	t.Helper()
	return noCluster.run(t, plugin.Options{}, append([]string{"scan", "--report", url, "--report-ca-file", s.caFile}, args...)...)
}

// noTokenIn fails if out holds any of tokens, or more of one than its
// public prefix.
func noTokenIn(t *testing.T, out string, tokens ...string) {
	t.Helper()
	for _, tok := range tokens {
		if strings.Contains(out, tok[:token.DisplayLen+1]) {
			t.Fatalf("the output holds more of token %s... than its prefix:\n%s", token.Display(tok), out)
		}
	}
}

// manyTokens writes n distinct tokens into a file, one a line.
func manyTokens(t *testing.T, n int) (string, []string) {
	t.Helper()
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = mint(t, token.DefaultPrefix)
	}
	path := filepath.Join(t.TempDir(), "dump.log")
	write(t, path, strings.Join(tokens, "\n")+"\n")
	return path, tokens
}

func TestScanReport(t *testing.T) {
	dir := t.TempDir()
	a, b := mint(t, token.DefaultPrefix), mint(t, "billing")
	envFile, secretFile := filepath.Join(dir, "a.env"), filepath.Join(dir, "secret.yaml")
	write(t, envFile, "A="+a+"\nB="+b+"\n")
	// a again, and b base64-encoded: each is reported once.
	write(t, secretFile, "data:\n  a: "+a+"\n  b: "+base64.StdEncoding.EncodeToString([]byte(b))+"\n")

	t.Run("the distinct tokens found, to /credentials/revoke; prefixes and places printed, never a token", func(t *testing.T) {
		g := NewWithT(t)
		srv := newLeakServer(t, nil)
		r := srv.report(t, srv.URL, dir)
		g.Expect(r.code).To(Equal(plugin.ExitFound), r.stderr)
		g.Expect(srv.requests()).To(Equal([]leakRequest{{http.MethodPost, plugin.ReportPath, "application/json", []string{a, b}}}))
		// The findings on stdout are as without --report.
		g.Expect(r.stdout).To(Equal(envFile + ":1: " + token.Display(a) + "...\n" + envFile + ":2: " + token.Display(b) + "...\n" +
			secretFile + ":2: " + token.Display(a) + "...\n" + secretFile + ":3: " + token.Display(b) + "... (base64-encoded)\n"))
		g.Expect(r.stderr).To(ContainSubstring("report: sending 2 distinct token(s) to " + srv.URL + "/credentials/revoke in 1 batch(es)\n" +
			"report: batch 1/1 (2 token(s)): 202 Accepted\n" +
			"report:   " + token.Display(a) + "... " + envFile + ":1 (and 1 more)\n" +
			"report:   " + token.Display(b) + "... " + envFile + ":2 (and 1 more)\n"))
		g.Expect(r.stderr).To(ContainSubstring("scan: every token found was reported"))
		noTokenIn(t, r.stdout+r.stderr, a, b)
		g.Expect(r.stdout + r.stderr).NotTo(ContainSubstring(base64.StdEncoding.EncodeToString([]byte(b))[:24]))
	})

	t.Run("a URL with a path is used as it is", func(t *testing.T) {
		g := NewWithT(t)
		srv := newLeakServer(t, nil)
		r := srv.report(t, srv.URL+"/keymint/credentials/revoke?x=1", envFile)
		g.Expect(r.code).To(Equal(plugin.ExitFound), r.stderr)
		g.Expect(srv.requests()).To(HaveLen(1))
		g.Expect(srv.requests()[0].path).To(Equal("/keymint/credentials/revoke"))
	})

	t.Run("nothing found, nothing sent", func(t *testing.T) {
		g := NewWithT(t)
		srv := newLeakServer(t, nil)
		clean := filepath.Join(t.TempDir(), "clean.txt")
		write(t, clean, "no token here\n")
		r := srv.report(t, srv.URL, clean)
		g.Expect(r.code).To(Equal(plugin.ExitOK), r.stderr)
		g.Expect(srv.requests()).To(BeEmpty())
		g.Expect(r.stderr).To(ContainSubstring("report: no token found, nothing sent to " + srv.URL + "/credentials/revoke\n"))
	})

	t.Run("an unreadable path still exits 2 once what was found is reported", func(t *testing.T) {
		g := NewWithT(t)
		srv := newLeakServer(t, nil)
		r := srv.report(t, srv.URL, envFile, filepath.Join(dir, "nope"))
		g.Expect(r.code).To(Equal(plugin.ExitScanError), r.stderr)
		g.Expect(srv.requests()).To(HaveLen(1))
	})

	t.Run("the server's certificate is verified", func(t *testing.T) {
		g := NewWithT(t)
		srv := newLeakServer(t, nil)
		r := noCluster.run(t, plugin.Options{}, "scan", "--report", srv.URL, envFile)
		g.Expect(r.code).To(Equal(plugin.ExitReportFailed), r.stderr)
		g.Expect(r.stderr).To(ContainSubstring("certificate signed by unknown authority"))
		g.Expect(r.stderr).To(ContainSubstring("--report-ca-file"))
		g.Expect(srv.requests()).To(BeEmpty())
		noTokenIn(t, r.stdout+r.stderr, a, b)

		r = noCluster.run(t, plugin.Options{}, "scan", "--report", srv.URL, "--report-insecure-skip-tls-verify", envFile)
		g.Expect(r.code).To(Equal(plugin.ExitFound), r.stderr)
		g.Expect(r.stderr).To(ContainSubstring("report: warning: the certificate of " + strings.TrimPrefix(srv.URL, "https://") + " is not verified"))
		g.Expect(srv.requests()).To(HaveLen(1))
	})
}

// Over 1000 distinct tokens go in batches of at most 1000, each token once.
func TestScanReportBatches(t *testing.T) {
	g := NewWithT(t)
	path, tokens := manyTokens(t, 2*plugin.MaxReportBatch+500)
	srv := newLeakServer(t, nil)
	r := srv.report(t, srv.URL, path)
	g.Expect(r.code).To(Equal(plugin.ExitFound), r.stderr)
	reqs := srv.requests()
	g.Expect(reqs).To(HaveLen(3))
	var sent []string
	for i, want := range []int{1000, 1000, 500} {
		g.Expect(reqs[i].credentials).To(HaveLen(want))
		sent = append(sent, reqs[i].credentials...)
	}
	g.Expect(sent).To(Equal(tokens))
	for _, line := range []string{
		"report: sending 2500 distinct token(s) to " + srv.URL + "/credentials/revoke in 3 batch(es)\n",
		"report: batch 1/3 (1000 token(s)): 202 Accepted\n",
		"report: batch 3/3 (500 token(s)): 202 Accepted\n",
		"report:   " + token.Display(tokens[2499]) + "... " + path + ":2500\n",
	} {
		g.Expect(r.stderr).To(ContainSubstring(line))
	}
	noTokenIn(t, r.stdout+r.stderr, tokens...)
}

func TestScanReportFailures(t *testing.T) {
	path, tokens := manyTokens(t, plugin.MaxReportBatch+1)
	status := func(code int, header ...string) func(int, http.ResponseWriter) {
		return func(_ int, w http.ResponseWriter) {
			for i := 0; i+1 < len(header); i += 2 {
				w.Header().Set(header[i], header[i+1])
			}
			w.WriteHeader(code)
		}
	}

	t.Run("429: that batch is not reported and the rest not sent", func(t *testing.T) {
		g := NewWithT(t)
		srv := newLeakServer(t, status(http.StatusTooManyRequests, "Retry-After", "30"))
		r := srv.report(t, srv.URL, path)
		g.Expect(r.code).To(Equal(plugin.ExitReportFailed), r.stderr)
		g.Expect(srv.requests()).To(HaveLen(1))
		g.Expect(r.stderr).To(ContainSubstring("report: batch 1/2 (1000 token(s)): not reported: 429 Too Many Requests: keymint's leak report limit; retry after 30s\n"))
		g.Expect(r.stderr).To(ContainSubstring("report: batch 2/2 (1 token(s)): not sent (keymint's leak report limit was reached)\n" +
			"report:   " + token.Display(tokens[1000]) + "... " + path + ":1001\n"))
		g.Expect(r.stderr).To(ContainSubstring("scan: 1001 of 1001 token(s) found could not be reported: keymint may still accept them."))
		noTokenIn(t, r.stdout+r.stderr, tokens...)
	})

	t.Run("500: that batch is not reported, the next one is", func(t *testing.T) {
		g := NewWithT(t)
		srv := newLeakServer(t, func(n int, w http.ResponseWriter) {
			if n == 0 {
				// A body echoing the tokens is never printed.
				w.WriteHeader(http.StatusInternalServerError)
				fmt.Fprintf(w, "cannot revoke %s", tokens[0])
				return
			}
			w.WriteHeader(http.StatusAccepted)
		})
		r := srv.report(t, srv.URL, path)
		g.Expect(r.code).To(Equal(plugin.ExitReportFailed), r.stderr)
		g.Expect(srv.requests()).To(HaveLen(2))
		g.Expect(r.stderr).To(ContainSubstring("report: batch 1/2 (1000 token(s)): not reported: 500 Internal Server Error\n"))
		g.Expect(r.stderr).To(ContainSubstring("report: batch 2/2 (1 token(s)): 202 Accepted\n"))
		g.Expect(r.stderr).To(ContainSubstring("scan: 1000 of 1001 token(s) found could not be reported"))
		noTokenIn(t, r.stdout+r.stderr, tokens...)
	})

	for name, tc := range map[string]struct {
		answer func(int, http.ResponseWriter)
		want   string
	}{
		"404: not keymint, or no --leak-reports": {status(http.StatusNotFound), "404 Not Found: is this keymint's check server, and does keymint run with --leak-reports?"},
		"a redirect is not followed":             {status(http.StatusTemporaryRedirect, "Location", "https://elsewhere.example/collect"), "307 Temporary Redirect: a redirect, not followed"},
		"200 is not 202":                         {status(http.StatusOK), "200 OK"},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			srv := newLeakServer(t, tc.answer)
			one := filepath.Join(t.TempDir(), "one.txt")
			write(t, one, tokens[0]+"\n")
			r := srv.report(t, srv.URL, one)
			g.Expect(r.code).To(Equal(plugin.ExitReportFailed), r.stderr)
			g.Expect(r.stderr).To(ContainSubstring("report: batch 1/1 (1 token(s)): not reported: " + tc.want))
			g.Expect(srv.requests()).To(HaveLen(1))
			noTokenIn(t, r.stdout+r.stderr, tokens[0])
		})
	}

	t.Run("no server: a network error", func(t *testing.T) {
		g := NewWithT(t)
		srv := newLeakServer(t, nil)
		srv.Close()
		r := srv.report(t, srv.URL, path)
		g.Expect(r.code).To(Equal(plugin.ExitReportFailed), r.stderr)
		g.Expect(r.stderr).To(MatchRegexp(`report: batch 1/2 \(1000 token\(s\)\): not reported: Post "https://127\.0\.0\.1:\d+/credentials/revoke": dial tcp .*connection refused`))
		g.Expect(r.stderr).To(ContainSubstring("scan: 1001 of 1001 token(s) found could not be reported"))
		noTokenIn(t, r.stdout+r.stderr, tokens...)
	})

	t.Run("an unreadable path and a failed report: 3", func(t *testing.T) {
		g := NewWithT(t)
		srv := newLeakServer(t, status(http.StatusInternalServerError))
		r := srv.report(t, srv.URL, path, filepath.Join(t.TempDir(), "nope"))
		g.Expect(r.code).To(Equal(plugin.ExitReportFailed), r.stderr)
	})
}

// Flags that cannot work are refused before anything is scanned or sent.
func TestScanReportUsage(t *testing.T) {
	srv := newLeakServer(t, nil)
	file := filepath.Join(t.TempDir(), "a.env")
	write(t, file, "T="+mint(t, token.DefaultPrefix)+"\n")
	notPEM := filepath.Join(t.TempDir(), "ca.crt")
	write(t, notPEM, "not a certificate\n")
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"plain http":          {[]string{"--report", "http" + strings.TrimPrefix(srv.URL, "https")}, "want an https:// URL"},
		"no host":             {[]string{"--report", "https:///credentials/revoke"}, "want an https:// URL"},
		"CA without --report": {[]string{"--report-ca-file", srv.caFile}, "need --report URL"},
		"CA and insecure":     {[]string{"--report", srv.URL, "--report-ca-file", srv.caFile, "--report-insecure-skip-tls-verify"}, "exclude each other"},
		"a CA file of no PEM": {[]string{"--report", srv.URL, "--report-ca-file", notPEM}, "no PEM certificate in it"},
		"no CA file":          {[]string{"--report", srv.URL, "--report-ca-file", filepath.Join(t.TempDir(), "nope")}, "no such file or directory"},
		"a zero timeout":      {[]string{"--report", srv.URL, "--report-timeout", "0s"}, "want a positive duration"},
	} {
		t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			r := noCluster.run(t, plugin.Options{}, append(append([]string{"scan"}, tc.args...), file)...)
			g.Expect(r.code).To(Equal(plugin.ExitScanError), r.stderr)
			g.Expect(r.stderr).To(HavePrefix("error: "))
			g.Expect(r.stderr).To(ContainSubstring(tc.want))
			g.Expect(r.stdout).To(BeEmpty())
		})
	}
	NewWithT(t).Expect(srv.requests()).To(BeEmpty())
}
