package bus

import (
	"bytes"
	"errors"
	"testing"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

var sess = Session{Origin: "origin-0", ID: 0xABCDEF0123456789}

func TestFrameRoundTrip(t *testing.T) {
	body := []byte{0x17, 1, 0, 0, 0, 1, 2, 3}
	buf, tag := newFrame(sess, 42, flv.TypeVideo, 1234, body)
	frames := Frames(buf, sess, 42, 1<<20)
	if len(frames) != 1 || &frames[0][0] != &buf[0] {
		t.Fatal("a frame under max payload must be sent as is, without a copy")
	}
	m, err := Decode(frames[0])
	if err != nil {
		t.Fatal(err)
	}
	if m.Kind != KindTag || m.Seq != 42 || m.Session != sess || !bytes.Equal(m.Tag, tag) {
		t.Fatalf("decoded %+v", m)
	}
	if &m.Tag[0] != &tag[0] {
		t.Fatal("Decode must alias the received bytes")
	}
}

func TestSplitAndReassemble(t *testing.T) {
	body := bytes.Repeat([]byte{0x17, 1, 2, 3, 4, 5, 6}, 3000) // ~21 KB
	buf, tag := newFrame(sess, 7, flv.TypeVideo, 99, body)
	for _, max := range []int{1024, 4096, 20000} {
		frames := Frames(buf, sess, 7, max)
		if len(frames) < 2 {
			t.Fatalf("max %d: %d frames, want a split", max, len(frames))
		}
		var a Assembler
		var got flv.Tag
		for i, f := range frames {
			if len(f) > max {
				t.Fatalf("max %d: frame %d is %d bytes", max, i, len(f))
			}
			m, err := Decode(f)
			if err != nil || m.Kind != KindFragment {
				t.Fatalf("frame %d: %v kind %d", i, err, m.Kind)
			}
			tg, done, err := a.Add(m)
			if err != nil {
				t.Fatal(err)
			}
			if done != (i == len(frames)-1) {
				t.Fatalf("frame %d: done=%v", i, done)
			}
			got = tg
		}
		if !bytes.Equal(got, tag) {
			t.Fatalf("max %d: reassembled tag differs", max)
		}
	}
}

func TestAssemblerRefusesMissingPart(t *testing.T) {
	buf, _ := newFrame(sess, 9, flv.TypeVideo, 0, make([]byte, 5000))
	frames := Frames(buf, sess, 9, 1500)
	var a Assembler
	m0, _ := Decode(frames[0])
	m2, _ := Decode(frames[2])
	if _, _, err := a.Add(m0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Add(m2); !errors.Is(err, ErrMalformed) {
		t.Fatalf("skipped fragment: %v, want ErrMalformed", err)
	}
	// After the error the assembler starts afresh with the next tag's first part.
	if _, _, err := a.Add(m0); err != nil {
		t.Fatalf("restart: %v", err)
	}
}

func TestDecodeRejectsMalformed(t *testing.T) {
	good, _ := newFrame(sess, 1, flv.TypeAudio, 0, []byte{0xAF, 1})
	cases := map[string][]byte{
		"empty":           nil,
		"bad magic":       append([]byte{0}, good[1:]...),
		"unknown kind":    append([]byte{magic, 99}, good[2:]...),
		"origin too long": append(append([]byte{}, good[:18]...), 200, 'x'),
		"truncated tag":   good[:len(good)-2],
		"fragment header": Control(KindFragment, 1, sess, 0),
	}
	for name, b := range cases {
		if _, err := Decode(b); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
	end, err := Decode(Control(KindSnapshotEnd, 77, sess, FlagHasAudio))
	if err != nil || end.Seq != 77 || end.Flags != FlagHasAudio {
		t.Fatalf("snapshot end: %+v %v", end, err)
	}
}

func TestSubjects(t *testing.T) {
	if LiveSubject("live/cam-1") != "flvcdn.live.live.cam-1" || SnapshotSubject("a/b") != "flvcdn.snap.a.b" {
		t.Fatal(LiveSubject("live/cam-1"), SnapshotSubject("a/b"))
	}
}

// FuzzDecode: hostile bus messages give an error or a well-formed message.
func FuzzDecode(f *testing.F) {
	good, _ := newFrame(sess, 1, flv.TypeAudio, 0, []byte{0xAF, 1})
	f.Add(good)
	big, _ := newFrame(sess, 2, flv.TypeVideo, 0, make([]byte, 300))
	for _, fr := range Frames(big, sess, 2, 100) {
		f.Add(fr)
	}
	f.Add(Control(KindSnapshotEnd, 3, sess, 3))
	var a Assembler
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if err != nil {
			return
		}
		switch m.Kind {
		case KindTag:
			if m.Tag.Check() != nil {
				t.Fatal("bad tag accepted")
			}
		case KindFragment:
			if tag, done, err := a.Add(m); err == nil && done && tag.Check() != nil {
				t.Fatal("bad reassembled tag accepted")
			}
		}
	})
}

// newFrame builds a tag message the way an Outlet does.
func newFrame(s Session, seq uint64, typ byte, ts uint32, body []byte) ([]byte, flv.Tag) {
	buf, tag := flv.NewTag(PrefixLen(s), typ, ts, body)
	PutPrefix(buf, KindTag, seq, s)
	return buf, tag
}
