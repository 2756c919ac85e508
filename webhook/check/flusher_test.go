package check

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	keymintv1alpha1 "github.com/keymint/keymint/api/v1alpha1"
	"github.com/keymint/keymint/internal/token"
	"github.com/keymint/keymint/internal/tokenstate"
)

// countingAPI is a fake API server holding tok that counts the ApiToken
// reads and the status writes made to it.
func countingAPI(t *testing.T, tok *keymintv1alpha1.ApiToken) (api client.WithWatch, gets, patches *int) {
	gets, patches = new(int), new(int)
	api = fake.NewClientBuilder().WithScheme(newScheme(t)).WithStatusSubresource(&keymintv1alpha1.ApiToken{}).WithObjects(tok.DeepCopy()).
		WithInterceptorFuncs(interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, k client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				if _, ok := obj.(*keymintv1alpha1.ApiToken); ok {
					*gets++
				}
				return c.Get(ctx, k, obj, opts...)
			},
			SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
				*patches++
				return c.SubResource(sub).Patch(ctx, obj, p, opts...)
			},
		}).Build()
	return api, gets, patches
}

// A flusher with the index reads a token from the API server only when the
// index shows a use due: a token in constant use costs the API server
// nothing between its writes, on every replica.
func TestFlusherReadsOnlyTokensWhoseUseIsDue(t *testing.T) {
	plain, _ := token.Mint("km")
	key := types.NamespacedName{Namespace: "team-a", Name: "t"}
	recorded := metav1.NewTime(t0)
	tok := issuedApiToken(plain)
	tok.Status.LastUsedAt, tok.Status.TokenLastUsedAt = &recorded, &recorded
	api, gets, patches := countingAPI(t, tok)
	ix := NewIndex()
	ix.UpsertToken(tok.DeepCopy())
	clk := clocktesting.NewFakeClock(t0)
	f := &UsageFlusher{Usage: NewUsage(), Client: api, APIReader: api, Index: ix, Clock: clk, Interval: 10 * time.Second, MinGap: time.Minute}
	useAndFlush := func(after time.Duration) {
		clk.SetTime(t0.Add(after))
		f.Usage.Record(key, token.Hash(plain), clk.Now())
		f.Flush(context.Background())
	}

	for _, after := range []time.Duration{time.Minute, time.Hour, tokenstate.DefaultUseRecordingGap - time.Second} {
		useAndFlush(after)
	}
	if *gets != 0 || *patches != 0 {
		t.Errorf("uses within the gap of the recorded one: %d reads, %d writes, want none", *gets, *patches)
	}
	useAndFlush(tokenstate.DefaultUseRecordingGap)
	if *gets != 1 || *patches != 1 {
		t.Errorf("a use the gap after the recorded one: %d reads, %d writes, want one of each", *gets, *patches)
	}
	got := &keymintv1alpha1.ApiToken{}
	if err := api.Get(context.Background(), key, got); err != nil {
		t.Fatal(err)
	}
	if want := t0.Add(tokenstate.DefaultUseRecordingGap); !got.Status.TokenLastUsedAt.Time.Equal(want) {
		t.Errorf("tokenLastUsedAt %v, want %v", got.Status.TokenLastUsedAt, want)
	}
	// The gap the use was written under goes with lastUsedAt: idleness
	// waits for the uses it holds back.
	if gap := tokenstate.RecordedGap(&got.Status); gap != tokenstate.DefaultUseRecordingGap {
		t.Errorf("recorded gap %v (lastUsedRecording %+v), want %v", gap, got.Status.LastUsedRecording, tokenstate.DefaultUseRecordingGap)
	}

	// Without the index (or for a token it does not hold), every flush
	// with uses reads: the index only saves reads, never decides a write.
	*gets = 0
	ix.DeleteToken(key)
	useAndFlush(tokenstate.DefaultUseRecordingGap + time.Hour)
	if *gets != 1 {
		t.Errorf("a token the index does not hold: %d reads, want 1", *gets)
	}
}

// A use held back under a longer gap than the status records (a maxIdle
// raised since the last write) records that gap, once, without moving
// lastUsedAt: idle revocation then waits it, even if maxIdle is cut back
// before the next use is written.
func TestFlusherRecordsALongerGapItHoldsUsesBackUnder(t *testing.T) {
	plain, _ := token.Mint("km")
	key := types.NamespacedName{Namespace: "team-a", Name: "t"}
	recorded := metav1.NewTime(t0)
	tok := issuedApiToken(plain)
	tok.Status.LastUsedAt, tok.Status.TokenLastUsedAt = &recorded, &recorded
	tok.Status.LastUsedRecording = &keymintv1alpha1.UseRecording{LastUsedAt: recorded, Gap: metav1.Duration{Duration: 15 * time.Minute}}
	api, _, patches := countingAPI(t, tok)
	ix := NewIndex()
	clk := clocktesting.NewFakeClock(t0)
	// The token's gap is 3h now (its maxIdle raised to 12h, say).
	f := &UsageFlusher{Usage: NewUsage(), Client: api, APIReader: api, Index: ix, Clock: clk, Interval: 10 * time.Second, MinGap: time.Minute,
		Gap: func(*tokenstate.Token, *tokenstate.User) time.Duration { return 3 * time.Hour }}
	useAndFlush := func(after time.Duration) *keymintv1alpha1.ApiToken {
		t.Helper()
		got := &keymintv1alpha1.ApiToken{}
		if err := api.Get(context.Background(), key, got); err != nil {
			t.Fatal(err)
		}
		ix.UpsertToken(got.DeepCopy()) // the index shows what the API server has
		clk.SetTime(t0.Add(after))
		f.Usage.Record(key, token.Hash(plain), clk.Now())
		f.Flush(context.Background())
		if err := api.Get(context.Background(), key, got); err != nil {
			t.Fatal(err)
		}
		return got
	}

	got := useAndFlush(20 * time.Minute)
	if *patches != 1 || !got.Status.LastUsedAt.Equal(&recorded) {
		t.Fatalf("a use held back under 3h, 15m recorded: %d writes, lastUsedAt %v; want one write, lastUsedAt kept", *patches, got.Status.LastUsedAt)
	}
	if gap := tokenstate.RecordedGap(&got.Status); gap != 3*time.Hour {
		t.Errorf("recorded gap %v, want 3h", gap)
	}
	got = useAndFlush(40 * time.Minute)
	if *patches != 1 {
		t.Errorf("another use held back under the gap now recorded: %d writes, want still one", *patches)
	}
	if !got.Status.LastUsedAt.Equal(&recorded) {
		t.Errorf("lastUsedAt moved to %v within the gap", got.Status.LastUsedAt)
	}
}
