package check

// lastused.go: when each token last passed a check, written to its status
// in batches, off the request path.

import (
	"context"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
)

// Usage collects the checks' last-use times, per token and hash (current or
// rotated out: retireWhenIdle tells the two apart). Record is a map write
// under a lock; the flusher takes the whole map by swapping it, so it never
// holds that lock for more than a pointer swap.
type Usage struct {
	mu      sync.Mutex
	pending map[usageKey]time.Time
	quotas  map[types.NamespacedName]*quotaSeen
	gone    map[types.NamespacedName]struct{}
}

// quotaSeen is a token's quota count as one check saw it.
type quotaSeen struct {
	d  QuotaDecision
	at time.Time
}

// usageKey is one hash of one token.
type usageKey struct {
	token types.NamespacedName
	hash  hash
}

// NewUsage returns an empty Usage.
func NewUsage() *Usage {
	return &Usage{pending: map[usageKey]time.Time{}, quotas: map[types.NamespacedName]*quotaSeen{}, gone: map[types.NamespacedName]struct{}{}}
}

// Record notes that hash h of the token passed a check at now.
func (u *Usage) Record(key types.NamespacedName, h hash, now time.Time) {
	k := usageKey{token: key, hash: h}
	u.mu.Lock()
	if now.After(u.pending[k]) {
		u.pending[k] = now
	}
	u.mu.Unlock()
}

// RecordQuota notes what a check at now saw of the token's quota; the
// latest is written to status.quota with the token's uses.
func (u *Usage) RecordQuota(key types.NamespacedName, d QuotaDecision, now time.Time) {
	u.mu.Lock()
	switch q := u.quotas[key]; {
	case q == nil:
		u.quotas[key] = &quotaSeen{d: d, at: now}
	case !now.Before(q.at):
		q.d, q.at = d, now
	}
	u.mu.Unlock()
}

// Forget drops a deleted token: the feed calls it, so nothing of a deleted
// token stays here past the next flush. It only notes the name, so that a
// deletion never holds up the checks' Record with a walk of every pending
// use; take drops the uses. (A token deleted and created again under the
// same name within one flush interval loses that interval's uses too.)
func (u *Usage) Forget(key types.NamespacedName) {
	u.mu.Lock()
	u.gone[key] = struct{}{}
	u.mu.Unlock()
}

// take returns what was recorded, less the uses of tokens forgotten, and
// what was forgotten, since the last take.
func (u *Usage) take() (seen map[usageKey]time.Time, quotas map[types.NamespacedName]*quotaSeen, gone map[types.NamespacedName]struct{}) {
	u.mu.Lock()
	if len(u.pending) == 0 && len(u.quotas) == 0 && len(u.gone) == 0 {
		u.mu.Unlock()
		return nil, nil, nil
	}
	seen, quotas, gone = u.pending, u.quotas, u.gone
	u.pending, u.quotas, u.gone = map[usageKey]time.Time{}, map[types.NamespacedName]*quotaSeen{}, map[types.NamespacedName]struct{}{}
	u.mu.Unlock()
	// Outside the lock: the maps are the flusher's alone now.
	if len(gone) > 0 {
		for k := range seen {
			if _, ok := gone[k.token]; ok {
				delete(seen, k)
			}
		}
		for k := range quotas {
			if _, ok := gone[k]; ok {
				delete(quotas, k)
			}
		}
	}
	return seen, quotas, gone
}

// UsageFlusher writes the uses to ApiToken status in batches: every
// Interval, each token used since its last write, and written at least MinGap
// ago by this replica, gets one status patch, of lastUsedAt (any hash),
// tokenLastUsedAt (the current hash), previousTokens[].lastUsedAt (each
// rotated-out hash) and status.quota. It runs on every replica, since each
// sees its own checks. Uses only move forward, and by at least the token's
// recording gap (tokenstate.UseRecordingGap: 3 hours, shorter where an idle
// rule reads them): a field already showing a use less than the gap before
// this one is left alone (unless unset), so N replicas together write a
// token about once per gap, not N times. The patch locks on the
// resourceVersion it read: of replicas writing at once, one wins and the
// others find its write next time. A hash is credited only to the status
// entry that names it.
type UsageFlusher struct {
	Usage *Usage
	// Client reads ServiceUsers (from the cache) and patches ApiTokens'
	// status.
	Client client.Client
	// APIReader reads each ApiToken before its patch: no replica's cache
	// holds ApiTokens for it (webhook/check.Feed keeps an index instead).
	// Nil reads with Client.
	APIReader client.Reader
	Clock     clock.WithTicker
	Interval  time.Duration
	// MinGap is the least time between two writes of one token by this
	// replica, so that its own write reaches its index before the next.
	MinGap time.Duration
	// Gap, when set, replaces tokenstate.UseRecordingGap (tests shorten it).
	Gap func(*tokenstate.Token, *tokenstate.User) time.Duration
	// Index, when set, is asked first: a token whose uses it shows
	// recorded within the gap is not read from the API server at all. It
	// lags the API server, never leads it, so it only ever sends a token
	// to the read (and the read decides); without it, every token with
	// uses is read at every flush.
	Index *Index

	// waiting, quotas and written belong to the flusher's goroutine alone.
	waiting map[types.NamespacedName]map[hash]time.Time
	quotas  map[types.NamespacedName]quotaSeen
	written map[types.NamespacedName]time.Time
}

// Start flushes until ctx ends, and once more then: a replica that stops
// (a rollout) writes the uses it holds rather than lose them, for a few
// seconds of its shutdown at most.
func (f *UsageFlusher) Start(ctx context.Context) error {
	tick := f.Clock.NewTicker(f.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			last, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalFlushTimeout)
			defer cancel()
			f.Flush(last)
			return nil
		case <-tick.C():
			f.Flush(ctx)
		}
	}
}

// finalFlushTimeout bounds the flush of a stopping replica, within the
// manager's graceful shutdown (8 s).
const finalFlushTimeout = 3 * time.Second

// NeedLeaderElection is false: every replica records its own checks.
func (f *UsageFlusher) NeedLeaderElection() bool { return false }

// Flush writes what is due now. Only one goroutine may call it at a time.
func (f *UsageFlusher) Flush(ctx context.Context) {
	if f.waiting == nil {
		f.waiting, f.written = map[types.NamespacedName]map[hash]time.Time{}, map[types.NamespacedName]time.Time{}
		f.quotas = map[types.NamespacedName]quotaSeen{}
	}
	seen, quotas, gone := f.Usage.take()
	for key := range gone {
		delete(f.waiting, key)
		delete(f.quotas, key)
		delete(f.written, key)
	}
	for key, q := range quotas {
		if !q.at.Before(f.quotas[key].at) {
			f.quotas[key] = *q
		}
		if f.waiting[key] == nil {
			// A refused check (its quota spent) is no use, but its count
			// is news.
			f.waiting[key] = map[hash]time.Time{}
		}
	}
	for k, at := range seen {
		uses := f.waiting[k.token]
		if uses == nil {
			uses = map[hash]time.Time{}
			f.waiting[k.token] = uses
		}
		if at.After(uses[k.hash]) {
			uses[k.hash] = at
		}
	}
	now := f.Clock.Now()
	users := map[types.NamespacedName]*tokenstate.User{} // read once a flush
	for key, uses := range f.waiting {
		if ctx.Err() != nil {
			return // a stopping replica's last flush ran out of time: one error, not one a token
		}
		if written, ok := f.written[key]; ok && now.Sub(written) < f.MinGap {
			continue // written less than MinGap ago: wait
		}
		var quota *quotaSeen
		if q, ok := f.quotas[key]; ok {
			quota = &q
		}
		switch wrote, err := f.write(ctx, key, uses, quota, users); {
		case apierrors.IsNotFound(err):
			delete(f.waiting, key)
			delete(f.quotas, key)
			delete(f.written, key)
		case apierrors.IsConflict(err):
			// Someone wrote the status since it was read: next flush.
		case err != nil:
			logf.FromContext(ctx).Error(err, "Writing lastUsedAt", "apiToken", key)
		default:
			delete(f.waiting, key)
			delete(f.quotas, key)
			if wrote {
				f.written[key] = now
			}
		}
	}
}

// write records the uses of the token's hashes in its status, where they
// are later than what it shows (another replica's write), locking on the
// resourceVersion read.
func (f *UsageFlusher) write(ctx context.Context, key types.NamespacedName, uses map[hash]time.Time, quota *quotaSeen, users map[types.NamespacedName]*tokenstate.User) (wrote bool, err error) {
	if f.Index != nil {
		if shown, ok := f.Index.shownUses(key); ok && !shown.due(uses, quota, f.gapOfShown(&shown)) {
			return false, nil
		}
	}
	tok := &keymintv1alpha1.ApiToken{}
	reader := client.Reader(f.Client)
	if f.APIReader != nil {
		reader = f.APIReader
	}
	if err := reader.Get(ctx, key, tok); err != nil {
		return false, err
	}
	gap := f.gapOf(ctx, tok, users)
	patch := client.MergeFromWithOptions(tok.DeepCopy(), client.MergeFromWithOptimisticLock{})
	st := &tok.Status
	changed := false
	later := func(field **metav1.Time, at time.Time) {
		var shown time.Time
		if *field != nil {
			shown = (*field).Time
		}
		if useIsNews(shown, at, gap) {
			t := metav1.NewTime(recordedAt(at))
			*field, changed = &t, true
		}
	}
	shownAt := st.LastUsedAt
	for h, at := range uses {
		later(&st.LastUsedAt, at)
		name := token.FormatHash(h)
		if name == st.TokenHash {
			later(&st.TokenLastUsedAt, at)
		}
		for i := range st.PreviousTokens {
			if st.PreviousTokens[i].TokenHash == name {
				later(&st.PreviousTokens[i].LastUsedAt, at)
			}
		}
	}
	// The gap lastUsedAt is written under goes with it, and again when uses
	// are held back under a longer gap than the one recorded (a maxIdle
	// raised since): idleness waits for the uses it holds back
	// (tokenstate.HeldBackUntil).
	if st.LastUsedAt != nil && (st.LastUsedAt != shownAt || (len(uses) > 0 && gapIsNews(tokenstate.RecordedGap(st), gap))) {
		st.LastUsedRecording, changed = &keymintv1alpha1.UseRecording{LastUsedAt: *st.LastUsedAt, Gap: metav1.Duration{Duration: gap}}, true
	}
	if quota != nil && quotaNews(st.Quota, quota, gap) {
		st.Quota, changed = quotaStatus(quota), true
	}
	if !changed {
		return false, nil
	}
	return true, f.Client.Status().Patch(ctx, tok, patch)
}

// gapOf is the token's recording gap, with its ServiceUser as the cache
// has it (none: the token's own rules alone), read once a flush into users.
func (f *UsageFlusher) gapOf(ctx context.Context, tok *keymintv1alpha1.ApiToken, users map[types.NamespacedName]*tokenstate.User) time.Duration {
	key := types.NamespacedName{Namespace: tok.Namespace, Name: tok.Spec.ServiceUser}
	user, ok := users[key]
	if !ok {
		u := &keymintv1alpha1.ServiceUser{}
		switch err := f.Client.Get(ctx, key, u); {
		case apierrors.IsNotFound(err):
			u = nil
		case err != nil:
			// Its maxIdle unknown: the finest gap, never a coarser one.
			return tokenstate.MinUseRecordingGap
		}
		state := tokenstate.UserFrom(u)
		user = &state
		users[key] = user
	}
	t := tokenstate.TokenFrom(&tok.Spec, &tok.Status)
	if f.Gap != nil {
		return f.Gap(&t, user)
	}
	return tokenstate.UseRecordingGap(&t, user)
}

// recordedAt is a use as a status records it: to the second, in UTC.
func recordedAt(at time.Time) time.Time { return at.UTC().Truncate(time.Second) }

// useIsNews reports whether a use at at moves a recorded use shown (zero:
// none) by the gap or more: the one rule write and the index's pre-check
// (shownUses.due) both apply.
func useIsNews(shown, at time.Time, gap time.Duration) bool {
	return shown.IsZero() || !shown.Add(gap).After(recordedAt(at))
}

// gapIsNews reports whether uses held back under gap must be recorded: the
// status records a shorter gap for its lastUsedAt (zero: none, which idle
// revocation reads as the longest). Write and the pre-check both apply it.
func gapIsNews(recorded, gap time.Duration) bool { return recorded > 0 && recorded < gap }

// gapOfShown is the recording gap of a token as the index shows it.
func (f *UsageFlusher) gapOfShown(s *shownUses) time.Duration {
	if f.Gap != nil {
		return f.Gap(&s.token, &s.user)
	}
	return tokenstate.UseRecordingGap(&s.token, &s.user)
}

// due reports whether uses (or the quota seen) would move a field the
// shown status has by the gap or more, as write decides on the status it
// reads.
func (s *shownUses) due(uses map[hash]time.Time, quota *quotaSeen, gap time.Duration) bool {
	for h, at := range uses {
		if useIsNews(s.token.AnyLastUsed, at, gap) || (s.hasCur && h == s.current && useIsNews(s.token.LastUsed, at, gap)) {
			return true
		}
		name := token.FormatHash(h)
		for _, p := range s.token.Previous {
			if p.Hash == name && useIsNews(p.LastUsed, at, gap) {
				return true
			}
		}
	}
	if len(uses) > 0 && !s.token.AnyLastUsed.IsZero() && gapIsNews(s.token.AnyLastUsedGap, gap) {
		return true
	}
	return quota != nil && quotaNews(s.quota, quota, gap)
}

// quotaNews reports whether what a check saw of a quota is worth a write
// over what the status shows: another period or quota, or a count at least
// a recording gap newer, so that N replicas together write it about once
// per gap.
func quotaNews(shown *keymintv1alpha1.QuotaStatus, q *quotaSeen, minGap time.Duration) bool {
	if shown != nil && q.at.Before(shown.ObservedAt.Time) {
		return false // another replica wrote a later count
	}
	if shown == nil || shown.Uses != q.d.Limit || (shown.RefillsAt == nil) != q.d.Refill.IsZero() ||
		(shown.RefillsAt != nil && !shown.RefillsAt.Time.Equal(q.d.Refill.UTC().Truncate(time.Second))) {
		return true
	}
	return shown.Remaining != q.d.Remaining && !q.at.Before(shown.ObservedAt.Add(minGap))
}

// quotaStatus is status.quota for what a check saw.
func quotaStatus(q *quotaSeen) *keymintv1alpha1.QuotaStatus {
	st := &keymintv1alpha1.QuotaStatus{Uses: q.d.Limit, Remaining: q.d.Remaining, ObservedAt: metav1.NewTime(q.at.UTC().Truncate(time.Second))}
	if !q.d.Refill.IsZero() {
		t := metav1.NewTime(q.d.Refill.UTC().Truncate(time.Second))
		st.RefillsAt = &t
	}
	return st
}
