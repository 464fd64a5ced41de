package edge

import (
	"net"
	"testing"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// BenchmarkViewerCollect measures a viewer's cost of one merge window's batch:
// 25 frames of video and 43 of audio (one second), from a single-track stream and
// from a two-track one (the viewer's track plus one it skips). ns/op is per batch;
// bytes/viewer is what the viewer is sent.
func BenchmarkViewerCollect(b *testing.B) {
	for _, c := range []struct {
		name   string
		tracks int
	}{{"single-track", 0}, {"two-tracks", 2}} {
		b.Run(c.name, func(b *testing.B) {
			s := &Stream{hub: &Hub{cfg: Config{MaxLagBytes: 1 << 40}}, ring: newRing(4096)}
			_, video := flv.NewTag(0, flv.TypeVideo, 0, make([]byte, 4000))
			_, audio := flv.NewTag(0, flv.TypeAudio, 0, make([]byte, 200))
			for i := 0; i < 25; i++ {
				if c.tracks == 0 {
					s.ring.push(video, i == 0)
				}
				for tr := 0; tr < c.tracks; tr++ {
					s.ring.pushTrack(video, i == 0, int16(tr))
				}
				for a := 0; a < 43/25+i%2; a++ {
					s.ring.push(audio, false)
				}
			}
			var bufs net.Buffers
			sent := 0
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				v := &Viewer{s: s, track: 0, started: true}
				bufs, _ = v.collect(bufs[:0])
				sent = 0
				for _, x := range bufs {
					sent += len(x)
				}
			}
			b.ReportMetric(float64(sent), "bytes/viewer")
		})
	}
}
