package edge

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

var errStreamGone = errors.New("stream actor stopped")

// joinPoint is what a new viewer starts from.
type joinPoint struct {
	header []byte    // FLV file header with the real track flags
	tags   []flv.Tag // metadata and sequence headers
	start  uint64    // ring index of the keyframe to start at
	ok     bool      // start is valid
}

// Stream is the actor for one stream on this edge. Fields above the line are read
// by viewers concurrently (atomics); the rest belong to the actor goroutine.
type Stream struct {
	hub  *Hub
	name stream.Name
	ring *ring
	join atomic.Pointer[joinPoint]
	// notify is closed (and replaced) once per merge window when new tags were pushed.
	notify  atomic.Pointer[chan struct{}]
	lastKey atomic.Uint64 // ring index + 1 of the newest keyframe; 0 = none
	ended   atomic.Bool   // no more tags will come
	done    chan struct{} // closed when the actor stops
	ctl     chan func()

	// ---- actor state ----
	msgs       chan *nats.Msg
	sub        *nats.Subscription
	joiner     joiner
	live       bool // a snapshot was applied; viewers can be served
	waiters    []chan viewerResult
	viewers    int
	hasVideo   bool
	snapFlight bool
	snapDone   chan snapAnswer
	notified   uint64 // ring head at the last broadcast
	lastMsg    time.Time
	joinStart  time.Time
	lingerAt   time.Time // zero while viewers remain
	graceAt    time.Time // zero while the publisher is live
	retryAt    time.Time // next snapshot attempt after a failure
	// Timestamps are rewritten once per stream: out = in + offset, never backwards.
	tsOffset int64
	lastOut  int64
	anyOut   bool
	newBase  bool // next media tag sets tsOffset (a new session starts)
}

type viewerResult struct {
	v   *Viewer
	err error
}

type snapAnswer struct {
	s   snapshot
	err error
}

func newStream(h *Hub, name stream.Name) (*Stream, error) {
	s := &Stream{
		hub: h, name: name, ring: newRing(h.cfg.RingSize),
		done: make(chan struct{}), ctl: make(chan func(), 64),
		msgs: make(chan *nats.Msg, 8192), snapDone: make(chan snapAnswer, 1),
	}
	ch := make(chan struct{})
	s.notify.Store(&ch)
	sub, err := h.nc.ChanSubscribe(bus.LiveSubject(string(name)), s.msgs)
	if err != nil {
		return nil, fmt.Errorf("edge: subscribe %s: %w", name, err)
	}
	// A slow actor loses messages rather than growing without bound; gaps are
	// detected by sequence numbers and repaired with a snapshot.
	_ = sub.SetPendingLimits(8192, 256<<20)
	s.sub = sub
	return s, nil
}

func (s *Stream) run(ctx context.Context) {
	log := s.hub.log.With("stream", s.name)
	streamsGauge.Inc()
	defer streamsGauge.Dec()
	defer s.stop()
	s.joinStart, s.lastMsg = time.Now(), time.Now()
	s.requestSnapshot()
	tick := time.NewTicker(s.hub.cfg.MergeWindow)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-s.msgs:
			s.onMsg(m)
		case a := <-s.snapDone:
			s.snapFlight = false
			s.onSnapshot(a)
		case f := <-s.ctl:
			f()
		case now := <-tick.C:
			s.broadcast()
			if s.housekeep(now) {
				log.Info("edge: stream stopped", "viewers", s.viewers)
				return
			}
		}
	}
}

func (s *Stream) onMsg(m *nats.Msg) {
	s.lastMsg = time.Now()
	d, err := bus.Decode(m.Data)
	if err != nil {
		s.hub.log.Warn("edge: bad bus message", "stream", s.name, "err", err)
		return
	}
	r := s.joiner.onLive(d)
	for _, t := range r.deliver {
		s.push(t.tag)
	}
	if r.ended {
		s.publisherLeft()
	}
	if r.needSnapshot {
		s.requestSnapshot()
	}
}

func (s *Stream) publisherLeft() {
	if s.graceAt.IsZero() {
		s.graceAt = time.Now().Add(s.hub.cfg.Grace)
	}
}

func (s *Stream) requestSnapshot() {
	if s.snapFlight {
		return
	}
	s.snapFlight = true
	nc, subject, timeout := s.hub.nc, bus.SnapshotSubject(string(s.name)), s.hub.cfg.SnapshotTimeout
	go func() {
		snap, err := fetchSnapshot(nc, subject, timeout)
		s.snapDone <- snapAnswer{snap, err} // buffered, one in flight
	}()
}

func (s *Stream) onSnapshot(a snapAnswer) {
	if a.err != nil {
		s.retryAt = time.Now().Add(250 * time.Millisecond)
		return
	}
	s.retryAt = time.Time{}
	joinsTotal.Inc()
	r := s.joiner.onSnapshot(a.s)
	s.hasVideo = a.s.flags&bus.FlagHasVideo != 0
	if r.newSession {
		s.newBase = s.anyOut
		s.setJoin(a.s.flags, r.headers)
		for _, t := range r.headers {
			s.push(t.tag) // viewers already watching need the new session's headers
		}
	}
	for _, t := range r.gop {
		s.push(t.tag)
	}
	for _, t := range r.deliver {
		s.push(t.tag)
	}
	s.graceAt = time.Time{}
	if r.ended {
		s.publisherLeft()
	}
	if !s.live {
		s.live = true
		for _, w := range s.waiters {
			w <- viewerResult{v: s.newViewer()}
		}
		s.waiters = nil
	}
	s.broadcast()
	if r.needSnapshot {
		s.requestSnapshot()
	}
}

func (s *Stream) setJoin(flags byte, headers []seqTag) {
	jp := &joinPoint{header: flv.FileHeader(flags&bus.FlagHasAudio != 0, flags&bus.FlagHasVideo != 0)}
	for _, t := range headers {
		s.stamp(t.tag, true)
		jp.tags = append(jp.tags, t.tag)
	}
	if k := s.lastKey.Load(); k > 0 {
		jp.start, jp.ok = k-1, true
	}
	s.join.Store(jp)
}

// stamp rewrites a tag's timestamp onto the stream's continuous timeline, in place,
// before the tag is shared. Headers take the current time; media may set a new base.
func (s *Stream) stamp(t flv.Tag, header bool) {
	in := int64(t.Timestamp())
	if s.newBase && !header {
		s.tsOffset = s.lastOut + 40 - in // bridge the session change by one frame
		s.newBase = false
	}
	out := in + s.tsOffset
	if header || out < s.lastOut {
		out = s.lastOut
	}
	s.lastOut, s.anyOut = out, true
	t.SetTimestamp(uint32(out))
}

// push stamps a tag and appends it to the ring.
func (s *Stream) push(t flv.Tag) *entry {
	kind := flv.Classify(t.Type(), t.Body())
	header := kind == flv.KindMetadata || kind == flv.KindVideoHeader || kind == flv.KindAudioHeader
	s.stamp(t, header)
	key := kind == flv.KindKeyframe || (!s.hasVideo && t.Type() == flv.TypeAudio)
	e := s.ring.push(t, key)
	if key {
		s.lastKey.Store(e.idx + 1)
		// New viewers start at the newest keyframe; audio-only streams at the first
		// tag still in the ring (viewer.go clamps it), so they get some backlog.
		if jp := s.join.Load(); jp != nil && (kind == flv.KindKeyframe || !jp.ok) {
			cp := *jp
			cp.start, cp.ok = e.idx, true
			s.join.Store(&cp)
		}
	}
	return e
}

// broadcast wakes viewers when tags were pushed since the last window.
func (s *Stream) broadcast() {
	h := s.ring.head.Load()
	if h == s.notified && !s.ended.Load() {
		return
	}
	s.notified = h
	ch := make(chan struct{})
	old := s.notify.Swap(&ch)
	close(*old)
}

// housekeep runs once per merge window; it returns true when the actor should stop.
func (s *Stream) housekeep(now time.Time) bool {
	if !s.live && len(s.waiters) > 0 && now.Sub(s.joinStart) > s.hub.cfg.JoinTimeout {
		for _, w := range s.waiters {
			w <- viewerResult{err: fmt.Errorf("%s: %w", s.name, ErrJoinTimeout)}
		}
		s.waiters = nil
		return s.viewers == 0
	}
	if !s.snapFlight && !s.retryAt.IsZero() && now.After(s.retryAt) {
		s.requestSnapshot()
	}
	if s.live && s.graceAt.IsZero() && now.Sub(s.lastMsg) > s.hub.cfg.Stall {
		s.publisherLeft() // silent origin: treat like an end of stream
	}
	if !s.graceAt.IsZero() && now.After(s.graceAt) {
		return true
	}
	if s.viewers == 0 && len(s.waiters) == 0 {
		if s.lingerAt.IsZero() {
			s.lingerAt = now.Add(s.hub.cfg.Linger)
		}
		return now.After(s.lingerAt)
	}
	s.lingerAt = time.Time{}
	return false
}

func (s *Stream) stop() {
	_ = s.sub.Unsubscribe()
	s.hub.remove(s)
	s.ended.Store(true)
	for _, w := range s.waiters {
		w <- viewerResult{err: errStreamGone}
	}
	s.broadcast()
	close(s.done)
}

// addViewer registers a viewer, waiting while the stream joins.
func (s *Stream) addViewer(ctx context.Context) (*Viewer, error) {
	res := make(chan viewerResult, 1)
	select {
	case s.ctl <- func() {
		if max := s.hub.cfg.MaxViewersPerStream; max > 0 && s.viewers+len(s.waiters) >= max {
			viewerRefused.WithLabelValues("stream-limit").Inc()
			res <- viewerResult{err: fmt.Errorf("%s: stream limit of %d: %w", s.name, max, ErrTooManyViewers)}
			return
		}
		if s.live {
			res <- viewerResult{v: s.newViewer()}
			return
		}
		s.waiters = append(s.waiters, res)
	}:
	case <-s.done:
		return nil, errStreamGone
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-res:
		return r.v, r.err
	case <-s.done:
		return nil, errStreamGone
	case <-ctx.Done():
		// The actor may still hand us a viewer: release it.
		go func() {
			select {
			case r := <-res:
				if r.v != nil {
					r.v.Close()
				}
			case <-s.done:
			}
		}()
		return nil, ctx.Err()
	}
}

// newViewer runs on the actor.
func (s *Stream) newViewer() *Viewer {
	s.viewers++
	s.hub.viewers.Add(1)
	viewersGauge.Inc()
	return newViewer(s, s.join.Load())
}

func (s *Stream) viewerLeft() {
	select {
	case s.ctl <- func() { s.viewers-- }:
	case <-s.done:
	}
	s.hub.viewers.Add(-1)
	viewersGauge.Dec()
}

// fetchSnapshot asks the owning origin for the join snapshot and collects the reply.
func fetchSnapshot(nc *nats.Conn, subject string, timeout time.Duration) (snapshot, error) {
	var snap snapshot
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return snap, fmt.Errorf("snapshot inbox: %w", err)
	}
	defer sub.Unsubscribe()
	_ = sub.SetPendingLimits(-1, 512<<20)
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		return snap, fmt.Errorf("snapshot request: %w", err)
	}
	deadline := time.Now().Add(timeout)
	var asm bus.Assembler
	for {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			return snap, fmt.Errorf("snapshot of %s: %w", subject, err)
		}
		d, err := bus.Decode(m.Data)
		if err != nil {
			return snap, fmt.Errorf("snapshot of %s: %w", subject, err)
		}
		switch d.Kind {
		case bus.KindFragment:
			t, ok, err := asm.Add(d)
			if err != nil {
				return snap, fmt.Errorf("snapshot of %s: %w", subject, err)
			}
			if ok {
				snap.tags = append(snap.tags, seqTag{d.Seq, t})
			}
		case bus.KindTag:
			snap.tags = append(snap.tags, seqTag{d.Seq, d.Tag})
		case bus.KindSnapshotEnd:
			snap.session, snap.last, snap.flags = d.Session, d.Seq, d.Flags
			return snap, nil
		}
	}
}
