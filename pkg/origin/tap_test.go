package origin

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/registry"
)

// recordingTap keeps what a session's tap saw.
type recordingTap struct {
	mu    sync.Mutex
	tags  int
	ended bool
}

func (r *recordingTap) Tag(flv.Tag) { r.mu.Lock(); r.tags++; r.mu.Unlock() }
func (r *recordingTap) End()        { r.mu.Lock(); r.ended = true; r.mu.Unlock() }

// A pulled session is claimed once (another origin's Pull gets ErrTaken at once, not
// after ClaimWait); a session that ends releases the claim, and the next Pull (the
// upstream came back) starts a new session; each session's taps see its tags and
// its end.
func TestPullClaimsOnceAndANewPullStartsANewSession(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var mu sync.Mutex
	var taps []*recordingTap
	cfg := Config{ID: "a", TTL: time.Second, Taps: func(SessionInfo) []Tap {
		mu.Lock()
		defer mu.Unlock()
		taps = append(taps, &recordingTap{})
		return []Tap{taps[len(taps)-1]}
	}}
	a := e.origin(t, cfg)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = a.Run(runCtx) }() // a's liveness record: a live owner keeps its streams
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := e.store.GetOrigin(ctx, "a"); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("a's liveness record: %v", err)
		}
	}
	b := e.origin(t, Config{ID: "b", TTL: time.Second, ClaimWait: 10 * time.Second})
	s1, err := a.Pull(ctx, name("live/p"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.WriteTag(flv.TypeVideo, 0, key(1)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := b.Pull(ctx, name("live/p")); !errors.Is(err, registry.ErrTaken) || time.Since(start) > 2*time.Second {
		t.Fatalf("a rival's Pull: %v after %v, want ErrTaken at once", err, time.Since(start))
	}
	s1.Close(ctx) // the upstream connection ended
	if _, err := e.store.LookupStream(ctx, "live/p"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("after the session closed: %v, want no owner", err)
	}
	s2, err := a.Pull(ctx, name("live/p")) // the upstream is back
	if err != nil {
		t.Fatal(err)
	}
	owner, err := e.store.LookupStream(ctx, "live/p")
	if err != nil || owner != s2.owner || owner == s1.owner {
		t.Fatalf("registry owner %+v (%v); new session %+v, old %+v", owner, err, s2.owner, s1.owner)
	}
	if err := s2.WriteTag(flv.TypeVideo, 0, key(3)); err != nil {
		t.Fatal(err)
	}
	s2.Close(ctx)
	mu.Lock()
	defer mu.Unlock()
	if len(taps) != 2 {
		t.Fatalf("%d sessions tapped, want 2", len(taps))
	}
	for i, tp := range taps {
		tp.mu.Lock()
		if tp.tags != 1 || !tp.ended {
			t.Errorf("session %d's tap: %d tags, ended %v; want 1 and ended", i+1, tp.tags, tp.ended)
		}
		tp.mu.Unlock()
	}
}
