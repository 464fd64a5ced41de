package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// apiStream is a stream as the cluster API returns it.
type apiStream struct {
	Name   string `json:"name"`
	Origin string `json:"origin"`
	Video  *struct {
		Codec  string  `json:"codec"`
		Width  int     `json:"width"`
		Height int     `json:"height"`
		FPS    float64 `json:"fps"`
	} `json:"video"`
	Audio *struct {
		Codec      string `json:"codec"`
		SampleRate int    `json:"sample_rate"`
		Channels   int    `json:"channels"`
	} `json:"audio"`
	BitrateKbps   float64        `json:"bitrate_kbps"`
	UptimeS       float64        `json:"uptime_s"`
	Viewers       int            `json:"viewers"`
	ViewersByEdge map[string]int `json:"viewers_by_edge"`
}

// apiGet fetches an API document with the bearer token (if any) into v.
func apiGet(ctx context.Context, addr, path, token string, v any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode == http.StatusOK && v != nil {
		return resp.StatusCode, json.Unmarshal(b, v)
	}
	return resp.StatusCode, nil
}

// watchers keeps n plain HTTP-FLV viewers of url reading until the test ends.
func watchers(ctx context.Context, t *testing.T, url string, n int) {
	t.Helper()
	for range n {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("viewer of %s: %v", url, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("viewer of %s: %s", url, resp.Status)
		}
		done := make(chan struct{})
		go func() { defer close(done); _, _ = io.Copy(io.Discard, resp.Body) }()
		t.Cleanup(func() { resp.Body.Close(); <-done })
	}
}

// Three live streams, viewers on two edges: the cluster API on any node lists all
// three with the media of each and the viewers of each edge, and the console shows
// the same; clicking a stream plays it in the page. A kick through the API
// disconnects the publisher wherever it is.
func TestConsoleShowsTheClusterAndPlays(t *testing.T) {
	ctx := scenario(t, 150*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	const token = "e2e-token"
	c := newCluster(ctx, t)
	o := c.startOrigin("--api-token", token,
		"--source", "live/one="+media, "--source", "live/two="+media, "--source", "live/three="+media)
	e1, e2 := c.startEdge("--api-token", token), c.startEdge("--api-token", token)
	for _, s := range []string{"live/one", "live/two", "live/three"} {
		e1.waitPlayable(ctx, t, s)
	}
	watchers(ctx, t, e1.url("live/one"), 2)
	watchers(ctx, t, e2.url("live/one"), 1)
	watchers(ctx, t, e2.url("live/two"), 3)
	want := map[string]map[string]int{
		"live/one":   {e1.id: 2, e2.id: 1},
		"live/two":   {e2.id: 3},
		"live/three": {},
	}

	// The API, asked on an edge and on the origin, sees the whole cluster.
	if code, _ := apiGet(ctx, e1.addr, "/api/v1/streams", "", nil); code != http.StatusUnauthorized {
		t.Errorf("GET /api/v1/streams without the token: %d, want 401", code)
	}
	for _, addr := range []string{e2.addr, o.httpAddr} {
		waitFor(within(ctx, t, 10*time.Second), t, "the API on "+addr+" to show every viewer", func() error {
			var got struct{ Streams []apiStream }
			if _, err := apiGet(ctx, addr, "/api/v1/streams", token, &got); err != nil {
				return err
			}
			if len(got.Streams) != 3 {
				return fmt.Errorf("%d streams", len(got.Streams))
			}
			for _, s := range got.Streams {
				byEdge := want[s.Name]
				total := 0
				for e, n := range byEdge {
					if s.ViewersByEdge[e] != n {
						return fmt.Errorf("%s on %s: %d viewers, want %d", s.Name, e, s.ViewersByEdge[e], n)
					}
					total += n
				}
				if s.Viewers != total || s.Origin != o.id {
					return fmt.Errorf("%s: %d viewers from %s, want %d from %s", s.Name, s.Viewers, s.Origin, total, o.id)
				}
				if s.Video == nil || s.Video.Codec != "h264" || s.Video.Width != 320 || s.Audio == nil || s.Audio.Codec != "aac" || s.Audio.SampleRate != 44100 {
					return fmt.Errorf("%s: media %+v %+v", s.Name, s.Video, s.Audio)
				}
				if s.BitrateKbps <= 0 {
					return fmt.Errorf("%s: bitrate %v", s.Name, s.BitrateKbps)
				}
			}
			return nil
		})
	}
	var nodes struct {
		Nodes []struct{ ID, Role, State string }
	}
	if _, err := apiGet(ctx, e1.addr, "/api/v1/nodes", token, &nodes); err != nil || len(nodes.Nodes) != 3 {
		t.Errorf("GET /api/v1/nodes: %+v %v, want 3 nodes", nodes, err)
	}
	if code, _ := apiGet(ctx, e1.addr, "/api/v1/streams/live/nope", token, nil); code != http.StatusNotFound {
		t.Errorf("GET an unknown stream: %d, want 404", code)
	}
	if code, _ := apiGet(ctx, e1.addr, "/api/v1/streams/live/bad.name", token, nil); code != http.StatusBadRequest {
		t.Errorf("GET a malformed name: %d, want 400", code)
	}

	// The console: a person with the token sees the three streams and their viewers.
	bctx := newBrowser(ctx, t)
	page := "http://" + e1.addr + "/console"
	if err := chromedp.Do(bctx, chromedp.Navigate(page)); err != nil {
		t.Fatalf("open %s: %v", page, err)
	}
	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		actx, cancel := context.WithTimeout(bctx, 10*time.Second)
		defer cancel()
		if err := chromedp.Do(actx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	actx, cancel := context.WithTimeout(bctx, 10*time.Second)
	if _, err := chromedp.Run(actx, chromedp.Evaluate[bool](`sessionStorage.setItem('flvcdn-token', '`+token+`'), true`)); err != nil {
		t.Fatalf("give the page its token: %v", err)
	}
	cancel()
	run("reload with the token", chromedp.Navigate(page))
	type consoleState struct {
		Rows []struct {
			Name    string `json:"name"`
			Viewers int    `json:"viewers"`
		} `json:"rows"`
		Nodes         int     `json:"nodes"`
		Selected      string  `json:"selected"`
		CurrentTime   float64 `json:"currentTime"`
		DecodedFrames int     `json:"decodedFrames"`
		VideoWidth    int     `json:"videoWidth"`
	}
	read := func() (consoleState, error) {
		actx, cancel := context.WithTimeout(bctx, 5*time.Second)
		defer cancel()
		return chromedp.Run(actx, chromedp.Evaluate[consoleState](`window.flvcdnConsole ? window.flvcdnConsole() : {rows: []}`))
	}
	var shown consoleState
	waitFor(within(ctx, t, 15*time.Second), t, "the console to list the three streams with their viewers", func() error {
		var err error
		if shown, err = read(); err != nil {
			return err
		}
		got := map[string]int{}
		for _, r := range shown.Rows {
			got[r.Name] = r.Viewers
		}
		if len(got) != 3 || got["live/one"] != 3 || got["live/two"] != 3 || got["live/three"] != 0 || shown.Nodes != 3 {
			return fmt.Errorf("page shows %v and %d nodes", got, shown.Nodes)
		}
		return nil
	})

	// Click live/three: the page plays it (frames decoded, the clock moving), and the
	// browser itself becomes that stream's one viewer.
	run("click live/three", chromedp.Click(chromedp.CSS(`tr.stream[data-name="live/three"] td.name`)))
	var first consoleState
	waitFor(within(ctx, t, 20*time.Second), t, "the console's player to play live/three", func() error {
		var err error
		if first, err = read(); err != nil {
			return err
		}
		if first.Selected != "live/three" || first.DecodedFrames == 0 || first.CurrentTime <= 0 || first.VideoWidth != 320 {
			return fmt.Errorf("player: %+v", first)
		}
		return nil
	})
	waitFor(within(ctx, t, 10*time.Second), t, "playback to advance and the browser to count as a viewer", func() error {
		s, err := read()
		if err != nil {
			return err
		}
		viewers := -1
		for _, r := range s.Rows {
			if r.Name == "live/three" {
				viewers = r.Viewers
			}
		}
		if s.CurrentTime < first.CurrentTime+2 || s.DecodedFrames < first.DecodedFrames+40 || viewers != 1 {
			return fmt.Errorf("after %+v: %+v, live/three viewers %d", first, s, viewers)
		}
		return nil
	})
	if dir := os.Getenv("FLVCDN_E2E_ARTIFACTS"); dir != "" {
		run("resize for the screenshot", chromedp.EmulateViewport(1440, 520))
		sctx, scancel := context.WithTimeout(bctx, 10*time.Second)
		png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
		scancel()
		if err == nil {
			_ = os.WriteFile(filepath.Join(dir, "console.png"), png, 0o644)
		}
	}

	// Kick: refused without the token, done with it; the stream leaves the listing.
	req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, "http://"+e2.addr+"/api/v1/streams/live/two", nil)
	if resp, err := httpClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("DELETE without the token: %v %v, want 401", resp, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := httpClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("DELETE live/two: %v %v, want 204", resp, err)
	}
	resp.Body.Close()
	waitFor(within(ctx, t, 10*time.Second), t, "the origin to log the kick", func() error {
		if !strings.Contains(o.Log.String(), "publisher kicked by an operator") {
			return fmt.Errorf("not logged yet")
		}
		return nil
	})
}
