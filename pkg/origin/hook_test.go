package origin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/hook"
	"github.com/flvcdn/flvcdn/pkg/stream"
	"github.com/flvcdn/flvcdn/test/harness"
)

// platform records callbacks and allows a publish whose query has token=good.
type platform struct {
	mu     sync.Mutex
	events []hook.Event
}

func (p *platform) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var ev hook.Event
	b, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(b, &ev); err != nil {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	p.events = append(p.events, ev)
	p.mu.Unlock()
	if ev.Action == hook.Publish && !strings.Contains(ev.Query, "token=good") {
		http.Error(w, "who are you?\nignored", http.StatusForbidden)
	}
}

func (p *platform) of(action string) []hook.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []hook.Event
	for _, ev := range p.events {
		if ev.Action == action {
			out = append(out, ev)
		}
	}
	return out
}

func hookedOrigin(t *testing.T, e *env, cfg Config) (*Origin, *platform) {
	t.Helper()
	p := &platform{}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	h, err := hook.New(hook.Config{URL: srv.URL, Node: cfg.ID, RetryDelay: 10 * time.Millisecond}, e.log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	cfg.Hook = h
	return e.origin(t, cfg), p
}

// The key is checked before the platform is asked; both must pass. A denial names the
// platform's reason and leaves the name free; the unpublish carries the session of
// the publish, its duration and the bytes ingested.
func TestPublishHook(t *testing.T) {
	e := newEnv(t)
	o, p := hookedOrigin(t, e, Config{ID: "o1", PublishSecret: "k"})
	n := name("live/h")
	ctx := context.Background()
	if _, err := o.Accept(ctx, PublishRequest{Name: n, Key: "wrong", Query: "token=good"}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong key: %v", err)
	}
	if len(p.of(hook.Publish)) != 0 {
		t.Fatal("the platform was asked about a publish with a wrong key")
	}
	_, err := o.Accept(ctx, PublishRequest{Name: n, Key: stream.PublishKey("k", n), ClientIP: "10.0.0.7", Query: "token=bad"})
	if !errors.Is(err, ErrDenied) || !strings.HasSuffix(err.Error(), ": who are you?") {
		t.Fatalf("denied: %v", err)
	}
	if o.Streams() != 0 {
		t.Fatalf("a denied publish holds %d names", o.Streams())
	}
	s, err := o.Accept(ctx, PublishRequest{Name: n, Key: stream.PublishKey("k", n), ClientIP: "10.0.0.7", Query: "token=good"})
	if err != nil {
		t.Fatal(err)
	}
	must(t, s.WriteTag(flv.TypeVideo, 0, videoHdr))
	must(t, s.WriteTag(flv.TypeVideo, 0, key(1)))
	s.Close(ctx)
	harness.Until(t, 5*time.Second, "the unpublish", func() bool { return len(p.of(hook.Unpublish)) == 1 })
	pubs, un := p.of(hook.Publish), p.of(hook.Unpublish)[0]
	allowed := pubs[len(pubs)-1]
	if allowed.ClientIP != "10.0.0.7" || allowed.Node != "o1" || allowed.App != "live" || allowed.Stream != "h" || allowed.Session != s.owner.Session {
		t.Fatalf("publish event %+v (session %s)", allowed, s.owner.Session)
	}
	if un.Session != allowed.Session || un.Bytes == nil || *un.Bytes != uint64(len(videoHdr)+len(key(1))) || un.DurationS == nil {
		t.Fatalf("unpublish event %+v", un)
	}
	if len(pubs) != 2 || len(p.of(hook.Unpublish)) != 1 {
		t.Fatalf("%d publish, %d unpublish events; want 2 and 1 (a denied publish has no unpublish)", len(pubs), len(p.of(hook.Unpublish)))
	}
}

// The file source is the operator's own configuration: it never asks the platform.
func TestFileSourceSkipsTheHook(t *testing.T) {
	e := newEnv(t)
	o, p := hookedOrigin(t, e, Config{ID: "o1"})
	src, err := ParseSource("live/file=" + filepath.Join("..", "..", "testdata", "demo.flv"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(ctx, o) }()
	harness.Until(t, 5*time.Second, "the file source to publish", func() bool { return o.Streams() == 1 })
	cancel()
	<-done
	if n := len(p.of(hook.Publish)) + len(p.of(hook.Unpublish)); n != 0 {
		t.Fatalf("the file source made %d callbacks", n)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
