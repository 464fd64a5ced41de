package pub

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"time"
)

// Enhanced RTMP packet types and frame types used by the muxer.
const (
	pktSequenceStart = 0
	pktCodedFrames   = 1
	pktMultitrack    = 6
	audioMultitrack  = 5
	frameKey         = 1
	frameInter       = 2
	mtOneTrack       = 0
	mtManyTracks     = 1
	mtManyCodecs     = 2
)

// videoPayload is a frame's data after the FourCC: HEVC (and AVC) CodedFrames
// carry the SI24 composition time offset in milliseconds first.
func videoPayload(fourcc string, f Frame) []byte {
	if fourcc != "hvc1" && fourcc != "avc1" {
		return f.Data
	}
	cts := int32(f.CTS / time.Millisecond)
	return append([]byte{byte(cts >> 16), byte(cts >> 8), byte(cts)}, f.Data...)
}

func frameType(key bool) byte {
	if key {
		return frameKey
	}
	return frameInter
}

// singleVideo is an Enhanced RTMP v1 video body: [1|frameType|packetType] FourCC payload.
func singleVideo(fourcc string, frame, packet byte, payload []byte) []byte {
	return append(append([]byte{0x80 | frame<<4 | packet}, fourcc...), payload...)
}

// audioBody: AAC in the legacy form every player reads, other codecs as Enhanced
// RTMP v2 audio ([9|packetType] FourCC payload).
func audioBody(fourcc string, packet byte, payload []byte) []byte {
	if fourcc == "mp4a" {
		return append([]byte{0xAF, packet}, payload...)
	}
	return append(append([]byte{0x90 | packet}, fourcc...), payload...)
}

// trackInput turns one Track into messages: its sequence start, then its frames.
type trackInput struct {
	t       Track
	started bool
}

// TrackInput is the Input of one elementary stream.
func TrackInput(t Track) Input { return &trackInput{t: t} }

func (in *trackInput) Next() (Message, error) {
	fourcc := in.t.FourCC()
	if !in.started {
		in.started = true
		if in.t.Video() {
			return Message{Type: TypeVideo, Header: true, Body: singleVideo(fourcc, frameKey, pktSequenceStart, in.t.Config())}, nil
		}
		return Message{Type: TypeAudio, Header: true, Body: audioBody(fourcc, pktSequenceStart, in.t.Config())}, nil
	}
	f, err := in.t.Next()
	if err != nil {
		return Message{}, err
	}
	if in.t.Video() {
		return Message{Type: TypeVideo, Time: f.Time, Body: singleVideo(fourcc, frameType(f.Key), pktCodedFrames, videoPayload(fourcc, f))}, nil
	}
	return Message{Type: TypeAudio, Time: f.Time, Body: audioBody(fourcc, pktCodedFrames, f.Data)}, nil
}

// multitrackInput sends several video tracks as Enhanced RTMP v2 multitrack
// messages, track i with videoTrackId i: frames of the same time and kind (key or
// not) go in one message (ManyTracks, or ManyTracksManyCodecs when codecs differ),
// a frame alone in a OneTrack message.
type multitrackInput struct {
	ts       []Track
	heads    []*Frame
	started  bool
	separate bool // one OneTrack message per frame
}

// MultitrackInput is the Input of video tracks sent as one multitrack stream;
// with separate, every frame goes in a OneTrack message of its own.
func MultitrackInput(ts []Track, separate bool) (Input, error) {
	if len(ts) == 0 || len(ts) > 256 {
		return nil, fmt.Errorf("multitrack: %d tracks", len(ts))
	}
	for _, t := range ts {
		if !t.Video() {
			return nil, errors.New("multitrack: only video tracks")
		}
	}
	return &multitrackInput{ts: ts, heads: make([]*Frame, len(ts)), separate: separate}, nil
}

type trackPart struct {
	id      int
	fourcc  string
	payload []byte
}

// multitrack builds one message of the given frame and packet type.
func multitrack(frame, packet byte, parts []trackPart) []byte {
	mtype := byte(mtManyTracks)
	switch {
	case len(parts) == 1:
		mtype = mtOneTrack
	default:
		for _, p := range parts[1:] {
			if p.fourcc != parts[0].fourcc {
				mtype = mtManyCodecs
			}
		}
	}
	b := []byte{0x80 | frame<<4 | pktMultitrack, mtype<<4 | packet}
	if mtype != mtManyCodecs {
		b = append(b, parts[0].fourcc...)
	}
	for _, p := range parts {
		if mtype == mtManyCodecs {
			b = append(b, p.fourcc...)
		}
		b = append(b, byte(p.id))
		if mtype != mtOneTrack {
			n := len(p.payload)
			b = append(b, byte(n>>16), byte(n>>8), byte(n))
		}
		b = append(b, p.payload...)
	}
	return b
}

func (in *multitrackInput) Next() (Message, error) {
	if !in.started {
		// Every track's sequence start, each in a message of its own (as OBS sends them).
		for i, t := range in.ts {
			if in.heads[i] == nil {
				in.heads[i] = &Frame{Time: -1}
				return Message{Type: TypeVideo, Header: true,
					Body: multitrack(frameKey, pktSequenceStart, []trackPart{{i, t.FourCC(), t.Config()}})}, nil
			}
		}
		in.started = true
		for i := range in.heads {
			in.heads[i] = nil
		}
	}
	for i, t := range in.ts {
		if in.heads[i] == nil {
			f, err := t.Next()
			if errors.Is(err, io.EOF) {
				continue
			}
			if err != nil {
				return Message{}, err
			}
			in.heads[i] = &f
		}
	}
	first := time.Duration(math.MaxInt64)
	for _, h := range in.heads {
		if h != nil && h.Time < first {
			first = h.Time
		}
	}
	if first == math.MaxInt64 {
		return Message{}, io.EOF
	}
	var parts []trackPart
	key := false
	for i, h := range in.heads {
		if h != nil && h.Time == first {
			if len(parts) > 0 && (h.Key != key || in.separate) {
				continue // sent in a message of its own next
			}
			key = h.Key
			parts = append(parts, trackPart{i, in.ts[i].FourCC(), videoPayload(in.ts[i].FourCC(), *h)})
			in.heads[i] = nil
		}
	}
	return Message{Type: TypeVideo, Time: first, Body: multitrack(frameType(key), pktCodedFrames, parts)}, nil
}

// mix merges inputs by time; headers of every input go first.
type mix struct {
	ins   []Input
	heads []*Message
	done  []bool
	meta  []Message
}

// Mix merges inputs into one, in time order, after the given metadata messages.
func Mix(meta []Message, ins ...Input) Input {
	return &mix{ins: ins, heads: make([]*Message, len(ins)), done: make([]bool, len(ins)), meta: meta}
}

func (m *mix) Next() (Message, error) {
	if len(m.meta) > 0 {
		x := m.meta[0]
		m.meta = m.meta[1:]
		return x, nil
	}
	for i, in := range m.ins {
		if m.heads[i] == nil && !m.done[i] {
			x, err := in.Next()
			if errors.Is(err, io.EOF) {
				m.done[i] = true
				continue
			}
			if err != nil {
				return Message{}, err
			}
			m.heads[i] = &x
		}
	}
	idx := make([]int, 0, len(m.ins))
	for i, h := range m.heads {
		if h != nil {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return Message{}, io.EOF
	}
	// Headers first, then the earliest; ties go to the earlier input (video first).
	sort.SliceStable(idx, func(a, b int) bool {
		ha, hb := m.heads[idx[a]], m.heads[idx[b]]
		if ha.Header != hb.Header {
			return ha.Header
		}
		return ha.Time < hb.Time
	})
	x := *m.heads[idx[0]]
	m.heads[idx[0]] = nil
	return x, nil
}

// Metadata returns the onMetaData script body (AMF0: the string "onMetaData" and
// an ECMA array) describing the first video and first audio track: codec ids as
// Enhanced RTMP FourCC numbers (AAC as the legacy 10), size, frame rate, sample rate.
func Metadata(ts []Track) []byte {
	type kv struct {
		k string
		v any
	}
	var props []kv
	var video, audio Track
	for _, t := range ts {
		if t.Video() && video == nil {
			video = t
		}
		if !t.Video() && audio == nil {
			audio = t
		}
	}
	if video != nil {
		w, h := video.Size()
		props = append(props, kv{"videocodecid", float64(binary.BigEndian.Uint32([]byte(video.FourCC())))})
		if w > 0 && h > 0 {
			props = append(props, kv{"width", float64(w)}, kv{"height", float64(h)})
		}
		props = append(props, kv{"framerate", video.Rate()})
	}
	if audio != nil {
		id := float64(binary.BigEndian.Uint32([]byte(audio.FourCC())))
		if audio.FourCC() == "mp4a" {
			id = 10
		}
		props = append(props, kv{"audiocodecid", id}, kv{"audiosamplerate", audio.Rate()})
	}
	b := amfString(nil, "onMetaData")
	b = append(b, 8)
	b = binary.BigEndian.AppendUint32(b, uint32(len(props)))
	for _, p := range props {
		b = binary.BigEndian.AppendUint16(b, uint16(len(p.k)))
		b = append(b, p.k...)
		switch v := p.v.(type) {
		case float64:
			b = append(b, 0)
			b = binary.BigEndian.AppendUint64(b, math.Float64bits(v))
		case string:
			b = amfString(b, v)
		}
	}
	return append(b, 0, 0, 9)
}

func amfString(b []byte, s string) []byte {
	b = append(b, 2)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}
