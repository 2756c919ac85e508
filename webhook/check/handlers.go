package check

// handlers.go: the HTTP face of a check: /check (forward-auth) and the
// TokenReview API.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authnv1 "k8s.io/api/authentication/v1"
	authnv1beta1 "k8s.io/api/authentication/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	"github.com/keymint/keymint/internal/tokenstate"
)

// maxBodyBytes bounds a TokenReview body; a real one is well under 4 KiB.
const maxBodyBytes = 64 << 10

// Paths the handler serves.
const (
	CheckPath         = "/check"
	TokenReviewV1     = "/apis/authentication.k8s.io/v1/tokenreviews"
	TokenReviewV1beta = "/apis/authentication.k8s.io/v1beta1/tokenreviews"
)

// ExtraMetaPrefix starts the user.extra key of each metadata pair in a
// TokenReview answer: keymint.io/meta.team for key "team".
const ExtraMetaPrefix = "keymint.io/meta."

// Headers of a /check answer.
const (
	HeaderUser   = "X-Keymint-User"
	HeaderToken  = "X-Keymint-Token"
	HeaderScopes = "X-Keymint-Scopes"
	// HeaderMetaPrefix starts one header per metadata key of the token:
	// X-Keymint-Meta-Team for key "team".
	HeaderMetaPrefix = "X-Keymint-Meta-"
	HeaderScope      = "X-Keymint-Scope"
	HeaderAudience   = "X-Keymint-Audience"
	HeaderForwarded  = "X-Forwarded-Authorization"
	// HeaderRateLimitScope names the scope whose budget the X-RateLimit
	// headers describe, when it is not the token's own.
	HeaderRateLimitScope = "X-Ratelimit-Scope"
)

// Handler serves /check and the TokenReview API: it parses a request, asks
// the Checker, charges the limiter, writes the answer and records the use.
type Handler struct {
	Checker *Checker
	Limiter RateLimiter
	Usage   *Usage
	Clock   clock.PassiveClock
	Metrics *Metrics
	// TrustedProxies are the peers whose X-Forwarded-For names a /check's
	// client (ClientAddr), for tokens restricted to source addresses.
	TrustedProxies []netip.Prefix
	// TokenReviewIgnoresSources lets TokenReview accept tokens restricted
	// to source addresses: its callers (kube-apiserver) send none, and the
	// operator says they are trusted to stand for the client.
	TokenReviewIgnoresSources bool

	reset      [resetSlots]atomic.Pointer[cachedReset]
	limit      atomic.Pointer[cachedLimit]
	scopes     sync.Map // scope → []string, the X-RateLimit-Scope value
	scopeCount atomic.Int32
}

// resetSlots is how many X-RateLimit-Reset values are kept: budgets are
// whole again within a minute, so one slot per second of the next two
// minutes serves them all.
const resetSlots = 128

// NewHandler returns a handler over index with its own rate limiter and
// usage record, and metrics registered with reg.
func NewHandler(index *Index, clk clock.PassiveClock, defaultRequestsPerMinute int32, reg prometheus.Registerer) *Handler {
	return &Handler{
		Checker: &Checker{Index: index, DefaultRequestsPerMinute: defaultRequestsPerMinute},
		Limiter: NewLimiter(),
		Usage:   NewUsage(),
		Clock:   clk,
		Metrics: NewMetrics(reg, index),
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
	User     string            `json:"user"`
	Token    string            `json:"token"`
	Scopes   []string          `json:"scopes"`
	Metadata map[string]string `json:"metadata,omitempty"`
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
//
// The header map is indexed directly: net/http stores request header names
// canonical, as both names here are, so Get's canonicalizing is not needed.
func bearerToken(r *http.Request) string {
	for _, name := range [...]string{"Authorization", HeaderForwarded} {
		var v string
		if vs := r.Header[name]; len(vs) > 0 {
			v = vs[0]
		}
		if tok, ok := bearerOf(v); ok && tok != "" {
			return tok
		}
	}
	return ""
}

// bearerOf reads an Authorization header value "Bearer <token>", the
// scheme in any case: the token, trimmed, and whether the value had that
// scheme.
func bearerOf(v string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

// RateLimitStatusParam on /check, set to 403, answers a rate-limited check
// with 403 instead of 429, for nginx's auth_request, which turns any status
// but 2xx, 401 and 403 into a 500. X-Keymint-Error (rate_limited) and
// Retry-After let nginx answer the client 429 (config/nginx/keymint.conf).
const RateLimitStatusParam = "rate_limit_status"

// HeaderError names the error code of every refusal, for proxies that keep
// headers but not bodies.
const HeaderError = "X-Keymint-Error"

// checkQuery is what the raw query of a /check request asks, read in one
// pass. It is read exactly or not at all: a pair with a semicolon, a key or
// value that does not unescape, a key other than scope, audience and
// RateLimitStatusParam (case-sensitive), a key without "=", an empty item in
// a value, or a second RateLimitStatusParam stops the reading with a fault,
// which the check refuses (400), rather than dropping a requirement it could
// not read. Only the keys /check reads are kept, so a check builds no map.
type checkQuery struct {
	// scopes and audiences are the items of every scope and audience
	// value; each value may be a comma-separated list.
	scopes, audiences []string
	// hasScope and hasAudience say whether such a pair is there at all.
	hasScope, hasAudience bool
	// rateLimitStatus is the RateLimitStatusParam value.
	rateLimitStatus    string
	hasRateLimitStatus bool
	// fault is why the query cannot be read, and faultKey the key of the
	// pair at fault: unescaped, or raw when it does not unescape.
	fault    queryFault
	faultKey string
}

// queryFault says why a query cannot be read exactly.
type queryFault uint8

const (
	queryRead queryFault = iota
	querySemicolon
	queryKeyEscape
	queryValueEscape
	queryUnknownKey
	queryNoValue
	queryEmptyItem
	queryRepeated
)

// parse returns q with raw read into it, appended to the slices q has:
// with buffers on the caller's stack it allocates nothing, unless a value
// needs unescaping (q goes by value so that they can stay there). It stops
// at the first fault. Empty pairs ("a&&b", a trailing "&") hold nothing and
// are skipped, as url.ParseQuery skips them.
func (q checkQuery) parse(raw string) checkQuery {
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		if pair == "" {
			continue
		}
		rawKey, v, hasValue := strings.Cut(pair, "=")
		k, ok := queryUnescape(rawKey)
		switch {
		case !ok:
			return q.fail(queryKeyEscape, rawKey)
		case strings.IndexByte(pair, ';') >= 0:
			return q.fail(querySemicolon, k) // url.ParseQuery refuses semicolon separators
		case k != "scope" && k != "audience" && k != RateLimitStatusParam:
			return q.fail(queryUnknownKey, k)
		case !hasValue:
			return q.fail(queryNoValue, k)
		}
		if v, ok = queryUnescape(v); !ok {
			return q.fail(queryValueEscape, k)
		}
		switch k {
		case "scope":
			q.hasScope = true
			if q.scopes, ok = appendItems(q.scopes, v, true); !ok {
				return q.fail(queryEmptyItem, k)
			}
		case "audience":
			q.hasAudience = true
			if q.audiences, ok = appendItems(q.audiences, v, true); !ok {
				return q.fail(queryEmptyItem, k)
			}
		default:
			if q.hasRateLimitStatus {
				return q.fail(queryRepeated, k)
			}
			if v == "" {
				return q.fail(queryEmptyItem, k)
			}
			q.rateLimitStatus, q.hasRateLimitStatus = v, true
		}
	}
	return q
}

func (q checkQuery) fail(f queryFault, key string) checkQuery {
	q.fault, q.faultKey = f, key
	return q
}

// queryUnescape is url.QueryUnescape, called only when s has something to
// unescape.
func queryUnescape(s string) (string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '%' || s[i] == '+' {
			u, err := url.QueryUnescape(s)
			return u, err == nil
		}
	}
	return s, true
}

// faultMessage says what is wrong with a query whose reading stopped at a
// fault, naming the parameter at fault.
func (q *checkQuery) faultMessage() string {
	key := quoteQueryText(q.faultKey)
	var what string
	switch q.fault {
	case querySemicolon:
		what = "Query parameter " + key + ` holds a ";": separate pairs with "&", and write a ";" in a value as %3B.`
	case queryKeyEscape:
		what = "Query parameter name " + key + ` has a "%" not followed by two hex digits (write a "%" as %25).`
	case queryValueEscape:
		what = "The value of query parameter " + key + ` has a "%" not followed by two hex digits (write a "%" as %25).`
	case queryUnknownKey:
		what = "Query parameter " + key + " is unknown: " + CheckPath + " reads scope, audience and " + RateLimitStatusParam + ", names case-sensitive."
	case queryNoValue:
		what = "Query parameter " + key + ` has no "=" and no value.`
	case queryEmptyItem:
		what = "Query parameter " + key + " has an empty value, or an empty item in its comma-separated list."
	default:
		what = "Query parameter " + key + " is given more than once."
	}
	return what + " A query that cannot be read exactly is refused, not read in part."
}

// maxEchoed bounds how much of a query an error message repeats, and
// maxEchoedRun the letters and digits in a row it repeats whole.
const (
	maxEchoed    = 64
	maxEchoedRun = 16
)

// quoteQueryText quotes s, from a request's query, for an error message: at
// most maxEchoed bytes of it; bytes outside printable ASCII, and the
// characters that mean something in JSON or HTML, written \xNN; and a run of
// more than maxEchoedRun letters, digits and "%" (a token, or its escapes,
// put into the query by mistake) cut to its first 4, so that no token is sent
// back.
func quoteQueryText(s string) string {
	b := make([]byte, 0, 2*maxEchoed)
	b = append(b, '"')
	i := 0
	for i < len(s) && i < maxEchoed {
		j := i
		for j < len(s) && isRunByte(s[j]) {
			j++
		}
		switch {
		case j-i > maxEchoedRun:
			b = append(b, s[i:i+4]...)
			b = append(b, "..."...)
			i = j
			continue
		case j > i:
			j = min(j, maxEchoed)
			b = append(b, s[i:j]...)
			i = j
			continue
		}
		if c := s[i]; c < 0x20 || c >= 0x7f || strings.IndexByte("\"\\<>&'`", c) >= 0 {
			b = fmt.Appendf(b, `\x%02x`, c)
		} else {
			b = append(b, c)
		}
		i++
	}
	if i < len(s) && !strings.HasSuffix(string(b), "...") {
		b = append(b, "..."...)
	}
	return string(append(b, '"'))
}

// isRunByte is a letter, digit or "%": what a token, or its escapes, is
// made of.
func isRunByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '%'
}

// formError says what is wrong with a /check or /check/ request's query:
// the error code and message, or "". "/check/" alone is where a misplaced
// auth URL ("/check/?scope=...") lands: its query would be ignored there,
// so it is refused rather than letting every token through without the
// scope.
func (q *checkQuery) formError(path string) (Failure, string) {
	if q.fault != queryRead {
		return InvalidQuery, q.faultMessage()
	}
	if path != CheckPath && (q.hasScope || q.hasAudience || q.hasRateLimitStatus) {
		return BadRequest, "The query (scope, audience, " + RateLimitStatusParam + ") is read on " + CheckPath + " only; under " + CheckPath + "/<path> they come from the " +
			HeaderScope + " and " + HeaderAudience + " headers. Use " + CheckPath + "?scope=... as the auth URL."
	}
	if v := q.rateLimitStatus; q.hasRateLimitStatus && v != "403" && v != "429" {
		return BadRequest, RateLimitStatusParam + " must be 403 or 429."
	}
	return "", ""
}

// appendHeaderRequirements appends each value of a repeatable requirement
// header to dst; each value may also be a comma-separated list.
func appendHeaderRequirements(dst []string, r *http.Request, header string) []string {
	for _, v := range r.Header.Values(header) {
		dst, _ = appendItems(dst, v, false)
	}
	return dst
}

// maxRequirements bounds the scopes, and the audiences, a check may require:
// they are read before the token is, so a request without a good token must
// not make the server build a long list.
const maxRequirements = 64

// appendItems appends the trimmed items of a comma-separated list,
// stopping one past maxRequirements (which the caller refuses). An empty
// item (an empty value, or "a,,b") stops it with false when strict (a
// query, read exactly), and is skipped when not (a header, which proxies
// may fold and pad).
func appendItems(dst []string, v string, strict bool) ([]string, bool) {
	for len(dst) <= maxRequirements {
		item, rest, more := strings.Cut(v, ",")
		if item = strings.TrimSpace(item); item != "" {
			dst = append(dst, item)
		} else if strict {
			return dst, false
		}
		if !more {
			break
		}
		v = rest
	}
	return dst, true
}

func (h *Handler) serveCheck(w http.ResponseWriter, r *http.Request) {
	start := h.Clock.Now()
	result, user := h.check(w, r, start)
	h.Metrics.observe(&h.Metrics.check, result, h.Clock.Since(start), user)
}

// check answers one /check request and returns the result label for metrics,
// and the token's ServiceUser slot when the token is known (also when
// refused). The verdict stays local: it points into the requirements read
// onto this stack.
// Any method is accepted: proxies forward the client's (Envoy does).
func (h *Handler) check(w http.ResponseWriter, r *http.Request, now time.Time) (Failure, *userSlot) {
	// Requirements come from one source per form, the one the proxy's admin
	// writes and a client cannot: on /check, the query of the auth URL
	// (nginx and Traefik pass the client's headers through); under
	// /check/<path>, headers (Envoy appends the client's own path and query).
	// The query is read, exactly or refused, on /check and on /check/ (a
	// misplaced auth URL); under /check/<path> it is the client's and is
	// not read at all.
	fromQuery := r.URL.Path == CheckPath
	var scopes [8]string
	var audiences [4]string
	q := checkQuery{scopes: scopes[:0], audiences: audiences[:0]}
	if fromQuery || r.URL.Path == CheckPath+"/" {
		q = q.parse(r.URL.RawQuery)
		if code, msg := q.formError(r.URL.Path); code != "" {
			if code == InvalidQuery {
				writeError(w, http.StatusBadRequest, code, msg)
			} else {
				writeJSON(w, http.StatusBadRequest, errorBody{Error: code, Message: msg})
			}
			return code, nil
		}
	}
	if !fromQuery {
		q.scopes = appendHeaderRequirements(q.scopes[:0], r, HeaderScope)
		q.audiences = appendHeaderRequirements(q.audiences[:0], r, HeaderAudience)
	}
	if len(q.scopes) > maxRequirements || len(q.audiences) > maxRequirements {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: BadRequest,
			Message: fmt.Sprintf("A check requires at most %d scopes and %d audiences.", maxRequirements, maxRequirements)})
		return BadRequest, nil
	}

	tok := bearerToken(r)
	req := Requirements{Scopes: q.scopes, Audiences: q.audiences, Client: ClientSource{Request: r, Trusted: h.TrustedProxies}}
	v := h.Checker.Check(tok, req, now)
	switch v.Failure {
	case OK:
	case SourceNotAllowed:
		// Not charged: a client in the wrong place cannot spend the
		// token's budget.
		writeError(w, http.StatusForbidden, SourceNotAllowed, "")
		return SourceNotAllowed, v.user
	case BadRequest:
		writeJSON(w, http.StatusBadRequest, errorBody{Error: BadRequest,
			Message: fmt.Sprintf("A check may require at most %d scopes that have rates of their own.", tokenstate.MaxBudgets)})
		return BadRequest, v.user
	default:
		w.Header().Set("WWW-Authenticate", `Bearer realm="keymint", error="invalid_token"`)
		if v.Failure == MissingToken {
			w.Header().Set("WWW-Authenticate", `Bearer realm="keymint"`)
		}
		writeError(w, http.StatusUnauthorized, v.Failure, "")
		return v.Failure, v.user
	}

	// Budgets are charged before scopes are judged: a token probing for
	// scopes it lacks spends its rate like any other.
	d := h.Limiter.Allow(r.Context(), v.Grant.Token, v.Budgets, now)
	hdr := w.Header()
	hdr["X-Ratelimit-Limit"] = h.limitHeader(d.Limit)
	hdr["X-Ratelimit-Remaining"] = number(int64(d.Remaining))
	hdr["X-Ratelimit-Reset"] = h.resetHeader(d.Reset)
	if d.Scope != "" {
		hdr[HeaderRateLimitScope] = h.scopeHeader(d.Scope)
	}
	if !d.Allowed {
		retry := retrySeconds(d.RetryAfter)
		w.Header().Set("Retry-After", strconv.FormatInt(retry, 10))
		status := http.StatusTooManyRequests
		if fromQuery && q.rateLimitStatus == "403" {
			status = http.StatusForbidden
		}
		w.Header().Set(HeaderError, string(RateLimited))
		msg := RateLimited.Message()
		if d.Unavailable {
			msg = storeUnavailable("Rate limits") + " Retry after the time given."
		}
		writeJSON(w, status, errorBody{Error: RateLimited, Message: msg, RetryAfter: &retry})
		h.Metrics.rateLimited.Inc()
		return RateLimited, v.user
	}

	if v.Quota.Uses > 0 {
		if refused := h.spendQuota(w, r, &v, now, fromQuery && q.rateLimitStatus == "403"); refused != OK {
			return refused, v.user
		}
	}

	if len(v.Missing) > 0 {
		writeError(w, http.StatusForbidden, InsufficientScope, "The bearer token lacks the required scope: "+strings.Join(v.Missing, ", ")+".")
		return InsufficientScope, v.user
	}

	// The success answer is prebuilt per grant: headers are assigned, not
	// formatted, and the body is written as is.
	h.Usage.Record(v.Grant.Token, v.used, now)
	ok := successOf(v.Grant)
	hdr[HeaderUser] = ok.user
	hdr[HeaderToken] = ok.token
	hdr[HeaderScopes] = ok.scopes
	for _, m := range ok.meta {
		hdr[m.name] = m.value
	}
	hdr["Content-Type"] = jsonContentType
	hdr["Cache-Control"] = noStore
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(ok.body)
	return OK, v.user
}

// Quota headers: the quota's uses per period and what is left; on a
// refusal, when the period refills (Unix seconds; absent without refill).
const (
	HeaderQuotaLimit     = "X-Quota-Limit"
	HeaderQuotaRemaining = "X-Quota-Remaining"
	HeaderQuotaReset     = "X-Quota-Reset"
)

// takeQuota spends one use of the quota of v's token and notes the count
// for status.quota (unless the shared count could not be reached).
func (h *Handler) takeQuota(ctx context.Context, v *Verdict, now time.Time) QuotaDecision {
	d := h.Limiter.SpendQuota(ctx, v.Grant.Token, v.Quota, now)
	if !d.Unavailable {
		h.Usage.RecordQuota(v.Grant.Token, d, now)
	}
	return d
}

// storeUnavailable is the refusal of a check whose rates or quota (what)
// cannot be counted: not the token's fault, and not its budget spent.
func storeUnavailable(what string) string {
	return what + " cannot be checked right now: the shared store is unreachable, and keymint is set to refuse checks until it is back (fail closed)."
}

// retrySeconds is a Retry-After value: whole seconds, rounded up, at
// least 1.
func retrySeconds(d time.Duration) int64 {
	return max(1, int64(math.Ceil(d.Seconds())))
}

// spendQuota takes one use of the check's quota and sets the quota headers;
// when none is left it answers 429 (403 if asked) quota_exceeded, saying
// when the quota refills, and returns that failure.
func (h *Handler) spendQuota(w http.ResponseWriter, r *http.Request, v *Verdict, now time.Time, forbid bool) Failure {
	d := h.takeQuota(r.Context(), v, now)
	status := http.StatusTooManyRequests
	if forbid {
		status = http.StatusForbidden
	}
	hdr := w.Header()
	if d.Unavailable {
		// Nothing is known of the quota: no quota headers, which would say
		// it is spent.
		retry := retrySeconds(redisBackoff)
		hdr.Set(HeaderError, string(QuotaExceeded))
		hdr.Set("Retry-After", strconv.FormatInt(retry, 10))
		writeJSON(w, status, errorBody{Error: QuotaExceeded, Message: storeUnavailable("Quotas") + " Retry after the time given.", RetryAfter: &retry})
		return QuotaExceeded
	}
	hdr[HeaderQuotaLimit] = number(d.Limit)
	hdr[HeaderQuotaRemaining] = number(d.Remaining)
	if d.Allowed {
		return OK
	}
	hdr.Set(HeaderError, string(QuotaExceeded))
	body := errorBody{Error: QuotaExceeded, Message: fmt.Sprintf("The bearer token has used its quota of %d checks, for good: the quota (its ApiToken's or its ServiceUser's) has no refill. Raise quota.uses, or add a refill.", d.Limit)}
	if !d.Refill.IsZero() {
		hdr[HeaderQuotaReset] = h.resetHeader(d.Refill)
		retry := retrySeconds(d.Refill.Sub(now))
		body.RetryAfter = &retry
		body.Message = fmt.Sprintf("The bearer token has used its quota of %d checks for this period; it refills at %s. This is the quota, not the rate limit.",
			d.Limit, d.Refill.UTC().Format(time.RFC3339))
		hdr.Set("Retry-After", strconv.FormatInt(retry, 10))
	}
	writeJSON(w, status, body)
	return QuotaExceeded
}

// successAnswer is a /check 200's headers and body, prebuilt once per Grant
// and kept in its Memo; shared and only read.
type successAnswer struct {
	user, token, scopes []string // header values
	meta                []header // X-Keymint-Meta-*, by key
	body                []byte
}

// header is one prebuilt header: its canonical name and value.
type header struct {
	name  string
	value []string
}

// successOf returns g's prebuilt success answer, building it on first use.
func successOf(g *Grant) *successAnswer {
	if a, _ := g.Memo.Load().(*successAnswer); a != nil {
		return a
	}
	scopes := g.Scopes
	if scopes == nil {
		scopes = []string{}
	}
	name := g.Token.String() // once: the header and the body share it
	body, _ := json.Marshal(checkBody{User: g.Username, Token: name, Scopes: scopes, Metadata: g.Metadata})
	a := &successAnswer{
		user: []string{g.Username}, token: []string{name}, scopes: []string{strings.Join(g.Scopes, ",")},
		body: append(body, '\n'),
	}
	for _, k := range slices.Sorted(maps.Keys(g.Metadata)) {
		a.meta = append(a.meta, header{name: http.CanonicalHeaderKey(HeaderMetaPrefix + k), value: []string{g.Metadata[k]}})
	}
	g.Memo.Store(a)
	return a
}

// Header values every answer shares; net/http only reads them.
var (
	jsonContentType = []string{"application/json"}
	noStore         = []string{"no-store"}
)

// numbers holds the decimal header values below 10,000, so the rate-limit
// headers of most answers cost no allocation.
var numbers = func() []string {
	out := make([]string, 10_000)
	for i := range out {
		out[i] = strconv.Itoa(i)
	}
	return out
}()

// number is a one-value header slice for n.
func number(n int64) []string {
	if n >= 0 && n < int64(len(numbers)) {
		return numbers[n : n+1 : n+1]
	}
	return []string{strconv.FormatInt(n, 10)}
}

// limitHeader is X-RateLimit-Limit: from the table, or for a rate above it,
// the last such value, kept (most tokens share the server's default rate).
func (h *Handler) limitHeader(limit int32) []string {
	if limit >= 0 && int(limit) < len(numbers) {
		return number(int64(limit))
	}
	if c := h.limit.Load(); c != nil && c.n == limit {
		return c.value
	}
	c := &cachedLimit{n: limit, value: number(int64(limit))}
	h.limit.Store(c)
	return c.value
}

type cachedLimit struct {
	n     int32
	value []string
}

// resetHeader is X-RateLimit-Reset, the Unix second a budget is whole
// again: kept per second, so the values of the next two minutes are
// formatted once.
func (h *Handler) resetHeader(reset time.Time) []string {
	sec := reset.Unix()
	if reset.Nanosecond() > 0 {
		sec++ // whole again by the end of that second
	}
	slot := &h.reset[uint64(sec)%resetSlots]
	if c := slot.Load(); c != nil && c.sec == sec {
		return c.value
	}
	c := &cachedReset{sec: sec, value: []string{strconv.FormatInt(sec, 10)}}
	slot.Store(c)
	return c.value
}

type cachedReset struct {
	sec   int64
	value []string
}

// maxScopeHeaders bounds the X-RateLimit-Scope values kept: scopes with
// rates are few, but whoever may edit an ApiToken names them.
const maxScopeHeaders = 1024

// scopeHeader is X-RateLimit-Scope, kept per scope up to maxScopeHeaders,
// then made per answer.
func (h *Handler) scopeHeader(scope string) []string {
	if v, ok := h.scopes.Load(scope); ok {
		return v.([]string)
	}
	if h.scopeCount.Load() >= maxScopeHeaders {
		return []string{scope}
	}
	v, loaded := h.scopes.LoadOrStore(scope, []string{scope})
	if !loaded {
		h.scopeCount.Add(1)
	}
	return v.([]string)
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
	result, user := h.tokenReview(w, r, start)
	h.Metrics.observe(&h.Metrics.tokenReview, result, h.Clock.Since(start), user)
}

// tokenReview answers the webhook token authentication contract: HTTP 200 and
// status.authenticated, in the request's apiVersion.
func (h *Handler) tokenReview(w http.ResponseWriter, r *http.Request, now time.Time) (Failure, *userSlot) {
	if r.Method != http.MethodPost {
		methodNotAllowed(w, http.MethodPost)
		return "method_not_allowed", nil
	}
	tr, err := decodeTokenReview(http.MaxBytesReader(w, r.Body, maxBodyBytes), r.URL.Path)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: BadRequest, Message: err.Error() + "."})
		return BadRequest, nil
	}

	v := h.Checker.Check(tr.Spec.Token, Requirements{Audiences: tr.Spec.Audiences, IgnoreSources: h.TokenReviewIgnoresSources}, now)
	message := ""
	if v.Failure == OK && v.Quota.Uses > 0 {
		// No rate applies to TokenReview (kube-apiserver caches answers),
		// but a quota is a count of uses: each authentication is one.
		if d := h.takeQuota(r.Context(), &v, now); !d.Allowed {
			v.Failure = QuotaExceeded
			if d.Unavailable {
				message = storeUnavailable("Quotas")
			}
		}
	}
	status := authnv1.TokenReviewStatus{}
	if v.Failure == OK {
		h.Usage.Record(v.Grant.Token, v.used, now)
		status.Authenticated = true
		if v.MatchedAudiences > 0 {
			status.Audiences = tr.Spec.Audiences[:v.MatchedAudiences]
		}
		status.User = authnv1.UserInfo{
			Username: v.Grant.Username,
			UID:      string(v.Grant.UserUID),
			Groups:   v.Grant.Groups,
			Extra: map[string]authnv1.ExtraValue{
				"keymint.io/token":  {v.Grant.Token.String()},
				"keymint.io/scopes": v.Grant.Scopes,
			},
		}
		for k, val := range v.Grant.Metadata {
			status.User.Extra[ExtraMetaPrefix+k] = authnv1.ExtraValue{val}
		}
	} else {
		status.Error = cmp.Or(message, v.Failure.Message())
	}
	resp := map[string]any{"apiVersion": tr.APIVersion, "kind": "TokenReview", "status": status}
	writeJSON(w, http.StatusOK, resp)
	return v.Failure, v.user
}

// methodNotAllowed answers 405 naming the one method allowed, and returns
// the status.
func methodNotAllowed(w http.ResponseWriter, allow string) int {
	w.Header().Set("Allow", allow)
	writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: "method_not_allowed", Message: "Use " + allow + "."})
	return http.StatusMethodNotAllowed
}
