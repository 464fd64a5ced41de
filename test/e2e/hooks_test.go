package e2e

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// hookEvent is a callback body, decoded by the contract's names (not by pkg/hook's types).
type hookEvent struct {
	Action    string   `json:"action"`
	App       string   `json:"app"`
	Stream    string   `json:"stream"`
	Node      string   `json:"node"`
	ClientIP  string   `json:"client_ip"`
	Query     string   `json:"query"`
	Session   string   `json:"session"`
	DurationS *float64 `json:"duration_s"`
	Bytes     *uint64  `json:"bytes"`
}

// platform is the operator's side of the callbacks: it checks every signature,
// records every event, and decides by the URL's query: a publish needs token=good, a
// play ticket=ok. /hang never answers.
type platform struct {
	t      *testing.T
	secret string
	srv    *httptest.Server

	mu     sync.Mutex
	events []hookEvent
}

func startPlatform(t *testing.T, secret string) *platform {
	p := &platform{t: t, secret: secret}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /hook", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		m := hmac.New(sha256.New, []byte(secret))
		m.Write(body)
		if got, want := r.Header.Get("X-Flvcdn-Signature"), "sha256="+hex.EncodeToString(m.Sum(nil)); got != want {
			t.Errorf("event %s signed %q, want %q", body, got, want)
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var ev hookEvent
		if err := json.Unmarshal(body, &ev); err != nil {
			t.Errorf("event %q: %v", body, err)
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		p.mu.Lock()
		p.events = append(p.events, ev)
		p.mu.Unlock()
		q, _ := url.ParseQuery(ev.Query)
		switch {
		case ev.Action == "publish" && q.Get("token") != "good":
			http.Error(w, "bad token for "+ev.App+"/"+ev.Stream+"\nsecond line, never shown", http.StatusForbidden)
		case ev.Action == "play" && q.Get("ticket") != "ok":
			http.Error(w, "no ticket\nsecond line, never shown", http.StatusForbidden)
		default:
			w.WriteHeader(http.StatusNoContent)
		}
	})
	mux.HandleFunc("POST /hang", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // then net/http notices the caller hanging up
		<-r.Context().Done()
	})
	p.srv = httptest.NewServer(mux) // on 127.0.0.1
	t.Cleanup(p.srv.Close)
	return p
}

func (p *platform) url(path string) string { return p.srv.URL + path }

// find returns the events matching ok, in arrival order.
func (p *platform) find(ok func(hookEvent) bool) []hookEvent {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []hookEvent
	for _, ev := range p.events {
		if ok(ev) {
			out = append(out, ev)
		}
	}
	return out
}

// await waits for the first event matching ok.
func (p *platform) await(ctx context.Context, t *testing.T, what string, ok func(hookEvent) bool) hookEvent {
	t.Helper()
	var ev hookEvent
	waitFor(within(ctx, t, 15*time.Second), t, what, func() error {
		evs := p.find(ok)
		if len(evs) == 0 {
			return fmt.Errorf("not received; %d events so far", len(p.find(func(hookEvent) bool { return true })))
		}
		ev = evs[0]
		return nil
	})
	return ev
}

// get fetches url, reading at most 1 KiB of the body.
func get(ctx context.Context, u string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return resp.StatusCode, string(b), nil
	}
	return resp.StatusCode, "", nil
}

// An operator plugs flvcdn into its platform: origin and edge post signed events,
// a publish needs both the key and the platform's yes, a play both the platform's yes,
// and the platform hears how long each session lasted and how many bytes it carried.
func TestHooksDecideAndReport(t *testing.T) {
	ctx := scenario(t, 150*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	const secret, key = "e2e-hook-secret", "e2e-publish-secret"
	pf := startPlatform(t, secret)
	c := newCluster(ctx, t)
	o := c.startOrigin("--publish-secret", key, "--hook-url", pf.url("/hook"), "--hook-secret", secret)
	e := c.startEdge("--hook-url", pf.url("/hook"), "--hook-secret", secret)
	const name = "live/hooked"
	keyed := o.rtmpURL(name, publishKey(key, name))
	isPublish := func(ev hookEvent) bool { return ev.Action == "publish" }

	// The platform says no: ffmpeg is refused and prints the platform's first line.
	before := o.refusals(ctx, t)
	denied := publish(t, "ffmpeg-bad-token", media, keyed+"&token=bad")
	expectRefused(ctx, t, denied, "bad token")
	if log := denied.Log.String(); !strings.Contains(log, "bad token for live/hooked") || strings.Contains(log, "second line") {
		t.Errorf("ffmpeg did not print the platform's reason (first line only):\n%s", lastLines(log, 5))
	}
	// The key is checked too, before the platform is asked.
	wrongKey := publish(t, "ffmpeg-wrong-key", media, o.rtmpURL(name, "0123")+"&token=good")
	expectRefused(ctx, t, wrongKey, "wrong key, good token")
	o.expectRefusals(ctx, t, before, map[string]float64{"hook": 1, "auth": 1})
	if n := len(pf.find(isPublish)); n != 1 {
		t.Errorf("the platform was asked %d times, want once (a wrong key is refused before asking)", n)
	}

	// Key and token: live.
	pub := publish(t, "ffmpeg-good", media, keyed+"&token=good")
	pub.waitSent(ctx, t, time.Second)
	pubEv := pf.await(ctx, t, "the allowed publish", func(ev hookEvent) bool {
		return isPublish(ev) && strings.Contains(ev.Query, "token=good")
	})
	if pubEv.App != "live" || pubEv.Stream != "hooked" || pubEv.Node != o.id || pubEv.ClientIP != "127.0.0.1" ||
		!strings.Contains(pubEv.Query, "key="+publishKey(key, name)) || pubEv.Session == "" || pubEv.DurationS != nil || pubEv.Bytes != nil {
		t.Errorf("publish event %+v", pubEv)
	}

	// A play without the platform's ticket: 403 with the platform's first line.
	waitFor(within(ctx, t, 20*time.Second), t, "a denied play", func() error {
		code, body, err := get(ctx, e.url(name))
		if err != nil {
			return err
		}
		if code != http.StatusForbidden || body != "no ticket\n" {
			return fmt.Errorf("status %d body %q, want 403 %q", code, body, "no ticket\n")
		}
		return nil
	})
	// With it, the stream plays; the stop reports the play's duration and bytes.
	playURL := e.url(name) + "?ticket=ok&user=42"
	var r Report
	waitFor(within(ctx, t, 30*time.Second), t, "a 4 s play", func() error {
		var err error
		r, err = CheckURL(ctx, playURL, ViewOptions{WantAudio: true, WantVideo: true, Duration: 4 * time.Second})
		return err
	})
	t.Logf("play: %s", r)
	stopEv := pf.await(ctx, t, "the stop of the 4 s play", func(ev hookEvent) bool {
		return ev.Action == "stop" && ev.DurationS != nil && *ev.DurationS >= 3.9
	})
	playEvs := pf.find(func(ev hookEvent) bool { return ev.Action == "play" && ev.Session == stopEv.Session })
	if len(playEvs) != 1 || playEvs[0].Query != "ticket=ok&user=42" || playEvs[0].Node != e.id || playEvs[0].ClientIP != "127.0.0.1" {
		t.Errorf("play event(s) of session %s: %+v", stopEv.Session, playEvs)
	}
	if stopEv.Bytes == nil || int64(*stopEv.Bytes) < r.Bytes || *stopEv.DurationS > 10 || stopEv.Query != "ticket=ok&user=42" {
		t.Errorf("stop %+v: want bytes >= the %d the viewer read, duration about 4 s", stopEv, r.Bytes)
	} else {
		t.Logf("stop: duration_s=%.2f bytes=%d (viewer read %d)", *stopEv.DurationS, *stopEv.Bytes, r.Bytes)
	}
	// A denied play is never followed by a stop.
	for _, ev := range pf.find(func(ev hookEvent) bool { return ev.Action == "play" && ev.Query == "" }) {
		if s := pf.find(func(x hookEvent) bool { return x.Action == "stop" && x.Session == ev.Session }); len(s) > 0 {
			t.Errorf("a denied play got a stop: %+v", s)
		}
	}

	// The publisher leaves: unpublish with the session of its publish.
	sent := time.Duration(pub.sentUS.Load()) * time.Microsecond
	pub.stop()
	unEv := pf.await(ctx, t, "the unpublish", func(ev hookEvent) bool { return ev.Action == "unpublish" })
	if unEv.Session != pubEv.Session || unEv.DurationS == nil || *unEv.DurationS < sent.Seconds()-1 || unEv.Bytes == nil || *unEv.Bytes < 100_000 {
		t.Errorf("unpublish %+v after ffmpeg sent %v of media (publish session %s)", unEv, sent, pubEv.Session)
	} else {
		t.Logf("unpublish: duration_s=%.2f bytes=%d (ffmpeg sent %v of media)", *unEv.DurationS, *unEv.Bytes, sent)
	}
	if n := len(pf.find(func(ev hookEvent) bool { return ev.Action == "unpublish" })); n != 1 {
		t.Errorf("%d unpublish events, want 1 (denied publishes have none)", n)
	}
}

// A platform that hangs holds nobody longer than --hook-timeout: the play is denied,
// or allowed with --hook-fail-open.
func TestHookTimeoutAtTheEdge(t *testing.T) {
	ctx := scenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	pf := startPlatform(t, "")
	c := newCluster(ctx, t)
	o := c.startOrigin()
	closed := c.startEdge("--hook-url", pf.url("/hang"), "--hook-timeout", "300ms")
	open := c.startEdge("--hook-url", pf.url("/hang"), "--hook-timeout", "300ms", "--hook-fail-open")
	goLive(ctx, t, publish(t, "ffmpeg", media, o.rtmpURL("live/t", "")), "live/t", open)

	start := time.Now()
	code, body, err := get(ctx, closed.url("live/t"))
	took := time.Since(start)
	if err != nil || code != http.StatusForbidden || body != "callback timed out\n" || took > 2*time.Second {
		t.Fatalf("hanging hook: %d %q %v after %v, want 403 \"callback timed out\" after about 300ms", code, body, err, took)
	}
	t.Logf("hanging hook denied the play after %v", took.Round(time.Millisecond))
	waitFor(within(ctx, t, 10*time.Second), t, "a timeout counted", func() error {
		v, err := series(ctx, closed.addr, `flvcdn_hook_failures_total{action="play",kind="timeout"}`)
		if err == nil && v < 1 {
			err = fmt.Errorf("flvcdn_hook_failures_total{action=\"play\",kind=\"timeout\"} = %v", v)
		}
		return err
	})
}

// tookRe finds the hook's measured round trip in the edge's log lines.
var tookRe = regexp.MustCompile(`msg="hook allowed".* action=play .*took=([0-9.]+[µmn]?s)`)

// The round trip of the play callback at the edge, over 200 plays against a local
// platform, beside the time to the response headers with and without a hook.
// Figures, not pass/fail timings (only that each answer is right).
func TestHookPlayLatency(t *testing.T) {
	ctx := scenario(t, 120*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	pf := startPlatform(t, "s")
	c := newCluster(ctx, t)
	o := c.startOrigin()
	plain := c.startEdge()
	hooked := c.startEdge("--hook-url", pf.url("/hook"), "--hook-secret", "s", "--log-level", "debug")
	goLive(ctx, t, publish(t, "ffmpeg", media, o.rtmpURL("live/lat", "")), "live/lat", plain)
	const plays = 200
	headers := func(u string) []time.Duration {
		var out []time.Duration
		for range plays {
			start := time.Now()
			code, _, err := get(ctx, u) // returns once the headers are in, closing the body
			if err != nil || code != http.StatusOK {
				t.Fatalf("GET %s: %d %v", u, code, err)
			}
			out = append(out, time.Since(start))
		}
		return out
	}
	noHook := headers(plain.url("live/lat"))
	withHook := headers(hooked.url("live/lat") + "?ticket=ok")
	var rtt []time.Duration
	waitFor(within(ctx, t, 10*time.Second), t, "every play callback in the edge's log", func() error {
		rtt = rtt[:0]
		for _, m := range tookRe.FindAllStringSubmatch(hooked.Log.String(), -1) {
			d, err := time.ParseDuration(m[1])
			if err != nil {
				return err
			}
			rtt = append(rtt, d)
		}
		if len(rtt) < plays {
			return fmt.Errorf("%d of %d", len(rtt), plays)
		}
		return nil
	})
	pct := func(ds []time.Duration, p float64) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[int(p*float64(len(s)-1))].Round(10 * time.Microsecond)
	}
	t.Logf("hook round trip at the edge (play, %d calls): p50 %v p99 %v max %v", len(rtt), pct(rtt, .5), pct(rtt, .99), pct(rtt, 1))
	t.Logf("time to response headers, %d plays each: without hook p50 %v p99 %v; with hook p50 %v p99 %v",
		plays, pct(noHook, .5), pct(noHook, .99), pct(withHook, .5), pct(withHook, .99))
}

// An origin and an edge that shut down (SIGTERM) still tell the platform that their
// sessions ended.
func TestHookEndsReportedAtShutdown(t *testing.T) {
	ctx := scenario(t, 90*time.Second, "ffmpeg")
	media := makeMedia(t, mediaAV)
	pf := startPlatform(t, "s")
	c := newCluster(ctx, t)
	o := c.startOrigin("--hook-url", pf.url("/hook"), "--hook-secret", "s", "--drain-grace", "1s")
	e := c.startEdge("--hook-url", pf.url("/hook"), "--hook-secret", "s", "--drain-grace", "1s")
	pub := publish(t, "ffmpeg", media, o.rtmpURL("live/down", "")+"?token=good")
	pub.waitSent(ctx, t, time.Second)
	v, err := StartViewer(ctx, e.url("live/down")+"?ticket=ok", ViewOptions{WantAudio: true, WantVideo: true, MaxStall: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Stop()
	if err := v.WaitTags(within(ctx, t, 15*time.Second), "50 video tags", func(v *Viewer) bool { return v.VideoTags() >= 50 }); err != nil {
		t.Fatal(err)
	}
	e.stop()
	stop := pf.await(ctx, t, "the stop from the edge that shut down", func(ev hookEvent) bool { return ev.Action == "stop" })
	o.stop()
	un := pf.await(ctx, t, "the unpublish from the origin that shut down", func(ev hookEvent) bool { return ev.Action == "unpublish" })
	if stop.Bytes == nil || *stop.Bytes == 0 || un.Bytes == nil || *un.Bytes == 0 {
		t.Errorf("stop %+v, unpublish %+v: want bytes", stop, un)
	}
}
