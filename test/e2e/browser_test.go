package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flvcdn/flvcdn/test/harness"
)

// chromium returns the browser to drive: /usr/bin/chromium (Debian's package), else
// chromium from PATH. It skips the test when there is none (fails under CI=true).
func chromium(t testing.TB) string {
	t.Helper()
	path := "/usr/bin/chromium"
	if _, err := os.Stat(path); err != nil {
		path = "chromium"
	}
	harness.NeedTools(t, path)
	p, _ := exec.LookPath(path)
	return p
}

// playerStats is what the demo page's window.flvcdnStats() returns.
type playerStats struct {
	CurrentTime   float64 `json:"currentTime"`
	DecodedFrames int     `json:"decodedFrames"`
	Error         string  `json:"error"`
}

// newBrowser starts headless Chromium for the test, stopped when ctx ends or the test
// does; on failure the test log gets the page's console and Chromium's output. extra
// options come after the defaults.
func newBrowser(ctx context.Context, t *testing.T, extra ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	browserLog := &harness.Tail{Max: 1 << 20}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("autoplay-policy", "no-user-gesture-required"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1024, 720),
		chromedp.CombinedOutput(browserLog),
	)
	opts = append(opts, extra...)
	// The browser lives as long as allocCtx; it must not carry a timeout (see chromedp.Run),
	// so the scenario's deadline cancels it instead.
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	stopAfter := context.AfterFunc(ctx, cancelAlloc)
	t.Cleanup(func() { stopAfter() })
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelBrowser)

	console := &harness.Tail{Max: 1 << 20}
	messages := chromedp.Console(bctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				fmt.Fprintf(console, "console: %v\n", err)
				return
			}
			fmt.Fprintf(console, "%s %s:%d: %s\n", m.Type, m.URL, m.Line, m.Text)
		}
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("----- browser console -----\n%s", console)
			t.Logf("----- chromium output -----\n%s", browserLog)
		}
	})
	return bctx
}

// A viewer opens the edge's demo page in a browser: mpegts.js plays the stream, the
// video clock advances and frames are decoded, without errors.
func TestBrowserPlaysWithMpegtsJS(t *testing.T) {
	ctx := scenario(t, 120*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	c := newCluster(ctx, t)
	o := c.startOrigin()
	e := c.startEdge()
	goLive(ctx, t, publish(t, "ffmpeg-publisher", media, o.rtmpURL("live/e2e", "")), "live/e2e", e)

	bctx := newBrowser(ctx, t)

	page := "http://" + e.addr + "/?stream=live/e2e"
	if err := chromedp.Do(bctx, chromedp.Navigate(page)); err != nil {
		t.Fatalf("open %s: %v", page, err)
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
	status := func() string {
		actx, cancel := context.WithTimeout(bctx, 5*time.Second)
		defer cancel()
		s, err := chromedp.Run(actx, chromedp.Evaluate[string](`document.getElementById("status").textContent`))
		if err != nil {
			return err.Error()
		}
		return s
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()

	// Wait for playback to start: the clock moves and frames are decoded.
	startBy := within(ctx, t, 20*time.Second)
	var s0 playerStats
	for {
		s0 = stats()
		if s0.CurrentTime > 0 && s0.DecodedFrames > 0 && s0.Error == "" {
			break
		}
		select {
		case <-startBy.Done():
			t.Fatalf("playback did not start in 20 s: %+v, status %q", s0, status())
		case <-tick.C:
		}
	}
	t0 := time.Now()
	t.Logf("playing after page load: %+v, status %q", s0, status())

	// Watch it play for 5 s; any error shown on the page fails the test.
	s1 := s0
	for time.Since(t0) < 5*time.Second {
		select {
		case <-ctx.Done():
			t.Fatalf("scenario deadline while watching playback: %+v", s1)
		case <-tick.C:
		}
		s1 = stats()
		if s1.Error != "" {
			t.Fatalf("player error after %v: %q (status %q)", time.Since(t0).Round(time.Millisecond), s1.Error, status())
		}
	}
	advanced := s1.CurrentTime - s0.CurrentTime
	t.Logf("after %v: %+v; currentTime advanced %.2f s; status %q", time.Since(t0).Round(time.Millisecond), s1, advanced, status())
	if advanced < 3 {
		t.Errorf("currentTime advanced %.2f s in 5 s of wall time, want >= 3", advanced)
	}
	if s1.DecodedFrames <= 50 {
		t.Errorf("decoded %d frames, want > 50", s1.DecodedFrames)
	}

	actx, cancel := context.WithTimeout(bctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(actx, chromedp.FullScreenshot(100)) // quality 100 gives PNG, lower JPEG
	if err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	shot := filepath.Join(t.TempDir(), "browser.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", shot, len(png))
	if dir := os.Getenv("FLVCDN_E2E_ARTIFACTS"); dir != "" {
		keep := filepath.Join(dir, "TestBrowserPlaysWithMpegtsJS.png")
		if err := os.WriteFile(keep, png, 0o644); err == nil {
			t.Logf("screenshot kept: %s", keep)
		}
	}
}
