package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// tag is one FLV tag followed by its PreviousTagSize.
func tag(typ byte, ts uint32, body ...byte) []byte {
	n := len(body)
	b := []byte{typ, byte(n >> 16), byte(n >> 8), byte(n), byte(ts >> 16), byte(ts >> 8), byte(ts), byte(ts >> 24), 0, 0, 0}
	b = append(b, body...)
	m := n + 11
	return append(b, byte(m>>24), byte(m>>16), byte(m>>8), byte(m))
}

// liveServer serves a video-only AVC stream in real time (25 fps, a keyframe a
// second); broken changes it after the first second.
func liveServer(t *testing.T, broken string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		write := func(b []byte) bool {
			_, err := w.Write(b)
			w.(http.Flusher).Flush()
			return err == nil
		}
		if r.Header.Get("Upgrade") == "websocket" { // the same bytes as WebSocket-FLV
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			write = func(b []byte) bool { return c.Write(r.Context(), websocket.MessageBinary, b) == nil }
		} else {
			w.Header().Set("Content-Type", "video/x-flv")
		}
		if broken == "empty" {
			return
		}
		write([]byte{'F', 'L', 'V', 1, 1, 0, 0, 0, 9, 0, 0, 0, 0})
		write(tag(9, 0, 0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f))
		start := time.Now()
		for i := 0; ; i++ {
			ts := uint32(i * 40)
			body := []byte{0x27, 1, 0, 0, 0, 0xCC}
			if i%25 == 0 {
				body[0] = 0x17
			}
			if broken == "frozen" && i > 25 {
				ts = 1000
			}
			if !write(tag(9, ts, body...)) {
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-time.After(time.Until(start.Add(time.Duration(i+1) * 40 * time.Millisecond))):
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/live/test.flv"
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-url", "ftp://example.test/x.flv"},
		{"-url", "http://127.0.0.1/x.flv", "-n", "0"},
		{"-url", "http://127.0.0.1/x.flv", "-dur", "0s"},
		{"-url", "http://127.0.0.1/x.flv", "-max-stall", "-1s"},
		{"-url", "http://127.0.0.1/x.flv", "extra"},
		{"-nope"},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", args, code, errb.String())
		}
	}
}

func TestConformingStreamExits0WithJSON(t *testing.T) {
	url := liveServer(t, "")
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"-url", url, "-n", "2", "-dur", "7s", "-json"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s %s", code, out.String(), errb.String())
	}
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if !rep.OK || len(rep.Results) != 2 {
		t.Fatalf("report %s", out.String())
	}
	for _, r := range rep.Results {
		if !r.OK || r.Keyframes < 6 || r.RateWindows == 0 || r.FPS < 24 || r.FPS > 26 || r.VideoCodec != "avc" {
			t.Errorf("connection %d: %+v", r.Conn, r)
		}
	}
	for _, field := range []string{`"time_to_headers_ms"`, `"time_to_first_keyframe_ms"`, `"bitrate_kbps"`, `"fps"`,
		`"keyframe_interval_ms"`, `"longest_stall_ms"`, `"video_rate"`, `"av_drift_max_ms"`, `"tags"`} {
		if !strings.Contains(out.String(), field) {
			t.Errorf("-json report lacks %s", field)
		}
	}
}

func TestBrokenStreamsExit1NamingTheViolation(t *testing.T) {
	for broken, want := range map[string]string{
		"empty":  "no FLV header",
		"frozen": "video timestamps stood still at 1000 ms",
	} {
		t.Run(broken, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), []string{"-url", liveServer(t, broken), "-dur", "8s"}, &out, &errb)
			if code != 1 || !strings.Contains(out.String(), want) {
				t.Fatalf("exit %d, want 1 naming %q:\n%s%s", code, want, out.String(), errb.String())
			}
		})
	}
}

// WebSocket-FLV: ws:// URLs are read as binary messages; the same checks apply.
func TestWebSocketStream(t *testing.T) {
	ws := "ws" + strings.TrimPrefix(liveServer(t, ""), "http")
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"-url", ws, "-dur", "3s", "-json"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s %s", code, out.String(), errb.String())
	}
	var rep report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if r := rep.Results[0]; !r.OK || r.Status != 101 || r.Keyframes < 2 || r.VideoCodec != "avc" {
		t.Errorf("ws: %+v", r)
	}
	out.Reset()
	if code := run(context.Background(), []string{"-url", "ws" + strings.TrimPrefix(liveServer(t, "frozen"), "http"), "-dur", "8s"}, &out, &errb); code != 1 ||
		!strings.Contains(out.String(), "video timestamps stood still at 1000 ms") {
		t.Errorf("frozen over ws: exit %d:\n%s", code, out.String())
	}
}
