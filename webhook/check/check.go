package check

import (
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
)

// GroupAll is the Kubernetes group of every keymint identity; each also gets
// GroupAll + ":" + its namespace.
const GroupAll = "keymint:serviceusers"

// Username is the Kubernetes user name of a ServiceUser.
func Username(namespace, name string) string {
	return "keymint:" + namespace + ":" + name
}

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
}

// Message returns the human text for a failure.
func (f Failure) Message() string { return messages[f] }

// Identity is who a good token speaks for and what it may do.
type Identity struct {
	Token     types.NamespacedName
	Username  string
	UserUID   types.UID
	Groups    []string
	Scopes    []string
	Audiences []string
	// RequestsPerMinute is the token's own rate, else its user's; zero when
	// neither is set.
	RequestsPerMinute int32
}

// Checker decides whether a presented token is good.
type Checker struct {
	Index *Index
}

// Check parses the token (refusing a bad checksum before any lookup), hashes
// it, looks it up and decides, at now, with the same rules as the controller:
// not revoked, its ServiceUser present and enabled, not expired by the clock
// (even if the controller has not noticed yet), and a previous hash only
// within its grace period.
func (c *Checker) Check(presented string, now time.Time) (Identity, Failure) {
	if presented == "" {
		return Identity{}, MissingToken
	}
	if _, err := token.Parse(presented); err != nil {
		return Identity{}, MalformedToken
	}
	ref, user, ok := c.Index.lookup(token.Hash(presented))
	if !ok || (!ref.validUntil.IsZero() && !now.Before(ref.validUntil)) {
		return Identity{}, InvalidToken
	}
	if ref.revoked {
		return Identity{}, RevokedToken
	}
	t := ref.token
	var state tokenstate.User
	if user != nil {
		state = user.state
	}
	if tokenstate.RevocationReason(&t.spec, state) != "" {
		return Identity{}, RevokedToken
	}
	if expiry, expires := tokenstate.Expiry(&t.spec, state, t.issuedAt); tokenstate.Expired(expiry, expires, now) {
		return Identity{}, ExpiredToken
	}
	id := Identity{
		Token:     t.key,
		Username:  user.username,
		UserUID:   user.uid,
		Groups:    user.groups,
		Scopes:    tokenstate.EffectiveScopes(t.spec.Scopes, state.Permissions),
		Audiences: t.spec.Audiences,
	}
	switch {
	case t.spec.RequestsPerMinute != nil:
		id.RequestsPerMinute = *t.spec.RequestsPerMinute
	case user.rpm > 0:
		id.RequestsPerMinute = user.rpm
	}
	return id, OK
}

// MissingScopes returns the required scopes the identity lacks.
func (id Identity) MissingScopes(required []string) []string {
	var missing []string
	for _, s := range required {
		if !slices.Contains(id.Scopes, s) {
			missing = append(missing, s)
		}
	}
	return missing
}

// AcceptsAudience reports whether the token may be used for one of the
// requested audiences, and which. Audiences restrict tokens, not routes: a
// token that sets none is accepted whatever is asked (for a TokenReview, with
// no audience in the answer, which kube-apiserver reads as its own).
func (id Identity) AcceptsAudience(requested []string) (matched []string, ok bool) {
	if len(id.Audiences) == 0 {
		return nil, true
	}
	for _, a := range requested {
		if slices.Contains(id.Audiences, a) {
			matched = append(matched, a)
		}
	}
	return matched, len(matched) > 0
}
