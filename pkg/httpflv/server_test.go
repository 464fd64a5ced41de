package httpflv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/edge"

	"github.com/flvcdn/flvcdn/pkg/stream"
)

func TestParsePath(t *testing.T) {
	good := map[string]stream.Name{"/live/demo.flv": "live/demo", "/a-1/B_2.flv": "a-1/B_2"}
	for p, want := range good {
		if got, err := ParsePath(p); err != nil || got != want {
			t.Errorf("%q: %q %v", p, got, err)
		}
	}
	for _, p := range []string{"/", "/live/demo", "/live/demo.mp4", "/live.flv", "/live/de.mo.flv",
		"/live/demo/x.flv", "/../x/y.flv", "/live/%2e.flv", "/" + strings.Repeat("a", 65) + "/b.flv"} {
		if _, err := ParsePath(p); err == nil {
			t.Errorf("%q accepted", p)
		}
	}
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"/live/demo.flv", "/a/b.flv", "//.flv", "/x/y/z.flv", "/\x00/a.flv"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		n, err := ParsePath(p)
		if err != nil {
			if !errors.Is(err, stream.ErrBadName) && !strings.Contains(err.Error(), "want /app/stream.flv") {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		// Whatever is accepted must be safe as NATS subject tokens and Redis keys.
		if _, err := stream.ParseName(string(n)); err != nil {
			t.Fatalf("accepted %q gives invalid name %q", p, n)
		}
	})
}

// noHub answers that every stream exists but refuses to watch: enough to test the
// HTTP surface in front of the edge.
type noHub struct{}

func (noHub) Watch(context.Context, stream.Name) (*edge.Viewer, error) { return nil, edge.ErrNotFound }
func (noHub) Exists(context.Context, stream.Name) (bool, error)        { return true, nil }

func TestHTTPSurface(t *testing.T) {
	srv := &Server{Hub: noHub{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), CORSOrigin: "*", PlaySecret: "k"}
	exp := time.Now().Add(time.Minute).Unix()
	signed := fmt.Sprintf("/live/a.flv?expires=%d&sig=%s", exp, stream.SignPlay("k", "/live/a.flv", exp))
	expired := fmt.Sprintf("/live/a.flv?expires=%d&sig=%s", exp-3600, stream.SignPlay("k", "/live/a.flv", exp-3600))
	cases := []struct {
		method, target string
		want           int
	}{
		{"GET", "/live/a.flv", http.StatusForbidden},
		{"GET", expired, http.StatusForbidden},
		{"GET", signed + "x", http.StatusForbidden},
		{"GET", signed, http.StatusNotFound}, // passes auth; noHub has no stream
		{"HEAD", signed, http.StatusOK},
		{"OPTIONS", "/live/a.flv", http.StatusNoContent},
		{"POST", signed, http.StatusMethodNotAllowed},
		{"GET", "/live/a.b.flv", http.StatusBadRequest},
	}
	for _, c := range cases {
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest(c.method, c.target, nil))
		if rec.Code != c.want {
			t.Errorf("%s %s: %d, want %d (%s)", c.method, c.target, rec.Code, c.want, strings.TrimSpace(rec.Body.String()))
		}
		if rec.Header().Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("%s %s: no CORS header", c.method, c.target)
		}
	}
}

func TestParseVTrack(t *testing.T) {
	for q, want := range map[string]int{"": 0, "vtrack=0": 0, "vtrack=1": 1, "vtrack=255": 255, "x=1": 0} {
		v, _ := url.ParseQuery(q)
		if got, err := parseVTrack(v); err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", q, got, err, want)
		}
	}
	for _, q := range []string{"vtrack=", "vtrack=-1", "vtrack=256", "vtrack=1000", "vtrack=a", "vtrack=+1", "vtrack=1&vtrack=2", "vtrack=0x1", "vtrack=1.0"} {
		v, _ := url.ParseQuery(q)
		if _, err := parseVTrack(v); err == nil {
			t.Errorf("%q accepted", q)
		}
	}
}
