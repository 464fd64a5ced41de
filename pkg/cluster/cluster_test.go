package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/flv"
)

// clockedView is a View whose clock the test moves.
func clockedView() (*View, *time.Time) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	v := NewView()
	v.now = func() time.Time { return now }
	return v, &now
}

func originReport(id string, names ...string) Report {
	r := Report{Node: Node{ID: id, Role: RoleOrigin, State: StateReady, Streams: len(names)}}
	for _, n := range names {
		r.Published = append(r.Published, Published{Name: n, Started: time.Date(2026, 12, 1, 11, 59, 0, 0, time.UTC),
			Video: &flv.VideoInfo{Codec: "h264", Width: 1280, Height: 720, FPS: 30}, Audio: &flv.AudioInfo{Codec: "aac", SampleRate: 48000, Channels: 2},
			BitrateKbps: 2500})
	}
	return r
}

func edgeOf(id string, served map[string]int) Report {
	r := Report{Node: Node{ID: id, Role: RoleEdge, State: StateReady}}
	for n, v := range served {
		r.Served = append(r.Served, Served{Name: n, Viewers: v})
		r.Node.Viewers += v
	}
	return r
}

func TestViewMergesOriginsAndEdges(t *testing.T) {
	v, _ := clockedView()
	v.Add(originReport("o1", "live/a", "live/b"))
	v.Add(originReport("o2", "live/c"))
	v.Add(edgeOf("e1", map[string]int{"live/a": 3, "live/c": 1, "live/gone": 7}))
	v.Add(edgeOf("e2", map[string]int{"live/a": 2}))
	got := v.Streams()
	if len(got) != 3 {
		t.Fatalf("%d streams, want 3 (an edge's stream no origin reports is not live): %+v", len(got), got)
	}
	a := got[0]
	if a.Name != "live/a" || a.Origin != "o1" || a.Viewers != 5 || a.ViewersByEdge["e1"] != 3 || a.ViewersByEdge["e2"] != 2 ||
		a.UptimeS != 60 || a.Video.Width != 1280 || a.Audio.SampleRate != 48000 {
		t.Fatalf("live/a: %+v", a)
	}
	if got[1].Name != "live/b" || got[1].Viewers != 0 || got[2].Origin != "o2" || got[2].Viewers != 1 {
		t.Fatalf("others: %+v", got[1:])
	}
	nodes := v.Nodes()
	if len(nodes) != 4 || nodes[0].ID != "o1" || nodes[1].ID != "o2" || nodes[2].ID != "e1" || nodes[2].Viewers != 11 {
		t.Fatalf("nodes (origins first, then by id): %+v", nodes)
	}
}

func TestAnOriginAndAnEdgeMayShareAnID(t *testing.T) {
	v, _ := clockedView()
	v.Add(originReport("laptop", "live/demo"))
	v.Add(edgeOf("laptop", map[string]int{"live/demo": 1}))
	if s, ok := v.Stream("live/demo"); !ok || s.ViewersByEdge["laptop"] != 1 || len(v.Nodes()) != 2 {
		t.Fatalf("origin and edge both named laptop: %+v, %d nodes", s, len(v.Nodes()))
	}
}

func TestSilentNodesVanish(t *testing.T) {
	v, now := clockedView()
	v.Add(originReport("o1", "live/a"))
	v.Add(edgeOf("e1", map[string]int{"live/a": 3}))
	*now = now.Add(2 * Interval)
	v.Add(edgeOf("e2", map[string]int{"live/a": 1}))
	*now = now.Add(MaxAge - 2*Interval + time.Millisecond) // o1 and e1 are now older than MaxAge
	if n := len(v.Nodes()); n != 1 {
		t.Fatalf("%d nodes after o1 and e1 went silent for more than %v, want 1", n, MaxAge)
	}
	if s := v.Streams(); len(s) != 0 {
		t.Fatalf("a stream of a silent origin is still listed: %+v", s)
	}
}

func TestNewerSessionWinsDuringATakeover(t *testing.T) {
	v, _ := clockedView()
	old := originReport("o1", "live/a")
	v.Add(old)
	fresh := originReport("o2", "live/a")
	fresh.Published[0].Started = time.Date(2026, 12, 1, 11, 59, 50, 0, time.UTC)
	v.Add(fresh)
	if s, ok := v.Stream("live/a"); !ok || s.Origin != "o2" {
		t.Fatalf("during a takeover the API shows %+v, want the newer session's origin o2", s)
	}
}

type kicker struct{ names []string }

func (k *kicker) kick(_ context.Context, name string) error {
	if name == "live/a" {
		k.names = append(k.names, name)
		return nil
	}
	return fmt.Errorf("%s: %w", name, bus.ErrNoOwner)
}

func serve(t *testing.T, token string) (*httptest.Server, *kicker) {
	t.Helper()
	v, _ := clockedView()
	v.Add(originReport("o1", "live/a"))
	v.Add(originReport("o2", "live/b"))
	v.Add(edgeOf("e1", map[string]int{"live/a": 3}))
	k := &kicker{}
	mux := http.NewServeMux()
	(&API{View: v, Kick: k.kick, Token: token, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}).Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, k
}

func call(t *testing.T, method, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAPIWithoutToken(t *testing.T) {
	srv, k := serve(t, "")
	code, body := call(t, "GET", srv.URL+"/api/v1/streams", "")
	var list struct{ Streams []Stream }
	if err := json.Unmarshal([]byte(body), &list); code != 200 || err != nil || len(list.Streams) != 2 || list.Streams[0].ViewersByEdge["e1"] != 3 {
		t.Fatalf("GET /api/v1/streams: %d %s", code, body)
	}
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/api/v1/streams/live/a", 200},
		{"GET", "/api/v1/streams/live/zzz", 404},
		{"GET", "/api/v1/streams/live/bad.name", 400},
		{"GET", "/api/v1/streams/live/" + strings.Repeat("x", 65), 400},
		{"GET", "/api/v1/nodes", 200},
		{"POST", "/api/v1/streams", 405},
		{"DELETE", "/api/v1/streams/live/a", 403}, // no token configured: never kicks
	} {
		if code, body := call(t, c.method, srv.URL+c.path, ""); code != c.want {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, code, body, c.want)
		}
	}
	if len(k.names) != 0 {
		t.Fatalf("kicked %v without a token configured", k.names)
	}
}

func TestAPIWithToken(t *testing.T) {
	srv, k := serve(t, "s3cret")
	for _, tok := range []string{"", "wrong", "s3cret2", "S3CRET"} {
		if code, _ := call(t, "GET", srv.URL+"/api/v1/streams", tok); code != 401 {
			t.Errorf("GET with token %q: %d, want 401", tok, code)
		}
	}
	if code, _ := call(t, "DELETE", srv.URL+"/api/v1/streams/live/a", "wrong"); code != 401 || len(k.names) != 0 {
		t.Fatalf("DELETE with a wrong token: %d, kicked %v", code, k.names)
	}
	if code, body := call(t, "DELETE", srv.URL+"/api/v1/streams/live/a", "s3cret"); code != 204 || len(k.names) != 1 {
		t.Fatalf("DELETE live/a: %d %s, kicked %v", code, body, k.names)
	}
	if code, _ := call(t, "DELETE", srv.URL+"/api/v1/streams/live/zzz", "s3cret"); code != 404 {
		t.Fatalf("DELETE of a stream that is not live: %d, want 404", code)
	}
	if code, _ := call(t, "DELETE", srv.URL+"/api/v1/streams/live/b", "s3cret"); code != 404 {
		t.Fatalf("DELETE when no origin answers: %d, want 404", code)
	}
	if code, _ := call(t, "GET", srv.URL+"/api/v1/nodes", "s3cret"); code != 200 {
		t.Fatalf("GET nodes with the token: %d", code)
	}
}

// BenchmarkStreamsAt1000x20 is GET /api/v1/streams on a cluster of 1,000 live streams
// (10 origins) and 20 edges that each serve every stream, building the answer every
// time (the cost once the 250 ms cache has expired); BenchmarkStreamsAt1000x20Cached
// is a poll answered from the cache.
func BenchmarkStreamsAt1000x20(b *testing.B) { benchStreams(b, false) }

func BenchmarkStreamsAt1000x20Cached(b *testing.B) { benchStreams(b, true) }

func benchStreams(b *testing.B, cached bool) {
	v := NewView()
	for o := range 10 {
		var names []string
		for s := range 100 {
			names = append(names, fmt.Sprintf("live/s%d-%d", o, s))
		}
		v.Add(originReport(fmt.Sprintf("origin-%d", o), names...))
	}
	for e := range 20 {
		served := map[string]int{}
		for o := range 10 {
			for s := range 100 {
				served[fmt.Sprintf("live/s%d-%d", o, s)] = 1 + (e+s)%7
			}
		}
		v.Add(edgeOf(fmt.Sprintf("edge-%d", e), served))
	}
	mux := http.NewServeMux()
	api := &API{View: v, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	api.Register(mux)
	req := httptest.NewRequest("GET", "/api/v1/streams", nil)
	var size int
	b.ReportAllocs()
	for b.Loop() {
		if !cached {
			api.mu.Lock()
			clear(api.cache)
			api.mu.Unlock()
		}
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
		size = w.Body.Len()
	}
	b.ReportMetric(float64(size), "response-B")
}
