package testenv

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// pollEvery is the pause between two tries of Poll.
const pollEvery = 50 * time.Millisecond

// errNotWithin is the cause of a Poll context that ran out of its within.
var errNotWithin = errors.New("Poll's deadline passed")

// Poll calls try until it returns nil, and fails, saying what it waited for
// and try's last error, once within has passed or ctx has ended, whichever
// comes first. try is given a context that ends then too, so a try that
// blocks (a dial, a request) is cut off there rather than overrunning
// within. An error made by Permanent ends the wait at once (the process
// waited for has exited).
//
// Poll bounds a wait on what happens by itself: a process starting, a
// controller catching up. A wait on a person has no such bound: make run
// waits for the user to fix an unusable record key Secret (hack/run's
// awaitUsableRecordKey), or to press Ctrl-C, until its ctx ends.
func Poll(ctx context.Context, within time.Duration, what string, try func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeoutCause(ctx, within, errNotWithin)
	defer cancel()
	for {
		err := try(ctx)
		if err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return fmt.Errorf("waiting for %s: %w", what, p.err)
		}
		select {
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), errNotWithin) {
				return fmt.Errorf("waiting for %s: not within %v (last: %w)", what, within, err)
			}
			return fmt.Errorf("waiting for %s: %w (last: %w)", what, ctx.Err(), err)
		case <-time.After(pollEvery):
		}
	}
}

// Permanent marks an error of a Poll try as one no later try can mend.
func Permanent(err error) error { return permanent{err} }

type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }
