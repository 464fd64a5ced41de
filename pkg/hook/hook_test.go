package hook

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flvcdn/flvcdn/test/harness"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// recorder is a hook server: it keeps every request and answers with answer.
type recorder struct {
	mu     sync.Mutex
	events []Event
	sigs   []string
	raw    [][]byte
	answer func(w http.ResponseWriter, r *http.Request, ev Event)
}

func (h *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	var ev Event
	if err := json.Unmarshal(b, &ev); err != nil || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "bad request from flvcdn", http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	h.events = append(h.events, ev)
	h.sigs = append(h.sigs, r.Header.Get(SignatureHeader))
	h.raw = append(h.raw, b)
	h.mu.Unlock()
	if h.answer != nil {
		h.answer(w, r, ev)
	}
}

func (h *recorder) count() int { h.mu.Lock(); defer h.mu.Unlock(); return len(h.events) }

func serve(t *testing.T, answer func(w http.ResponseWriter, r *http.Request, ev Event)) (*recorder, string) {
	t.Helper()
	h := &recorder{answer: answer}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, srv.URL
}

func client(t *testing.T, cfg Config) *Client {
	t.Helper()
	if cfg.Node == "" {
		cfg.Node = "node-1"
	}
	c, err := New(cfg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func play() Event {
	return Event{Action: Play, App: "live", Stream: "demo", ClientIP: "127.0.0.1", Query: "ticket=abc&x=1", Session: "s1"}
}

func failuresOf(action, kind string) float64 {
	return testutil.ToFloat64(failures.WithLabelValues(action, kind))
}

func TestAllowDeny(t *testing.T) {
	cases := []struct {
		name       string
		status     int
		body       string
		allow      bool
		wantReason string
	}{
		{"200 allows", 200, "ok", true, ""},
		{"204 allows", 204, "", true, ""},
		{"403 denies with the first line", 403, "banned: bad ticket\nsecond line\n", false, "banned: bad ticket"},
		{"CRLF and spaces trimmed", 401, "  no token  \r\nmore", false, "no token"},
		{"empty body gets our reason", 401, "", false, "denied by callback (HTTP 401)"},
		{"500 denies", 500, "db down", false, "db down"},
		{"garbage is made printable", 403, "\x00\xff\x1b[31mred\tx", false, "???[31mred?x"},
		{"a long line is cut", 403, strings.Repeat("é", 300), false, strings.Repeat("é", 100)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, u := serve(t, func(w http.ResponseWriter, _ *http.Request, _ Event) {
				w.WriteHeader(c.status)
				_, _ = io.WriteString(w, c.body)
			})
			before := failuresOf(Play, KindDenied)
			d, err := client(t, Config{URL: u}).Call(context.Background(), play())
			if err != nil {
				t.Fatal(err)
			}
			if d.Allow != c.allow || d.Reason != c.wantReason || d.Status != c.status {
				t.Fatalf("decision %+v, want allow=%v reason %q status %d", d, c.allow, c.wantReason, c.status)
			}
			if denied := failuresOf(Play, KindDenied) - before; denied != map[bool]float64{true: 0, false: 1}[c.allow] {
				t.Fatalf("denied counter moved by %v", denied)
			}
			ev := h.events[0]
			if ev != (Event{Action: Play, App: "live", Stream: "demo", Node: "node-1", ClientIP: "127.0.0.1", Query: "ticket=abc&x=1", Session: "s1"}) {
				t.Fatalf("hook received %+v", ev)
			}
			if strings.Contains(string(h.raw[0]), "duration_s") || strings.Contains(string(h.raw[0]), "bytes") {
				t.Fatalf("a play event carries end fields: %s", h.raw[0])
			}
		})
	}
}

// The documented body and one-liner: the signature is the one openssl prints.
//
//	printf %s '{"action":"publish",...}' > body.json
//	openssl dgst -sha256 -hmac "s3cret" < body.json | awk '{print "sha256="$2}'
func TestSignatureMatchesOpenSSL(t *testing.T) {
	const body = `{"action":"publish","app":"live","stream":"demo","node":"origin-0","client_ip":"127.0.0.1","query":"token=abc","session":"1f2e3d"}`
	const openssl = "sha256=7f33d2e4dd60a0e87486fc2cb2a4440a3fb4e1653b6ec10afe88219da67ec5dc"
	if got := Sign("s3cret", []byte(body)); got != openssl {
		t.Fatalf("Sign = %s, want the openssl value %s", got, openssl)
	}
	// The client sends exactly that body for that event, with that header.
	h, u := serve(t, nil)
	ev := Event{Action: Publish, App: "live", Stream: "demo", ClientIP: "127.0.0.1", Query: "token=abc", Session: "1f2e3d"}
	if _, err := client(t, Config{URL: u, Node: "origin-0", Secret: "s3cret"}).Call(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if string(h.raw[0]) != body || h.sigs[0] != openssl {
		t.Fatalf("sent %s with %s=%q", h.raw[0], SignatureHeader, h.sigs[0])
	}
	// Without a secret there is no header.
	if _, err := client(t, Config{URL: u}).Call(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if h.sigs[1] != "" {
		t.Fatalf("unsigned client sent %q", h.sigs[1])
	}
}

// A hook that hangs is bounded by the timeout; it denies unless fail-open.
func TestTimeoutDeniesUnlessFailOpen(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	_, u := serve(t, func(w http.ResponseWriter, r *http.Request, _ Event) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	for _, open := range []bool{false, true} {
		before := failuresOf(Play, KindTimeout)
		start := time.Now()
		d, err := client(t, Config{URL: u, Timeout: 200 * time.Millisecond, FailOpen: open}).Call(context.Background(), play())
		took := time.Since(start)
		if err == nil || d.Allow != open || d.Reason != "callback timed out" {
			t.Fatalf("fail-open=%v: %+v %v", open, d, err)
		}
		if took < 200*time.Millisecond || took > 2*time.Second {
			t.Fatalf("fail-open=%v: returned after %v with a 200ms timeout", open, took)
		}
		if n := failuresOf(Play, KindTimeout) - before; n != 1 {
			t.Fatalf("timeout counter moved by %v", n)
		}
	}
}

func TestUnreachableDeniesUnlessFailOpen(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String() + "/hook"
	ln.Close() // nobody listens there now
	for _, open := range []bool{false, true} {
		before := failuresOf(Publish, KindUnreachable)
		d, err := client(t, Config{URL: u, FailOpen: open}).Call(context.Background(), Event{Action: Publish, App: "live", Stream: "x"})
		if err == nil || d.Allow != open || d.Reason != "callback unreachable" {
			t.Fatalf("fail-open=%v: %+v %v", open, d, err)
		}
		if n := failuresOf(Publish, KindUnreachable) - before; n != 1 {
			t.Fatalf("unreachable counter moved by %v", n)
		}
	}
}

// A huge answer is read only up to MaxAnswer; the call does not wait for the rest.
func TestHugeAnswerIsNotReadToTheEnd(t *testing.T) {
	for _, status := range []int{200, 403} {
		wrote := make(chan int64, 1)
		_, u := serve(t, func(w http.ResponseWriter, _ *http.Request, _ Event) {
			w.WriteHeader(status)
			chunk := []byte(strings.Repeat("x", 64<<10))
			var n int64
			for n < 1<<30 { // 1 GiB if anyone read it all
				m, err := w.Write(chunk)
				n += int64(m)
				if err != nil {
					break
				}
			}
			wrote <- n
		})
		start := time.Now()
		d, err := client(t, Config{URL: u}).Call(context.Background(), play())
		if err != nil || d.Allow != (status == 200) {
			t.Fatalf("%d: %+v %v", status, d, err)
		}
		if status == 403 && (d.Reason != strings.Repeat("x", maxReason)) {
			t.Fatalf("reason of %d bytes", len(d.Reason))
		}
		select {
		case n := <-wrote:
			if n >= 1<<30 {
				t.Fatalf("the whole body was read")
			}
			t.Logf("%d: decided in %v; the server managed to write %d KiB before the connection closed", status, time.Since(start).Round(time.Millisecond), n>>10)
		case <-time.After(10 * time.Second):
			t.Fatalf("%d: the server is still writing 10 s later: the answer is being drained", status)
		}
	}
}

// A redirect is not followed (the signed event must not go elsewhere): it denies.
func TestRedirectDeniesAndIsNotFollowed(t *testing.T) {
	target, tu := serve(t, nil)
	_, u := serve(t, func(w http.ResponseWriter, r *http.Request, _ Event) {
		http.Redirect(w, r, tu, http.StatusTemporaryRedirect)
	})
	d, err := client(t, Config{URL: u}).Call(context.Background(), play())
	if err != nil || d.Allow || d.Status != http.StatusTemporaryRedirect {
		t.Fatalf("%+v %v", d, err)
	}
	if target.count() != 0 {
		t.Fatal("the redirect was followed")
	}
}

func TestCallerGoneDenies(t *testing.T) {
	_, u := serve(t, func(w http.ResponseWriter, r *http.Request, _ Event) { <-r.Context().Done() })
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	d, err := client(t, Config{URL: u, FailOpen: true}).Call(ctx, play())
	if !errors.Is(err, context.Canceled) || d.Allow {
		t.Fatalf("%+v %v", d, err)
	}
}

func TestBadConfig(t *testing.T) {
	for _, c := range []Config{{URL: "ftp://x/y"}, {URL: "/relative"}, {URL: "http://"}, {URL: "http://h/", Timeout: -time.Second}, {URL: "::"}} {
		if _, err := New(c, quiet); err == nil || !strings.Contains(err.Error(), "--hook-") {
			t.Errorf("%+v: %v, want an error naming the setting", c, err)
		}
	}
}

// Notifications carry the end fields, are retried after 5xx, and are delivered by
// Run's workers, which stop with their context.
func TestNotifyRetriesAndStops(t *testing.T) {
	var calls atomic.Int32
	h, u := serve(t, func(w http.ResponseWriter, _ *http.Request, _ Event) {
		if calls.Add(1) <= 2 {
			http.Error(w, "try later", http.StatusServiceUnavailable)
		}
	})
	c := client(t, Config{URL: u, RetryDelay: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	start := play()
	c.Notify(start.Ended(Stop, 1500*time.Millisecond, 12345))
	harness.Until(t, 5*time.Second, "three attempts", func() bool { return h.count() == 3 })
	ev := h.events[2]
	if ev.Action != Stop || ev.DurationS == nil || *ev.DurationS != 1.5 || ev.Bytes == nil || *ev.Bytes != 12345 || ev.Session != "s1" || ev.Node != "node-1" {
		t.Fatalf("notification %+v", ev)
	}
	if !strings.Contains(string(h.raw[2]), `"duration_s":1.5,"bytes":12345`) {
		t.Fatalf("body %s", h.raw[2])
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

// A full queue drops (and counts) instead of blocking the session that ends.
func TestNotifyNeverBlocks(t *testing.T) {
	_, u := serve(t, nil)
	c := client(t, Config{URL: u, Queue: 2}) // Run is not started: nothing drains
	before := failuresOf(Unpublish, KindDropped)
	start := time.Now()
	for range 10 {
		c.Notify(Event{Action: Unpublish, App: "live", Stream: "x"})
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("10 notifications took %v", took)
	}
	if n := failuresOf(Unpublish, KindDropped) - before; n != 8 {
		t.Fatalf("dropped %v, want 8", n)
	}
}

// Retries are bounded: a hook that is down loses the notification after Retries.
func TestNotifyGivesUp(t *testing.T) {
	var calls atomic.Int32
	_, u := serve(t, func(w http.ResponseWriter, _ *http.Request, _ Event) {
		calls.Add(1)
		http.Error(w, "down", http.StatusBadGateway)
	})
	c := client(t, Config{URL: u, RetryDelay: 5 * time.Millisecond, Retries: 2})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	before := failuresOf(Unpublish, KindDropped)
	c.Notify(Event{Action: Unpublish, App: "live", Stream: "x"})
	harness.Until(t, 5*time.Second, "the notification to be dropped", func() bool {
		return failuresOf(Unpublish, KindDropped)-before == 1
	})
	if calls.Load() != 3 {
		t.Fatalf("%d attempts, want 3", calls.Load())
	}
}

type panicky struct{ http.RoundTripper }

func (p panicky) RoundTrip(r *http.Request) (*http.Response, error) {
	body, _ := r.GetBody()
	b, _ := io.ReadAll(body)
	if strings.Contains(string(b), `"stream":"boom"`) {
		panic("boom")
	}
	return p.RoundTripper.RoundTrip(r)
}

// A panic in a callback is contained: the caller gets an error, and the notification
// worker goes on with the next event.
func TestPanicIsContained(t *testing.T) {
	h, u := serve(t, nil)
	c := client(t, Config{URL: u})
	c.http.Transport = panicky{c.http.Transport}
	d, err := c.Call(context.Background(), Event{Action: Play, App: "live", Stream: "boom"})
	if err == nil || d.Allow {
		t.Fatalf("%+v %v", d, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	before := failuresOf(Stop, KindDropped)
	for _, s := range []string{"boom", "boom", "ok", "boom", "ok2"} {
		c.Notify(Event{Action: Stop, App: "live", Stream: s})
	}
	harness.Until(t, 5*time.Second, "the notifications after the panics", func() bool { return h.count() == 2 })
	if n := failuresOf(Stop, KindDropped) - before; n != 3 {
		t.Fatalf("%v counted as dropped, want 3", n)
	}
}
