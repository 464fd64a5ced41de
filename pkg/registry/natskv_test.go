package registry

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

func TestNATSKV(t *testing.T) {
	url := startNATSServer(t)
	runContract(t, func(t *testing.T) Store {
		s, err := NewNATSKV(testCtx(t), connectNATS(t, url), uniqueName("reg"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestNATSKVSharedBucket: two stores on one bucket, as origin and edge
// processes are, see each other's claims and events.
func TestNATSKVSharedBucket(t *testing.T) {
	url := startNATSServer(t)
	ctx := testCtx(t)
	origin, err := NewNATSKV(ctx, connectNATS(t, url), "shared")
	if err != nil {
		t.Fatal(err)
	}
	edge, err := NewNATSKV(ctx, connectNATS(t, url), "shared")
	if err != nil {
		t.Fatalf("reopening the bucket: %v", err)
	}
	events, err := edge.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustClaim(t, origin, "live/demo", alice, longTTL)
	wantOwner(t, edge, "live/demo", alice)
	if err := origin.PublishEvent(ctx, Event{Kind: EventPublish, Stream: "live/demo"}); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.Kind != EventPublish || ev.Stream != "live/demo" {
			t.Fatalf("edge received %+v", ev)
		}
	case <-time.After(waitLimit):
		t.Fatal("edge received no event")
	}
	if err := origin.ClaimStream(ctx, "live/demo", alice, kvMaxAge+time.Second); err == nil {
		t.Fatal("claim with a TTL above the bucket's max age succeeded")
	}
}

func TestKVKeyEscaping(t *testing.T) {
	tests := []struct{ stream, key string }{
		{"live/demo", "stream.live.demo"},
		{"my_app/cam-1", "stream.my_app.cam-1"},
		{"a.b/c d", "stream.a=2Eb.c=20d"},
		{"a=b/", "stream.a=3Db.="},
		{"x/y/z", "stream.x.y.z"},
	}
	for _, tc := range tests {
		if got := streamKVKey(tc.stream); got != tc.key {
			t.Errorf("streamKVKey(%q) = %q, want %q", tc.stream, got, tc.key)
		}
		if got := streamFromKVKey(tc.key); got != tc.stream {
			t.Errorf("streamFromKVKey(%q) = %q, want %q", tc.key, got, tc.stream)
		}
	}
	if got, want := originKVKey("flvcdn-origin-0.local"), "origin.flvcdn-origin-0=2Elocal"; got != want {
		t.Errorf("originKVKey = %q, want %q", got, want)
	}
}

// startNATSServer runs an in-process nats-server with JetStream on a random
// port for the life of the test and returns its client URL.
func startNATSServer(t *testing.T) string {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	if !ns.ReadyForConnections(waitLimit) {
		t.Fatal("nats-server not ready")
	}
	return ns.ClientURL()
}

func connectNATS(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}
