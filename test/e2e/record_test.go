package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// probedFile is what ffprobe says of a recording.
type probedFile struct {
	Duration float64
	Codecs   []string
	Packets  int
}

// ffprobeFile reads a whole file with ffprobe (every packet counted, so a broken
// file cannot pass on its header alone).
func ffprobeFile(ctx context.Context, t testing.TB, path string) (probedFile, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ffprobe", "-v", "error", "-count_packets", "-show_entries",
		"format=duration:stream=codec_name,nb_read_packets", "-of", "json", path).Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		return probedFile{}, fmt.Errorf("ffprobe %s: %v %s", path, err, msg)
	}
	var r struct {
		Format struct {
			Duration string `json:"duration"`
		} `json:"format"`
		Streams []struct {
			Codec   string `json:"codec_name"`
			Packets string `json:"nb_read_packets"`
		} `json:"streams"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return probedFile{}, fmt.Errorf("ffprobe %s: %v: %s", path, err, out)
	}
	var p probedFile
	p.Duration, _ = strconv.ParseFloat(r.Format.Duration, 64)
	for _, s := range r.Streams {
		p.Codecs = append(p.Codecs, s.Codec)
		n, _ := strconv.Atoi(s.Packets)
		p.Packets += n
	}
	slices.Sort(p.Codecs)
	return p, nil
}

// recordings lists the files recorded for app/stream under dir, oldest first.
func recordings(dir, stream string) []string {
	files, _ := filepath.Glob(filepath.Join(dir, filepath.FromSlash(stream), "*.flv"))
	slices.Sort(files) // names are UTC start times
	return files
}

// relayEvent is a callback body, decoded by the contract's names.
type relayEvent struct {
	Action    string  `json:"action"`
	App       string  `json:"app"`
	Stream    string  `json:"stream"`
	Path      string  `json:"path"`
	DurationS float64 `json:"duration_s"`
}

// recordHooks collects every callback and allows them all.
type recordHooks struct {
	mu     sync.Mutex
	events []relayEvent
	srv    *httptest.Server
}

// count returns how many callbacks of action arrived.
func (h *recordHooks) count(action string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, ev := range h.events {
		if ev.Action == action {
			n++
		}
	}
	return n
}

func startRecordHooks(t *testing.T) *recordHooks {
	h := &recordHooks{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		defer h.mu.Unlock()
		var ev relayEvent
		if err := json.Unmarshal(b, &ev); err == nil {
			h.events = append(h.events, ev)
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *recordHooks) durations() map[string]float64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]float64{}
	for _, ev := range h.events {
		if ev.Action == "record" {
			out[ev.Path] = ev.DurationS
		}
	}
	return out
}

// A 25 s session recorded with 10 s segments becomes three files (10, 10, ~5 s), each
// of which ffprobe reads on its own (H.264 + AAC, duration from the metadata we
// patched), adding up to the time published; each is announced by a callback.
func TestRecordSegments(t *testing.T) {
	t.Parallel()
	ctx := scenario(t, 120*time.Second, "ffmpeg", "ffprobe")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	dir := t.TempDir()
	hooks := startRecordHooks(t)
	o := c.startOrigin("--record", "live/*", "--record-dir", dir, "--record-segment", "10s", "--hook-url", hooks.srv.URL)
	pub := publish(t, "ffmpeg", media, o.rtmpURL("live/rec", ""), "-t", "25")
	ctx2, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := pub.waitExit(ctx2); err != nil {
		t.Fatalf("publisher: %v", err)
	}
	waitFor(within(ctx, t, 15*time.Second), t, "three segments announced", func() error {
		if n := len(hooks.durations()); n < 3 {
			return fmt.Errorf("%d record callbacks", n)
		}
		return nil
	})
	files := recordings(dir, "live/rec")
	if len(files) != 3 {
		t.Fatalf("%d files, want 3: %v", len(files), files)
	}
	announced := hooks.durations()
	var total float64
	for i, f := range files {
		p, err := ffprobeFile(ctx, t, f)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %.3f s, %v, %d packets", filepath.Base(f), p.Duration, p.Codecs, p.Packets)
		if !slices.Equal(p.Codecs, []string{"aac", "h264"}) {
			t.Errorf("%s: codecs %v, want aac and h264", f, p.Codecs)
		}
		if i < 2 && math.Abs(p.Duration-10) > 0.5 {
			t.Errorf("%s: %.2f s, want 10 s (a keyframe every second)", f, p.Duration)
		}
		if d, ok := announced[f]; !ok || math.Abs(d-p.Duration) > 0.1 {
			t.Errorf("%s: callback duration %v (announced %v), ffprobe %.3f", f, d, ok, p.Duration)
		}
		total += p.Duration
	}
	if math.Abs(total-25) > 1.0 {
		t.Errorf("segments add up to %.2f s, want 25 s", total)
	}
}

// An origin killed with SIGKILL mid-segment leaves a file that ffprobe still reads:
// everything flushed before the kill (at most a second is lost).
func TestRecordSurvivesSIGKILL(t *testing.T) {
	t.Parallel()
	ctx := scenario(t, 90*time.Second, "ffmpeg", "ffprobe")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	dir := t.TempDir()
	o := c.startOrigin("--record", "live/*", "--record-dir", dir, "--record-segment", "1m")
	pub := publish(t, "ffmpeg", media, o.rtmpURL("live/crash", ""))
	pub.waitSent(ctx, t, 5*time.Second)
	sent := time.Duration(pub.sentUS.Load()) * time.Microsecond
	o.kill()
	files := recordings(dir, "live/crash")
	if len(files) != 1 {
		t.Fatalf("%d files, want 1: %v", len(files), files)
	}
	p, err := ffprobeFile(ctx, t, files[0])
	if err != nil {
		t.Fatalf("the partial file does not probe: %v", err)
	}
	t.Logf("partial %s: %v, %d packets", filepath.Base(files[0]), p.Codecs, p.Packets)
	if !slices.Equal(p.Codecs, []string{"aac", "h264"}) {
		t.Fatalf("partial file: codecs %v, want aac and h264", p.Codecs)
	}
	// The file is flushed every second: it holds all but about the last second sent
	// (25 video frames and ~43 AAC frames a second).
	kept := time.Duration(p.Packets) * time.Second / 68
	relayFigure(t, "record-sigkill", "media_kept", fmt.Sprintf("%v of %v sent", kept.Round(100*time.Millisecond), sent.Round(100*time.Millisecond)), "flush every 1s")
	if kept < sent-1500*time.Millisecond {
		t.Fatalf("partial file holds %d packets (~%v) of %v sent: more than the last 1.5 s lost", p.Packets, kept, sent)
	}
}

// A write error (here the file size limit, set on the running origin with prlimit)
// stops the recording with a clear log line and a metric; viewers keep playing.
func TestRecordWriteErrorLeavesTheStreamLive(t *testing.T) {
	t.Parallel()
	ctx := scenario(t, 90*time.Second, "ffmpeg", "prlimit")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	dir := t.TempDir()
	o := c.startOrigin("--record", "live/*", "--record-dir", dir)
	e := c.startEdge()
	if b, err := exec.CommandContext(ctx, "prlimit", "--pid", strconv.Itoa(o.pid()), "--fsize=200000:200000").CombinedOutput(); err != nil {
		t.Fatalf("prlimit: %v %s", err, b)
	}
	goLive(ctx, t, publish(t, "ffmpeg", media, o.rtmpURL("live/full", "")), "live/full", e)
	v, err := StartViewer(ctx, e.url("live/full"), ViewOptions{WantAudio: true, WantVideo: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	waitFor(within(ctx, t, 20*time.Second), t, "the recording to stop on the size limit", func() error {
		if !strings.Contains(o.Log.String(), "recording stopped: write failed") {
			return fmt.Errorf("no log line yet")
		}
		return nil
	})
	if n, err := originMetric(ctx, o, "flvcdn_record_errors_total"); err != nil || n != 1 {
		t.Fatalf("flvcdn_record_errors_total = %v (%v), want 1", n, err)
	}
	n := v.Tags()
	if err := v.WaitTags(within(ctx, t, 10*time.Second), "100 more tags after the error", func(v *Viewer) bool { return v.Tags() >= n+100 }); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(recordings(dir, "live/full")[0]); err != nil || fi.Size() > 200000 {
		t.Fatalf("recording: %v, %v", fi, err)
	}
	if r, err := v.Stop(); err != nil {
		t.Fatalf("viewer: %v (%s)", err, r)
	}
}

// originMetric returns the sum of a metric's series from an origin's /metrics.
func originMetric(ctx context.Context, o *origin, name string) (float64, error) {
	code, body, err := httpGet(ctx, "http://"+o.httpAddr+"/metrics")
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("/metrics status %d", code)
	}
	return parseMetric(body, name)
}
