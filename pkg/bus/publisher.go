package bus

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// Frame is one tag as it travels: PrefixLen bytes of headroom for the message
// prefix, then the FLV tag. Tag aliases the tail of the same array, so the bytes
// that were filled at ingest are the bytes published, cached and replayed.
type Frame struct {
	buf []byte
	Tag flv.Tag
}

// SnapshotRequest is an edge asking a stream's owner for its join snapshot.
type SnapshotRequest struct{ reply string }

// ErrClosed reports a use of an Outlet after End.
var ErrClosed = errors.New("bus: stream outlet closed")

// Publisher publishes the streams of one origin over one NATS connection. Core
// NATS keeps the order of one connection's messages, which is what makes the
// sequence numbers of a stream arrive in order.
type Publisher struct {
	nc     *nats.Conn
	origin string
	log    *slog.Logger
}

// NewPublisher returns a publisher for the origin named origin.
func NewPublisher(nc *nats.Conn, origin string, log *slog.Logger) (*Publisher, error) {
	if err := ValidOrigin(origin); err != nil {
		return nil, err
	}
	return &Publisher{nc: nc, origin: origin, log: log}, nil
}

// Origin returns the origin id this publisher stamps on its messages.
func (p *Publisher) Origin() string { return p.origin }

// Outlet is one publishing session's side of the bus: it numbers the stream's
// messages, publishes them (split above the server's max payload), and queues the
// snapshot requests that edges send, for the session's owner to answer.
//
// Alloc, Copy, Send, Answer and End are called from one goroutine (the session's
// actor); Requests is safe to read from it too.
type Outlet struct {
	p        *Publisher
	name     string
	session  Session
	subject  string
	seq      uint64
	sub      *nats.Subscription
	requests chan SnapshotRequest
	closed   bool
}

// requestQueue bounds pending snapshot requests; past it an edge's request is
// dropped and the edge asks again after its timeout.
const requestQueue = 256

// Open starts the outlet of a publishing session of stream name ("app/stream",
// already validated) with a fresh random session id.
func (p *Publisher) Open(name string, id uint64) (*Outlet, error) {
	o := &Outlet{p: p, name: name, session: Session{Origin: p.origin, ID: id}, subject: LiveSubject(name),
		requests: make(chan SnapshotRequest, requestQueue)}
	sub, err := p.nc.Subscribe(SnapshotSubject(name), func(m *nats.Msg) {
		if m.Reply == "" {
			return
		}
		select {
		case o.requests <- SnapshotRequest{reply: m.Reply}:
		default:
			requestsDropped.Inc()
		}
	})
	if err != nil {
		return nil, fmt.Errorf("bus: subscribe snapshot requests of %s: %w", name, err)
	}
	o.sub = sub
	return o, nil
}

// Session returns the session this outlet publishes as.
func (o *Outlet) Session() Session { return o.session }

// Seq returns the sequence number of the last message sent.
func (o *Outlet) Seq() uint64 { return o.seq }

// Requests delivers the edges' snapshot requests; answer each with Answer.
func (o *Outlet) Requests() <-chan SnapshotRequest { return o.requests }

// Alloc returns a frame for a tag of type typ at ts whose n-byte body the caller
// fills (f.Tag.Body()) before Send. This is where ingest puts the bytes it reads
// from the publisher's socket: there is no other copy before NATS.
func (o *Outlet) Alloc(typ byte, ts uint32, n int) Frame {
	buf, tag := flv.AllocTag(PrefixLen(o.session), typ, ts, n)
	return Frame{buf: buf, Tag: tag}
}

// Copy returns a frame holding a copy of body (for sources that do not read into
// Alloc'ed frames, such as the file source).
func (o *Outlet) Copy(typ byte, ts uint32, body []byte) Frame {
	f := o.Alloc(typ, ts, len(body))
	copy(f.Tag.Body(), body)
	return f
}

// Send numbers the frame with the stream's next sequence number and publishes it.
// The frame is immutable from then on and may be kept (GOP cache) and answered in
// snapshots.
func (o *Outlet) Send(f Frame) error {
	if o.closed {
		return ErrClosed
	}
	o.seq++
	PutPrefix(f.buf, KindTag, o.seq, o.session)
	return o.publish(o.subject, f.buf, o.seq)
}

func (o *Outlet) publish(subject string, buf []byte, seq uint64) error {
	max := int(o.p.nc.MaxPayload())
	if len(buf) <= max {
		if err := o.p.nc.Publish(subject, buf); err != nil {
			return fmt.Errorf("bus: publish %s seq %d: %w", o.name, seq, err)
		}
		return nil
	}
	var first error
	for _, part := range Frames(buf, o.session, seq, max) {
		if err := o.p.nc.Publish(subject, part); err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return fmt.Errorf("bus: publish %s seq %d: %w", o.name, seq, first)
	}
	return nil
}

// Answer replies to one snapshot request with frames (metadata, sequence headers,
// then the GOP from its keyframe, all previously sent) and a closing message that
// carries the last sequence number sent and the track flags. It runs on the
// session's goroutine, between Sends, so the snapshot and the live sequence agree.
func (o *Outlet) Answer(r SnapshotRequest, frames []Frame, flags byte) error {
	if o.closed {
		return ErrClosed
	}
	for _, f := range frames {
		if err := o.publish(r.reply, f.buf, seqOf(f.buf)); err != nil {
			return fmt.Errorf("bus: snapshot of %s: %w", o.name, err)
		}
	}
	if err := o.p.nc.Publish(r.reply, Control(KindSnapshotEnd, o.seq, o.session, flags)); err != nil {
		return fmt.Errorf("bus: snapshot end of %s: %w", o.name, err)
	}
	return nil
}

// End tells edges the publisher left (a KindEnd after the last tag) and stops
// taking snapshot requests. Further Sends fail with ErrClosed.
func (o *Outlet) End() error {
	if o.closed {
		return nil
	}
	o.closed = true
	err := o.sub.Unsubscribe()
	o.seq++
	if perr := o.p.nc.Publish(o.subject, Control(KindEnd, o.seq, o.session, 0)); perr != nil {
		err = errors.Join(err, perr)
	}
	if err != nil {
		return fmt.Errorf("bus: end of %s: %w", o.name, err)
	}
	return nil
}
