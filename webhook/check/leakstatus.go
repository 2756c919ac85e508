package check

// leakstatus.go: the queue of leak reports → status.leakReports, off the
// request path, at most one write per report across all replicas.

import (
	"cmp"
	"context"
	"slices"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
)

const (
	// MaxLeakReports is the most status.leakReports holds (the CRD's
	// bound).
	MaxLeakReports = 16
	// leakWriteAttempts bounds the patches of one ApiToken in one drain:
	// each conflict re-reads it from the API server first.
	leakWriteAttempts = 5
	// defaultLeakRetry is how long reports that could not be written wait
	// before the next try.
	defaultLeakRetry = 5 * time.Second
)

// LeakWriter writes the reporter's queue to ApiToken status, as soon as
// something is queued: per ApiToken, one status patch adding a report for
// each queued hash the status still names (tokenHash, or a
// previousTokens[].tokenHash) and does not list in leakReports yet. Nothing
// to add, no write. It runs on every replica, each writing what it
// received. The patch locks on the resourceVersion read: of N replicas
// writing the same report at once one wins, and the others, on the
// conflict, read the ApiToken again past the cache, find the report and
// write nothing.
type LeakWriter struct {
	Reporter *LeakReporter
	// Client patches ApiTokens' status.
	Client client.Client
	// APIReader reads each ApiToken before its patch.
	APIReader client.Reader
	Clock     clock.Clock
	// Retry is how long reports that could not be written wait; zero means
	// 5 s.
	Retry time.Duration

	// Counts of ApiTokens handled, by result, for the metrics.
	written, unchanged, gone, failed atomic.Uint64
}

// shutdownDrain bounds the last write of queued reports when the manager
// stops.
const shutdownDrain = 5 * time.Second

// NeedLeaderElection is false: every replica writes the reports it
// received.
func (w *LeakWriter) NeedLeaderElection() bool { return false }

// Start writes reports as they are queued until ctx ends.
func (w *LeakWriter) Start(ctx context.Context) error {
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			// Reports answered 202 are not sent again: write what is
			// queued before going, within a bound.
			last, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownDrain)
			defer cancel()
			w.Drain(last)
			return nil
		case <-w.Reporter.wake:
		case <-retry:
		}
		retry = nil
		if !w.Drain(ctx) {
			retry = w.Clock.After(cmp.Or(w.Retry, defaultLeakRetry))
		}
	}
}

// Drain writes what is queued now, and reports whether all of it is done:
// false when some waits for a later try. Only one goroutine may call it at
// a time.
func (w *LeakWriter) Drain(ctx context.Context) (done bool) {
	done = true
	log := logf.FromContext(ctx)
	for key, leaks := range w.Reporter.take() {
		left, wrote, err := w.write(ctx, key, leaks)
		switch {
		case apierrors.IsNotFound(err):
			w.gone.Add(1)
		case apierrors.IsInvalid(err):
			// The API server will refuse it again: give up, and let a new
			// report of these hashes try afresh.
			w.failed.Add(1)
			w.Reporter.forget(leaks)
			log.Error(err, "Writing a leak report to the ApiToken status", "apiToken", key)
		case err != nil:
			w.failed.Add(1)
			w.Reporter.putBack(key, leaks)
			done = false
			log.Error(err, "Writing a leak report to the ApiToken status; trying again later", "apiToken", key)
		default:
			if wrote {
				w.written.Add(1)
			} else {
				w.unchanged.Add(1)
			}
			if len(left) > 0 {
				// No room in leakReports: they wait for the controller to
				// act on those it lists.
				w.Reporter.putBack(key, left)
				done = false
			}
		}
	}
	return done
}

// write adds the reports to the ApiToken's status, reading it from the
// API server (the replica caches no ApiToken objects), again after a
// conflict. It returns the reports there was no room for, and whether it
// wrote.
func (w *LeakWriter) write(ctx context.Context, key types.NamespacedName, leaks map[hash]leak) (left map[hash]leak, wrote bool, err error) {
	for attempt := 1; ; attempt++ {
		tok := &keymintv1alpha1.ApiToken{}
		if err := w.APIReader.Get(ctx, key, tok); err != nil {
			return nil, false, err
		}
		patch := client.MergeFromWithOptions(tok.DeepCopy(), client.MergeFromWithOptimisticLock{})
		added, left := addLeakReports(&tok.Status, leaks)
		if added == 0 {
			return left, false, nil
		}
		err := w.Client.Status().Patch(ctx, tok, patch)
		if err == nil {
			return left, true, nil
		}
		if !apierrors.IsConflict(err) || attempt == leakWriteAttempts {
			return nil, false, err
		}
	}
}

// addLeakReports adds to st.LeakReports a report of each hash in leaks
// that st names and does not list yet: the current token's first, then the
// rotated-out ones in the status's order. Past MaxLeakReports, the listed
// reports of hashes st no longer names go first; what still does not fit is
// returned.
func addLeakReports(st *keymintv1alpha1.ApiTokenStatus, leaks map[hash]leak) (added int, left map[hash]leak) {
	listed := make(map[string]bool, len(st.LeakReports))
	for _, r := range st.LeakReports {
		listed[r.TokenHash] = true
	}
	named := make([]string, 0, 1+len(st.PreviousTokens))
	if st.TokenHash != "" {
		named = append(named, st.TokenHash)
	}
	for _, p := range st.PreviousTokens {
		named = append(named, p.TokenHash)
	}
	var add []keymintv1alpha1.LeakReport
	for _, name := range named {
		h, ok := token.ParseHash(name)
		l, queued := leaks[h]
		if !ok || !queued || listed[name] {
			continue
		}
		listed[name] = true
		add = append(add, keymintv1alpha1.LeakReport{
			TokenHash: name, ReportedAt: metav1.NewTime(l.at.UTC().Truncate(time.Second)),
			Source: l.source, Location: l.location,
		})
	}
	if len(add) == 0 {
		return 0, nil
	}
	reports := st.LeakReports
	if len(reports)+len(add) > MaxLeakReports {
		kept := make([]keymintv1alpha1.LeakReport, 0, len(reports))
		for _, r := range reports {
			if slices.Contains(named, r.TokenHash) {
				kept = append(kept, r)
			}
		}
		reports = kept
	}
	if room := max(0, MaxLeakReports-len(reports)); len(add) > room {
		left = map[hash]leak{}
		for _, r := range add[room:] {
			h, _ := token.ParseHash(r.TokenHash)
			left[h] = leaks[h]
		}
		add = add[:room]
	}
	st.LeakReports = append(reports[:len(reports):len(reports)], add...)
	return len(add), left
}
