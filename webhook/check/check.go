// Package check answers "is this bearer token good, whose is it, what may it
// do?" for kube-apiserver (TokenReview) and for proxies (forward-auth), from
// an in-memory index fed by informers. No API call happens on a check.
//
// One job per file: check.go decides one presented token (through
// internal/tokenstate, the rules the controller uses too); identity.go says
// who a good token is; index.go maps hashes to tokens; feed.go keeps the
// index in step with the cache; ratelimit.go counts checks per token;
// lastused.go records and writes lastUsedAt; handlers.go speaks HTTP
// (/check, TokenReview); server.go serves it over TLS.
package check

import (
	"time"

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
}

// Message returns the human text for a failure.
func (f Failure) Message() string { return messages[f] }

// Checker decides whether a presented token is good.
type Checker struct {
	Index *Index
}

// Check hashes the token, looks the hash up, refuses a token that does not
// parse (a bad checksum: a typo) and decides at now with tokenstate.Check,
// the rule the controller's conditions come from too.
//
// A token whose hash is indexed and was seen to parse is not parsed again:
// only that token has the hash. Any other is parsed, so a typo is told from
// an unknown token as before; a string no token's length is refused before
// it is hashed.
func (c *Checker) Check(presented string, now time.Time) (Identity, Failure) {
	if presented == "" {
		return Identity{}, MissingToken
	}
	if len(presented) < token.MinLen || len(presented) > token.MaxLen {
		return Identity{}, MalformedToken
	}
	ref, user, ok := c.Index.lookup(token.Hash(presented))
	if !ok || !ref.parsedBefore() {
		if _, err := token.Parse(presented); err != nil {
			return Identity{}, MalformedToken
		}
		if ok {
			ref.markParsed()
		}
	}
	if !ok {
		return Identity{}, InvalidToken
	}
	// A refusal of a known token names only its entry, for the metrics
	// counted by ServiceUser.
	t := ref.token
	if ref.refused {
		return Identity{entry: t}, RevokedToken
	}
	var state tokenstate.User
	if user != nil {
		state = user.state
	}
	switch tokenstate.Check(&t.state, &state, ref.which, now) {
	case tokenstate.Revoked:
		return Identity{entry: t}, RevokedToken
	case tokenstate.Expired:
		return Identity{entry: t}, ExpiredToken
	case tokenstate.GraceEnded:
		return Identity{entry: t}, InvalidToken
	}
	return identity(t, user, ref.which), OK
}
