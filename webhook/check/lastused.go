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
)

// Usage collects the checks' last-use times. Record is a map write under a
// lock; the flusher takes the whole map by swapping it, so it never holds
// that lock for more than a pointer swap.
type Usage struct {
	mu      sync.Mutex
	pending map[types.NamespacedName]time.Time
	gone    map[types.NamespacedName]struct{}
}

// NewUsage returns an empty Usage.
func NewUsage() *Usage {
	return &Usage{pending: map[types.NamespacedName]time.Time{}, gone: map[types.NamespacedName]struct{}{}}
}

// Record notes that the token passed a check at now.
func (u *Usage) Record(key types.NamespacedName, now time.Time) {
	u.mu.Lock()
	if now.After(u.pending[key]) {
		u.pending[key] = now
	}
	u.mu.Unlock()
}

// Forget drops a deleted token: the feed calls it, so nothing of a deleted
// token stays here past the next flush.
func (u *Usage) Forget(key types.NamespacedName) {
	u.mu.Lock()
	delete(u.pending, key)
	u.gone[key] = struct{}{}
	u.mu.Unlock()
}

// take returns what was recorded and forgotten since the last take.
func (u *Usage) take() (seen map[types.NamespacedName]time.Time, gone map[types.NamespacedName]struct{}) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.pending) == 0 && len(u.gone) == 0 {
		return nil, nil
	}
	seen, gone = u.pending, u.gone
	u.pending, u.gone = map[types.NamespacedName]time.Time{}, map[types.NamespacedName]struct{}{}
	return seen, gone
}

// UsageFlusher writes lastUsedAt to ApiToken status in batches: every
// Interval, each token used since its last write, and written at least MinGap
// ago, gets one status patch. It runs on every replica, since each sees its
// own checks. lastUsedAt only moves forward: a patch is skipped when the
// status already shows a later use, and locks on the resourceVersion it read.
type UsageFlusher struct {
	Usage *Usage
	// Client reads ApiTokens from the cache and patches their status.
	Client   client.Client
	Clock    clock.WithTicker
	Interval time.Duration
	MinGap   time.Duration

	// waiting and written belong to the flusher's goroutine alone.
	waiting map[types.NamespacedName]time.Time
	written map[types.NamespacedName]time.Time
}

// Start flushes until ctx ends.
func (f *UsageFlusher) Start(ctx context.Context) error {
	tick := f.Clock.NewTicker(f.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
			f.Flush(ctx)
		}
	}
}

// NeedLeaderElection is false: every replica records its own checks.
func (f *UsageFlusher) NeedLeaderElection() bool { return false }

// Flush writes what is due now. Only one goroutine may call it at a time.
func (f *UsageFlusher) Flush(ctx context.Context) {
	if f.waiting == nil {
		f.waiting, f.written = map[types.NamespacedName]time.Time{}, map[types.NamespacedName]time.Time{}
	}
	seen, gone := f.Usage.take()
	for key := range gone {
		delete(f.waiting, key)
		delete(f.written, key)
	}
	for key, at := range seen {
		if at.After(f.waiting[key]) {
			f.waiting[key] = at
		}
	}
	now := f.Clock.Now()
	for key, at := range f.waiting {
		if written, ok := f.written[key]; ok && now.Sub(written) < f.MinGap {
			continue // written less than MinGap ago: wait
		}
		switch err := f.write(ctx, key, at); {
		case apierrors.IsNotFound(err):
			delete(f.waiting, key)
			delete(f.written, key)
		case apierrors.IsConflict(err):
			// Someone wrote the status since the cache saw it: next flush.
		case err != nil:
			logf.FromContext(ctx).Error(err, "Writing lastUsedAt", "apiToken", key)
		default:
			delete(f.waiting, key)
			f.written[key] = now
		}
	}
}

// write sets the token's lastUsedAt to at, unless its status already shows
// at or later (another replica's write), locking on the resourceVersion read.
func (f *UsageFlusher) write(ctx context.Context, key types.NamespacedName, at time.Time) error {
	tok := &keymintv1alpha1.ApiToken{}
	if err := f.Client.Get(ctx, key, tok); err != nil {
		return err
	}
	t := metav1.NewTime(at.UTC().Truncate(time.Second))
	if last := tok.Status.LastUsedAt; last != nil && !last.Before(&t) {
		return nil
	}
	patch := client.MergeFromWithOptions(tok.DeepCopy(), client.MergeFromWithOptimisticLock{})
	tok.Status.LastUsedAt = &t
	return f.Client.Status().Patch(ctx, tok, patch)
}
