package freshness

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	toolscache "k8s.io/client-go/tools/cache"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeLW answers List and Watch as told, and keeps the watches it opened.
type fakeLW struct {
	mu                sync.Mutex
	listErr, watchErr error
	calls             int
	watches           []*watch.FakeWatcher
	unsupported       bool
}

func (f *fakeLW) set(listErr, watchErr error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.listErr, f.watchErr = listErr, watchErr
}

func (f *fakeLW) List(opts metav1.ListOptions) (runtime.Object, error) {
	return f.ListWithContext(context.Background(), opts)
}

func (f *fakeLW) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return f.WatchWithContext(context.Background(), opts)
}

func (f *fakeLW) ListWithContext(context.Context, metav1.ListOptions) (runtime.Object, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.listErr != nil {
		return nil, f.listErr
	}
	return &keymintv1alpha1.ApiTokenList{}, nil
}

func (f *fakeLW) WatchWithContext(context.Context, metav1.ListOptions) (watch.Interface, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.watchErr != nil {
		return nil, f.watchErr
	}
	w := watch.NewFakeWithChanSize(4, false)
	f.watches = append(f.watches, w)
	return w, nil
}

func (f *fakeLW) IsWatchListSemanticsUnSupported() bool { return f.unsupported }

// fixture is one tracker following ApiTokens and ServiceUsers, with one
// ApiToken informer whose ListerWatcher the test drives as a reflector would.
type fixture struct {
	t       *testing.T
	clock   *clocktesting.FakeClock
	tracker *Tracker
	inner   *fakeLW
	lw      toolscache.ListerWatcherWithContext
	watches []watch.Interface // as the reflector sees them
}

func newFixture(t *testing.T) *fixture {
	f := &fixture{t: t, clock: clocktesting.NewFakeClock(t0), inner: &fakeLW{}}
	f.tracker = New(f.clock, logr.Discard(), &keymintv1alpha1.ApiToken{}, &keymintv1alpha1.ServiceUser{})
	f.lw = f.informer(&keymintv1alpha1.ApiToken{}, f.inner).(toolscache.ListerWatcherWithContext)
	return f
}

// informer creates an informer of obj's kind through the tracker and
// returns the ListerWatcher it got.
func (f *fixture) informer(obj runtime.Object, lw toolscache.ListerWatcher) toolscache.ListerWatcher {
	var got toolscache.ListerWatcher
	f.tracker.NewInformer(func(lw toolscache.ListerWatcher, _ runtime.Object, _ time.Duration, _ toolscache.Indexers) toolscache.SharedIndexInformer {
		got = lw
		return nil
	})(lw, obj, 0, nil)
	return got
}

func (f *fixture) list(err error) {
	f.inner.set(err, nil)
	_, _ = f.lw.ListWithContext(context.Background(), metav1.ListOptions{})
}

func (f *fixture) watch(streaming bool, err error) {
	f.inner.set(nil, err)
	opts := metav1.ListOptions{}
	if streaming {
		opts.SendInitialEvents = ptr.To(true)
	}
	if w, err := f.lw.WatchWithContext(context.Background(), opts); err == nil {
		f.watches = append(f.watches, w)
	}
}

// last is the latest watch, as the server and as the reflector see it.
func (f *fixture) last() (*watch.FakeWatcher, watch.Interface) {
	return f.inner.watches[len(f.inner.watches)-1], f.watches[len(f.watches)-1]
}

// send delivers an event and waits until the reflector side received it.
func (f *fixture) send(ev watch.Event) {
	server, client := f.last()
	server.Action(ev.Type, ev.Object)
	if got := <-client.ResultChan(); got.Type != ev.Type {
		f.t.Fatalf("the watch passed on %s, not %s", got.Type, ev.Type)
	}
}

// closeWatch ends watch i from the server's side and waits until the
// reflector side saw its end.
func (f *fixture) closeWatch(i int) {
	f.inner.watches[i].Stop()
	for range f.watches[i].ResultChan() {
	}
}

func bookmark(endOfInitialEvents bool) watch.Event {
	obj := &keymintv1alpha1.ApiToken{}
	if endOfInitialEvents {
		obj.Annotations = map[string]string{metav1.InitialEventsAnnotationKey: "true"}
	}
	return watch.Event{Type: watch.Bookmark, Object: obj}
}

// refused is what a List or Watch returns when nothing listens.
var refused = fmt.Errorf("dial tcp 127.0.0.1:6443: connect: %w", syscall.ECONNREFUSED)

// tooOld is what a restarted kube-apiserver answers a watch from a resource
// version before its start.
var tooOld = watch.Event{Type: watch.Error, Object: &apierrors.NewResourceExpired("too old resource version: 243 (252)").ErrStatus}

// modified is an ordinary watch event.
var modified = watch.Event{Type: watch.Modified, Object: &keymintv1alpha1.ApiToken{}}

// TestTracker drives one informer's ListerWatcher as client-go's reflector
// does and checks the ApiToken kind's state after each step.
func TestTracker(t *testing.T) {
	type step struct {
		name  string
		wait  time.Duration // the clock moves before the step
		do    func(f *fixture)
		stale time.Duration // -1: current; else stale for this long
		err   string        // a part of the error reported
	}
	const current = -1
	cases := []struct {
		name  string
		steps []step
	}{
		{"stale from its creation until it first lists", []step{
			{"created", 0, func(*fixture) {}, 0, ""},
			{"still unlisted", 3 * time.Second, func(*fixture) {}, 3 * time.Second, ""},
			{"listed", time.Second, func(f *fixture) { f.list(nil) }, current, ""},
		}},
		{"a failed list is stale from its first failure", []step{
			{"listed", 0, func(f *fixture) { f.list(nil) }, current, ""},
			{"watching", 0, func(f *fixture) { f.watch(false, nil) }, current, ""},
			{"watch ends", 2 * time.Second, func(f *fixture) { f.closeWatch(0) }, 0, ""},
			{"list refused", time.Second, func(f *fixture) { f.list(refused) }, time.Second, "connection refused"},
			{"refused again: the earliest instant is kept", 4 * time.Second, func(f *fixture) { f.list(refused) }, 5 * time.Second, "connection refused"},
			{"listed again", 2 * time.Second, func(f *fixture) { f.list(nil) }, current, ""},
			{"and still current later", time.Minute, func(*fixture) {}, current, ""},
		}},
		{"a watch that fails to open", []step{
			{"listed", 0, func(f *fixture) { f.list(nil) }, current, ""},
			{"watch refused", time.Second, func(f *fixture) { f.watch(false, refused) }, 0, "connection refused"},
			{"time passes", 7 * time.Second, func(*fixture) {}, 7 * time.Second, "connection refused"},
			{"the watch opens: resumed, not yet confirmed", 0, func(f *fixture) { f.watch(false, nil) }, 7 * time.Second, ""},
			{"a second without an error", time.Second, func(*fixture) {}, current, ""},
		}},
		{"a resumed watch the restarted server refuses stays stale from the break", []step{
			{"watching", 0, func(f *fixture) { f.list(nil); f.watch(false, nil) }, current, ""},
			{"the server dies", time.Second, func(f *fixture) { f.closeWatch(0) }, 0, ""},
			{"refused for 20 s", 20 * time.Second, func(f *fixture) { f.watch(false, refused) }, 20 * time.Second, "connection refused"},
			{"back: the watch from the old resource version opens", 0, func(f *fixture) { f.watch(false, nil) }, 20 * time.Second, ""},
			{"and is refused as too old", 0, func(f *fixture) { f.send(tooOld) }, 20 * time.Second, "too old resource version"},
			{"a second later, still stale", time.Second, func(f *fixture) { f.closeWatch(1) }, 21 * time.Second, "too old"},
			{"listed", time.Second, func(f *fixture) { f.list(nil) }, current, ""},
		}},
		{"a resumed watch counts at its first event", []step{
			{"watching", 0, func(f *fixture) { f.list(nil); f.watch(false, nil) }, current, ""},
			{"the watch times out", time.Minute, func(f *fixture) { f.closeWatch(0) }, 0, ""},
			{"resumed", 0, func(f *fixture) { f.watch(false, nil) }, 0, ""},
			{"an event", 100 * time.Millisecond, func(f *fixture) { f.send(modified) }, current, ""},
		}},
		{"a streaming list is current only once its initial events are in", []step{
			{"stream opened", 0, func(f *fixture) { f.watch(true, nil) }, 0, ""},
			{"initial events", time.Second, func(f *fixture) {
				f.send(watch.Event{Type: watch.Added, Object: &keymintv1alpha1.ApiToken{}})
				f.send(bookmark(false))
			}, time.Second, ""},
			{"end of initial events", time.Second, func(f *fixture) { f.send(bookmark(true)) }, current, ""},
			{"events go on", time.Second, func(f *fixture) { f.send(modified) }, current, ""},
			{"the server goes away", time.Second, func(f *fixture) { f.closeWatch(0) }, 0, ""},
			{"and stays away", 20 * time.Second, func(f *fixture) { f.watch(true, refused) }, 20 * time.Second, "connection refused"},
			{"back: a stream opens, not yet current", time.Second, func(f *fixture) { f.watch(true, nil) }, 21 * time.Second, "connection refused"},
			{"current again", 0, func(f *fixture) { f.send(bookmark(true)) }, current, ""},
		}},
		{"a watch error event", []step{
			{"watching", 0, func(f *fixture) { f.list(nil); f.watch(false, nil) }, current, ""},
			{"too old", time.Second, func(f *fixture) { f.send(tooOld) }, 0, "too old resource version"},
			{"closed after it: still stale from the error", time.Second, func(f *fixture) { f.closeWatch(0) }, time.Second, "too old"},
			{"relisted", 0, func(f *fixture) { f.list(nil) }, current, ""},
		}},
		{"the reflector stops a watch", []step{
			{"watching", 0, func(f *fixture) { f.list(nil); f.watch(false, nil) }, current, ""},
			{"stopped", time.Second, func(f *fixture) { f.watches[0].Stop() }, 0, ""},
			{"watching again", time.Second, func(f *fixture) { f.watch(false, nil); f.send(modified) }, current, ""},
			{"the stopped watch's stream ends late: no effect", time.Second, func(f *fixture) { f.inner.watches[0].Stop() }, current, ""},
		}},
		{"a watch left behind cannot mark a later one stale", []step{
			{"watch A", 0, func(f *fixture) { f.list(nil); f.watch(false, nil) }, current, ""},
			{"watch B opened without stopping A", time.Second, func(f *fixture) { f.watch(false, nil) }, current, ""},
			{"A ends", time.Second, func(f *fixture) { f.closeWatch(0) }, current, ""},
			{"B ends", time.Second, func(f *fixture) { f.closeWatch(1) }, 0, ""},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			for _, s := range tc.steps {
				f.clock.Step(s.wait)
				s.do(f)
				var got KindStatus
				// A resumed watch is confirmed by a timer, in its own
				// goroutine: give it a moment.
				for deadline := time.Now().Add(time.Second); ; time.Sleep(time.Millisecond) {
					st := f.tracker.Status()
					if len(st) != 1 || st[0].Kind != "ApiToken" {
						t.Fatalf("%s: status %+v, want ApiToken's only (no ServiceUser informer exists)", s.name, st)
					}
					got = st[0]
					if got.Stale == (s.stale != current) || time.Now().After(deadline) {
						break
					}
				}
				switch {
				case s.stale == current && got.Stale:
					t.Fatalf("%s: stale for %v (%s), want current", s.name, got.For, got.Err)
				case s.stale != current && (!got.Stale || got.For != s.stale):
					t.Fatalf("%s: stale %v for %v, want stale for %v", s.name, got.Stale, got.For, s.stale)
				case !strings.Contains(got.Err, s.err):
					t.Fatalf("%s: error %q, want it to contain %q", s.name, got.Err, s.err)
				}
			}
		})
	}
}

// TestTrackerKindsAndPassThrough: a kind is stale when any of its informers
// is; untracked kinds get their ListerWatcher untouched; client-go still
// learns whether the wrapped one supports streaming lists.
func TestTrackerKindsAndPassThrough(t *testing.T) {
	f := newFixture(t)
	secrets := &fakeLW{}
	if got := f.informer(&corev1.Secret{}, secrets); got != toolscache.ListerWatcher(secrets) {
		t.Fatal("a Secret informer's ListerWatcher was wrapped")
	}
	users := f.informer(&keymintv1alpha1.ServiceUser{}, &fakeLW{unsupported: true}).(toolscache.ListerWatcherWithContext)
	if !users.(interface{ IsWatchListSemanticsUnSupported() bool }).IsWatchListSemanticsUnSupported() {
		t.Error("the wrapper hid that the ServiceUser ListerWatcher does not support streaming lists")
	}
	if f.lw.(interface{ IsWatchListSemanticsUnSupported() bool }).IsWatchListSemanticsUnSupported() {
		t.Error("the wrapper says the ApiToken ListerWatcher does not support streaming lists")
	}
	// A second ApiToken informer (a namespaced cache would make one per namespace).
	more := &fakeLW{}
	second := f.informer(&keymintv1alpha1.ApiToken{}, more).(toolscache.ListerWatcherWithContext)

	f.list(nil)
	if _, err := users.ListWithContext(context.Background(), metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	f.clock.Step(2 * time.Second)
	if d, stale := f.tracker.Stale(); d != 2*time.Second || len(stale) != 1 || stale[0].Kind != "ApiToken" || stale[0].Listed {
		t.Fatalf("one of two ApiToken informers unlisted: stale %v %+v", d, stale)
	}
	if _, err := second.ListWithContext(context.Background(), metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if d, stale := f.tracker.Stale(); d != 0 || len(stale) != 0 {
		t.Fatalf("every informer listed: stale %v %+v", d, stale)
	}
}

// TestReadinessAndMetrics: readiness fails, and keymint_index_stale reads 1,
// only past the allowed staleness; the message names each stale kind.
func TestReadinessAndMetrics(t *testing.T) {
	f := newFixture(t)
	users := f.informer(&keymintv1alpha1.ServiceUser{}, &fakeLW{}).(toolscache.ListerWatcherWithContext)
	ready := f.tracker.Checker(10 * time.Second)
	metrics := f.tracker.Collector(10 * time.Second)
	expect := func(stale int, tokens, serviceUsers float64) {
		t.Helper()
		want := strings.NewReader(`
# HELP keymint_index_stale 1 while the check server's index has been out of touch with the API server (an ApiToken or ServiceUser watch down) for longer than --max-index-staleness, when readiness fails; else 0. Checks are answered from the index either way.
# TYPE keymint_index_stale gauge
keymint_index_stale ` + map[int]string{0: "0", 1: "1"}[stale] + `
# HELP keymint_index_stale_seconds Seconds since the watch of this kind, which feeds the check server's index, was last known connected to the API server; 0 while it is connected.
# TYPE keymint_index_stale_seconds gauge
keymint_index_stale_seconds{kind="ApiToken"} ` + ftoa(tokens) + `
keymint_index_stale_seconds{kind="ServiceUser"} ` + ftoa(serviceUsers) + `
`)
		if err := testutil.CollectAndCompare(metrics, want); err != nil {
			t.Error(err)
		}
	}

	f.list(nil)
	f.watch(false, nil)
	if _, err := users.ListWithContext(context.Background(), metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := ready(nil); err != nil {
		t.Fatalf("current: %v", err)
	}
	expect(0, 0, 0)

	// The API server goes away.
	f.closeWatch(0)
	f.clock.Step(4 * time.Second)
	f.list(refused)
	if err := ready(nil); err != nil {
		t.Fatalf("stale for 4s of 10 allowed: %v", err)
	}
	expect(0, 4, 0)

	f.clock.Step(7 * time.Second)
	err := ready(nil)
	if err == nil {
		t.Fatal("stale for 11s of 10 allowed, and ready")
	}
	want := `token index stale for 11s, over the 10s allowed: watch of ApiToken disconnected for 11s (dial tcp 127.0.0.1:6443: connect: connection refused)`
	if err.Error() != want {
		t.Fatalf("readiness says\n%s\nwant\n%s", err, want)
	}
	expect(1, 11, 0)

	f.list(nil)
	if err := ready(nil); err != nil {
		t.Fatalf("current again: %v", err)
	}
	expect(0, 0, 0)
}

func ftoa(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// TestRetryRefused: with RetryRefused, a List or Watch refused a connection
// is tried again until it gets through, the kind stale meanwhile; other
// errors, and a cancelled context, go back to the reflector at once.
func TestRetryRefused(t *testing.T) {
	f := newFixture(t)
	f.tracker.RetryRefused = time.Second
	f.list(nil)
	f.watch(false, nil)
	f.closeWatch(0)

	for _, op := range []string{"list", "watch"} {
		t.Run(op, func(t *testing.T) {
			f.inner.set(refused, refused)
			calls := func() int { f.inner.mu.Lock(); defer f.inner.mu.Unlock(); return f.inner.calls }
			before := calls()
			done := make(chan error)
			go func() {
				var err error
				if op == "list" {
					_, err = f.lw.ListWithContext(context.Background(), metav1.ListOptions{})
				} else {
					var w watch.Interface
					if w, err = f.lw.WatchWithContext(context.Background(), metav1.ListOptions{}); err == nil {
						w.Stop()
					}
				}
				done <- err
			}()
			for range 3 { // three refusals, each followed by a wait
				if !eventually(t, "the retry waits on the clock", f.clock.HasWaiters) {
					t.FailNow()
				}
				if _, stale := f.tracker.Stale(); len(stale) == 0 {
					t.Fatal("refused, and current")
				}
				f.clock.Step(1500 * time.Millisecond)
			}
			if !eventually(t, "a fourth call, then a wait", func() bool { return calls() >= before+4 && f.clock.HasWaiters() }) {
				t.FailNow()
			}
			f.inner.set(nil, nil)
			f.clock.Step(1500 * time.Millisecond)
			if err := <-done; err != nil {
				t.Fatalf("%s after the server came back: %v", op, err)
			}
			if got := calls() - before; got < 4 {
				t.Fatalf("%d calls, want at least 4", got)
			}
		})
	}

	forbidden := apierrors.NewForbidden(keymintv1alpha1.GroupVersion.WithResource("apitokens").GroupResource(), "", fmt.Errorf("no"))
	f.inner.set(forbidden, forbidden)
	if _, err := f.lw.ListWithContext(context.Background(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("a forbidden List returned %v, want the error at once", err)
	}
	if _, err := f.lw.WatchWithContext(context.Background(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("a forbidden Watch returned %v, want the error at once", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.inner.set(refused, refused)
	go func() {
		eventually(t, "the refused List waits on the clock", f.clock.HasWaiters)
		cancel()
	}()
	if _, err := f.lw.ListWithContext(ctx, metav1.ListOptions{}); err == nil {
		t.Fatal("a List refused and cancelled returned no error")
	}
}

// TestLog: a watch that ends and is opened again at once, as one does every
// 5 to 10 minutes, logs nothing; a disconnection with an error logs it, and
// its end.
func TestLog(t *testing.T) {
	var lines []string
	f := newFixture(t)
	f.tracker.log = funcr.New(func(_, args string) { lines = append(lines, args) }, funcr.Options{})
	f.list(nil)
	f.watch(false, nil)
	f.clock.Step(7 * time.Minute)
	f.closeWatch(0)
	f.watch(false, nil)
	f.send(modified)
	if len(lines) != 0 {
		t.Fatalf("a watch timing out logged %q", lines)
	}
	f.closeWatch(1)
	f.watch(false, refused)
	f.clock.Step(3 * time.Second)
	f.watch(false, refused)
	f.list(nil)
	want := []string{
		`"level"=0 "msg"="Watch disconnected: checks are answered from the index as it is until it connects again" "kind"="ApiToken" "error"="dial tcp 127.0.0.1:6443: connect: connection refused"`,
		`"level"=0 "msg"="Watch connected again: the check index is current" "kind"="ApiToken" "after"="3s"`,
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("logged\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

// eventually polls cond every millisecond and reports, with t.Errorf (safe
// from any goroutine), when it has not held within 30 s: no poll without a
// deadline.
func eventually(t *testing.T, what string, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Errorf("%s: not within 30 s", what)
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}
