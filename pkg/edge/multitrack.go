package edge

import (
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// Enhanced RTMP v2 multitrack: a publisher sends several video tracks (say 720p and
// 360p of one source) in one stream. The stream actor parses each multitrack
// message once and pushes one ordinary single-track tag per track into the ring,
// marked with its track; a viewer is sent the tags of its own track and those of
// every viewer (audio, metadata), and joins at a keyframe of its own track after
// that track's sequence header. Tag bytes stay shared: a viewer skips other tracks'
// entries, it never copies them.

// MaxTrack is the largest video track id (Enhanced RTMP's videoTrackId is a UI8).
const MaxTrack = 255

// allTracks marks a ring entry every viewer gets.
const allTracks int16 = -1

// ErrNoTrack: the stream has no video track of the id a viewer asked for.
var ErrNoTrack = errors.New("no such video track")

var (
	multitrackSplit = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_edge_multitrack_messages_total", Help: "Enhanced RTMP multitrack messages demuxed into single-track tags."})
	multitrackBad = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_edge_enhanced_malformed_total", Help: "Enhanced RTMP messages (multitrack, ModEx, ...) dropped because their bytes do not hold what their header says."})
	audioTrackDropped = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_edge_audio_track_dropped_total", Help: "Multitrack audio packets of tracks other than 0 (not delivered)."})
	trackTags = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "flvcdn_edge_track_tags_total", Help: "Single-track video tags demuxed from multitrack messages, by track."}, []string{"track"})
	trackViewers = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "flvcdn_edge_track_viewers", Help: "Viewers of a video track of a multitrack stream, by track (0 also counts single-track streams' viewers)."}, []string{"track"})
)

// trackJoin is where a viewer of one track starts.
type trackJoin struct {
	hdr   flv.Tag // the track's sequence header (single-track form)
	start uint64  // ring index of its newest keyframe
	ok    bool
}

// multitrack is the actor's per-track join state of the shown session.
type multitrack struct {
	tracks map[int16]*trackJoin // nil: the session sent no multitrack video
	keys   [MaxTrack + 1]atomic.Uint64
	pkts   []flv.ExPacket // reused by ParseEx
	logAt  time.Time      // last malformed-message log line
}

func (m *multitrack) reset() { m.tracks = nil }

// joins returns an immutable copy of the start points, for a joinPoint.
func (m *multitrack) joins() map[int16]trackJoin {
	if m.tracks == nil {
		return nil
	}
	out := make(map[int16]trackJoin, len(m.tracks))
	for id, tj := range m.tracks {
		out[id] = *tj
	}
	return out
}

// enhanced tells whether t is an Enhanced RTMP multitrack message, or an Enhanced
// message too malformed to deliver (dropped and counted: players cannot parse it).
// Legacy tags are neither (actor only).
func (s *Stream) enhanced(t flv.Tag) (multi, malformed bool) {
	typ, b := t.Type(), t.Body()
	if len(b) == 0 || !(typ == flv.TypeVideo && b[0]&0x80 != 0 || typ == flv.TypeAudio && b[0]>>4 == 9) {
		return false, false
	}
	ex, err := flv.ParseEx(typ, b, s.mt.pkts)
	s.mt.pkts = ex.Packets[:0]
	if err != nil {
		s.malformed(err)
		return false, true
	}
	return ex.Multitrack, false
}

func (s *Stream) malformed(err error) {
	multitrackBad.Inc()
	if now := time.Now(); now.Sub(s.mt.logAt) > time.Second {
		s.mt.logAt = now
		s.hub.log.Warn("edge: malformed Enhanced RTMP message dropped", "stream", s.name, "err", err)
	}
}

// pushTracks demuxes a multitrack message whose timestamp is on the stream's timeline
// already (actor only). Video tracks go to their viewers; audio track 0 to everyone.
// A malformed message is dropped whole: it can harm no other stream, and no viewer
// of this one gets half of it.
func (s *Stream) pushTracks(t flv.Tag) {
	ex, err := flv.ParseEx(t.Type(), t.Body(), s.mt.pkts)
	s.mt.pkts = ex.Packets[:0]
	if err != nil {
		s.malformed(err) // enhanced() parsed it already: not reached
		return
	}
	multitrackSplit.Inc()
	for _, p := range ex.Packets {
		typ := t.Type()
		_, tag := flv.AllocTag(0, typ, t.Timestamp(), flv.SingleTrackSize(typ, p))
		flv.AppendSingleTrack(tag.Body()[:0], typ, ex.FrameType, p)
		kind := flv.Classify(typ, tag.Body())
		if typ == flv.TypeAudio {
			if p.Track != 0 {
				audioTrackDropped.Inc()
				continue
			}
			s.pushAudio(tag, kind)
			continue
		}
		s.pushTrack(tag, kind, int16(p.Track))
	}
}

// pushAudio appends audio track 0 of a multitrack message for every viewer; on
// a stream without video, as in push, a viewer may start at any audio frame.
func (s *Stream) pushAudio(t flv.Tag, kind flv.Kind) {
	header := kind == flv.KindAudioHeader
	if header {
		s.audioHdr = t
	}
	key := !s.hasVideo && !header
	e := s.ring.push(t, key)
	if key {
		s.lastKey.Store(e.idx + 1)
		if !s.joinOK {
			s.joinStart, s.joinOK = e.idx, true // viewer.go trims the backlog
		}
	}
	if header || key {
		s.publishJoin()
	}
}

// pushTrack appends one track's tag and keeps that track's start point (actor only).
func (s *Stream) pushTrack(t flv.Tag, kind flv.Kind, track int16) {
	if s.mt.tracks == nil {
		s.mt.tracks = map[int16]*trackJoin{}
	}
	tj := s.mt.tracks[track]
	if tj == nil {
		tj = &trackJoin{}
		s.mt.tracks[track] = tj
	}
	trackTags.WithLabelValues(strconv.Itoa(int(track))).Inc()
	key := kind == flv.KindKeyframe
	e := s.ring.pushTrack(t, key, track)
	switch kind {
	case flv.KindKeyframe:
		s.mt.keys[track].Store(e.idx + 1)
		tj.start, tj.ok = e.idx, true
	case flv.KindVideoHeader:
		tj.hdr = t
		tj.ok = false // frames after a new header need a new keyframe
	default:
		return
	}
	s.publishJoin()
}

// startFor says whether a viewer of track can start now, or why it never will.
func (s *Stream) startFor(track int16) (ready bool, err error) {
	if s.mt.tracks == nil {
		if !s.joinOK {
			return false, nil
		}
		if track != 0 {
			return false, ErrNoTrack // a single-track stream has track 0 only
		}
		return true, nil
	}
	if tj := s.mt.tracks[track]; tj != nil {
		return tj.ok, nil
	}
	// The default track runs and this one was never seen: it does not exist.
	if d := s.mt.tracks[0]; d != nil && d.ok {
		return false, ErrNoTrack
	}
	return false, nil
}

// keyFor returns the ring index + 1 of the newest keyframe a viewer of track may
// skip to (0: none).
func (s *Stream) keyFor(track int16) uint64 {
	k := s.lastKey.Load()
	if track >= 0 && track <= MaxTrack {
		k = max(k, s.mt.keys[track].Load())
	}
	return k
}

// wants says whether a viewer is sent a ring entry.
func (v *Viewer) wants(e *entry) bool { return e.track == allTracks || e.track == v.track }

// joinTrack sets a new viewer of a multitrack stream at its track's start point.
func (v *Viewer) joinTrack(jp *joinPoint) {
	tj := jp.tracks[v.track]
	v.pre = append(v.pre, jp.header)
	for _, t := range jp.tags {
		if flv.Classify(t.Type(), t.Body()) == flv.KindAudioHeader && tj.hdr != nil {
			v.pre = append(v.pre, tj.hdr) // video header before audio's, as for one track
			tj.hdr = nil
		}
		v.pre = append(v.pre, t)
	}
	if tj.hdr != nil {
		v.pre = append(v.pre, tj.hdr)
	}
	if tj.ok {
		v.cursor = tj.start
	}
}
