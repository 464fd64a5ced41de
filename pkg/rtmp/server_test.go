package rtmp

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"github.com/flvcdn/flvcdn/test/harness"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	gortmp "github.com/yutopp/go-rtmp"
	rtmpmsg "github.com/yutopp/go-rtmp/message"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// countingIngest accepts every publisher and counts tags per stream.
type countingIngest struct {
	mu    sync.Mutex
	tags  map[stream.Name]*atomic.Int64
	nopen atomic.Int64
}

type countingPub struct {
	ing    *countingIngest
	n      *atomic.Int64
	kicked chan struct{}
}

func (c *countingIngest) Publish(_ context.Context, req PublishRequest) (Publication, error) {
	name := req.Name
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tags[name] == nil {
		c.tags[name] = &atomic.Int64{}
	}
	c.nopen.Add(1)
	return &countingPub{ing: c, n: c.tags[name], kicked: make(chan struct{})}, nil
}

func (c *countingIngest) count(name stream.Name) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tags[name] == nil {
		return 0
	}
	return c.tags[name].Load()
}

func (p *countingPub) Alloc(typ byte, ts uint32, n int) flv.Tag {
	_, t := flv.AllocTag(0, typ, ts, n)
	return t
}
func (p *countingPub) Write(flv.Tag) error     { p.n.Add(1); return nil }
func (p *countingPub) Kicked() <-chan struct{} { return p.kicked }
func (p *countingPub) Close(context.Context)   { p.ing.nopen.Add(-1) }

func quietLogrus() *logrus.Logger { l := logrus.New(); l.SetOutput(io.Discard); return l }

// startServer runs an rtmp.Server on a loopback port until the test ends.
func startServer(t testing.TB, ing Ingest) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &Server{Ingest: ing, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		ReadTimeout: 2 * time.Second, HandshakeTimeout: time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

// publishLoop publishes a stream with go-rtmp's client until stop is closed.
func publishLoop(t *testing.T, addr, name string, stop <-chan struct{}) <-chan error {
	errc := make(chan error, 1)
	go func() {
		errc <- func() error {
			c, err := gortmp.Dial("rtmp", addr, &gortmp.ConnConfig{Logger: quietLogrus()})
			if err != nil {
				return err
			}
			defer c.Close()
			if err := c.Connect(&rtmpmsg.NetConnectionConnect{Command: rtmpmsg.NetConnectionConnectCommand{App: "live"}}); err != nil {
				return err
			}
			s, err := c.CreateStream(nil, 4096)
			if err != nil {
				return err
			}
			if err := s.Publish(&rtmpmsg.NetStreamPublish{PublishingName: name, PublishingType: "live"}); err != nil {
				return err
			}
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for ts := uint32(0); ; ts += 10 {
				select {
				case <-stop:
					return nil
				case <-tick.C:
				}
				body := []byte{0x27, 1, 0, 0, 0, byte(ts)}
				if err := s.Write(6, ts, &rtmpmsg.VideoMessage{Payload: bytes.NewReader(body)}); err != nil {
					return err
				}
			}
		}()
	}()
	return errc
}

// handshake performs a plain RTMP handshake as a client. It runs on the attackers'
// goroutines too, so it reports with t.Errorf (t.Fatal must stay on the test's own).
func handshake(t testing.TB, conn net.Conn) {
	t.Helper()
	c1 := make([]byte, 1+1536)
	c1[0] = 3
	_, _ = rand.Read(c1[9:])
	for i := 1; i < 9; i++ {
		c1[i] = 0
	}
	if _, err := conn.Write(c1); err != nil {
		t.Errorf("handshake: %v", err)
		return
	}
	s := make([]byte, 1+1536+1536)
	if _, err := io.ReadFull(conn, s); err != nil {
		t.Errorf("handshake: %v", err)
		return
	}
	if _, err := conn.Write(s[1 : 1+1536]); err != nil { // C2 echoes S1
		t.Errorf("handshake: %v", err)
	}
}

func TestGarbageAndTruncatedSessionsDoNotHurtOtherStreams(t *testing.T) {
	ing := &countingIngest{tags: map[stream.Name]*atomic.Int64{}}
	addr := startServer(t, ing)
	baseline := runtime.NumGoroutine()

	stop := make(chan struct{})
	pubErr := publishLoop(t, addr, "healthy", stop)
	healthy, _ := stream.ParseName("live/healthy")
	harness.Until(t, 5*time.Second, "the healthy stream to flow", func() bool { return ing.count(healthy) > 20 })

	garbage := func(b []byte) []byte { _, _ = rand.Read(b); return b }
	attacks := map[string]func(net.Conn){
		"random bytes":      func(c net.Conn) { _, _ = c.Write(garbage(make([]byte, 4096))) },
		"truncated C1":      func(c net.Conn) { _, _ = c.Write([]byte{3, 0, 0, 0}) },
		"silent":            func(net.Conn) {},
		"chunks of garbage": func(c net.Conn) { handshake(t, c); _, _ = c.Write(garbage(make([]byte, 8192))) },
		"oversize message": func(c net.Conn) {
			handshake(t, c)
			_, _ = c.Write([]byte{0x06, 0, 0, 0, 0xFF, 0xFF, 0xFF, 9, 1, 0, 0, 0})
		},
		"bad chunk size": func(c net.Conn) {
			handshake(t, c)
			_, _ = c.Write([]byte{0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0x80, 0, 0, 0, 0})
		},
		"truncated mid-chunk": func(c net.Conn) {
			handshake(t, c)
			_, _ = c.Write([]byte{0x03, 0, 0, 0, 0, 0, 200, 0x14, 0, 0, 0, 0, 2, 0})
		},
	}
	var wg sync.WaitGroup
	for round := 0; round < 5; round++ {
		for name, attack := range attacks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Errorf("%s: dial: %v", name, err)
					return
				}
				defer c.Close()
				attack(c)
				// The origin must close the connection itself (error, or a timeout).
				_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, err = io.Copy(io.Discard, c)
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Errorf("%s: the origin kept a bad connection open for 10s", name)
				}
			}()
		}
	}
	before := ing.count(healthy)
	wg.Wait()
	after := ing.count(healthy)
	if after-before < 20 {
		t.Fatalf("healthy stream got %d tags during the attack", after-before)
	}
	close(stop)
	if err := <-pubErr; err != nil {
		t.Fatalf("healthy publisher: %v", err)
	}
	harness.Until(t, 10*time.Second, "every publication to be closed", func() bool { return ing.nopen.Load() == 0 })
	harness.Until(t, 10*time.Second, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= baseline+2 })
	t.Logf("healthy stream: %d tags while %d bad sessions came and went; goroutines %d -> %d",
		after-before, 5*len(attacks), baseline, runtime.NumGoroutine())
}

// A publisher that stops sending while a window's worth of bytes is unacknowledged (the
// RTMP specification lets a peer wait for acknowledgements) keeps streaming: the Server
// acknowledges the media bytes that go-rtmp itself never sees.
func TestServerAcknowledgesMedia(t *testing.T) {
	ing := &countingIngest{tags: map[stream.Name]*atomic.Int64{}}
	addr := startServer(t, ing)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	handshake(t, conn)

	acks := make(chan uint32, 256)
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		cs := gortmp.NewChunkStreamer(conn, io.Discard, nil)
		defer cs.Close()
		for {
			var m gortmp.ChunkMessage
			if _, _, err := cs.Read(&m); err != nil {
				return
			}
			switch msg := m.Message.(type) {
			case *rtmpmsg.Ack:
				acks <- msg.SequenceNumber
			case *rtmpmsg.SetChunkSize:
				_ = cs.PeerState().SetChunkSize(msg.ChunkSize)
			}
		}
	}()
	defer func() { conn.Close(); <-readDone }()

	const window = 64 << 10
	setup := cnChunk{fmt: 0, csid: 2, length: 4, typ: 5, payload: binary.BigEndian.AppendUint32(nil, window)}.appendTo(nil)
	setup = append(setup, newBenchStream(t, 4096).setup...) // connect, createStream, publish, chunk size 4096, 2 tags
	if _, err := conn.Write(setup); err != nil {
		t.Fatal(err)
	}
	sent, acked, nacks := len(setup), 0, 0
	body := make([]byte, 10000)
	const frames = 400 // 4 MB, 60 windows
	for i := 0; i < frames; i++ {
		for sent-acked > window {
			select {
			case a := <-acks:
				if int(a) > sent || int(a) < acked {
					t.Fatalf("acknowledgement %d after %d; %d bytes sent", a, acked, sent)
				}
				acked = int(a)
				nacks++
			case <-time.After(5 * time.Second):
				t.Fatalf("stalled after %d frames: %d bytes sent, %d acknowledged", i, sent, acked)
			}
		}
		var msg []byte
		msg = cnChunk{fmt: 1, csid: 6, ts: 33, length: uint32(len(body)), typ: 9, payload: body[:4096]}.appendTo(msg)
		msg = cnChunk{fmt: 3, csid: 6, payload: body[4096:8192]}.appendTo(msg)
		msg = cnChunk{fmt: 3, csid: 6, payload: body[8192:]}.appendTo(msg)
		if _, err := conn.Write(msg); err != nil {
			t.Fatal(err)
		}
		sent += len(msg)
	}
	name, _ := stream.ParseName("live/bench")
	harness.Until(t, 10*time.Second, "every frame to be ingested", func() bool { return ing.count(name) == 2+frames })
	t.Logf("%d bytes sent, %d acknowledgements received, the last for %d bytes", sent, nacks, acked)
}
