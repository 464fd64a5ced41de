package edge_test

import (
	"bytes"
	"context"
	"errors"
	"github.com/flvcdn/flvcdn/test/harness"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/origin"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// rig is an origin and an edge hub in one process over a real (embedded) NATS
// server and the JetStream KV registry.
type rig struct {
	t      *testing.T
	nc     *nats.Conn
	store  registry.Store
	origin *origin.Origin
	hub    *edge.Hub
	ctx    context.Context
}

func newRig(t *testing.T, cfg edge.Config) *rig { t.Helper(); return newRigWith(t, cfg, nil) }

// newRigWith is newRig with the registry wrapped by wrap (nil: as is), for tests
// that count or stall registry calls.
func newRigWith(t *testing.T, cfg edge.Config, wrap func(registry.Store) registry.Store) *rig {
	t.Helper()
	srv, err := bus.StartEmbedded("127.0.0.1:0", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	nc, err := bus.Connect(bus.ConnOptions{URL: srv.URL(), Name: "test"}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	store, err := registry.Open(ctx, "", nc, "flvcdn")
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		store = wrap(store)
	}
	pub, err := bus.NewPublisher(nc, "origin-a", log)
	if err != nil {
		t.Fatal(err)
	}
	o, err := origin.New(ctx, origin.Config{ID: "origin-a", TTL: time.Second}, pub, store, log)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = o.Run(ctx) }() // heartbeats keep the claims alive
	// Correctness, not speed, is asserted here: generous timeouts keep a loaded
	// machine (or -race) from failing a test that is right.
	if cfg.JoinTimeout == 0 {
		cfg.JoinTimeout, cfg.SnapshotTimeout = 30*time.Second, 10*time.Second
	}
	hub, err := edge.NewHub(ctx, cfg, bus.NewSubscriber(nc), store, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); hub.Wait(); o.Wait(); <-done })
	return &rig{t: t, nc: nc, store: store, origin: o, hub: hub, ctx: ctx}
}

// publisher feeds a synthetic H.264/AAC stream: 25 fps video with a keyframe every
// gop frames, one audio frame per video frame.
type publisher struct {
	s   *origin.Stream
	ts  uint32
	n   int
	gop int
}

func (r *rig) publish(name string, gop int) *publisher {
	r.t.Helper()
	n, _ := stream.ParseName(name)
	s, err := r.origin.Publish(r.ctx, n, "")
	if err != nil {
		r.t.Fatal(err)
	}
	p := &publisher{s: s, gop: gop}
	must(r.t, s.WriteTag(flv.TypeScript, 0, metadata()))
	must(r.t, s.WriteTag(flv.TypeVideo, 0, []byte{0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f}))
	must(r.t, s.WriteTag(flv.TypeAudio, 0, []byte{0xAF, 0, 0x12, 0x10}))
	return p
}

func (p *publisher) frames(t *testing.T, n int, size int) {
	t.Helper()
	for i := 0; i < n; i++ {
		hdr := byte(0x27)
		if p.n%p.gop == 0 {
			hdr = 0x17
		}
		body := make([]byte, size)
		body[0], body[1] = hdr, 1
		must(t, p.s.WriteTag(flv.TypeVideo, p.ts, body))
		must(t, p.s.WriteTag(flv.TypeAudio, p.ts, []byte{0xAF, 1, 0x21, 0x10}))
		p.ts += 40
		p.n++
	}
}

func metadata() []byte {
	b := append([]byte{2, 0, 10}, "onMetaData"...)
	b = append(b, 8, 0, 0, 0, 2)
	for _, k := range []string{"videocodecid", "audiocodecid"} {
		b = append(b, 0, byte(len(k)))
		b = append(b, k...)
		b = append(b, 0, 0x40, 0x1c, 0, 0, 0, 0, 0, 0)
	}
	return append(b, 0, 0, 9)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// watcher accumulates what one viewer is sent and parses it strictly.
type watcher struct {
	v   *edge.Viewer
	raw bytes.Buffer
}

// read returns every tag received so far once at least wantVideo more video tags arrived.
func read(t *testing.T, w *watcher, wantVideo int, timeout time.Duration) []flv.Tag {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := countVideo(parse(t, w.raw.Bytes()))
	for {
		tags := parse(t, w.raw.Bytes())
		if countVideo(tags)-start >= wantVideo {
			return tags
		}
		bufs, err := w.v.Next(ctx, nil)
		for _, b := range bufs {
			w.raw.Write(b)
		}
		if err != nil {
			t.Fatalf("after %d video tags: %v", countVideo(tags), err)
		}
	}
}

func countVideo(tags []flv.Tag) int {
	n := 0
	for _, tg := range tags {
		if tg.Type() == flv.TypeVideo {
			n++
		}
	}
	return n
}

func watch(t *testing.T, r *rig, n string) *watcher {
	t.Helper()
	v, err := r.hub.Watch(r.ctx, name(n))
	must(t, err)
	t.Cleanup(v.Close)
	return &watcher{v: v}
}

func parse(t *testing.T, b []byte) []flv.Tag {
	t.Helper()
	if len(b) == 0 {
		return nil
	}
	r := flv.NewReader(bytes.NewReader(b), 0)
	must(t, r.ReadHeader())
	if r.Flags != flv.FlagAudio|flv.FlagVideo {
		t.Fatalf("header flags %#x", r.Flags)
	}
	var out []flv.Tag
	for {
		tg, err := r.ReadTag()
		if err != nil {
			return out
		}
		out = append(out, tg)
	}
}

// checkStart asserts the join order: metadata, sequence headers, then video from a keyframe.
func checkStart(t *testing.T, tags []flv.Tag) {
	t.Helper()
	kinds := []flv.Kind{}
	for _, tg := range tags[:3] {
		kinds = append(kinds, flv.Classify(tg.Type(), tg.Body()))
	}
	if kinds[0] != flv.KindMetadata || kinds[1] != flv.KindVideoHeader || kinds[2] != flv.KindAudioHeader {
		t.Fatalf("first tags %v", kinds)
	}
	var last uint32
	seenKey := false
	for i, tg := range tags[3:] {
		k := flv.Classify(tg.Type(), tg.Body())
		if tg.Type() == flv.TypeVideo && !seenKey && k != flv.KindKeyframe {
			t.Fatalf("tag %d: video before the first keyframe", i+3)
		}
		seenKey = seenKey || k == flv.KindKeyframe
		if tg.Timestamp() < last {
			t.Fatalf("tag %d: timestamp %d after %d", i+3, tg.Timestamp(), last)
		}
		last = tg.Timestamp()
	}
}

func name(s string) stream.Name { n, _ := stream.ParseName(s); return n }

func TestUnknownStreamIsNotFound(t *testing.T) {
	r := newRig(t, edge.Config{})
	start := time.Now()
	if _, err := r.hub.Watch(r.ctx, name("live/none")); !errors.Is(err, edge.ErrNotFound) {
		t.Fatalf("%v, want ErrNotFound", err)
	}
	t.Logf("404 answered in %v", time.Since(start))
}

func TestFirstAndLaterViewersStartAtKeyframe(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond})
	p := r.publish("live/a", 25)
	p.frames(t, 37, 500) // mid-GOP: the cache holds the GOP from frame 25
	w1 := watch(t, r, "live/a")
	tags := read(t, w1, 12, 5*time.Second)
	checkStart(t, tags)
	if got := tags[3].Timestamp(); got != 25*40 {
		t.Fatalf("first media at %d ms, want the keyframe at %d", got, 25*40)
	}
	p.frames(t, 30, 500)           // a new keyframe at frame 50
	read(t, w1, 30, 5*time.Second) // the edge has them all now
	w2 := watch(t, r, "live/a")
	tags2 := read(t, w2, 5, 5*time.Second)
	checkStart(t, tags2)
	if got := tags2[3].Timestamp(); got != 50*40 {
		t.Fatalf("later viewer starts at %d ms, want the newest keyframe at %d", got, 50*40)
	}
}

func TestPullStopsAfterLinger(t *testing.T) {
	r := newRig(t, edge.Config{Linger: 200 * time.Millisecond, MergeWindow: 5 * time.Millisecond})
	p := r.publish("live/l", 10)
	p.frames(t, 10, 100)
	w := watch(t, r, "live/l")
	read(t, w, 3, 5*time.Second)
	if r.hub.Streams() != 1 {
		t.Fatalf("%d streams pulled", r.hub.Streams())
	}
	w.v.Close()
	harness.Until(t, 3*time.Second, "pull to stop after the linger period", func() bool { return r.hub.Streams() == 0 })
}

func TestSlowViewerSkipsThenIsDropped(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond, MaxLagBytes: 128 << 10, MaxSkips: 2, RingSize: 1024})
	p := r.publish("live/s", 10)
	p.frames(t, 10, 1000)
	slow, fast := watch(t, r, "live/s"), watch(t, r, "live/s")
	read(t, slow, 5, 5*time.Second)
	read(t, fast, 5, 5*time.Second)
	// A paced live source; the fast viewer keeps up, the slow one stops reading.
	pace := func(frames int) {
		for i := 0; i < frames; i += 5 {
			p.frames(t, 5, 3000)
			read(t, fast, 5, 5*time.Second)
		}
	}
	pace(100) // ~300 KB pass the slow viewer by
	// Each time the slow viewer reads it is too far behind: it skips to the newest
	// keyframe (never into a GOP's middle), and after MaxSkips it is dropped.
	var err error
	skipped := 0
	for i := 0; i < 10 && err == nil; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		var bufs net.Buffers
		bufs, err = slow.v.Next(ctx, nil)
		cancel()
		if err == nil && len(bufs) > 0 {
			skipped++
			first := flv.Tag(bufs[0])
			if k := flv.Classify(first.Type(), first.Body()); k != flv.KindKeyframe {
				t.Fatalf("read %d after falling behind starts with %v, want a keyframe", i, k)
			}
		}
		pace(100)
	}
	if !errors.Is(err, edge.ErrTooSlow) || skipped != 2 {
		t.Fatalf("slow viewer: %v after %d skips, want ErrTooSlow after 2", err, skipped)
	}
	pace(10) // the fast viewer never noticed
}

// A viewer whose writer is still busy with an older batch (its socket drains
// slowly) is judged by Behind at each wake-up: past MaxLagBytes it skips, so its
// next batch starts at a keyframe, and past MaxSkips it is dropped, without ever
// asking for more.
func TestBehindSkipsAndDropsAViewerStillWriting(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond, MaxLagBytes: 128 << 10, MaxSkips: 2, RingSize: 1024})
	p := r.publish("live/b", 10)
	p.frames(t, 10, 1000)
	busy, fast := watch(t, r, "live/b"), watch(t, r, "live/b")
	read(t, busy, 5, 5*time.Second)
	read(t, fast, 5, 5*time.Second)
	pace := func(frames int) {
		for i := 0; i < frames; i += 5 {
			p.frames(t, 5, 3000)
			read(t, fast, 5, 5*time.Second) // also: the edge has pushed them
		}
	}
	if err := busy.v.Behind(); err != nil {
		t.Fatalf("a viewer that is not behind: %v", err)
	}
	var err error
	skips := 0
	for i := 0; i < 10 && err == nil; i++ {
		pace(60) // ~180 KB pass the busy viewer by
		if err = busy.v.Behind(); err == nil {
			skips++
		}
	}
	if !errors.Is(err, edge.ErrTooSlow) || skips != 2 {
		t.Fatalf("busy viewer: %v after %d skips, want ErrTooSlow after 2", err, skips)
	}
}

func TestPublisherReconnectKeepsViewersAndTimeline(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond, Grace: 5 * time.Second})
	p := r.publish("live/r", 10)
	p.frames(t, 20, 200)
	w := watch(t, r, "live/r")
	before := read(t, w, 10, 5*time.Second)
	lastBefore := before[len(before)-1].Timestamp()
	p.s.Close(r.ctx) // publisher leaves; the viewer stays for the grace period
	p2 := r.publish("live/r", 10)
	p2.frames(t, 30, 200)
	all := read(t, w, 10, 5*time.Second)
	after := all[len(before):]
	var sawHeader bool
	prev := lastBefore
	for _, tg := range after {
		if tg.Timestamp() < prev {
			t.Fatalf("timestamp went back from %d to %d across the reconnect", prev, tg.Timestamp())
		}
		prev = tg.Timestamp()
		sawHeader = sawHeader || flv.Classify(tg.Type(), tg.Body()) == flv.KindVideoHeader
	}
	if !sawHeader {
		t.Fatal("the new session's sequence header was not sent to the existing viewer")
	}
	if jump := int(after[len(after)-1].Timestamp()) - int(lastBefore); jump > 30*40+100 {
		t.Fatalf("timeline jumped %d ms for 30 new frames", jump)
	}
	t.Logf("timeline: last before %d ms, resumed up to %d ms", lastBefore, prev)
}

func TestOversizedTagIsSplitAndRebuilt(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond})
	// The embedded server's max payload is 8 MiB: a 9 MiB keyframe must be split.
	p := r.publish("live/big", 100)
	p.frames(t, 1, 9<<20)
	p.frames(t, 3, 100)
	w := watch(t, r, "live/big")
	tags := read(t, w, 3, 10*time.Second)
	if len(tags[3].Body()) != 9<<20 {
		t.Fatalf("keyframe arrived with %d bytes", len(tags[3].Body()))
	}
	p.frames(t, 1, 9<<20) // and live, not only in the snapshot
	tags = read(t, w, 1, 10*time.Second)
	var lastVideo flv.Tag
	for _, tg := range tags {
		if tg.Type() == flv.TypeVideo {
			lastVideo = tg
		}
	}
	if len(lastVideo.Body()) != 9<<20 {
		t.Fatalf("live big frame arrived with %d bytes", len(lastVideo.Body()))
	}
}

func TestViewerLimits(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond, MaxViewersPerStream: 2, MaxViewers: 3})
	for _, n := range []string{"live/one", "live/two"} {
		p := r.publish(n, 10)
		p.frames(t, 10, 100)
	}
	a, b := watch(t, r, "live/one"), watch(t, r, "live/one")
	if _, err := r.hub.Watch(r.ctx, name("live/one")); !errors.Is(err, edge.ErrTooManyViewers) {
		t.Fatalf("third viewer of a stream: %v, want ErrTooManyViewers", err)
	}
	watch(t, r, "live/two")
	if _, err := r.hub.Watch(r.ctx, name("live/two")); !errors.Is(err, edge.ErrTooManyViewers) {
		t.Fatalf("fourth viewer of the edge: %v, want ErrTooManyViewers", err)
	}
	a.v.Close()
	harness.Until(t, 3*time.Second, "a freed slot to admit a viewer", func() bool {
		v, err := r.hub.Watch(r.ctx, name("live/one"))
		if err == nil {
			v.Close()
		}
		return err == nil
	})
	_ = b
}

// A viewer that arrives the instant a publish starts (a player retrying on 404)
// waits for a start point, then gets the headers and a keyframe first.
func TestViewerArrivingBeforeFirstTagWaitsForAStart(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond})
	n, _ := stream.ParseName("live/early")
	s, err := r.origin.Publish(r.ctx, n, "") // claimed, nothing sent yet
	must(t, err)
	got := make(chan *edge.Viewer, 1)
	go func() {
		v, err := r.hub.Watch(r.ctx, n)
		if err != nil {
			t.Error(err)
		}
		got <- v
	}()
	// The snapshot is empty; headers and the first keyframe come live afterwards.
	harness.Until(t, 5*time.Second, "the edge to pull", func() bool { return r.hub.Streams() == 1 })
	time.Sleep(50 * time.Millisecond) // let the empty snapshot land first (not a correctness wait)
	p := &publisher{s: s, gop: 10}
	must(t, s.WriteTag(flv.TypeScript, 0, metadata()))
	must(t, s.WriteTag(flv.TypeVideo, 0, []byte{0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f}))
	must(t, s.WriteTag(flv.TypeAudio, 0, []byte{0xAF, 0, 0x12, 0x10}))
	p.frames(t, 5, 100)
	var v *edge.Viewer
	select {
	case v = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("viewer never started")
	}
	if v == nil {
		t.FailNow()
	}
	defer v.Close()
	tags := read(t, &watcher{v: v}, 3, 5*time.Second) // parse() checks the header flags
	checkStart(t, tags)
}

// When the publisher is gone for good, viewers' responses end after the grace period.
func TestViewersEndAfterGrace(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond, Grace: 300 * time.Millisecond})
	p := r.publish("live/bye", 10)
	p.frames(t, 10, 100)
	w := watch(t, r, "live/bye")
	read(t, w, 3, 5*time.Second)
	p.s.Close(r.ctx)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		bufs, err := w.v.Next(ctx, make([][]byte, 1, 8)) // with a reserved slot, as httpflv does
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatalf("%v (after %d buffers), want io.EOF", err, len(bufs))
		}
	}
}

// A player retrying a stream whose origin died must get a 404 once the claim is
// gone, not keep a join that can never succeed alive by retrying.
func TestDeadStreamAnswersNotFoundToRetryingPlayers(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond, JoinTimeout: 5 * time.Second, SnapshotTimeout: 200 * time.Millisecond})
	n, _ := stream.ParseName("live/ghost")
	// A claim with no origin behind it: the snapshot request is never answered.
	must(t, r.store.ClaimStream(r.ctx, string(n), registry.Owner{Origin: "dead", Session: "1"}, 800*time.Millisecond))
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(r.ctx, 300*time.Millisecond)
		_, err := r.hub.Watch(ctx, n)
		cancel()
		if errors.Is(err, edge.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %v 10s after the claim lapsed", err)
		}
	}
	harness.Until(t, 5*time.Second, "the failed pull to stop", func() bool { return r.hub.Streams() == 0 && r.hub.Viewers() == 0 })
}
