package h2

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/flvcdn/flvcdn/test/harness"
)

// serveH2C starts an HTTP/1.1 + h2c server on loopback with h served by s.
func serveH2C(t *testing.T, s *Server, h http.Handler) string {
	t.Helper()
	hs := &http.Server{Handler: h, Protocols: new(http.Protocols)}
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	if s.Log == nil {
		s.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	Configure(hs, s)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() {
		_ = hs.Close()
		s.Close()
		s.Wait()
	})
	return ln.Addr().String()
}

// rawClient speaks HTTP/2 frame by frame (prior knowledge), to check what a library
// client would hide: windows, resets, GOAWAY.
type rawClient struct {
	t   *testing.T
	nc  net.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	buf bytes.Buffer
}

func dialRaw(t *testing.T, addr string, settings ...http2.Setting) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
	c := &rawClient{t: t, nc: nc, fr: http2.NewFramer(nc, nc)}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.buf)
	if _, err := io.WriteString(nc, clientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return c
}

// get opens stream id with a GET of path.
func (c *rawClient) get(id uint32, path string) {
	c.t.Helper()
	c.buf.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "test"}, {":path", path}} {
		_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.buf.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		c.t.Fatal(err)
	}
}

// next reads frames until one matches (settings, pings and window updates of the
// server are skipped unless asked for).
func (c *rawClient) next(match func(http2.Frame) bool) http2.Frame {
	c.t.Helper()
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("reading frames: %v", err)
		}
		if match(f) {
			return f
		}
	}
}

func TestFlowControlHoldsDataToTheWindow(t *testing.T) {
	const size = 50_000
	body := bytes.Repeat([]byte("0123456789"), size/10)
	addr := serveH2C(t, &Server{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// As the play path writes a window: slices, one call.
		_ = w.(interface{ WriteBuffers(net.Buffers) error }).WriteBuffers(net.Buffers{body[:7000], body[7000:]})
	}))
	const window = 1000
	c := dialRaw(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: window})
	c.get(1, "/")
	// The connection window stays 65535: only the stream's limits the server.
	var got []byte
	credit := int64(window)
	for ended := false; !ended; {
		f := c.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok })
		d := f.(*http2.DataFrame)
		credit -= int64(len(d.Data()))
		if credit < 0 {
			t.Fatalf("the server sent %d bytes past the stream's window", -credit)
		}
		got = append(got, d.Data()...)
		ended = d.StreamEnded()
		if credit == 0 && !ended { // give the window back in steps of various sizes
			inc := uint32(1 + len(got)%3000)
			credit += int64(inc)
			if err := c.fr.WriteWindowUpdate(1, inc); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !bytes.Equal(got, body) {
		t.Fatalf("got %d bytes, not the %d written", len(got), len(body))
	}
}

func TestClientResetCancelsTheRequestAndStreamsCountUntilHandlersReturn(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	canceled := make(chan uint32, 4)
	addr := serveH2C(t, &Server{MaxStreams: 2}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/quick" {
			return
		}
		<-r.Context().Done()
		id, _ := strconv.Atoi(r.URL.Query().Get("id"))
		canceled <- uint32(id)
		<-release // a handler that takes its time to return
	}))
	t.Cleanup(unblock) // before the server's cleanup, which waits for handlers
	c := dialRaw(t, addr)
	c.get(1, "/slow?id=1")
	c.get(3, "/slow?id=3")
	for _, id := range []uint32{1, 3} {
		if err := c.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		select {
		case id := <-canceled:
			if id != 1 && id != 3 {
				t.Fatalf("canceled request %d", id)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("RST_STREAM did not cancel the request's context")
		}
	}
	// Both streams are reset, but their handlers still run: no room for a third
	// (resetting streams must not let a client run more handlers, CVE-2023-44487).
	c.get(5, "/quick")
	f := c.next(func(f http2.Frame) bool { return f.Header().StreamID == 5 })
	if rst, ok := f.(*http2.RSTStreamFrame); !ok || rst.ErrCode != http2.ErrCodeRefusedStream {
		t.Fatalf("third stream got %v, want RST_STREAM REFUSED_STREAM", f)
	}
	unblock()
	// Once the handlers return there is room again.
	deadline := time.Now().Add(5 * time.Second)
	for id := uint32(7); ; id += 2 {
		c.get(id, "/quick")
		f := c.next(func(f http2.Frame) bool { return f.Header().StreamID == id })
		if h, ok := f.(*http2.MetaHeadersFrame); ok {
			if s := h.PseudoValue("status"); s != "200" {
				t.Fatalf("status %s", s)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("streams still refused after the handlers returned")
		}
	}
}

func TestHandlerPanicResetsOnlyItsStream(t *testing.T) {
	addr := serveH2C(t, &Server{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic("handler bug")
		}
		_, _ = io.WriteString(w, "fine")
	}))
	c := dialRaw(t, addr)
	c.get(1, "/panic")
	f := c.next(func(f http2.Frame) bool { return f.Header().StreamID == 1 })
	if rst, ok := f.(*http2.RSTStreamFrame); !ok || rst.ErrCode != http2.ErrCodeInternal {
		t.Fatalf("panicking handler's stream got %v, want RST_STREAM INTERNAL_ERROR", f)
	}
	c.get(3, "/ok")
	f = c.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok && f.Header().StreamID == 3 })
	if d := f.(*http2.DataFrame); string(d.Data()) != "fine" || !d.StreamEnded() {
		t.Fatalf("the same connection then served %q", d.Data())
	}
}

func TestShutdownLetsRunningStreamsFinish(t *testing.T) {
	s := &Server{}
	finish := make(chan struct{})
	started := make(chan struct{})
	addr := serveH2C(t, s, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-finish
		_, _ = io.WriteString(w, "last words")
	}))
	var once sync.Once
	unblock := func() { once.Do(func() { close(finish) }) }
	t.Cleanup(unblock)
	c := dialRaw(t, addr)
	c.get(1, "/")
	<-started
	s.Shutdown()
	ga := c.next(func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame)
	if ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 1 {
		t.Fatalf("GOAWAY %v last stream %d, want NO_ERROR and 1", ga.ErrCode, ga.LastStreamID)
	}
	unblock()
	d := c.next(func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
	if string(d.Data()) != "last words" || !d.StreamEnded() {
		t.Fatalf("running stream after GOAWAY got %q", d.Data())
	}
	if _, err := c.fr.ReadFrame(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open after its last stream: %v", err)
	}
	done := make(chan struct{})
	go func() { s.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return after the last connection closed")
	}
}

func TestStalledReaderTimesOut(t *testing.T) {
	errc := make(chan error, 1)
	addr := serveH2C(t, &Server{WriteTimeout: 300 * time.Millisecond}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := w.Write(make([]byte, 100_000)) // more than the 65535-byte windows
		errc <- err
	}))
	c := dialRaw(t, addr)
	c.get(1, "/")
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("write to a client that gives no window: %v, want a deadline error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("write to a client that gives no window never returned")
	}
}

// TestLibraryClients: Go's HTTP/2 client over h2c: many requests on one
// connection, request bodies past the windows, HEAD, large headers.
func TestLibraryClients(t *testing.T) {
	addr := serveH2C(t, &Server{MaxHeaderBytes: 8 << 10}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			http.Error(w, "not HTTP/2", http.StatusBadRequest)
			return
		}
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Body", fmt.Sprintf("%d %x", n, h.Sum(nil)))
		_, _ = io.WriteString(w, strings.Repeat("x", 10_000))
	}))
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	payload := bytes.Repeat([]byte{7}, 300_000)
	sum := sha256.Sum256(payload)
	for i := range 5 {
		resp, err := cl.Post("http://"+addr+"/up", "application/octet-stream", bytes.NewReader(payload))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("%d %x", len(payload), sum); resp.Header.Get("X-Body") != want || len(b) != 10_000 || resp.Proto != "HTTP/2.0" {
			t.Fatalf("POST %d: %s body %q, %d bytes back", i, resp.Proto, resp.Header.Get("X-Body"), len(b))
		}
	}
	resp, err := cl.Head("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != 10_000 {
		t.Fatalf("HEAD: %d, content-length %d", resp.StatusCode, resp.ContentLength)
	}
	// Go's client will not send more than the advertised header list size, so a
	// frame-level client does.
	c := dialRaw(t, addr)
	c.buf.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "test"}, {":path", "/"}, {"x-big", strings.Repeat("b", 5<<10)}, {"x-bigger", strings.Repeat("b", 5<<10)}} {
		_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.buf.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	h, ok := c.next(func(f http2.Frame) bool { return f.Header().StreamID == 1 }).(*http2.MetaHeadersFrame)
	if !ok || h.PseudoValue("status") != "431" {
		t.Fatalf("header list over MaxHeaderBytes: %v, want 431", h)
	}
}

// TestH2Spec runs h2spec, the HTTP/2 conformance suite (github.com/summerwind/h2spec,
// a tool of this module), against the server over TLS, as browsers reach it.
func TestH2Spec(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	cert, err := harness.SelfSigned(t.TempDir(), "h2spec", 1)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(cert.CertFile, cert.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "h2spec")
	}), TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}}}
	Configure(hs, s)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = hs.ServeTLS(ln, "", "") }()
	defer func() { _ = hs.Close(); s.Close(); s.Wait() }()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "tool", "h2spec", "-t", "-k", "-h", "127.0.0.1", "-p", port, "-o", "5").CombinedOutput()
	sum := regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`).FindSubmatch(out)
	if sum == nil {
		t.Fatalf("h2spec: %v\n%s", err, out)
	}
	t.Logf("h2spec: %s", sum[0])
	if string(sum[4]) != "0" || string(sum[3]) != "0" || err != nil {
		t.Fatalf("h2spec: %v\n%s", err, out[bytes.Index(out, []byte("Failures")):])
	}
}
