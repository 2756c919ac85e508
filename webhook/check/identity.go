package check

// identity.go: who a good token speaks for and what it may do.

import (
	"k8s.io/apimachinery/pkg/types"

	"github.com/keymint/keymint/internal/tokenstate"
)

// GroupAll is the Kubernetes group of every keymint identity; each also gets
// GroupAll + ":" + its namespace.
const GroupAll = "keymint:serviceusers"

// Username is the Kubernetes user name of a ServiceUser.
func Username(namespace, name string) string {
	return "keymint:" + namespace + ":" + name
}

// Identity is who a good token speaks for and what it may do.
type Identity struct {
	Token     types.NamespacedName
	Username  string
	UserUID   types.UID
	Groups    []string
	Scopes    []string
	Audiences []string
	// entry and user are the token's index entries, for its rate.
	entry *tokenEntry
	user  *tokenstate.User
	// ok is the prebuilt /check success answer.
	ok *successAnswer
	// used is the hash the check accepted: the current token's or a
	// rotated-out one's, for the record of uses.
	used hash
}

// identity builds the Identity of an accepted token; its user is indexed
// (an unindexed user is refused before this).
func identity(t *tokenEntry, user *userEntry, which int) Identity {
	c := t.cached(user)
	used := t.current
	if which >= 0 && which < len(t.previous) {
		used = t.previous[which]
	}
	return Identity{
		used:      used,
		Token:     t.key,
		Username:  user.username,
		UserUID:   user.state.UID,
		Groups:    user.groups,
		Scopes:    c.scopes,
		Audiences: t.spec.Audiences,
		entry:     t,
		user:      &user.state,
		ok:        c.ok,
	}
}

// RequestsPerMinute is the token's rate: its own, else its user's, else
// serverDefault.
func (id Identity) RequestsPerMinute(serverDefault int32) int32 {
	return tokenstate.Rate(&id.entry.spec, id.user, serverDefault)
}

// MissingScopes returns the required scopes the identity lacks.
func (id Identity) MissingScopes(required []string) []string {
	return tokenstate.MissingScopes(id.Scopes, required)
}

// AcceptsAudience reports whether the token may be used for one of the
// requested audiences, and which.
func (id Identity) AcceptsAudience(requested []string) (matched []string, ok bool) {
	return tokenstate.AcceptsAudience(id.Audiences, requested)
}

// buckets returns the budgets a check that requires scopes counts against:
// one per required scope that has a rate of its own, else the token's own
// rate. ok is false when that is more than maxBuckets budgets.
func (id Identity) buckets(required []string, serverDefault int32) (bs Buckets, ok bool) {
	for _, s := range required {
		if r := tokenstate.ScopeRate(&id.entry.spec, id.user, s); r != nil && !bs.Add(r.Scope, r.RequestsPerMinute) {
			return bs, false
		}
	}
	if bs.Len() == 0 {
		bs.Add("", id.RequestsPerMinute(serverDefault))
	}
	return bs, true
}
