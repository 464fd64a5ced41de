package relay

import (
	"context"
	"net"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/test/harness"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// testMedia writes a short H.264+AAC FLV file with a keyframe a second.
func testMedia(t *testing.T, seconds int) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "av.flv")
	cmd := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
		"-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
		"-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-t", strconv.Itoa(seconds), "-f", "flv", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v %s", err, b)
	}
	return out
}

// The relay's RTMP client plays from ffmpeg serving a file with -listen 1: it gets
// the metadata, both sequence headers and media with rising timestamps.
func TestRTMPPlayFromFFmpeg(t *testing.T) {
	harness.NeedTools(t, "ffmpeg")
	media := testMedia(t, 3)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	srv := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-i", media,
		"-c", "copy", "-f", "flv", "-listen", "1", "rtmp://"+addr+"/live/src")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	u, _ := url.Parse("rtmp://" + addr + "/live/src")
	var up upstream
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		up, err = dialUpstream(ctx, u, 5*time.Second)
		cancel()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // ffmpeg is not listening yet
	}
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	kinds := map[flv.Kind]int{}
	var last uint32
	for i := 0; i < 200; i++ {
		typ, ts, body, err := up.next()
		if err != nil {
			t.Fatalf("after %d tags: %v", i, err)
		}
		kinds[flv.Classify(typ, body)]++
		if typ != flv.TypeScript {
			if ts+100 < last {
				t.Fatalf("timestamp went from %d to %d", last, ts)
			}
			last = ts
		}
	}
	if kinds[flv.KindMetadata] != 1 || kinds[flv.KindVideoHeader] != 1 || kinds[flv.KindAudioHeader] != 1 || kinds[flv.KindKeyframe] < 1 {
		t.Fatalf("kinds seen: %v", kinds)
	}
	if last < 1000 {
		t.Fatalf("200 tags reached only %d ms", last)
	}
}
