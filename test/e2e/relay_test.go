package e2e

// Relay scenarios (issue 13): origins pulling streams from real upstreams (ffmpeg
// serving RTMP with -listen, another flvcdn cluster's edge serving HTTP-FLV) and
// pushing to a real RTMP server (ffmpeg -listen recording to a file).

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rtmpUpstream is ffmpeg serving a file, looped in real time, to the first RTMP
// client that plays rtmp://addr/live/src (ffmpeg -listen 1 serves one client), once
// it listens. Nothing connects to check that: it would be that one client.
func rtmpUpstream(ctx context.Context, t *testing.T, name, media, addr string) *proc {
	t.Helper()
	p := startCmd(t, name, exec.Command("ffmpeg", "-hide_banner", "-loglevel", "warning", "-nostdin",
		"-re", "-stream_loop", "-1", "-i", media, "-c", "copy", "-f", "flv", "-listen", "1", "rtmp://"+addr+"/live/src"))
	waitFor(within(ctx, t, 10*time.Second), t, name+" listening on "+addr, func() error {
		if err := p.running(); err != nil {
			return err
		}
		return listening(addr)
	})
	return p
}

// listening reports whether some socket listens on addr's port, from /proc/net/tcp.
func listening(addr string) error {
	_, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return err
	}
	want := fmt.Sprintf(":%04X ", n)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 3 && strings.HasSuffix(f[1]+" ", want) && f[3] == "0A" {
			return nil
		}
	}
	return fmt.Errorf("nothing listens on %s", addr)
}

// sumMetric adds a metric over origins.
func sumMetric(ctx context.Context, t testing.TB, name string, os ...*origin) float64 {
	t.Helper()
	var sum float64
	for _, o := range os {
		v, err := originMetric(ctx, o, name)
		if err != nil {
			t.Fatalf("%s %s: %v", o.id, name, err)
		}
		sum += v
	}
	return sum
}

// A stream pulled on demand from an RTMP upstream (ffmpeg -listen): nothing is pulled
// before the first viewer; the first viewer makes exactly one of two origins claim
// and pull it, and viewers at both edges play it. The upstream dies and comes back
// within the grace period: viewers continue. It dies for good: the viewers' responses
// end after the edge's stall timer (5 s) plus --grace. With no viewer left anywhere,
// the pull stops a linger period later.
func TestPullRTMPOnDemand(t *testing.T) {
	t.Parallel()
	ctx := scenario(t, 150*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	up := hostPort(freePort(t))
	pull := []string{"--pull", "live/cam=rtmp://" + up + "/live/src", "--pull-linger", "3s"}
	o1, o2 := c.startOrigin(pull...), c.startOrigin(pull...)
	e1, e2 := c.startEdge("--grace", "6s", "--linger", "2s"), c.startEdge("--grace", "6s", "--linger", "2s")
	upstream := rtmpUpstream(ctx, t, "ffmpeg-upstream-1", media, up)
	if n := sumMetric(ctx, t, "flvcdn_pull_active", o1, o2); n != 0 {
		t.Fatalf("%v pulls before any viewer, want 0", n)
	}

	began := time.Now()
	v1, err := StartViewer(ctx, e1.url("live/cam"), ViewOptions{WantAudio: true, WantVideo: true, MaxStall: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer v1.Stop()
	if err := v1.WaitTags(within(ctx, t, 15*time.Second), "a keyframe", func(v *Viewer) bool { return v.Keyframes() >= 1 }); err != nil {
		t.Fatal(err)
	}
	relayFigure(t, "pull-on-demand", "first_viewer_to_keyframe", time.Since(began).Round(time.Millisecond), "the pull start time a first viewer sees")
	v2, err := StartViewer(ctx, e2.url("live/cam"), ViewOptions{WantAudio: true, WantVideo: true, MaxStall: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Stop()
	for _, v := range []*Viewer{v1, v2} {
		if err := v.WaitTags(within(ctx, t, 15*time.Second), "3 s of video", func(v *Viewer) bool { return v.VideoTags() >= 75 }); err != nil {
			t.Fatal(err)
		}
	}
	if n := sumMetric(ctx, t, "flvcdn_pull_active", o1, o2); n != 1 {
		t.Fatalf("%v origins pull live/cam, want exactly 1", n)
	}
	if n := sumMetric(ctx, t, "flvcdn_pull_upstream_connects_total", o1, o2); n != 1 {
		t.Fatalf("%v upstream connections, want 1", n)
	}

	// The upstream dies and comes back within the grace period: viewers continue.
	upstream.kill()
	upstream = rtmpUpstream(ctx, t, "ffmpeg-upstream-2", media, up)
	for _, v := range []*Viewer{v1, v2} {
		n := v.VideoTags()
		if err := v.WaitTags(within(ctx, t, 30*time.Second), "3 s of video from the restarted upstream", func(v *Viewer) bool { return v.VideoTags() >= n+75 }); err != nil {
			t.Fatal(err)
		}
	}

	// The upstream dies for good: the responses end after stall (5 s) + grace (6 s).
	upstream.kill()
	died := time.Now()
	for _, v := range []*Viewer{v1, v2} {
		select {
		case <-v.Done():
		case <-within(ctx, t, 30*time.Second).Done():
			t.Fatal("a viewer's response did not end after the upstream died")
		}
	}
	ended := time.Since(died)
	relayFigure(t, "pull-on-demand", "upstream_dead_to_viewers_ended", ended.Round(100*time.Millisecond), "stall 5s + grace 6s")
	if ended < 6*time.Second {
		t.Errorf("viewers ended %v after the upstream died, before the grace period", ended)
	}
	for _, v := range []*Viewer{v1, v2} {
		if r, err := v.Stop(); err != nil && !strings.Contains(err.Error(), "EOF") {
			t.Logf("viewer: %v (%s)", err, r)
		}
	}
	waitFor(within(ctx, t, 30*time.Second), t, "the pull to stop after the last viewer", func() error {
		if n := sumMetric(ctx, t, "flvcdn_pull_active", o1, o2); n != 0 {
			return fmt.Errorf("%v pulls active", n)
		}
		return nil
	})
}

// relayFigure logs a measured figure of a relay scenario (grep "relay:" in -v output).
func relayFigure(t testing.TB, scenario, name string, value any, what string) {
	t.Helper()
	t.Logf("relay: %s: %s=%v (%s)", scenario, name, value, what)
}
