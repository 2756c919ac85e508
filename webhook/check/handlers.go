package check

// handlers.go: the HTTP face of a check: /check (forward-auth) and the
// TokenReview API.

import (
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authnv1 "k8s.io/api/authentication/v1"
	authnv1beta1 "k8s.io/api/authentication/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
)

// maxBodyBytes bounds a TokenReview body; a real one is well under 4 KiB.
const maxBodyBytes = 64 << 10

// Paths the handler serves.
const (
	CheckPath         = "/check"
	TokenReviewV1     = "/apis/authentication.k8s.io/v1/tokenreviews"
	TokenReviewV1beta = "/apis/authentication.k8s.io/v1beta1/tokenreviews"
)

// Headers of a /check answer.
const (
	HeaderUser      = "X-Keymint-User"
	HeaderToken     = "X-Keymint-Token"
	HeaderScopes    = "X-Keymint-Scopes"
	HeaderScope     = "X-Keymint-Scope"
	HeaderAudience  = "X-Keymint-Audience"
	HeaderForwarded = "X-Forwarded-Authorization"
)

// Handler serves /check and the TokenReview API.
type Handler struct {
	Checker *Checker
	Limiter *Limiter
	Usage   *Usage
	Clock   clock.PassiveClock
	// DefaultRequestsPerMinute applies to tokens whose ApiToken and
	// ServiceUser set no rate.
	DefaultRequestsPerMinute int32
	Metrics                  *Metrics
}

// NewHandler returns a handler over index with its own rate limiter and
// usage record, and metrics registered with reg.
func NewHandler(index *Index, clk clock.PassiveClock, defaultRequestsPerMinute int32, reg prometheus.Registerer) *Handler {
	return &Handler{
		Checker:                  &Checker{Index: index},
		Limiter:                  NewLimiter(),
		Usage:                    NewUsage(),
		Clock:                    clk,
		DefaultRequestsPerMinute: defaultRequestsPerMinute,
		Metrics:                  NewMetrics(reg, index),
	}
}

// ServeMux returns the routes.
func (h *Handler) ServeMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc(CheckPath, h.serveCheck)
	// Envoy's ext_authz appends the original path to its path_prefix.
	mux.HandleFunc(CheckPath+"/", h.serveCheck)
	mux.HandleFunc(TokenReviewV1, h.serveTokenReview)
	mux.HandleFunc(TokenReviewV1beta, h.serveTokenReview)
	return mux
}

// errorBody is every error answer's JSON body.
type errorBody struct {
	Error      Failure `json:"error"`
	Message    string  `json:"message"`
	RetryAfter *int64  `json:"retryAfter,omitempty"`
}

// checkBody is a /check success answer's JSON body.
type checkBody struct {
	User   string   `json:"user"`
	Token  string   `json:"token"`
	Scopes []string `json:"scopes"`
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // messages name paths like /check/<path>
	_ = enc.Encode(body)
}

func writeError(w http.ResponseWriter, status int, f Failure, message string) {
	if message == "" {
		message = f.Message()
	}
	w.Header().Set(HeaderError, string(f))
	writeJSON(w, status, errorBody{Error: f, Message: message})
}

// bearerToken reads "Bearer <token>" (the scheme in any case) from the
// Authorization header, else from X-Forwarded-Authorization. It returns "" if
// neither carries a bearer token.
func bearerToken(r *http.Request) string {
	for _, name := range []string{"Authorization", HeaderForwarded} {
		v := r.Header.Get(name)
		scheme, tok, ok := strings.Cut(strings.TrimSpace(v), " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			if tok = strings.TrimSpace(tok); tok != "" {
				return tok
			}
		}
	}
	return ""
}

// RateLimitStatusParam on /check, set to 403, answers a rate-limited check
// with 403 instead of 429, for nginx's auth_request, which turns any status
// but 2xx, 401 and 403 into a 500. X-Keymint-Error (rate_limited) and
// Retry-After let nginx answer the client 429 (config/nginx/keymint.conf).
const RateLimitStatusParam = "rate_limit_status"

// HeaderError names the error code of every refusal, for proxies that keep
// headers but not bodies.
const HeaderError = "X-Keymint-Error"

// checkFormError says what is wrong with a /check request's form, or "".
// "/check/" alone is where a misplaced auth URL ("/check/?scope=...") lands:
// its query would be ignored there, so it is refused rather than letting
// every token through without the scope.
func checkFormError(r *http.Request, q url.Values, fromQuery bool) string {
	if !fromQuery && r.URL.Path == CheckPath+"/" && (q.Has("scope") || q.Has("audience")) {
		return "Requirements in the query are read on " + CheckPath + " only; under " + CheckPath + "/<path> they come from the " +
			HeaderScope + " and " + HeaderAudience + " headers. Use " + CheckPath + "?scope=... as the auth URL."
	}
	if v := q.Get(RateLimitStatusParam); fromQuery && v != "" && v != "403" && v != "429" {
		return RateLimitStatusParam + " must be 403 or 429."
	}
	return ""
}

// requirements collects a repeatable requirement from the query or from a
// header; each value may also be a comma-separated list.
func requirements(r *http.Request, q url.Values, query, header string, fromQuery bool) []string {
	values := r.Header.Values(header)
	if fromQuery {
		values = q[query]
	}
	var out []string
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

func (h *Handler) serveCheck(w http.ResponseWriter, r *http.Request) {
	start := h.Clock.Now()
	result := h.check(w, r, start)
	h.Metrics.observe("check", result, h.Clock.Since(start))
}

// check answers one /check request and returns the result label for metrics.
// Any method is accepted: proxies forward the client's (Envoy does).
func (h *Handler) check(w http.ResponseWriter, r *http.Request, now time.Time) Failure {
	// Requirements come from one source per form, the one the proxy's admin
	// writes and a client cannot: on /check, the query of the auth URL
	// (nginx and Traefik pass the client's headers through); under
	// /check/<path>, headers (Envoy appends the client's own path and query).
	fromQuery := r.URL.Path == CheckPath
	var q url.Values // parsed once, and only when there is a query
	if r.URL.RawQuery != "" {
		q = r.URL.Query()
	}
	if msg := checkFormError(r, q, fromQuery); msg != "" {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: "bad_request", Message: msg})
		return "bad_request"
	}
	id, failure := h.Checker.Check(bearerToken(r), now)
	if failure == OK {
		if _, ok := id.AcceptsAudience(requirements(r, q, "audience", HeaderAudience, fromQuery)); !ok {
			failure = WrongAudience
		}
	}
	if failure != OK {
		w.Header().Set("WWW-Authenticate", `Bearer realm="keymint", error="invalid_token"`)
		if failure == MissingToken {
			w.Header().Set("WWW-Authenticate", `Bearer realm="keymint"`)
		}
		writeError(w, http.StatusUnauthorized, failure, "")
		return failure
	}

	d := h.Limiter.Allow(id.Token, id.RequestsPerMinute(h.DefaultRequestsPerMinute), now)
	w.Header().Set("X-RateLimit-Limit", strconv.Itoa(int(d.Limit)))
	w.Header().Set("X-RateLimit-Remaining", strconv.Itoa(int(d.Remaining)))
	w.Header().Set("X-RateLimit-Reset", strconv.FormatInt(d.Reset.Unix(), 10))
	if !d.Allowed {
		retry := int64(math.Ceil(d.Reset.Sub(now).Seconds()))
		w.Header().Set("Retry-After", strconv.FormatInt(retry, 10))
		status := http.StatusTooManyRequests
		if fromQuery && q.Get(RateLimitStatusParam) == "403" {
			status = http.StatusForbidden
		}
		w.Header().Set(HeaderError, string(RateLimited))
		writeJSON(w, status, errorBody{Error: RateLimited, Message: RateLimited.Message(), RetryAfter: &retry})
		h.Metrics.rateLimited.Inc()
		return RateLimited
	}

	if missing := id.MissingScopes(requirements(r, q, "scope", HeaderScope, fromQuery)); len(missing) > 0 {
		writeError(w, http.StatusForbidden, InsufficientScope, "The bearer token lacks the required scope: "+strings.Join(missing, ", ")+".")
		return InsufficientScope
	}

	h.Usage.Record(id.Token, now)
	w.Header().Set(HeaderUser, id.Username)
	w.Header().Set(HeaderToken, id.Token.String())
	w.Header().Set(HeaderScopes, strings.Join(id.Scopes, ","))
	scopes := id.Scopes
	if scopes == nil {
		scopes = []string{}
	}
	writeJSON(w, http.StatusOK, checkBody{User: id.Username, Token: id.Token.String(), Scopes: scopes})
	return OK
}

// tokenReview is the part of a TokenReview, v1 or v1beta1, that a check reads.
type tokenReview struct {
	metav1.TypeMeta `json:",inline"`
	Spec            struct {
		Token     string   `json:"token"`
		Audiences []string `json:"audiences,omitempty"`
	} `json:"spec"`
}

// decodeTokenReview reads a TokenReview for the version its path names. Its
// errors are the message a caller is shown.
func decodeTokenReview(body io.Reader, path string) (*tokenReview, error) {
	var tr tokenReview
	if err := json.NewDecoder(body).Decode(&tr); err != nil {
		return nil, errors.New("the body is not a JSON TokenReview")
	}
	want := authnv1.SchemeGroupVersion.String()
	if path == TokenReviewV1beta {
		want = authnv1beta1.SchemeGroupVersion.String()
	}
	if tr.APIVersion != want || tr.Kind != "TokenReview" {
		return nil, errors.New("this endpoint takes apiVersion " + want + ", kind TokenReview")
	}
	return &tr, nil
}

func (h *Handler) serveTokenReview(w http.ResponseWriter, r *http.Request) {
	start := h.Clock.Now()
	result := h.tokenReview(w, r, start)
	h.Metrics.observe("tokenreview", result, h.Clock.Since(start))
}

// tokenReview answers the webhook token authentication contract: HTTP 200 and
// status.authenticated, in the request's apiVersion.
func (h *Handler) tokenReview(w http.ResponseWriter, r *http.Request, now time.Time) Failure {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "method_not_allowed", Message: "Use POST."})
		return "method_not_allowed"
	}
	tr, err := decodeTokenReview(http.MaxBytesReader(w, r.Body, maxBodyBytes), r.URL.Path)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: "bad_request", Message: err.Error() + "."})
		return "bad_request"
	}

	status := authnv1.TokenReviewStatus{}
	id, failure := h.Checker.Check(tr.Spec.Token, now)
	if failure == OK {
		matched, ok := id.AcceptsAudience(tr.Spec.Audiences)
		if !ok {
			failure = WrongAudience
		}
		status.Audiences = matched
	}
	if failure == OK {
		h.Usage.Record(id.Token, now)
		status.Authenticated = true
		status.User = authnv1.UserInfo{
			Username: id.Username,
			UID:      string(id.UserUID),
			Groups:   id.Groups,
			Extra: map[string]authnv1.ExtraValue{
				"keymint.io/token":  {id.Token.String()},
				"keymint.io/scopes": id.Scopes,
			},
		}
	} else {
		status.Audiences = nil
		status.Error = failure.Message()
	}
	resp := map[string]any{"apiVersion": tr.APIVersion, "kind": "TokenReview", "status": status}
	writeJSON(w, http.StatusOK, resp)
	return failure
}
