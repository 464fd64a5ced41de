package edge

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

var errStreamGone = errors.New("stream actor stopped")

// state is where a stream actor is in its life. Every transition is in this file.
//
//	resolving  asking the registry who owns the stream (once, for all first viewers)
//	joining    following the live subject, waiting for a snapshot with a start point
//	live       serving viewers
//	lingering  live with no viewers; stops after Config.Linger
//	closed     the actor has exited; Watch starts a new one
//
// "The publisher left" is not a state of its own: a live stream keeps serving for
// Config.Grace after an end of stream (or a silent owner), so that a reconnecting
// publisher resumes without dropping viewers.
type state int

const (
	stateResolving state = iota
	stateJoining
	stateLive
	stateLingering
	stateClosed
)

func (s state) String() string {
	return [...]string{"resolving", "joining", "live", "lingering", "closed"}[s]
}

// joinPoint is what a new viewer starts from.
type joinPoint struct {
	header []byte    // FLV file header with the real track flags
	tags   []flv.Tag // metadata and sequence headers
	start  uint64    // ring index of the keyframe to start at
	ok     bool      // start is valid
	// audioOnly streams have no keyframes: a viewer starts a little before the head.
	audioOnly bool
	// tracks: the start point of each video track of a multitrack stream (nil
	// for other streams); a viewer of a track starts there instead.
	tracks map[int16]trackJoin
}

// Typed requests to the actor.
type (
	joinReq struct {
		res   chan viewerResult
		track int16
	}
	cancelReq struct {
		res  chan viewerResult
		done chan struct{}
	}
	// ownerEvent is a registry hint that the owner of this stream may have changed.
	ownerEvent struct{ ev registry.Event }
	// resolved is the answer of a registry lookup the actor started.
	resolved struct {
		owner registry.Owner
		err   error
		asked bus.Session // the session followed when the lookup started
	}
)

// Stream is the actor for one stream on this edge. Fields above the line are read
// by viewers concurrently (atomics); the rest belong to the actor goroutine.
type Stream struct {
	hub  *Hub
	name stream.Name
	ring *ring
	join atomic.Pointer[joinPoint]
	// notify is closed (and replaced) when new tags were pushed, at most once per
	// merge window (see flushSoon).
	notify  atomic.Pointer[chan struct{}]
	lastKey atomic.Uint64 // ring index + 1 of the newest keyframe; 0 = none
	ended   atomic.Bool   // no more tags will come
	done    chan struct{} // closed when the actor stops
	shown   atomic.Int64  // viewers, as the actor last counted them (for reports)

	joins   chan joinReq
	cancels chan cancelReq
	leaves  chan struct{}
	events  chan ownerEvent

	// ---- actor state ----
	state      state
	feed       *bus.Feed
	msgs       []bus.Message // reused buffer for Feed.Take
	joiner     joiner
	waiters    []waiter
	viewers    int
	hasVideo   bool
	hasAudio   bool
	meta       flv.Tag // latest headers of the shown session
	videoHdr   flv.Tag
	audioHdr   flv.Tag
	joinStart  uint64 // ring index new viewers start at, valid when joinOK
	joinOK     bool
	snapFlight bool
	snapDone   chan snapAnswer
	lookups    chan resolved
	lookFlight bool
	notified   uint64 // ring head at the last broadcast
	lastWake   time.Time
	flush      *time.Timer // armed while pushed tags wait for the window to pass
	flushArmed bool
	lastMsg    time.Time
	pullStart  time.Time
	lingerAt   time.Time // zero while viewers remain
	graceAt    time.Time // zero while the publisher is live
	retryAt    time.Time // next snapshot attempt after a failure
	timeline   flv.Timeline
	mediaOut   bool  // a media tag has been put on the timeline
	failed     error // the stream could not be joined: joins get this until the actor stops
	mt         multitrack
}

// waiter is a viewer waiting for the stream to have a start point.
type waiter struct {
	res   chan viewerResult
	since time.Time
	track int16
}

type viewerResult struct {
	v   *Viewer
	err error
}

type snapAnswer struct {
	s   bus.Snapshot
	err error
}

func newStream(h *Hub, name stream.Name) *Stream {
	s := &Stream{
		hub: h, name: name, ring: newRing(h.cfg.RingSize),
		done:  make(chan struct{}),
		joins: make(chan joinReq), cancels: make(chan cancelReq), leaves: make(chan struct{}, 64),
		events:   make(chan ownerEvent, 8),
		snapDone: make(chan snapAnswer, 1), lookups: make(chan resolved, 1),
	}
	ch := make(chan struct{})
	s.notify.Store(&ch)
	return s
}

func (s *Stream) run(ctx context.Context) {
	streamsGauge.Inc()
	defer streamsGauge.Dec()
	defer s.stop()
	s.pullStart, s.lastMsg = time.Now(), time.Now()
	s.resolve()
	tick := time.NewTicker(housekeepEvery)
	defer tick.Stop()
	s.flush = time.NewTimer(time.Hour)
	s.flush.Stop()
	defer s.flush.Stop()
	for s.state != stateClosed {
		var ready <-chan struct{}
		if s.feed != nil {
			ready = s.feed.Ready()
		}
		select {
		case <-ctx.Done():
			return
		case <-ready:
			s.onMessages()
		case a := <-s.snapDone:
			s.snapFlight = false
			s.onSnapshot(a)
		case r := <-s.lookups:
			s.lookFlight = false
			s.onResolved(r)
		case r := <-s.joins:
			s.onJoin(r)
		case r := <-s.cancels:
			s.dropWaiter(r.res)
			close(r.done)
		case <-s.leaves:
			s.viewers--
			s.shown.Store(int64(s.viewers))
		case e := <-s.events:
			s.onOwnerEvent(e.ev)
		case <-s.flush.C:
			s.flushArmed = false
			s.broadcast()
		case now := <-tick.C:
			s.housekeep(now)
		}
	}
}

func (s *Stream) setState(to state) {
	if s.state == to {
		return
	}
	s.hub.log.Debug("edge: stream state", "stream", s.name, "from", s.state, "to", to)
	s.state = to
}

// resolve asks the registry who owns the stream, off the actor goroutine.
func (s *Stream) resolve() {
	if s.lookFlight {
		return
	}
	s.lookFlight = true
	reg, name, ctx, timeout, asked := s.hub.reg, string(s.name), s.hub.ctx, s.hub.cfg.SnapshotTimeout, s.joiner.session
	go func() {
		lctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		o, err := reg.LookupStream(lctx, name)
		s.lookups <- resolved{o, err, asked} // buffered, one in flight
	}()
}

// onResolved acts on a registry answer: the first one starts the pull; a later one
// (after an owner event) tells whether the stream still has an owner.
func (s *Stream) onResolved(r resolved) {
	switch {
	case errors.Is(r.err, registry.ErrNotFound):
		if s.state == stateResolving || s.state == stateJoining {
			s.fail(fmt.Errorf("%s: %w", s.name, ErrNotFound))
			return
		}
		if r.asked != s.joiner.session {
			// Stale: a new session was joined while the lookup ran (an on-demand
			// lookup waits for a pull for seconds). It must not end that session.
			return
		}
		s.publisherLeft() // the owner is gone and nobody took over (yet): grace starts now
	case r.err != nil:
		if s.state == stateResolving {
			s.fail(fmt.Errorf("lookup %s: %w", s.name, r.err))
		}
	case s.state == stateResolving:
		feed, err := s.hub.sub.Follow(string(s.name), s.hub.cfg.FeedBytes)
		if err != nil {
			s.fail(fmt.Errorf("edge: %w", err))
			return
		}
		s.feed = feed
		s.setState(stateJoining)
		s.requestSnapshot()
	case r.owner.Origin != s.joiner.session.Origin:
		s.requestSnapshot() // another origin holds it now: join its session
	}
}

// fail answers every waiter with err, and every viewer who asks until the actor
// stops at its next housekeeping (a Watch racing the answer must get it too, not
// find the actor gone).
func (s *Stream) fail(err error) {
	for _, w := range s.waiters {
		w.res <- viewerResult{err: err}
	}
	s.waiters = nil
	s.failed = err
}

// onOwnerEvent: the registry says an origin went down or a stream was unpublished.
// If it concerns the session being followed, look again now rather than wait for
// a snapshot timeout or the stall timer.
func (s *Stream) onOwnerEvent(ev registry.Event) {
	if s.state == stateResolving || ev.Origin != s.joiner.session.Origin {
		return
	}
	if ev.Session != "" && ev.Session != fmt.Sprintf("%x", s.joiner.session.ID) {
		return
	}
	ownerEvents.Inc()
	s.resolve()
}

func (s *Stream) onMessages() {
	s.msgs = s.feed.Take(s.msgs[:0])
	s.lastMsg = time.Now()
	for _, m := range s.msgs {
		r := s.joiner.onLive(m)
		for _, t := range r.deliver {
			s.push(t.Tag)
		}
		if r.ended {
			s.publisherLeft()
		}
		if r.needSnapshot {
			s.requestSnapshot()
		}
	}
	clear(s.msgs)
	s.releaseWaiters()
	s.flushSoon()
}

func (s *Stream) publisherLeft() {
	if s.graceAt.IsZero() {
		s.graceAt = time.Now().Add(s.hub.cfg.Grace)
	}
}

func (s *Stream) requestSnapshot() {
	if s.snapFlight || s.feed == nil {
		return
	}
	s.snapFlight = true
	sub, reg, name, ctx, timeout := s.hub.sub, s.hub.reg, string(s.name), s.hub.ctx, s.hub.cfg.SnapshotTimeout
	go func() {
		sctx, cancel := context.WithTimeout(ctx, timeout)
		snap, err := sub.Snapshot(sctx, name)
		cancel()
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
	if errors.Is(a.err, ErrNotFound) && s.state == stateJoining {
		// The stream ended before this edge could join it: waiting viewers get a 404.
		s.fail(a.err)
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
		s.timeline.Splice()
		if len(r.gop) > 0 {
			s.timeline.Begin(r.gop[0].Tag.Timestamp()) // the first sequence headers take the first media's time
		}
		// Track flags come from the origin (metadata and tags it saw); tags seen
		// here can only add to them.
		s.hasAudio = a.s.Flags&bus.FlagHasAudio != 0
		s.hasVideo = a.s.Flags&bus.FlagHasVideo != 0
		s.meta, s.videoHdr, s.audioHdr = nil, nil, nil
		s.joinOK = false
		s.mt.reset()
		for _, t := range r.headers {
			s.push(t.Tag) // viewers already watching need the new session's headers
		}
	}
	for _, t := range r.gop {
		s.push(t.Tag)
	}
	for _, t := range r.deliver {
		s.push(t.Tag)
	}
	s.graceAt = time.Time{}
	if r.ended {
		s.publisherLeft()
	}
	if s.state == stateJoining {
		s.setState(stateLive)
	}
	s.releaseWaiters()
	s.broadcast()
	if r.needSnapshot {
		s.requestSnapshot()
	}
}

// releaseWaiters hands viewers that waited for the stream their start, once there
// is one: a keyframe (or, for audio-only streams, audio) after the headers.
func (s *Stream) releaseWaiters() {
	if (s.state != stateLive && s.state != stateLingering) || len(s.waiters) == 0 {
		return
	}
	kept := s.waiters[:0]
	for _, w := range s.waiters {
		switch ready, err := s.startFor(w.track); {
		case err != nil:
			w.res <- viewerResult{err: fmt.Errorf("%s: %w", s.name, err)}
		case ready:
			w.res <- viewerResult{v: s.newViewer(w.track)}
		default:
			kept = append(kept, w)
		}
	}
	clear(s.waiters[len(kept):])
	s.waiters = kept
}

// push puts a tag on the stream's timeline (in place, before it is shared: the
// one timestamp rewrite), appends it to the ring and keeps the join point current:
// the latest headers, the track flags, and where new viewers start.
func (s *Stream) push(t flv.Tag) {
	multi, malformed := s.enhanced(t) // a multitrack message's headers are kept per track
	if malformed {
		return
	}
	kind := flv.Classify(t.Type(), t.Body())
	header := false
	switch kind {
	case flv.KindMetadata:
		s.meta, header = t, true
	case flv.KindVideoHeader:
		if !multi {
			s.videoHdr = t
		}
		s.hasVideo, header = true, true
	case flv.KindAudioHeader:
		if !multi {
			s.audioHdr = t
		}
		s.hasAudio, header = true, true
	}
	switch t.Type() {
	case flv.TypeVideo:
		s.hasVideo = true
	case flv.TypeAudio:
		s.hasAudio = true
	}
	switch {
	case kind == flv.KindMetadata && !s.mediaOut:
		// The first onMetaData is at zero: ffmpeg's demuxer takes a script tag that
		// starts a file with a later timestamp for a data stream of its own. At a
		// splice it takes the current time, so viewers' timestamps never go back.
		t.SetTimestamp(0)
	case header:
		t.SetTimestamp(s.timeline.Now())
	default:
		t.SetTimestamp(s.timeline.Map(t.Timestamp()))
		s.mediaOut = true
	}
	if multi {
		s.pushTracks(t) // demuxed once here into single-track tags, shared by viewers
		return
	}
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
		return
	}
	s.publishJoin()
}

// publishJoin stores the join point new viewers read (actor only).
func (s *Stream) publishJoin() {
	jp := &joinPoint{header: flv.FileHeader(s.hasAudio, s.hasVideo), start: s.joinStart, ok: s.joinOK, audioOnly: !s.hasVideo}
	for _, t := range []flv.Tag{s.meta, s.videoHdr, s.audioHdr} {
		if t != nil {
			jp.tags = append(jp.tags, t)
		}
	}
	jp.tracks = s.mt.joins()
	s.join.Store(jp)
}

// housekeepEvery is how often an actor checks its timers (joins, stall, grace,
// linger); it does not pace viewers.
const housekeepEvery = 50 * time.Millisecond

// flushSoon wakes viewers for the tags just pushed: at once if the last wake-up
// is a merge window ago, else when that window ends. So a tag that arrives on a
// quiet stream goes out without waiting, and viewers wake at most once per
// window however fast tags come (actor only).
func (s *Stream) flushSoon() {
	if s.flushArmed || s.viewers == 0 || s.ring.head.Load() == s.notified {
		return // a viewer that joins later collects at once: nobody needs waking
	}
	wait := time.Until(s.lastWake.Add(s.hub.MergeWindow()))
	if wait <= 0 {
		s.broadcast()
		return
	}
	s.flush.Reset(wait)
	s.flushArmed = true
}

// broadcast wakes viewers when tags were pushed since the last wake-up.
func (s *Stream) broadcast() {
	h := s.ring.head.Load()
	if h == s.notified && !s.ended.Load() {
		return
	}
	s.notified, s.lastWake = h, time.Now()
	ch := make(chan struct{})
	old := s.notify.Swap(&ch)
	close(*old)
}

// housekeep runs every housekeepEvery: join timeouts, snapshot retries, the stall
// and grace timers, and the live/lingering/closed transitions.
func (s *Stream) housekeep(now time.Time) {
	kept := s.waiters[:0]
	for _, w := range s.waiters {
		if now.Sub(w.since) > s.hub.cfg.JoinTimeout {
			w.res <- viewerResult{err: fmt.Errorf("%s: %w", s.name, ErrJoinTimeout)}
			continue
		}
		kept = append(kept, w)
	}
	clear(s.waiters[len(kept):])
	s.waiters = kept
	idle := s.viewers == 0 && len(s.waiters) == 0
	switch s.state {
	case stateResolving, stateJoining:
		if idle && (s.failed != nil || now.Sub(s.pullStart) > s.hub.cfg.JoinTimeout) {
			s.setState(stateClosed) // never joined and nobody waits any more
			return
		}
	case stateLive, stateLingering:
		if s.graceAt.IsZero() && now.Sub(s.lastMsg) > s.hub.cfg.Stall {
			s.publisherLeft() // silent origin: treat like an end of stream
		}
		if !s.graceAt.IsZero() && now.After(s.graceAt) {
			s.hub.log.Info("edge: stream ended", "stream", s.name, "viewers", s.viewers)
			s.setState(stateClosed)
			return
		}
		if !idle {
			s.lingerAt = time.Time{}
			s.setState(stateLive)
			break
		}
		if s.lingerAt.IsZero() {
			s.lingerAt = now.Add(s.hub.cfg.Linger)
			s.setState(stateLingering)
		}
		if now.After(s.lingerAt) {
			s.hub.log.Info("edge: stream stopped after linger", "stream", s.name)
			s.setState(stateClosed)
			return
		}
	}
	if !s.snapFlight && !s.retryAt.IsZero() && now.After(s.retryAt) {
		s.requestSnapshot()
	}
}

func (s *Stream) stop() {
	s.state = stateClosed
	if s.feed != nil {
		_ = s.feed.Close()
	}
	s.hub.remove(s)
	s.ended.Store(true)
	for _, w := range s.waiters {
		w.res <- viewerResult{err: errStreamGone}
	}
	s.broadcast()
	close(s.done)
}

// onJoin registers a viewer, or refuses it at the stream's limit (exact: the
// actor counts viewers and waiters one request at a time).
func (s *Stream) onJoin(r joinReq) {
	if s.failed != nil {
		r.res <- viewerResult{err: s.failed}
		return
	}
	if max := s.hub.cfg.MaxViewersPerStream; max > 0 && s.viewers+len(s.waiters) >= max {
		viewerRefused.WithLabelValues("stream-limit").Inc()
		r.res <- viewerResult{err: fmt.Errorf("%s: stream limit of %d: %w", s.name, max, ErrTooManyViewers)}
		return
	}
	s.waiters = append(s.waiters, waiter{res: r.res, since: time.Now(), track: r.track})
	s.releaseWaiters()
}

// addViewer asks the actor for a viewer, waiting while the stream joins.
func (s *Stream) addViewer(ctx context.Context, track int16) (*Viewer, error) {
	res := make(chan viewerResult, 1)
	select {
	case s.joins <- joinReq{res: res, track: track}:
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
		// alive by players retrying. Once the actor has run the cancel, a viewer
		// handed over before it is already in res (the actor sends synchronously).
		c := cancelReq{res: res, done: make(chan struct{})}
		select {
		case s.cancels <- c:
			select {
			case <-c.done:
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
func (s *Stream) newViewer(track int16) *Viewer {
	s.viewers++
	s.shown.Store(int64(s.viewers))
	viewersGauge.Inc()
	return newViewer(s, s.join.Load(), track)
}

// viewerLeft is called once per viewer, from its writer.
func (s *Stream) viewerLeft() {
	select {
	case s.leaves <- struct{}{}:
	case <-s.done:
	}
	s.hub.viewers.Add(-1)
	viewersGauge.Dec()
}
