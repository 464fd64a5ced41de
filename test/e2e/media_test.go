package e2e

// Media helpers: test files made with ffmpeg, publishing with ffmpeg, probing with ffprobe.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/test/harness"
)

// mediaKind names a test file: which tracks it has.
type mediaKind string

const (
	mediaAV    mediaKind = "av"    // H.264 + AAC
	mediaAudio mediaKind = "audio" // AAC only
	mediaVideo mediaKind = "video" // H.264 only
)

// makeMedia writes a 10 s FLV file of the given kind into t.TempDir(): testsrc2 at
// 25 fps with a keyframe every 25 frames (one per second) and/or a 440 Hz sine as AAC.
func makeMedia(t testing.TB, kind mediaKind) string {
	t.Helper()
	harness.NeedTools(t, "ffmpeg")
	video := []string{"-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"}
	audio := []string{"-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"}
	venc := []string{"-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "25", "-keyint_min", "25", "-sc_threshold", "0"}
	aenc := []string{"-c:a", "aac", "-b:a", "64k", "-ar", "44100"}
	args := []string{"-hide_banner", "-loglevel", "error", "-nostdin", "-y"}
	switch kind {
	case mediaAV:
		args = append(append(append(append(args, video...), audio...), venc...), aenc...)
	case mediaAudio:
		args = append(append(args, audio...), aenc...)
	case mediaVideo:
		args = append(append(append(args, video...), venc...), "-an")
	default:
		t.Fatalf("unknown media kind %q", kind)
	}
	out := filepath.Join(t.TempDir(), string(kind)+".flv")
	args = append(args, "-t", "10", "-f", "flv", out)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if b, err := exec.CommandContext(ctx, "ffmpeg", args...).CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return out
}

// demoFile returns the repository's testdata/demo.flv, or "" when it is not there.
func demoFile() string {
	p := filepath.Join(repoRoot, "testdata", "demo.flv")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// publisher is an ffmpeg process publishing a file in a loop.
type publisher struct {
	*proc
	sentUS atomic.Int64 // media time sent so far (ffmpeg's out_time_us)
}

// publish loops file as a live stream to url with ffmpeg (stream copy, real time).
// Extra output options go before the URL. The process is stopped at cleanup.
func publish(t testing.TB, name, file, url string, extra ...string) *publisher {
	t.Helper()
	harness.NeedTools(t, "ffmpeg")
	args := []string{"-hide_banner", "-loglevel", "warning", "-nostdin",
		"-progress", "pipe:1", "-stats_period", "0.2",
		"-re", "-stream_loop", "-1", "-i", file, "-c", "copy"}
	args = append(append(args, extra...), "-f", "flv", url)
	p := &publisher{}
	cmd := exec.Command("ffmpeg", args...)
	cmd.Stdout = &progressWriter{fn: func(key, value string) {
		if key == "out_time_us" {
			if us, err := strconv.ParseInt(value, 10, 64); err == nil {
				p.sentUS.Store(us)
			}
		}
	}}
	p.proc = startCmd(t, name, cmd)
	return p
}

// progressWriter parses ffmpeg's -progress output (key=value lines).
type progressWriter struct {
	partial []byte
	fn      func(key, value string)
}

func (w *progressWriter) Write(b []byte) (int, error) {
	w.partial = append(w.partial, b...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			return len(b), nil
		}
		if k, v, ok := strings.Cut(strings.TrimSpace(string(w.partial[:i])), "="); ok {
			w.fn(k, v)
		}
		w.partial = w.partial[i+1:]
	}
}

// waitSent waits until ffmpeg has sent d of media: the origin then has the metadata,
// sequence headers and at least one GOP. It fails the test if ffmpeg exits first.
func (p *publisher) waitSent(ctx context.Context, t testing.TB, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, d+15*time.Second)
	defer cancel()
	waitFor(ctx, t, fmt.Sprintf("%s to send %v of media", p.Name, d), func() error {
		if err := p.running(); err != nil {
			return err
		}
		if sent := time.Duration(p.sentUS.Load()) * time.Microsecond; sent < d {
			return fmt.Errorf("sent %v", sent)
		}
		return nil
	})
}

// goLive waits until pub has sent a second of media and then until each edge answers
// 200 for stream. Waiting for the publisher first keeps these probes from being the
// very first viewers of a stream; TestViewerWaitingBeforeGoLive covers that case.
func goLive(ctx context.Context, t testing.TB, pub *publisher, stream string, edges ...*edge) {
	t.Helper()
	pub.waitSent(ctx, t, time.Second)
	for _, e := range edges {
		e.waitPlayable(ctx, t, stream)
	}
}

// publishKey is the key a publisher of app/stream must present: lowercase hex
// HMAC-SHA256(secret, "app/stream").
func publishKey(secret, stream string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(stream))
	return hex.EncodeToString(m.Sum(nil))
}

// expectRefused waits for a publisher to give up with a non-zero exit.
func expectRefused(ctx context.Context, t testing.TB, p *publisher, why string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	code, err := p.waitExit(ctx)
	switch {
	case err != nil:
		t.Errorf("%s: publisher was not refused: %v; ffmpeg says:\n%s", why, err, lastLines(p.Log.String(), 10))
	case code == 0:
		t.Errorf("%s: publisher exited 0, want a refusal (non-zero exit); ffmpeg says:\n%s", why, lastLines(p.Log.String(), 10))
	default:
		t.Logf("%s: refused, ffmpeg exit %d: %s", why, code, lastLines(p.Log.String(), 3))
	}
}

// refusalReasons are the labels of flvcdn_origin_publish_refused_total.
var refusalReasons = []string{"auth", "taken", "draining", "limit", "hook"}

// refusals reads an origin's publish refusals by reason, and the number of RTMP-level
// refusals of bad names in its log (those never reach the origin's counter).
func (o *origin) refusals(ctx context.Context, t testing.TB) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, r := range refusalReasons {
		v, err := series(ctx, o.httpAddr, `flvcdn_origin_publish_refused_total{reason="`+r+`"}`)
		if err != nil {
			t.Fatalf("%s /metrics: %v", o.id, err)
		}
		out[r] = v
	}
	out["bad-name"] = float64(strings.Count(o.Log.String(), "rtmp: publish refused: bad name"))
	return out
}

// expectRefusals checks that the origin refused exactly want (reason → count) since
// before, and nothing for any other reason.
func (o *origin) expectRefusals(ctx context.Context, t testing.TB, before map[string]float64, want map[string]float64) {
	t.Helper()
	var got map[string]float64
	err := poll(within(ctx, t, 5*time.Second), func() error {
		got = o.refusals(ctx, t)
		for r, n := range got {
			if got[r]-before[r] != want[r] {
				return fmt.Errorf("%s: %v refused %q, want %v", o.id, n-before[r], r, want[r])
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("refusals by reason at %s: %v (want %v)", o.id, err, want)
	}
}

// ffprobeCodecs runs ffprobe on url and returns the codec names of the streams it finds.
func ffprobeCodecs(ctx context.Context, t testing.TB, url string) []string {
	t.Helper()
	harness.NeedTools(t, "ffprobe")
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ffprobe", "-v", "error", "-show_streams", "-of", "json", url)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v (context: %v)\n%s", url, err, ctx.Err(), stderr.String())
	}
	var res struct {
		Streams []struct {
			CodecName string `json:"codec_name"`
			CodecType string `json:"codec_type"`
		} `json:"streams"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("ffprobe output: %v\n%s", err, out)
	}
	var codecs []string
	for _, s := range res.Streams {
		codecs = append(codecs, s.CodecName)
	}
	sort.Strings(codecs)
	if stderr.Len() > 0 {
		t.Logf("ffprobe %s stderr: %s", url, stderr.String())
	}
	return codecs
}

func codecsString(c []string) string { return fmt.Sprintf("%q", c) }
