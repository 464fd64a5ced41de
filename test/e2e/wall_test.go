package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flvcdn/flvcdn/test/harness"
)

// wallTile is one entry of the wall page's window.flvcdnWall().
type wallTile struct {
	Stream        string  `json:"stream"`
	CurrentTime   float64 `json:"currentTime"`
	DecodedFrames int     `json:"decodedFrames"`
	State         string  `json:"state"`
	Error         string  `json:"error"`
}

// A viewer opens the wall page of one edge with 12 live streams in a 3x4 grid. Over
// plain HTTP/1.1 the browser opens at most six connections to the host, so at most six
// tiles play and the others wait; over HTTPS the same page negotiates HTTP/2 and all
// twelve play over one connection; over WebSocket-FLV (ws:// and wss://) all twelve
// play too. "Play" is what the user sees: the tile's decoded frame count and clock
// both advance. The certificate is self-signed by the test; Chromium trusts exactly
// its key.
func TestWallOfTwelveStreams(t *testing.T) {
	ctx := scenario(t, 240*time.Second, "ffmpeg")
	// The cheapest real publishers: the origin loops one small file as 12 streams.
	clip := makeClip(t, "wall.flv", "-f", "lavfi", "-i", "testsrc2=size=192x108:rate=15",
		"-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "15", "-keyint_min", "15",
		"-sc_threshold", "0", "-an", "-t", "10")
	var names, sources []string
	for i := 1; i <= 12; i++ {
		n := fmt.Sprintf("wall/cam%02d", i)
		names = append(names, n)
		sources = append(sources, "--source", n+"="+clip)
	}
	cert, err := harness.SelfSigned(t.TempDir(), "edge", 1)
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(ctx, t)
	c.startOrigin(sources...)
	tlsAddr := hostPort(freePort(t))
	e := c.startEdge("--tls-cert", cert.CertFile, "--tls-key", cert.KeyFile, "--https-addr", tlsAddr)
	for _, n := range names {
		e.waitPlayable(ctx, t, n)
	}
	bctx := newBrowser(ctx, t, chromedp.Flag("ignore-certificate-errors-spki-list", cert.SPKIHash()))

	query := "/wall?streams=" + strings.Join(names, ",")
	cases := []struct {
		name, url, transport string // transport: the edge's plays_total label it must count
		want                 int    // tiles playing; for HTTP/1.1 the most that may
	}{
		{"HTTP/1.1", "http://" + e.addr + query + "&transport=http", "http/1.1", 6},
		{"HTTP/2 over TLS", "https://" + tlsAddr + query + "&transport=http", "http/2", 12},
		{"WebSocket", "http://" + e.addr + query + "&transport=ws", "ws", 12},
		{"WebSocket over TLS", "https://" + tlsAddr + query + "&transport=ws", "ws", 12},
	}
	for _, tc := range cases {
		before, _ := e.metric(ctx, `flvcdn_edge_plays_total{transport="`+tc.transport+`"}`)
		if err := chromedp.Do(bctx, chromedp.Navigate(tc.url)); err != nil {
			t.Fatalf("%s: open %s: %v", tc.name, tc.url, err)
		}
		started, tiles := wallPlaying(ctx, t, bctx, tc.want)
		t.Logf("%s: %d of %d tiles started (%s)", tc.name, started, len(tiles), wallStates(tiles))
		// Then watch for 5 s: the most tiles advancing in any one second, and the tiles
		// whose clock ran at least 2.5 s over the whole time (kept playing).
		most, playing, tiles := wallPlayingFor(ctx, t, bctx, 5*time.Second)
		t.Logf("%s: %d tiles kept playing for 5 s, at most %d advanced in one second (%s)", tc.name, playing, most, wallStates(tiles))
		if tc.want == 6 {
			if playing != 6 || most > 6 {
				t.Errorf("%s: %d tiles played (at most %d at once), want exactly 6: the browser's connection limit", tc.name, playing, most)
			}
		} else if playing != tc.want {
			t.Errorf("%s: %d tiles played, want %d", tc.name, playing, tc.want)
		}
		after, err := e.metric(ctx, `flvcdn_edge_plays_total{transport="`+tc.transport+`"}`)
		if err != nil || after-before < float64(min(playing, tc.want)) {
			t.Errorf("%s: the edge counted %v new %s plays (%v), want at least %d", tc.name, after-before, tc.transport, err, min(playing, tc.want))
		}
		if tc.transport == "http/2" {
			actx, cancel := context.WithTimeout(bctx, 5*time.Second)
			proto, err := chromedp.Run(actx, chromedp.Evaluate[string](`performance.getEntriesByType("navigation")[0].nextHopProtocol`))
			cancel()
			if err != nil || proto != "h2" {
				t.Errorf("%s: the page came over %q (%v), want h2", tc.name, proto, err)
			}
		}
		wallScreenshot(t, bctx, strings.NewReplacer("/", "", " ", "-").Replace(tc.name))
	}
}

// wallPlaying waits (up to 45 s) until want tiles play and returns how many play
// at the end of the wait, with the last sample.
func wallPlaying(ctx context.Context, t *testing.T, bctx context.Context, want int) (int, []wallTile) {
	t.Helper()
	deadline := within(ctx, t, 45*time.Second)
	var prev []wallTile
	best, bestTiles := 0, []wallTile(nil)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		cur := wallSample(t, bctx)
		if n := wallAdvanced(prev, cur); prev != nil && n >= best {
			best, bestTiles = n, cur
		}
		if best >= want {
			return best, bestTiles
		}
		prev = cur
		select {
		case <-deadline.Done():
			return best, bestTiles
		case <-tick.C:
		}
	}
}

// wallPlayingFor samples the wall every second for d. It returns the most tiles that
// advanced in one second, the tiles whose clock ran at least half of d from the first
// sample to the last (with frames decoded), and the last sample.
func wallPlayingFor(ctx context.Context, t *testing.T, bctx context.Context, d time.Duration) (most, kept int, last []wallTile) {
	t.Helper()
	end := time.Now().Add(d)
	first := wallSample(t, bctx)
	prev := first
	for time.Now().Before(end) {
		select {
		case <-ctx.Done():
			t.Fatal("scenario deadline")
		case <-time.After(time.Second):
		}
		cur := wallSample(t, bctx)
		most = max(most, wallAdvanced(prev, cur))
		prev = cur
	}
	for i := range prev {
		if i < len(first) && prev[i].DecodedFrames > first[i].DecodedFrames && prev[i].CurrentTime-first[i].CurrentTime >= d.Seconds()/2 {
			kept++
		}
	}
	return most, kept, prev
}

// wallAdvanced counts tiles whose decoded frames and clock both moved between samples.
func wallAdvanced(prev, cur []wallTile) int {
	n := 0
	for i := range cur {
		if i < len(prev) && cur[i].DecodedFrames > prev[i].DecodedFrames && cur[i].CurrentTime > prev[i].CurrentTime {
			n++
		}
	}
	return n
}

func wallSample(t *testing.T, bctx context.Context) []wallTile {
	t.Helper()
	actx, cancel := context.WithTimeout(bctx, 5*time.Second)
	defer cancel()
	tiles, err := chromedp.Run(actx, chromedp.Evaluate[[]wallTile](`window.flvcdnWall ? window.flvcdnWall() : []`))
	if err != nil {
		t.Fatalf("flvcdnWall(): %v", err)
	}
	return tiles
}

func wallStates(tiles []wallTile) string {
	var b strings.Builder
	for _, w := range tiles {
		fmt.Fprintf(&b, "%s %s %d frames %.1fs", strings.TrimPrefix(w.Stream, "wall/"), w.State, w.DecodedFrames, w.CurrentTime)
		if w.Error != "" {
			fmt.Fprintf(&b, " error %q", w.Error)
		}
		b.WriteString("; ")
	}
	return b.String()
}

// wallScreenshot keeps what the user sees when FLVCDN_E2E_ARTIFACTS names a folder.
func wallScreenshot(t *testing.T, bctx context.Context, name string) {
	dir := os.Getenv("FLVCDN_E2E_ARTIFACTS")
	if dir == "" {
		return
	}
	actx, cancel := context.WithTimeout(bctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(actx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Logf("screenshot: %v", err)
		return
	}
	keep := filepath.Join(dir, "TestWallOfTwelveStreams-"+name+".png")
	if err := os.WriteFile(keep, png, 0o644); err == nil {
		t.Logf("screenshot kept: %s", keep)
	}
}
