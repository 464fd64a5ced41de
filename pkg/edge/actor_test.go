package edge_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/origin"
	"github.com/flvcdn/flvcdn/pkg/registry"
)

// countingStore counts lookups and can stall the release of one stream.
type countingStore struct {
	registry.Store
	lookups    atomic.Int64
	stallName  string
	stalled    chan struct{} // closed when a release of stallName started
	stallUntil chan struct{} // the stalled release returns when this closes
	stallOnce  sync.Once
}

func (c *countingStore) LookupStream(ctx context.Context, s string) (registry.Owner, error) {
	c.lookups.Add(1)
	return c.Store.LookupStream(ctx, s)
}

// ReleaseStream of stallName hangs, ignoring ctx: the worst a registry call can do.
func (c *countingStore) ReleaseStream(ctx context.Context, s string, o registry.Owner) error {
	if s == c.stallName {
		c.stallOnce.Do(func() { close(c.stalled) })
		<-c.stallUntil
	}
	return c.Store.ReleaseStream(ctx, s, o)
}

func TestConcurrentFirstViewersShareOneLookupAndOneSnapshot(t *testing.T) {
	var cs *countingStore
	r := newRigWith(t, edge.Config{MergeWindow: 5 * time.Millisecond}, func(s registry.Store) registry.Store {
		cs = &countingStore{Store: s}
		return cs
	})
	p := r.publish("live/cold", 10)
	p.frames(t, 10, 100)
	var snapshots atomic.Int64
	sub, err := r.nc.Subscribe(bus.SnapshotSubject("live/cold"), func(*nats.Msg) { snapshots.Add(1) })
	must(t, err)
	defer sub.Unsubscribe()
	must(t, r.nc.Flush())

	const n = 50
	var wg sync.WaitGroup
	var ok atomic.Int64
	start := make(chan struct{})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			v, err := r.hub.Watch(r.ctx, name("live/cold"))
			if err != nil {
				t.Errorf("watch: %v", err)
				return
			}
			ok.Add(1)
			v.Close()
		}()
	}
	close(start)
	wg.Wait()
	must(t, r.nc.Flush())
	if ok.Load() != n {
		t.Fatalf("%d of %d viewers joined", ok.Load(), n)
	}
	if got := cs.lookups.Load(); got != 1 {
		t.Errorf("%d registry lookups for %d concurrent first viewers, want 1", got, n)
	}
	if got := snapshots.Load(); got != 1 {
		t.Errorf("%d snapshot requests for %d concurrent first viewers, want 1", got, n)
	}
}

func TestViewerLimitsAreExactUnderConcurrentJoins(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond, MaxViewers: 10, MaxViewersPerStream: 6})
	for _, n := range []string{"live/x", "live/y"} {
		p := r.publish(n, 10)
		p.frames(t, 10, 100)
	}
	join := func(stream string, tries int) (admitted int) {
		var wg sync.WaitGroup
		var ok, refused atomic.Int64
		start := make(chan struct{})
		for range tries {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				v, err := r.hub.Watch(r.ctx, name(stream))
				switch {
				case err == nil:
					ok.Add(1)
					t.Cleanup(v.Close) // keep the slot until the test ends
				case errors.Is(err, edge.ErrTooManyViewers):
					refused.Add(1)
				default:
					t.Errorf("watch %s: %v", stream, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if int(ok.Load()+refused.Load()) != tries {
			t.Fatalf("%s: %d admitted + %d refused of %d", stream, ok.Load(), refused.Load(), tries)
		}
		return int(ok.Load())
	}
	if got := join("live/x", 30); got != 6 {
		t.Errorf("30 concurrent viewers of one stream, limit 6: %d admitted", got)
	}
	if got := join("live/y", 30); got != 4 {
		t.Errorf("30 more on another stream with 6 of 10 edge slots used: %d admitted, want 4", got)
	}
	if got := r.hub.Viewers(); got != 10 {
		t.Errorf("edge counts %d viewers, want 10", got)
	}
}

// An origin that dies without saying so (no end of stream) is purged by the
// janitor, which publishes an origin-down event. Edges act on it at once: the
// stream's viewers end after the grace period, instead of after the stall timer.
func TestOriginDownEventEndsViewersAtOnce(t *testing.T) {
	const stall, grace = 4 * time.Second, 200 * time.Millisecond
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond, Stall: stall, Grace: grace})
	url := r.nc.ConnectedUrl()

	// kill starts a second origin, lets a viewer watch its stream, then cuts its
	// NATS connection (as a crash does), purges it as the janitor does, and returns
	// how long the viewer's response took to end.
	kill := func(id, stream string, sendEvent bool) time.Duration {
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		nc, err := bus.Connect(bus.ConnOptions{URL: url, Name: id}, log)
		must(t, err)
		defer nc.Close()
		pub, err := bus.NewPublisher(nc, id, log)
		must(t, err)
		octx, ocancel := context.WithCancel(r.ctx)
		defer ocancel()
		o, err := origin.New(octx, origin.Config{ID: id, TTL: time.Minute}, pub, r.store, log)
		must(t, err)
		s, err := o.Publish(r.ctx, name(stream), "")
		must(t, err)
		p := &publisher{s: s, gop: 10}
		must(t, s.WriteTag(0x12, 0, metadata()))
		must(t, s.WriteTag(9, 0, []byte{0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f}))
		must(t, s.WriteTag(8, 0, []byte{0xAF, 0, 0x12, 0x10}))
		p.frames(t, 10, 100)
		w := watch(t, r, stream)
		read(t, w, 3, 5*time.Second)

		nc.Close() // the origin is gone: no end of stream reaches anyone
		start := time.Now()
		if _, err := r.store.PurgeOrigin(r.ctx, id); err != nil {
			t.Fatal(err)
		}
		if sendEvent {
			must(t, r.store.PublishEvent(r.ctx, registry.Event{Kind: registry.EventOriginDown, Origin: id}))
		}
		ctx, cancel := context.WithTimeout(r.ctx, 3*stall)
		defer cancel()
		for {
			_, err := w.v.Next(ctx, nil)
			if errors.Is(err, io.EOF) {
				return time.Since(start)
			}
			if err != nil {
				t.Fatalf("viewer of %s: %v, want io.EOF", stream, err)
			}
		}
	}
	withEvent := kill("origin-b", "live/down1", true)
	without := kill("origin-c", "live/down2", false)
	t.Logf("viewer ended %v after the purge with the origin-down event, %v without it (stall %v, grace %v)",
		withEvent.Round(time.Millisecond), without.Round(time.Millisecond), stall, grace)
	if withEvent > stall/2 {
		t.Errorf("with the event the viewer ended after %v; it should not wait for the %v stall timer", withEvent, stall)
	}
	// The stall timer runs from the last tag, which came a little before start.
	if without < stall*3/4 {
		t.Errorf("without the event the viewer ended after %v, well before the %v stall timer: the control is broken", without, stall)
	}
}

// A registry call that hangs while one stream closes must not let the origin's
// other claims lapse: the heartbeat refreshes them in one deadline-bounded call and
// takes no lock that Close holds.
func TestSlowCloseCannotHoldOtherClaimsHostage(t *testing.T) {
	cs := &countingStore{stallName: "live/stuck", stalled: make(chan struct{}), stallUntil: make(chan struct{})}
	r := newRigWith(t, edge.Config{MergeWindow: 5 * time.Millisecond}, func(s registry.Store) registry.Store {
		cs.Store = s
		return cs
	})
	defer close(cs.stallUntil)
	stuck := r.publish("live/stuck", 10)
	stuck.frames(t, 10, 100)
	ok := r.publish("live/ok", 10)
	ok.frames(t, 10, 100)
	w := watch(t, r, "live/ok")
	read(t, w, 3, 5*time.Second)

	closed := make(chan struct{})
	go func() { defer close(closed); stuck.s.Close(r.ctx) }()
	select {
	case <-cs.stalled:
	case <-time.After(5 * time.Second):
		t.Fatal("the stuck stream's release never started")
	}
	// Three claim TTLs (the rig's origin has TTL 1s) with the release hanging.
	until := time.Now().Add(3 * time.Second)
	for time.Now().Before(until) {
		if _, err := r.store.LookupStream(r.ctx, "live/ok"); err != nil {
			t.Fatalf("live/ok lost its claim while another stream's release hung: %v", err)
		}
		ok.frames(t, 2, 100)
		read(t, w, 1, 5*time.Second)
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case <-closed:
		t.Fatal("the stalled Close returned: the stall did not happen")
	default:
	}
	v, err := r.hub.Watch(r.ctx, name("live/ok")) // a new viewer still finds the stream
	must(t, err)
	v.Close()
}
