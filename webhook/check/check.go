// Package check answers "is this bearer token good, whose is it, what may it
// do?" for kube-apiserver (TokenReview) and for proxies (forward-auth), from
// an in-memory index fed by watches (feed.go). No API call happens on a check.
//
// One job per file, each built only on those before it (layers_test.go
// holds them to it): identity.go names who a token speaks for; index.go
// maps hashes to entries; lastused.go records and writes lastUsedAt;
// check.go answers one presented token in one call (Checker.Check: one
// lookup, one tokenstate.Admit, the rules the controller uses too);
// leak.go queues reports of leaked tokens (a parse, a lookup, one
// tokenstate.Check) and leakstatus.go writes them to status.leakReports;
// ratelimit.go and ratelimit_redis.go charge a verdict's budgets (in process
// or shared in Redis); leaklimit.go bounds leak reporters; metrics.go and
// leakmetrics.go count answers and reports;
// handlers.go speaks HTTP (/check, TokenReview): it parses, calls Check,
// charges the limiter, writes and records the use; sharedtoken.go reads
// GitLab's token and leakhttp.go answers leak reports; feed.go keeps the index
// in step with the cache; server.go serves over TLS; setup.go wires it into
// the manager.
package check

import (
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
)

// Failure says why a check refused a token; it is the "error" code of a
// /check answer.
type Failure string

const (
	OK                Failure = ""
	MissingToken      Failure = "missing_token"
	MalformedToken    Failure = "malformed_token"
	InvalidToken      Failure = "invalid_token"
	ExpiredToken      Failure = "expired_token"
	RevokedToken      Failure = "revoked_token"
	WrongAudience     Failure = "invalid_audience"
	InsufficientScope Failure = "insufficient_scope"
	RateLimited       Failure = "rate_limited"
	// InvalidQuery is a /check query that cannot be read exactly (answered
	// 400, before the token is read).
	InvalidQuery Failure = "invalid_query"
	// SourceNotAllowed is a token used from a client address outside its
	// (or its ServiceUser's) allowedSourceCIDRs, or from one that cannot be
	// established (answered 403; TokenReview refuses it).
	SourceNotAllowed Failure = "source_not_allowed"
	// QuotaExceeded is a token whose quota's uses are spent for the period
	// (answered 429, with when it refills; TokenReview refuses it).
	QuotaExceeded Failure = "quota_exceeded"
	// NotApproved is a token of a ServiceUser with requireApproval whose
	// ApiToken, as it is, waits for approval (answered 401).
	NotApproved Failure = "not_approved"
)

// Messages are what a human reads next to each failure. An unknown token and
// a wrong one get the same answer.
var messages = map[Failure]string{
	MissingToken:      "No bearer token: send Authorization: Bearer <token>.",
	MalformedToken:    "The bearer token is not a keymint token, or has a typo: its checksum does not match.",
	InvalidToken:      "The bearer token is not valid.",
	ExpiredToken:      "The bearer token has expired.",
	RevokedToken:      "The bearer token has been revoked.",
	WrongAudience:     "The bearer token is not valid for this audience.",
	InsufficientScope: "The bearer token lacks a required scope.",
	RateLimited:       "Too many requests with this token. Retry after the time given.",
	InvalidQuery:      "The query cannot be read exactly.",
	SourceNotAllowed:  "The bearer token may not be used from this client address.",
	NotApproved:       "The bearer token's ApiToken is not approved as it is now (waiting for approval, denied, or changed since it was approved).",
	QuotaExceeded:     "The bearer token has used its quota of checks.",
	BadRequest:        "The request asks what a check cannot answer.",
}

// Message returns the human text for a failure.
func (f Failure) Message() string { return messages[f] }

// BadRequest is a check that asks what cannot be answered (400): a query
// or a TokenReview that cannot be read, or too many rated scopes.
const BadRequest Failure = "bad_request"

// Requirements are what a caller requires of a presented token. The token
// is Check's own argument, not a field here: escape analysis follows a
// struct as one value, and the token's parse (crc32, reached through
// function values) would take the lists, which callers keep on their stack,
// to the heap with it.
type Requirements struct {
	// Scopes are required, every one of them.
	Scopes []string
	// Audiences are the audiences the caller accepts: a token restricted to
	// audiences must name one of them. Check moves those it names to the
	// front (Verdict.MatchedAudiences).
	Audiences []string
	// Source is the client's address, the zero Addr when not known; a
	// token restricted to allowedSourceCIDRs is refused outside them, and
	// without one, unless IgnoreSources.
	Source        netip.Addr
	IgnoreSources bool
	// Client, when its Request is set and Source is not, is where the
	// check finds the client's address: read only for a token restricted
	// to sources, so the others never pay for it.
	Client ClientSource
}

// ClientSource is a /check request's client, whose address is read only
// when the token needs it.
type ClientSource struct {
	Request *http.Request
	// Trusted are the proxies whose X-Forwarded-For is believed.
	Trusted []netip.Prefix
}

// Addr is the client's address, or the zero Addr when it cannot be
// established: a trusted proxy is never the client, so one that names none
// (no X-Forwarded-For, or only trusted hops) leaves the client unknown.
func (c ClientSource) Addr() netip.Addr {
	a := ClientAddr(c.Request, c.Trusted)
	if !a.IsValid() || inAny(a, c.Trusted) {
		return netip.Addr{}
	}
	return a
}

// Verdict is everything an answer to one check needs, from one index
// lookup and one tokenstate verdict.
type Verdict struct {
	// Failure is OK, or why the token is refused (Missing aside).
	Failure Failure
	// Grant is who an accepted token speaks for; nil unless Failure is OK
	// or BadRequest.
	Grant *Grant
	// Admission is the rules' answer, filled in place by tokenstate.Admit:
	// MatchedAudiences, how many of Requirements.Audiences, at its front,
	// the token accepts (for TokenReview's status; a count, not a slice, so
	// the lists stay on the caller's stack); Budgets, what the check counts
	// against; Missing, the required scopes the token lacks, which the
	// caller refuses (403) after charging the budgets.
	tokenstate.Admission
	// user is the slot of the token's ServiceUser for any known token,
	// accepted or not, for the metrics counted by user.
	user *userSlot
	// used is the accepted hash: the current token's or a rotated-out
	// one's, for the record of uses.
	used hash
}

// Grant is an accepted token's Identity, built once per token entry and
// user entry, then shared and only read.
type Grant struct {
	Identity
	// Memo is the answering layer's: what it builds once per grant (a
	// prebuilt answer). Check never reads it.
	Memo atomic.Value

	user *userEntry
}

// failures is the Failure each tokenstate.Refusal is answered with; a test
// holds it to every Refusal, and a Refusal it misses is refused as an
// unknown token, never accepted. A rotated-out hash past its grace is
// answered as an unknown token.
var failures = [tokenstate.NumRefusals]Failure{
	tokenstate.Accepted:         OK,
	tokenstate.Revoked:          RevokedToken,
	tokenstate.Expired:          ExpiredToken,
	tokenstate.GraceEnded:       InvalidToken,
	tokenstate.NotForAudience:   WrongAudience,
	tokenstate.TooManyBudgets:   BadRequest,
	tokenstate.SourceNotAllowed: SourceNotAllowed,
	// A reported leak is a revocation: the consumer's Secret holds the
	// replacement already, or soon.
	tokenstate.Leaked:      RevokedToken,
	tokenstate.NotApproved: NotApproved,
}

// Checker decides whether a presented token is good.
type Checker struct {
	Index *Index
	// DefaultRequestsPerMinute is the rate of tokens whose ApiToken and
	// ServiceUser set none.
	DefaultRequestsPerMinute int32
}

// Check hashes the token, looks the hash up, refuses a token that does not
// parse (a bad checksum: a typo), and decides the rest at now in one
// tokenstate.Admit: validity (tokenstate.Check, the rule the controller's
// conditions come from too), the audience, the budgets and the missing
// scopes.
//
// A token whose hash is indexed and was seen to parse is not parsed again:
// only that token has the hash. Any other is parsed, so a typo is told from
// an unknown token as before; a string no token's length is refused before
// it is hashed.
func (c *Checker) Check(presented string, req Requirements, now time.Time) (v Verdict) {
	if presented == "" {
		v.Failure = MissingToken
		return v
	}
	if len(presented) < token.MinLen || len(presented) > token.MaxLen {
		v.Failure = MalformedToken
		return v
	}
	ref, user, ok := c.Index.lookup(token.Hash(presented))
	if !ok || !ref.parsedBefore() {
		if _, err := token.Parse(presented); err != nil {
			v.Failure = MalformedToken
			return v
		}
		if ok {
			ref.markParsed()
		}
	}
	if !ok {
		v.Failure = InvalidToken
		return v
	}
	v.user = ref.token.owner
	if ref.refused {
		v.Failure = RevokedToken
		return v
	}
	c.admit(&v, ref, user, req, now)
	return v
}

// admit decides the token ref found, of user entry user, at now.
func (c *Checker) admit(v *Verdict, ref hashRef, user *userEntry, req Requirements, now time.Time) {
	t := ref.token
	if req.Client.Request != nil && !req.Source.IsValid() && !req.IgnoreSources && tokenstate.RestrictsSources(&t.state, stateOf(user)) {
		req.Source = req.Client.Addr()
	}
	tokenstate.Admit(&t.state, stateOf(user), int(ref.which), now, tokenstate.Demand{
		Scopes: req.Scopes, Audiences: req.Audiences, DefaultRate: c.DefaultRequestsPerMinute,
		Source: req.Source, IgnoreSources: req.IgnoreSources,
	}, &v.Admission)
	switch v.Failure = failures[v.Refusal]; {
	case v.Refusal != tokenstate.Accepted && v.Failure == OK:
		v.Failure = InvalidToken
		return
	case v.Failure != OK && v.Failure != BadRequest:
		return
	}
	// Accepted (or asking too much): the user is indexed, as tokenstate
	// refuses a missing one.
	v.Grant = grantOf(t, user)
	v.used = t.current
	if ref.which >= 0 {
		v.used = t.previous[ref.which]
	}
}

// noUser is the state of a ServiceUser that is not indexed: not found.
// Only read.
var noUser tokenstate.User

// stateOf is the rules' view of a user entry: noUser when not indexed.
func stateOf(u *userEntry) *tokenstate.User {
	if u == nil {
		return &noUser
	}
	return &u.state
}

// grantOf returns the Grant of token entry t under user entry u: built once
// per user entry (a new one on every change of the user), then read.
func grantOf(t *tokenEntry, u *userEntry) *Grant {
	if g, _ := t.memo.derived.Load().(*Grant); g != nil && g.user == u {
		return g
	}
	g := &Grant{user: u, Identity: Identity{
		Token:    t.key,
		Username: u.username,
		UserUID:  u.state.UID,
		Groups:   u.groups,
		Scopes:   tokenstate.EffectiveScopes(t.state.Spec.Scopes, u.state.Permissions),
		Metadata: metadataOf(t.state.Spec.Metadata),
	}}
	t.memo.derived.Store(g)
	return g
}

// metadataOf copies spec.metadata as plain strings; nil when empty.
func metadataOf(m map[string]keymintv1alpha1.MetadataValue) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = string(v)
	}
	return out
}

// wellFormedBit is ref's bit in entryMemo.wellFormed; 0 for a hash that has
// none (refused, or too far down the previous hashes).
func (ref hashRef) wellFormedBit() uint64 {
	if ref.refused || ref.which+1 >= 64 {
		return 0
	}
	return 1 << (ref.which + 1)
}

// parsedBefore reports whether a token with ref's hash parsed before.
func (ref hashRef) parsedBefore() bool {
	bit := ref.wellFormedBit()
	return bit != 0 && ref.token.memo.wellFormed.Load()&bit != 0
}

// markParsed records that a token with ref's hash parsed.
func (ref hashRef) markParsed() {
	if bit := ref.wellFormedBit(); bit != 0 {
		ref.token.memo.wellFormed.Or(bit)
	}
}
