package bus

import (
	"bytes"
	"context"
	"github.com/flvcdn/flvcdn/test/harness"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// inProcess starts a real NATS server with no listener and returns two
// connections: one for the origin's publisher, one for the edge's subscriber.
func inProcess(t *testing.T, maxPayload int32) (pubConn, subConn *nats.Conn) {
	t.Helper()
	srv, err := StartInProcess(maxPayload, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	for _, c := range []**nats.Conn{&pubConn, &subConn} {
		nc, err := srv.Connect("test")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		*c = nc
	}
	return pubConn, subConn
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestFeedHoldsItsByteBound(t *testing.T) {
	pc, sc := inProcess(t, 0)
	pub, err := NewPublisher(pc, "o1", quiet())
	if err != nil {
		t.Fatal(err)
	}
	out, err := pub.Open("live/bound", 7)
	if err != nil {
		t.Fatal(err)
	}
	const bound = 1 << 20
	feed, err := NewSubscriber(sc).Follow("live/bound", bound)
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	// 100 tags of 64 KiB (6.4 MiB) while nobody takes: the feed must keep at most 1 MiB.
	for i := range 100 {
		if err := out.Send(out.Copy(flv.TypeVideo, uint32(i*40), make([]byte, 64<<10))); err != nil {
			t.Fatal(err)
		}
	}
	if err := pc.Flush(); err != nil {
		t.Fatal(err)
	}
	harness.Until(t, 5*time.Second, "100 messages delivered or dropped", func() bool {
		feed.mu.Lock()
		defer feed.mu.Unlock()
		return uint64(len(feed.queue))+feed.dropped == 100
	})
	if b := feed.Buffered(); b > bound {
		t.Fatalf("feed buffers %d bytes, bound %d", b, bound)
	}
	if feed.Dropped() == 0 {
		t.Fatal("6.4 MiB went into a 1 MiB feed and nothing was dropped")
	}
	msgs := feed.Take(nil)
	for i, m := range msgs {
		if m.Seq != uint64(i+1) {
			t.Fatalf("message %d has seq %d: the oldest must be kept, the newest dropped", i, m.Seq)
		}
	}
	if feed.Buffered() != 0 {
		t.Fatalf("Take left %d bytes accounted", feed.Buffered())
	}
	// Room again: the next tag is delivered, and its seq shows the consumer the gap.
	if err := out.Send(out.Copy(flv.TypeVideo, 4000, []byte{0x27, 1, 0, 0, 0})); err != nil {
		t.Fatal(err)
	}
	var next []Message
	harness.Until(t, 5*time.Second, "the next tag", func() bool { next = feed.Take(next); return len(next) > 0 })
	if len(next) != 1 || next[0].Seq != 101 {
		t.Fatalf("after the drop: %+v", next)
	}
	t.Logf("kept %d of 100 tags (%d bytes bound), dropped %d", len(msgs), bound, feed.Dropped())
}

func TestSplitTagsAreRebuiltLiveAndInSnapshots(t *testing.T) {
	pc, sc := inProcess(t, 64<<10) // 64 KiB max payload: a 200 KB keyframe travels in 4 parts
	pub, _ := NewPublisher(pc, "o1", quiet())
	out, err := pub.Open("live/split", 9)
	if err != nil {
		t.Fatal(err)
	}
	sub := NewSubscriber(sc)
	feed, err := sub.Follow("live/split", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	body := bytes.Repeat([]byte{0x17, 1, 2, 3, 4}, 40_000)
	big := out.Copy(flv.TypeVideo, 0, body)
	small := out.Copy(flv.TypeAudio, 0, []byte{0xAF, 1, 9})
	for _, f := range []Frame{big, small} {
		if err := out.Send(f); err != nil {
			t.Fatal(err)
		}
	}
	var got []Message
	harness.Until(t, 5*time.Second, "two live messages", func() bool {
		select {
		case <-feed.Ready():
			got = feed.Take(got)
		default:
		}
		return len(got) >= 2
	})
	if !bytes.Equal(got[0].Tag.Body(), body) || got[0].Seq != 1 || got[1].Seq != 2 {
		t.Fatalf("live: seq %d/%d, body intact %v", got[0].Seq, got[1].Seq, bytes.Equal(got[0].Tag.Body(), body))
	}

	// The owner answers snapshot requests from its own goroutine.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			select {
			case r := <-out.Requests():
				_ = out.Answer(r, []Frame{big, small}, FlagHasVideo|FlagHasAudio)
			case <-ctx.Done():
				return
			}
		}
	}()
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	snap, err := sub.Snapshot(sctx, "live/split")
	if err != nil {
		t.Fatal(err)
	}
	if snap.Last != 2 || snap.Session != out.Session() || len(snap.Tags) != 2 ||
		snap.Tags[0].Seq != 1 || !bytes.Equal(snap.Tags[0].Tag.Body(), body) {
		t.Fatalf("snapshot: last %d, session %v, %d tags", snap.Last, snap.Session, len(snap.Tags))
	}

	// A lost part: the next whole tag arrives and its seq shows the gap.
	frags := Frames(out.Copy(flv.TypeVideo, 80, body).buf, out.Session(), 3, 64<<10)
	for i, f := range frags {
		PutPrefix(f, KindFragment, 3, out.Session())
		if i == 1 {
			continue // lost
		}
		if err := pc.Publish(LiveSubject("live/split"), f); err != nil {
			t.Fatal(err)
		}
	}
	out.seq = 3
	if err := out.Send(small); err != nil {
		t.Fatal(err)
	}
	got = got[:0]
	harness.Until(t, 5*time.Second, "the tag after the broken one", func() bool {
		select {
		case <-feed.Ready():
			got = feed.Take(got)
		default:
		}
		return len(got) >= 1
	})
	if len(got) != 1 || got[0].Seq != 4 || feed.Dropped() == 0 {
		t.Fatalf("after a lost part: %d messages, first seq %d, dropped %d", len(got), got[0].Seq, feed.Dropped())
	}
}

func TestEndClosesTheOutlet(t *testing.T) {
	pc, sc := inProcess(t, 0)
	pub, _ := NewPublisher(pc, "o1", quiet())
	out, _ := pub.Open("live/end", 1)
	feed, _ := NewSubscriber(sc).Follow("live/end", 0)
	defer feed.Close()
	if err := out.End(); err != nil {
		t.Fatal(err)
	}
	var m []Message
	harness.Until(t, 5*time.Second, "the end of stream", func() bool { m = feed.Take(m); return len(m) > 0 })
	if len(m) != 1 || m[0].Kind != KindEnd || m[0].Seq != 1 {
		t.Fatalf("end: %+v", m)
	}
	if err := out.Send(out.Copy(flv.TypeAudio, 0, []byte{0xAF, 1})); err == nil {
		t.Fatal("Send after End succeeded")
	}
}
