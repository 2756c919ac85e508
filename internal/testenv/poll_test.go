package testenv

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// A try that blocks is cut off at the deadline: its context ends there.
func TestPollEndsABlockingTry(t *testing.T) {
	start := time.Now()
	err := Poll(t.Context(), 200*time.Millisecond, "nothing", func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	})
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Poll took %v past a within of 200ms", took)
	}
	if err == nil || !strings.Contains(err.Error(), "waiting for nothing: not within 200ms") {
		t.Errorf("error %v, want one saying what was waited for and for how long", err)
	}
}

func TestPollEndsWithCtxOrPermanent(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := Poll(ctx, time.Minute, "x", func(context.Context) error { return errors.New("no") })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("with ctx canceled: %v, want context.Canceled", err)
	}
	tries := 0
	gone := errors.New("gone")
	err = Poll(t.Context(), time.Minute, "x", func(context.Context) error { tries++; return Permanent(gone) })
	if !errors.Is(err, gone) || tries != 1 {
		t.Errorf("after %d tries: %v, want gone after one", tries, err)
	}
	tries = 0
	err = Poll(t.Context(), time.Minute, "x", func(context.Context) error {
		if tries++; tries < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || tries != 3 {
		t.Errorf("after %d tries: %v, want success on the third", tries, err)
	}
}
