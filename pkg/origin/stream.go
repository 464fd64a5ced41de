package origin

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// Stream is one publishing session. WriteTag is called from the ingest goroutine only;
// snapshot requests arrive on NATS goroutines, hence the mutex around the caches.
type Stream struct {
	o        *Origin
	name     stream.Name
	session  bus.Session
	subject  string
	timeline flv.Timeline
	snapSub  *nats.Subscription

	claimMu   sync.Mutex // serialises Close with heartbeat refreshes of the claim
	kickOnce  sync.Once
	kicked    chan struct{}
	closedCh  chan struct{} // closed by Close
	lastWrite atomic.Int64  // unix nanos of the last WriteTag

	mu       sync.Mutex
	seq      uint64
	meta     []byte // frames: bus prefix + tag, shared with NATS and snapshots
	videoHdr []byte
	audioHdr []byte
	gop      [][]byte // from the last keyframe; nil while no usable GOP
	gopBytes int
	hasAudio bool
	hasVideo bool
	closed   bool

	pendingAllocs [][]byte // Alloc's frames not yet written (ingest goroutine only)
}

func newStream(o *Origin, name stream.Name, s bus.Session) *Stream {
	st := &Stream{o: o, name: name, session: s, subject: bus.LiveSubject(string(name)),
		kicked: make(chan struct{}), closedCh: make(chan struct{})}
	st.lastWrite.Store(time.Now().UnixNano())
	return st
}

// silentFor reports whether the publisher sent nothing for d.
func (s *Stream) silentFor(d time.Duration) bool {
	return time.Since(time.Unix(0, s.lastWrite.Load())) > d
}

// Name returns the stream name.
func (s *Stream) Name() stream.Name { return s.name }

// Kicked is closed when the origin wants the publisher gone (its claim was lost).
func (s *Stream) Kicked() <-chan struct{} { return s.kicked }

func (s *Stream) kick() { s.kickOnce.Do(func() { close(s.kicked) }) }

func (s *Stream) owner() registry.Owner {
	return registry.Owner{Origin: s.session.Origin, Session: strconv.FormatUint(s.session.ID, 16)}
}

// WriteTag ingests one tag: its timestamp is mapped onto the stream's monotonic
// timeline, body is copied once into a bus frame, the caches are updated and the
// frame is published. body is not retained.
func (s *Stream) WriteTag(typ byte, ts uint32, body []byte) error {
	s.lastWrite.Store(time.Now().UnixNano())
	if len(body) == 0 {
		return nil // nothing a decoder could use
	}
	kind := flv.Classify(typ, body)
	if typ == flv.TypeScript && kind != flv.KindMetadata {
		return nil // only onMetaData is forwarded; other script data is publisher chatter
	}
	out := s.timeline.Map(ts)
	if kind == flv.KindMetadata {
		out = 0 // metadata is not media; a zero timestamp keeps players from seeking on it
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("origin: %s: write after close", s.name)
	}
	s.seq++
	seq := s.seq
	frame, tag := bus.NewFrame(s.session, seq, typ, out, body)
	s.cache(kind, frame, tag)
	s.mu.Unlock()

	tagsIn.Inc()
	bytesIn.Add(float64(len(body)))
	return s.publish(s.subject, frame, seq)
}

// cache updates the join caches; s.mu is held.
func (s *Stream) cache(kind flv.Kind, frame []byte, tag flv.Tag) {
	switch tag.Type() {
	case flv.TypeAudio:
		s.hasAudio = true
	case flv.TypeVideo:
		s.hasVideo = true
	}
	switch kind {
	case flv.KindMetadata:
		s.meta = frame
		if md, err := flv.ParseMetadata(tag.Body()); err == nil {
			s.hasAudio = s.hasAudio || md.HasAudio()
			s.hasVideo = s.hasVideo || md.HasVideo()
		}
		return
	case flv.KindVideoHeader:
		s.videoHdr = frame
		s.gop, s.gopBytes = nil, 0 // frames after a new header need a new keyframe
		return
	case flv.KindAudioHeader:
		s.audioHdr = frame
		return
	case flv.KindKeyframe:
		s.gop, s.gopBytes = s.gop[:0], 0
	}
	if s.gop == nil && !(kind == flv.KindKeyframe) {
		if !s.audioOnly() {
			return // waiting for a keyframe
		}
		s.gop = make([][]byte, 0, 64)
	}
	if len(s.gop) >= s.o.cfg.GOPMaxFrames || s.gopBytes+len(frame) > s.o.cfg.GOPMaxBytes {
		if s.audioOnly() {
			// Audio needs no keyframe: keep a sliding window instead of dropping.
			s.gopBytes -= len(s.gop[0])
			s.gop = s.gop[1:]
		} else {
			s.gop, s.gopBytes = nil, 0
			gopOverflows.Inc()
			return
		}
	}
	s.gop = append(s.gop, frame)
	s.gopBytes += len(frame)
}

// audioOnly: no video seen yet (a stream's first seconds may be audio; that is fine).
func (s *Stream) audioOnly() bool { return !s.hasVideo }

func (s *Stream) publish(subject string, frame []byte, seq uint64) error {
	max := int(s.o.nc.MaxPayload())
	var firstErr error
	for _, f := range bus.Frames(frame, s.session, seq, max) {
		if err := s.o.nc.Publish(subject, f); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		publishErrors.Inc()
		return fmt.Errorf("origin: publish %s seq %d: %w", s.name, seq, firstErr)
	}
	return nil
}

// answerSnapshot replies to an edge's join request with metadata, sequence headers
// and the current GOP, then a KindSnapshotEnd carrying the last sequence covered.
// Replies go to the request's reply subject on the same connection as the live tags.
func (s *Stream) answerSnapshot(m *nats.Msg) {
	if m.Reply == "" {
		return
	}
	s.mu.Lock()
	frames := make([][]byte, 0, 3+len(s.gop))
	for _, f := range [][]byte{s.meta, s.videoHdr, s.audioHdr} {
		if f != nil {
			frames = append(frames, f)
		}
	}
	frames = append(frames, s.gop...)
	last := s.seq
	var flags byte
	if s.hasAudio {
		flags |= bus.FlagHasAudio
	}
	if s.hasVideo {
		flags |= bus.FlagHasVideo
	}
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return
	}
	for _, f := range frames {
		d, err := bus.Decode(f)
		if err != nil {
			continue // cannot happen: frames are built here
		}
		if err := s.publish(m.Reply, f, d.Seq); err != nil {
			s.o.log.Warn("snapshot reply failed", "stream", s.name, "err", err)
			return
		}
	}
	_ = s.o.nc.Publish(m.Reply, bus.Control(bus.KindSnapshotEnd, last, s.session, flags))
	snapshotsServed.Inc()
}

func (s *Stream) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close ends the session: edges are told the publisher left, the claim is released.
func (s *Stream) Close(ctx context.Context) {
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.seq++
	seq := s.seq
	s.mu.Unlock()

	ctx = context.WithoutCancel(ctx)
	if s.snapSub != nil {
		_ = s.snapSub.Unsubscribe()
	}
	if err := s.o.nc.Publish(s.subject, bus.Control(bus.KindEnd, seq, s.session, 0)); err != nil {
		s.o.log.Warn("end of stream not published", "stream", s.name, "err", err)
	}
	if err := s.o.reg.ReleaseStream(ctx, string(s.name), s.owner()); err != nil {
		s.o.log.Warn("stream claim not released", "stream", s.name, "err", err)
	}
	s.o.event(ctx, registry.EventUnpublish, s)
	s.o.forget(s)
	close(s.closedCh)
	streamsGauge.Dec()
	s.o.log.Info("publish ended", "stream", s.name, "session", s.session.String(), "tags", seq-1)
}

// Temporary adapter for rtmp.Publication's Alloc/Write (the lead replaces it on merge).

// maxPendingAllocs bounds the frames Alloc handed out that Write has not seen yet. The
// RTMP normaliser has one per chunk stream with a message in flight (two for an encoder
// interleaving audio and video); one it abandons (Abort, connection end) is forgotten
// once this many newer ones exist.
const maxPendingAllocs = 16

// Alloc returns a tag with an n-byte body for the caller to fill, inside a new bus frame
// (the prefix headroom is in front of it). Called from the ingest goroutine only.
func (s *Stream) Alloc(typ byte, ts uint32, n int) flv.Tag {
	frame, tag := flv.AllocTag(bus.PrefixLen(s.session), typ, ts, n)
	if len(s.pendingAllocs) == maxPendingAllocs {
		s.pendingAllocs = append(s.pendingAllocs[:0], s.pendingAllocs[1:]...)
	}
	s.pendingAllocs = append(s.pendingAllocs, frame)
	return tag
}

// Write ingests a tag from Alloc, body filled, as WriteTag does but without the copy:
// the tag's timestamp is rewritten onto the timeline and the prefix written in front
// of it in place. From here the frame is shared and immutable.
func (s *Stream) Write(t flv.Tag) error {
	s.lastWrite.Store(time.Now().UnixNano())
	var frame []byte
	for i, f := range s.pendingAllocs {
		if len(t) > 0 && len(f) > len(t) && &f[len(f)-len(t)] == &t[0] {
			frame = f
			s.pendingAllocs = append(s.pendingAllocs[:i], s.pendingAllocs[i+1:]...)
			break
		}
	}
	if frame == nil {
		return fmt.Errorf("origin: %s: Write of a tag not from Alloc", s.name)
	}
	body := t.Body()
	if len(body) == 0 {
		return nil
	}
	typ := t.Type()
	kind := flv.Classify(typ, body)
	if typ == flv.TypeScript && kind != flv.KindMetadata {
		return nil
	}
	out := s.timeline.Map(t.Timestamp())
	if kind == flv.KindMetadata {
		out = 0
	}
	t.SetTimestamp(out)

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("origin: %s: write after close", s.name)
	}
	s.seq++
	seq := s.seq
	bus.PutPrefix(frame, bus.KindTag, seq, s.session)
	s.cache(kind, frame, t)
	s.mu.Unlock()

	tagsIn.Inc()
	bytesIn.Add(float64(len(body)))
	return s.publish(s.subject, frame, seq)
}
