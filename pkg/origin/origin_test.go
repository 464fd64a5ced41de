package origin

import (
	"context"
	"errors"
	"github.com/flvcdn/flvcdn/test/harness"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// env is an origin's surroundings in a test: a real NATS server in process (no
// socket) as the bus, and the JetStream KV registry on it (real expiry).
type env struct {
	nc    *nats.Conn
	store registry.Store
	log   *slog.Logger
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv, err := bus.StartInProcess(0, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := srv.Connect("test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	store, err := registry.Open(context.Background(), "", nc, "flvcdn")
	if err != nil {
		t.Fatal(err)
	}
	return &env{nc: nc, store: store, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func (e *env) origin(t *testing.T, cfg Config) *Origin {
	t.Helper()
	pub, err := bus.NewPublisher(e.nc, cfg.ID, e.log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	o, err := New(ctx, cfg, pub, e.store, e.log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); o.Wait() })
	return o
}

func name(s string) stream.Name { n, _ := stream.ParseName(s); return n }

var (
	meta     = append(append([]byte{2, 0, 10}, "onMetaData"...), 3, 0, 12, 'v', 'i', 'd', 'e', 'o', 'c', 'o', 'd', 'e', 'c', 'i', 'd', 0, 0x40, 0x1c, 0, 0, 0, 0, 0, 0, 0, 0, 9)
	videoHdr = []byte{0x17, 0, 0, 0, 0, 1}
	audioHdr = []byte{0xAF, 0, 0x12, 0x10}
)

func key(i byte) []byte   { return []byte{0x17, 1, 0, 0, 0, i} }
func inter(i byte) []byte { return []byte{0x27, 1, 0, 0, 0, i} }
func aac(i byte) []byte   { return []byte{0xAF, 1, i} }

// snapshotOf asks for a snapshot the way an edge does.
func snapshotOf(t *testing.T, nc *nats.Conn, n string) (tags []flv.Tag, last uint64, flags byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	snap, err := bus.NewSubscriber(nc).Snapshot(ctx, n)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	for _, x := range snap.Tags {
		tags = append(tags, x.Tag)
	}
	return tags, snap.Last, snap.Flags
}

func kinds(tags []flv.Tag) []string {
	var out []string
	for _, t := range tags {
		k := flv.Classify(t.Type(), t.Body())
		s := k.String()
		if k == flv.KindOther {
			s = map[byte]string{flv.TypeAudio: "audio", flv.TypeVideo: "inter"}[t.Type()]
		}
		out = append(out, s)
	}
	return out
}

func TestSnapshotIsHeadersThenGOPFromNewestKeyframe(t *testing.T) {
	e := newEnv(t)
	o := e.origin(t, Config{ID: "o1"})
	s, err := o.Publish(context.Background(), name("live/x"), "")
	if err != nil {
		t.Fatal(err)
	}
	w := func(typ byte, ts uint32, b []byte) {
		if err := s.WriteTag(typ, ts, b); err != nil {
			t.Fatal(err)
		}
	}
	w(flv.TypeScript, 0, meta)
	w(flv.TypeVideo, 0, videoHdr)
	w(flv.TypeAudio, 0, audioHdr)
	w(flv.TypeVideo, 0, key(1))
	w(flv.TypeVideo, 40, inter(2))
	w(flv.TypeVideo, 80, key(3))
	w(flv.TypeAudio, 90, aac(4))
	w(flv.TypeVideo, 120, inter(5))
	tags, last, flags := snapshotOf(t, e.nc, "live/x")
	got := kinds(tags)
	want := []string{"metadata", "video-header", "audio-header", "keyframe", "audio", "inter"}
	if len(got) != len(want) {
		t.Fatalf("snapshot %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("snapshot %v, want %v", got, want)
		}
	}
	if last != 8 || flags != bus.FlagHasAudio|bus.FlagHasVideo {
		t.Fatalf("last %d flags %#x", last, flags)
	}
	if tags[3].Timestamp() != 80 {
		t.Fatalf("keyframe at %d", tags[3].Timestamp())
	}
}

func TestGOPOverCapWaitsForNextKeyframe(t *testing.T) {
	e := newEnv(t)
	o := e.origin(t, Config{ID: "o1", GOPMaxFrames: 4})
	s, _ := o.Publish(context.Background(), name("live/cap"), "")
	_ = s.WriteTag(flv.TypeVideo, 0, videoHdr)
	_ = s.WriteTag(flv.TypeVideo, 0, key(1))
	for i := 0; i < 6; i++ {
		_ = s.WriteTag(flv.TypeVideo, uint32(40*i+40), inter(byte(i)))
	}
	tags, _, _ := snapshotOf(t, e.nc, "live/cap")
	if got := kinds(tags); len(got) != 1 || got[0] != "video-header" {
		t.Fatalf("over the cap the GOP must be dropped (viewers wait for a keyframe), got %v", got)
	}
	_ = s.WriteTag(flv.TypeVideo, 400, key(9))
	tags, _, _ = snapshotOf(t, e.nc, "live/cap")
	if got := kinds(tags); len(got) != 2 || got[1] != "keyframe" {
		t.Fatalf("after a keyframe: %v", got)
	}
}

func TestAudioOnlyKeepsASlidingWindow(t *testing.T) {
	e := newEnv(t)
	o := e.origin(t, Config{ID: "o1", GOPMaxFrames: 5})
	s, _ := o.Publish(context.Background(), name("live/radio"), "")
	_ = s.WriteTag(flv.TypeAudio, 0, audioHdr)
	for i := 0; i < 20; i++ {
		_ = s.WriteTag(flv.TypeAudio, uint32(23*i), aac(byte(i)))
	}
	tags, last, flags := snapshotOf(t, e.nc, "live/radio")
	if len(tags) != 6 || flags != bus.FlagHasAudio || last != 21 {
		t.Fatalf("%d tags %v flags %#x last %d", len(tags), kinds(tags), flags, last)
	}
	if tags[5].Body()[2] != 19 {
		t.Fatal("window must hold the newest frames")
	}
}

func TestLiveOwnerKeepsStreamAndDeadOwnerIsTakenOver(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := e.origin(t, Config{ID: "a", TTL: 600 * time.Millisecond})
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = a.Run(ctx) }()
	if _, err := a.Publish(ctx, name("live/t"), ""); err != nil {
		t.Fatal(err)
	}
	// a is live once Run's first heartbeat wrote its liveness record; before that a
	// newcomer may rightly take over (CI once saw b win here).
	harness.Until(t, 5*time.Second, "origin a's liveness record", func() bool {
		_, err := e.store.GetOrigin(ctx, "a")
		return err == nil
	})
	b := e.origin(t, Config{ID: "b", TTL: 600 * time.Millisecond, ClaimWait: 1500 * time.Millisecond})
	start := time.Now()
	if _, err := b.Publish(ctx, name("live/t"), ""); !errors.Is(err, registry.ErrTaken) {
		t.Fatalf("second publisher on another origin: %v, want ErrTaken", err)
	}
	t.Logf("live owner kept the stream; the newcomer was refused after %v", time.Since(start).Round(time.Millisecond))
	// Origin a dies: no more heartbeats. b's publish waits for the lapse and wins.
	cancel()
	<-runDone
	start = time.Now()
	s, err := b.Publish(context.Background(), name("live/t"), "")
	if err != nil {
		t.Fatalf("takeover of a dead origin's stream: %v", err)
	}
	t.Logf("takeover after %v (TTL 600ms)", time.Since(start).Round(time.Millisecond))
	owner, err := e.store.LookupStream(context.Background(), "live/t")
	if err != nil || owner.Origin != "b" || owner != s.owner {
		t.Fatalf("registry owner %+v %v", owner, err)
	}
}

func TestSilentPublisherIsReplacedLiveOneIsNot(t *testing.T) {
	e := newEnv(t)
	o := e.origin(t, Config{ID: "o1", StaleAfter: 300 * time.Millisecond})
	old, err := o.Publish(context.Background(), name("live/re"), "")
	if err != nil {
		t.Fatal(err)
	}
	// The ingest side closes the session when kicked, as the RTMP handler does.
	go func() { <-old.Kicked(); old.Close(context.Background()) }()
	if _, err := o.Publish(context.Background(), name("live/re"), ""); !errors.Is(err, registry.ErrTaken) {
		t.Fatalf("a live publisher must not be displaced: %v", err)
	}
	harness.Until(t, 5*time.Second, "the publisher to go silent", func() bool { return old.silentFor(300 * time.Millisecond) })
	s, err := o.Publish(context.Background(), name("live/re"), "")
	if err != nil {
		t.Fatalf("reconnecting encoder refused: %v", err)
	}
	if s == old || o.Streams() != 1 {
		t.Fatalf("streams %d", o.Streams())
	}
}

func TestPublishKeyAndDraining(t *testing.T) {
	e := newEnv(t)
	o := e.origin(t, Config{ID: "o1", PublishSecret: "s3cret"})
	n := name("live/k")
	if _, err := o.Publish(context.Background(), n, "wrong"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("bad key: %v", err)
	}
	if _, err := o.Publish(context.Background(), n, stream.PublishKey("s3cret", n)); err != nil {
		t.Fatalf("good key: %v", err)
	}
	o.Drain(context.Background())
	if _, err := o.Publish(context.Background(), name("live/k2"), stream.PublishKey("s3cret", name("live/k2"))); !errors.Is(err, ErrDraining) {
		t.Fatalf("draining: %v", err)
	}
	info, err := e.store.GetOrigin(context.Background(), "o1")
	if err != nil || !info.Draining {
		t.Fatalf("liveness record %+v %v", info, err)
	}
}

// The temporary Alloc/Write adapter publishes what WriteTag publishes, without the copy.
func TestAllocWriteMatchesWriteTag(t *testing.T) {
	e := newEnv(t)
	o := e.origin(t, Config{ID: "o1"})
	live := func(n string) *nats.Subscription {
		sub, err := e.nc.SubscribeSync(bus.LiveSubject(n))
		if err != nil {
			t.Fatal(err)
		}
		return sub
	}
	subA, subB := live("live/a"), live("live/b")
	a, err := o.Publish(context.Background(), name("live/a"), "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := o.Publish(context.Background(), name("live/b"), "")
	if err != nil {
		t.Fatal(err)
	}
	type in struct {
		typ  byte
		ts   uint32
		body []byte
	}
	ins := []in{{flv.TypeScript, 5, meta}, {flv.TypeVideo, 1000, videoHdr}, {flv.TypeAudio, 1000, audioHdr},
		{flv.TypeVideo, 1000, key(1)}, {flv.TypeAudio, 1020, aac(2)}, {flv.TypeVideo, 1040, inter(3)}}
	var pending []flv.Tag
	for i, x := range ins {
		if err := a.WriteTag(x.typ, x.ts, x.body); err != nil {
			t.Fatal(err)
		}
		tag := b.Alloc(x.typ, x.ts, len(x.body))
		copy(tag.Body(), x.body)
		if i == 4 { // two tags allocated at once (as with interleaved chunk streams)
			pending = append(pending, tag)
			continue
		}
		for _, p := range append(pending, tag) {
			if err := b.Write(p); err != nil {
				t.Fatal(err)
			}
		}
		pending = nil
	}
	if err := b.Write(flv.Tag(append([]byte(nil), key(9)...))); err == nil {
		t.Fatal("Write accepted a tag that did not come from Alloc")
	}
	next := func(sub *nats.Subscription) bus.Message {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		d, err := bus.Decode(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	got := map[string]flv.Tag{}
	for range ins {
		da := next(subA)
		got[string(da.Tag.Body())] = da.Tag
	}
	for range ins {
		db := next(subB)
		want, ok := got[string(db.Tag.Body())]
		if !ok || string(want) != string(db.Tag) || db.Session.Origin != "o1" {
			t.Fatalf("Alloc/Write published %x, WriteTag %x", []byte(db.Tag), []byte(want))
		}
	}
}

// BenchmarkIngestThroughOrigin feeds tags the way RTMP ingest does (Alloc, fill,
// Write) through a session actor that caches and publishes them on a real
// in-process NATS server. It reports the bytes allocated per tag beside the tag's
// payload: the frame is the one allocation a tag should cost.
func BenchmarkIngestThroughOrigin(b *testing.B) {
	e := newEnv(&testing.T{})
	pub, err := bus.NewPublisher(e.nc, "bench", e.log)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o, err := New(ctx, Config{ID: "bench"}, pub, e.store, e.log)
	if err != nil {
		b.Fatal(err)
	}
	s, err := o.Publish(ctx, name("live/bench"), "")
	if err != nil {
		b.Fatal(err)
	}
	const size = 4267 // the mean tag of a 2.5 Mbit/s H.264 + AAC stream (pkg/rtmp BenchmarkIngest)
	body := make([]byte, size)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		hdr := byte(0x27)
		if i%60 == 0 {
			hdr = 0x17
		}
		t := s.Alloc(flv.TypeVideo, uint32(i*33), size)
		copy(t.Body(), body) // stands for the socket read
		t.Body()[0], t.Body()[1] = hdr, 1
		if err := s.Write(t); err != nil {
			b.Fatal(err)
		}
	}
	s.Close(ctx)
	b.StopTimer()
	b.ReportMetric(size, "payload-B/tag")
}
