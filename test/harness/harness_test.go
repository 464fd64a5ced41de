package harness

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestPollReturnsOnceTheCheckHolds(t *testing.T) {
	calls := 0
	err := Poll(context.Background(), func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("Poll: %v after %d calls, want nil after 3", err, calls)
	}
}

func TestPollReportsTheLastError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	n := 0
	err := Poll(ctx, func() error { n++; return errors.New("attempt " + strings.Repeat("x", n)) })
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "attempt "+strings.Repeat("x", n)) {
		t.Fatalf("Poll at its deadline: %v (after %d tries)", err, n)
	}
}

func TestStartStopAndKillByPID(t *testing.T) {
	p, err := Start("sleeper", exec.Command("sh", "-c", "echo hello; exec sleep 30"), 0)
	if err != nil {
		t.Fatal(err)
	}
	CheckFor(t, 5*time.Second, "the child's output", func() error {
		if !strings.Contains(p.Log.String(), "hello") {
			return errors.New("no output yet")
		}
		return p.Running()
	})
	start := time.Now()
	p.Stop(5 * time.Second) // sleep dies on SIGTERM at once
	if p.Running() == nil || time.Since(start) > 4*time.Second {
		t.Fatalf("after Stop: %s, took %v", p.State(), time.Since(start))
	}

	q, err := Start("stubborn", exec.Command("sh", "-c", "trap '' TERM; echo ready; sleep 30 & wait"), 0)
	if err != nil {
		t.Fatal(err)
	}
	Until(t, 5*time.Second, "the trap to be set", func() bool { return strings.Contains(q.Log.String(), "ready") })
	start = time.Now()
	q.Stop(200 * time.Millisecond) // ignores SIGTERM: killed after the grace
	if q.Running() == nil || !strings.Contains(q.State(), "killed") {
		t.Fatalf("after Stop of a process ignoring SIGTERM: %s", q.State())
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("SIGKILL came after %v, before the grace", d)
	}
}

func TestTailKeepsTheEnd(t *testing.T) {
	tl := &Tail{Max: 8}
	_, _ = tl.Write([]byte("0123456789abcdef"))
	if got := tl.String(); !strings.HasSuffix(got, "89abcdef") || !strings.Contains(got, "8 earlier bytes dropped") {
		t.Fatalf("tail: %q", got)
	}
}
