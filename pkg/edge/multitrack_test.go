package edge_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/origin"
)

// mtPublisher sends an Enhanced RTMP v2 multitrack stream: two AV1 video tracks
// (payloads tagged with the track id) in ManyTracks messages, keyframes aligned,
// and legacy AAC audio.
type mtPublisher struct {
	s  *origin.Stream
	ts uint32
	n  int
}

// mtMessage builds a ManyTracks video message of av01 tracks 0 and 1.
func mtMessage(frame, packet byte, data func(track byte) []byte) []byte {
	b := []byte{0x80 | frame<<4 | 6, 1<<4 | packet, 'a', 'v', '0', '1'}
	for tr := byte(0); tr < 2; tr++ {
		d := data(tr)
		b = append(b, tr, byte(len(d)>>16), byte(len(d)>>8), byte(len(d)))
		b = append(b, d...)
	}
	return b
}

func publishMultitrack(t *testing.T, r *rig, n string) *mtPublisher {
	t.Helper()
	s, err := r.origin.Publish(r.ctx, name(n), "")
	must(t, err)
	must(t, s.WriteTag(flv.TypeScript, 0, metadata()))
	// Each track's sequence start in a message of its own (OneTrack), as OBS sends them.
	for tr := byte(0); tr < 2; tr++ {
		must(t, s.WriteTag(flv.TypeVideo, 0, []byte{0x80 | 1<<4 | 6, 0<<4 | 0, 'a', 'v', '0', '1', tr, 0x81, 0xA0 + tr}))
	}
	must(t, s.WriteTag(flv.TypeAudio, 0, []byte{0xAF, 0, 0x12, 0x10}))
	return &mtPublisher{s: s}
}

func (p *mtPublisher) frames(t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		frame := byte(2)
		if p.n%10 == 0 {
			frame = 1
		}
		seq := byte(p.n)
		must(t, p.s.WriteTag(flv.TypeVideo, p.ts, mtMessage(frame, 1, func(tr byte) []byte {
			return bytes.Repeat([]byte{0xB0 + tr, seq}, 20+int(tr)*30)
		})))
		must(t, p.s.WriteTag(flv.TypeAudio, p.ts, []byte{0xAF, 1, 0x21, seq}))
		p.ts += 40
		p.n++
	}
}

// checkTrack asserts a viewer of one track got ordinary single-track FLV of that
// track only: metadata, that track's header, AAC header, then video from a keyframe.
func checkTrack(t *testing.T, tags []flv.Tag, track byte) {
	t.Helper()
	checkStart(t, tags)
	if b := tags[1].Body(); !bytes.Equal(b, []byte{0x90, 'a', 'v', '0', '1', 0x81, 0xA0 + track}) {
		t.Fatalf("track %d: sequence header %x", track, b)
	}
	for i, tg := range tags[3:] {
		if tg.Type() != flv.TypeVideo {
			continue
		}
		b := tg.Body()
		if b[0]&0x80 == 0 || b[0]&0x0F != 1 || string(b[1:5]) != "av01" || b[5] != 0xB0+track {
			t.Fatalf("track %d: tag %d is not a single-track av01 frame of this track: %x", track, i+3, b[:min(len(b), 8)])
		}
		if want := 5 + 2*(20+int(track)*30); len(b) != want {
			t.Fatalf("track %d: frame of %d bytes, want %d", track, len(b), want)
		}
	}
}

func TestMultitrackViewerGetsItsTrack(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond})
	p := publishMultitrack(t, r, "live/mt")
	p.frames(t, 15) // the snapshot's GOP starts at frame 10
	def := watch(t, r, "live/mt")
	v1, err := r.hub.WatchTrack(r.ctx, name("live/mt"), 1)
	must(t, err)
	t.Cleanup(v1.Close)
	one := &watcher{v: v1}
	p.frames(t, 20)
	checkTrack(t, read(t, def, 20, 10*time.Second), 0)
	checkTrack(t, read(t, one, 20, 10*time.Second), 1)
	// A late viewer of track 1 starts at a keyframe of track 1 from the live ring.
	late, err := r.hub.WatchTrack(r.ctx, name("live/mt"), 1)
	must(t, err)
	t.Cleanup(late.Close)
	p.frames(t, 15)
	checkTrack(t, read(t, &watcher{v: late}, 5, 10*time.Second), 1)

	if _, err := r.hub.WatchTrack(r.ctx, name("live/mt"), 2); !errors.Is(err, edge.ErrNoTrack) {
		t.Fatalf("track 2 of a two-track stream: %v, want ErrNoTrack", err)
	}
}

func TestSingleTrackStreamHasOnlyTrackZero(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond})
	p := r.publish("live/one", 10)
	p.frames(t, 12, 100)
	if _, err := r.hub.WatchTrack(r.ctx, name("live/one"), 1); !errors.Is(err, edge.ErrNoTrack) {
		t.Fatalf("track 1 of a single-track stream: %v, want ErrNoTrack", err)
	}
}

// A malformed multitrack message is dropped by the stream it came in; viewers of
// that stream and of another stream keep playing.
func TestMalformedMultitrackHarmsOnlyItsStream(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond})
	bad := publishMultitrack(t, r, "live/bad")
	good := publishMultitrack(t, r, "live/good")
	bad.frames(t, 11)
	good.frames(t, 11)
	wb, wg := watch(t, r, "live/bad"), watch(t, r, "live/good")
	read(t, wb, 1, 10*time.Second)
	read(t, wg, 1, 10*time.Second)
	for _, body := range [][]byte{
		{0x80 | 2<<4 | 6, 1<<4 | 1, 'a', 'v', '0', '1', 0, 0xFF, 0xFF, 0xFF, 1}, // track size past the end
		{0x80 | 2<<4 | 6, 5<<4 | 1, 'a', 'v', '0', '1', 0, 0, 0, 1, 1},          // multitrack type 5
		{0x80 | 2<<4 | 7, 200, 1, 2},                                            // ModEx past the end
		{0x80 | 2<<4 | 6},                                                       // no multitrack header
	} {
		must(t, bad.s.WriteTag(flv.TypeVideo, bad.ts, body))
	}
	bad.frames(t, 10)
	good.frames(t, 10)
	checkTrack(t, read(t, wb, 10, 10*time.Second), 0)
	checkTrack(t, read(t, wg, 10, 10*time.Second), 0)
}

// An audio-only stream of multitrack Opus messages (tracks 0 and 1): a viewer
// starts at once and gets track 0 as single-track Enhanced audio.
func TestMultitrackAudioOnly(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond})
	s, err := r.origin.Publish(r.ctx, name("live/mta"), "")
	must(t, err)
	msg := func(packet byte, d0, d1 []byte) []byte {
		b := []byte{0x95, 1<<4 | packet, 'O', 'p', 'u', 's'}
		for tr, d := range [][]byte{d0, d1} {
			b = append(b, byte(tr), 0, 0, byte(len(d)))
			b = append(b, d...)
		}
		return b
	}
	must(t, s.WriteTag(flv.TypeAudio, 0, msg(0, []byte("OpusHead-0"), []byte("OpusHead-1"))))
	for i := 0; i < 10; i++ {
		must(t, s.WriteTag(flv.TypeAudio, uint32(i*20), msg(1, []byte{0xA0, byte(i)}, []byte{0xB0, byte(i)})))
	}
	v, err := r.hub.Watch(r.ctx, name("live/mta"))
	must(t, err)
	t.Cleanup(v.Close)
	for i := 10; i < 20; i++ {
		must(t, s.WriteTag(flv.TypeAudio, uint32(i*20), msg(1, []byte{0xA0, byte(i)}, []byte{0xB0, byte(i)})))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var raw bytes.Buffer
	for {
		bufs, err := v.Next(ctx, nil)
		for _, b := range bufs {
			raw.Write(b)
		}
		must(t, err)
		rd := flv.NewReader(bytes.NewReader(raw.Bytes()), 0)
		must(t, rd.ReadHeader())
		if rd.Flags != flv.FlagAudio {
			t.Fatalf("flags %#x", rd.Flags)
		}
		var tags []flv.Tag
		for {
			tg, err := rd.ReadTag()
			if err != nil {
				break
			}
			tags = append(tags, tg)
		}
		if len(tags) == 0 || tags[len(tags)-1].Body()[6] != 19 {
			continue // until the last frame arrived
		}
		if b := tags[0].Body(); !bytes.Equal(b, append([]byte{0x90, 'O', 'p', 'u', 's'}, "OpusHead-0"...)) {
			t.Fatalf("first tag %q, want track 0's Opus sequence start", b)
		}
		for _, tg := range tags[1:] {
			if b := tg.Body(); len(b) != 7 || b[0] != 0x91 || b[5] != 0xA0 {
				t.Fatalf("audio tag % x, want track 0's single-track Opus frame", b)
			}
		}
		return
	}
}

// oneTrack is a OneTrack av01 CodedFrames message of a track.
func oneTrack(key bool, track byte, data []byte) []byte {
	frame := byte(2)
	if key {
		frame = 1
	}
	return append([]byte{0x80 | frame<<4 | 6, 0<<4 | 1, 'a', 'v', '0', '1', track}, data...)
}

// A viewer of track 1 that falls behind skips to the newest keyframe of track 1,
// never to one of track 0 and never into a GOP's middle. The tracks come in
// messages of their own here, with keyframes half a GOP apart.
func TestMultitrackSlowViewerSkipsToItsTrackKeyframe(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond, MaxLagBytes: 1 << 10, MaxSkips: 100, RingSize: 1024})
	p := publishMultitrack(t, r, "live/mts")
	frames := func(n int) {
		for i := 0; i < n; i++ {
			seq := byte(p.n)
			must(t, p.s.WriteTag(flv.TypeVideo, p.ts, oneTrack(p.n%10 == 0, 0, bytes.Repeat([]byte{0xB0, seq}, 20))))
			must(t, p.s.WriteTag(flv.TypeVideo, p.ts, oneTrack(p.n%10 == 5, 1, bytes.Repeat([]byte{0xB1, seq}, 50))))
			must(t, p.s.WriteTag(flv.TypeAudio, p.ts, []byte{0xAF, 1, 0x21, seq}))
			p.ts += 40
			p.n++
		}
	}
	frames(11)
	v, err := r.hub.WatchTrack(r.ctx, name("live/mts"), 1)
	must(t, err)
	t.Cleanup(v.Close)
	slow := &watcher{v: v}
	checkTrack(t, read(t, slow, 1, 5*time.Second), 1)
	// A second viewer (of track 0) reads every frame as it comes: when it has the
	// last frame's audio, the edge has pushed the whole round, and the slow viewer's
	// first Next sees all of it (else it could be woken by the round's first tags,
	// before it fell behind). The frames go one at a time, each after the one
	// before reached this viewer, so that it never falls MaxLagBytes behind itself:
	// a skip could leave it waiting for the next keyframe, past the audio it waits for.
	fast, err := r.hub.WatchTrack(r.ctx, name("live/mts"), 0)
	must(t, err)
	t.Cleanup(fast.Close)
	pushed := func(seq byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for {
			bufs, err := fast.Next(ctx, nil)
			must(t, err)
			for _, b := range bufs {
				if tg := flv.Tag(b); len(b) > 11 && tg.Type() == flv.TypeAudio && tg.Body()[len(tg.Body())-1] == seq {
					return
				}
			}
		}
	}
	skips := 0
	for round := 0; round < 3; round++ {
		for i := 0; i < 15; i++ { // ~3 KB pass the slow viewer by: over MaxLagBytes
			frames(1)
			pushed(byte(p.n - 1))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		bufs, err := v.Next(ctx, nil)
		cancel()
		must(t, err)
		first := flv.Tag(bufs[0])
		if first.Type() != flv.TypeVideo {
			continue
		}
		b := first.Body()
		if flv.Classify(first.Type(), b) != flv.KindKeyframe || b[5] != 0xB1 {
			t.Fatalf("round %d: after falling behind the viewer starts with % x, want a track-1 keyframe", round, b[:8])
		}
		skips++
	}
	if skips == 0 {
		t.Fatal("the viewer never skipped")
	}
}

// Tracks sent in messages of their own, keyframes half a GOP apart: the origin's
// snapshot starts at the oldest track's newest keyframe, so a first viewer of
// either track starts at once from it, without waiting for another keyframe.
func TestMultitrackColdJoinOfEveryTrack(t *testing.T) {
	r := newRig(t, edge.Config{MergeWindow: 5 * time.Millisecond})
	p := publishMultitrack(t, r, "live/mtc")
	for n := 0; n < 12; n++ {
		ts := uint32(n * 40)
		must(t, p.s.WriteTag(flv.TypeVideo, ts, oneTrack(n%10 == 0, 0, bytes.Repeat([]byte{0xB0, byte(n)}, 20))))
		must(t, p.s.WriteTag(flv.TypeVideo, ts, oneTrack(n%10 == 5, 1, bytes.Repeat([]byte{0xB1, byte(n)}, 50))))
		must(t, p.s.WriteTag(flv.TypeAudio, ts, []byte{0xAF, 1, 0x21, byte(n)}))
	}
	for _, track := range []int{1, 0} {
		ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
		v, err := r.hub.WatchTrack(ctx, name("live/mtc"), track)
		cancel()
		if err != nil {
			t.Fatalf("track %d: %v (no start point in the snapshot)", track, err)
		}
		t.Cleanup(v.Close)
		checkTrack(t, read(t, &watcher{v: v}, 1, 5*time.Second), byte(track))
	}
}
