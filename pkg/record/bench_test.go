package record

import (
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// BenchmarkRecord1SecondOf2500kbps writes one second of a 2.5 Mbit/s stream (25 fps
// video, a keyframe a second, 43 AAC frames) per iteration to a real file, through
// the same queue and goroutine as live recording. cpu-ns/op is the process's user +
// system CPU per iteration (getrusage): what recording one stream costs per second.
func BenchmarkRecord1SecondOf2500kbps(b *testing.B) {
	r, err := New(Config{Dir: b.TempDir(), Match: []string{"*/*"}, Segment: time.Hour}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	w := r.Open(stream.Name("live/bench"), "1")
	video := make([]byte, 2_500_000/8/25-400)
	audio := make([]byte, 370)
	_, meta := flv.NewTag(0, flv.TypeScript, 0, func() []byte { m, _ := metaBody(flv.Metadata{"videocodecid": 7.0}); return m }())
	w.Tag(meta)
	w.Tag(tag(flv.TypeVideo, 0, 0x17, 0, 0, 0, 1))
	w.Tag(tag(flv.TypeAudio, 0, 0xaf, 0, 0x12, 0x10))
	var tags []flv.Tag
	for i := 0; i < 25; i++ {
		v := append([]byte{0x27, 1, 0, 0, 0}, video...)
		if i == 0 {
			v[0] = 0x17
		}
		tags = append(tags, tag(flv.TypeVideo, uint32(i*40), v...))
	}
	for i := 0; i < 43; i++ {
		tags = append(tags, tag(flv.TypeAudio, uint32(i*23), append([]byte{0xaf, 1}, audio...)...))
	}
	b.SetBytes(2_500_000 / 8)
	before := cpu()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, t := range tags {
			for len(w.tags) == cap(w.tags) {
				time.Sleep(time.Millisecond) // never drop: measure the writer, not the queue
			}
			w.Tag(t)
		}
	}
	for len(w.tags) > 0 {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(cpu()-before)/float64(b.N), "cpu-ns/op")
	w.End()
	<-w.Done
}

// cpu returns the process's user + system CPU time in nanoseconds.
func cpu() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
