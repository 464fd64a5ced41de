package registry

import (
	"context"
	"errors"
	"fmt"
	"github.com/flvcdn/flvcdn/test/harness"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Timing of the contract tests. shortTTL is what the expiry tests wait out;
// longTTL never runs out during a test.
const (
	shortTTL  = 300 * time.Millisecond
	longTTL   = time.Minute
	waitLimit = 10 * time.Second
)

// clocks holds, per store, a function that moves its clock forward (miniredis
// FastForward). Stores without one expire in real time and are polled.
var clocks sync.Map // Store -> func(time.Duration)

var nameSeq atomic.Int64

// uniqueName gives each store in a test binary its own namespace or bucket.
func uniqueName(prefix string) string { return fmt.Sprintf("%s%d", prefix, nameSeq.Add(1)) }

var (
	alice = Owner{Origin: "origin-a", Session: "s-a1"}
	bob   = Owner{Origin: "origin-b", Session: "s-b1"}
)

// runContract checks the behaviour every Store must have.
func runContract(t *testing.T, newStore func(t *testing.T) Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s Store)
	}{
		{"ClaimAndLookup", testClaimAndLookup},
		{"SecondClaimantRefused", testSecondClaimantRefused},
		{"Refresh", testRefresh},
		{"RefreshExtendsTTL", testRefreshExtendsTTL},
		{"Heartbeat", testHeartbeat},
		{"Release", testRelease},
		{"ExpiryFreesStream", testExpiryFreesStream},
		{"TakeoverFromMissingOrigin", testTakeoverFromMissingOrigin},
		{"TakeoverAfterOriginExpires", testTakeoverAfterOriginExpires},
		{"Origins", testOrigins},
		{"PurgeOrigin", testPurgeOrigin},
		{"PurgeAfterTakeover", testPurgeAfterTakeover},
		{"EventsRoundTrip", testEventsRoundTrip},
		{"EventsNeverBlock", testEventsNeverBlock},
		{"ConcurrentClaims", testConcurrentClaims},
		{"BadInput", testBadInput},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			if err := s.Ping(testCtx(t)); err != nil {
				t.Fatalf("Ping: %v", err)
			}
			tc.run(t, s)
		})
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// alive writes a long-lived liveness record for each origin.
func alive(t *testing.T, s Store, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := s.PutOrigin(testCtx(t), OriginInfo{ID: id}, longTTL); err != nil {
			t.Fatalf("PutOrigin(%s): %v", id, err)
		}
	}
}

func mustClaim(t *testing.T, s Store, stream string, o Owner, ttl time.Duration) {
	t.Helper()
	if err := s.ClaimStream(testCtx(t), stream, o, ttl); err != nil {
		t.Fatalf("ClaimStream(%s, %v): %v", stream, o, err)
	}
}

func wantOwner(t *testing.T, s Store, stream string, want Owner) {
	t.Helper()
	got, err := s.LookupStream(testCtx(t), stream)
	if err != nil || got != want {
		t.Fatalf("LookupStream(%s) = %v, %v; want %v", stream, got, err, want)
	}
}

func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: err = %v, want %v", what, err, want)
	}
}

// waitUntil polls cond until it holds or waitLimit passes. Before polling it
// moves the store's clock by d if the store has a movable clock.
func waitUntil(t *testing.T, s Store, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if ff, ok := clocks.Load(s); ok {
		ff.(func(time.Duration))(d)
	}
	harness.Until(t, d+waitLimit, what, cond)
}

func waitStreamGone(t *testing.T, s Store, stream string) {
	t.Helper()
	waitUntil(t, s, 2*shortTTL, stream+" expires", func() bool {
		_, err := s.LookupStream(testCtx(t), stream)
		return errors.Is(err, ErrNotFound)
	})
}

func testClaimAndLookup(t *testing.T, s Store) {
	ctx := testCtx(t)
	_, err := s.LookupStream(ctx, "live/demo")
	wantErr(t, "LookupStream before claim", err, ErrNotFound)
	mustClaim(t, s, "live/demo", alice, longTTL)
	wantOwner(t, s, "live/demo", alice)
	_, err = s.LookupStream(ctx, "live/other")
	wantErr(t, "LookupStream of another stream", err, ErrNotFound)
}

func testSecondClaimantRefused(t *testing.T, s Store) {
	alive(t, s, alice.Origin, bob.Origin)
	mustClaim(t, s, "live/demo", alice, longTTL)
	err := s.ClaimStream(testCtx(t), "live/demo", bob, longTTL)
	wantErr(t, "second claimant", err, ErrTaken)
	// Same origin, new session: still another publisher.
	err = s.ClaimStream(testCtx(t), "live/demo", Owner{Origin: alice.Origin, Session: "s-a2"}, longTTL)
	wantErr(t, "same origin, other session", err, ErrTaken)
	wantOwner(t, s, "live/demo", alice)
	// The holder claiming again is a refresh.
	mustClaim(t, s, "live/demo", alice, longTTL)
	wantOwner(t, s, "live/demo", alice)
}

func testRefresh(t *testing.T, s Store) {
	ctx := testCtx(t)
	alive(t, s, alice.Origin)
	err := s.RefreshStream(ctx, "live/demo", alice, longTTL)
	wantErr(t, "refresh of unclaimed stream", err, ErrNotOwner)
	mustClaim(t, s, "live/demo", alice, longTTL)
	if err := s.RefreshStream(ctx, "live/demo", alice, longTTL); err != nil {
		t.Fatalf("refresh by owner: %v", err)
	}
	err = s.RefreshStream(ctx, "live/demo", bob, longTTL)
	wantErr(t, "refresh by other", err, ErrNotOwner)
	wantOwner(t, s, "live/demo", alice)
}

func testRefreshExtendsTTL(t *testing.T, s Store) {
	alive(t, s, alice.Origin)
	mustClaim(t, s, "live/demo", alice, shortTTL)
	if err := s.RefreshStream(testCtx(t), "live/demo", alice, longTTL); err != nil {
		t.Fatalf("refresh by owner: %v", err)
	}
	// Let the original TTL pass, twice over; the refreshed claim must stand.
	passed := time.Now().Add(2 * shortTTL)
	waitUntil(t, s, 2*shortTTL, "the first TTL has passed", func() bool { return time.Now().After(passed) })
	wantOwner(t, s, "live/demo", alice)
}

func testHeartbeat(t *testing.T, s Store) {
	ctx := testCtx(t)
	mustClaim(t, s, "live/one", alice, shortTTL)
	mustClaim(t, s, "live/two", alice, shortTTL)
	mustClaim(t, s, "live/bobs", bob, longTTL)
	stale := Owner{Origin: alice.Origin, Session: "s-a-old"}
	claims := []Claim{{"live/one", alice}, {"live/two", alice}, {"live/bobs", stale}, {"live/gone", alice}}
	// Beat more often than the TTL for 3 TTLs: alice's two claims outlive it.
	passed := time.Now().Add(3 * shortTTL)
	for time.Now().Before(passed) {
		res, err := s.Heartbeat(ctx, OriginInfo{ID: alice.Origin, Draining: true}, claims, shortTTL)
		if err != nil {
			t.Fatalf("Heartbeat: %v", err)
		}
		if len(res) != len(claims) || res[0] != nil || res[1] != nil ||
			!errors.Is(res[2], ErrNotOwner) || !errors.Is(res[3], ErrNotOwner) {
			t.Fatalf("Heartbeat results %v, want [nil nil ErrNotOwner ErrNotOwner]", res)
		}
		if ff, ok := clocks.Load(s); ok {
			ff.(func(time.Duration))(shortTTL / 3)
		}
		time.Sleep(shortTTL / 3)
	}
	wantOwner(t, s, "live/one", alice)
	wantOwner(t, s, "live/two", alice)
	wantOwner(t, s, "live/bobs", bob)
	info, err := s.GetOrigin(ctx, alice.Origin)
	if err != nil || !info.Draining {
		t.Fatalf("liveness record after heartbeats: %+v %v", info, err)
	}
	if _, err := s.Heartbeat(ctx, OriginInfo{ID: alice.Origin}, []Claim{{"live/bobs", bob}}, shortTTL); err == nil {
		t.Fatal("a heartbeat carrying another origin's claim was accepted")
	}
	// Without heartbeats the claims lapse as usual.
	waitStreamGone(t, s, "live/one")
}

func testRelease(t *testing.T, s Store) {
	ctx := testCtx(t)
	alive(t, s, alice.Origin, bob.Origin)
	mustClaim(t, s, "live/demo", alice, longTTL)
	err := s.ReleaseStream(ctx, "live/demo", bob)
	wantErr(t, "release by other origin", err, ErrNotOwner)
	err = s.ReleaseStream(ctx, "live/demo", Owner{Origin: alice.Origin, Session: "stale"})
	wantErr(t, "release by stale session", err, ErrNotOwner)
	wantOwner(t, s, "live/demo", alice)

	if err := s.ReleaseStream(ctx, "live/demo", alice); err != nil {
		t.Fatalf("release by owner: %v", err)
	}
	_, err = s.LookupStream(ctx, "live/demo")
	wantErr(t, "lookup after release", err, ErrNotFound)
	err = s.ReleaseStream(ctx, "live/demo", alice)
	wantErr(t, "second release", err, ErrNotOwner)
	mustClaim(t, s, "live/demo", bob, longTTL)
	wantOwner(t, s, "live/demo", bob)
}

func testExpiryFreesStream(t *testing.T, s Store) {
	ctx := testCtx(t)
	alive(t, s, alice.Origin, bob.Origin) // so that only expiry can free it
	mustClaim(t, s, "live/demo", alice, shortTTL)
	err := s.ClaimStream(ctx, "live/demo", bob, longTTL)
	wantErr(t, "claim before expiry", err, ErrTaken)
	waitStreamGone(t, s, "live/demo")
	err = s.RefreshStream(ctx, "live/demo", alice, longTTL)
	wantErr(t, "refresh after expiry", err, ErrNotOwner)
	mustClaim(t, s, "live/demo", bob, longTTL)
	wantOwner(t, s, "live/demo", bob)
	err = s.ReleaseStream(ctx, "live/demo", alice)
	wantErr(t, "release by expired owner", err, ErrNotOwner)
}

func testTakeoverFromMissingOrigin(t *testing.T, s Store) {
	ctx := testCtx(t)
	alive(t, s, bob.Origin)
	// alice has no liveness record: her claim can be taken over.
	mustClaim(t, s, "live/demo", alice, longTTL)
	mustClaim(t, s, "live/demo", bob, longTTL)
	wantOwner(t, s, "live/demo", bob)
	wantErr(t, "refresh by old owner", s.RefreshStream(ctx, "live/demo", alice, longTTL), ErrNotOwner)
	wantErr(t, "release by old owner", s.ReleaseStream(ctx, "live/demo", alice), ErrNotOwner)

	// bob is alive: alice cannot take it back.
	err := s.ClaimStream(ctx, "live/demo", alice, longTTL)
	wantErr(t, "takeover from live origin", err, ErrTaken)
	wantOwner(t, s, "live/demo", bob)
}

func testTakeoverAfterOriginExpires(t *testing.T, s Store) {
	ctx := testCtx(t)
	alive(t, s, bob.Origin)
	if err := s.PutOrigin(ctx, OriginInfo{ID: alice.Origin}, shortTTL); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, s, "live/demo", alice, longTTL)
	wantErr(t, "takeover while origin alive", s.ClaimStream(ctx, "live/demo", bob, longTTL), ErrTaken)
	waitUntil(t, s, 2*shortTTL, "alice's liveness record expires", func() bool {
		_, err := s.GetOrigin(testCtx(t), alice.Origin)
		return errors.Is(err, ErrNotFound)
	})
	mustClaim(t, s, "live/demo", bob, longTTL)
	wantOwner(t, s, "live/demo", bob)
}

func testOrigins(t *testing.T, s Store) {
	ctx := testCtx(t)
	_, err := s.GetOrigin(ctx, "nobody")
	wantErr(t, "GetOrigin of unknown origin", err, ErrNotFound)

	want := OriginInfo{ID: alice.Origin, Addr: "10.0.0.1:1935", Updated: time.Now().Round(time.Millisecond)}
	if err := s.PutOrigin(ctx, want, longTTL); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetOrigin(ctx, alice.Origin)
	if err != nil || got.ID != want.ID || got.Addr != want.Addr || got.Draining || !got.Updated.Equal(want.Updated) {
		t.Fatalf("GetOrigin = %+v, %v; want %+v", got, err, want)
	}

	// A heartbeat overwrites; a zero Updated is stamped.
	before := time.Now()
	if err := s.PutOrigin(ctx, OriginInfo{ID: alice.Origin, Draining: true}, shortTTL); err != nil {
		t.Fatal(err)
	}
	got, err = s.GetOrigin(ctx, alice.Origin)
	if err != nil || !got.Draining || got.Addr != "" || got.Updated.Before(before) {
		t.Fatalf("GetOrigin after overwrite = %+v, %v; want draining, no addr, updated after %v", got, err, before)
	}
	waitUntil(t, s, 2*shortTTL, "the liveness record expires", func() bool {
		_, err := s.GetOrigin(testCtx(t), alice.Origin)
		return errors.Is(err, ErrNotFound)
	})
}

func testPurgeOrigin(t *testing.T, s Store) {
	ctx := testCtx(t)
	alive(t, s, alice.Origin, bob.Origin)
	mustClaim(t, s, "live/a1", alice, longTTL)
	mustClaim(t, s, "live/a2", alice, longTTL)
	mustClaim(t, s, "live/b1", bob, longTTL)
	// Claimed by alice and expired; one of them then claimed by bob.
	mustClaim(t, s, "live/expired", alice, shortTTL)
	mustClaim(t, s, "live/stale", alice, shortTTL)
	waitStreamGone(t, s, "live/expired")
	waitStreamGone(t, s, "live/stale")
	mustClaim(t, s, "live/expired", bob, longTTL)
	// Claimed by alice, released, then claimed by bob.
	mustClaim(t, s, "live/released", alice, longTTL)
	if err := s.ReleaseStream(ctx, "live/released", alice); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, s, "live/released", bob, longTTL)

	removed, err := s.PurgeOrigin(ctx, alice.Origin)
	if err != nil {
		t.Fatalf("PurgeOrigin: %v", err)
	}
	if want := []string{"live/a1", "live/a2"}; !slices.Equal(removed, want) {
		t.Fatalf("PurgeOrigin removed %q, want %q", removed, want)
	}
	for _, stream := range []string{"live/a1", "live/a2", "live/stale"} {
		_, err := s.LookupStream(ctx, stream)
		wantErr(t, "lookup of purged "+stream, err, ErrNotFound)
	}
	for _, stream := range []string{"live/b1", "live/expired", "live/released"} {
		wantOwner(t, s, stream, bob)
	}
	_, err = s.GetOrigin(ctx, alice.Origin)
	wantErr(t, "purged origin's record", err, ErrNotFound)
	if _, err := s.GetOrigin(ctx, bob.Origin); err != nil {
		t.Fatalf("other origin's record: %v", err)
	}

	removed, err = s.PurgeOrigin(ctx, alice.Origin)
	if err != nil || len(removed) != 0 {
		t.Fatalf("second PurgeOrigin = %q, %v; want nothing", removed, err)
	}
}

// testPurgeAfterTakeover: a takeover moves the stream from the old origin to
// the new one as far as PurgeOrigin is concerned.
func testPurgeAfterTakeover(t *testing.T, s Store) {
	ctx := testCtx(t)
	alive(t, s, bob.Origin)
	mustClaim(t, s, "live/demo", alice, longTTL) // alice has no record
	mustClaim(t, s, "live/demo", bob, longTTL)   // takeover
	removed, err := s.PurgeOrigin(ctx, alice.Origin)
	if err != nil || len(removed) != 0 {
		t.Fatalf("PurgeOrigin(old owner) = %q, %v; want nothing", removed, err)
	}
	wantOwner(t, s, "live/demo", bob)
	removed, err = s.PurgeOrigin(ctx, bob.Origin)
	if want := []string{"live/demo"}; err != nil || !slices.Equal(removed, want) {
		t.Fatalf("PurgeOrigin(new owner) = %q, %v; want %q", removed, err, want)
	}
}

func testEventsRoundTrip(t *testing.T, s Store) {
	ctx, cancel := context.WithCancel(testCtx(t))
	events, err := s.Events(ctx)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	sent := Event{Kind: EventUnpublish, Stream: "live/demo", Origin: bob.Origin, Session: bob.Session, At: time.Now().Round(time.Millisecond)}
	if err := s.PublishEvent(ctx, sent); err != nil {
		t.Fatalf("PublishEvent: %v", err)
	}
	select {
	case got := <-events:
		if got.Kind != sent.Kind || got.Stream != sent.Stream || got.Origin != sent.Origin ||
			got.Session != sent.Session || !got.At.Equal(sent.At) {
			t.Fatalf("received %+v, want %+v", got, sent)
		}
	case <-time.After(waitLimit):
		t.Fatal("no event received")
	}

	cancel()
	deadline := time.After(waitLimit)
	for {
		select {
		case _, ok := <-events:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("events channel not closed after ctx ended")
		}
	}
}

func testEventsNeverBlock(t *testing.T, s Store) {
	ctx := testCtx(t)
	events, err := s.Events(ctx) // never read
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	before := testutil.ToFloat64(eventsDropped)
	const n = 3 * eventBuffer
	for i := range n {
		if err := s.PublishEvent(ctx, Event{Kind: EventPublish, Stream: fmt.Sprintf("live/s%d", i)}); err != nil {
			t.Fatalf("PublishEvent %d: %v", i, err)
		}
	}
	waitUntil(t, s, 0, "events are dropped for the slow consumer", func() bool {
		return testutil.ToFloat64(eventsDropped) > before && len(events) == eventBuffer
	})
	// The store is still usable while its subscriber sleeps.
	mustClaim(t, s, "live/demo", alice, longTTL)
}

func testConcurrentClaims(t *testing.T, s Store) {
	const n = 20
	owners := make([]Owner, n)
	for i := range owners {
		owners[i] = Owner{Origin: fmt.Sprintf("origin-%d", i), Session: fmt.Sprintf("s%d", i)}
		alive(t, s, owners[i].Origin) // live origins: no takeovers
	}
	ctx := testCtx(t)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range owners {
		wg.Go(func() {
			<-start
			errs[i] = s.ClaimStream(ctx, "live/race", owners[i], longTTL)
		})
	}
	close(start)
	wg.Wait()

	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("both %v and %v won", owners[winner], owners[i])
		case err == nil:
			winner = i
		case !errors.Is(err, ErrTaken):
			t.Fatalf("claim by %v: %v, want nil or ErrTaken", owners[i], err)
		}
	}
	if winner < 0 {
		t.Fatal("nobody won the claim")
	}
	wantOwner(t, s, "live/race", owners[winner])
}

func testBadInput(t *testing.T, s Store) {
	ctx := testCtx(t)
	if err := s.ClaimStream(ctx, "live/demo", alice, 0); err == nil {
		t.Error("ClaimStream with zero TTL succeeded")
	}
	if err := s.PutOrigin(ctx, OriginInfo{}, longTTL); err == nil {
		t.Error("PutOrigin without id succeeded")
	}
	if err := s.PublishEvent(ctx, Event{Stream: "live/demo"}); err == nil {
		t.Error("PublishEvent without kind succeeded")
	}
	err := s.ClaimStream(ctx, "live/demo", alice, 0)
	if want := "registry: claim live/demo:"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %v does not start with %q", err, want)
	}
}
