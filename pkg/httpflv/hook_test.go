package httpflv

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/hook"
	"github.com/flvcdn/flvcdn/pkg/stream"
	"github.com/flvcdn/flvcdn/test/harness"
)

// The play hook runs after the signature check (both must pass); a denial is 403 with
// the hook's first line; an allowed play that finds no stream is followed by its stop.
func TestPlayHook(t *testing.T) {
	var mu sync.Mutex
	var events []hook.Event
	platform := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev hook.Event
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &ev)
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
		if !strings.Contains(ev.Query, "ticket=ok") {
			http.Error(w, "no ticket for "+ev.App+"/"+ev.Stream+"\nignored", http.StatusPaymentRequired)
		}
	}))
	defer platform.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h, err := hook.New(hook.Config{URL: platform.URL, Node: "edge-1"}, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.Run(ctx)
	srv := &Server{Hub: noHub{}, Log: log, PlaySecret: "k", Hook: h}
	exp := time.Now().Add(time.Minute).Unix()
	signed := fmt.Sprintf("/live/a.flv?expires=%d&sig=%s", exp, stream.SignPlay("k", "/live/a.flv", exp))
	cases := []struct {
		target string
		code   int
		body   string
		asked  int
	}{
		{"/live/a.flv?ticket=ok", http.StatusForbidden, "playback URL is not signed\n", 0},
		{signed, http.StatusForbidden, "no ticket for live/a\n", 1},
		{signed + "&ticket=ok", http.StatusNotFound, "stream not found: live/a\n", 2}, // noHub has no stream
	}
	for _, c := range cases {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", c.target, nil)
		req.RemoteAddr = "192.0.2.9:5555"
		srv.ServeHTTP(rec, req)
		mu.Lock()
		asked := 0 // play questions; an allowed play's stop is sent on its own, maybe already
		for _, ev := range events {
			if ev.Action == hook.Play {
				asked++
			}
		}
		mu.Unlock()
		if rec.Code != c.code || rec.Body.String() != c.body || asked != c.asked {
			t.Errorf("GET %s: %d %q, hook asked %d times; want %d %q, %d", c.target, rec.Code, rec.Body.String(), asked, c.code, c.body, c.asked)
		}
	}
	harness.Until(t, 5*time.Second, "the stop of the allowed play", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(events) == 3
	})
	play, stop := events[1], events[2]
	if play.Action != hook.Play || play.ClientIP != "192.0.2.9" || play.Node != "edge-1" || !strings.HasSuffix(play.Query, "&ticket=ok") {
		t.Errorf("play %+v", play)
	}
	if stop.Action != hook.Stop || stop.Session != play.Session || stop.Bytes == nil || *stop.Bytes != 0 || stop.DurationS == nil {
		t.Errorf("stop %+v after play %+v", stop, play)
	}
}
