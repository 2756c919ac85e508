// Package check answers "is this bearer token good, whose is it, what may it
// do?" for kube-apiserver (TokenReview) and for proxies (forward-auth), from
// an in-memory index fed by informers. No API call happens on a check.
package check

import (
	"crypto/sha256"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
)

// tokenEntry is what the index keeps of one ApiToken. Entries are never
// changed once stored: an update stores a new one, so a reader holding an
// entry after releasing the lock reads a consistent snapshot.
type tokenEntry struct {
	key  types.NamespacedName
	user types.NamespacedName
	// spec holds only the fields a check reads, so that tokenstate decides
	// exactly as the controller does.
	spec       keymintv1alpha1.ApiTokenSpec
	issuedAt   time.Time
	current    [sha256.Size]byte
	hasCurrent bool
	previous   map[[sha256.Size]byte]time.Time
	// revoked holds hashes the token had before it was revoked: checks of
	// them answer revoked_token rather than invalid_token. They only ever
	// refuse, and are dropped once the token is no longer revoked.
	revoked [][sha256.Size]byte
}

// hashes returns every hash the entry holds, live or revoked.
func (e *tokenEntry) hashes() [][sha256.Size]byte {
	var out [][sha256.Size]byte
	if e.hasCurrent {
		out = append(out, e.current)
	}
	for h := range e.previous {
		out = append(out, h)
	}
	return append(out, e.revoked...)
}

// userEntry is what the index keeps of one ServiceUser.
type userEntry struct {
	uid   types.UID
	state tokenstate.User
	// username and groups are what kube-apiserver sees, built once here
	// rather than on every check.
	username string
	groups   []string
	rpm      int32
}

// hashRef points a hash at its token; validUntil is zero for the current
// hash, and the end of the grace period for a previous one. A revoked ref is
// a hash the token held before its revocation.
type hashRef struct {
	token      *tokenEntry
	validUntil time.Time
	revoked    bool
}

// Index maps token hashes to what a check needs. Lookups cost one map read
// whatever the number of tokens.
type Index struct {
	mu     sync.RWMutex
	byHash map[[sha256.Size]byte]hashRef
	tokens map[types.NamespacedName]*tokenEntry
	users  map[types.NamespacedName]*userEntry
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{
		byHash: map[[sha256.Size]byte]hashRef{},
		tokens: map[types.NamespacedName]*tokenEntry{},
		users:  map[types.NamespacedName]*userEntry{},
	}
}

// Len returns how many hashes (current and in a grace period) are indexed.
func (ix *Index) Len() int {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return len(ix.byHash)
}

// UpsertToken indexes an ApiToken's current and previous hashes, replacing
// whatever the index held for it.
func (ix *Index) UpsertToken(t *keymintv1alpha1.ApiToken) {
	e := &tokenEntry{
		key:  types.NamespacedName{Namespace: t.Namespace, Name: t.Name},
		user: types.NamespacedName{Namespace: t.Namespace, Name: t.Spec.ServiceUser},
		spec: keymintv1alpha1.ApiTokenSpec{
			ServiceUser:       t.Spec.ServiceUser,
			Scopes:            t.Spec.Scopes,
			ExpiresAt:         t.Spec.ExpiresAt,
			Lifetime:          t.Spec.Lifetime,
			Revoked:           t.Spec.Revoked,
			Audiences:         t.Spec.Audiences,
			RequestsPerMinute: t.Spec.RequestsPerMinute,
		},
	}
	if t.Status.IssuedAt != nil {
		e.issuedAt = t.Status.IssuedAt.Time
	}
	if h, ok := token.ParseHash(t.Status.TokenHash); ok && t.Status.IssuedAt != nil {
		e.current, e.hasCurrent = h, true
	}
	for _, p := range t.Status.PreviousTokens {
		if h, ok := token.ParseHash(p.TokenHash); ok {
			if e.previous == nil {
				e.previous = map[[sha256.Size]byte]time.Time{}
			}
			e.previous[h] = p.ValidUntil.Time
		}
	}

	isRevoked := t.Spec.Revoked || meta.IsStatusConditionTrue(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionRevoked)

	ix.mu.Lock()
	defer ix.mu.Unlock()
	if old, ok := ix.tokens[e.key]; ok && isRevoked {
		for _, h := range old.hashes() {
			if _, live := e.previous[h]; !live && (!e.hasCurrent || h != e.current) {
				e.revoked = append(e.revoked, h)
			}
		}
	}
	ix.removeTokenLocked(e.key)
	ix.tokens[e.key] = e
	if e.hasCurrent {
		ix.byHash[e.current] = hashRef{token: e}
	}
	for h, until := range e.previous {
		if _, taken := ix.byHash[h]; !taken {
			ix.byHash[h] = hashRef{token: e, validUntil: until}
		}
	}
	for _, h := range e.revoked {
		if _, taken := ix.byHash[h]; !taken {
			ix.byHash[h] = hashRef{token: e, revoked: true}
		}
	}
}

// DeleteToken removes an ApiToken and its hashes.
func (ix *Index) DeleteToken(key types.NamespacedName) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.removeTokenLocked(key)
}

func (ix *Index) removeTokenLocked(key types.NamespacedName) {
	old, ok := ix.tokens[key]
	if !ok {
		return
	}
	delete(ix.tokens, key)
	for _, h := range old.hashes() {
		if ix.byHash[h].token == old {
			delete(ix.byHash, h)
		}
	}
}

// UpsertUser indexes a ServiceUser.
func (ix *Index) UpsertUser(u *keymintv1alpha1.ServiceUser) {
	e := &userEntry{
		uid:      u.UID,
		state:    tokenstate.UserFrom(u),
		username: Username(u.Namespace, u.Name),
		groups:   append([]string{GroupAll, GroupAll + ":" + u.Namespace}, u.Spec.Groups...),
		rpm:      u.Spec.TokenPolicy.RequestsPerMinute,
	}
	key := types.NamespacedName{Namespace: u.Namespace, Name: u.Name}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.users[key] = e
}

// DeleteUser removes a ServiceUser: its tokens are refused from now on.
func (ix *Index) DeleteUser(key types.NamespacedName) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	delete(ix.users, key)
}

// lookup returns the token a hash belongs to and its user (nil when the user
// is not indexed).
func (ix *Index) lookup(h [sha256.Size]byte) (hashRef, *userEntry, bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	ref, ok := ix.byHash[h]
	if !ok {
		return hashRef{}, nil, false
	}
	return ref, ix.users[ref.token.user], true
}
