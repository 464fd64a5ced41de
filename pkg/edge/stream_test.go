package edge

import (
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

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
