package e2e

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// While a stream is live, a second publisher of the same name is refused, at the same
// origin or at another one, and viewers of the first see no interruption.
func TestSecondPublisherRefused(t *testing.T) {
	ctx := scenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	o1, o2 := c.startOrigin(), c.startOrigin()
	e := c.startEdge()
	goLive(ctx, t, publish(t, "ffmpeg-first", media, o1.rtmpURL("live/one", "")), "live/one", e)

	v, err := StartViewer(ctx, e.url("live/one"), ViewOptions{WantAudio: true, WantVideo: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	if err := v.WaitTags(within(ctx, t, 15*time.Second), "50 video tags", func(v *Viewer) bool { return v.VideoTags() >= 50 }); err != nil {
		t.Fatal(err)
	}

	for _, o := range []*origin{o1, o2} {
		before := o.refusals(ctx, t)
		second := publish(t, "ffmpeg-second-at-"+o.id, media, o.rtmpURL("live/one", ""))
		expectRefused(ctx, t, second, "second publisher of live/one at "+o.id)
		o.expectRefusals(ctx, t, before, map[string]float64{"taken": 1})
		n := v.Tags()
		if err := v.WaitTags(within(ctx, t, 10*time.Second), "100 more tags after the attempt", func(v *Viewer) bool { return v.Tags() >= n+100 }); err != nil {
			t.Fatal(err)
		}
	}
	r, err := v.Stop()
	t.Logf("viewer: %s", r)
	if err != nil {
		t.Fatal(err)
	}
}

// Publishing under a name outside [A-Za-z0-9_-]{1,64} is refused; with a publish secret,
// only the right key is accepted.
func TestBadNameRefused(t *testing.T) {
	ctx := scenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	open := c.startOrigin()
	const secret = "e2e-publish-secret"
	locked := c.startOrigin("--publish-secret", secret)
	e := c.startEdge()

	t.Run("names", func(t *testing.T) {
		bad := []string{
			"live/bad.name",
			"live/" + strings.Repeat("a", 65),
			strings.Repeat("b", 65) + "/demo",
			"live/bad%20name",
		}
		before := open.refusals(ctx, t)
		var pubs []*publisher
		for i, name := range bad {
			pubs = append(pubs, publish(t, fmt.Sprintf("ffmpeg-bad-%d", i), media, open.rtmpURL(name, "")))
		}
		for i, p := range pubs {
			expectRefused(ctx, t, p, fmt.Sprintf("publish to %q", bad[i]))
		}
		open.expectRefusals(ctx, t, before, map[string]float64{"bad-name": float64(len(bad))})
		// The longest valid name works: the limit is 64, not less.
		long := "live/" + strings.Repeat("a", 64)
		goLive(ctx, t, publish(t, "ffmpeg-64", media, open.rtmpURL(long, "")), long, e)
	})

	t.Run("keys", func(t *testing.T) {
		const stream = "live/keyed"
		wrong := map[string]string{
			"no key":                  "",
			"wrong key":               "0123456789abcdef",
			"key of another stream":   publishKey(secret, "live/other"),
			"key with another secret": publishKey("not-"+secret, stream),
		}
		before := locked.refusals(ctx, t)
		pubs := map[string]*publisher{}
		for why, key := range wrong {
			pubs[why] = publish(t, "ffmpeg-"+strings.ReplaceAll(why, " ", "-"), media, locked.rtmpURL(stream, key))
		}
		for why, p := range pubs {
			expectRefused(ctx, t, p, why)
		}
		locked.expectRefusals(ctx, t, before, map[string]float64{"auth": float64(len(wrong))})
		goLive(ctx, t, publish(t, "ffmpeg-right-key", media, locked.rtmpURL(stream, publishKey(secret, stream))), stream, e)
		r, err := CheckURL(ctx, e.url(stream), ViewOptions{WantAudio: true, WantVideo: true, Duration: 4 * time.Second})
		t.Logf("%s: %s", stream, r)
		if err != nil {
			t.Fatal(err)
		}
	})
}

// The publisher's connection drops and the encoder reconnects within the edge's grace
// period: the viewer's connection stays open, keeps receiving, and timestamps never go
// backwards (the checker enforces that per track across the reconnect).
func TestGracePeriodPublisherReconnect(t *testing.T) {
	ctx := scenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	o := c.startOrigin()
	e := c.startEdge("--grace", "10s")
	pub := publish(t, "ffmpeg-1", media, o.rtmpURL("live/flaky", ""))
	goLive(ctx, t, pub, "live/flaky", e)

	v, err := StartViewer(ctx, e.url("live/flaky"), ViewOptions{WantAudio: true, WantVideo: true, MaxStall: 9 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	if err := v.WaitTags(within(ctx, t, 15*time.Second), "125 video tags", func(v *Viewer) bool { return v.VideoTags() >= 125 }); err != nil {
		t.Fatal(err)
	}

	pub.kill()
	killed, at := v.Tags(), time.Now()
	t.Logf("publisher killed after %d tags", killed)

	// Reconnect as an encoder does: start again whenever the attempt ends, at most every 500 ms.
	deadline := within(ctx, t, 15*time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var cur *publisher
	attempts := 0
	var lastStart time.Time
	for v.Tags() < killed+150 {
		if (cur == nil || cur.running() != nil) && time.Since(lastStart) >= 500*time.Millisecond {
			if cur != nil {
				t.Logf("reconnect attempt %d ended: %s", attempts, lastLines(cur.Log.String(), 2))
			}
			attempts++
			lastStart = time.Now()
			cur = publish(t, fmt.Sprintf("ffmpeg-reconnect-%d", attempts), media, o.rtmpURL("live/flaky", ""))
		}
		select {
		case <-v.Done():
			r, err := v.Stop()
			t.Fatalf("viewer connection ended %v after the publisher dropped (err %v): %s", time.Since(at).Round(time.Millisecond), err, r)
		case <-deadline.Done():
			t.Fatalf("viewer got %d tags in 15 s after the publisher dropped (%d reconnect attempts), want 150", v.Tags()-killed, attempts)
		case <-tick.C:
		}
	}
	t.Logf("150 tags after the drop in %v, %d reconnect attempt(s)", time.Since(at).Round(time.Millisecond), attempts)
	r, err := v.Stop()
	t.Logf("viewer: %s", r)
	if err != nil {
		t.Fatal(err)
	}
	// The reconnected encoder is a new session: the viewer must get its sequence headers
	// (the checker then requires a keyframe before any inter frame of it).
	if r.VideoHeaders < 2 || r.AudioHeaders < 2 {
		t.Errorf("sequence headers v%d/a%d, want the reconnected session's too (≥ 2 each)", r.VideoHeaders, r.AudioHeaders)
	}
}

// The publisher goes away for good: once the grace period is over, the viewer's response
// ends cleanly (at a tag boundary, not mid-tag) and the stream is 404 again.
func TestViewerEndsAfterGrace(t *testing.T) {
	ctx := scenario(t, 60*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	o := c.startOrigin()
	e := c.startEdge("--grace", "2s")
	pub := publish(t, "ffmpeg-publisher", media, o.rtmpURL("live/gone", ""))
	goLive(ctx, t, pub, "live/gone", e)

	v, err := StartViewer(ctx, e.url("live/gone"), ViewOptions{WantAudio: true, WantVideo: true, MaxStall: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	if err := v.WaitTags(within(ctx, t, 15*time.Second), "125 video tags", func(v *Viewer) bool { return v.VideoTags() >= 125 }); err != nil {
		t.Fatal(err)
	}
	pub.kill()
	at := time.Now()
	select {
	case <-v.Done():
	case <-within(ctx, t, 15*time.Second).Done():
		t.Fatalf("viewer still connected 15 s after the publisher left (--grace=2s): %s", v.Report())
	}
	took := time.Since(at)
	r, err := v.Stop()
	t.Logf("response ended %v after the publisher left: %v; %s", took.Round(10*time.Millisecond), err, r)
	if !errors.Is(err, ErrEnded) {
		t.Errorf("viewer ended with %v, want a clean end of the response", err)
	}
	if took < 2*time.Second {
		t.Errorf("response ended %v after the publisher left, before --grace=2s", took)
	}
	waitFor(within(ctx, t, 10*time.Second), t, "live/gone to be 404 again", func() error {
		code, body, err := httpGet(ctx, e.url("live/gone"))
		if err != nil {
			return err
		}
		if code != 404 {
			return fmt.Errorf("status %d %q", code, body)
		}
		return nil
	})
}
