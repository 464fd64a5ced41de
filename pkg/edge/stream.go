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
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

var errStreamGone = errors.New("stream actor stopped")

// joinPoint is what a new viewer starts from.
type joinPoint struct {
	header []byte    // FLV file header with the real track flags
	tags   []flv.Tag // metadata and sequence headers
	start  uint64    // ring index of the keyframe to start at
	ok     bool      // start is valid
	// audioOnly streams have no keyframes: a viewer starts a little before the head.
	audioOnly bool
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
	waiters    []waiter
	viewers    int
	hasVideo   bool
	hasAudio   bool
	meta       flv.Tag // latest headers of the shown session
	videoHdr   flv.Tag
	audioHdr   flv.Tag
	gone       bool   // the registry has no owner and the stream never started here
	joinStart  uint64 // ring index new viewers start at, valid when joinOK
	joinOK     bool
	snapFlight bool
	snapDone   chan snapAnswer
	notified   uint64 // ring head at the last broadcast
	lastMsg    time.Time
	pullStart  time.Time
	lingerAt   time.Time // zero while viewers remain
	graceAt    time.Time // zero while the publisher is live
	retryAt    time.Time // next snapshot attempt after a failure
	// Timestamps are rewritten once per stream: out = in + offset, never backwards.
	tsOffset int64
	lastOut  int64
	anyOut   bool
	newBase  bool // next media tag sets tsOffset (a new session starts)
}

// waiter is a viewer waiting for the stream to have a start point.
type waiter struct {
	res   chan viewerResult
	since time.Time
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
	s.pullStart, s.lastMsg = time.Now(), time.Now()
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
	s.releaseWaiters()
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
	reg, name, ctx := s.hub.reg, string(s.name), s.hub.ctx
	go func() {
		snap, err := fetchSnapshot(nc, subject, timeout)
		if err != nil {
			// Nobody answered: is there still an owner at all? (The registry is the
			// truth; an origin that died has its claim lapse or purged.)
			lctx, cancel := context.WithTimeout(ctx, timeout)
			if _, lerr := reg.LookupStream(lctx, name); errors.Is(lerr, registry.ErrNotFound) {
				err = fmt.Errorf("%s: %w", name, ErrNotFound)
			}
			cancel()
		}
		s.snapDone <- snapAnswer{snap, err} // buffered, one in flight
	}()
}

func (s *Stream) onSnapshot(a snapAnswer) {
	if errors.Is(a.err, ErrNotFound) && !s.live {
		// The stream ended before this edge could join it: waiting viewers get a 404.
		for _, w := range s.waiters {
			w.res <- viewerResult{err: a.err}
		}
		s.waiters, s.gone = nil, true
		return
	}
	if a.err != nil {
		s.retryAt = time.Now().Add(250 * time.Millisecond)
		return
	}
	s.retryAt = time.Time{}
	joinsTotal.Inc()
	r := s.joiner.onSnapshot(a.s)
	if r.newSession {
		s.newBase = s.anyOut
		// Track flags come from the origin (metadata and tags it saw); tags seen
		// here can only add to them.
		s.hasAudio = a.s.flags&bus.FlagHasAudio != 0
		s.hasVideo = a.s.flags&bus.FlagHasVideo != 0
		s.meta, s.videoHdr, s.audioHdr = nil, nil, nil
		s.joinOK = false
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
	s.live = true
	s.releaseWaiters()
	s.broadcast()
	if r.needSnapshot {
		s.requestSnapshot()
	}
}

// releaseWaiters hands viewers that waited for the stream their start, once there
// is one: a keyframe (or, for audio-only streams, audio) after the headers.
func (s *Stream) releaseWaiters() {
	if !s.live || !s.joinOK || len(s.waiters) == 0 {
		return
	}
	for _, w := range s.waiters {
		w.res <- viewerResult{v: s.newViewer()}
	}
	s.waiters = nil
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

// push stamps a tag, appends it to the ring and keeps the join point current:
// the latest headers, the track flags, and where new viewers start.
func (s *Stream) push(t flv.Tag) *entry {
	kind := flv.Classify(t.Type(), t.Body())
	header := false
	switch kind {
	case flv.KindMetadata:
		s.meta, header = t, true
	case flv.KindVideoHeader:
		s.videoHdr, s.hasVideo, header = t, true, true
	case flv.KindAudioHeader:
		s.audioHdr, s.hasAudio, header = t, true, true
	}
	switch t.Type() {
	case flv.TypeVideo:
		s.hasVideo = true
	case flv.TypeAudio:
		s.hasAudio = true
	}
	s.stamp(t, header)
	// Viewers may start at a keyframe; on an audio-only stream at any audio frame.
	key := kind == flv.KindKeyframe || (!s.hasVideo && t.Type() == flv.TypeAudio && !header)
	e := s.ring.push(t, key)
	if key {
		s.lastKey.Store(e.idx + 1)
	}
	switch {
	case kind == flv.KindKeyframe:
		s.joinStart, s.joinOK = e.idx, true
	case key && !s.joinOK:
		s.joinStart, s.joinOK = e.idx, true // audio-only: viewer.go trims the backlog
	case !header:
		return e
	}
	s.publishJoin()
	return e
}

// publishJoin stores the join point new viewers read (actor only).
func (s *Stream) publishJoin() {
	jp := &joinPoint{header: flv.FileHeader(s.hasAudio, s.hasVideo), start: s.joinStart, ok: s.joinOK, audioOnly: !s.hasVideo}
	for _, t := range []flv.Tag{s.meta, s.videoHdr, s.audioHdr} {
		if t != nil {
			jp.tags = append(jp.tags, t)
		}
	}
	s.join.Store(jp)
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
	kept := s.waiters[:0]
	for _, w := range s.waiters {
		if now.Sub(w.since) > s.hub.cfg.JoinTimeout {
			w.res <- viewerResult{err: fmt.Errorf("%s: %w", s.name, ErrJoinTimeout)}
			continue
		}
		kept = append(kept, w)
	}
	s.waiters = kept
	if s.gone && len(s.waiters) == 0 && s.viewers == 0 {
		return true
	}
	if !s.live && len(s.waiters) == 0 && s.viewers == 0 && now.Sub(s.pullStart) > s.hub.cfg.JoinTimeout {
		return true // never joined and nobody waits any more
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
		w.res <- viewerResult{err: errStreamGone}
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
		s.waiters = append(s.waiters, waiter{res: res, since: time.Now()})
		s.releaseWaiters()
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
		// The request is gone: leave the waiting list, so a dead stream is not kept
		// alive by players retrying; a viewer handed over meanwhile is released.
		// Wait until the actor has run the drop: after that, a viewer handed over
		// before it is already in res (the actor sends synchronously).
		dropped := make(chan struct{})
		select {
		case s.ctl <- func() { s.dropWaiter(res); close(dropped) }:
			select {
			case <-dropped:
			case <-s.done:
			}
		case <-s.done:
		}
		select {
		case r := <-res:
			if r.v != nil {
				r.v.Close()
			}
		default:
		}
		return nil, ctx.Err()
	}
}

// dropWaiter removes a waiter whose request was cancelled (actor only).
func (s *Stream) dropWaiter(res chan viewerResult) {
	for i, w := range s.waiters {
		if w.res == res {
			s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
			return
		}
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
