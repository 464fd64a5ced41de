package origin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/hook"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// ErrClosed reports a write to a session that has ended.
var ErrClosed = errors.New("origin: publishing session closed")

// Stream is one publishing session, run as an actor: one goroutine (run) owns the
// join caches and the bus outlet, and everything else talks to it through typed
// requests on its channels.
//
// Lifecycle, in one place:
//
//	live     tags are cached and published; snapshot requests are answered
//	closing  Close was asked: queued tags are flushed, then edges get end-of-stream
//	closed   the actor has exited (done is closed); Write returns ErrClosed
//
// The registry claim is not the actor's: the Origin claims before the actor starts,
// refreshes all claims in its heartbeat, and releases after the actor is closed, so
// no registry call ever waits inside a session or behind a lock a heartbeat needs.
type Stream struct {
	o     *Origin
	name  stream.Name
	out   *bus.Outlet
	owner registry.Owner

	tags      chan bus.Frame                // ingest -> actor, in publish order
	closeReq  chan struct{}                 // Close -> actor
	done      chan struct{}                 // closed when the actor has exited
	kicked    chan struct{}                 // closed when the origin wants the publisher gone
	kickOnce  sync.Once                     //
	lastWrite atomic.Int64                  // unix nanos of the last tag from the publisher
	pending   []bus.Frame                   // ingest goroutine only: Alloc'ed frames not yet written
	closeOnce sync.Once                     //
	released  chan struct{}                 // closed when Close has released the claim
	tagsIn    atomic.Uint64                 // tags ingested, written by the actor
	bytesIn   atomic.Uint64                 // body bytes ingested, written by the actor
	media     atomic.Pointer[flv.MediaInfo] // what the tracks are, written by the actor
	started   time.Time                     // when the session started
	hook      *hook.Client                  // told of the unpublish (nil: no callback)
	hookEv    hook.Event                    // the publish event the callback allowed
	endOnce   sync.Once                     // the unpublish callback is told once
	taps      []Tap                         // set before the actor starts; called by the actor only

	// ---- actor state ----
	cache cache
}

// Stats are a session's figures, updated by its actor.
type Stats struct {
	Name    stream.Name
	Session string // the registry owner's session id
	Started time.Time
	Tags    uint64
	Bytes   uint64 // tag body bytes ingested
	Media   flv.MediaInfo
}

// tagQueue is how many tags ingest may run ahead of the actor.
const tagQueue = 64

func newStream(o *Origin, name stream.Name, out *bus.Outlet) *Stream {
	s := &Stream{o: o, name: name, out: out,
		owner:    registry.Owner{Origin: out.Session().Origin, Session: strconv.FormatUint(out.Session().ID, 16)},
		tags:     make(chan bus.Frame, tagQueue),
		closeReq: make(chan struct{}), done: make(chan struct{}),
		kicked: make(chan struct{}), released: make(chan struct{}),
		cache: cache{maxBytes: o.cfg.GOPMaxBytes, maxFrames: o.cfg.GOPMaxFrames}}
	s.lastWrite.Store(time.Now().UnixNano())
	s.started = time.Now()
	s.media.Store(&flv.MediaInfo{})
	return s
}

// Name returns the stream name.
func (s *Stream) Name() stream.Name { return s.name }

// Kicked is closed when the origin wants the publisher gone (its claim was lost,
// or a reconnecting encoder replaces it).
func (s *Stream) Kicked() <-chan struct{} { return s.kicked }

func (s *Stream) kick() { s.kickOnce.Do(func() { close(s.kicked) }) }

// silentFor reports whether the publisher sent nothing for d.
func (s *Stream) silentFor(d time.Duration) bool {
	return time.Since(time.Unix(0, s.lastWrite.Load())) > d
}

// maxPending bounds the frames Alloc handed out that Write has not seen yet. RTMP
// interleaves chunk streams, so ingest has one message in flight per chunk stream
// (two for an encoder interleaving audio and video); a frame it abandons (an aborted
// message, a connection that ends) is forgotten once this many newer ones exist.
const maxPending = 16

// Alloc returns a new tag of type typ at ts with an n-byte body for the caller to
// fill before Write. Its backing array has room in front for the bus prefix, so the
// bytes ingest reads into it are the bytes published: no copy.
// Alloc and Write are called from the ingest goroutine only.
func (s *Stream) Alloc(typ byte, ts uint32, n int) flv.Tag {
	if len(s.pending) == maxPending {
		s.pending = append(s.pending[:0], s.pending[1:]...)
	}
	f := s.out.Alloc(typ, ts, n)
	s.pending = append(s.pending, f)
	return f.Tag
}

// Write ingests a tag from Alloc, body filled. It is shared and immutable from then on.
func (s *Stream) Write(t flv.Tag) error {
	for i, f := range s.pending {
		if len(t) > 0 && len(f.Tag) > 0 && &t[0] == &f.Tag[0] {
			s.pending = append(s.pending[:i], s.pending[i+1:]...)
			return s.submit(f)
		}
	}
	return fmt.Errorf("origin: %s: Write of a tag that did not come from Alloc", s.name)
}

// WriteTag ingests one tag body, copying it into a new frame (for sources that
// already hold the bytes, such as the file source). body is not retained.
func (s *Stream) WriteTag(typ byte, ts uint32, body []byte) error {
	return s.submit(s.out.Copy(typ, ts, body))
}

// submit hands a frame to the actor, waiting while it is busy (back-pressure on
// the publisher's socket rather than an unbounded queue).
func (s *Stream) submit(f bus.Frame) error {
	s.lastWrite.Store(time.Now().UnixNano())
	if f.Tag.DataSize() == 0 {
		return nil // nothing a decoder could use
	}
	select {
	case s.tags <- f:
		return nil
	case <-s.done:
		return fmt.Errorf("origin: %s: %w", s.name, ErrClosed)
	}
}

// run is the actor. It returns when Close was asked or ctx ended.
func (s *Stream) run(ctx context.Context) {
	defer close(s.done)
	for {
		select {
		case f := <-s.tags:
			s.ingest(f)
		case r := <-s.out.Requests():
			s.answer(r)
		case <-s.closeReq:
			s.finish()
			return
		case <-ctx.Done():
			s.finish()
			s.reportEnd() // the origin is shutting down: its publishers may never Close
			return
		}
	}
}

// ingest caches and publishes one tag (actor only).
func (s *Stream) ingest(f bus.Frame) {
	kind := flv.Classify(f.Tag.Type(), f.Tag.Body())
	if f.Tag.Type() == flv.TypeScript {
		if kind != flv.KindMetadata {
			return // only onMetaData is forwarded; other script data is publisher chatter
		}
		f.Tag.SetTimestamp(0) // metadata is not media: a zero timestamp keeps players from seeking on it
	}
	if s.cache.add(kind, f) {
		gopOverflows.Inc()
	}
	if kind == flv.KindMetadata || kind == flv.KindVideoHeader || kind == flv.KindAudioHeader {
		m := s.media.Load().Clone()
		m.Observe(f.Tag)
		s.media.Store(&m)
	}
	s.tagsIn.Add(1)
	s.bytesIn.Add(uint64(f.Tag.DataSize()))
	tagsIn.Inc()
	bytesIn.Add(float64(f.Tag.DataSize()))
	for _, t := range s.taps {
		t.Tag(f.Tag)
	}
	if err := s.out.Send(f); err != nil {
		publishErrors.Inc()
		s.o.log.Debug("tag not published", "stream", s.name, "err", err)
	}
}

// answer replies to one edge's snapshot request (actor only), after taking in
// the tags ingest has queued, so the snapshot is as fresh as it can be.
func (s *Stream) answer(r bus.SnapshotRequest) {
	s.drain()
	if err := s.out.Answer(r, s.cache.snapshot(), s.cache.flags()); err != nil {
		s.o.log.Warn("snapshot reply failed", "stream", s.name, "err", err)
		return
	}
	snapshotsServed.Inc()
}

// drain ingests the tags queued so far (actor only).
func (s *Stream) drain() {
	for {
		select {
		case f := <-s.tags:
			s.ingest(f)
		default:
			return
		}
	}
}

// finish publishes what ingest queued before Close, then the end of stream (actor only).
func (s *Stream) finish() {
	s.drain()
	for _, t := range s.taps {
		t.End()
	}
	if err := s.out.End(); err != nil {
		s.o.log.Warn("end of stream not published", "stream", s.name, "err", err)
	}
}

// Close ends the session: queued tags are published, edges are told the publisher
// left, and the claim is released (bounded by the origin's TTL). It is safe to
// call more than once and from any goroutine.
func (s *Stream) Close(ctx context.Context) {
	s.closeOnce.Do(func() {
		select {
		case s.closeReq <- struct{}{}:
		case <-s.done:
		}
		<-s.done
		s.o.release(context.WithoutCancel(ctx), s)
		close(s.released)
	})
	<-s.released
}

// reportEnd tells the unpublish callback (if any), once, that the session ended.
func (s *Stream) reportEnd() {
	if s.hook != nil {
		s.endOnce.Do(func() {
			s.hook.Notify(s.hookEv.Ended(hook.Unpublish, time.Since(s.started), s.Stats().Bytes))
		})
	}
}

// Stats returns the session's figures so far.
func (s *Stream) Stats() Stats {
	return Stats{Name: s.name, Session: s.owner.Session, Started: s.started,
		Tags: s.tagsIn.Load(), Bytes: s.bytesIn.Load(), Media: *s.media.Load()}
}

// Kick disconnects the publisher (an operator's request through the cluster API).
func (s *Stream) Kick() { s.kick() }

// cache is a session's join state: metadata, sequence headers and the GOP from
// the newest keyframe. Frames are the published ones, shared, never copied.
type cache struct {
	maxBytes, maxFrames int

	meta, videoHdr, audioHdr bus.Frame
	// trackHdrs: the latest multitrack message with a sequence start, per video
	// track (Enhanced RTMP v2: each track has its own, often in its own message).
	trackHdrs          map[uint8]bus.Frame
	gop                []bus.Frame // nil while no usable GOP
	gopBytes           int
	tracks             gopTracks // multitrack keyframes in the GOP (multitrack.go)
	hasAudio, hasVideo bool
}

// add takes one frame; it reports whether the GOP overflowed its caps.
func (c *cache) add(kind flv.Kind, f bus.Frame) (overflow bool) {
	switch f.Tag.Type() {
	case flv.TypeAudio:
		c.hasAudio = true
	case flv.TypeVideo:
		c.hasVideo = true
	}
	switch kind {
	case flv.KindMetadata:
		c.meta = f
		if md, err := flv.ParseMetadata(f.Tag.Body()); err == nil {
			c.hasAudio = c.hasAudio || md.HasAudio()
			c.hasVideo = c.hasVideo || md.HasVideo()
		}
		return false
	case flv.KindVideoHeader:
		if ex, err := flv.ParseEx(flv.TypeVideo, f.Tag.Body(), nil); err == nil && ex.Multitrack {
			if c.trackHdrs == nil {
				c.trackHdrs = map[uint8]bus.Frame{}
			}
			for _, p := range ex.Packets {
				c.trackHdrs[p.Track] = f
			}
		} else {
			c.videoHdr = f
		}
		c.gop, c.gopBytes, c.tracks = nil, 0, gopTracks{} // frames after a new header need a new keyframe
		return false
	case flv.KindAudioHeader:
		c.audioHdr = f
		return false
	case flv.KindKeyframe:
		if !c.multitrackKey(f) {
			c.gop, c.gopBytes, c.tracks = make([]bus.Frame, 0, 64), 0, gopTracks{}
		}
	}
	if c.gop == nil {
		if c.hasVideo {
			return false // waiting for a keyframe
		}
		c.gop = make([]bus.Frame, 0, 64) // audio needs none (a stream's first seconds may be audio only)
	}
	if len(c.gop) >= c.maxFrames || c.gopBytes+len(f.Tag) > c.maxBytes {
		if !c.hasVideo {
			// Audio only: keep a sliding window instead of dropping.
			c.gopBytes -= len(c.gop[0].Tag)
			c.gop = c.gop[1:]
		} else {
			c.gop, c.gopBytes, c.tracks = nil, 0, gopTracks{}
			return true
		}
	}
	c.gop = append(c.gop, f)
	c.gopBytes += len(f.Tag)
	return false
}

// snapshot lists what a joining edge needs: metadata, sequence headers, GOP.
func (c *cache) snapshot() []bus.Frame {
	frames := make([]bus.Frame, 0, 3+len(c.trackHdrs)+len(c.gop))
	for _, f := range []bus.Frame{c.meta, c.videoHdr} {
		if f.Tag != nil {
			frames = append(frames, f)
		}
	}
	// Multitrack headers in track order, each message once.
	for id := 0; id < 256 && len(c.trackHdrs) > 0; id++ {
		f, ok := c.trackHdrs[uint8(id)]
		if !ok || slices.ContainsFunc(frames, func(g bus.Frame) bool { return &g.Tag[0] == &f.Tag[0] }) {
			continue
		}
		frames = append(frames, f)
	}
	if c.audioHdr.Tag != nil {
		frames = append(frames, c.audioHdr)
	}
	return append(frames, c.gop...)
}

func (c *cache) flags() byte {
	var flags byte
	if c.hasAudio {
		flags |= bus.FlagHasAudio
	}
	if c.hasVideo {
		flags |= bus.FlagHasVideo
	}
	return flags
}
