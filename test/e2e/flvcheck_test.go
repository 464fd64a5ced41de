package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// The checker must be able to fail: each broken stream below is one the scenarios would
// otherwise wave through.

func metadataBody(audio, video bool) []byte {
	var b bytes.Buffer
	str := func(s string) { binary.Write(&b, binary.BigEndian, uint16(len(s))); b.WriteString(s) }
	num := func(k string, v float64) {
		str(k)
		b.WriteByte(0)
		binary.Write(&b, binary.BigEndian, math.Float64bits(v))
	}
	b.WriteByte(2)
	str("onMetaData")
	b.WriteByte(8)
	binary.Write(&b, binary.BigEndian, uint32(2))
	if video {
		num("videocodecid", 7)
	}
	if audio {
		num("audiocodecid", 10)
	}
	str("")
	b.WriteByte(9)
	return b.Bytes()
}

type synth struct {
	flags byte
	tags  [][]byte
}

func (s *synth) add(typ byte, ts uint32, body ...byte) *synth {
	_, t := flv.NewTag(0, typ, ts, body)
	s.tags = append(s.tags, t)
	return s
}

func (s *synth) bytes() []byte {
	out := flv.FileHeader(s.flags&flv.FlagAudio != 0, s.flags&flv.FlagVideo != 0)
	for _, t := range s.tags {
		out = append(out, t...)
	}
	return out
}

const (
	avcHeader = 0x17 // keyframe + AVC, then packet type 0
	avcKey    = 0x17 // keyframe + AVC, then packet type 1
	avcInter  = 0x27 // inter frame + AVC
	aac       = 0xAF
)

// goodAV is a join-shaped stream: metadata, headers, keyframe, frames.
func goodAV() *synth {
	s := &synth{flags: flv.FlagAudio | flv.FlagVideo}
	s.add(flv.TypeScript, 0, metadataBody(true, true)...)
	s.add(flv.TypeVideo, 1000, avcHeader, 0, 0, 0, 0, 1)
	s.add(flv.TypeAudio, 1000, aac, 0, 0x12, 0x10)
	s.add(flv.TypeVideo, 1000, avcKey, 1, 0, 0, 0, 0xAA)
	s.add(flv.TypeAudio, 1010, aac, 1, 0xBB)
	s.add(flv.TypeVideo, 1040, avcInter, 1, 0, 0, 0, 0xCC)
	s.add(flv.TypeAudio, 1033, aac, 1, 0xBB)
	s.add(flv.TypeVideo, 1080, avcInter, 1, 0, 0, 0, 0xCC)
	return s
}

func TestCheckerAcceptsAJoin(t *testing.T) {
	c := &Checker{WantAudio: true, WantVideo: true}
	err := CheckReader(bytes.NewReader(goodAV().bytes()), c, 0)
	if !errors.Is(err, io.EOF) {
		t.Fatalf("got %v, want io.EOF at the end of a good stream", err)
	}
	r := c.Report()
	if r.Tags != 8 || r.Video != 4 || r.Audio != 3 || r.Keyframes != 1 || r.VideoHeaders != 1 || r.AudioHeaders != 1 || r.Metadata != 1 {
		t.Errorf("counts: %s", r)
	}
	if r.MaxVideoStep != 40 || r.VideoAfterKey != 3 {
		t.Errorf("MaxVideoStep %d VideoAfterKey %d", r.MaxVideoStep, r.VideoAfterKey)
	}
}

func TestCheckerRefuses(t *testing.T) {
	tests := []struct {
		name                 string
		wantAudio, wantVideo bool
		stream               func() []byte
		want                 string
	}{
		{"flags", true, false, func() []byte { return goodAV().bytes() }, "header flags 0x05, want 0x04"},
		{"no metadata first", true, true, func() []byte {
			s := goodAV()
			s.tags = s.tags[1:]
			return s.bytes()
		}, "want onMetaData"},
		{"no video header", true, true, func() []byte {
			s := goodAV()
			s.tags = append(s.tags[:1], s.tags[2:]...)
			return s.bytes()
		}, "first video tag is keyframe, want a sequence header"},
		{"inter frame before keyframe", true, true, func() []byte {
			s := goodAV()
			s.tags = append(s.tags[:3], s.tags[5:]...)
			return s.bytes()
		}, "inter frame at 1040 ms before the first keyframe"},
		{"audio before keyframe", true, true, func() []byte {
			s := &synth{flags: 5}
			s.add(flv.TypeScript, 0, metadataBody(true, true)...)
			s.add(flv.TypeVideo, 0, avcHeader, 0, 0, 0, 0, 1)
			s.add(flv.TypeAudio, 0, aac, 0, 0x12, 0x10)
			s.add(flv.TypeAudio, 990, aac, 1, 0xBB)
			s.add(flv.TypeVideo, 1000, avcKey, 1, 0, 0, 0, 0xAA)
			return s.bytes()
		}, "audio frame at 990 ms before the first video keyframe"},
		{"video backwards", true, true, func() []byte {
			return goodAV().add(flv.TypeVideo, 1079, avcInter, 1, 0, 0, 0, 0xCC).bytes()
		}, "video timestamp went back from 1080 to 1079"},
		{"audio backwards", true, true, func() []byte {
			return goodAV().add(flv.TypeAudio, 1000, aac, 1, 0xBB).bytes()
		}, "audio timestamp went back from 1033 to 1000"},
		{"extended timestamp backwards", false, true, func() []byte {
			s := &synth{flags: 1}
			s.add(flv.TypeScript, 0, metadataBody(false, true)...)
			s.add(flv.TypeVideo, 0x1000000, avcHeader, 0, 0, 0, 0, 1)
			s.add(flv.TypeVideo, 0x1000000, avcKey, 1, 0, 0, 0, 0xAA)
			s.add(flv.TypeVideo, 0xFFFFF0, avcInter, 1, 0, 0, 0, 0xCC)
			return s.bytes()
		}, "went back from 16777216 to 16777200"},
		{"audio in video-only", false, true, func() []byte {
			s := goodAV()
			s.flags = flv.FlagVideo
			return s.bytes()
		}, "audio tag in a stream announced without audio"},
		{"PreviousTagSize", true, true, func() []byte {
			b := goodAV().bytes()
			b[len(b)-1]++
			return b
		}, "PreviousTagSize"},
		{"truncated", true, true, func() []byte {
			b := goodAV().bytes()
			return b[:len(b)-3]
		}, "truncated"},
		{"stream id", true, true, func() []byte {
			s := goodAV()
			s.tags[2][9] = 1
			return s.bytes()
		}, "stream id"},
		{"tag type", true, true, func() []byte { return goodAV().add(7, 2000, 1, 2, 3).bytes() }, "tag type 7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckReader(bytes.NewReader(tc.stream()), &Checker{WantAudio: tc.wantAudio, WantVideo: tc.wantVideo}, 0)
			if err == nil || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestCheckerStopsAtMaxTags(t *testing.T) {
	c := &Checker{WantAudio: true, WantVideo: true}
	if err := CheckReader(bytes.NewReader(goodAV().bytes()), c, 4); err != nil {
		t.Fatal(err)
	}
	if c.Report().Tags != 4 {
		t.Fatalf("read %d tags, want 4", c.Report().Tags)
	}
}

// The checker accepts what ffmpeg itself writes: a file is a stream joined at its start.
func TestCheckerAcceptsFFmpegFiles(t *testing.T) {
	for _, tc := range []struct {
		kind                 mediaKind
		wantAudio, wantVideo bool
	}{{mediaAV, true, true}, {mediaAudio, true, false}, {mediaVideo, false, true}} {
		t.Run(string(tc.kind), func(t *testing.T) {
			b, err := os.ReadFile(makeMedia(t, tc.kind))
			if err != nil {
				t.Fatal(err)
			}
			c := &Checker{WantAudio: tc.wantAudio, WantVideo: tc.wantVideo}
			if err := CheckReader(bytes.NewReader(b), c, 0); !errors.Is(err, io.EOF) {
				t.Fatalf("%v (%s)", err, c.Report())
			}
			r := c.Report()
			t.Logf("%s", r)
			if tc.wantVideo && (r.Keyframes != 10 || r.Video < 250) {
				t.Errorf("10 s at 25 fps with -g 25: %s", r)
			}
		})
	}
}
