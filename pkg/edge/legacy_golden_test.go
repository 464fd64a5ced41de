package edge_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/flv"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestLegacyStreamBytesUnchanged holds the edge's output for a legacy H.264 + AAC
// stream to the bytes the edge wrote before Enhanced RTMP multitrack support
// (testdata/legacy_h264_aac.golden was written by the code of main at 1f29b10 with
// -update): a viewer that joins mid-GOP and reads on gets exactly those bytes.
func TestLegacyStreamBytesUnchanged(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond})
	n, _ := nameAndPublish(t, r, "live/golden")
	// Frames before the viewer: two GOPs and a half, so the join is from the snapshot.
	n.legacyFrames(t, 25)
	w := watch(t, r, "live/golden")
	got := readBytes(t, w, 5) // the GOP of the snapshot (frames 20-24) ...
	n.legacyFrames(t, 30)
	got = readBytes(t, w, 35) // ... and 30 live frames after it
	path := filepath.Join("testdata", "legacy_h264_aac.golden")
	if *updateGolden {
		must(t, os.WriteFile(path, got, 0o644))
	}
	want, err := os.ReadFile(path)
	must(t, err)
	if !bytes.Equal(got, want) {
		t.Fatalf("edge output for a legacy stream changed: %d bytes (sha256 %x), golden %d bytes (sha256 %x); first difference at byte %d",
			len(got), sha256.Sum256(got), len(want), sha256.Sum256(want), firstDiff(got, want))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// legacyPublisher writes an H.264 + AAC stream whose bodies vary in size and content
// (deterministically), with B-frame-like composition offsets.
type legacyPublisher struct {
	*publisher
}

func nameAndPublish(t *testing.T, r *rig, s string) (*legacyPublisher, string) {
	p := r.publish(s, 10)
	return &legacyPublisher{p}, s
}

func (p *legacyPublisher) legacyFrames(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		hdr := byte(0x27)
		if p.n%p.gop == 0 {
			hdr = 0x17
		}
		body := make([]byte, 40+(p.n*37)%300)
		body[0], body[1], body[4] = hdr, 1, byte(p.n%3)*40
		for j := 5; j < len(body); j++ {
			body[j] = byte(p.n + j)
		}
		must(t, p.s.WriteTag(flv.TypeVideo, p.ts, body))
		must(t, p.s.WriteTag(flv.TypeAudio, p.ts+3, []byte{0xAF, 1, byte(p.n), 0x10, byte(p.n * 7)}))
		p.ts += 40
		p.n++
	}
}

// readBytes reads until the viewer got at least wantVideo video tags in all, and
// returns everything it was sent, cut after the last whole tag of that count.
func readBytes(t *testing.T, w *watcher, wantVideo int) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		if end := cutAfterVideo(w.raw.Bytes(), wantVideo); end > 0 {
			return append([]byte(nil), w.raw.Bytes()[:end]...)
		}
		bufs, err := w.v.Next(ctx, nil)
		for _, b := range bufs {
			w.raw.Write(b)
		}
		if err != nil {
			t.Fatalf("reading: %v", err)
		}
	}
}

// cutAfterVideo returns the offset just past the wantVideo-th video tag (and the
// audio tag that follows it, which shares its frame), or 0 when b has fewer.
func cutAfterVideo(b []byte, wantVideo int) int {
	if len(b) < flv.HeaderSize+4 {
		return 0
	}
	off, seen := flv.HeaderSize+4, 0
	for off+flv.TagHeaderSize <= len(b) {
		end := off + flv.TagHeaderSize + (int(b[off+1])<<16 | int(b[off+2])<<8 | int(b[off+3])) + flv.TrailerSize
		if end > len(b) {
			return 0
		}
		typ := b[off]
		if seen == wantVideo {
			if typ == flv.TypeAudio {
				return end
			}
			return off
		}
		if typ == flv.TypeVideo {
			seen++
		}
		off = end
	}
	return 0
}
