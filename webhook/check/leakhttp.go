package check

// leakhttp.go: the leak report endpoints. POST /credentials/revoke takes
// GitHub's shape (anyone holding a token may report it); GitLab's Token
// Revocation API (GET /v1/revocable_token_types, POST /v1/revoke_tokens)
// takes a shared token. A report is answered the same whatever the
// credentials are, so it tells the caller nothing about them, and it is
// queued in the request but written to the API later (leakstatus.go).

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"k8s.io/utils/clock"

	"github.com/keymint/keymint/internal/token"
)

// Paths of the leak report endpoints.
const (
	LeakReportPath          = "/credentials/revoke"
	RevocableTokenTypesPath = "/v1/revocable_token_types"
	RevokeTokensPath        = "/v1/revoke_tokens"
)

const (
	// MaxLeakCredentials bounds the credentials one request reports.
	MaxLeakCredentials = 1000
	// MaxLeakBodyBytes bounds a report's body.
	MaxLeakBodyBytes = 256 << 10
	// GitLabTokenType is the type GitLab gives a keymint token: the
	// gitleaks rule id keymint_api_token, as GitLab names a secret
	// detection rule's findings.
	GitLabTokenType = "gitleaks_rule_id_keymint_api_token"
)

// TokenPattern matches a keymint token: a prefix, "_", then the secret and
// checksum in base62, with internal/token's lengths.
var TokenPattern = fmt.Sprintf(`[a-z][a-z0-9]{%d,%d}_[0-9A-Za-z]{%d}`,
	token.MinPrefixLen-1, token.MaxPrefixLen-1, token.SecretLen+token.ChecksumLen)

// LeakConfig is how the leak report endpoints are served.
type LeakConfig struct {
	// RequestsPerMinute bounds the reports of all clients together, and
	// ClientRequestsPerMinute those of one client on the GitHub-shaped
	// endpoint.
	RequestsPerMinute, ClientRequestsPerMinute int
	// TrustedProxies are the proxies whose X-Forwarded-For names the
	// client (ClientAddr).
	TrustedProxies []netip.Prefix
	// GitLabTokenFile holds the token GitLab sends; "" leaves GitLab's
	// endpoints unserved.
	GitLabTokenFile string
}

// LeakHandler serves the leak report endpoints.
type LeakHandler struct {
	Reporter       *LeakReporter
	Clock          clock.PassiveClock
	Metrics        *LeakMetrics
	TrustedProxies []netip.Prefix

	limits *leakLimits
	gitlab *sharedToken // nil: GitLab's endpoints are not served
}

// NewLeakHandler returns the endpoints over reporter, reading the GitLab
// token file once now: it must exist and hold a token.
func NewLeakHandler(reporter *LeakReporter, clk clock.PassiveClock, m *LeakMetrics, cfg LeakConfig) (*LeakHandler, error) {
	h := &LeakHandler{
		Reporter: reporter, Clock: clk, Metrics: m, TrustedProxies: cfg.TrustedProxies,
		limits: newLeakLimits(cfg.RequestsPerMinute, cfg.ClientRequestsPerMinute),
	}
	if cfg.GitLabTokenFile != "" {
		tok, err := loadSharedToken(cfg.GitLabTokenFile, clk)
		if err != nil {
			return nil, fmt.Errorf("reading --leak-report-gitlab-token-file: %w", err)
		}
		h.gitlab = tok
	}
	return h, nil
}

// Register adds the endpoints to mux: GitLab's only with a token file.
func (h *LeakHandler) Register(mux *http.ServeMux) {
	mux.HandleFunc(LeakReportPath, h.serveGitHub)
	if h.gitlab != nil {
		mux.HandleFunc(RevocableTokenTypesPath, h.serveRevocableTokenTypes)
		mux.HandleFunc(RevokeTokensPath, h.serveRevokeTokens)
	}
}

// leakReceived is every well-formed GitHub-shaped report's answer body.
var leakReceived = []byte(`{"message":"Received. Any of these credentials that is a keymint token in use will be replaced."}` + "\n")

func (h *LeakHandler) serveGitHub(w http.ResponseWriter, r *http.Request) {
	h.Metrics.request(leakEndpointGitHub, h.github(w, r))
}

// githubReport is the body of POST /credentials/revoke. Pointers tell a
// missing or null value from an empty one.
type githubReport struct {
	Credentials *[]*string `json:"credentials"`
}

// github answers one GitHub-shaped report and returns its status.
func (h *LeakHandler) github(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodPost {
		return methodNotAllowed(w, http.MethodPost)
	}
	now := h.Clock.Now()
	if ok, retry := h.limits.allow(ClientAddr(r, h.TrustedProxies), now); !ok {
		return tooManyReports(w, retry)
	}
	var body githubReport
	badBody := fmt.Sprintf(`The body must be a JSON object {"credentials": ["...", ...]} listing at most %d strings.`, MaxLeakCredentials)
	if status := decodeLeakBody(w, r, &body); status != 0 {
		return leakBodyError(w, status, badBody)
	}
	if body.Credentials == nil {
		return leakBodyError(w, http.StatusBadRequest, badBody)
	}
	creds := *body.Credentials
	if len(creds) > MaxLeakCredentials {
		return leakBodyError(w, http.StatusBadRequest, fmt.Sprintf("At most %d credentials per request; this one lists %d.", MaxLeakCredentials, len(creds)))
	}
	for _, c := range creds {
		if c == nil {
			return leakBodyError(w, http.StatusBadRequest, badBody)
		}
	}
	for _, c := range creds {
		h.Metrics.report(leakEndpointGitHub, h.Reporter.Report(*c, SourceGitHub, "", now))
	}
	hdr := w.Header()
	hdr["Content-Type"] = jsonContentType
	hdr["Cache-Control"] = noStore
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write(leakReceived)
	return http.StatusAccepted
}

// revocableTokenTypes is GitLab's GET /v1/revocable_token_types answer:
// GitLab reads types; token_types tell a human what each is.
type revocableTokenTypes struct {
	Types      []string    `json:"types"`
	TokenTypes []tokenType `json:"token_types"`
}

type tokenType struct {
	Type          string `json:"type"`
	Regex         string `json:"regex"`
	RevocationURL string `json:"revocation_url,omitempty"`
}

func (h *LeakHandler) serveRevocableTokenTypes(w http.ResponseWriter, r *http.Request) {
	h.Metrics.request(leakEndpointGitLab, h.revocableTokenTypes(w, r))
}

func (h *LeakHandler) revocableTokenTypes(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodGet {
		return methodNotAllowed(w, http.MethodGet)
	}
	if status, ok := h.gitlabAdmits(w, r); !ok {
		return status
	}
	t := tokenType{Type: GitLabTokenType, Regex: TokenPattern}
	if r.Host != "" {
		t.RevocationURL = (&url.URL{Scheme: "https", Host: r.Host, Path: RevokeTokensPath}).String()
	}
	writeJSON(w, http.StatusOK, revocableTokenTypes{Types: []string{GitLabTokenType}, TokenTypes: []tokenType{t}})
	return http.StatusOK
}

// gitlabToken is one entry of GitLab's POST /v1/revoke_tokens.
type gitlabToken struct {
	Type     *string `json:"type"`
	Token    *string `json:"token"`
	Location string  `json:"location"`
}

func (h *LeakHandler) serveRevokeTokens(w http.ResponseWriter, r *http.Request) {
	h.Metrics.request(leakEndpointGitLab, h.revokeTokens(w, r))
}

// revokeTokens answers one GitLab report: 204 once every entry is read
// and queued (or found not to be a token checks accept); a replay changes
// nothing.
func (h *LeakHandler) revokeTokens(w http.ResponseWriter, r *http.Request) int {
	if r.Method != http.MethodPost {
		return methodNotAllowed(w, http.MethodPost)
	}
	if status, ok := h.gitlabAdmits(w, r); !ok {
		return status
	}
	var body *[]*gitlabToken
	badBody := fmt.Sprintf(`The body must be a JSON array of at most %d {"type", "token", "location"} objects.`, MaxLeakCredentials)
	if status := decodeLeakBody(w, r, &body); status != 0 {
		return leakBodyError(w, status, badBody)
	}
	if body == nil {
		return leakBodyError(w, http.StatusBadRequest, badBody)
	}
	entries := *body
	if len(entries) > MaxLeakCredentials {
		return leakBodyError(w, http.StatusBadRequest, fmt.Sprintf("At most %d tokens per request; this one lists %d.", MaxLeakCredentials, len(entries)))
	}
	for _, e := range entries {
		switch {
		case e == nil || e.Type == nil || e.Token == nil:
			return leakBodyError(w, http.StatusBadRequest, badBody)
		case *e.Type != GitLabTokenType:
			return leakBodyError(w, http.StatusBadRequest, "Each entry's type must be "+GitLabTokenType+", the one type "+RevocableTokenTypesPath+" lists.")
		}
	}
	now := h.Clock.Now()
	for _, e := range entries {
		h.Metrics.report(leakEndpointGitLab, h.Reporter.Report(*e.Token, SourceGitLab, e.Location, now))
	}
	w.Header()["Cache-Control"] = noStore
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent
}

// gitlabAdmits lets a request with the shared token through its own
// budget (anonymous reports cannot use it up), and answers any other: 401,
// or 429 once it is over the budgets a GitHub-shaped report counts against
// (its client's and the global one), so that guessing the token goes no
// faster than reporting.
func (h *LeakHandler) gitlabAdmits(w http.ResponseWriter, r *http.Request) (int, bool) {
	now := h.Clock.Now()
	if !h.gitlab.matches(r.Header.Get("Authorization")) {
		if ok, retry := h.limits.allow(ClientAddr(r, h.TrustedProxies), now); !ok {
			return tooManyReports(w, retry), false
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="keymint"`)
		writeJSON(w, http.StatusUnauthorized, errorBody{Error: "unauthorized",
			Message: "Send the shared token (--leak-report-gitlab-token-file) as the Authorization header, bare or after Bearer."})
		return http.StatusUnauthorized, false
	}
	if ok, retry := h.limits.allowAuthenticated(now); !ok {
		return tooManyReports(w, retry), false
	}
	return 0, true
}

// decodeLeakBody reads exactly one JSON value of at most MaxLeakBodyBytes
// into v. It returns 0, or the status to answer: 413 past the bound, 400
// for anything else.
func decodeLeakBody(w http.ResponseWriter, r *http.Request, v any) int {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxLeakBodyBytes))
	err := dec.Decode(v)
	if err == nil {
		if _, err = dec.Token(); errors.Is(err, io.EOF) {
			return 0
		}
	}
	if tooLarge := new(http.MaxBytesError); errors.As(err, &tooLarge) {
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusBadRequest
}

// leakBodyError answers a body decodeLeakBody or the endpoint refused.
func leakBodyError(w http.ResponseWriter, status int, message string) int {
	if status == http.StatusRequestEntityTooLarge {
		writeJSON(w, status, errorBody{Error: "payload_too_large", Message: fmt.Sprintf("The body is larger than %d bytes.", MaxLeakBodyBytes)})
		return status
	}
	writeJSON(w, status, errorBody{Error: BadRequest, Message: message})
	return status
}

// tooManyReports answers 429 with Retry-After in whole seconds, at least 1.
func tooManyReports(w http.ResponseWriter, retry time.Duration) int {
	secs := retrySeconds(retry)
	w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	writeJSON(w, http.StatusTooManyRequests, errorBody{Error: RateLimited,
		Message: "Too many leak reports. Retry after the time given.", RetryAfter: &secs})
	return http.StatusTooManyRequests
}
