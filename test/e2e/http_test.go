package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// do sends one request and returns the response with up to limit bytes of its body read
// (the connection is closed after that, so a live stream does not hold it).
func do(ctx context.Context, t *testing.T, method, url string, header http.Header, limit int64) (*http.Response, []byte, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	began := time.Now()
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	took := time.Since(began)
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp, body, took
}

// A player asking for a stream nobody publishes gets a 404 at once, with a short body.
func TestUnknownStream404(t *testing.T) {
	ctx := scenario(t, 60*time.Second)
	c := newCluster(ctx, t)
	c.startOrigin()
	e := c.startEdge()

	for _, path := range []string{"/live/nobody.flv", "/other/nobody_here-1.flv"} {
		for _, method := range []string{"GET", "HEAD"} {
			resp, body, took := do(ctx, t, method, "http://"+e.addr+path, nil, 4096)
			t.Logf("%s %s: %d in %v: %q", method, path, resp.StatusCode, took.Round(time.Millisecond), body)
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("%s %s: status %d, want 404", method, path, resp.StatusCode)
			}
			if took > 2*time.Second {
				t.Errorf("%s %s: 404 took %v, want it at once", method, path, took)
			}
			if method == "GET" && (len(body) == 0 || len(body) > 200 || strings.Count(strings.TrimRight(string(body), "\n"), "\n") > 0) {
				t.Errorf("GET %s: body %q, want one short line", path, body)
			}
		}
	}
	// Names the origin would refuse can never be live: 404 (or 400), also at once.
	resp, body, took := do(ctx, t, "GET", "http://"+e.addr+"/live/bad.name.flv", nil, 4096)
	if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusBadRequest {
		t.Errorf("GET /live/bad.name.flv: status %d (%q), want 404 or 400", resp.StatusCode, body)
	}
	if took > 2*time.Second {
		t.Errorf("GET /live/bad.name.flv took %v", took)
	}
}

// The HTTP details players and tools depend on: content type, chunked transfer, HEAD,
// CORS preflight, tolerance of the Range and Icy-MetaData headers ffmpeg sends, and the
// demo page.
func TestHTTPDetails(t *testing.T) {
	ctx := scenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	o := c.startOrigin()
	e := c.startEdge()
	goLive(ctx, t, publish(t, "ffmpeg-publisher", media, o.rtmpURL("live/http", "")), "live/http", e)
	url := e.url("live/http")
	const origin = "http://player.example.test"

	t.Run("GET", func(t *testing.T) {
		resp, body, _ := do(ctx, t, "GET", url, http.Header{"Origin": {origin}}, 13)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "video/x-flv" {
			t.Errorf("Content-Type %q, want video/x-flv", ct)
		}
		if resp.Proto != "HTTP/1.1" || !slices.Equal(resp.TransferEncoding, []string{"chunked"}) || resp.ContentLength != -1 {
			t.Errorf("%s Transfer-Encoding %q Content-Length %d, want HTTP/1.1 chunked without length", resp.Proto, resp.TransferEncoding, resp.ContentLength)
		}
		if a := resp.Header.Get("Access-Control-Allow-Origin"); a != "*" && a != origin {
			t.Errorf("Access-Control-Allow-Origin %q on a cross-origin GET", a)
		}
		if !strings.HasPrefix(string(body), "FLV\x01") {
			t.Errorf("body starts %q, want an FLV header", body)
		}
	})

	t.Run("HEAD", func(t *testing.T) {
		resp, body, took := do(ctx, t, "HEAD", url, nil, 1<<20)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "video/x-flv" || len(body) != 0 {
			t.Errorf("HEAD: status %d Content-Type %q body %d bytes, want 200 video/x-flv and no body", resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}
		if took > 2*time.Second {
			t.Errorf("HEAD took %v", took)
		}
	})

	t.Run("OPTIONS", func(t *testing.T) {
		resp, _, _ := do(ctx, t, "OPTIONS", url, http.Header{
			"Origin":                         {origin},
			"Access-Control-Request-Method":  {"GET"},
			"Access-Control-Request-Headers": {"range"},
		}, 4096)
		if resp.StatusCode != 200 && resp.StatusCode != 204 {
			t.Errorf("preflight status %d, want 200 or 204", resp.StatusCode)
		}
		h := resp.Header
		if a := h.Get("Access-Control-Allow-Origin"); a != "*" && a != origin {
			t.Errorf("Access-Control-Allow-Origin %q", a)
		}
		if m := h.Get("Access-Control-Allow-Methods"); !strings.Contains(m, "GET") {
			t.Errorf("Access-Control-Allow-Methods %q lacks GET", m)
		}
		if ah := strings.ToLower(h.Get("Access-Control-Allow-Headers")); ah != "*" && !strings.Contains(ah, "range") {
			t.Errorf("Access-Control-Allow-Headers %q does not allow the requested range header", ah)
		}
	})

	// The three at once: each viewer watches long enough for its media time to be
	// measured against the wall clock.
	t.Run("Range, Icy-MetaData, ffmpeg-like", func(t *testing.T) {
		hdrs := map[string]http.Header{
			"Range":        {"Range": {"bytes=0-"}},
			"Icy-MetaData": {"Icy-MetaData": {"1"}},
			"ffmpeg-like":  {"Range": {"bytes=0-"}, "Icy-MetaData": {"1"}, "User-Agent": {"Lavf/59.27.100"}},
		}
		var wg sync.WaitGroup
		for name, hdr := range hdrs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := CheckURL(ctx, url, ViewOptions{WantAudio: true, WantVideo: true, Duration: 4 * time.Second, Header: hdr})
				if err != nil {
					t.Errorf("%s %v: %v (%s)", name, hdr, err, r)
				}
			}()
		}
		wg.Wait()
	})

	t.Run("page", func(t *testing.T) {
		for path, want := range map[string]string{"/": "text/html", "/mpegts.js": "javascript"} {
			resp, body, _ := do(ctx, t, "GET", "http://"+e.addr+path, nil, 1<<20)
			if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), want) || len(body) == 0 {
				t.Errorf("GET %s: %d %q, %d bytes", path, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
			}
		}
	})

	t.Run("metrics", func(t *testing.T) {
		for _, name := range []string{"flvcdn_edge_viewers", "flvcdn_edge_streams", "flvcdn_edge_joins_total",
			"flvcdn_edge_viewer_drops_total", "flvcdn_edge_bytes_out_total"} {
			if _, err := e.metric(ctx, name); err != nil {
				t.Errorf("edge /metrics: %v", err)
			}
		}
	})

	t.Run("health", func(t *testing.T) {
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			for _, addr := range []string{e.addr, o.httpAddr} {
				code, _, err := httpGet(ctx, "http://"+addr+path)
				if err != nil || code != 200 {
					t.Errorf("GET %s%s: %d %v", addr, path, code, err)
				}
			}
		}
	})
}

// An edge stops pulling a stream a linger period after its last viewer leaves, and
// pulls it again for the next viewer.
func TestPullStopsAfterLastViewer(t *testing.T) {
	ctx := scenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	o := c.startOrigin()
	e := c.startEdge("--linger", "1s")
	goLive(ctx, t, publish(t, "ffmpeg-publisher", media, o.rtmpURL("live/linger", "")), "live/linger", e)

	gauge := func(name string, want float64) func() error {
		return func() error {
			v, err := e.metric(ctx, name)
			if err != nil {
				return err
			}
			if v != want {
				return fmt.Errorf("%s = %v, want %v", name, v, want)
			}
			return nil
		}
	}
	// waitPlayable's own request was a viewer too: its pull must end first.
	waitFor(within(ctx, t, 10*time.Second), t, "no stream pulled after the probe", gauge("flvcdn_edge_streams", 0))

	for round := 1; round <= 2; round++ {
		v, err := StartViewer(ctx, e.url("live/linger"), ViewOptions{WantAudio: true, WantVideo: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.WaitTags(within(ctx, t, 15*time.Second), "125 video tags", func(v *Viewer) bool { return v.VideoTags() >= 125 }); err != nil {
			t.Fatal(err)
		}
		waitFor(within(ctx, t, 5*time.Second), t, "one stream pulled", gauge("flvcdn_edge_streams", 1))
		waitFor(within(ctx, t, 5*time.Second), t, "one viewer", gauge("flvcdn_edge_viewers", 1))
		r, err := v.Stop()
		if err != nil {
			t.Fatalf("round %d viewer: %v (%s)", round, err, r)
		}
		left := time.Now()
		waitFor(within(ctx, t, 5*time.Second), t, "no viewer", gauge("flvcdn_edge_viewers", 0))
		waitFor(within(ctx, t, 10*time.Second), t, "the pull to stop after --linger=1s", gauge("flvcdn_edge_streams", 0))
		t.Logf("round %d: pull stopped %v after the last viewer left", round, time.Since(left).Round(10*time.Millisecond))
	}
}
