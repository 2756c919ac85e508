package testenv

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// pollEvery is the pause between two tries of Poll.
const pollEvery = 50 * time.Millisecond

// Poll calls try until it returns nil, and fails, saying what it waited for
// and try's last error, once within has passed or ctx has ended: no wait in
// the tests, the bench or make run is without a deadline. An error made by
// Permanent ends the wait at once (the process waited for has exited).
func Poll(ctx context.Context, within time.Duration, what string, try func() error) error {
	deadline := time.After(within)
	for {
		err := try()
		if err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return fmt.Errorf("waiting for %s: %w", what, p.err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %w)", what, ctx.Err(), err)
		case <-deadline:
			return fmt.Errorf("waiting for %s: not within %v (last: %w)", what, within, err)
		case <-time.After(pollEvery):
		}
	}
}

// Permanent marks an error of a Poll try as one no later try can mend.
func Permanent(err error) error { return permanent{err} }

type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }
