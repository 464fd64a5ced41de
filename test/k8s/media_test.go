//go:build k8s_e2e || k8s_node

package k8s_test

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// makeMedia writes 10 s of H.264 + AAC test pattern with a keyframe a second, for the
// failover test (kwok) and the real-node tests alike.
func makeMedia(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "av.flv")
	args := []string{"-hide_banner", "-loglevel", "error", "-nostdin", "-y",
		"-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
		"-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "25", "-keyint_min", "25", "-sc_threshold", "0",
		"-c:a", "aac", "-b:a", "64k", "-t", "10", "-f", "flv", out}
	if b, err := exec.Command("ffmpeg", args...).CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, b)
	}
	return out
}
