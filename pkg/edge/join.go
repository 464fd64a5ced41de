package edge

import (
	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/flv"
)

// seqTag is a tag with its origin sequence number.
type seqTag = bus.Tagged

// joiner is the join protocol's state machine (see the README, "Architecture"), kept free
// of I/O so it can be tested exhaustively. The stream actor feeds it live messages
// and snapshots; it says what to deliver and when to ask for a fresh snapshot.
type joiner struct {
	session bus.Session // session being followed (or joined)
	// shown is the session whose tags viewers have; it differs from session
	// while a new one is being joined.
	shown    bus.Session
	anyShown bool
	synced   bool     // a snapshot of session was applied and no gap seen since
	ended    bool     // session announced its end
	last     uint64   // last sequence delivered (or covered) for session
	pending  []seqMsg // live messages buffered while waiting for a snapshot
	// maxPending bounds the buffer; past it the oldest are dropped (a fresh snapshot covers them).
	maxPending int
}

type seqMsg struct {
	kind    bus.Kind
	seq     uint64
	session bus.Session
	tag     flv.Tag
}

// liveResult tells the actor what one live message means.
type liveResult struct {
	deliver      []seqTag // tags to append to the stream, in order
	needSnapshot bool     // ask the owner for a snapshot (first join, gap, new session)
	ended        bool     // the followed session ended
}

// onLive handles a live message: a whole tag (the bus reassembled split ones) or
// an end of stream.
func (j *joiner) onLive(m bus.Message) liveResult {
	var r liveResult
	sm := seqMsg{kind: m.Kind, seq: m.Seq, session: m.Session, tag: m.Tag}
	if !j.synced {
		j.buffer(sm)
		// A message from another session than the one being joined means the
		// publisher moved while we waited: the snapshot must come from the new one.
		r.needSnapshot = sm.session != j.session
		if r.needSnapshot {
			j.session = sm.session
		}
		return r
	}
	if sm.session != j.session {
		// New publishing session (publisher reconnected, or another origin took over).
		j.synced, j.ended = false, false
		j.session = sm.session
		j.pending = j.pending[:0]
		j.buffer(sm)
		r.needSnapshot = true
		return r
	}
	switch {
	case sm.seq <= j.last:
		return r // duplicate
	case sm.seq == j.last+1:
		j.last = sm.seq
		if sm.kind == bus.KindEnd {
			j.ended = true
			r.ended = true
			return r
		}
		r.deliver = append(r.deliver, seqTag{Seq: sm.seq, Tag: sm.tag})
		return r
	default:
		j.buffer(sm)
		return j.lose(r)
	}
}

// lose marks a gap: the stream must be re-synchronised from a snapshot.
func (j *joiner) lose(r liveResult) liveResult {
	j.synced = false
	r.needSnapshot = true
	return r
}

func (j *joiner) buffer(m seqMsg) {
	max := j.maxPending
	if max <= 0 {
		max = 4096
	}
	if len(j.pending) >= max {
		copy(j.pending, j.pending[1:])
		j.pending = j.pending[:len(j.pending)-1]
	}
	j.pending = append(j.pending, m)
}

// snapResult tells the actor how to apply a snapshot.
type snapResult struct {
	// newSession is true when viewers must get fresh headers and restart at a keyframe.
	newSession bool
	// headers are the metadata and sequence-header tags of the snapshot.
	headers []seqTag
	// gop is what to append after the headers: the whole GOP for a new session or a
	// resync that cannot be bridged, else only what viewers have not had yet.
	gop []seqTag
	// fromKeyframe is true when gop starts at a keyframe that viewers should restart from.
	fromKeyframe bool
	// deliver are buffered live tags that follow the snapshot.
	deliver      []seqTag
	ended        bool
	needSnapshot bool // the buffered messages showed another gap
}

// onSnapshot applies an origin's snapshot. A snapshot of another session than the
// one being joined is still taken: the owner answers for what is live now.
func (j *joiner) onSnapshot(s bus.Snapshot) snapResult {
	var r snapResult
	prevLast := j.last
	r.newSession = !j.anyShown || s.Session != j.shown
	j.shown, j.anyShown = s.Session, true
	var gop []seqTag
	for _, t := range s.Tags {
		switch flv.Classify(t.Tag.Type(), t.Tag.Body()) {
		case flv.KindMetadata, flv.KindVideoHeader, flv.KindAudioHeader:
			r.headers = append(r.headers, t)
		default:
			gop = append(gop, t)
		}
	}
	switch {
	case r.newSession:
		r.gop, r.fromKeyframe = gop, true
	case len(gop) > 0 && gop[0].Seq <= prevLast+1:
		// The GOP covers everything viewers missed: continue seamlessly.
		r.headers = nil
		for _, t := range gop {
			if t.Seq > prevLast {
				r.gop = append(r.gop, t)
			}
		}
	default:
		// Viewers missed part of a GOP: restart them at the snapshot's keyframe.
		r.headers = nil
		r.gop, r.fromKeyframe = gop, true
	}
	j.session, j.synced, j.ended = s.Session, true, false
	j.last = s.Last
	if !r.newSession && prevLast > s.Last {
		j.last = prevLast // a stale snapshot must not make viewers see a tag twice
	}
	pending := j.pending
	j.pending = nil
	for _, m := range pending {
		if m.session != j.session || m.seq <= j.last {
			continue
		}
		if !j.synced {
			j.buffer(m)
			continue
		}
		lr := j.onLive(bus.Message{Kind: m.kind, Seq: m.seq, Session: m.session, Tag: m.tag})
		r.deliver = append(r.deliver, lr.deliver...)
		r.ended = r.ended || lr.ended
		r.needSnapshot = r.needSnapshot || lr.needSnapshot
	}
	return r
}
