package e2e

import (
	"bytes"
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/probe"
)

// viewAll runs one checked viewer per URL at the same time and returns their reports.
func viewAll(ctx context.Context, t *testing.T, urls []string, o ViewOptions) []Report {
	t.Helper()
	reps := make([]Report, len(urls))
	errs := make([]error, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reps[i], errs[i] = CheckURL(ctx, u, o)
		}()
	}
	wg.Wait()
	for i, u := range urls {
		t.Logf("%s: %s", u, reps[i])
		if errs[i] != nil {
			t.Errorf("%s: %v", u, errs[i])
		}
	}
	return reps
}

// A streamer publishes H.264/AAC with ffmpeg; viewers on two different edges both get
// a stream that ffprobe recognises and that passes the FLV checker.
func TestPublishWithFFmpegPlayThroughTwoEdges(t *testing.T) {
	ctx := scenario(t, 90*time.Second, "ffmpeg", "ffprobe")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	o := c.startOrigin()
	edges := []*edge{c.startEdge(), c.startEdge()}
	goLive(ctx, t, publish(t, "ffmpeg-publisher", media, o.rtmpURL("live/e2e", "")), "live/e2e", edges...)

	var urls []string
	for _, e := range edges {
		urls = append(urls, e.url("live/e2e"))
	}
	for _, u := range urls {
		if got, want := ffprobeCodecs(ctx, t, u), []string{"aac", "h264"}; !slices.Equal(got, want) {
			t.Errorf("ffprobe %s: codecs %s, want %s", u, codecsString(got), codecsString(want))
		}
	}
	reps := viewAll(ctx, t, urls, ViewOptions{WantAudio: true, WantVideo: true, Duration: 4500 * time.Millisecond})
	for i, r := range reps {
		// 4.5 s at 25 fps and ~43 AAC frames/s, with margin for start-up.
		if r.Video < 90 || r.Audio < 150 || r.Keyframes < 3 {
			t.Errorf("%s: too little media in 4.5 s: %s", urls[i], r)
		}
	}
}

// Audio-only and video-only publishers get FLV headers that announce only their track.
func TestAudioOnlyAndVideoOnly(t *testing.T) {
	ctx := scenario(t, 90*time.Second, "ffmpeg")
	audio, video := makeMedia(t, mediaAudio), makeMedia(t, mediaVideo)
	c := newCluster(ctx, t)
	o := c.startOrigin()
	e := c.startEdge()
	pa := publish(t, "ffmpeg-audio", audio, o.rtmpURL("live/audio", ""))
	pv := publish(t, "ffmpeg-video", video, o.rtmpURL("live/video", ""))
	goLive(ctx, t, pa, "live/audio", e)
	goLive(ctx, t, pv, "live/video", e)

	t.Run("audio", func(t *testing.T) {
		r, err := CheckURL(ctx, e.url("live/audio"), ViewOptions{WantAudio: true, Duration: 4 * time.Second})
		t.Logf("live/audio: %s", r)
		if err != nil {
			t.Fatal(err)
		}
		if r.Flags != 0x04 || r.Audio < 100 || r.AudioHeaders < 1 || r.Video != 0 {
			t.Errorf("audio-only stream: %s", r)
		}
	})
	t.Run("video", func(t *testing.T) {
		r, err := CheckURL(ctx, e.url("live/video"), ViewOptions{WantVideo: true, Duration: 4 * time.Second})
		t.Logf("live/video: %s", r)
		if err != nil {
			t.Fatal(err)
		}
		if r.Flags != 0x01 || r.Video < 60 || r.Keyframes < 2 || r.Audio != 0 {
			t.Errorf("video-only stream: %s", r)
		}
	})
}

// An encoder whose timestamps start past 0xFFFFFF ms (4h40m), which makes RTMP use the
// extended timestamp field on every chunk, still gives viewers a valid stream.
func TestTimestampsPastExtendedRange(t *testing.T) {
	ctx := scenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	o := c.startOrigin()
	e := c.startEdge()
	pub := publish(t, "ffmpeg-publisher", media, o.rtmpURL("live/late", ""), "-output_ts_offset", "20000")
	goLive(ctx, t, pub, "live/late", e)

	v, err := StartViewer(ctx, e.url("live/late"), ViewOptions{WantAudio: true, WantVideo: true})
	if err != nil {
		t.Fatal(err)
	}
	werr := v.WaitTags(within(ctx, t, 20*time.Second), "125 video tags", func(v *Viewer) bool { return v.VideoTags() >= 125 })
	r, err := v.Stop()
	t.Logf("live/late: %s", r)
	if werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if r.Keyframes < 1 {
		t.Errorf("no keyframe: %s", r)
	}
	if err := pub.running(); err != nil {
		t.Errorf("publisher was dropped: %v", err)
	}
}

// A viewer who joins a stream that is already playing, in the middle of a GOP, starts
// with metadata, sequence headers and a keyframe: on the edge that already pulls the
// stream (GOP cache) and on a fresh edge (snapshot from the origin).
func TestLaterViewerStartsAtKeyframe(t *testing.T) {
	ctx := scenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	o := c.startOrigin()
	e1, e2 := c.startEdge(), c.startEdge()
	goLive(ctx, t, publish(t, "ffmpeg-publisher", media, o.rtmpURL("live/join", "")), "live/join", e1)

	opts := ViewOptions{WantAudio: true, WantVideo: true}
	first, err := StartViewer(ctx, e1.url("live/join"), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Stop()
	// Join mid-GOP: after two keyframes, 10-15 frames into a 25-frame GOP.
	if err := first.WaitTags(within(ctx, t, 20*time.Second), "the middle of a GOP", func(v *Viewer) bool {
		n := v.VideoSinceKeyframe()
		return v.Keyframes() >= 2 && n >= 10 && n <= 15
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("joining %d frames into a GOP", first.VideoSinceKeyframe())
	opts.Duration = 4 * time.Second
	reps := viewAll(ctx, t, []string{e1.url("live/join"), e2.url("live/join")}, opts)
	for i, r := range reps {
		if r.Keyframes < 1 || r.Video < 50 {
			t.Errorf("viewer %d: %s", i+2, r)
		}
	}
	r, err := first.Stop()
	t.Logf("first viewer: %s", r)
	if err != nil {
		t.Errorf("first viewer: %v", err)
	}
}

// The origin loops a file as a live stream (--source), as `make run` does with the demo
// file: viewers get a valid, endless stream.
func TestOriginLoopsSourceFile(t *testing.T) {
	ctx := scenario(t, 60*time.Second)
	file := demoFile()
	if file == "" {
		t.Log("testdata/demo.flv not present; looping a generated file")
		file = makeMedia(t, mediaAV)
	}
	c := newCluster(ctx, t)
	c.startOrigin("--source", "live/demo="+file)
	e := c.startEdge()
	e.waitPlayable(ctx, t, "live/demo")
	r, err := CheckURL(ctx, e.url("live/demo"), ViewOptions{WantAudio: true, WantVideo: true, Duration: 4 * time.Second})
	t.Logf("%s: %s", file, r)
	if err != nil {
		t.Fatal(err)
	}
	if r.Keyframes < 1 || r.Video < 60 {
		t.Errorf("too little video in 4 s: %s", r)
	}
}

// A viewer opens the player before the streamer goes live, and the player retries (as
// the demo page does) until the stream answers. The first response it gets, and those of
// viewers who come a little later to the same edge, start with the FLV header flags of
// the real tracks, metadata, sequence headers and a keyframe.
func TestViewerWaitingBeforeGoLive(t *testing.T) {
	ctx := scenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	o := c.startOrigin()
	e := c.startEdge()
	url := e.url("live/soon")
	opts := ViewOptions{WantAudio: true, WantVideo: true, Duration: 4 * time.Second}

	// The player is already retrying when the publisher starts.
	if _, err := StartViewer(ctx, url, opts); err == nil {
		t.Fatal("stream playable before anyone published it")
	}
	pub := publish(t, "ffmpeg-publisher", media, o.rtmpURL("live/soon", ""))
	var first *Viewer
	waitFor(within(ctx, t, 20*time.Second), t, "the retrying player to get 200", func() error {
		if err := pub.running(); err != nil {
			return err
		}
		v, err := StartViewer(ctx, url, opts)
		if err == nil {
			first = v
		}
		return err
	})
	t.Logf("player got 200 after ffmpeg sent %v", time.Duration(pub.sentUS.Load())*time.Microsecond)
	r, err := first.Wait(ctx)
	t.Logf("first viewer: %s", r)
	if err != nil {
		t.Errorf("first viewer: %v", err)
	}
	r, err = CheckURL(ctx, url, opts)
	t.Logf("next viewer: %s", r)
	if err != nil {
		t.Errorf("next viewer: %v", err)
	}
}

// Two streams of the same app play through one edge at once: each viewer gets its own
// stream, never the other's. The streams differ only in picture size (the same tracks,
// so the header flags cannot tell them apart): every video sequence header a viewer
// receives must be its own source's, byte for byte.
func TestStreamsOnOneEdgeStayApart(t *testing.T) {
	ctx := scenario(t, 90*time.Second, "ffmpeg")
	big := makeMedia(t, mediaAV) // 320x240
	small := makeClip(t, "small.flv",
		"-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-f", "lavfi", "-i", "sine=frequency=880:sample_rate=44100",
		"-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "25",
		"-c:a", "aac", "-b:a", "64k", "-ar", "44100", "-t", "10")
	c := newCluster(ctx, t)
	o := c.startOrigin()
	e := c.startEdge()
	streams := map[string]string{"live/big": big, "live/small": small}
	for name, file := range streams {
		goLive(ctx, t, publish(t, "ffmpeg-"+name, file, o.rtmpURL(name, "")), name, e)
	}
	cr := newCrowd(t)
	var mu sync.Mutex
	foreign := map[string]int{}
	var all []*crowdViewer
	for name, file := range streams {
		var own []byte
		for _, tag := range readTags(t, file) {
			if probe.Classify(tag.Type, tag.Body).Kind == probe.KindVideoHeader {
				own = tag.Body
				break
			}
		}
		if own == nil {
			t.Fatalf("%s: no video sequence header", file)
		}
		vs := cr.add(ctx, e.url(name), 3, viewerOpts{check: true, wantAudio: true, wantVideo: true, onTag: func(tag probe.Tag) {
			if tag.Kind == probe.KindVideoHeader && !bytes.Equal(tag.Body, own) {
				mu.Lock()
				foreign[name]++
				mu.Unlock()
			}
		}})
		all = append(all, vs...)
	}
	waitGrown(within(ctx, t, 20*time.Second), t, "every viewer to read 96 KB", all, make([]int64, len(all)), 96<<10)
	kept := checkViewers(t, "two streams", all)
	mu.Lock()
	defer mu.Unlock()
	for _, v := range all {
		if r, _ := v.report(); r.VideoHeaders == 0 {
			t.Errorf("viewer %d (%s): no video sequence header: %s", v.idx, v.url, r)
		}
	}
	for name, n := range foreign {
		t.Errorf("viewers of %s got %d video sequence headers of another stream", name, n)
	}
	t.Logf("%d/%d viewers kept, foreign headers %v", kept, len(all), foreign)
}
