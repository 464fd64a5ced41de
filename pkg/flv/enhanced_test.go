package flv

import (
	"bytes"
	"errors"
	"testing"
)

// mtVideo builds a multitrack video message: frame type, multitrack type, packet
// type, and per track (fourcc, id, data).
type mtTrack struct {
	fourcc string
	id     byte
	data   []byte
}

func mtVideo(frame, mtype, packet byte, tracks ...mtTrack) []byte {
	b := []byte{0x80 | frame<<4 | exMultitrack, mtype<<4 | packet}
	if mtype != multitrackManyCodecs {
		b = append(b, tracks[0].fourcc...)
	}
	for _, t := range tracks {
		if mtype == multitrackManyCodecs {
			b = append(b, t.fourcc...)
		}
		b = append(b, t.id)
		if mtype != multitrackOne {
			b = append(b, byte(len(t.data)>>16), byte(len(t.data)>>8), byte(len(t.data)))
		}
		b = append(b, t.data...)
	}
	return b
}

func TestParseExMultitrack(t *testing.T) {
	body := mtVideo(1, multitrackMany, exCodedFrames,
		mtTrack{"av01", 0, []byte{1, 2, 3}}, mtTrack{"av01", 1, []byte{4, 5}})
	m, err := ParseEx(TypeVideo, body, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Multitrack || m.FrameType != 1 || len(m.Packets) != 2 {
		t.Fatalf("%+v", m)
	}
	if p := m.Packets[1]; p.Track != 1 || string(p.FourCC[:]) != "av01" || !bytes.Equal(p.Data, []byte{4, 5}) || p.PacketType != exCodedFrames {
		t.Fatalf("track 1: %+v", p)
	}
	if k := Classify(TypeVideo, body); k != KindKeyframe {
		t.Fatalf("multitrack keyframe classified %v", k)
	}
	if !IsMultitrack(TypeVideo, body) || IsMultitrack(TypeVideo, []byte{0x17, 1}) {
		t.Fatal("IsMultitrack")
	}

	many := mtVideo(1, multitrackManyCodecs, exSequenceStart,
		mtTrack{"hvc1", 0, []byte{9}}, mtTrack{"av01", 2, []byte{8, 8}})
	m, err = ParseEx(TypeVideo, many, nil)
	if err != nil || len(m.Packets) != 2 || string(m.Packets[1].FourCC[:]) != "av01" || m.Packets[1].Track != 2 {
		t.Fatalf("many codecs: %+v %v", m, err)
	}
	if k := Classify(TypeVideo, many); k != KindVideoHeader {
		t.Fatalf("multitrack sequence start classified %v", k)
	}

	one := mtVideo(2, multitrackOne, exCodedFrames, mtTrack{"vp09", 3, []byte{7, 7, 7}})
	m, err = ParseEx(TypeVideo, one, nil)
	if err != nil || len(m.Packets) != 1 || m.Packets[0].Track != 3 || len(m.Packets[0].Data) != 3 {
		t.Fatalf("one track: %+v %v", m, err)
	}
	if k := Classify(TypeVideo, one); k != KindOther {
		t.Fatalf("inter frame classified %v", k)
	}
}

func TestParseExModEx(t *testing.T) {
	// ModEx (TimestampOffsetNano, 3 bytes) in front of a single-track key frame.
	body := []byte{0x80 | 1<<4 | exModEx, 2, 0, 1, 2, 0<<4 | exCodedFramesX, 'h', 'v', 'c', '1', 0xAA}
	m, err := ParseEx(TypeVideo, body, nil)
	if err != nil || len(m.Packets) != 1 || m.Packets[0].PacketType != exCodedFramesX || string(m.Packets[0].FourCC[:]) != "hvc1" {
		t.Fatalf("%+v %v", m, err)
	}
	if k := Classify(TypeVideo, body); k != KindKeyframe {
		t.Fatalf("ModEx keyframe classified %v", k)
	}
	// A 16-bit ModEx size (255 + 1 = 256, then UI16 + 1).
	long := append([]byte{0x80 | 1<<4 | exModEx, 255, 0x01, 0x00}, make([]byte, 257)...)
	long = append(long, exSequenceStart, 'a', 'v', '0', '1', 0x81)
	if m, err := ParseEx(TypeVideo, long, nil); err != nil || m.Packets[0].PacketType != exSequenceStart {
		t.Fatalf("long ModEx: %+v %v", m, err)
	}
	// Audio: ModEx then a multitrack Opus message.
	audio := []byte{audioExHdr<<4 | audioExModEx, 0, 9, 0<<4 | audioExMultitrack, multitrackMany<<4 | audioExCodedFrames, 'O', 'p', 'u', 's', 0, 0, 0, 1, 0xFC, 1, 0, 0, 1, 0xFD}
	m, err = ParseEx(TypeAudio, audio, nil)
	if err != nil || len(m.Packets) != 2 || m.Packets[1].Track != 1 || m.Packets[1].Data[0] != 0xFD {
		t.Fatalf("audio: %+v %v", m, err)
	}
}

func TestParseExRejectsMalformed(t *testing.T) {
	for name, body := range map[string][]byte{
		"track size past end": mtVideo(1, multitrackMany, exCodedFrames, mtTrack{"av01", 0, []byte{1}})[:9],
		"modex past end":      {0x80 | exModEx, 5, 1},
		"no fourcc":           {0x80 | 1<<4 | exCodedFrames, 'a', 'v'},
		"multitrack type 3":   {0x80 | exMultitrack, 3<<4 | exCodedFrames, 'a', 'v', '0', '1', 0},
		"nested multitrack":   {0x80 | exMultitrack, 1<<4 | exMultitrack, 'a', 'v', '0', '1', 0},
		"no tracks":           {0x80 | exMultitrack, 1<<4 | exCodedFrames, 'a', 'v', '0', '1'},
	} {
		if _, err := ParseEx(TypeVideo, body, nil); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err %v, want ErrMalformed", name, err)
		}
	}
	if _, err := ParseEx(TypeVideo, []byte{0x17, 0}, nil); !errors.Is(err, ErrNotEnhanced) {
		t.Errorf("legacy AVC: %v", err)
	}
}

func TestAppendSingleTrack(t *testing.T) {
	cases := []struct {
		name  string
		typ   byte
		frame uint8
		p     ExPacket
		want  []byte
	}{
		{"avc header", TypeVideo, 1, ExPacket{PacketType: exSequenceStart, FourCC: [4]byte{'a', 'v', 'c', '1'}, Data: []byte{1, 0x64}},
			[]byte{0x17, 0, 0, 0, 0, 1, 0x64}},
		{"avc coded", TypeVideo, 2, ExPacket{PacketType: exCodedFrames, FourCC: [4]byte{'a', 'v', 'c', '1'}, Data: []byte{0, 0, 40, 9}},
			[]byte{0x27, 1, 0, 0, 40, 9}},
		{"avc codedX", TypeVideo, 1, ExPacket{PacketType: exCodedFramesX, FourCC: [4]byte{'a', 'v', 'c', '1'}, Data: []byte{9}},
			[]byte{0x17, 1, 0, 0, 0, 9}},
		{"av1 key", TypeVideo, 1, ExPacket{Track: 1, PacketType: exCodedFrames, FourCC: [4]byte{'a', 'v', '0', '1'}, Data: []byte{0x12, 0}},
			[]byte{0x91, 'a', 'v', '0', '1', 0x12, 0}},
		{"aac", TypeAudio, 0, ExPacket{PacketType: audioExSequenceStrt, FourCC: [4]byte{'m', 'p', '4', 'a'}, Data: []byte{0x12, 0x10}},
			[]byte{0xAF, 0, 0x12, 0x10}},
		{"opus", TypeAudio, 0, ExPacket{PacketType: 1, FourCC: [4]byte{'O', 'p', 'u', 's'}, Data: []byte{0xFC}},
			[]byte{0x91, 'O', 'p', 'u', 's', 0xFC}},
	}
	for _, c := range cases {
		got := AppendSingleTrack(nil, c.typ, c.frame, c.p)
		if !bytes.Equal(got, c.want) || SingleTrackSize(c.typ, c.p) != len(got) {
			t.Errorf("%s: %x (size %d), want %x", c.name, got, SingleTrackSize(c.typ, c.p), c.want)
		}
	}
}

// FuzzParseEx: no input panics; every packet lies inside the body; a packet written
// back as a single-track tag body parses to the same packet (or is legacy AVC/AAC).
func FuzzParseEx(f *testing.F) {
	f.Add(byte(TypeVideo), mtVideo(1, multitrackMany, exCodedFrames, mtTrack{"av01", 0, []byte{1, 2, 3}}, mtTrack{"av01", 1, []byte{4}}))
	f.Add(byte(TypeVideo), mtVideo(1, multitrackManyCodecs, exSequenceStart, mtTrack{"hvc1", 0, []byte{9}}, mtTrack{"avc1", 2, []byte{8}}))
	f.Add(byte(TypeVideo), []byte{0x80 | 1<<4 | exModEx, 2, 0, 1, 2, exCodedFramesX, 'h', 'v', 'c', '1', 0xAA})
	f.Add(byte(TypeAudio), []byte{audioExHdr<<4 | audioExMultitrack, multitrackOne<<4 | 1, 'O', 'p', 'u', 's', 0, 0xFC})
	f.Add(byte(TypeVideo), []byte{0x17, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, typ byte, body []byte) {
		typ = []byte{TypeAudio, TypeVideo}[typ&1]
		_ = Classify(typ, body)
		_ = IsMultitrack(typ, body)
		m, err := ParseEx(typ, body, nil)
		if err != nil {
			return
		}
		for _, p := range m.Packets {
			if len(p.Data) > len(body) {
				t.Fatalf("packet data %d bytes from a %d-byte body", len(p.Data), len(body))
			}
			out := AppendSingleTrack(nil, typ, m.FrameType, p)
			if len(out) != SingleTrackSize(typ, p) {
				t.Fatalf("size %d, SingleTrackSize %d", len(out), SingleTrackSize(typ, p))
			}
			if legacyForm(typ, p) {
				continue
			}
			back, err := ParseEx(typ, out, nil)
			if err != nil {
				t.Fatalf("single-track form of %+v does not parse: %v", p, err)
			}
			q := back.Packets[0]
			if back.Multitrack || q.PacketType != p.PacketType || q.FourCC != p.FourCC || !bytes.Equal(q.Data, p.Data) {
				t.Fatalf("round trip %+v -> %+v", p, q)
			}
		}
	})
}

func TestMediaInfoListsMultitrackTracks(t *testing.T) {
	var m MediaInfo
	for _, b := range [][]byte{
		mtVideo(1, multitrackOne, exSequenceStart, mtTrack{"vp09", 1, []byte{1}}),
		mtVideo(1, multitrackOne, exSequenceStart, mtTrack{"av01", 0, []byte{1}}),
	} {
		_, tag := NewTag(0, TypeVideo, 0, b)
		m.Observe(tag)
	}
	_, opus := NewTag(0, TypeAudio, 0, []byte{audioExHdr<<4 | audioExModEx, 0, 1, 0, 'O', 'p', 'u', 's', 1})
	m.Observe(opus)
	if m.Video == nil || m.Video.Codec != "av1" || len(m.Tracks) != 2 || m.Tracks[0] != (TrackInfo{0, "av1"}) || m.Tracks[1] != (TrackInfo{1, "vp9"}) {
		t.Fatalf("video %+v tracks %+v", m.Video, m.Tracks)
	}
	if m.Audio == nil || m.Audio.Codec != "opus" {
		t.Fatalf("audio %+v", m.Audio)
	}
	c := m.Clone()
	c.Tracks[0].Codec = "x"
	if m.Tracks[0].Codec != "av1" {
		t.Fatal("Clone shares Tracks")
	}
}

func TestMetadataFourCCCodecIDs(t *testing.T) {
	var m MediaInfo
	m.fromMetadata(Metadata{"videocodecid": float64(0x61763031), "audiocodecid": float64(0x4F707573), "width": 640.0})
	if m.Video.Codec != "av1" || m.Audio.Codec != "opus" || m.Video.Width != 640 {
		t.Fatalf("%+v %+v", m.Video, m.Audio)
	}
}
