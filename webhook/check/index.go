package check

// index.go: hash → entry. The in-memory map a check reads, and what it
// remembers of refusals. It knows nothing of the layers built on it (the
// check, its answers, metrics): what they keep per entry it only stores.

import (
	"crypto/sha256"
	"encoding/json"
	"runtime"
	"sync"
	"sync/atomic"
	"weak"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
)

type hash = [sha256.Size]byte

// tokenEntry is what the index keeps of one ApiToken. Entries are never
// changed once stored: an update stores a new one, so a reader holding an
// entry after releasing the lock reads a consistent snapshot.
type tokenEntry struct {
	key types.NamespacedName
	// state.Spec is the ApiToken's spec, whole (a rule that reads a new
	// field finds it there), shared by the tokens whose specs are equal
	// (specTable): never changed once stored.
	state tokenstate.Token
	// current and previous are the live hashes: previous[i] is
	// state.Previous[i].
	current    hash
	hasCurrent bool
	previous   []hash
	// refused are hashes this token had that were refused for good here
	// (revoked, user disabled or missing, claimed twice): checks answer them
	// revoked_token, whatever later events say about them.
	refused []hash
	// owner holds the token's ServiceUser entry (nil while it is not
	// indexed), shared by all tokens of that user: UpsertUser swaps one
	// pointer, and a check reads one map.
	owner *userSlot
	// memo is what checks learn of the entry; copies of an entry share it
	// (same spec, same live hashes in the same places).
	memo *entryMemo
	// quota is status.quota (nil without one), for the usage flusher.
	quota *keymintv1alpha1.QuotaStatus
}

// entryMemo holds what checks of an entry learn once and then read; copies
// of an entry share it: the same spec, and the same live hashes in the
// same places (a copy that refuses hashes takes them out of its live ones,
// so a bit of one the copy no longer has is never read).
type entryMemo struct {
	// wellFormed has bit which+1 set (tokenstate.Current is bit 0) once a
	// presented token with that live hash parsed (check.go reads it).
	wellFormed atomic.Uint64
	// derived is what the layer above builds from the entry and its user's
	// entry, once, then reads (a *Grant). The index never reads it.
	derived atomic.Value
}

// userKey names the token's ServiceUser, in the token's namespace.
func (e *tokenEntry) userKey() types.NamespacedName {
	return types.NamespacedName{Namespace: e.key.Namespace, Name: e.state.Spec.ServiceUser}
}

// live returns the hashes a check may accept, with tokenstate's selector.
func (e *tokenEntry) live(yield func(hash, int) bool) {
	if e.hasCurrent && !yield(e.current, tokenstate.Current) {
		return
	}
	for i, h := range e.previous {
		if !yield(h, i) {
			return
		}
	}
}

func (e *tokenEntry) names(h hash) bool {
	for l := range e.live {
		if l == h {
			return true
		}
	}
	return false
}

// userSlot is where the tokens of one ServiceUser find its current entry
// (guarded by the index's lock). It lives while the user or one of its
// tokens is indexed.
type userSlot struct {
	key types.NamespacedName
	// uid is the user UID its tokens' records last named: they share it.
	uid   types.UID
	entry *userEntry
	// memo is what the layers above keep per ServiceUser (its metric
	// series), handed to the index's forget hook when the slot goes.
	memo atomic.Value
}

// userEntry is what the index keeps of one ServiceUser.
type userEntry struct {
	state tokenstate.User
	// username and groups are what kube-apiserver sees, built once here
	// rather than on every check.
	username string
	groups   []string
}

// hashRef points a hash at its token: which is tokenstate.Current or an
// index into its previous hashes. A refused ref only ever refuses.
type hashRef struct {
	token   *tokenEntry
	which   int32 // int32 and the flag beside it: 16 bytes a hash, not 24
	refused bool
}

// Index maps token hashes to what a check needs. Lookups cost one map read
// whatever the number of tokens.
type Index struct {
	mu     sync.RWMutex
	byHash map[hash]hashRef
	tokens map[types.NamespacedName]*tokenEntry
	users  map[types.NamespacedName]*userSlot
	// byUser lists the tokens that name each ServiceUser, so disabling a
	// user refuses its tokens' hashes without a scan.
	// (A user's tokens are in its namespace: the inner set holds names.)
	byUser map[types.NamespacedName]map[string]struct{}
	// contested counts hashes two ApiTokens claimed at once.
	contested int
	// forgotten are called with a slot's memo once the slot goes.
	forgotten []func(memo any)
	specs     specTable
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{
		byHash: map[hash]hashRef{},
		tokens: map[types.NamespacedName]*tokenEntry{},
		users:  map[types.NamespacedName]*userSlot{},
		byUser: map[types.NamespacedName]map[string]struct{}{},
	}
}

// OnUserForgotten adds what is called, under the index's lock, with what
// the layers above kept in a ServiceUser's slot (nil if nothing) once
// neither the user nor any of its tokens is indexed.
func (ix *Index) OnUserForgotten(f func(memo any)) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.forgotten = append(ix.forgotten, f)
}

// Len returns how many hashes (live and refused) are indexed.
func (ix *Index) Len() int {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return len(ix.byHash)
}

// Contested returns how many hashes were refused because two ApiTokens
// claimed them.
func (ix *Index) Contested() int {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return ix.contested
}

// newEntry builds the entry of an ApiToken from its spec and status.
func (ix *Index) newEntry(t *keymintv1alpha1.ApiToken) *tokenEntry {
	e := &tokenEntry{
		memo:  &entryMemo{},
		key:   types.NamespacedName{Namespace: t.Namespace, Name: t.Name},
		quota: t.Status.Quota,
	}
	e.state = tokenstate.TokenFrom(ix.specs.intern(&t.Spec), &t.Status)
	e.state.Deleting = t.DeletionTimestamp != nil
	if h, ok := token.ParseHash(t.Status.TokenHash); ok && e.state.Issued {
		e.current, e.hasCurrent = h, true
	}
	// Keep previous[i] aligned with state.Previous[i]: drop unreadable ones
	// from both.
	prev := e.state.Previous[:0:0]
	for _, p := range e.state.Previous {
		if h, ok := token.ParseHash(p.Hash); ok {
			e.previous = append(e.previous, h)
			prev = append(prev, p)
		}
	}
	e.state.Previous = prev
	return e
}

// UpsertToken indexes an ApiToken's live hashes, replacing whatever the
// index held for it. Hashes refused earlier stay refused while the token is
// revoked or still names them; hashes of a revoked token become refused.
func (ix *Index) UpsertToken(t *keymintv1alpha1.ApiToken) {
	e := ix.newEntry(t)
	isRevoked := t.Spec.Revoked || meta.IsStatusConditionTrue(t.Status.Conditions, keymintv1alpha1.ApiTokenConditionRevoked)

	ix.mu.Lock()
	defer ix.mu.Unlock()
	if s := ix.users[e.userKey()]; s != nil && s.entry != nil && (!s.entry.state.Found || s.entry.state.Disabled) {
		// A hash first seen after its user was disabled is refused for good
		// too, as if it had been indexed before: re-enabling the user must
		// not bring it back while its revocation is on its way.
		refuseLive(e)
	}
	if old, ok := ix.tokens[e.key]; ok {
		for _, h := range old.refused {
			if isRevoked || e.names(h) {
				e.refused = append(e.refused, h)
			}
		}
		if isRevoked {
			for h := range old.live {
				if !e.names(h) {
					e.refused = append(e.refused, h)
				}
			}
		}
	}
	ix.storeLocked(e)
}

// storeLocked replaces the entry of e.key with e and points its hashes at it.
// A hash another token claims too is refused for both, for good.
func (ix *Index) storeLocked(e *tokenEntry) {
	user := e.userKey()
	if old, ok := ix.tokens[e.key]; ok && old.userKey() != user {
		// The name now belongs to a token of another user (deleted and
		// recreated, seen as one update after a relist).
		if users := ix.byUser[old.userKey()]; users != nil {
			delete(users, e.key.Name)
			if len(users) == 0 {
				delete(ix.byUser, old.userKey())
			}
		}
		defer ix.forgetSlotLocked(old.userKey())
	}
	e.owner = ix.slotLocked(user)
	e.shareStrings()
	ix.removeTokenLocked(e.key)
	ix.tokens[e.key] = e
	users := ix.byUser[user]
	if users == nil {
		users = map[string]struct{}{}
		ix.byUser[user] = users
	}
	users[e.key.Name] = struct{}{}
	for _, h := range e.refused {
		ix.byHash[h] = hashRef{token: e, refused: true}
	}
	for h, which := range e.live {
		ref, taken := ix.byHash[h]
		switch {
		case !taken:
			ix.byHash[h] = hashRef{token: e, which: int32(which)}
		case ref.token != e:
			// Exactly one ApiToken owns a hash: two claims refuse both.
			// Their controllers reissue each, so this hash never returns.
			if !ref.refused {
				ix.refuseLocked(ref.token, h)
			}
			e.refused = append(e.refused, h)
			ix.byHash[h] = hashRef{token: e, refused: true}
			ix.contested++
		}
	}
}

// refuseLocked makes h a refused hash of e, replacing e's entry by a copy.
func (ix *Index) refuseLocked(e *tokenEntry, h hash) {
	ne := *e
	ne.refused = append(append([]hash(nil), e.refused...), h)
	ix.tokens[e.key] = &ne
	for _, r := range ne.refused {
		ix.byHash[r] = hashRef{token: &ne, refused: true}
	}
	for l, which := range ne.live {
		if ref := ix.byHash[l]; ref.token == e && !ref.refused {
			ix.byHash[l] = hashRef{token: &ne, which: int32(which)}
		}
	}
}

// DeleteToken removes an ApiToken and its hashes.
func (ix *Index) DeleteToken(key types.NamespacedName) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if old, ok := ix.tokens[key]; ok {
		user := old.userKey()
		if users := ix.byUser[user]; users != nil {
			delete(users, key.Name)
			if len(users) == 0 {
				delete(ix.byUser, user)
			}
		}
		defer ix.forgetSlotLocked(user)
	}
	ix.removeTokenLocked(key)
}

func (ix *Index) removeTokenLocked(key types.NamespacedName) {
	old, ok := ix.tokens[key]
	if !ok {
		return
	}
	delete(ix.tokens, key)
	for h := range old.live {
		if ix.byHash[h].token == old {
			delete(ix.byHash, h)
		}
	}
	for _, h := range old.refused {
		if ix.byHash[h].token == old {
			delete(ix.byHash, h)
		}
	}
}

// UpsertUser indexes a ServiceUser. Disabling it refuses its tokens' live
// hashes for good here, so an event that re-enables it cannot bring one
// back before the event that revokes it arrives.
func (ix *Index) UpsertUser(u *keymintv1alpha1.ServiceUser) {
	e := &userEntry{
		state:    tokenstate.UserFrom(u),
		username: Username(u.Namespace, u.Name),
		groups:   append([]string{GroupAll, GroupAll + ":" + u.Namespace}, u.Spec.Groups...),
	}
	key := types.NamespacedName{Namespace: u.Namespace, Name: u.Name}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.slotLocked(key).entry = e
	if !e.state.Found || e.state.Disabled {
		ix.refuseTokensOfLocked(key)
	}
}

// slotLocked returns the slot of a user, making it on first use.
func (ix *Index) slotLocked(user types.NamespacedName) *userSlot {
	s := ix.users[user]
	if s == nil {
		s = &userSlot{key: user}
		ix.users[user] = s
	}
	return s
}

// forgetSlotLocked drops a user's slot once neither the user nor a token
// of it is indexed.
func (ix *Index) forgetSlotLocked(user types.NamespacedName) {
	if s := ix.users[user]; s != nil && s.entry == nil && len(ix.byUser[user]) == 0 {
		delete(ix.users, user)
		for _, f := range ix.forgotten {
			f(s.memo.Load())
		}
	}
}

// DeleteUser removes a ServiceUser: its tokens are refused from now on.
func (ix *Index) DeleteUser(key types.NamespacedName) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if s := ix.users[key]; s != nil {
		s.entry = nil
	}
	ix.refuseTokensOfLocked(key)
	ix.forgetSlotLocked(key)
}

// refuseTokensOfLocked makes the live hashes of a user's tokens refused.
func (ix *Index) refuseTokensOfLocked(user types.NamespacedName) {
	for name := range ix.byUser[user] {
		e := ix.tokens[types.NamespacedName{Namespace: user.Namespace, Name: name}]
		if e == nil {
			continue
		}
		ne := *e
		ne.refused = append([]hash(nil), e.refused...)
		refuseLive(&ne)
		ix.storeLocked(&ne)
	}
}

// refuseLive moves e's live hashes to its refused ones.
func refuseLive(e *tokenEntry) {
	for h := range e.live {
		e.refused = append(e.refused, h)
	}
	e.hasCurrent, e.previous = false, nil
	e.state.Issued, e.state.Previous = false, nil
}

// lookup returns the hash's ref and its token's user (nil when the user is
// not indexed).
func (ix *Index) lookup(h hash) (hashRef, *userEntry, bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	ref, ok := ix.byHash[h]
	if !ok {
		return hashRef{}, nil, false
	}
	return ref, ref.token.owner.entry, true
}

// TokenKeys lists the ApiTokens indexed.
func (ix *Index) TokenKeys() []types.NamespacedName {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	keys := make([]types.NamespacedName, 0, len(ix.tokens))
	for k := range ix.tokens {
		keys = append(keys, k)
	}
	return keys
}

// shareStrings points the entry's copies of its namespace and its user's
// UID at the slot's, so that a user's tokens hold one of each.
func (e *tokenEntry) shareStrings() {
	s := e.owner
	e.key.Namespace = s.key.Namespace
	switch {
	case e.state.UserUID == "":
	case e.state.UserUID == s.uid:
		e.state.UserUID = s.uid
	default:
		s.uid = e.state.UserUID
	}
}

// specTable shares one copy of each distinct ApiToken spec among the
// entries that have it: tokens applied from one template (a user's
// tokens, most often) differ in name only. A spec is found by the SHA-256
// of its JSON, and held weakly: once no entry holds it, it goes.
type specTable struct {
	mu sync.Mutex
	m  map[hash]weak.Pointer[keymintv1alpha1.ApiTokenSpec]
}

// intern returns the table's copy of spec, adding one if it has none.
func (t *specTable) intern(spec *keymintv1alpha1.ApiTokenSpec) *keymintv1alpha1.ApiTokenSpec {
	data, err := json.Marshal(spec)
	if err != nil {
		// Not seen from the API server's objects; a copy of its own.
		own := *spec
		return &own
	}
	k := sha256.Sum256(data)
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.m[k].Value(); p != nil {
		return p
	}
	if t.m == nil {
		t.m = map[hash]weak.Pointer[keymintv1alpha1.ApiTokenSpec]{}
	}
	// A deep copy: the caller's slices and maps are its own to change, and
	// every token sharing the spec would see a change.
	p := spec.DeepCopy()
	wp := weak.Make(p)
	t.m[k] = wp
	runtime.AddCleanup(p, t.forget, specKey{k, wp})
	return p
}

// specKey is a table entry, as its cleanup finds it.
type specKey struct {
	k  hash
	wp weak.Pointer[keymintv1alpha1.ApiTokenSpec]
}

// forget drops a collected spec's entry, unless a new copy took its place.
func (t *specTable) forget(k specKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m[k.k] == k.wp {
		delete(t.m, k.k)
	}
}

// len returns how many distinct specs the table holds.
func (t *specTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// shownUses is what the index shows of a token's recorded uses.
type shownUses struct {
	token   tokenstate.Token
	user    tokenstate.User // Found false when not indexed
	current hash
	hasCur  bool
	quota   *keymintv1alpha1.QuotaStatus
}

// shownUses returns what the index shows of a token's recorded uses; false
// when the token is not indexed.
func (ix *Index) shownUses(key types.NamespacedName) (shownUses, bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	e := ix.tokens[key]
	if e == nil {
		return shownUses{}, false
	}
	s := shownUses{token: e.state, current: e.current, hasCur: e.hasCurrent, quota: e.quota}
	if u := e.owner.entry; u != nil {
		s.user = u.state
	}
	return s, true
}
