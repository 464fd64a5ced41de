// Package httpflv serves live streams as HTTP-FLV: a never-ending response made of
// the FLV header and then tags. On HTTP/1.1 it takes over the connection and writes
// each viewer's queued tags as one chunk in one writev. The same URL also serves
// WebSocket-FLV (ws.go) and HTTP/2 (h2.go), over TLS with a reloaded certificate
// (tls.go). This is the one place where viewer bytes are written; it never parses
// tags, and copies them only where a transport requires it (tls.go, h2.go, ws.go).
package httpflv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/hook"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// Hub is what the server needs from the edge.
type Hub interface {
	Watch(ctx context.Context, name stream.Name) (*edge.Viewer, error)
	Exists(ctx context.Context, name stream.Name) (bool, error)
}

// Server serves GET/HEAD/OPTIONS /{app}/{stream}.flv.
type Server struct {
	Hub Hub
	Log *slog.Logger
	// CORSOrigin is sent as Access-Control-Allow-Origin; empty disables CORS.
	CORSOrigin string
	// WriteTimeout bounds every write to a viewer. Default 10s.
	WriteTimeout time.Duration
	// SendBuffer sets SO_SNDBUF on viewer sockets. Left to autotuning, Linux grows
	// it to megabytes, which hides a slow viewer's backlog from the edge's lag policy
	// (and costs kernel memory per viewer). 0 = kernel default.
	SendBuffer int
	// BaseContext bounds viewer writers, which outlive their HTTP handler (the
	// handler returns after taking the connection over). Default: never ends;
	// viewers then end with their stream.
	BaseContext context.Context
	// PlaySecret, when set, requires signed URLs: ?expires=UNIX&sig=HEX (stream.SignPlay).
	PlaySecret string
	// Hook, when set, is asked before each play (after the signature check: both
	// must pass; a denial is 403 with its reason) and told when the viewer ends.
	Hook *hook.Client
	// PingEvery is how often WebSocket viewers are pinged (ws.go). Default 20s.
	PingEvery time.Duration

	writers  sync.WaitGroup
	mu       sync.Mutex
	waiting  bool          // Wait has begun: no writer may start (see goWriter)
	written  atomic.Uint64 // bytes written to viewers, for BytesOut
	shardMu  sync.Mutex
	shards   map[shardKey]*shard // writers of hijacked plain-TCP viewers (writers.go)
	nextSlot int
}

// BytesOut returns the FLV bytes this server has written to viewers.
func (s *Server) BytesOut() uint64 { return s.written.Load() }

var (
	bytesOut = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_edge_bytes_out_total", Help: "FLV bytes written to viewers."})
	playDenied = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_edge_play_denied_total", Help: "Playback requests refused for a missing, forged or expired signature."})
	draining = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "flvcdn_edge_viewers_draining", Help: "HTTP/1.1 viewers whose socket did not take their last batch, written by a goroutine of their own until it does."})
	drains = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_edge_drains_total", Help: "Batches an HTTP/1.1 viewer's socket did not take at once, handed to a goroutine of that viewer's own (see flvcdn_edge_viewers_draining)."})
)

// ParsePath turns "/app/stream.flv" into a stream name.
func ParsePath(p string) (stream.Name, error) {
	rest, ok := strings.CutSuffix(strings.TrimPrefix(p, "/"), ".flv")
	if !ok {
		return "", fmt.Errorf("path %q: want /app/stream.flv", clip(p))
	}
	return stream.ParseName(rest)
}

func clip(s string) string {
	if len(s) > 100 {
		return s[:100] + "..."
	}
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	if s.CORSOrigin != "" {
		h.Set("Access-Control-Allow-Origin", s.CORSOrigin)
		h.Set("Access-Control-Expose-Headers", "Content-Type")
	}
	switch r.Method {
	case http.MethodOptions:
		if s.CORSOrigin != "" {
			h.Set("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
			h.Set("Access-Control-Allow-Headers", "Range, Icy-MetaData, Content-Type")
			h.Set("Access-Control-Max-Age", "86400")
		}
		h.Set("Allow", "GET, HEAD, OPTIONS")
		w.WriteHeader(http.StatusNoContent)
		return
	case http.MethodGet, http.MethodHead:
	default:
		h.Set("Allow", "GET, HEAD, OPTIONS")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	name, err := ParsePath(r.URL.Path)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	track, err := parseVTrack(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if s.PlaySecret != "" {
		if err := stream.VerifyPlay(s.PlaySecret, r.URL.Path, r.URL.Query(), time.Now()); err != nil {
			playDenied.Inc()
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
	}
	if r.Method == http.MethodHead {
		ok, err := s.Hub.Exists(r.Context(), name)
		switch {
		case err != nil:
			http.Error(w, "registry unavailable", http.StatusServiceUnavailable)
		case !ok:
			http.Error(w, "stream not found: "+string(name), http.StatusNotFound)
		default:
			setFLVHeaders(h)
			w.WriteHeader(http.StatusOK)
		}
		return
	}
	pl, ok := s.allow(w, r, name)
	if !ok {
		return
	}
	// Range: bytes=0- and Icy-MetaData: 1 (sent by ffmpeg) are tolerated: a live
	// stream has no ranges, so they get the plain 200 stream.
	v, err := s.watch(r.Context(), name, track)
	if err != nil {
		s.refuse(w, name, err)
		s.stopped(pl, 0)
		return
	}
	if isWebSocket(r) { // WebSocket-FLV: same path, same checks, see ws.go
		s.serveWS(w, r, v, name, pl)
		return
	}
	setFLVHeaders(h)
	if r.ProtoAtLeast(1, 1) && r.ProtoMajor == 1 {
		if hj, ok := w.(http.Hijacker); ok {
			s.hijack(h.Clone(), hj, v, name, pl)
			return
		}
	}
	defer v.Close()
	s.stopped(pl, s.serveGathered(r, w, v, name)) // HTTP/2 and HTTP/1.0, see h2.go
}

// play is one viewer's play, as its callbacks see it.
type play struct {
	ev    hook.Event
	start time.Time
}

// allow asks the play hook (when there is one); a denial is answered 403 with its reason.
func (s *Server) allow(w http.ResponseWriter, r *http.Request, name stream.Name) (play, bool) {
	if s.Hook == nil {
		return play{}, true
	}
	var id [8]byte
	_, _ = rand.Read(id[:]) // crypto/rand never fails on Linux
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	pl := play{ev: hook.Event{Action: hook.Play, App: name.App(), Stream: name.Stream(), ClientIP: host,
		Query: r.URL.RawQuery, Session: hex.EncodeToString(id[:])}}
	d, _ := s.Hook.Call(r.Context(), pl.ev)
	if !d.Allow {
		if r.Context().Err() == nil {
			http.Error(w, d.Reason, http.StatusForbidden)
		}
		return play{}, false
	}
	pl.start = time.Now()
	return pl, true
}

// stopped tells the hook that an allowed play ended, with the FLV bytes it was sent.
func (s *Server) stopped(pl play, bytes int64) {
	if s.Hook != nil && !pl.start.IsZero() {
		s.Hook.Notify(pl.ev.Ended(hook.Stop, time.Since(pl.start), uint64(bytes)))
	}
}

// hijack takes the connection over from net/http and hands it to its stream's
// writer shard (writers.go), so that the handler returns and net/http's
// per-connection state (buffers, request, the serve goroutine's stack: ~25 KB) is
// freed. The shards belong to the Server: a viewer ends with the stream, its
// socket, or BaseContext, and Wait joins them.
func (s *Server) hijack(hdr http.Header, hj http.Hijacker, v *edge.Viewer, name stream.Name, pl play) {
	conn, _, err := hj.Hijack() // the buffered reader/writer are not used again
	if err != nil {
		v.Close()
		s.stopped(pl, 0)
		s.Log.Warn("hijack failed", "err", err)
		return
	}
	if tc := tcpConn(conn); tc != nil && s.SendBuffer > 0 {
		_ = tc.SetWriteBuffer(s.SendBuffer)
	}
	plays.WithLabelValues("http/1.1").Inc()
	if _, plain := conn.(*net.TCPConn); plain {
		// Plain TCP: the stream's shared writers (writers.go), non-blocking writev.
		if err := s.startWriter(conn, hdr, v, name, pl); err != nil {
			_ = conn.Close()
			v.Close()
			s.stopped(pl, 0)
			s.Log.Warn("viewer writer", "err", err)
		}
		return
	}
	// TLS has no writev and no non-blocking write: one goroutine per viewer gathers
	// each window into one Write (see viewerConn.gather).
	ctx := s.BaseContext
	if ctx == nil {
		ctx = context.Background()
	}
	if !s.goWriter(func() {
		defer v.Close()
		defer conn.Close()
		n := s.serveConn(ctx, &viewerConn{Conn: conn, timeout: s.writeTimeout(), gather: true}, hdr, v, name)
		s.stopped(pl, n)
	}) {
		conn.Close()
		v.Close()
		s.stopped(pl, 0)
	}
}

// goWriter runs f as a viewer writer that Wait joins, unless Wait has begun (a
// request taken over while the edge stops): then it reports false and runs nothing.
func (s *Server) goWriter(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waiting {
		return false
	}
	s.writers.Add(1)
	go func() {
		defer s.writers.Done()
		f()
	}()
	return true
}

// Wait blocks until every viewer writer has finished (after BaseContext ends or
// the streams stop). No writer starts after it is called.
func (s *Server) Wait() {
	s.mu.Lock()
	s.waiting = true
	s.mu.Unlock()
	s.writers.Wait()
}

func setFLVHeaders(h http.Header) {
	h.Set("Content-Type", "video/x-flv")
	h.Set("Cache-Control", "no-cache, no-store")
	h.Set("X-Content-Type-Options", "nosniff")
}

func (s *Server) refuse(w http.ResponseWriter, name stream.Name, err error) {
	switch {
	case errors.Is(err, edge.ErrNotFound):
		http.Error(w, "stream not found: "+string(name), http.StatusNotFound)
	case errors.Is(err, edge.ErrNoTrack):
		http.Error(w, err.Error(), http.StatusNotFound)
	case errors.Is(err, edge.ErrJoinTimeout):
		http.Error(w, "stream did not start in time: "+string(name), http.StatusGatewayTimeout)
	case errors.Is(err, edge.ErrTooManyViewers):
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	case errors.Is(err, edge.ErrShuttingDown):
		http.Error(w, "edge is shutting down", http.StatusServiceUnavailable)
	case errors.Is(err, context.Canceled):
	default:
		s.Log.Warn("viewer refused", "stream", name, "err", err)
		http.Error(w, "stream unavailable", http.StatusServiceUnavailable)
	}
}

// serveConn writes a TLS viewer's response from its own goroutine: per window the
// chunk size line, the shared tag slices and CRLF, gathered into one Write. It
// returns the FLV bytes written.
func (s *Server) serveConn(ctx context.Context, conn *viewerConn, hdr http.Header, v *edge.Viewer, name stream.Name) (written int64) {
	var head strings.Builder
	head.WriteString("HTTP/1.1 200 OK\r\n")
	hdr.Set("Transfer-Encoding", "chunked")
	hdr.Set("Connection", "close")
	_ = hdr.Write(&head)
	head.WriteString("\r\n")
	if err := conn.write(net.Buffers{[]byte(head.String())}); err != nil {
		return 0
	}
	backing := make(net.Buffers, 0, 64)
	var size [20]byte
	crlf := []byte("\r\n")
	for {
		bufs, err := v.Next(ctx, backing[:1])
		if len(bufs) > 1 {
			n := 0
			for _, b := range bufs[1:] {
				n += len(b)
			}
			line := strconv.AppendInt(size[:0], int64(n), 16)
			line = append(line, '\r', '\n')
			bufs[0] = line
			bufs = append(bufs, crlf)
			if cap(bufs) > cap(backing) {
				backing = bufs[:0]
			}
			if werr := conn.write(bufs); werr != nil {
				s.dropped(name, werr)
				return written
			}
			bytesOut.Add(float64(n))
			written += int64(n)
			s.written.Add(uint64(n))
		}
		if err != nil {
			s.finish(conn, name, err)
			return written
		}
	}
}

// viewerConn is a hijacked viewer connection with its write deadline.
type viewerConn struct {
	net.Conn
	timeout time.Duration
	until   time.Time
	gather  bool // one Write of the gathered slices (TLS has no writev), see tls.go
}

// write sends bufs in one writev when the socket takes them. The timeout is how
// long the viewer may accept nothing: a slow reader that makes progress is not cut
// off here (the lag policy in package edge deals with it). The deadline is moved
// about once a second rather than on every write: it costs a timer update.
func (c *viewerConn) write(bufs net.Buffers) error {
	if c.gather && len(bufs) > 1 {
		b := gather(bufs)
		defer release(b)
		bufs = net.Buffers{*b}
	}
	for {
		if time.Until(c.until) < c.timeout-time.Second {
			c.until = time.Now().Add(c.timeout)
			_ = c.SetWriteDeadline(c.until)
		}
		n, err := bufs.WriteTo(c.Conn) // consumes what was written
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() || n == 0 {
			return err
		}
		c.until = time.Time{} // progress was made: a fresh deadline
	}
}

func (s *Server) writeTimeout() time.Duration {
	if s.WriteTimeout <= 0 {
		return 10 * time.Second
	}
	return s.WriteTimeout
}

func (s *Server) dropped(name stream.Name, err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		edge.CountDrop("write-timeout")
		s.Log.Info("viewer dropped: write timeout", "stream", name)
		return
	}
	s.Log.Debug("viewer left", "stream", name, "err", err)
}

// finish ends the response: a clean terminating chunk when the stream ended.
func (s *Server) finish(conn *viewerConn, name stream.Name, err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) { // stream over, or edge shutting down
		_ = conn.write(net.Buffers{[]byte("0\r\n\r\n")})
		return
	}
	if errors.Is(err, edge.ErrTooSlow) {
		s.Log.Info("viewer dropped: too slow", "stream", name)
	}
}
