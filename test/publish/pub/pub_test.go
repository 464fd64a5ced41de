package pub

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/test/harness"
)

// encode makes a one-second test file with ffmpeg (a missing ffmpeg skips, and
// fails under CI=true).
func encode(t *testing.T, name string, args ...string) string {
	t.Helper()
	harness.NeedTools(t, "ffmpeg")
	out := filepath.Join(t.TempDir(), name)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args = append(append([]string{"-hide_banner", "-loglevel", "error", "-nostdin", "-y"}, args...), out)
	if b, err := exec.CommandContext(ctx, "ffmpeg", args...).CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg %v: %v\n%s", args, err, b)
	}
	return out
}

var src = []string{"-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=2"}

func TestElementaryStreamsFromFFmpeg(t *testing.T) {
	cases := []struct {
		name         string
		args         []string
		fourcc       string
		w, h, frames int
		keys         int
		last         time.Duration
		configPrefix []byte
	}{
		{"av1.ivf", append(src, "-c:v", "libaom-av1", "-usage", "realtime", "-cpu-used", "8", "-g", "25", "-lag-in-frames", "0"),
			"av01", 320, 240, 50, 2, 1960 * time.Millisecond, []byte{0x81}},
		{"vp9.ivf", append(src, "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-g", "25"),
			"vp09", 320, 240, 50, 2, 1960 * time.Millisecond, []byte{1, 0, 0, 0, 0}},
		{"hevc.h265", append(src, "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "bframes=0:keyint=25:scenecut=0:log-level=error", "-f", "hevc"),
			"hvc1", 320, 240, 50, 2, 1960 * time.Millisecond, []byte{1, 1}},
		{"opus.ogg", []string{"-f", "lavfi", "-i", "sine=sample_rate=48000:duration=1", "-c:a", "libopus"},
			"Opus", 0, 0, 50, 50, 980 * time.Millisecond, []byte("OpusHead")},
		{"aac.adts", []string{"-f", "lavfi", "-i", "sine=sample_rate=44100:duration=1", "-c:a", "aac", "-f", "adts"},
			"mp4a", 0, 0, 44, 44, 0, []byte{0x12, 0x08}}, // AAC-LC, 44.1 kHz, mono
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr, in, err := Open(encode(t, c.name, c.args...), Options{FPS: 25})
			if err != nil || in != nil {
				t.Fatalf("open: %v", err)
			}
			if w, h := tr.Size(); tr.FourCC() != c.fourcc || w != c.w || h != c.h || !bytes.HasPrefix(tr.Config(), c.configPrefix) {
				t.Fatalf("%s %dx%d config % x", tr.FourCC(), w, h, tr.Config())
			}
			n, keys := 0, 0
			var last time.Duration = -1
			for {
				f, err := tr.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if f.Time < last {
					t.Fatalf("frame %d at %v after %v", n, f.Time, last)
				}
				last = f.Time
				n++
				if f.Key {
					keys++
				}
			}
			// Audio: encoders add priming (Opus pre-skip, AAC priming) frames.
			video := tr.Video()
			if (video && (n != c.frames || last != c.last || keys != c.keys)) || (!video && (n < c.frames || keys != n || last < c.last)) {
				t.Fatalf("%d frames (%d keys), last at %v; want %d (%d keys), last at %v", n, keys, last, c.frames, c.keys, c.last)
			}
		})
	}
}

// fake is a video track of n frames (a keyframe every gop) with payload byte b.
func fake(fourcc string, n, gop int, b byte) *frames {
	t := &frames{fourcc: fourcc, video: true, config: []byte{0xC0, b}, rate: 25}
	for i := 0; i < n; i++ {
		t.list = append(t.list, Frame{Time: time.Duration(i) * 40 * time.Millisecond, Key: i%gop == 0, Data: []byte{b, byte(i)}})
	}
	return t
}

// The multitrack muxer's messages, read by the product's parser: sequence starts
// one track per message, then one message per time with every track's frame.
func TestMultitrackMessages(t *testing.T) {
	in, err := MultitrackInput([]Track{fake("av01", 4, 2, 0xA0), fake("hvc1", 4, 2, 0xB0)}, false)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []Message
	for {
		m, err := in.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	if len(msgs) != 6 {
		t.Fatalf("%d messages, want 2 headers + 4 frames", len(msgs))
	}
	for i, m := range msgs {
		ex, err := flv.ParseEx(flv.TypeVideo, m.Body, nil)
		if err != nil || !ex.Multitrack {
			t.Fatalf("message %d: %v %+v", i, err, ex)
		}
		if i < 2 {
			if !m.Header || len(ex.Packets) != 1 || int(ex.Packets[0].Track) != i || ex.Packets[0].PacketType != 0 ||
				flv.Classify(flv.TypeVideo, m.Body) != flv.KindVideoHeader {
				t.Fatalf("header %d: %+v", i, ex)
			}
			continue
		}
		frame := i - 2
		if len(ex.Packets) != 2 || m.Time != time.Duration(frame)*40*time.Millisecond {
			t.Fatalf("frame message %d: %+v at %v", frame, ex, m.Time)
		}
		if want := frame%2 == 0; (flv.Classify(flv.TypeVideo, m.Body) == flv.KindKeyframe) != want {
			t.Fatalf("frame %d: keyframe %v", frame, !want)
		}
		av1, hevc := ex.Packets[0], ex.Packets[1]
		if string(av1.FourCC[:]) != "av01" || !bytes.Equal(av1.Data, []byte{0xA0, byte(frame)}) ||
			string(hevc.FourCC[:]) != "hvc1" || !bytes.Equal(hevc.Data, []byte{0, 0, 0, 0xB0, byte(frame)}) {
			t.Fatalf("frame %d tracks: %+v", frame, ex.Packets)
		}
	}
}

// FuzzParse: no input file makes a demuxer panic or loop; frames stay in the input.
func FuzzParse(f *testing.F) {
	f.Add([]byte("DKIF\x00\x00\x20\x00AV01\x40\x01\xf0\x00\x19\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"+
		"\x0c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x12\x00\x0a\x06\x00\x00\x00\x24\xc4\xff\x32\x04\x10\x00"), uint8(0))
	f.Add([]byte("\x00\x00\x00\x01\x40\x01\x0c\x01\xff\xff\x01\x60\x00\x00\x00\x01\x42\x01\x01\x01\x60\x00\x00\x00\x90\x00\x00\x00\x00\x00\x5d\xa0\x02\x80\x80\x2d\x16\x59\x59\xa4\x93\x2b\xc0\x40\x40\x00\x00\x00\x00\x01\x44\x01\xc1\x72\xb4\x62\x40\x00\x00\x01\x26\x01\xaf"), uint8(1))
	f.Add([]byte("OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x13OpusHead\x01\x01\x38\x01\x80\xbb\x00\x00\x00\x00\x00"), uint8(2))
	f.Add([]byte("\xff\xf1\x50\x80\x02\x1f\xfc\x21\x10\x04\x60\x8c\x1c"), uint8(3))
	f.Add([]byte("FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00\x09\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x90av01\x00\x00\x00\x10"), uint8(4))
	exts := []string{".ivf", ".h265", ".ogg", ".aac", ".flv", ""}
	f.Fuzz(func(t *testing.T, data []byte, ext uint8) {
		tr, in, err := Parse(data, exts[int(ext)%len(exts)], Options{FPS: 25})
		if err != nil {
			return
		}
		if in == nil {
			if tr.FourCC() == "" {
				t.Fatal("track without a codec")
			}
			in = TrackInput(tr)
		}
		total := 0
		for i := 0; ; i++ {
			m, err := in.Next()
			if err != nil {
				break
			}
			total += len(m.Body)
			if i > len(data)+2 || total > 4*len(data)+64 {
				t.Fatalf("%d messages, %d bytes from %d input bytes", i, total, len(data))
			}
		}
	})
}
