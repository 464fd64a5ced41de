package record

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

func tag(typ byte, ts uint32, body ...byte) flv.Tag {
	_, t := flv.NewTag(0, typ, ts, body)
	return t
}

// feed writes a synthetic 25 fps stream with a keyframe every second and AAC audio.
func feed(w *Writer, seconds int) {
	meta, _ := metaBody(flv.Metadata{"videocodecid": 7.0, "audiocodecid": 10.0, "width": 320.0})
	w.Tag(tag(flv.TypeScript, 0, meta...))
	w.Tag(tag(flv.TypeVideo, 0, 0x17, 0, 0, 0, 1, 2, 3))
	w.Tag(tag(flv.TypeAudio, 0, 0xaf, 0, 0x12, 0x10))
	for i := 0; i < seconds*25; i++ {
		ts := uint32(1000 + i*40) // publishers rarely start at zero
		first := byte(0x27)
		if i%25 == 0 {
			first = 0x17
		}
		w.Tag(tag(flv.TypeVideo, ts, first, 1, 0, 0, 0, 9, 9, 9))
		w.Tag(tag(flv.TypeAudio, ts+5, 0xaf, 1, 7, 7))
	}
}

type probed struct {
	duration float64
	first    flv.Kind // the first media tag
	firstTS  uint32
	lastTS   uint32
	tags     int
}

func probe(t *testing.T, p string) probed {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := flv.NewReader(f, 0)
	if err := r.ReadHeader(); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	var out probed
	out.first = 255
	for {
		tg, err := r.ReadTag()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		out.tags++
		k := flv.Classify(tg.Type(), tg.Body())
		switch {
		case k == flv.KindMetadata:
			md, err := flv.ParseMetadata(tg.Body())
			if err != nil {
				t.Fatal(err)
			}
			out.duration, _ = md["duration"].(float64)
		case k == flv.KindVideoHeader || k == flv.KindAudioHeader:
		default:
			if out.first == 255 {
				out.first, out.firstTS = k, tg.Timestamp()
			}
			out.lastTS = tg.Timestamp()
		}
	}
	return out
}

func TestSegmentsSplitAtKeyframesAndCarryTheirDuration(t *testing.T) {
	dir := t.TempDir()
	r, err := New(Config{Dir: dir, Match: []string{"live/*"}, Segment: 2 * time.Second}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if r.Open(stream.Name("other/x"), "1") != nil {
		t.Fatal("a stream outside the patterns was recorded")
	}
	w := r.Open(stream.Name("live/cam"), "1")
	feed(w, 5)
	w.End()
	<-w.Done
	files, _ := filepath.Glob(filepath.Join(dir, "live", "cam", "*.flv"))
	if len(files) != 3 {
		t.Fatalf("%d files, want 3 (2s + 2s + 1s): %v", len(files), files)
	}
	var total float64
	for _, p := range files {
		pr := probe(t, p)
		if pr.first != flv.KindKeyframe || pr.firstTS != 0 {
			t.Errorf("%s: first media tag is %v at %d ms, want a keyframe at 0", p, pr.first, pr.firstTS)
		}
		if want := float64(pr.lastTS) / 1000; math.Abs(pr.duration-want) > 0.001 || pr.duration == 0 {
			t.Errorf("%s: metadata duration %.3f, want %.3f", p, pr.duration, want)
		}
		total += pr.duration + 0.04
	}
	if math.Abs(total-5) > 0.2 {
		t.Errorf("segments add up to %.2fs, want 5s", total)
	}
}

func TestAWriteErrorStopsTheRecordingOnly(t *testing.T) {
	dir := t.TempDir()
	r, err := New(Config{Dir: dir, Match: []string{"*/*"}, Segment: time.Hour}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// A file where the stream's directory should be: opening a segment fails.
	if err := os.MkdirAll(filepath.Join(dir, "live"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "live", "cam"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	w := r.Open(stream.Name("live/cam"), "1")
	feed(w, 1)
	w.End()
	select {
	case <-w.Done:
	case <-time.After(5 * time.Second):
		t.Fatal("a failed writer did not finish")
	}
	if !w.failed {
		t.Fatal("the write error was not noticed")
	}
}

func TestMetadataBodyParses(t *testing.T) {
	body, at := metaBody(flv.Metadata{"width": 640.0, "encoder": "x", "stereo": true})
	binary.BigEndian.PutUint64(body[at:], math.Float64bits(12.5))
	md, err := flv.ParseMetadata(body)
	if err != nil {
		t.Fatal(err)
	}
	if md["duration"] != 12.5 || md["width"] != 640.0 || md["encoder"] != "x" || md["stereo"] != true {
		t.Fatalf("metadata %v", md)
	}
	if !bytes.HasPrefix(body, []byte{2, 0, 10}) {
		t.Fatal("not an onMetaData body")
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	for _, c := range []Config{{}, {Dir: t.TempDir(), Match: []string{"nopattern"}}, {Dir: t.TempDir(), Segment: time.Millisecond}} {
		if _, err := New(c, slog.Default()); err == nil || !bytes.Contains([]byte(err.Error()), []byte("--record")) {
			t.Errorf("%+v: error %v, want one naming the setting", c, err)
		}
	}
}
