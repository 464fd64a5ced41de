package e2e

// Relay scenarios (issue 13): origins pulling streams from real upstreams (ffmpeg
// serving RTMP with -listen, another flvcdn cluster's edge serving HTTP-FLV) and
// pushing to a real RTMP server (ffmpeg -listen recording to a file).

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
// within the grace period: viewers continue. It dies for good: the pulled session ends
// with its upstream connection, as a publisher's does, and the viewers' responses end
// after --grace (not after the edge's 5 s stall timer too). With no viewer left anywhere,
// the pull stops a linger period later. Each session is announced by a "pull"
// callback (one origin asks: the requests go to a queue group) and ends with "unpublish".
func TestPullRTMPOnDemand(t *testing.T) {
	t.Parallel()
	ctx := scenario(t, 150*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	up := hostPort(freePort(t))
	hooks := startRecordHooks(t)
	pull := []string{"--pull", "live/cam=rtmp://" + up + "/live/src", "--pull-linger", "3s", "--hook-url", hooks.srv.URL}
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
	if n := hooks.count("pull"); n != 1 {
		t.Fatalf("%d pull callbacks, want 1 (one origin asked)", n)
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

	// The upstream dies for good: the responses end after grace (6 s).
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
	relayFigure(t, "pull-on-demand", "upstream_dead_to_viewers_ended", ended.Round(100*time.Millisecond), "grace 6s")
	if ended < 6*time.Second {
		t.Errorf("viewers ended %v after the upstream died, before the grace period", ended)
	}
	if ended > 9*time.Second { // 6 s of grace, plus the edge noticing; the 5 s stall timer would make it 11 s
		t.Errorf("viewers ended %v after the upstream died: they waited for more than the 6 s grace period", ended)
	}
	for _, v := range []*Viewer{v1, v2} {
		if r, err := v.Stop(); err != nil && !strings.Contains(err.Error(), "EOF") {
			t.Logf("viewer: %v (%s)", err, r)
		}
	}
	waitFor(within(ctx, t, 30*time.Second), t, "the pull to stop after the last viewer, every session reported ended", func() error {
		if n := sumMetric(ctx, t, "flvcdn_pull_active", o1, o2); n != 0 {
			return fmt.Errorf("%v pulls active", n)
		}
		if p, u := hooks.count("pull"), hooks.count("unpublish"); p != u || p < 2 {
			return fmt.Errorf("%d pull and %d unpublish callbacks, want as many of each (2: one per upstream connection)", p, u)
		}
		return nil
	})
}

// relayFigure logs a measured figure of a relay scenario (grep "relay:" in -v output).
func relayFigure(t testing.TB, scenario, name string, value any, what string) {
	t.Helper()
	t.Logf("relay: %s: %s=%v (%s)", scenario, name, value, what)
}

// originPulling returns the origins whose flvcdn_pull_active is 1.
func originsPulling(ctx context.Context, t testing.TB, os ...*origin) []*origin {
	t.Helper()
	var out []*origin
	for _, o := range os {
		if sumMetric(ctx, t, "flvcdn_pull_active", o) == 1 {
			out = append(out, o)
		}
	}
	return out
}

// A stream pulled over HTTP-FLV from another flvcdn cluster's edge, in each mode.
// always: exactly one of two origins pulls it with no viewer at all; on-demand: none
// until the first viewer, then one. The pulling origin is killed (SIGKILL) while a
// viewer watches: the other origin takes the claim over once it lapses (always: its
// periodic check; on demand: the edges still report the viewer) and pulls, and the
// viewer sees a splice, not an end.
func TestPullHTTPFLVTakeover(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"always", "on-demand"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ctx := scenario(t, 150*time.Second, "ffmpeg")
			media := makeMedia(t, mediaAV)
			foreign := newCluster(ctx, t)
			fo, fe := foreign.startOrigin(), foreign.startEdge()
			goLive(ctx, t, publish(t, "ffmpeg-foreign", media, fo.rtmpURL("live/src", "")), "live/src", fe)

			c := newCluster(ctx, t)
			pull := []string{"--pull", "live/relay=" + fe.url("live/src"), "--pull-mode", mode, "--ttl", "1s"}
			o1, o2 := c.startOrigin(pull...), c.startOrigin(pull...)
			e := c.startEdge()
			want := 1
			if mode == "on-demand" {
				want = 0
			}
			waitFor(within(ctx, t, 20*time.Second), t, fmt.Sprintf("%d origins pulling with no viewer", want), func() error {
				if n := len(originsPulling(ctx, t, o1, o2)); n != want {
					return fmt.Errorf("%d origins pulling", n)
				}
				return nil
			})
			began := time.Now()
			v, err := StartViewer(ctx, e.url("live/relay"), ViewOptions{WantAudio: true, WantVideo: true, MaxStall: 15 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Stop()
			if err := v.WaitTags(within(ctx, t, 15*time.Second), "a keyframe", func(v *Viewer) bool { return v.Keyframes() >= 1 }); err != nil {
				t.Fatal(err)
			}
			relayFigure(t, "pull-takeover-"+mode, "first_viewer_to_keyframe", time.Since(began).Round(time.Millisecond), "HTTP-FLV upstream; on demand: the pull start time a first viewer sees")
			if err := v.WaitTags(within(ctx, t, 15*time.Second), "3 s of video", func(v *Viewer) bool { return v.VideoTags() >= 75 }); err != nil {
				t.Fatal(err)
			}
			pulling := originsPulling(ctx, t, o1, o2)
			if len(pulling) != 1 {
				t.Fatalf("%d origins pulling, want 1", len(pulling))
			}
			dead, other := pulling[0], o1
			if dead == o1 {
				other = o2
			}
			stallBefore := time.Duration(v.Report().LongestStall)
			n := v.VideoTags()
			dead.kill()
			killed := time.Now()
			// 8 s of video after the kill: the successor's, long enough for the viewer's rate
			// checks (5 s windows, after a second of warm-up at the splice).
			if err := v.WaitTags(within(ctx, t, 25*time.Second), "8 s of video after the takeover", func(v *Viewer) bool { return v.VideoTags() >= n+200 }); err != nil {
				t.Fatal(err)
			}
			relayFigure(t, "pull-takeover-"+mode, "kill_to_8s_of_video", time.Since(killed).Round(10*time.Millisecond), "takeover time + 8 s of video")
			relayFigure(t, "pull-takeover-"+mode, "viewer_longest_stall", time.Duration(v.Report().LongestStall).Round(10*time.Millisecond),
				fmt.Sprintf("the takeover as the viewer sees it, --ttl 1s (before the kill: %v)", stallBefore.Round(10*time.Millisecond)))
			if got := originsPulling(ctx, t, other); len(got) != 1 {
				t.Fatalf("%s does not pull after %s died", other.id, dead.id)
			}
			select {
			case <-v.Done():
				t.Fatalf("the viewer's response ended at the takeover: %v", v.Err())
			default:
			}
			if r, err := v.Stop(); err != nil {
				t.Fatalf("viewer: %v (%s)", err, r)
			}
		})
	}
}

// Bad upstream URLs are refused at start with the setting named; an upstream that
// sends garbage is dropped with a clear log line and retried with a growing backoff,
// while another stream of the same origin plays on.
func TestPullBadUpstreams(t *testing.T) {
	t.Parallel()
	ctx := scenario(t, 90*time.Second, "ffmpeg")
	for _, bad := range []string{"live/x=ftp://host/a", "live/x=rtmp://host/onlyapp", "live/bad.name=http://h/a.flv", "live/x"} {
		out, err := exec.CommandContext(ctx, binDir+"/flvcdn-origin", "--pull", bad).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--pull") {
			t.Errorf("--pull %q: exit %v, output %q; want a refusal naming --pull", bad, err, lastLines(string(out), 3))
		}
	}

	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "video/x-flv")
		_, _ = w.Write([]byte{'F', 'L', 'V', 1, 5, 0, 0, 0, 9, 0, 0, 0, 0})
		junk := []byte(strings.Repeat("not an FLV tag at all ", 200))
		for r.Context().Err() == nil {
			if _, err := w.Write(junk); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}))
	defer garbage.Close()
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	o := c.startOrigin("--pull", "live/junk="+garbage.URL+"/junk.flv", "--pull-mode", "always")
	e := c.startEdge()
	goLive(ctx, t, publish(t, "ffmpeg", media, o.rtmpURL("live/good", "")), "live/good", e)
	v, err := StartViewer(ctx, e.url("live/good"), ViewOptions{WantAudio: true, WantVideo: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	waitFor(within(ctx, t, 20*time.Second), t, "the garbage upstream dropped twice, the second time after 2 s", func() error {
		logs := o.Log.String()
		if n := strings.Count(logs, "upstream sent invalid data: connection dropped"); n < 2 || !strings.Contains(logs, "retry_in=2s") {
			return fmt.Errorf("%d drops logged", n)
		}
		return nil
	})
	n := v.VideoTags()
	if err := v.WaitTags(within(ctx, t, 15*time.Second), "6 s of the good stream", func(v *Viewer) bool { return v.VideoTags() >= n+150 }); err != nil {
		t.Fatal(err)
	}
	if r, err := v.Stop(); err != nil {
		t.Fatalf("viewer of the good stream: %v (%s)", err, r)
	}
}

// A stream is pushed to another RTMP server, ffmpeg -listen recording what it
// receives to a file, by the one origin that owns it (the other origin, configured
// the same, pushes nothing). The target starts listening only after the stream has
// gone live: the push retries with backoff until it connects. The publisher
// reconnects once: the pushed stream goes on, on one timeline. The cluster API shows
// the push connected, with bytes and the failed attempts. ffprobe reads the result:
// H.264 and AAC, as long as the time published after the target came up.
func TestPushToRTMPServer(t *testing.T) {
	t.Parallel()
	ctx := scenario(t, 120*time.Second, "ffmpeg", "ffprobe")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	target := hostPort(freePort(t))
	out := filepath.Join(t.TempDir(), "pushed.flv")
	push := []string{"--push", "live/src=rtmp://" + target + "/live/out", "--push-linger", "3s"}
	o1, o2 := c.startOrigin(push...), c.startOrigin(push...)

	var receiver *proc
	var upAt time.Duration // media time published when the target came up
	for i := 1; i <= 2; i++ {
		pub := publish(t, fmt.Sprintf("ffmpeg-publisher-%d", i), media, o1.rtmpURL("live/src", ""), "-t", "6")
		if i == 1 {
			pub.waitSent(ctx, t, 1500*time.Millisecond) // the push has failed at least once by now
			upAt = time.Duration(pub.sentUS.Load()) * time.Microsecond
			receiver = startCmd(t, "ffmpeg-receiver", exec.Command("ffmpeg", "-hide_banner", "-loglevel", "warning", "-nostdin",
				"-listen", "1", "-i", "rtmp://"+target+"/live/out", "-c", "copy", "-f", "flv", out))
		}
		if i == 2 {
			waitFor(within(ctx, t, 10*time.Second), t, "the push status in the cluster API", func() error {
				code, body, err := httpGet(ctx, "http://"+o1.httpAddr+"/api/v1/streams/live/src")
				if err != nil || code != http.StatusOK {
					return fmt.Errorf("status %d, %v", code, err)
				}
				var s struct {
					Push []struct {
						Target    string `json:"target"`
						Connected bool   `json:"connected"`
						Bytes     uint64 `json:"bytes"`
						Errors    uint64 `json:"errors"`
					} `json:"push"`
				}
				if err := json.Unmarshal([]byte(body), &s); err != nil {
					return err
				}
				if len(s.Push) != 1 || !s.Push[0].Connected || s.Push[0].Bytes == 0 || s.Push[0].Errors == 0 || !strings.Contains(s.Push[0].Target, target) {
					return fmt.Errorf("push status %s", body)
				}
				return nil
			})
		}
		if code, err := pub.waitExit(within(ctx, t, 30*time.Second)); err != nil || code != 0 {
			t.Fatalf("publisher %d: exit %d, %v", i, code, err)
		}
	}
	if n := sumMetric(ctx, t, "flvcdn_push_bytes_total", o1); n == 0 {
		t.Fatal("the owning origin pushed no bytes")
	}
	if n := sumMetric(ctx, t, "flvcdn_push_bytes_total", o2); n != 0 {
		t.Fatalf("the other origin pushed %v bytes, want 0", n)
	}
	// The push closes a linger period after the last publisher; the receiver then ends its file.
	if _, err := receiver.waitExit(within(ctx, t, 20*time.Second)); err != nil {
		t.Fatalf("the receiver did not finish: %v", err)
	}
	p, err := ffprobeFile(ctx, t, out)
	if err != nil {
		t.Fatal(err)
	}
	// The push connects within its backoff (1 s, 2 s, ...) of the target coming up
	// and starts at the next keyframe: up to ~3 s of the first session are not pushed.
	want := 12 - upAt.Seconds()
	relayFigure(t, "push", "received", fmt.Sprintf("%.2fs %v %d packets", p.Duration, p.Codecs, p.Packets),
		fmt.Sprintf("12 s published in two sessions, the target up after %.1f s", upAt.Seconds()))
	if !slices.Equal(p.Codecs, []string{"aac", "h264"}) {
		t.Errorf("codecs %v, want aac and h264", p.Codecs)
	}
	if p.Duration < want-3.5 || p.Duration > want+1 {
		t.Errorf("pushed %.2f s, want %.1f s minus at most the backoff (two 6 s sessions on one timeline)", p.Duration, want)
	}
}
