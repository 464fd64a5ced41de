package httpflv

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/h2"
	"github.com/flvcdn/flvcdn/pkg/hook"
	"github.com/flvcdn/flvcdn/pkg/origin"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
	"github.com/flvcdn/flvcdn/test/harness"
)

// rig is an origin and an edge hub in one process over a real (embedded) NATS server
// and the JetStream KV registry, with the edge's Server on a plain listener (HTTP/1.x
// and h2c) and a TLS one (HTTP/1.1 and HTTP/2 by ALPN).
type rig struct {
	ctx     context.Context
	origin  *origin.Origin
	srv     *Server
	cert    *harness.Cert
	plain   string // host:port
	secure  string
	conns   atomic.Int64 // connections accepted by both listeners
	stopSrv context.CancelFunc
}

func testLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newTransportRig(t *testing.T, hubCfg edge.Config, srv *Server) *rig {
	t.Helper()
	ns, err := bus.StartEmbedded("127.0.0.1:0", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	log := testLog()
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
	hubCfg.JoinTimeout, hubCfg.SnapshotTimeout = 30*time.Second, 10*time.Second
	if hubCfg.MergeWindow == 0 {
		hubCfg.MergeWindow = 20 * time.Millisecond
	}
	hub, err := edge.NewHub(ctx, hubCfg, bus.NewSubscriber(nc), store, log)
	if err != nil {
		t.Fatal(err)
	}
	srvCtx, stopSrv := context.WithCancel(ctx)
	srv.Hub, srv.Log, srv.BaseContext = hub, log, srvCtx
	r := &rig{ctx: ctx, origin: o, srv: srv, stopSrv: stopSrv}
	if r.cert, err = harness.SelfSigned(t.TempDir(), "edge", 1); err != nil {
		t.Fatal(err)
	}
	certs, err := NewCertReloader(r.cert.CertFile, r.cert.KeyFile, log)
	if err != nil {
		t.Fatal(err)
	}
	count := func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			r.conns.Add(1)
		}
	}
	plain := &http.Server{Handler: srv, ConnState: count, Protocols: new(http.Protocols)}
	plain.Protocols.SetHTTP1(true)
	plain.Protocols.SetUnencryptedHTTP2(true)
	secure := &http.Server{Handler: srv, ConnState: count, TLSConfig: certs.TLSConfig()}
	h2s := &h2.Server{Log: log} // as the edge binary serves HTTP/2
	h2.Configure(plain, h2s)
	h2.Configure(secure, h2s)
	lp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ls, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.plain, r.secure = lp.Addr().String(), ls.Addr().String()
	go func() { _ = plain.Serve(lp) }()
	go func() { _ = secure.ServeTLS(ls, "", "") }()
	t.Cleanup(func() {
		plain.Close()
		secure.Close()
		cancel()
		h2s.Wait()
		srv.Wait()
		hub.Wait()
		o.Wait()
		<-done
	})
	return r
}

// live publishes a synthetic H.264/AAC stream at 25 fps (a keyframe every 10 frames)
// until the returned stop is called (which ends the stream) or the test ends.
func (r *rig) live(t *testing.T, name string) (stop func()) {
	t.Helper()
	n, _ := stream.ParseName(name)
	s, err := r.origin.Publish(r.ctx, n, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tag := range []struct {
		typ  byte
		body []byte
	}{{flv.TypeScript, metadata()}, {flv.TypeVideo, []byte{0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f}}, {flv.TypeAudio, []byte{0xAF, 0, 0x12, 0x10}}} {
		if err := s.WriteTag(tag.typ, 0, tag.body); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(r.ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(40 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			body := make([]byte, 3000) // larger than the 4 KiB buffers' leftover now and then
			body[0], body[1] = 0x27, 1
			if i%10 == 0 {
				body[0] = 0x17
			}
			ts := uint32(i * 40)
			if s.WriteTag(flv.TypeVideo, ts, body) != nil || s.WriteTag(flv.TypeAudio, ts, []byte{0xAF, 1, 0x21, 0x10}) != nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			s.Close(r.ctx)
		})
	}
	t.Cleanup(stop)
	return stop
}

func metadata() []byte {
	b := append([]byte{2, 0, 10}, "onMetaData"...)
	b = append(b, 8, 0, 0, 0, 2)
	for _, k := range []string{"videocodecid", "audiocodecid"} {
		b = append(b, 0, byte(len(k)))
		b = append(b, k...)
		b = append(b, 0, 0x40, 0x1c, 0, 0, 0, 0, 0, 0)
	}
	return append(b, 0, 0, 9)
}

// checkFLV parses b strictly and asserts the join order: FLV header with both tracks,
// metadata, sequence headers, then video from a keyframe, timestamps never going back.
// It returns the number of video tags.
func checkFLV(t *testing.T, what string, b []byte) int {
	t.Helper()
	r := flv.NewReader(bytes.NewReader(b), 0)
	if err := r.ReadHeader(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if r.Flags != flv.FlagAudio|flv.FlagVideo {
		t.Fatalf("%s: header flags %#x", what, r.Flags)
	}
	var kinds []flv.Kind
	video, last, seenKey := 0, uint32(0), false
	for {
		tg, err := r.ReadTag()
		if err != nil {
			break // the read stopped mid-tag
		}
		k := flv.Classify(tg.Type(), tg.Body())
		kinds = append(kinds, k)
		if len(kinds) > 3 {
			if tg.Type() == flv.TypeVideo {
				if !seenKey && k != flv.KindKeyframe {
					t.Fatalf("%s: video before the first keyframe", what)
				}
				seenKey, video = true, video+1
			}
			if tg.Timestamp() < last {
				t.Fatalf("%s: timestamp %d after %d", what, tg.Timestamp(), last)
			}
			last = tg.Timestamp()
		}
	}
	if len(kinds) < 3 || kinds[0] != flv.KindMetadata || kinds[1] != flv.KindVideoHeader || kinds[2] != flv.KindAudioHeader {
		t.Fatalf("%s: first tags %v", what, kinds)
	}
	return video
}

// clients are the ways a player reaches the edge over HTTP.
type client struct {
	name, proto string // proto: what resp.Proto must be
	scheme      string
	c           *http.Client
}

func (r *rig) clients() []client {
	h1 := &http.Transport{Protocols: new(http.Protocols)}
	h1.Protocols.SetHTTP1(true)
	h2c := &http.Transport{Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	tlsConf := &tls.Config{RootCAs: r.cert.Pool()}
	h1s := &http.Transport{TLSClientConfig: tlsConf, Protocols: new(http.Protocols)}
	h1s.Protocols.SetHTTP1(true)
	h2s := &http.Transport{TLSClientConfig: tlsConf, Protocols: new(http.Protocols)}
	h2s.Protocols.SetHTTP2(true)
	return []client{
		{"http/1.1", "HTTP/1.1", "http", &http.Client{Transport: h1}},
		{"h2c", "HTTP/2.0", "http", &http.Client{Transport: h2c}},
		{"https/1.1", "HTTP/1.1", "https", &http.Client{Transport: h1s}},
		{"h2", "HTTP/2.0", "https", &http.Client{Transport: h2s}},
	}
}

func (r *rig) url(scheme, path string) string {
	switch scheme {
	case "http", "ws":
		return scheme + "://" + r.plain + path
	}
	return scheme + "://" + r.secure + path
}

// readAtLeast reads from rd until n bytes came or the deadline passed.
func readAtLeast(t *testing.T, what string, rd io.Reader, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(rd, b); err != nil {
		t.Fatalf("%s: read: %v", what, err)
	}
	return b
}

// wsReader reads binary messages as one byte stream and counts them.
type wsReader struct {
	ctx  context.Context
	c    *websocket.Conn
	cur  io.Reader
	msgs int
}

func (w *wsReader) Read(p []byte) (int, error) {
	for {
		if w.cur != nil {
			n, err := w.cur.Read(p)
			if n > 0 || !errors.Is(err, io.EOF) {
				return n, err
			}
		}
		typ, rd, err := w.c.Reader(w.ctx)
		if err != nil {
			return 0, err
		}
		if typ != websocket.MessageBinary {
			return 0, fmt.Errorf("message type %v, want binary", typ)
		}
		w.cur, w.msgs = rd, w.msgs+1
	}
}

func (r *rig) dialWS(ctx context.Context, scheme, path string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	o := &websocket.DialOptions{HTTPHeader: hdr}
	if scheme == "wss" {
		o.HTTPClient = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.cert.Pool()}}}
	}
	return websocket.Dial(ctx, r.url(scheme, path), o)
}

// Every transport plays the same stream from its keyframe, with the same join order.
// Over HTTP/2 one connection carries several streams at once; HTTP/1.0 gets a body
// delimited by the connection's close; WebSocket gets the byte stream in binary
// messages, about one per merge window.
func TestEveryTransportPlays(t *testing.T) {
	r := newTransportRig(t, edge.Config{}, &Server{CORSOrigin: "*"})
	for _, n := range []string{"live/a", "live/b", "live/c"} {
		r.live(t, n)
	}
	const want = 48 << 10 // about 0.6 s of this stream, past the join burst
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, c := range r.clients() {
		t.Run(c.name, func(t *testing.T) {
			before := r.conns.Load()
			// One request first: a Transport with no connection yet dials one per
			// request that arrives meanwhile.
			if resp, err := c.c.Head(r.url(c.scheme, "/live/a.flv")); err != nil {
				t.Fatal(err)
			} else {
				resp.Body.Close()
			}
			var wg sync.WaitGroup
			for _, n := range []string{"live/a", "live/b", "live/c"} {
				wg.Go(func() {
					req, _ := http.NewRequestWithContext(ctx, "GET", r.url(c.scheme, "/"+n+".flv"), nil)
					resp, err := c.c.Do(req)
					if err != nil {
						t.Errorf("%s: %v", n, err)
						return
					}
					defer resp.Body.Close()
					if resp.StatusCode != 200 || resp.Proto != c.proto || resp.Header.Get("Content-Type") != "video/x-flv" {
						t.Errorf("%s: %s %s %q", n, resp.Proto, resp.Status, resp.Header.Get("Content-Type"))
						return
					}
					if v := checkFLV(t, c.name+" "+n, readAtLeast(t, n, resp.Body, want)); v < 5 {
						t.Errorf("%s: %d video tags", n, v)
					}
				})
			}
			wg.Wait()
			conns := r.conns.Load() - before
			if c.proto == "HTTP/2.0" && conns != 1 {
				t.Errorf("3 streams over HTTP/2 took %d connections, want 1", conns)
			}
			if c.proto == "HTTP/1.1" && conns < 3 {
				t.Errorf("3 streams over HTTP/1.1 took %d connections, want at least 3", conns)
			}
		})
	}
	t.Run("http/1.0", func(t *testing.T) {
		conn, err := net.Dial("tcp", r.plain)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(conn, "GET /live/a.flv HTTP/1.0\r\nHost: %s\r\n\r\n", r.plain)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 || resp.Proto != "HTTP/1.0" || len(resp.TransferEncoding) != 0 || resp.ContentLength != -1 || !resp.Close {
			t.Fatalf("HTTP/1.0: %s %s, transfer-encoding %v, length %d, close %v", resp.Proto, resp.Status, resp.TransferEncoding, resp.ContentLength, resp.Close)
		}
		checkFLV(t, "http/1.0", readAtLeast(t, "http/1.0", resp.Body, want))
	})
	for _, scheme := range []string{"ws", "wss"} {
		t.Run(scheme, func(t *testing.T) {
			c, resp, err := r.dialWS(ctx, scheme, "/live/b.flv", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseNow()
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status %d", resp.StatusCode)
			}
			start := time.Now()
			wr := &wsReader{ctx: ctx, c: c}
			b := readAtLeast(t, scheme, wr, want)
			elapsed := time.Since(start)
			checkFLV(t, scheme, b)
			// One message per merge window (20 ms here) at most, plus the join burst.
			if most := int(elapsed/(20*time.Millisecond)) + 3; wr.msgs > most {
				t.Errorf("%d messages in %v: more than one per merge window", wr.msgs, elapsed)
			}
			t.Logf("%d bytes in %d messages over %v", len(b), wr.msgs, elapsed.Round(time.Millisecond))
		})
	}
}

// HEAD, OPTIONS, CORS, Range: bytes=0-, Icy-MetaData and 404 answer the same on every
// HTTP transport; the WebSocket handshake gets the same refusals as a GET.
func TestSurfaceIsTheSameOnEveryTransport(t *testing.T) {
	const secret = "k"
	r := newTransportRig(t, edge.Config{}, &Server{CORSOrigin: "*", PlaySecret: secret})
	r.live(t, "live/a")
	sign := func(path string) string {
		exp := time.Now().Add(time.Hour).Unix()
		return fmt.Sprintf("%s?expires=%d&sig=%s", path, exp, stream.SignPlay(secret, path, exp))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cases := []struct {
		method, path string
		hdr          map[string]string
		code         int
		contentType  string
		allow        string // Allow header
	}{
		{"HEAD", sign("/live/a.flv"), nil, 200, "video/x-flv", ""},
		{"HEAD", sign("/live/none.flv"), nil, 404, "text/plain; charset=utf-8", ""},
		{"OPTIONS", "/live/a.flv", nil, 204, "", "GET, HEAD, OPTIONS"},
		{"GET", sign("/live/none.flv"), nil, 404, "text/plain; charset=utf-8", ""},
		{"GET", "/live/a.flv", nil, 403, "text/plain; charset=utf-8", ""},
		{"GET", sign("/live/a.flv"), map[string]string{"Range": "bytes=0-", "Icy-MetaData": "1"}, 200, "video/x-flv", ""},
		{"POST", sign("/live/a.flv"), nil, 405, "text/plain; charset=utf-8", "GET, HEAD, OPTIONS"},
	}
	for _, c := range r.clients() {
		for _, tc := range cases {
			req, _ := http.NewRequestWithContext(ctx, tc.method, r.url(c.scheme, tc.path), nil)
			for k, v := range tc.hdr {
				req.Header.Set(k, v)
			}
			resp, err := c.c.Do(req)
			if err != nil {
				t.Errorf("%s %s %s: %v", c.name, tc.method, tc.path, err)
				continue
			}
			if tc.code == 200 && tc.method == "GET" {
				checkFLV(t, c.name+" ranged GET", readAtLeast(t, "ranged GET", resp.Body, 16<<10))
			}
			resp.Body.Close()
			h := resp.Header
			if resp.StatusCode != tc.code || resp.Proto != c.proto || h.Get("Content-Type") != tc.contentType ||
				h.Get("Allow") != tc.allow || h.Get("Access-Control-Allow-Origin") != "*" || h.Get("Content-Range") != "" {
				t.Errorf("%s %s %s: %s %s, headers %v", c.name, tc.method, tc.path, resp.Proto, resp.Status, h)
			}
		}
	}
	for _, scheme := range []string{"ws", "wss"} {
		for path, code := range map[string]int{sign("/live/none.flv"): 404, "/live/a.flv": 403} {
			_, resp, err := r.dialWS(ctx, scheme, path, nil)
			if err == nil || resp == nil || resp.StatusCode != code {
				t.Errorf("%s %s: %v, want status %d", scheme, path, err, code)
			}
		}
		c, _, err := r.dialWS(ctx, scheme, sign("/live/a.flv"), http.Header{"Origin": {"https://elsewhere.example"}})
		if err != nil {
			t.Errorf("%s from another origin with CORS *: %v", scheme, err)
			continue
		}
		checkFLV(t, scheme, readAtLeast(t, scheme, &wsReader{ctx: ctx, c: c}, 16<<10))
		c.CloseNow()
	}
}

// The WebSocket origin check follows --cors-origin: one origin is let in, others are
// refused before anything is played.
func TestWebSocketOriginFollowsCORS(t *testing.T) {
	r := newTransportRig(t, edge.Config{}, &Server{CORSOrigin: "https://player.example"})
	r.live(t, "live/a")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, resp, err := r.dialWS(ctx, "ws", "/live/a.flv", http.Header{"Origin": {"https://elsewhere.example"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign origin: %v, want 403", err)
	}
	c, _, err := r.dialWS(ctx, "ws", "/live/a.flv", http.Header{"Origin": {"https://player.example"}})
	if err != nil {
		t.Fatalf("allowed origin: %v", err)
	}
	c.CloseNow()
}

// A WebSocket viewer is told why it ends: 1000 "stream ended" when the publisher is
// gone past the grace period, 1001 "edge shutting down" when the edge stops.
func TestWebSocketCloseStatus(t *testing.T) {
	r := newTransportRig(t, edge.Config{Grace: 200 * time.Millisecond}, &Server{CORSOrigin: "*"})
	stopA := r.live(t, "live/a")
	r.live(t, "live/b")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open := func(path string) *wsReader {
		c, _, err := r.dialWS(ctx, "ws", path, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		wr := &wsReader{ctx: ctx, c: c}
		readAtLeast(t, path, wr, 8<<10)
		return wr
	}
	drain := func(wr *wsReader) error {
		_, err := io.Copy(io.Discard, wr)
		return err
	}
	a, b := open("/live/a.flv"), open("/live/b.flv")
	stopA()
	if err := drain(a); websocket.CloseStatus(err) != websocket.StatusNormalClosure || !strings.Contains(err.Error(), "stream ended") {
		t.Errorf("stream ended: %v, want close 1000 \"stream ended\"", err)
	}
	r.stopSrv()
	if err := drain(b); websocket.CloseStatus(err) != websocket.StatusGoingAway || !strings.Contains(err.Error(), "edge shutting down") {
		t.Errorf("edge stopped: %v, want close 1001 \"edge shutting down\"", err)
	}
}

// The certificate files are replaced while the server runs: the next connection gets
// the new certificate; files that do not load leave the previous one in use.
func TestCertificateReload(t *testing.T) {
	dir := t.TempDir()
	first, err := harness.SelfSigned(dir, "edge", 1)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := NewCertReloader(first.CertFile, first.KeyFile, testLog())
	if err != nil {
		t.Fatal(err)
	}
	certs.CheckEvery = -1 // every handshake looks at the files
	ln, err := tls.Listen("tcp", "127.0.0.1:0", certs.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	serial := func() (int64, error) {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true}) // the serial is what is checked
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64(), nil
	}
	if s, err := serial(); err != nil || s != 1 {
		t.Fatalf("first certificate: serial %d, %v", s, err)
	}
	// A half-written rotation: garbage in the certificate file.
	if err := os.WriteFile(first.CertFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := serial(); err != nil || s != 1 {
		t.Fatalf("after a broken rotation: serial %d, %v; want the previous certificate", s, err)
	}
	if _, err := harness.SelfSigned(dir, "edge", 2); err != nil { // same files, new pair
		t.Fatal(err)
	}
	harness.CheckFor(t, 5*time.Second, "the new certificate", func() error {
		s, err := serial()
		if err == nil && s != 2 {
			err = fmt.Errorf("serial %d", s)
		}
		return err
	})
	if _, err := NewCertReloader(first.CertFile, dir+"/missing.key", testLog()); err == nil {
		t.Error("a missing key loaded")
	}
}

// countingConn counts the writes made on an accepted connection.
type countingConn struct {
	net.Conn
	writes, bytes *atomic.Int64
}

func (c countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	c.bytes.Add(int64(len(p)))
	return c.Conn.Write(p)
}

type countingListener struct {
	net.Listener
	writes, bytes atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, &l.writes, &l.bytes}, nil
}

// A WebSocket viewer costs at most two writes to its socket per message (per merge
// window): the frame header with the first 4 KiB, and the rest of the gathered window.
func TestWebSocketWritesPerWindow(t *testing.T) {
	r := newTransportRig(t, edge.Config{MergeWindow: 60 * time.Millisecond}, &Server{CORSOrigin: "*"})
	r.live(t, "live/a")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	hs := &http.Server{Handler: r.srv}
	go func() { _ = hs.Serve(cl) }()
	defer hs.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+ln.Addr().String()+"/live/a.flv", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	wr := &wsReader{ctx: ctx, c: c}
	readAtLeast(t, "join", wr, 8<<10)
	w0, m0 := cl.writes.Load(), wr.msgs
	b := readAtLeast(t, "windows", wr, 100<<10) // about 0.8 s of this stream's windows
	writes, msgs := cl.writes.Load()-w0, wr.msgs-m0
	t.Logf("%d bytes in %d messages took %d writes", len(b), msgs, writes)
	if msgs < 5 || writes > 2*int64(msgs)+1 {
		t.Errorf("%d messages took %d writes, want at most 2 per message", msgs, writes)
	}
}

// The viewer limits and the play/stop callbacks are the same on every transport: with
// one viewer allowed per stream, a second gets 503 over HTTP/1.1, HTTP/2 and
// WebSocket alike, and every allowed play is followed by its stop, with the bytes sent.
func TestLimitsAndCallbacksOnEveryTransport(t *testing.T) {
	var mu sync.Mutex
	var events []hook.Event
	platform := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev hook.Event
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &ev)
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	}))
	defer platform.Close()
	h, err := hook.New(hook.Config{URL: platform.URL, Node: "edge-1"}, testLog())
	if err != nil {
		t.Fatal(err)
	}
	hctx, hcancel := context.WithCancel(context.Background())
	defer hcancel()
	go h.Run(hctx)
	r := newTransportRig(t, edge.Config{MaxViewersPerStream: 1}, &Server{CORSOrigin: "*", Hook: h})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type viewer struct {
		body io.Closer
		err  error
		code int
	}
	openHTTP := func(c client) func() viewer {
		return func() viewer {
			resp, err := c.c.Get(r.url(c.scheme, "/live/one.flv"))
			if err != nil {
				return viewer{err: err}
			}
			if resp.StatusCode != 200 {
				resp.Body.Close()
				return viewer{code: resp.StatusCode}
			}
			readAtLeast(t, c.name, resp.Body, 8<<10)
			return viewer{body: resp.Body, code: 200}
		}
	}
	cs := r.clients()
	opens := map[string]func() viewer{"http/1.1": openHTTP(cs[0]), "h2": openHTTP(cs[3]), "ws": func() viewer {
		c, resp, err := r.dialWS(ctx, "ws", "/live/one.flv", nil)
		if err != nil {
			if resp != nil {
				return viewer{code: resp.StatusCode}
			}
			return viewer{err: err}
		}
		readAtLeast(t, "ws", &wsReader{ctx: ctx, c: c}, 8<<10)
		return viewer{body: closerFunc(func() error { return c.CloseNow() }), code: 200}
	}}
	r.live(t, "live/one")
	for _, name := range []string{"http/1.1", "h2", "ws"} {
		mu.Lock()
		events = nil
		mu.Unlock()
		first := opens[name]()
		if first.code != 200 {
			t.Fatalf("%s: first viewer: %d %v", name, first.code, first.err)
		}
		if second := opens[name](); second.code != http.StatusServiceUnavailable {
			t.Errorf("%s: second viewer of a stream limited to one: %d %v, want 503", name, second.code, second.err)
		}
		first.body.Close()
		harness.Until(t, 10*time.Second, name+": the first viewer's stop", func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, ev := range events {
				if ev.Action == hook.Stop && ev.Bytes != nil && *ev.Bytes >= 8<<10 {
					return true
				}
			}
			return false
		})
		// The next transport's first viewer must find the slot free.
		harness.Until(t, 10*time.Second, name+": the slot to free", func() bool { return r.srv.Hub.(*edge.Hub).Viewers() == 0 })
		mu.Lock()
		plays := 0
		for _, ev := range events {
			if ev.Action == hook.Play {
				plays++
			}
		}
		mu.Unlock()
		if plays != 2 {
			t.Errorf("%s: %d play callbacks, want 2 (the second viewer is asked before the limit refuses it)", name, plays)
		}
	}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// WebSocket keepalive: a viewer that answers pings keeps playing across many ping
// intervals; one that stops reading (so answers no ping) is closed within about the
// write timeout, not left to fill its socket.
func TestWebSocketPingKeepalive(t *testing.T) {
	r := newTransportRig(t, edge.Config{}, &Server{CORSOrigin: "*", PingEvery: 100 * time.Millisecond, WriteTimeout: time.Second})
	r.live(t, "live/a")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	alive, _, err := r.dialWS(ctx, "ws", "/live/a.flv", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer alive.CloseNow()
	mute, _, err := r.dialWS(ctx, "ws", "/live/a.flv", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer mute.CloseNow()
	wr := &wsReader{ctx: ctx, c: alive}
	readAtLeast(t, "alive", wr, 8<<10)
	// The mute viewer reads nothing more; the live one reads for 3 s (30 pings).
	start := time.Now()
	for time.Since(start) < 3*time.Second {
		readAtLeast(t, "alive", wr, 4<<10)
	}
	// Its connection was closed by the edge: a read drains what was buffered, then ends.
	_, err = io.Copy(io.Discard, &wsReader{ctx: ctx, c: mute})
	if ctx.Err() != nil {
		t.Fatalf("the viewer that answers no ping is still connected after %v", time.Since(start))
	}
	t.Logf("mute viewer ended after %v: %v", time.Since(start), err)
	harness.Until(t, 5*time.Second, "one viewer left on the edge (the one that answers)", func() bool {
		return r.srv.Hub.(*edge.Hub).Viewers() == 1
	})
}
