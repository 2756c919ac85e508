package check

import (
	"context"
	"fmt"
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

// Usage remembers when each token last passed a check. Recording is a map
// write; the API writes happen in UsageFlusher, never on the request path.
type Usage struct {
	mu      sync.Mutex
	seen    map[types.NamespacedName]time.Time
	written map[types.NamespacedName]time.Time
}

// NewUsage returns an empty Usage.
func NewUsage() *Usage {
	return &Usage{seen: map[types.NamespacedName]time.Time{}, written: map[types.NamespacedName]time.Time{}}
}

// Record notes that the token passed a check at now.
func (u *Usage) Record(key types.NamespacedName, now time.Time) {
	u.mu.Lock()
	if now.After(u.seen[key]) {
		u.seen[key] = now
	}
	u.mu.Unlock()
}

// due returns the tokens whose last use is newer than what was written, and
// whose last write is at least minGap old.
func (u *Usage) due(now time.Time, minGap time.Duration) map[types.NamespacedName]time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := map[types.NamespacedName]time.Time{}
	for key, seen := range u.seen {
		if written, ok := u.written[key]; ok && (!seen.After(written) || now.Sub(written) < minGap) {
			continue // nothing newer, or written less than minGap ago
		}
		out[key] = seen
	}
	return out
}

func (u *Usage) markWritten(key types.NamespacedName, at time.Time) {
	u.mu.Lock()
	u.written[key] = at
	u.mu.Unlock()
}

func (u *Usage) forget(key types.NamespacedName) {
	u.mu.Lock()
	delete(u.seen, key)
	delete(u.written, key)
	u.mu.Unlock()
}

// UsageFlusher writes lastUsedAt to ApiToken status in batches: every
// Interval, each token used since its last write, and written at least MinGap
// ago, gets one status patch. It runs on every replica, since each sees its
// own checks.
type UsageFlusher struct {
	Usage    *Usage
	Client   client.Client
	Clock    clock.WithTicker
	Interval time.Duration
	MinGap   time.Duration
	// Limiter, when set, is swept of ended windows on each flush.
	Limiter *Limiter
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
			if f.Limiter != nil {
				f.Limiter.Sweep(f.Clock.Now())
			}
		}
	}
}

// NeedLeaderElection is false: every replica records its own checks.
func (f *UsageFlusher) NeedLeaderElection() bool { return false }

// Flush writes what is due now.
func (f *UsageFlusher) Flush(ctx context.Context) {
	now := f.Clock.Now()
	for key, seen := range f.Usage.due(now, f.MinGap) {
		patch := fmt.Appendf(nil, `{"status":{"lastUsedAt":%q}}`, metav1.NewTime(seen).UTC().Format(time.RFC3339))
		obj := &keymintv1alpha1.ApiToken{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
		err := f.Client.Status().Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch))
		switch {
		case apierrors.IsNotFound(err):
			f.Usage.forget(key)
		case err != nil:
			logf.FromContext(ctx).Error(err, "Writing lastUsedAt", "apiToken", key)
		default:
			f.Usage.markWritten(key, now)
		}
	}
}
