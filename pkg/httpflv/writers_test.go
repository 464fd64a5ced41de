package httpflv

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/origin"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
	"github.com/flvcdn/flvcdn/test/harness"
)

// writerRig is an origin, an edge hub and this package's Server in one process,
// over an embedded NATS server, serving on a loopback port.
type writerRig struct {
	addr   string
	srv    *Server
	hub    *edge.Hub
	pub    *origin.Stream
	cancel context.CancelFunc
	ts     uint32
	frames int
}

func newWriterRig(t *testing.T, srvCfg func(*Server)) *writerRig {
	t.Helper()
	ns, err := bus.StartEmbedded("127.0.0.1:0", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nc, err := bus.Connect(bus.ConnOptions{URL: ns.URL(), Name: "test"}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ctx, cancel := context.WithCancel(context.Background())
	store, err := registry.Open(ctx, "", nc, "flvcdn")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := bus.NewPublisher(nc, "origin-a", log)
	if err != nil {
		t.Fatal(err)
	}
	o, err := origin.New(ctx, origin.Config{ID: "origin-a", TTL: time.Second}, pub, store, log)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = o.Run(ctx) }()
	hub, err := edge.NewHub(ctx, edge.Config{MergeWindow: 20 * time.Millisecond, Grace: 300 * time.Millisecond,
		JoinTimeout: 30 * time.Second, SnapshotTimeout: 10 * time.Second}, bus.NewSubscriber(nc), store, log)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Hub: hub, Log: log, BaseContext: ctx}
	if srvCfg != nil {
		srvCfg(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv}
	go func() { _ = hs.Serve(ln) }()
	r := &writerRig{addr: ln.Addr().String(), srv: srv, hub: hub, cancel: cancel}
	t.Cleanup(func() {
		cancel()
		_ = hs.Close()
		srv.Wait()
		hub.Wait()
		o.Wait()
		<-done
	})
	n, _ := stream.ParseName("live/w")
	if r.pub, err = o.Publish(ctx, n, ""); err != nil {
		t.Fatal(err)
	}
	for _, tag := range []struct {
		typ  byte
		body []byte
	}{{flv.TypeVideo, []byte{0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f}}, {flv.TypeAudio, []byte{0xAF, 0, 0x12, 0x10}}} {
		if err := r.pub.WriteTag(tag.typ, 0, tag.body); err != nil {
			t.Fatal(err)
		}
	}
	r.write(t, 25, 1000)
	return r
}

// write publishes n video frames of size bytes (a keyframe every 25) with audio.
func (r *writerRig) write(t *testing.T, n, size int) {
	t.Helper()
	for range n {
		body := make([]byte, size)
		body[0], body[1] = 0x27, 1
		if r.frames%25 == 0 {
			body[0] = 0x17
		}
		if err := r.pub.WriteTag(flv.TypeVideo, r.ts, body); err != nil {
			t.Fatal(err)
		}
		if err := r.pub.WriteTag(flv.TypeAudio, r.ts, []byte{0xAF, 1, 0x21, 0x10}); err != nil {
			t.Fatal(err)
		}
		r.ts += 40
		r.frames++
	}
}

// dial opens a viewer (with a small receive buffer: rcvBuf) and returns its
// connection after the response head.
func (r *writerRig) dial(t *testing.T, rcvBuf int) (*net.TCPConn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	tc := c.(*net.TCPConn)
	if rcvBuf > 0 {
		_ = tc.SetReadBuffer(rcvBuf)
	}
	if _, err := io.WriteString(c, "GET /live/w.flv HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "video/x-flv" {
		t.Fatalf("response %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	return tc, br
}

// A viewer that stops reading fills its socket: the shard keeps what did not fit,
// never blocks on it (the reading viewer beside it keeps getting bytes), and drops
// it once its socket has taken nothing for WriteTimeout. The reading viewer's
// response ends with the terminating chunk when the stream ends.
func TestWriterDropsAStuckViewerOthersUnaffected(t *testing.T) {
	r := newWriterRig(t, func(s *Server) { s.WriteTimeout = 700 * time.Millisecond; s.SendBuffer = 16 << 10 })
	stuck, _ := r.dial(t, 4<<10)
	// Viewers go to a stream's shards in turn: after GOMAXPROCS-1 others, the reader
	// shares the stuck viewer's shard.
	for range runtime.GOMAXPROCS(0) - 1 {
		c, br := r.dial(t, 0)
		go func() { _, _ = io.Copy(io.Discard, br); c.Close() }()
	}
	reader, rbr := r.dial(t, 0)
	var got atomic.Int64
	var tail atomic.Value
	readDone := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		var last []byte
		for {
			_ = reader.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := rbr.Read(buf)
			got.Add(int64(n))
			last = append(last, buf[:n]...)
			if len(last) > 64 {
				last = last[len(last)-64:]
			}
			tail.Store(string(last))
			if err != nil {
				readDone <- err
				return
			}
		}
	}()
	drops0 := writeTimeoutDrops(t)
	// 40 KB per frame: the stuck viewer's socket (16 KiB send, 4 KiB receive) fills
	// at once; the reader must keep receiving while it does.
	for range 40 {
		before := got.Load()
		r.write(t, 1, 40<<10)
		harness.Until(t, 5*time.Second, "the reading viewer to get the new frame", func() bool { return got.Load() >= before+40<<10 })
	}
	harness.Until(t, 10*time.Second, "the stuck viewer to be dropped by the write timeout", func() bool {
		r.write(t, 1, 1000) // wake-ups, as a live stream has
		return writeTimeoutDrops(t) > drops0
	})
	// It has left its stream (its writer is done with it); the reader is still there.
	harness.Until(t, 5*time.Second, "the stuck viewer to leave the hub", func() bool { return r.hub.Viewers() == runtime.GOMAXPROCS(0) })
	_ = stuck
	// The stream ends: after the grace period the reader's response ends cleanly.
	r.pub.Close(context.Background())
	select {
	case err := <-readDone:
		if err != io.EOF {
			t.Fatalf("reader ended with %v, want EOF", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reader's response did not end after the stream ended")
	}
	if s, _ := tail.Load().(string); !strings.HasSuffix(s, "\r\n0\r\n\r\n") {
		t.Fatalf("response ends with %q, want the terminating chunk", s)
	}
	if r.srv.BytesOut() < 40*40<<10 {
		t.Fatalf("BytesOut %d, want at least the 40 large frames", r.srv.BytesOut())
	}
}

// writeTimeoutDrops reads flvcdn_edge_viewer_drops_total{reason="write-timeout"}.
func writeTimeoutDrops(t *testing.T) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "flvcdn_edge_viewer_drops_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == "write-timeout" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatal("no write-timeout drop counter")
	return 0
}
