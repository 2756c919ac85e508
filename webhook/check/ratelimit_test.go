package check

import (
	"context"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/keymint/keymint/internal/tokenstate"
)

func own(limit int32) tokenstate.Budgets {
	var bs tokenstate.Budgets
	bs.Add("", limit)
	return bs
}

func TestGCRALetsTheRateThroughAtOnceThenOneEachInterval(t *testing.T) {
	l := NewLimiter()
	tok := types.NamespacedName{Namespace: "ns", Name: "t"}
	ctx := context.Background()
	for i := range 60 {
		if d := l.Allow(ctx, tok, own(60), t0); !d.Allowed || d.Remaining != int32(59-i) {
			t.Fatalf("check %d: allowed %v remaining %d, want true %d", i+1, d.Allowed, d.Remaining, 59-i)
		}
	}
	d := l.Allow(ctx, tok, own(60), t0)
	if d.Allowed || d.RetryAfter != time.Second || !d.Reset.Equal(t0.Add(time.Minute)) {
		t.Fatalf("61st check: allowed %v, retry after %v, reset %v; want refused, 1s, %v", d.Allowed, d.RetryAfter, d.Reset, t0.Add(time.Minute))
	}
	// No window boundary: 59 s later only 59 more have come back.
	later := t0.Add(59 * time.Second)
	passed := 0
	for range 100 {
		if l.Allow(ctx, tok, own(60), later).Allowed {
			passed++
		}
	}
	if passed != 59 {
		t.Errorf("%d checks passed 59 s after the budget was spent, want 59", passed)
	}
}

func TestABucketRefusedCountsNoBudgetAtAll(t *testing.T) {
	l := NewLimiter()
	tok := types.NamespacedName{Namespace: "ns", Name: "t"}
	ctx := context.Background()
	var writes tokenstate.Budgets
	writes.Add("links:write", 1)
	writes.Add("links:read", 100)
	if d := l.Allow(ctx, tok, writes, t0); !d.Allowed || d.Scope != "links:write" || d.Remaining != 0 {
		t.Fatalf("first: %+v, want allowed, binding scope links:write with 0 left", d)
	}
	d := l.Allow(ctx, tok, writes, t0)
	if d.Allowed || d.Scope != "links:write" || d.RetryAfter != time.Minute {
		t.Fatalf("second: %+v, want refused by links:write for 1m", d)
	}
	var reads tokenstate.Budgets
	reads.Add("links:read", 100)
	if d := l.Allow(ctx, tok, reads, t0); !d.Allowed || d.Remaining != 98 {
		t.Errorf("links:read after a refused check: %+v, want 98 left (one use, the refused check took none)", d)
	}
	if d := l.Allow(ctx, tok, own(5), t0); !d.Allowed || d.Remaining != 4 {
		t.Errorf("the token's own budget is apart from its scopes': %+v", d)
	}
}

func TestLimiterHoldsBudgetsOfLiveTokensOnly(t *testing.T) {
	l := NewLimiter()
	ctx := context.Background()
	a, b := types.NamespacedName{Namespace: "ns", Name: "a"}, types.NamespacedName{Namespace: "ns", Name: "b"}
	l.Allow(ctx, a, own(10), t0)
	l.Allow(ctx, b, own(10), t0)
	l.Forget(a)
	if _, ok := l.tokens[a]; ok || len(l.tokens) != 1 {
		t.Errorf("budgets after forgetting a: %v", l.tokens)
	}
	if d := l.Allow(ctx, a, own(10), t0); d.Remaining != 9 {
		t.Errorf("remaining %d after a fresh start, want 9", d.Remaining)
	}
}
