package edge

import (
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// A viewer whose join reaches the actor after its lookup found no owner gets
// ErrNotFound at once (it must not find the actor gone and retry into a timeout),
// and the actor stops at its next housekeeping once nobody waits.
func TestJoinAfterNotFoundIsAnsweredNotFound(t *testing.T) {
	cfg := Config{}
	cfg.defaults()
	h := &Hub{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil)), streams: map[stream.Name]*Stream{}}
	s := newStream(h, "live/none")
	s.onResolved(resolved{err: registry.ErrNotFound})
	res := make(chan viewerResult, 1)
	s.onJoin(joinReq{res: res})
	select {
	case r := <-res:
		if !errors.Is(r.err, ErrNotFound) {
			t.Fatalf("late join: %v, want ErrNotFound", r.err)
		}
	default:
		t.Fatal("a join after the not-found answer was left waiting")
	}
	s.housekeep(time.Now())
	if s.state != stateClosed {
		t.Fatalf("state %v after housekeeping with nobody waiting, want closed", s.state)
	}
}

// A lookup that started while the edge followed one session and answers "no owner"
// after the edge joined a newer one is stale: it must not start the grace period of
// the live session (an on-demand lookup waits seconds for a pull, so its answer can
// come after the publisher is back). An answer about the followed session does.
func TestStaleNotFoundDoesNotEndANewSession(t *testing.T) {
	cfg := Config{Grace: time.Minute}
	cfg.defaults()
	h := &Hub{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil)), streams: map[stream.Name]*Stream{}}
	s := newStream(h, "live/cam")
	s.state = stateLive
	old, cur := bus.Session{Origin: "origin-2", ID: 1}, bus.Session{Origin: "origin-2", ID: 2}
	s.joiner.session = cur
	s.onResolved(resolved{err: registry.ErrNotFound, asked: old})
	if !s.graceAt.IsZero() {
		t.Fatalf("a not-found asked about session %v ended the live session %v (grace until %v)", old, cur, s.graceAt)
	}
	s.onResolved(resolved{err: registry.ErrNotFound, asked: cur})
	if s.graceAt.IsZero() {
		t.Fatal("a not-found about the followed session did not start the grace period")
	}
}
