package e2e

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// errNotYet keeps a poll going.
var errNotYet = errors.New("not yet")

// flvjsPage plays ?url= with flv.js (test/e2e/testdata/flvjs) and exposes the same
// window.flvcdnStats() as the edge's own page.
const flvjsPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>flv.js</title></head>
<body><video id="v" muted autoplay playsinline width="320" height="240"></video>
<script src="/flv.min.js"></script>
<script>
"use strict";
var video = document.getElementById("v"), lastError = "";
window.flvcdnStats = function () {
  var q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
  return { currentTime: video.currentTime, decodedFrames: q ? q.totalVideoFrames : 0, error: lastError };
};
var p = flvjs.createPlayer({ type: "flv", isLive: true, url: new URLSearchParams(location.search).get("url") },
  { enableStashBuffer: false });
p.on(flvjs.Events.ERROR, function (type, detail, info) { lastError = type + " " + detail + (info && info.msg ? " (" + info.msg + ")" : ""); });
p.attachMediaElement(video);
p.load();
var pr = p.play();
if (pr && pr.catch) pr.catch(function (e) { if (e.name !== "AbortError") lastError = "play: " + e.message; });
</script></body></html>`

// flv.js, the other widely used browser player, plays the edge's stream in Chromium
// over HTTP-FLV and over WebSocket-FLV, from a page on another origin (CORS and the
// WebSocket origin check both allow it with the default --cors-origin *).
func TestFlvJSPlaysHTTPAndWebSocket(t *testing.T) {
	ctx := scenario(t, 120*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	c.startOrigin("--source", "live/flvjs="+media)
	e := c.startEdge()
	e.waitPlayable(ctx, t, "live/flvjs")

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(flvjsPage))
	})
	mux.HandleFunc("/flv.min.js", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, filepath.Join("testdata", "flvjs", "flv.min.js"))
	})
	page := httptest.NewServer(mux) // on 127.0.0.1: another origin than the edge's
	defer page.Close()
	bctx := newBrowser(ctx, t)

	for _, url := range []string{"http://" + e.addr + "/live/flvjs.flv", "ws://" + e.addr + "/live/flvjs.flv"} {
		if err := chromedp.Do(bctx, chromedp.Navigate(page.URL+"/?url="+url)); err != nil {
			t.Fatalf("open the flv.js page for %s: %v", url, err)
		}
		stats := func() playerStats {
			t.Helper()
			actx, cancel := context.WithTimeout(bctx, 5*time.Second)
			defer cancel()
			s, err := chromedp.Run(actx, chromedp.Evaluate[playerStats](`window.flvcdnStats()`))
			if err != nil {
				t.Fatalf("flvcdnStats(): %v", err)
			}
			return s
		}
		var s0 playerStats
		waitFor(within(ctx, t, 20*time.Second), t, "flv.js to start playing "+url, func() error {
			if s0 = stats(); s0.Error != "" {
				t.Fatalf("flv.js error on %s: %s", url, s0.Error)
			}
			if s0.CurrentTime > 0 && s0.DecodedFrames > 0 {
				return nil
			}
			return errNotYet
		})
		t0 := time.Now()
		var s1 playerStats
		waitFor(within(ctx, t, 15*time.Second), t, "5 s of playback of "+url, func() error {
			if s1 = stats(); s1.Error != "" {
				t.Fatalf("flv.js error on %s: %s", url, s1.Error)
			}
			if time.Since(t0) >= 5*time.Second {
				return nil
			}
			return errNotYet
		})
		advanced := s1.CurrentTime - s0.CurrentTime
		t.Logf("flv.js %s: %.2f s of media and %d frames in %v", url, advanced, s1.DecodedFrames-s0.DecodedFrames, time.Since(t0).Round(time.Millisecond))
		if advanced < 3 || s1.DecodedFrames-s0.DecodedFrames < 50 {
			t.Errorf("flv.js %s: currentTime advanced %.2f s and %d frames decoded in 5 s, want >= 3 s and >= 50", url, advanced, s1.DecodedFrames-s0.DecodedFrames)
		}
	}
}
