package check

import (
	"context"
	"encoding/base64"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
)

// Only a token checks accept right now is queued: every other string
// stops at the parse (not a token) or at the lookup and the rules.
func TestLeakReportQueuesOnlyTokensChecksAccept(t *testing.T) {
	f := newFixture(t)
	f.user("exporter")
	f.user("gone", func(u *keymintv1alpha1.ServiceUser) { u.Spec.Disabled = true })
	graceful, _ := token.Mint("km")
	ended, _ := token.Mint("km")
	current := f.token("rotated", "exporter", func(t *keymintv1alpha1.ApiToken) {
		t.Status.PreviousTokens = []keymintv1alpha1.PreviousToken{
			{TokenHash: token.HashString(graceful), ValidUntil: metav1.NewTime(t0.Add(time.Hour))},
			{TokenHash: token.HashString(ended), ValidUntil: metav1.NewTime(t0)},
		}
	})
	expired := f.token("expired", "exporter", func(t *keymintv1alpha1.ApiToken) {
		t.Status.ExpiresAt = &metav1.Time{Time: t0.Add(-time.Second)}
	})
	revoked := f.token("revoked", "exporter", func(t *keymintv1alpha1.ApiToken) { t.Spec.Revoked = true })
	disabled := f.token("disabled", "gone")
	unknown, _ := token.Mint("km")
	typo := []byte(current)
	typo[5] ^= 1

	r := NewLeakReporter(f.index)
	for _, tc := range []struct {
		name, presented string
		want            LeakOutcome
	}{
		{"the current token", current, LeakQueued},
		{"a rotated-out token in its grace period", graceful, LeakQueued},
		{"the current token again", current, LeakNotAccepted},
		{"a rotated-out token past its grace", ended, LeakNotAccepted},
		{"an expired token", expired, LeakNotAccepted},
		{"a revoked token", revoked, LeakNotAccepted},
		{"a token of a disabled user", disabled, LeakNotAccepted},
		{"an unknown token", unknown, LeakNotAccepted},
		{"a typo", string(typo), LeakNotKeymint},
		{"another vendor's token", "ghp_" + strings.Repeat("a", 36), LeakNotKeymint},
		{"nothing", "", LeakNotKeymint},
	} {
		if got := r.Report(tc.presented, SourceGitHub, "", t0); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	queued := r.take()
	if len(queued) != 1 {
		t.Fatalf("queued for %d ApiTokens, want 1: %v", len(queued), queued)
	}
	leaks := queued[types.NamespacedName{Namespace: "team-a", Name: "rotated"}]
	if len(leaks) != 2 || leaks[token.Hash(current)].source != SourceGitHub || leaks[token.Hash(graceful)].at != t0 {
		t.Errorf("queued %v, want the current and the graceful hash, from github at t0", leaks)
	}
	if got := r.Report(current, SourceGitLab, "", t0.Add(time.Minute)); got != LeakNotAccepted {
		t.Errorf("a replay after the queue was taken: %v, want it remembered", got)
	}
	if got := r.Report(current, SourceGitLab, "", t0.Add(recentLeakTTL)); got != LeakQueued {
		t.Errorf("a replay once the report is forgotten: %v, want it queued again", got)
	}
}

func TestLeakQueueIsBounded(t *testing.T) {
	r := NewLeakReporter(NewIndex())
	for i := range MaxLeakQueue {
		key := types.NamespacedName{Namespace: "ns", Name: "t" + strconv.Itoa(i)}
		if got := r.enqueue(key, hash{byte(i), byte(i >> 8)}, leak{at: t0}); got != LeakQueued {
			t.Fatalf("report %d: %v", i, got)
		}
	}
	full := types.NamespacedName{Namespace: "ns", Name: "one-too-many"}
	if got := r.enqueue(full, hash{1, 2, 3}, leak{at: t0}); got != LeakDropped || r.Dropped() != 1 {
		t.Errorf("past the bound: %v, dropped %d", got, r.Dropped())
	}
	// A dropped report is not remembered: a replay once there is room is
	// queued.
	r.take()
	if got := r.enqueue(full, hash{1, 2, 3}, leak{at: t0}); got != LeakQueued {
		t.Errorf("once there is room: %v", got)
	}
	if r.Queued() != 1 {
		t.Errorf("%d queued, want 1", r.Queued())
	}
}

func TestRecentLeaksForgetTheOldestPastTheBound(t *testing.T) {
	var s recentLeaks
	first := hash{0xff}
	s.add(first, t0)
	for i := range maxRecentLeaks - 1 {
		s.add(hash{byte(i), byte(i >> 8), 1}, t0)
	}
	if !s.has(first, t0) {
		t.Fatal("forgot the first at the bound")
	}
	s.add(hash{2}, t0)
	if s.has(first, t0) {
		t.Error("kept the first past the bound")
	}
	if len(s.at) != maxRecentLeaks {
		t.Errorf("holds %d, want %d", len(s.at), maxRecentLeaks)
	}
}

func TestCleanLocation(t *testing.T) {
	tok, _ := token.Mint("acme")
	long := strings.Repeat("é", 300) // 600 bytes: 512 falls inside a character
	for _, tc := range []struct{ name, in, want string }{
		{"a URL", "https://github.com/acme/app/blob/main/.env#L3", "https://github.com/acme/app/blob/main/.env#L3"},
		{"nothing", "", ""},
		{"cut on a character boundary", long, strings.Repeat("é", 256)},
		{"invalid UTF-8 replaced", "file\xff.txt", "file\uFFFD.txt"},
		{"a token in it", "https://ci.example/job?token=" + tok + "&x=1", ""},
		{"a token right at the cut", strings.Repeat("a", MaxLeakLocation-10) + "/" + tok, ""},
		{"a token with a typo is no token", "x=" + tok[:len(tok)-1] + "!", "x=" + tok[:len(tok)-1] + "!"},
		{"a percent-encoded token", "https://ci.example/job?t=" + strings.ReplaceAll(tok, "_", "%5F"), ""},
		{"a twice percent-encoded token", "https://ci.example/job?t=" + strings.ReplaceAll(tok, "_", "%255F"), ""},
		{"a base64-encoded token", "https://ci.example/env/" + base64.StdEncoding.EncodeToString([]byte("TOKEN="+tok+"\n")), ""},
		{"a URL-safe base64-encoded token", "https://ci.example/env?v=" + base64.RawURLEncoding.EncodeToString([]byte(tok)), ""},
		{"a long path with a commit hash is kept",
			"https://gitlab.example.com/platform/payments/billing-service/-/blob/0123456789abcdef0123456789abcdef01234567/deploy/production/values.yaml#L42",
			"https://gitlab.example.com/platform/payments/billing-service/-/blob/0123456789abcdef0123456789abcdef01234567/deploy/production/values.yaml#L42"},
	} {
		got := cleanLocation(tc.in)
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
		if len(got) > MaxLeakLocation || !utf8.ValidString(got) {
			t.Errorf("%s: %d bytes, valid UTF-8 %v", tc.name, len(got), utf8.ValidString(got))
		}
	}
}

func leakReport(h string) keymintv1alpha1.LeakReport {
	return keymintv1alpha1.LeakReport{TokenHash: h, Source: SourceGitHub, ReportedAt: metav1.NewTime(t0)}
}

func TestAddLeakReports(t *testing.T) {
	hashOf := func(i int) (hash, string) {
		h := hash{byte(i), 0xaa}
		return h, token.FormatHash(h)
	}
	cur, curName := hashOf(0)
	prev, prevName := hashOf(1)
	other, _ := hashOf(2)
	st := keymintv1alpha1.ApiTokenStatus{TokenHash: curName, PreviousTokens: []keymintv1alpha1.PreviousToken{{TokenHash: prevName}}}
	l := leak{source: SourceGitLab, location: "repo/.env", at: t0.Add(1500 * time.Millisecond)}

	t.Run("both named hashes in one go, current first; an unnamed one dropped", func(t *testing.T) {
		s := st
		added, left := addLeakReports(&s, map[hash]leak{prev: l, cur: l, other: l})
		if added != 2 || left != nil || len(s.LeakReports) != 2 || s.LeakReports[0].TokenHash != curName || s.LeakReports[1].TokenHash != prevName {
			t.Fatalf("added %d, left %v: %+v", added, left, s.LeakReports)
		}
		got := s.LeakReports[0]
		if got.Source != SourceGitLab || got.Location != "repo/.env" || !got.ReportedAt.Time.Equal(t0.Add(time.Second)) {
			t.Errorf("report %+v", got)
		}
	})
	t.Run("listed already: nothing", func(t *testing.T) {
		s := st
		s.LeakReports = []keymintv1alpha1.LeakReport{leakReport(curName)}
		if added, _ := addLeakReports(&s, map[hash]leak{cur: l}); added != 0 || len(s.LeakReports) != 1 {
			t.Errorf("added %d: %+v", added, s.LeakReports)
		}
	})
	t.Run("full: reports of hashes no longer named go first, then what does not fit waits", func(t *testing.T) {
		s := st
		for i := 10; i < 10+MaxLeakReports-1; i++ {
			_, name := hashOf(i) // named by nothing: the controller rotated them out
			s.LeakReports = append(s.LeakReports, leakReport(name))
		}
		s.LeakReports = append(s.LeakReports, leakReport(prevName))
		added, left := addLeakReports(&s, map[hash]leak{cur: l})
		if added != 1 || left != nil || len(s.LeakReports) != 2 || s.LeakReports[0].TokenHash != prevName || s.LeakReports[1].TokenHash != curName {
			t.Fatalf("added %d, left %v: %+v", added, left, s.LeakReports)
		}

		// Every hash named and listed but the last: no room for it.
		s = keymintv1alpha1.ApiTokenStatus{TokenHash: curName}
		for i := 10; i < 10+MaxLeakReports; i++ {
			_, name := hashOf(i)
			s.PreviousTokens = append(s.PreviousTokens, keymintv1alpha1.PreviousToken{TokenHash: name})
			s.LeakReports = append(s.LeakReports, leakReport(name))
		}
		added, left = addLeakReports(&s, map[hash]leak{cur: l})
		if added != 0 || len(left) != 1 || len(s.LeakReports) != MaxLeakReports {
			t.Errorf("added %d, left %v, %d listed", added, left, len(s.LeakReports))
		}
	})
}

// An ApiToken with an issued token, as the controller writes it.
func issuedApiToken(plain string) *keymintv1alpha1.ApiToken {
	return &keymintv1alpha1.ApiToken{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "t"},
		Spec:       keymintv1alpha1.ApiTokenSpec{ServiceUser: "exporter"},
		Status:     keymintv1alpha1.ApiTokenStatus{TokenHash: token.HashString(plain), IssuedAt: &metav1.Time{Time: t0}},
	}
}

func newScheme(t testing.TB) *runtime.Scheme {
	s := runtime.NewScheme()
	if err := keymintv1alpha1.AddToScheme(s); err != nil {
		t.Fatal(err)
	}
	return s
}

// A writer whose read is overtaken (another replica wrote the report
// between its read and its patch) meets a conflict, reads the ApiToken
// again, and writes nothing.
func TestLeakWriterRereadsOnAConflict(t *testing.T) {
	plain, _ := token.Mint("km")
	key := types.NamespacedName{Namespace: "team-a", Name: "t"}
	api := fake.NewClientBuilder().WithScheme(newScheme(t)).WithStatusSubresource(&keymintv1alpha1.ApiToken{}).WithObjects(issuedApiToken(plain)).Build()
	stale := &keymintv1alpha1.ApiToken{}
	if err := api.Get(context.Background(), key, stale); err != nil {
		t.Fatal(err)
	}
	// Another replica's write.
	written := stale.DeepCopy()
	written.Status.LeakReports = []keymintv1alpha1.LeakReport{leakReport(token.HashString(plain))}
	if err := api.Status().Update(context.Background(), written); err != nil {
		t.Fatal(err)
	}
	patches, reads := 0, 0
	racing := interceptor.NewClient(api, interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if reads++; reads == 1 {
				stale.DeepCopyInto(obj.(*keymintv1alpha1.ApiToken)) // read before the other replica wrote
				return nil
			}
			return c.Get(ctx, key, obj, opts...)
		},
		SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
			patches++
			return c.SubResource(sub).Patch(ctx, obj, p, opts...)
		},
	})
	r := NewLeakReporter(NewIndex())
	r.enqueue(key, token.Hash(plain), leak{source: SourceGitHub, at: t0})
	w := &LeakWriter{Reporter: r, Client: racing, APIReader: racing}
	if !w.Drain(context.Background()) {
		t.Fatal("the drain left work")
	}
	if patches != 1 || reads != 2 || w.unchanged.Load() != 1 || w.written.Load() != 0 {
		t.Errorf("%d patches (want the one that conflicted), %d reads, %d unchanged, %d written", patches, reads, w.unchanged.Load(), w.written.Load())
	}
	got := &keymintv1alpha1.ApiToken{}
	if err := api.Get(context.Background(), key, got); err != nil {
		t.Fatal(err)
	}
	if len(got.Status.LeakReports) != 1 || got.ResourceVersion != written.ResourceVersion {
		t.Errorf("status %+v at %s, want the other replica's write alone", got.Status.LeakReports, got.ResourceVersion)
	}
}

// Reports of a deleted ApiToken are dropped; those the API server cannot
// take now wait for the next try.
func TestLeakWriterDropsGoneTokensAndRetriesFailures(t *testing.T) {
	plain, _ := token.Mint("km")
	key := types.NamespacedName{Namespace: "team-a", Name: "t"}
	api := fake.NewClientBuilder().WithScheme(newScheme(t)).WithStatusSubresource(&keymintv1alpha1.ApiToken{}).Build()
	r := NewLeakReporter(NewIndex())
	w := &LeakWriter{Reporter: r, Client: api, APIReader: api}
	r.enqueue(key, token.Hash(plain), leak{at: t0})
	if !w.Drain(context.Background()) || w.gone.Load() != 1 || r.Queued() != 0 {
		t.Fatalf("gone %d, queued %d", w.gone.Load(), r.Queued())
	}

	down := interceptor.NewClient(fake.NewClientBuilder().WithScheme(newScheme(t)).Build(), interceptor.Funcs{
		Get: func(context.Context, client.WithWatch, client.ObjectKey, client.Object, ...client.GetOption) error {
			return context.DeadlineExceeded
		},
	})
	w = &LeakWriter{Reporter: r, Client: down, APIReader: down}
	r.forget(map[hash]leak{token.Hash(plain): {}})
	r.enqueue(key, token.Hash(plain), leak{at: t0})
	if w.Drain(context.Background()) || w.failed.Load() != 1 || r.Queued() != 1 {
		t.Errorf("failed %d, queued %d: want it back in the queue", w.failed.Load(), r.Queued())
	}
}
