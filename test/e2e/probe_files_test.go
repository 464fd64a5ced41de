package e2e

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/probe"
)

// The probe's checker, as every e2e viewer runs it, accepts what ffmpeg itself writes:
// a file is a stream joined at its start. (pkg/probe has the rejections, one synthetic
// stream each; this proves it does not reject real encoder output.) Runs in -short mode.
func TestProbeAcceptsFFmpegFiles(t *testing.T) {
	for _, tc := range []struct {
		kind         mediaKind
		audio, video bool
	}{{mediaAV, true, true}, {mediaAudio, true, false}, {mediaVideo, false, true}} {
		t.Run(string(tc.kind), func(t *testing.T) {
			f, err := os.Open(makeMedia(t, tc.kind))
			if err != nil {
				t.Fatal(err)
			}
			c := probe.New(checkOptions(tc.audio, tc.video, time.Minute, nil), time.Now())
			if err := probe.Watch(t.Context(), f, c); !errors.Is(err, probe.ErrEnded) || errors.Is(err, probe.ErrViolation) {
				t.Fatalf("%v (%s)", err, c.Report())
			}
			r := c.Report()
			t.Logf("%s", r)
			if tc.video && (r.Keyframes != 10 || r.Video < 250 || r.VideoCodec != "avc") {
				t.Errorf("10 s at 25 fps with -g 25: %s", r)
			}
			if tc.audio && (r.Audio < 400 || r.AudioCodec != "aac" || r.AudioHeaders != 1) {
				t.Errorf("10 s of AAC: %s", r)
			}
		})
	}
}
