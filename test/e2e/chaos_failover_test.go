package e2e

// Chaos scenarios about losing a piece of the pipeline while people watch: an origin,
// the publisher's connection, an edge, the NATS server, the Redis server.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/probe"
)

// The origin a streamer publishes to is killed (SIGKILL) while 200 viewers watch through
// two edges; the encoder reconnects to another origin one second later. Every viewer
// keeps its connection and keeps receiving, the byte stream stays valid and timestamps
// never go backwards. The longest stall is bounded by the registry TTL: the new origin
// accepts the publisher once the dead origin's claim lapses, at most --ttl after its last
// heartbeat (heartbeats run every TTL/3). With --ttl 3s the stall is about 1 s (the
// reconnect) + up to 2-3 s (the claim) + the join; a lower --ttl fails over faster for
// more Redis writes (and in Kubernetes the janitor purges the claim at once).
func TestChaosOriginKilledViewersFollowPublisherToAnotherOrigin(t *testing.T) {
	const sc, stream = "origin-kill", "live/failover"
	ctx := chaosScenario(t, 100*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c, _, _ := chaosCluster(ctx, t, "")
	o1, o2 := c.startOrigin("--ttl", "3s"), c.startOrigin("--ttl", "3s")
	e1, e2 := c.startEdge(), c.startEdge()
	pub := publish(t, "ffmpeg-to-"+o1.id, media, o1.rtmpURL(stream, ""))
	goLive(ctx, t, pub, stream, e1, e2)

	cr := newCrowd(t)
	vs := append(cr.audience(ctx, e1.url(stream), 100, 5), cr.audience(ctx, e2.url(stream), 100, 5)...)
	waitGrown(within(ctx, t, 20*time.Second), t, "every viewer to read 64 KB", vs, make([]int64, len(vs)), 64<<10)

	cr.resetGaps()
	killedAt := time.Now()
	o1.kill()
	pub.kill() // the encoder's connection died with the origin
	atKill := byteCounts(vs)
	time.Sleep(time.Second - time.Since(killedAt)) // the encoder's reconnect delay (prescribed)
	pub2 := publish(t, "ffmpeg-to-"+o2.id, media, o2.rtmpURL(stream, ""))
	waitGrown(within(ctx, t, 30*time.Second), t, "every viewer to receive the stream from "+o2.id, vs, atKill, 32<<10)
	allBack := time.Since(killedAt)
	// Keep watching: every viewer's byte count keeps growing after the failover.
	resumed := byteCounts(vs)
	waitGrown(within(ctx, t, 20*time.Second), t, "every viewer to keep reading", vs, resumed, 64<<10)

	g := gaps(vs, time.Now())
	kept := checkViewers(t, sc, vs)
	figure(t, sc, "viewers_kept", fmt.Sprintf("%d/%d", kept, len(vs)), fmt.Sprintf("%d/%d", len(vs), len(vs)))
	figure(t, sc, "stall_p50", pct(g, 0.5), "≤ 5s with --ttl 3s")
	figure(t, sc, "stall_max", pct(g, 1), "≤ 5s with --ttl 3s")
	figure(t, sc, "all_viewers_read_32KB_new_after_kill", allBack, "informational")
	for _, v := range checked(vs) {
		r, _ := v.report()
		if r.VideoHeaders < 2 {
			t.Errorf("viewer %d: %d video sequence headers, want the new session's too: %s", v.idx, r.VideoHeaders, r)
		}
	}
	if err := pub2.running(); err != nil {
		t.Errorf("the publisher at %s was dropped: %v", o2.id, err)
	}
	if m := pct(g, 1); m > 5*time.Second {
		t.Errorf("longest stall %v, want ≤ 5s (--ttl 3s)", m)
	}
}

// The origin is killed (SIGKILL) and the streamer does not come back. A player opens the
// stream on an edge that was not pulling it, while the dead origin's claim is still in
// Redis, and retries as players do (each attempt given 2 s, a new one 500 ms after the
// last ended). Once the claim has lapsed (≤ --ttl after the last heartbeat) the player
// gets a 404 at its next attempt, not an endless "stream did not start".
func TestChaosOriginKilledWithoutSuccessorPlayersGet404(t *testing.T) {
	const sc, stream = "origin-kill-no-successor", "live/orphan"
	const ttl = 3 * time.Second
	ctx := chaosScenario(t, 60*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c, _, rs := chaosCluster(ctx, t, "")
	o := c.startOrigin("--ttl", ttl.String())
	e1, e2 := c.startEdge(), c.startEdge()
	pub := publish(t, "ffmpeg", media, o.rtmpURL(stream, ""))
	goLive(ctx, t, pub, stream, e1)

	killedAt := time.Now()
	o.kill()
	pub.kill()
	key := "{flvcdn}:stream:" + stream
	// When the claim lapses, watched on Redis beside the player.
	lapsedCh := make(chan time.Duration, 1)
	pctx := within(ctx, t, 15*time.Second)
	go func() {
		err := poll(pctx, func() error {
			if v, err := rs.do("GET", key); err != nil || v != "" {
				return fmt.Errorf("claimed: %q %v", v, err)
			}
			return nil
		})
		if err != nil {
			lapsedCh <- 0 // still claimed at the deadline
			return
		}
		lapsedCh <- time.Since(killedAt)
	}()
	var lapsed, got404 time.Duration
	var outcomes []string
	for time.Since(killedAt) < 12*time.Second && got404 == 0 {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		began := time.Since(killedAt)
		code, _, err := httpGet(actx, e2.url(stream))
		cancel()
		switch {
		case err != nil && errors.Is(err, context.DeadlineExceeded):
			outcomes = append(outcomes, fmt.Sprintf("%.1fs:timeout", began.Seconds()))
		case err != nil:
			outcomes = append(outcomes, fmt.Sprintf("%.1fs:%v", began.Seconds(), err))
		default:
			outcomes = append(outcomes, fmt.Sprintf("%.1fs:%d", began.Seconds(), code))
			if code == 404 {
				got404 = time.Since(killedAt)
			}
		}
		if got404 == 0 {
			time.Sleep(500 * time.Millisecond) // the player's retry interval
		}
	}
	lapsed = <-lapsedCh
	figure(t, sc, "claim_lapsed_after_kill", lapsed, "≤ --ttl 3s (+ 250ms of polling)")
	figure(t, sc, "player_attempts", strings.Join(outcomes, " "), "404 once the claim lapsed")
	figure(t, sc, "first_404_after_kill", got404, "≤ claim lapse + one attempt (2.5s)")
	switch {
	case lapsed == 0:
		t.Errorf("the dead origin's claim %s was still in Redis 15 s after the kill", key)
	case lapsed > ttl+250*time.Millisecond:
		// The claim's PX is renewed to the TTL at each heartbeat: it must lapse at most one
		// TTL after the last heartbeat before the kill (+ this poll's 50 ms period).
		t.Errorf("the dead origin's claim lapsed %v after the kill, want ≤ --ttl %v", lapsed.Round(time.Millisecond), ttl)
	case got404 == 0:
		t.Errorf("the player never got a 404 in 12 s after the kill (the claim lapsed %v after it); attempts: %s",
			lapsed.Round(time.Millisecond), strings.Join(outcomes, " "))
	case got404 > lapsed+2500*time.Millisecond:
		t.Errorf("the player got a 404 %v after the claim lapsed, want at its next attempt", (got404 - lapsed).Round(time.Millisecond))
	}
}

// splice finds where a checked viewer's stream changed publishing session (the second
// video sequence header) and returns the last tag of type typ before it and the first
// media tag of that type after it.
func splice(recs []tagRec, typ byte) (before, after tagRec, ok bool) {
	headers := 0
	at := -1
	for i, r := range recs {
		if r.kind == probe.KindVideoHeader {
			headers++
			if headers == 2 {
				at = i
				break
			}
		}
	}
	if at < 0 {
		return before, after, false
	}
	isMedia := func(r tagRec) bool {
		return r.typ == typ && r.kind != probe.KindVideoHeader && r.kind != probe.KindAudioHeader
	}
	var b, a = -1, -1
	for i := at - 1; i >= 0 && b < 0; i-- {
		if isMedia(recs[i]) {
			b = i
		}
	}
	for i := at + 1; i < len(recs) && a < 0; i++ {
		if isMedia(recs[i]) {
			a = i
		}
	}
	if a < 0 || b < 0 {
		return before, after, false
	}
	return recs[b], recs[a], true
}

// The encoder's connection drops (ffmpeg killed) and it reconnects at once to the same
// origin, within the edge's grace period: viewers keep their connection and the
// timeline continues. At the splice the timestamps step forward by less than one frame
// interval plus the real (wall-clock) gap, and never back.
func TestChaosPublisherReconnectsWithinGraceTimelineContinues(t *testing.T) {
	const sc, stream = "publisher-reconnect", "live/flaky"
	const frame = 40 * time.Millisecond // 25 fps
	ctx := chaosScenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c, _, _ := chaosCluster(ctx, t, "")
	o := c.startOrigin()
	e := c.startEdge("--grace", "10s")
	pub := publish(t, "ffmpeg-1", media, o.rtmpURL(stream, ""))
	goLive(ctx, t, pub, stream, e)

	cr := newCrowd(t)
	vs := cr.audience(ctx, e.url(stream), 20, 5)
	waitGrown(within(ctx, t, 20*time.Second), t, "every viewer to read 64 KB", vs, make([]int64, len(vs)), 64<<10)

	cr.resetGaps()
	pub.kill()
	atKill := byteCounts(vs)
	// Reconnect as an encoder does: at once, and again every 500 ms while refused.
	deadline := within(ctx, t, 20*time.Second)
	var cur *publisher
	var lastStart time.Time
	attempts := 0
	spliced := func() bool {
		for _, v := range checked(vs) {
			recs := v.recs()
			if _, a, ok := splice(recs, probe.TypeVideo); !ok || len(videoFrames(recs)) == 0 || videoFrames(recs)[len(videoFrames(recs))-1].ts < a.ts+1000 {
				return false
			}
		}
		return true
	}
	for !spliced() {
		if (cur == nil || cur.running() != nil) && time.Since(lastStart) >= 500*time.Millisecond {
			attempts++
			lastStart = time.Now()
			cur = publish(t, fmt.Sprintf("ffmpeg-reconnect-%d", attempts), media, o.rtmpURL(stream, ""))
		}
		select {
		case <-deadline.Done():
			t.Fatalf("checked viewers did not get 1 s of the reconnected stream within 20 s (%d attempts)", attempts)
		case <-time.After(50 * time.Millisecond):
		}
	}
	waitGrown(within(ctx, t, 15*time.Second), t, "every viewer to read the reconnected stream", vs, atKill, 64<<10)
	g := gaps(vs, time.Now())
	kept := checkViewers(t, sc, vs)
	figure(t, sc, "viewers_kept", fmt.Sprintf("%d/%d", kept, len(vs)), fmt.Sprintf("%d/%d", len(vs), len(vs)))
	figure(t, sc, "reconnect_attempts", attempts, "1 (the origin notices the drop at once)")
	figure(t, sc, "stall_max", pct(g, 1), "< grace 10s")
	var worst time.Duration
	for _, v := range checked(vs) {
		recs := v.recs()
		for _, typ := range []byte{probe.TypeVideo, probe.TypeAudio} {
			b, a, ok := splice(recs, typ)
			if !ok {
				t.Errorf("viewer %d: no splice found", v.idx)
				continue
			}
			jump := time.Duration(int64(a.ts)-int64(b.ts)) * time.Millisecond
			wall := a.at.Sub(b.at)
			name := map[byte]string{probe.TypeVideo: "video", probe.TypeAudio: "audio"}[typ]
			figure(t, sc, fmt.Sprintf("viewer%d_%s_ts_jump", v.idx, name), jump, fmt.Sprintf("< 1 frame (40ms) + real gap %v = %v", wall.Round(time.Millisecond), (frame+wall).Round(time.Millisecond)))
			if jump < 0 || jump >= frame+wall {
				t.Errorf("viewer %d: %s timestamp jumps %v at the splice (%d → %d ms) for a real gap of %v; want 0 ≤ jump < %v",
					v.idx, name, jump, b.ts, a.ts, wall.Round(time.Millisecond), (frame + wall).Round(time.Millisecond))
			}
			worst = max(worst, jump-wall)
		}
	}
	figure(t, sc, "max_ts_jump_minus_real_gap", worst, "< 40ms")
	if attempts != 1 {
		t.Errorf("the encoder needed %d attempts to reconnect, want 1: the origin must notice the dropped publisher at once", attempts)
	}
	if m := pct(g, 1); m >= 10*time.Second {
		t.Errorf("a viewer waited %v for data across the reconnect, want < --grace 10s", m)
	}
}

// An edge is killed (SIGKILL): its viewers' connections close at once (EOF or reset),
// so players reconnect through the load balancer; viewers on the other edge see no
// stall at all.
func TestChaosEdgeKilledItsViewersCloseOthersPlayOn(t *testing.T) {
	const sc, stream = "edge-kill", "live/edges"
	ctx := chaosScenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c, _, _ := chaosCluster(ctx, t, "")
	o := c.startOrigin()
	e1, e2 := c.startEdge(), c.startEdge()
	goLive(ctx, t, publish(t, "ffmpeg", media, o.rtmpURL(stream, "")), stream, e1, e2)

	cr := newCrowd(t)
	doomed, others := cr.audience(ctx, e1.url(stream), 50, 3), cr.audience(ctx, e2.url(stream), 50, 3)
	all := append(slices.Clone(doomed), others...)
	waitGrown(within(ctx, t, 20*time.Second), t, "every viewer to read 64 KB", all, make([]int64, len(all)), 64<<10)

	cr.resetGaps()
	killedAt := time.Now()
	e1.kill()
	atKill := byteCounts(others)
	waitFor(within(ctx, t, 10*time.Second), t, "the killed edge's viewers to see their connection close", func() error {
		open := 0
		for _, v := range doomed {
			if ended, _ := v.ended(); !ended {
				open++
			}
		}
		if open > 0 {
			return fmt.Errorf("%d of %d still open", open, len(doomed))
		}
		return nil
	})
	var closeAfter []time.Duration
	how := map[string]int{}
	for _, v := range doomed {
		closeAfter = append(closeAfter, v.endedAt.Sub(killedAt))
		_, err := v.ended()
		switch {
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, probe.ErrEnded),
			errors.Is(err, probe.ErrViolation) && strings.Contains(err.Error(), "stream cut"): // a checked viewer cut mid-tag
			how["eof"]++
		case errors.Is(err, syscall.ECONNRESET):
			how["reset"]++
		default:
			how[err.Error()]++
		}
	}
	// The other edge's viewers over the next two seconds of media.
	waitGrown(within(ctx, t, 15*time.Second), t, "the other edge's viewers to keep reading", others, atKill, 96<<10)
	g := gaps(others, time.Now())
	checkViewers(t, sc+" (other edge)", others)
	figure(t, sc, "closed_after_kill_p50", pct(closeAfter, 0.5), "≤ 1s")
	figure(t, sc, "closed_after_kill_max", pct(closeAfter, 1), "≤ 1s")
	figure(t, sc, "close_kinds", fmt.Sprint(how), "eof or reset")
	figure(t, sc, "other_edge_max_gap", pct(g, 1), "≤ 1s (no stall)")
	if m := pct(closeAfter, 1); m > time.Second {
		t.Errorf("a viewer of the killed edge noticed %v after the kill, want ≤ 1s", m)
	}
	for kind, n := range how {
		if kind != "eof" && kind != "reset" {
			t.Errorf("%d viewers of the killed edge ended with %q, want eof or reset", n, kind)
		}
	}
	if m := pct(g, 1); m > time.Second {
		t.Errorf("a viewer of the other edge waited %v for data during the kill, want ≤ 1s", m)
	}
}

// lateness is, for each video frame, its arrival time minus its timestamp (ms): constant
// while a viewer plays live, larger for stale frames.
func lateness(r tagRec) int64 { return r.at.UnixMilli() - int64(r.ts) }

// The NATS server is restarted (stopped, started again on the same port a second
// later): origins and edges reconnect by themselves and the streams resume within
// 2 s of NATS being back, without replaying stale video: timestamps never go back, no
// frame repeats a timestamp (the edge clamps old timestamps, so a replay would show as
// repeats), and the oldest frame delivered after the resume is at most one GOP late.
func TestChaosNATSRestartStreamsResume(t *testing.T) {
	const sc, stream = "nats-restart", "live/bus"
	ctx := chaosScenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c, ns, _ := chaosCluster(ctx, t, "")
	o := c.startOrigin()
	e1, e2 := c.startEdge(), c.startEdge()
	goLive(ctx, t, publish(t, "ffmpeg", media, o.rtmpURL(stream, "")), stream, e1, e2)

	cr := newCrowd(t)
	vs := append(cr.audience(ctx, e1.url(stream), 10, 5), cr.audience(ctx, e2.url(stream), 10, 5)...)
	waitGrown(within(ctx, t, 20*time.Second), t, "every viewer to read 64 KB", vs, make([]int64, len(vs)), 64<<10)

	stoppedAt := time.Now()
	ns.p.stop()
	time.Sleep(time.Second - time.Since(stoppedAt)) // prescribed: start again 1 s later
	ns.start(ctx)
	backAt := time.Now()
	atBack := byteCounts(vs)
	waitGrown(within(ctx, t, 20*time.Second), t, "every viewer to receive data after NATS is back", vs, atBack, 1)
	waitGrown(within(ctx, t, 20*time.Second), t, "every viewer to read 2 s of media after NATS is back", vs, atBack, 96<<10)
	kept := checkViewers(t, sc, vs)
	figure(t, sc, "viewers_kept", fmt.Sprintf("%d/%d", kept, len(vs)), fmt.Sprintf("%d/%d", len(vs), len(vs)))
	figure(t, sc, "nats_down", backAt.Sub(stoppedAt), "1s + start")

	var firstNew, stale []time.Duration
	repeats := 0
	for _, v := range checked(vs) {
		frames := videoFrames(v.recs())
		i := slices.IndexFunc(frames, func(r tagRec) bool { return r.at.After(backAt) })
		if i <= 0 {
			t.Errorf("viewer %d: no video frames before and after the restart", v.idx)
			continue
		}
		firstNew = append(firstNew, frames[i].at.Sub(backAt))
		var before []int64
		for _, r := range frames[:i] {
			if r.at.After(stoppedAt.Add(-3 * time.Second)) {
				before = append(before, lateness(r))
			}
		}
		slices.Sort(before)
		live := before[len(before)/2]
		var worst int64
		for j, r := range frames[i:] {
			worst = max(worst, lateness(r)-live)
			if p := frames[i+j-1]; r.ts == p.ts {
				repeats++
			}
		}
		stale = append(stale, time.Duration(worst)*time.Millisecond)
	}
	figure(t, sc, "first_new_data_after_nats_back_p50", pct(firstNew, 0.5), "≤ 2s")
	figure(t, sc, "first_new_data_after_nats_back_max", pct(firstNew, 1), "≤ 2s")
	figure(t, sc, "oldest_frame_after_resume_late_by", pct(stale, 1), "≤ 1 GOP (1s) + 0.5s")
	figure(t, sc, "repeated_video_timestamps_after_resume", repeats, "0")
	if m := pct(firstNew, 1); m > 2*time.Second {
		t.Errorf("first new data %v after NATS was back, want ≤ 2s", m)
	}
	if m := pct(stale, 1); m > 1500*time.Millisecond {
		t.Errorf("a frame delivered after the resume was %v later than live: stale video replayed", m)
	}
	if repeats > 0 {
		t.Errorf("%d video frames after the resume repeat the previous timestamp: old video clamped and replayed", repeats)
	}
}

// The Redis server is killed and started again empty on the same port: the origin's
// heartbeat writes its liveness record and stream claim again within one TTL, viewers
// watching are not interrupted (the data path does not touch Redis), and a new viewer,
// on an edge that has to look the stream up in the rebuilt registry, can join.
func TestChaosRedisRestartRegistryRebuilt(t *testing.T) {
	const sc, stream = "redis-restart", "live/registry"
	const ttl = 3 * time.Second
	ctx := chaosScenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c, _, rs := chaosCluster(ctx, t, "")
	o := c.startOrigin("--ttl", ttl.String())
	e1, e2 := c.startEdge(), c.startEdge() // e2 never pulled the stream before the restart
	goLive(ctx, t, publish(t, "ffmpeg", media, o.rtmpURL(stream, "")), stream, e1)

	streamKey, originKey := "{flvcdn}:stream:"+stream, "{flvcdn}:origin:"+o.id
	keys := func() error {
		for _, k := range []string{streamKey, originKey} {
			v, err := rs.do("GET", k)
			if err != nil {
				return err
			}
			if v == "" {
				return fmt.Errorf("no key %s", k)
			}
		}
		return nil
	}
	waitFor(within(ctx, t, 5*time.Second), t, "the registry keys", keys)
	cr := newCrowd(t)
	vs := cr.audience(ctx, e1.url(stream), 20, 5)
	waitGrown(within(ctx, t, 20*time.Second), t, "every viewer to read 64 KB", vs, make([]int64, len(vs)), 64<<10)

	// A key nobody rewrites proves that the new server starts with no data.
	if _, err := rs.do("SET", "chaos:sentinel", "1"); err != nil {
		t.Fatal(err)
	}
	cr.resetGaps()
	rs.p.kill()
	rs.start(ctx)
	backAt := time.Now()
	if v, err := rs.do("GET", "chaos:sentinel"); err != nil || v != "" {
		t.Fatalf("the new redis-server kept data: sentinel %q %v", v, err)
	}
	atBack := byteCounts(vs)
	waitFor(within(ctx, t, 15*time.Second), t, "the registry keys to be written again", keys)
	rebuilt := time.Since(backAt)
	owner, _ := rs.do("GET", streamKey)
	waitGrown(within(ctx, t, 15*time.Second), t, "every viewer to keep reading", vs, atBack, 96<<10)
	g := gaps(vs, time.Now())
	kept := checkViewers(t, sc, vs)

	// New viewers: on e1 (which pulls the stream) and on e2 (which must look it up).
	var joined []string
	for _, e := range []*edge{e1, e2} {
		r, err := CheckURL(within(ctx, t, 15*time.Second), e.url(stream), ViewOptions{WantAudio: true, WantVideo: true, Duration: 4 * time.Second})
		if err != nil {
			t.Errorf("a new viewer on %s after the restart: %v (%s)", e.id, err, r)
			continue
		}
		if r.Keyframes < 1 {
			t.Errorf("a new viewer on %s: no keyframe: %s", e.id, r)
			continue
		}
		joined = append(joined, e.id)
	}
	figure(t, sc, "registry_rebuilt_after", rebuilt, "≤ 1 TTL (3s)")
	figure(t, sc, "claim", strings.TrimSpace(owner), "this origin's session")
	figure(t, sc, "viewers_kept", fmt.Sprintf("%d/%d", kept, len(vs)), fmt.Sprintf("%d/%d", len(vs), len(vs)))
	figure(t, sc, "viewer_max_gap", pct(g, 1), "≤ 1s (not interrupted)")
	figure(t, sc, "new_viewers_joined", strings.Join(joined, ","), e1.id+","+e2.id)
	if rebuilt > ttl {
		t.Errorf("registry rebuilt %v after Redis came back, want ≤ one TTL (%v)", rebuilt, ttl)
	}
	if !strings.Contains(owner, o.id) {
		t.Errorf("stream claim %q does not name %s", owner, o.id)
	}
	if m := pct(g, 1); m > time.Second {
		t.Errorf("a viewer waited %v for data while Redis restarted, want ≤ 1s", m)
	}
}
