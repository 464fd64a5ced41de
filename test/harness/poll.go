package harness

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Interval is how often Poll and CheckFor try their condition.
const Interval = 20 * time.Millisecond

// Poll calls check every Interval until it returns nil or ctx ends; then it
// returns ctx's error with check's last error.
func Poll(ctx context.Context, check func() error) error {
	tick := time.NewTicker(Interval)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// CheckFor waits up to d for check to return nil, and fails the test with check's
// last error if it never does. Call it from the test's own goroutine.
func CheckFor(t testing.TB, d time.Duration, what string, check func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := Poll(ctx, check); err != nil {
		t.Fatalf("waiting %v for %s: %v", d, what, err)
	}
}

// Until is CheckFor for a condition with no error to report.
func Until(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	CheckFor(t, d, what, func() error {
		if cond() {
			return nil
		}
		return fmt.Errorf("not yet")
	})
}
