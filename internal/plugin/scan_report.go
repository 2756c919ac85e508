package plugin

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/keymint/keymint/internal/token"
)

// ReportPath is the path of keymint's GitHub-shaped leak report endpoint on
// its check server; --report adds it to a URL that has no path.
const ReportPath = "/credentials/revoke"

// MaxReportBatch is the most tokens one report may hold: keymint refuses a
// larger body, as GitHub's POST /credentials/revoke does.
const MaxReportBatch = 1000

// reportFlags are scan's --report flags.
type reportFlags struct {
	url      string
	caFile   string
	insecure bool
	timeout  time.Duration
}

func (f *reportFlags) addFlags(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.url, "report", "", "report the tokens found to keymint's leak report endpoint at this https URL (no path: "+ReportPath+"), which refuses and rotates every one it issued")
	fl.StringVar(&f.caFile, "report-ca-file", "", "PEM file of the CA that signed the --report server's certificate, trusted instead of the system's CAs")
	fl.BoolVar(&f.insecure, "report-insecure-skip-tls-verify", false, "do not verify the --report server's certificate (a test server only: anyone in the path could read the tokens)")
	fl.DurationVar(&f.timeout, "report-timeout", 30*time.Second, "how long each report request may take")
}

// reporter returns what sends the findings to keymint, or nil without
// --report. An error is a usage error, found before anything is scanned.
func (f *reportFlags) reporter() (*reporter, error) {
	if f.url == "" {
		if f.caFile != "" || f.insecure {
			return nil, errors.New("--report-ca-file and --report-insecure-skip-tls-verify need --report URL")
		}
		return nil, nil
	}
	u, err := url.Parse(f.url)
	if err != nil {
		// "host:port" with no scheme fails here, not below.
		return nil, fmt.Errorf("--report %q: want an https:// URL of keymint's check server, such as https://keymint.example.com (%w)", f.url, err)
	}
	// The check server serves TLS only, and the tokens must not cross the
	// network in clear on their way to being revoked.
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("--report %s: want an https:// URL of keymint's check server, such as https://keymint.example.com", u.Redacted())
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = ReportPath
	}
	if f.caFile != "" && f.insecure {
		return nil, errors.New("--report-ca-file and --report-insecure-skip-tls-verify exclude each other")
	}
	if f.timeout <= 0 {
		return nil, fmt.Errorf("--report-timeout %s: want a positive duration", f.timeout)
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: f.insecure} //nolint:gosec // asked for by name, with a warning
	if f.caFile != "" {
		pem, err := os.ReadFile(f.caFile)
		if err != nil {
			return nil, fmt.Errorf("--report-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--report-ca-file %s: no PEM certificate in it", f.caFile)
		}
		tlsConfig.RootCAs = pool
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsConfig
	return &reporter{
		url:      u,
		insecure: f.insecure,
		client: &http.Client{
			Transport: transport,
			Timeout:   f.timeout,
			// The tokens go to the URL given and nowhere else: a redirect
			// (to another host, or to http) is an answer, not followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// reporter posts tokens to keymint's leak report endpoint.
type reporter struct {
	url      *url.URL
	insecure bool
	client   *http.Client
}

// report sends the tokens found, in batches of at most MaxReportBatch, and
// writes to out, per batch, keymint's answer and each token's prefix and
// where it was found; never a token. It returns how many tokens were not
// reported. After a 429 (keymint's leak report limit) or with ctx done,
// the batches left are not sent, but listed.
func (r *reporter) report(ctx context.Context, findings []*finding, out io.Writer) (unreported int) {
	if len(findings) == 0 {
		fmt.Fprintf(out, "report: no token found, nothing sent to %s\n", r.url.Redacted())
		return 0
	}
	batches := (len(findings) + MaxReportBatch - 1) / MaxReportBatch
	fmt.Fprintf(out, "report: sending %d distinct token(s) to %s in %d batch(es)\n", len(findings), r.url.Redacted(), batches)
	if r.insecure {
		fmt.Fprintf(out, "report: warning: the certificate of %s is not verified (--report-insecure-skip-tls-verify)\n", r.url.Host)
	}
	stopped := ""
	for n := range batches {
		batch := findings[n*MaxReportBatch : min((n+1)*MaxReportBatch, len(findings))]
		var err error
		if stopped == "" {
			err = r.post(ctx, batch)
		}
		switch {
		case stopped != "":
			fmt.Fprintf(out, "report: batch %d/%d (%d token(s)): not sent (%s)\n", n+1, batches, len(batch), stopped)
		case err != nil:
			fmt.Fprintf(out, "report: batch %d/%d (%d token(s)): not reported: %v\n", n+1, batches, len(batch), err)
		default:
			fmt.Fprintf(out, "report: batch %d/%d (%d token(s)): %d %s\n", n+1, batches, len(batch), http.StatusAccepted, http.StatusText(http.StatusAccepted))
		}
		for _, f := range batch {
			more := ""
			if len(f.where) > 1 {
				more = fmt.Sprintf(" (and %d more)", len(f.where)-1)
			}
			fmt.Fprintf(out, "report:   %s... %s%s\n", token.Display(f.token), f.where[0], more)
		}
		if stopped != "" || err != nil {
			unreported += len(batch)
		}
		var limited *rateLimitedError
		switch {
		case stopped != "":
		case errors.As(err, &limited):
			stopped = "keymint's leak report limit was reached"
		case ctx.Err() != nil:
			stopped = ctx.Err().Error()
		}
	}
	return unreported
}

// rateLimitedError is a 429: keymint's leak report limit (per replica,
// and per client address).
type rateLimitedError struct{ retryAfter string }

func (e *rateLimitedError) Error() string {
	msg := fmt.Sprintf("%d %s: keymint's leak report limit", http.StatusTooManyRequests, http.StatusText(http.StatusTooManyRequests))
	if e.retryAfter != "" {
		msg += "; retry after " + e.retryAfter
	}
	return msg
}

// post sends one batch and returns nil on 202 Accepted, keymint's answer to
// every well-formed report. Nothing of the answer's body is printed: a
// server that is not keymint could echo the tokens back.
func (r *reporter) post(ctx context.Context, batch []*finding) error {
	credentials := make([]string, len(batch))
	for i, f := range batch {
		credentials[i] = f.token
	}
	body, err := json.Marshal(struct {
		Credentials []string `json:"credentials"`
	}{credentials})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.url.String(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "kubectl-keymint")
	resp, err := r.client.Do(req)
	if err != nil {
		var verify *tls.CertificateVerificationError
		if errors.As(err, &verify) && !r.insecure {
			return fmt.Errorf("%w (pass the CA that signed keymint's check server certificate with --report-ca-file)", err)
		}
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	code := resp.StatusCode
	status := fmt.Sprintf("%d %s", code, http.StatusText(code))
	switch {
	case code == http.StatusAccepted:
		return nil
	case code == http.StatusTooManyRequests:
		return &rateLimitedError{retryAfter: retryAfter(resp.Header.Get("Retry-After"))}
	case code == http.StatusNotFound:
		return fmt.Errorf("%s: is this keymint's check server, and does keymint run with --leak-reports?", status)
	case code >= 300 && code < 400:
		return fmt.Errorf("%s: a redirect, not followed (the tokens go to the --report URL only): give --report the URL it redirects to", status)
	}
	return errors.New(status)
}

// retryAfter returns a Retry-After value as a duration ("30s") or a time,
// or "" when it is neither: the header is the server's, and printed.
func retryAfter(v string) string {
	v = strings.TrimSpace(v)
	if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
		return (time.Duration(secs) * time.Second).String()
	}
	if t, err := http.ParseTime(v); err == nil {
		return t.UTC().Format(time.RFC3339)
	}
	return ""
}
