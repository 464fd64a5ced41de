package flv

import (
	"bytes"
	"errors"
	"io"
	"os"
	"slices"
	"testing"
)

func TestTagRoundTrip(t *testing.T) {
	var file bytes.Buffer
	file.Write(FileHeader(true, true))
	bodies := [][]byte{{0x17, 0, 0, 0, 0, 1, 2}, {0xAF, 1, 9, 9}, make([]byte, 70000)}
	stamps := []uint32{0, 40, 0x01FFFFFF} // the last one needs the extension byte
	for i, b := range bodies {
		_, tag := NewTag(5, TypeVideo, stamps[i], b)
		if err := tag.Check(); err != nil {
			t.Fatalf("tag %d: %v", i, err)
		}
		file.Write(tag)
	}
	r := NewReader(&file, 0)
	if err := r.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	if r.Flags != FlagAudio|FlagVideo {
		t.Fatalf("flags %#x", r.Flags)
	}
	for i, b := range bodies {
		tag, err := r.ReadTag()
		if err != nil {
			t.Fatalf("tag %d: %v", i, err)
		}
		if tag.Timestamp() != stamps[i] || !bytes.Equal(tag.Body(), b) || tag.Type() != TypeVideo {
			t.Fatalf("tag %d: ts %d type %d len %d", i, tag.Timestamp(), tag.Type(), len(tag.Body()))
		}
	}
	if _, err := r.ReadTag(); err != io.EOF {
		t.Fatalf("end: %v, want io.EOF", err)
	}
}

func TestFileHeaderFlags(t *testing.T) {
	for _, c := range []struct {
		a, v bool
		want byte
	}{{true, false, 0x04}, {false, true, 0x01}, {true, true, 0x05}, {false, false, 0}} {
		if got := FileHeader(c.a, c.v)[4]; got != c.want {
			t.Errorf("audio=%v video=%v: flags %#x, want %#x", c.a, c.v, got, c.want)
		}
	}
}

func TestReaderRejectsBadInput(t *testing.T) {
	_, good := NewTag(0, TypeAudio, 1, []byte{0xAF, 1, 2})
	bad := bytes.Clone(good)
	bad[len(bad)-1]++ // PreviousTagSize off by one
	cases := map[string]struct {
		data []byte
		want error
	}{
		"signature":      {append([]byte("FLX"), FileHeader(true, true)[3:]...), ErrSignature},
		"prevTagSize":    {append(FileHeader(true, false), bad...), ErrPrevTagSize},
		"truncated tag":  {append(FileHeader(true, false), good[:8]...), ErrShort},
		"truncated body": {append(FileHeader(true, false), good[:14]...), ErrShort},
	}
	for name, c := range cases {
		r := NewReader(bytes.NewReader(c.data), 0)
		err := r.ReadHeader()
		if err == nil {
			_, err = r.ReadTag()
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	big := append(FileHeader(false, true), 9, 0x10, 0, 1, 0, 0, 0, 0, 0, 0, 0)
	r := NewReader(bytes.NewReader(big), 1<<20)
	_ = r.ReadHeader()
	if _, err := r.ReadTag(); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversize: %v", err)
	}
}

func TestClassify(t *testing.T) {
	ex := func(frame, pkt byte, fourcc string) []byte {
		return append([]byte{0x80 | frame<<4 | pkt}, fourcc...)
	}
	cases := []struct {
		name string
		typ  byte
		body []byte
		want Kind
	}{
		{"avc sequence header", TypeVideo, []byte{0x17, 0, 0, 0, 0}, KindVideoHeader},
		{"avc keyframe", TypeVideo, []byte{0x17, 1, 0, 0, 0}, KindKeyframe},
		{"avc inter frame", TypeVideo, []byte{0x27, 1, 0, 0, 0}, KindOther},
		{"avc end of sequence", TypeVideo, []byte{0x17, 2, 0, 0, 0}, KindEndOfSequence},
		{"legacy hevc header", TypeVideo, []byte{0x1C, 0, 0, 0, 0}, KindVideoHeader},
		{"legacy hevc key", TypeVideo, []byte{0x1C, 1, 0, 0, 0}, KindKeyframe},
		{"vp6 keyframe", TypeVideo, []byte{0x14, 0}, KindKeyframe},
		{"command frame", TypeVideo, []byte{0x57, 0}, KindOther},
		{"hvc1 sequence start", TypeVideo, ex(1, 0, "hvc1"), KindVideoHeader},
		{"hvc1 coded key", TypeVideo, ex(1, 1, "hvc1"), KindKeyframe},
		{"hvc1 codedX key", TypeVideo, ex(1, 3, "hvc1"), KindKeyframe},
		{"hvc1 coded inter", TypeVideo, ex(2, 1, "hvc1"), KindOther},
		{"av01 sequence start", TypeVideo, ex(1, 0, "av01"), KindVideoHeader},
		{"av01 key", TypeVideo, ex(1, 1, "av01"), KindKeyframe},
		{"av01 mpeg2ts sequence start", TypeVideo, ex(1, 5, "av01"), KindVideoHeader},
		{"vp09 sequence start", TypeVideo, ex(1, 0, "vp09"), KindVideoHeader},
		{"vp09 key", TypeVideo, ex(1, 1, "vp09"), KindKeyframe},
		{"vp09 sequence end", TypeVideo, ex(1, 2, "vp09"), KindEndOfSequence},
		{"enhanced metadata", TypeVideo, ex(1, 4, "hvc1"), KindOther},
		{"enhanced truncated", TypeVideo, []byte{0x91, 'h'}, KindOther},
		{"aac header", TypeAudio, []byte{0xAF, 0, 0x12, 0x10}, KindAudioHeader},
		{"aac raw", TypeAudio, []byte{0xAF, 1, 0x21}, KindOther},
		{"mp3", TypeAudio, []byte{0x2F, 0xFF}, KindOther},
		{"enhanced audio start", TypeAudio, []byte{0x90, 'O', 'p', 'u', 's'}, KindAudioHeader},
		{"empty video", TypeVideo, nil, KindOther},
		{"unknown type", 7, []byte{1, 2, 3}, KindOther},
		{"onMetaData", TypeScript, append([]byte{2, 0, 10}, "onMetaData"...), KindMetadata},
		{"other script", TypeScript, append([]byte{2, 0, 6}, "onText"...), KindOther},
	}
	for _, c := range cases {
		if got := Classify(c.typ, c.body); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// The committed demo file carries ffmpeg's own metadata: parse it for real.
func TestParseMetadataFromFFmpeg(t *testing.T) {
	f, err := os.Open("../../testdata/demo.flv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := NewReader(f, 0)
	if err := r.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	tag, err := r.ReadTag()
	if err != nil {
		t.Fatal(err)
	}
	if Classify(tag.Type(), tag.Body()) != KindMetadata {
		t.Fatalf("first tag is not metadata")
	}
	md, err := ParseMetadata(tag.Body())
	if err != nil {
		t.Fatal(err)
	}
	if !md.HasAudio() || !md.HasVideo() || md["width"] != 640.0 || md["videocodecid"] != 7.0 {
		t.Fatalf("metadata %v", md)
	}
}

func TestParseMetadataRejectsMalformed(t *testing.T) {
	name := append([]byte{2, 0, 10}, "onMetaData"...)
	deep := append([]byte{}, name...)
	deep = append(deep, 3)
	for i := 0; i < 40; i++ {
		deep = append(deep, 0, 1, 'k', 3)
	}
	cases := map[string][]byte{
		"empty":        nil,
		"wrong name":   append([]byte{2, 0, 3}, "foo"...),
		"no object":    name,
		"bad marker":   append(append([]byte{}, name...), 0x42),
		"deep nesting": deep,
		"short string": append(append([]byte{}, name...), 8, 0, 0, 0, 1, 0, 9, 'a'),
		"huge array":   append(append([]byte{}, name...), 0x0A, 0xFF, 0xFF, 0xFF, 0xFF),
	}
	for n, b := range cases {
		if _, err := ParseMetadata(b); !errors.Is(err, ErrAMF) {
			t.Errorf("%s: %v, want ErrAMF", n, err)
		}
	}
}

func TestTimeline(t *testing.T) {
	const splice = ^uint32(0) // marks a Splice in the input
	cases := []struct {
		name string
		in   []uint32
		want []uint32
	}{
		{"keeps the publisher's clock and deltas", []uint32{5000, 5040, 5080}, []uint32{5000, 5040, 5080}},
		{"encoder starting past 0xFFFFFF", []uint32{20000000, 20000040}, []uint32{20000000, 20000040}},
		{"interleave jitter clamped", []uint32{0, 40, 30, 80}, []uint32{0, 40, 40, 80}},
		{"backwards jump bridged", []uint32{0, 40, 3000, 10, 50}, []uint32{0, 40, 3000, 3040, 3080}},
		{"forward jump bridged", []uint32{0, 40, 60000, 60040}, []uint32{0, 40, 80, 120}},
		{"32-bit wrap is continuous", []uint32{0xFFFFFFD8, 0, 40}, []uint32{0xFFFFFFD8, 0, 40}},
		{"a new session continues one gap later", []uint32{1000, 1040, splice, 0, 40, 20}, []uint32{1000, 1040, 1080, 1120, 1120}},
		{"a new session starting high", []uint32{0, 40, splice, 900000, 900040}, []uint32{0, 40, 80, 120}},
	}
	for _, c := range cases {
		var tl Timeline
		var got []uint32
		for _, in := range c.in {
			if in == splice {
				tl.Splice()
				continue
			}
			got = append(got, tl.Map(in))
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: %v -> %v, want %v", c.name, c.in, got, c.want)
		}
	}
	var begun Timeline
	begun.Begin(16000)
	if begun.Now() != 16000 || begun.Map(16000) != 16000 || begun.Map(16040) != 16040 {
		t.Fatalf("Begin(16000): headers at %d, then media %d", begun.Now(), begun.Now())
	}
	begun.Begin(99) // started: no effect
	if begun.Now() != 16040 {
		t.Fatalf("Begin after the start moved the timeline to %d", begun.Now())
	}
	var tl Timeline
	if tl.Now() != 0 {
		t.Fatalf("Now before any tag: %d", tl.Now())
	}
	tl.Map(700)
	if tl.Now() != 700 {
		t.Fatalf("Now after a tag at 700: %d", tl.Now())
	}
}

func TestAllocTag(t *testing.T) {
	const headroom, n = 7, 300
	buf, tag := AllocTag(headroom, TypeVideo, 0x01234567, n)
	if len(buf) != headroom+TagHeaderSize+n+TrailerSize || cap(buf) != len(buf) {
		t.Fatalf("buffer %d bytes (cap %d), want %d", len(buf), cap(buf), headroom+TagHeaderSize+n+TrailerSize)
	}
	if &buf[headroom] != &tag[0] || len(tag) != len(buf)-headroom {
		t.Fatal("tag is not the buffer after the headroom")
	}
	body := tag.Body()
	if len(body) != n {
		t.Fatalf("body %d bytes, want %d", len(body), n)
	}
	for i := range body {
		body[i] = byte(i)
	}
	if err := tag.Check(); err != nil {
		t.Fatal(err)
	}
	if tag.Type() != TypeVideo || tag.Timestamp() != 0x01234567 || tag.DataSize() != n {
		t.Fatalf("type %d ts %#x size %d", tag.Type(), tag.Timestamp(), tag.DataSize())
	}
	// NewTag is AllocTag plus the copy: same bytes.
	_, want := NewTag(headroom, TypeVideo, 0x01234567, body)
	if !bytes.Equal(tag, want) {
		t.Fatal("AllocTag+fill differs from NewTag")
	}
	if _, empty := AllocTag(0, TypeAudio, 0, 0); empty.Check() != nil || len(empty.Body()) != 0 {
		t.Fatal("empty tag malformed")
	}
}

func TestReaderKnownTypesRefusesGarbageAtTheHeader(t *testing.T) {
	in := append(FileHeader(true, true), []byte("not an FLV tag, and a long one at that")...)
	r := NewReader(bytes.NewReader(in), 0)
	r.KnownTypes = true
	if err := r.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadTag(); !errors.Is(err, ErrTagType) {
		t.Fatalf("ReadTag: %v, want ErrTagType", err)
	}
}
