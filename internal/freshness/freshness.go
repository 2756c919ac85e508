// Package freshness tells whether the informers that feed the check server's
// index are in touch with the API server, and since when they are not.
//
// A Tracker wraps the ListerWatcher of each informer of the kinds it is told
// to follow (controller-runtime's cache.Options.NewInformer). A kind is
// current while every one of its informers has a live watch, or has just
// listed; it is stale from the instant one of them lost it:
//
//   - a List that succeeds, or a Watch that opens, marks the informer
//     connected. A streaming list (a Watch with sendInitialEvents, which
//     client-go uses instead of List when the server supports it) does so
//     only once its initial events have all arrived. A watch that resumes
//     from a resource version after a break does so on its first event, or
//     once it has been open a second without an error: a kube-apiserver
//     that restarted refuses an old resource version ("too old resource
//     version", 410) with the watch's first event, and the informer must
//     list again before it is current;
//   - a List or Watch that fails, or a watch that ends (its result channel
//     closes, or the reflector stops it), marks it disconnected, since that
//     instant; further failures keep the earliest instant.
//
// With RetryRefused set, a List or Watch whose connection is refused (the
// API server is down) is tried again by the tracker every RetryRefused, not
// returned to client-go's reflector, whose backoff grows to waits of 30 to
// 60 s: without it the index stays stale for 20 to 100 s after a 20 s
// outage of kube-apiserver (measured by test/fault), with it for a few
// seconds.
//
// When the API server process dies, its sockets close: the watch ends at once
// and the kind is stale within milliseconds. A silent network partition
// closes nothing; the client's HTTP/2 health check (a ping after 30 s without
// a frame, given up after 15 s more: HTTP2_READ_IDLE_TIMEOUT_SECONDS,
// HTTP2_PING_TIMEOUT_SECONDS) closes the connection, so such a kind is seen
// stale up to about 45 s late, and counted stale from then.
//
// A watch also ends normally every 5 to 10 minutes (the reflector's timeout)
// and is opened again at once: the kind is stale for a few milliseconds,
// which is why the readiness check and the keymint_index_stale gauge wait for
// a threshold before calling the index stale.
package freshness

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/watchlist"
	"k8s.io/utils/clock"
)

// NewInformerFunc is the signature of controller-runtime's
// cache.Options.NewInformer (and of client-go's NewSharedIndexInformer).
type NewInformerFunc func(toolscache.ListerWatcher, runtime.Object, time.Duration, toolscache.Indexers) toolscache.SharedIndexInformer

// resumeConfirm is how long a watch that resumed after a break must stay
// open without an error, if no event comes, to count as connected.
const resumeConfirm = time.Second

// Tracker follows the informers of some kinds. It is safe for concurrent use.
type Tracker struct {
	// RetryRefused, when positive, is how long a List or Watch of a tracked
	// kind waits before trying again when the API server refused the
	// connection (up to half as long again, at random); the reflector sees
	// neither the error nor its backoff. Set it before the informers start.
	RetryRefused time.Duration

	clock clock.Clock
	log   logr.Logger

	mu     sync.Mutex
	kinds  []*kind // in the order New was given them
	byType map[reflect.Type]*kind
}

type kind struct {
	name    string
	sources []*source // one per informer of the kind
}

// source is one informer's link to the API server.
type source struct {
	kind      *kind
	connected bool
	// since is when the informer was last marked connected, or when it
	// lost touch (the earliest instant while it stays disconnected).
	since time.Time
	// listed is false until the informer first listed.
	listed bool
	// lastErr is the last error of a List, a Watch or a watch stream.
	lastErr string
	// logged is true once this disconnection was logged.
	logged bool
	// call counts List and Watch calls: a watch changes the state only
	// while no later call was made (the reflector makes one at a time).
	call uint64
}

// New returns a Tracker of the kinds of the given objects (such as
// &ApiToken{}), named by their Go type.
func New(clk clock.Clock, log logr.Logger, objs ...runtime.Object) *Tracker {
	t := &Tracker{clock: clk, log: log, byType: map[reflect.Type]*kind{}}
	for _, obj := range objs {
		typ := reflect.TypeOf(obj)
		if _, ok := t.byType[typ]; ok {
			continue
		}
		k := &kind{name: typ.Elem().Name()}
		t.kinds = append(t.kinds, k)
		t.byType[typ] = k
	}
	return t
}

// NewInformer wraps next (client-go's NewSharedIndexInformer when nil) so
// that the informers of tracked kinds report to t; others are created as
// next would. Set it as cache.Options.NewInformer.
//
// Informers of tracked kinds are expected to live as long as the manager:
// one that is stopped for good stays disconnected.
func (t *Tracker) NewInformer(next NewInformerFunc) NewInformerFunc {
	if next == nil {
		next = toolscache.NewSharedIndexInformer
	}
	return func(lw toolscache.ListerWatcher, obj runtime.Object, resync time.Duration, indexers toolscache.Indexers) toolscache.SharedIndexInformer {
		if k := t.byType[reflect.TypeOf(obj)]; k != nil {
			lw = t.wrap(k, lw)
		}
		return next(lw, obj, resync, indexers)
	}
}

// Track wraps the ListerWatcher of a reflector of obj's kind (one that is
// not an informer's, such as the check index's own), so that it reports to
// t; lw is returned as is when the kind is not tracked. Like an informer,
// the reflector is expected to live as long as the manager.
func (t *Tracker) Track(obj runtime.Object, lw toolscache.ListerWatcher) toolscache.ListerWatcher {
	if k := t.byType[reflect.TypeOf(obj)]; k != nil {
		return t.wrap(k, lw)
	}
	return lw
}

// Tracking is Track for obj's kind as a function, for options that take one
// (check.Options.TrackTokens).
func (t *Tracker) Tracking(obj runtime.Object) func(toolscache.ListerWatcher) toolscache.ListerWatcher {
	return func(lw toolscache.ListerWatcher) toolscache.ListerWatcher { return t.Track(obj, lw) }
}

func (t *Tracker) wrap(k *kind, lw toolscache.ListerWatcher) toolscache.ListerWatcher {
	t.mu.Lock()
	defer t.mu.Unlock()
	src := &source{kind: k, since: t.clock.Now()}
	k.sources = append(k.sources, src)
	return &listWatch{next: toolscache.ToListerWatcherWithContext(lw), orig: lw, t: t, src: src}
}

// listWatch reports each List and Watch of one informer.
type listWatch struct {
	next toolscache.ListerWatcherWithContext
	orig toolscache.ListerWatcher
	t    *Tracker
	src  *source
}

func (lw *listWatch) List(opts metav1.ListOptions) (runtime.Object, error) {
	return lw.ListWithContext(context.Background(), opts)
}

func (lw *listWatch) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return lw.WatchWithContext(context.Background(), opts)
}

func (lw *listWatch) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	for {
		lw.t.startCall(lw.src)
		list, err := lw.next.ListWithContext(ctx, opts)
		if err == nil {
			lw.t.connect(lw.src)
			return list, nil
		}
		lw.t.disconnect(lw.src, err)
		if !lw.t.retry(ctx, err) {
			return list, err
		}
	}
}

func (lw *listWatch) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	for {
		call := lw.t.startCall(lw.src)
		w, err := lw.next.WatchWithContext(ctx, opts)
		if err == nil && w != nil {
			return lw.t.watching(lw.src, call, w, opts.SendInitialEvents != nil && *opts.SendInitialEvents), nil
		}
		lw.t.disconnect(lw.src, err)
		if err == nil || !lw.t.retry(ctx, err) {
			return w, err
		}
	}
}

// retry waits before a List or Watch is tried again, if err is a refused
// connection and RetryRefused is set; it says whether to try again.
func (t *Tracker) retry(ctx context.Context, err error) bool {
	if t.RetryRefused <= 0 || !utilnet.IsConnectionRefused(err) {
		return false
	}
	select {
	case <-t.clock.After(wait.Jitter(t.RetryRefused, 0.5)):
		return true
	case <-ctx.Done():
		return false
	}
}

// watching wraps a watch that opened. It counts as connected at once if it
// was opened while the informer was connected (just after a List), else as
// said in the package documentation.
func (t *Tracker) watching(src *source, call uint64, w watch.Interface, streaming bool) watch.Interface {
	tw := &trackedWatch{inner: w, out: make(chan watch.Event), done: make(chan struct{}), t: t, src: src, call: call}
	t.mu.Lock()
	resuming := !streaming && !src.connected
	t.mu.Unlock()
	var confirm <-chan time.Time
	if resuming {
		confirm = t.clock.After(resumeConfirm)
	}
	go tw.run(streaming, resuming, confirm)
	return tw
}

// IsWatchListSemanticsUnSupported keeps the wrapped ListerWatcher's answer,
// which client-go's reflector asks before it uses streaming lists.
func (lw *listWatch) IsWatchListSemanticsUnSupported() bool {
	return watchlist.DoesClientNotSupportWatchListSemantics(lw.orig)
}

// trackedWatch passes a watch's events on and reports when it ends.
type trackedWatch struct {
	inner    watch.Interface
	out      chan watch.Event
	done     chan struct{}
	stopOnce sync.Once
	stopped  bool // under t.mu
	t        *Tracker
	src      *source
	call     uint64
}

func (w *trackedWatch) ResultChan() <-chan watch.Event { return w.out }

func (w *trackedWatch) Stop() {
	w.stopOnce.Do(func() {
		w.t.watchEnded(w, nil)
		close(w.done)
		w.inner.Stop()
	})
}

// run passes events on. A streaming list counts as connected at the end of
// its initial events; a resuming watch at its first event that is not an
// error, or when confirm fires first.
func (w *trackedWatch) run(streaming, resuming bool, confirm <-chan time.Time) {
	defer close(w.out)
	in := w.inner.ResultChan()
	for {
		var ev watch.Event
		var ok bool
		select {
		case ev, ok = <-in:
		case <-confirm:
			w.t.watchConnected(w)
			resuming, confirm = false, nil
			continue
		case <-w.done:
			return
		}
		if !ok {
			w.t.watchEnded(w, nil)
			return
		}
		switch {
		case ev.Type == watch.Error:
			w.t.watchEnded(w, apierrors.FromObject(ev.Object))
			resuming, confirm = false, nil
		case streaming && ev.Type == watch.Bookmark && initialEventsEnd(ev.Object):
			w.t.watchConnected(w)
			streaming = false
		case resuming:
			w.t.watchConnected(w)
			resuming, confirm = false, nil
		}
		select {
		case w.out <- ev:
		case <-w.done:
			return
		}
	}
}

// initialEventsEnd says whether a bookmark ends a streaming list's initial
// events.
func initialEventsEnd(obj runtime.Object) bool {
	m, err := meta.Accessor(obj)
	return err == nil && m.GetAnnotations()[metav1.InitialEventsAnnotationKey] == "true"
}

func (t *Tracker) startCall(src *source) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	src.call++
	return src.call
}

func (t *Tracker) connect(src *source) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.connectLocked(src)
}

func (t *Tracker) connectLocked(src *source) {
	if src.connected {
		return
	}
	now := t.clock.Now()
	if src.logged {
		t.log.Info("Watch connected again: the check index is current", "kind", src.kind.name, "after", now.Sub(src.since).Round(time.Millisecond).String())
	}
	src.connected, src.since, src.listed, src.lastErr, src.logged = true, now, true, "", false
}

func (t *Tracker) disconnect(src *source, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.disconnectLocked(src, err)
}

// disconnectLocked logs a disconnection at its first error, not when a watch
// merely ends: one ends every 5 to 10 minutes and is opened again at once.
func (t *Tracker) disconnectLocked(src *source, err error) {
	if src.connected {
		src.connected, src.since = false, t.clock.Now()
	}
	if err == nil {
		return
	}
	src.lastErr = err.Error()
	if !src.logged {
		src.logged = true
		t.log.Info("Watch disconnected: checks are answered from the index as it is until it connects again", "kind", src.kind.name, "error", src.lastErr)
	}
}

// watchConnected and watchEnded change the state only for the watch of the
// informer's latest call, not yet stopped: a watch the reflector has left
// behind may still deliver its end after the next one opened.
func (t *Tracker) watchConnected(w *trackedWatch) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !w.stopped && w.call == w.src.call {
		t.connectLocked(w.src)
	}
}

func (t *Tracker) watchEnded(w *trackedWatch, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !w.stopped && w.call == w.src.call {
		t.disconnectLocked(w.src, err)
	}
	if err == nil {
		w.stopped = true
	}
}

// KindStatus is one tracked kind's state at an instant.
type KindStatus struct {
	Kind string
	// Stale is true while some informer of the kind has no live watch
	// (or has not listed yet).
	Stale bool
	// For is how long the kind has been stale; 0 while it is current.
	For time.Duration
	// Listed is false until every informer of the kind has listed once.
	Listed bool
	// Err is the last error the stale informer saw, if any.
	Err string
}

// Status returns the state of each tracked kind that has informers, in the
// order New was given them.
func (t *Tracker) Status() []KindStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.clock.Now()
	var out []KindStatus
	for _, k := range t.kinds {
		if len(k.sources) == 0 {
			continue
		}
		st := KindStatus{Kind: k.name, Listed: true}
		for _, src := range k.sources {
			st.Listed = st.Listed && src.listed
			if src.connected {
				continue
			}
			if d := now.Sub(src.since); !st.Stale || d > st.For {
				st.Stale, st.For, st.Err = true, max(d, 0), src.lastErr
			}
		}
		out = append(out, st)
	}
	return out
}

// Stale returns how long the oldest stale kind has been stale (0 when every
// kind is current), and the stale kinds.
func (t *Tracker) Stale() (time.Duration, []KindStatus) {
	var d time.Duration
	var stale []KindStatus
	for _, st := range t.Status() {
		if st.Stale {
			stale = append(stale, st)
			d = max(d, st.For)
		}
	}
	return d, stale
}

// Checker returns a readiness check that fails while some tracked kind has
// been stale for longer than maxStaleness, naming each stale kind and its
// last error. It never affects the checks themselves, which go on being
// answered from the index.
func (t *Tracker) Checker(maxStaleness time.Duration) func(*http.Request) error {
	return func(*http.Request) error {
		d, stale := t.Stale()
		if d <= maxStaleness {
			return nil
		}
		return fmt.Errorf("token index stale for %s, over the %s allowed: %s",
			d.Round(time.Second), maxStaleness, describe(stale))
	}
}

func describe(stale []KindStatus) string {
	parts := make([]string, 0, len(stale))
	for _, st := range stale {
		what := "disconnected"
		if !st.Listed {
			what = "not listed yet"
		}
		s := fmt.Sprintf("watch of %s %s for %s", st.Kind, what, st.For.Round(time.Second))
		if st.Err != "" {
			s += " (" + st.Err + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

var (
	staleDesc = prometheus.NewDesc("keymint_index_stale",
		"1 while the check server's index has been out of touch with the API server (an ApiToken or ServiceUser watch down) for longer than --max-index-staleness, when readiness fails; else 0. Checks are answered from the index either way.",
		nil, nil)
	staleSecondsDesc = prometheus.NewDesc("keymint_index_stale_seconds",
		"Seconds since the watch of this kind, which feeds the check server's index, was last known connected to the API server; 0 while it is connected.",
		[]string{"kind"}, nil)
)

// Collector returns the staleness metrics, computed at each scrape:
// keymint_index_stale (against maxStaleness) and keymint_index_stale_seconds
// per kind.
func (t *Tracker) Collector(maxStaleness time.Duration) prometheus.Collector {
	return collector{t: t, max: maxStaleness}
}

type collector struct {
	t   *Tracker
	max time.Duration
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- staleDesc
	ch <- staleSecondsDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	var worst time.Duration
	for _, st := range c.t.Status() {
		worst = max(worst, st.For)
		ch <- prometheus.MustNewConstMetric(staleSecondsDesc, prometheus.GaugeValue, st.For.Seconds(), st.Kind)
	}
	stale := 0.0
	if worst > c.max {
		stale = 1
	}
	ch <- prometheus.MustNewConstMetric(staleDesc, prometheus.GaugeValue, stale)
}
