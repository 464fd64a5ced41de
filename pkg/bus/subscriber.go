package bus

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// Subscriber is an edge's side of the bus: it follows live streams and fetches
// join snapshots, reassembling split tags, so that its callers see whole tags with
// their sequence numbers and sessions.
type Subscriber struct {
	nc *nats.Conn
}

// NewSubscriber returns a subscriber on nc.
func NewSubscriber(nc *nats.Conn) *Subscriber { return &Subscriber{nc: nc} }

// Feed is the live messages of one stream, buffered up to a byte bound. A consumer
// that falls further behind loses messages (counted by Dropped); the sequence
// numbers show it the gap, which it repairs with a fresh snapshot.
type Feed struct {
	sub   *nats.Subscription
	ready chan struct{} // one token when the queue went from empty to non-empty
	max   int

	mu      sync.Mutex
	queue   []Message
	bytes   int
	dropped uint64
	asm     Assembler
}

// followFlush bounds the round trip that puts a subscription in place.
const followFlush = 2 * time.Second

// DefaultFeedBytes bounds what one Feed buffers.
const DefaultFeedBytes = 64 << 20

// Follow subscribes to the live subject of stream name ("app/stream"), buffering at
// most maxBytes of tag bytes (DefaultFeedBytes when <= 0). The subscription is in
// place when Follow returns.
func (s *Subscriber) Follow(name string, maxBytes int) (*Feed, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultFeedBytes
	}
	f := &Feed{ready: make(chan struct{}, 1), max: maxBytes}
	sub, err := s.nc.Subscribe(LiveSubject(name), f.onMsg)
	if err != nil {
		return nil, fmt.Errorf("bus: follow %s: %w", name, err)
	}
	// The byte bound is ours (above); let the client hold what we have not taken yet.
	_ = sub.SetPendingLimits(-1, -1)
	f.sub = sub
	// One round trip, so that the server routes the stream to us before we return.
	if err := s.nc.FlushTimeout(followFlush); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("bus: follow %s: %w", name, err)
	}
	return f, nil
}

// onMsg runs on the subscription's goroutine, one message at a time.
func (f *Feed) onMsg(m *nats.Msg) {
	d, err := Decode(m.Data)
	if err != nil {
		f.drop()
		return
	}
	if d.Kind == KindFragment {
		t, done, err := f.asm.Add(d)
		if err != nil {
			f.drop() // the missing sequence number is the consumer's signal
			return
		}
		if !done {
			return
		}
		d.Kind, d.Tag, d.Part = KindTag, t, nil
	}
	if d.Kind != KindTag && d.Kind != KindEnd {
		f.drop()
		return
	}
	f.mu.Lock()
	if f.bytes+len(d.Tag) > f.max {
		f.dropped++
		f.mu.Unlock()
		feedDropped.Inc()
		return
	}
	f.queue = append(f.queue, d)
	f.bytes += len(d.Tag)
	f.mu.Unlock()
	select {
	case f.ready <- struct{}{}:
	default:
	}
}

func (f *Feed) drop() {
	f.mu.Lock()
	f.dropped++
	f.mu.Unlock()
	feedDropped.Inc()
}

// Ready has a value when messages are waiting; then call Take.
func (f *Feed) Ready() <-chan struct{} { return f.ready }

// Take appends the waiting messages to dst, oldest first, and frees their room.
// Only KindTag (whole tags) and KindEnd messages are delivered.
func (f *Feed) Take(dst []Message) []Message {
	f.mu.Lock()
	dst = append(dst, f.queue...)
	clear(f.queue)
	f.queue = f.queue[:0]
	f.bytes = 0
	f.mu.Unlock()
	return dst
}

// Buffered returns the tag bytes waiting to be taken.
func (f *Feed) Buffered() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bytes
}

// Dropped counts messages lost: malformed, unassembled, or over the byte bound.
func (f *Feed) Dropped() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dropped
}

// Close ends the subscription.
func (f *Feed) Close() error { return f.sub.Unsubscribe() }

// Tagged is a tag with its sequence number.
type Tagged struct {
	Seq uint64
	Tag flv.Tag
}

// Snapshot is an owner's answer to a join request: metadata and sequence headers,
// then the GOP from its keyframe, and the last sequence number the answer covers.
type Snapshot struct {
	Session Session
	Last    uint64
	Flags   byte
	Tags    []Tagged
}

// maxSnapshotBytes bounds what one snapshot may buffer in the client.
const maxSnapshotBytes = 512 << 20

// Snapshot asks the owner of stream name for its join snapshot and collects the
// answer, until ctx ends.
func (s *Subscriber) Snapshot(ctx context.Context, name string) (Snapshot, error) {
	var snap Snapshot
	inbox := s.nc.NewRespInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return snap, fmt.Errorf("bus: snapshot inbox: %w", err)
	}
	defer sub.Unsubscribe()
	_ = sub.SetPendingLimits(-1, maxSnapshotBytes)
	if err := s.nc.PublishRequest(SnapshotSubject(name), inbox, nil); err != nil {
		return snap, fmt.Errorf("bus: snapshot request of %s: %w", name, err)
	}
	var asm Assembler
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return snap, fmt.Errorf("bus: snapshot of %s: %w", name, err)
		}
		d, err := Decode(m.Data)
		if err != nil {
			return snap, fmt.Errorf("bus: snapshot of %s: %w", name, err)
		}
		switch d.Kind {
		case KindFragment:
			t, ok, err := asm.Add(d)
			if err != nil {
				return snap, fmt.Errorf("bus: snapshot of %s: %w", name, err)
			}
			if ok {
				snap.Tags = append(snap.Tags, Tagged{Seq: d.Seq, Tag: t})
			}
		case KindTag:
			snap.Tags = append(snap.Tags, Tagged{Seq: d.Seq, Tag: d.Tag})
		case KindSnapshotEnd:
			snap.Session, snap.Last, snap.Flags = d.Session, d.Seq, d.Flags
			return snap, nil
		}
	}
}
