package probe

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// Synthetic streams: each test builds one, breaks it in one way, and checks that the
// checker names that break. Tags carry the wall-clock time they "arrive" at, so the
// timing rules are tested without sleeping.

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type stag struct {
	typ  byte
	ts   uint32
	at   time.Duration // arrival, from t0
	body []byte
	sid  uint32
}

type synth struct {
	flags byte
	tags  []stag
}

var (
	avcHeader = []byte{0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f}
	avcKey    = []byte{0x17, 1, 0, 0, 0, 0xAA}
	avcInter  = []byte{0x27, 1, 0, 0, 0, 0xCC}
	aacHeader = []byte{0xAF, 0, 0x12, 0x10}
	aacFrame  = []byte{0xAF, 1, 0x21}
)

// metadata is a minimal onMetaData script body (an empty ECMA array).
func metadata() []byte {
	b := append([]byte{2, 0, 10}, "onMetaData"...)
	return append(b, 8, 0, 0, 0, 0, 0, 0, 9)
}

func (s *synth) add(typ byte, ts uint32, at time.Duration, body []byte) *synth {
	s.tags = append(s.tags, stag{typ: typ, ts: ts, at: at, body: body})
	return s
}

// live is a join-shaped A/V stream: metadata, headers, then secs seconds of 25 fps
// video (a keyframe per second) and audio every 23 ms, arriving in real time.
func live(secs int) *synth {
	s := &synth{flags: 5}
	s.add(TypeScript, 0, 0, metadata())
	s.add(TypeVideo, 0, 0, avcHeader)
	s.add(TypeAudio, 0, 0, aacHeader)
	s.media(0, secs*1000, 0)
	return s
}

// media appends video and audio from ts from to to (ms), arriving at ts+shift.
func (s *synth) media(from, to int, shift time.Duration) *synth {
	a := from
	for v := from; v < to; v += 40 {
		body := avcInter
		if v%1000 == 0 {
			body = avcKey
		}
		s.add(TypeVideo, uint32(v), time.Duration(v)*time.Millisecond+shift, body)
		for ; a < v+40; a += 23 {
			s.add(TypeAudio, uint32(a), time.Duration(a)*time.Millisecond+shift, aacFrame)
		}
	}
	return s
}

// videoOnly drops the audio of s.
func videoOnly(s *synth) *synth {
	out := &synth{flags: 1}
	for _, t := range s.tags {
		if t.typ != TypeAudio {
			out.tags = append(out.tags, t)
		}
	}
	return out
}

func (s *synth) bytes() []byte {
	out := []byte{'F', 'L', 'V', 1, s.flags, 0, 0, 0, 9, 0, 0, 0, 0}
	for _, t := range s.tags {
		n := len(t.body)
		out = append(out, t.typ, byte(n>>16), byte(n>>8), byte(n),
			byte(t.ts>>16), byte(t.ts>>8), byte(t.ts), byte(t.ts>>24), byte(t.sid>>16), byte(t.sid>>8), byte(t.sid))
		out = append(out, t.body...)
		m := n + 11
		out = append(out, byte(m>>24), byte(m>>16), byte(m>>8), byte(m))
	}
	return out
}

// feed runs the stream through a Checker on the synthetic clock and returns the
// checker and its first violation (Finish included).
func (s *synth) feed(o Options) (*Checker, error) {
	c := New(o, t0)
	c.Responded(t0, 200, "video/x-flv")
	if err := c.Header(t0, s.flags); err != nil {
		return c, err
	}
	var last time.Duration
	for _, t := range s.tags {
		last = t.at
		if err := c.Tag(t0.Add(t.at), t.typ, t.ts, t.sid, t.body); err != nil {
			return c, err
		}
	}
	return c, c.Finish(t0.Add(last))
}

func wantViolation(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil || !errors.Is(err, ErrViolation) || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want a violation containing %q", err, want)
	}
}

func TestAcceptsALiveStream(t *testing.T) {
	c, err := live(12).feed(Options{Strict: true, Expect: &Tracks{Audio: true, Video: true}})
	if err != nil {
		t.Fatal(err)
	}
	r := c.Report()
	t.Log(r)
	if r.Keyframes != 12 || r.Video != 301 || r.Metadata != 1 || r.VideoHeaders != 1 || r.AudioHeaders != 1 {
		t.Errorf("counts: %s", r)
	}
	if r.FPS != 25 || time.Duration(r.KeyframeInterval) != time.Second {
		t.Errorf("fps %v keyframe interval %v, want 25 and 1s", r.FPS, r.KeyframeInterval)
	}
	if r.RateWindows == 0 || r.RateMin < 0.99 || r.RateMax > 1.01 || r.VideoRate != 1 || r.AudioRate != 1 {
		t.Errorf("rate: %s", r)
	}
	if time.Duration(r.AVDriftMax) > 50*time.Millisecond {
		t.Errorf("drift %v in an interleaved stream", r.AVDriftMax)
	}
	if r.VideoCodec != "avc" || r.AudioCodec != "aac" {
		t.Errorf("codecs %q %q", r.VideoCodec, r.AudioCodec)
	}
}

// A join: the server sends its GOP cache (a second of media) at once, then live.
func TestAcceptsAJoinBurst(t *testing.T) {
	s := &synth{flags: 5}
	s.add(TypeScript, 5000, 0, metadata()).add(TypeVideo, 5000, 0, avcHeader).add(TypeAudio, 5000, 0, aacHeader)
	for v := 5000; v < 6000; v += 40 { // the cached GOP, all at 10 ms
		body := avcInter
		if v == 5000 {
			body = avcKey
		}
		s.add(TypeVideo, uint32(v), 10*time.Millisecond, body)
		s.add(TypeAudio, uint32(v), 10*time.Millisecond, aacFrame)
	}
	s.media(6000, 14000, -6000*time.Millisecond+10*time.Millisecond+time.Second)
	if _, err := s.feed(Options{Strict: true}); err != nil {
		t.Fatal(err)
	}
}

func TestAcceptsASpliceThatStartsAtAKeyframe(t *testing.T) {
	s := live(3)
	s.add(TypeVideo, 3000, 3000*time.Millisecond, avcHeader).add(TypeAudio, 3000, 3000*time.Millisecond, aacHeader)
	s.media(3000, 9000, 0)
	if _, err := s.feed(Options{}); err != nil {
		t.Fatal(err)
	}
}

func TestRejects(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name   string
		o      Options
		stream func() *synth
		want   string
	}{
		{"flags announce no audio", Options{}, func() *synth { s := live(2); s.flags = 1; return s }, "audio tag in a stream whose header (flags 0x01) announces no audio"},
		{"flags announce no video", Options{}, func() *synth { s := live(2); s.flags = 4; return s }, "video tag in a stream whose header (flags 0x04) announces no video"},
		{"flags announce audio never sent", Options{}, func() *synth {
			s := &synth{flags: 5}
			for _, t := range live(3).tags {
				if t.typ != TypeAudio {
					s.tags = append(s.tags, t)
				}
			}
			return s
		}, "announce audio, but no audio frame came"},
		{"flags announce audio, only its sequence header comes", Options{}, func() *synth {
			s := &synth{flags: 5}
			for _, t := range live(3).tags {
				if t.typ != TypeAudio || t.body[1] == 0 {
					s.tags = append(s.tags, t)
				}
			}
			return s
		}, "announce audio, but no audio frame came in 2960 ms of video"},
		{"flags not the expected tracks", Options{Expect: &Tracks{Video: true}}, func() *synth { return live(1) }, "header flags 0x05, want 0x01"},
		{"reserved flag bits", Options{}, func() *synth { s := live(1); s.flags = 0x25; return s }, "reserved bits"},
		{"video timestamps back", Options{}, func() *synth {
			return live(2).add(TypeVideo, 1900, 2000*ms, avcInter)
		}, "video timestamp went back from 1960 to 1900"},
		{"audio timestamps back", Options{}, func() *synth {
			return live(2).add(TypeAudio, 1500, 2000*ms, aacFrame)
		}, "audio timestamp went back from 1978 to 1500"},
		{"extended timestamps back", Options{}, func() *synth {
			s := &synth{flags: 1}
			s.add(TypeVideo, 0x1000000, 0, avcHeader).add(TypeVideo, 0x1000000, 0, avcKey).add(TypeVideo, 0xFFFFF0, 40*ms, avcInter)
			return s
		}, "went back from 16777216 to 16777200"},
		{"inter frame at the start", Options{}, func() *synth {
			s := &synth{flags: 5}
			s.add(TypeVideo, 960, 0, avcHeader).add(TypeAudio, 960, 0, aacHeader).add(TypeVideo, 960, 0, avcInter)
			return s.media(1000, 3000, -960*ms)
		}, "video inter frame at 960 ms before the first keyframe"},
		{"inter frame after a splice", Options{}, func() *synth {
			s := live(2)
			s.add(TypeVideo, 2000, 2000*ms, avcHeader).add(TypeVideo, 2040, 2040*ms, avcInter)
			return s
		}, "after the sequence header of tag #"},
		{"AVC keyframe without a sequence header", Options{}, func() *synth {
			s := &synth{flags: 1}
			return s.add(TypeVideo, 0, 0, avcKey)
		}, "avc keyframe at 0 ms before any avc sequence header"},
		{"HEVC (Enhanced RTMP) keyframe without a sequence header", Options{}, func() *synth {
			s := &synth{flags: 1}
			return s.add(TypeVideo, 0, 0, []byte{0x90 | 1, 'h', 'v', 'c', '1', 0, 0, 0, 1})
		}, "hevc keyframe at 0 ms before any hevc sequence header"},
		{"AV1 keyframe without a sequence header", Options{}, func() *synth {
			s := &synth{flags: 1}
			return s.add(TypeVideo, 0, 0, []byte{0x90 | 1, 'a', 'v', '0', '1', 1})
		}, "av1 keyframe at 0 ms"},
		{"VP9 keyframe without a sequence header", Options{}, func() *synth {
			s := &synth{flags: 1}
			return s.add(TypeVideo, 0, 0, []byte{0x90 | 3, 'v', 'p', '0', '9', 1})
		}, "vp9 keyframe at 0 ms"},
		{"AAC frame without its AudioSpecificConfig", Options{}, func() *synth {
			s := &synth{flags: 4}
			return s.add(TypeAudio, 0, 0, aacFrame)
		}, "aac audio frame at 0 ms before its sequence header"},
		{"timestamps stand still", Options{}, func() *synth {
			s := videoOnly(live(2))
			for i := 1; i <= 200; i++ {
				s.add(TypeVideo, 1960, 2000*ms+time.Duration(i)*40*ms, avcInter)
			}
			return s
		}, "video media time advanced 960ms in 5s of wall clock (rate 0.19"},
		{"media time runs 30% fast", Options{}, func() *synth {
			s := videoOnly(live(1))
			for v := 1000; v < 13000; v += 40 { // 52 ms of media every 40 ms of wall
				s.add(TypeVideo, uint32(1000+(v-1000)*13/10), time.Duration(v)*ms, avcInter)
			}
			return s
		}, "rate 1.30"},
		{"media time runs 30% slow", Options{}, func() *synth {
			s := &synth{flags: 4}
			s.add(TypeAudio, 0, 0, aacHeader)
			for a := 0; a < 12000; a += 23 {
				s.add(TypeAudio, uint32(a*7/10), time.Duration(a)*ms, aacFrame)
			}
			return s
		}, "rate 0.70"},
		{"audio and video drift apart", Options{}, func() *synth {
			s := live(2)
			// From 2 s on, audio timestamps lag 1.5 s behind video at the same arrival.
			a := 2000
			for v := 2000; v < 5000; v += 40 {
				s.add(TypeVideo, uint32(v), time.Duration(v)*ms, avcInter)
				for ; a < v+40; a += 23 {
					s.add(TypeAudio, uint32(a-1500), time.Duration(a)*ms, aacFrame)
				}
			}
			return s
		}, "audio timestamp went back"},
		{"audio drifts slowly behind", Options{}, func() *synth {
			s := live(2)
			// Audio timestamps advance at 0.8x from 2 s on (within the rate tolerance
			// for the first window), video at 1x: the gap grows past 1 s.
			a := 2000
			for v := 2000; v < 9000; v += 40 {
				s.add(TypeVideo, uint32(v), time.Duration(v)*ms, avcInter)
				for ; a < v+40; a += 23 {
					s.add(TypeAudio, uint32(2000+(a-2000)*8/10), time.Duration(a)*ms, aacFrame)
				}
			}
			return s
		}, "audio and video drifted apart by"},
		{"stall", Options{}, func() *synth {
			return live(2).media(2000, 3000, 3500*ms)
		}, "stall: waited 3.522s for the next tag (max 3s)"},
		{"stall at a lower -max-stall", Options{MaxStall: time.Second}, func() *synth {
			return live(2).media(2000, 3000, 1500*ms)
		}, "stall: waited 1.522s for the next tag (max 1s)"},
		{"audio track stalls while video plays", Options{}, func() *synth {
			s := live(2)
			for v := 2000; v < 6000; v += 40 {
				s.add(TypeVideo, uint32(v), time.Duration(v)*ms, avcInter)
			}
			return s
		}, "audio stalled: no audio tag for"},
		{"strict: metadata first", Options{Strict: true}, func() *synth {
			s := live(1)
			s.tags = s.tags[1:]
			return s
		}, "first tag is video/video-header@0, want onMetaData"},
		{"strict: audio before the first keyframe", Options{Strict: true}, func() *synth {
			s := &synth{flags: 5}
			s.add(TypeScript, 0, 0, metadata()).add(TypeVideo, 0, 0, avcHeader).add(TypeAudio, 0, 0, aacHeader)
			s.add(TypeAudio, 990, 0, aacFrame).add(TypeVideo, 1000, 0, avcKey)
			return s
		}, "audio frame at 990 ms before the first video keyframe"},
		{"stream id", Options{}, func() *synth { s := live(1); s.tags[4].sid = 1; return s }, "stream id 1, want 0"},
		{"tag type", Options{}, func() *synth { return live(1).add(7, 1000, time.Second, []byte{1}) }, "tag type 7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.stream().feed(tc.o)
			wantViolation(t, err, tc.want)
			if r := c.Report(); r.Violation != err.Error() {
				t.Errorf("report violation %q, want %q", r.Violation, err)
			}
		})
	}
}

// watchBytes runs Watch over b (as if it all arrived at once) with a short stall limit.
func watchBytes(t *testing.T, b []byte, o Options) (*Checker, error) {
	t.Helper()
	if o.MaxStall == 0 {
		o.MaxStall = time.Second
	}
	c := New(o, time.Now())
	c.Responded(time.Now(), 200, "video/x-flv")
	err := Watch(context.Background(), io.NopCloser(bytes.NewReader(b)), c)
	return c, err
}

func TestWatchRejectsLayout(t *testing.T) {
	good := live(1).bytes()
	tests := []struct {
		name  string
		bytes []byte
		want  string
	}{
		{"empty 200", nil, "no FLV header"},
		{"only the FLV header", good[:13], "only the FLV header, no tag"},
		{"half a header", good[:5], "FLV header cut after 5 bytes"},
		{"not FLV", []byte("<html>not found</html>"), "not an FLV signature"},
		{"version", append([]byte{'F', 'L', 'V', 2}, good[4:]...), "FLV version 2"},
		{"PreviousTagSize0", append(append(append([]byte{}, good[:9]...), 0, 0, 0, 1), good[13:]...), "PreviousTagSize 1, want 0"},
		{"PreviousTagSize chain", func() []byte { b := bytes.Clone(good); b[len(b)-1]++; return b }(), "PreviousTagSize"},
		{"truncated tag", good[:len(good)-7], "stream cut inside"},
		{"encrypted tag", func() []byte { b := bytes.Clone(good); b[13] |= 0x20; return b }(), "Filter bit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := watchBytes(t, tc.bytes, Options{})
			wantViolation(t, err, tc.want)
			if c.Report().Violation == "" {
				t.Errorf("report has no violation")
			}
		})
	}
}

func TestWatchEndAndStop(t *testing.T) {
	// A whole stream then EOF: ended, not a violation.
	c, err := watchBytes(t, live(1).bytes(), Options{})
	if !errors.Is(err, ErrEnded) || errors.Is(err, ErrViolation) {
		t.Fatalf("got %v, want ErrEnded", err)
	}
	if r := c.Report(); r.Tags == 0 || r.Violation != "" {
		t.Fatalf("report %s", r)
	}

	// A 200 that sends nothing and holds the connection: a stall, found by the timer.
	pr, pw := io.Pipe()
	defer pw.Close()
	c = New(Options{MaxStall: 200 * time.Millisecond}, time.Now())
	began := time.Now()
	err = Watch(context.Background(), pr, c)
	wantViolation(t, err, "for the FLV header")
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("stall noticed after %v", took)
	}

	// The caller stops while tags flow: no error.
	pr, pw = io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	c = New(Options{}, time.Now())
	go func() {
		b := live(1).bytes()
		if _, err := pw.Write(b[:len(b)/2]); err == nil {
			cancel()
		}
	}()
	if err := Watch(ctx, pr, c); err != nil {
		t.Fatalf("stopped by the caller: %v", err)
	}
	pw.Close()
}

func TestOnTagSeesEveryTag(t *testing.T) {
	var kinds []string
	_, err := watchBytes(t, live(1).bytes(), Options{OnTag: func(tg Tag) { kinds = append(kinds, tg.Kind.String()) }})
	if !errors.Is(err, ErrEnded) {
		t.Fatal(err)
	}
	if len(kinds) < 4 || strings.Join(kinds[:4], ",") != "metadata,video-header,audio-header,keyframe" {
		t.Fatalf("kinds %v", kinds)
	}
}

func TestClassify(t *testing.T) {
	setData := append(append([]byte{2, 0, 13}, "@setDataFrame"...), append(append([]byte{2, 0, 10}, "onMetaData"...), 3, 0, 0, 9)...)
	tests := []struct {
		typ   byte
		body  []byte
		kind  Kind
		codec string
	}{
		{TypeVideo, avcHeader, KindVideoHeader, "avc"},
		{TypeVideo, avcKey, KindKeyframe, "avc"},
		{TypeVideo, avcInter, KindInter, "avc"},
		{TypeVideo, []byte{0x37, 1, 0, 0, 0}, KindInter, "avc"},           // disposable inter
		{TypeVideo, []byte{0x17, 2, 0, 0, 0}, KindVideoInfo, "avc"},       // end of sequence
		{TypeVideo, []byte{0x57, 0}, KindVideoInfo, "avc"},                // info/command frame
		{TypeVideo, []byte{0x1C, 0, 0, 0, 0, 1}, KindVideoHeader, "hevc"}, // legacy codec id 12
		{TypeVideo, []byte{0x2C, 1, 0, 0, 0, 1}, KindInter, "hevc"},
		{TypeVideo, []byte{0x12, 0xAB}, KindKeyframe, "h263"},
		{TypeVideo, []byte{0x90, 'h', 'v', 'c', '1', 1}, KindVideoHeader, "hevc"},
		{TypeVideo, []byte{0x93, 'h', 'v', 'c', '1', 1}, KindKeyframe, "hevc"}, // CodedFramesX
		{TypeVideo, []byte{0xA1, 'h', 'v', 'c', '1', 0, 0, 0, 1}, KindInter, "hevc"},
		{TypeVideo, []byte{0x90, 'a', 'v', '0', '1', 1}, KindVideoHeader, "av1"},
		{TypeVideo, []byte{0xA1, 'a', 'v', '0', '1', 1}, KindInter, "av1"},
		{TypeVideo, []byte{0x90, 'v', 'p', '0', '9', 1}, KindVideoHeader, "vp9"},
		{TypeVideo, []byte{0x91, 'v', 'p', '0', '9', 1}, KindKeyframe, "vp9"},
		{TypeVideo, []byte{0x92, 'v', 'p', '0', '9'}, KindVideoInfo, "vp9"}, // SequenceEnd
		{TypeVideo, []byte{0xD0, 1}, KindVideoInfo, ""},                     // ex command frame
		{TypeVideo, []byte{0x96, 'x'}, KindOther, ""},                       // multitrack: not judged
		{TypeVideo, []byte{0x91, 'z', 'z', 'z', 'z'}, KindOther, "zzzz"},
		{TypeAudio, aacHeader, KindAudioHeader, "aac"},
		{TypeAudio, aacFrame, KindAudio, "aac"},
		{TypeAudio, []byte{0x2F, 0xFF}, KindAudio, "mp3"},
		{TypeAudio, []byte{0x90, 'm', 'p', '4', 'a', 0x12}, KindAudioHeader, "aac"},
		{TypeAudio, []byte{0x91, 'O', 'p', 'u', 's', 1}, KindAudio, "opus"},
		{TypeScript, metadata(), KindMetadata, ""},
		{TypeScript, setData, KindMetadata, ""},
		{TypeScript, append([]byte{2, 0, 10}, "onCuePoint"...), KindScript, ""},
		{TypeVideo, nil, KindOther, ""},
	}
	for _, tc := range tests {
		got := Classify(tc.typ, tc.body)
		if got.Kind != tc.kind || got.Codec != tc.codec {
			t.Errorf("Classify(%d, % x) = %v %q, want %v %q", tc.typ, tc.body, got.Kind, got.Codec, tc.kind, tc.codec)
		}
	}
}

// enhancedLive is live() with Enhanced RTMP video of fourcc and audio of the given
// header and frame bodies: sequence starts after metadata, then CodedFrames.
func enhancedLive(secs int, fourcc string, aHeader, aFrame []byte) *synth {
	hdr := append([]byte{0x90}, fourcc...)   // key | SequenceStart
	key := append([]byte{0x91}, fourcc...)   // key | CodedFrames
	inter := append([]byte{0xA1}, fourcc...) // inter | CodedFrames
	if fourcc == "hvc1" || fourcc == "avc1" {
		key, inter = append(key, 0, 0, 0), append(inter, 0, 0, 0) // composition time
	}
	s := &synth{flags: 5}
	s.add(TypeScript, 0, 0, metadata())
	s.add(TypeVideo, 0, 0, append(hdr, 1, 2, 3))
	s.add(TypeAudio, 0, 0, aHeader)
	for v, a := 0, 0; v < secs*1000; v += 40 {
		body := inter
		if v%1000 == 0 {
			body = key
		}
		s.add(TypeVideo, uint32(v), time.Duration(v)*time.Millisecond, append(body, 0xEE))
		for ; a < v+40; a += 20 {
			s.add(TypeAudio, uint32(a), time.Duration(a)*time.Millisecond, aFrame)
		}
	}
	return s
}

var (
	opusHeader = append([]byte{0x90, 'O', 'p', 'u', 's'}, "OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00"...)
	opusFrame  = []byte{0x91, 'O', 'p', 'u', 's', 0xFC, 0xFF}
)

// Every Enhanced codec: a join-shaped stream conforms, and the probe names a
// keyframe before its sequence header and an inter frame before the first keyframe.
func TestEnhancedCodecsJoinOrder(t *testing.T) {
	for _, c := range []struct {
		fourcc, video   string
		aHeader, aFrame []byte
		audio           string
	}{
		{"hvc1", "hevc", aacHeader, aacFrame, "aac"},
		{"av01", "av1", opusHeader, opusFrame, "opus"},
		{"vp09", "vp9", opusHeader, opusFrame, "opus"},
	} {
		t.Run(c.video, func(t *testing.T) {
			ch, err := enhancedLive(8, c.fourcc, c.aHeader, c.aFrame).feed(Options{Strict: true, MaxStall: time.Second})
			if err != nil {
				t.Fatalf("conforming %s stream: %v", c.video, err)
			}
			r := ch.Report()
			if r.VideoCodec != c.video || r.AudioCodec != c.audio || r.Keyframes != 8 || r.RateWindows == 0 {
				t.Fatalf("report %s", r)
			}

			noHeader := enhancedLive(2, c.fourcc, c.aHeader, c.aFrame)
			noHeader.tags = append(noHeader.tags[:1], noHeader.tags[2:]...)
			_, err = noHeader.feed(Options{Strict: true, MaxStall: time.Second})
			wantViolation(t, err, c.video+" keyframe at 0 ms before any "+c.video+" sequence header")

			midGOP := enhancedLive(2, c.fourcc, c.aHeader, c.aFrame)
			for i, tg := range midGOP.tags {
				if tg.typ == TypeVideo && tg.ts == 0 && i > 2 { // drop the first keyframe
					midGOP.tags = append(midGOP.tags[:i], midGOP.tags[i+1:]...)
					break
				}
			}
			_, err = midGOP.feed(Options{MaxStall: time.Second}) // not strict: audio may lead
			wantViolation(t, err, "video inter frame at 40 ms before the first keyframe")
		})
	}
}

func TestEnhancedModExAndMultitrack(t *testing.T) {
	// A keyframe behind a ModEx prefix (TimestampOffsetNano, 3 bytes) is a keyframe.
	modex := []byte{0x97, 2, 0, 1, 2, 0x01, 'a', 'v', '0', '1', 0xEE}
	if c := Classify(TypeVideo, modex); c.Kind != KindKeyframe || c.Codec != "av1" {
		t.Fatalf("ModEx keyframe: %+v", c)
	}
	if c := Classify(TypeAudio, []byte{0x97, 0, 9, 0x01, 'O', 'p', 'u', 's', 0xFC}); c.Kind != KindAudio || c.Codec != "opus" {
		t.Fatalf("ModEx Opus frame: %+v", c)
	}
	// A multitrack message (ManyTracks, av01) reaching a viewer breaks the contract.
	mt := []byte{0x96, 0x11, 'a', 'v', '0', '1', 0, 0, 0, 1, 0xEE, 1, 0, 0, 1, 0xEF}
	if c := Classify(TypeVideo, mt); !c.Multitrack || c.Kind != KindKeyframe || c.Codec != "av1" {
		t.Fatalf("multitrack keyframe: %+v", c)
	}
	s := enhancedLive(2, "av01", opusHeader, opusFrame)
	s.add(TypeVideo, 2000, 2*time.Second, mt)
	_, err := s.feed(Options{Strict: true, MaxStall: time.Second})
	wantViolation(t, err, "multitrack message")
}
