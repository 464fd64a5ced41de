// Package httpflv serves live streams as HTTP-FLV: a never-ending response made of
// the FLV header and then tags. On HTTP/1.1 it takes over the connection and writes
// each viewer's queued tags as one chunk in one writev. This is the one place where
// viewer bytes are written; it never parses or copies tags.
package httpflv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
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

	writers  sync.WaitGroup
	written  atomic.Uint64 // bytes written to viewers, for BytesOut
	shardMu  sync.Mutex
	shards   map[shardKey]*shard // writers of hijacked viewers (writers.go)
	nextSlot int
}

// BytesOut returns the FLV bytes this server has written to viewers.
func (s *Server) BytesOut() uint64 { return s.written.Load() }

var (
	bytesOut = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_edge_bytes_out_total", Help: "FLV bytes written to viewers."})
	playDenied = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_edge_play_denied_total", Help: "Playback requests refused for a missing, forged or expired signature."})
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
	v, err := s.Hub.Watch(r.Context(), name)
	if err != nil {
		s.refuse(w, name, err)
		s.stopped(pl, 0)
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
	s.stopped(pl, s.serveFlushed(r, w, v, name))
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
	if tc, ok := conn.(*net.TCPConn); ok && s.SendBuffer > 0 {
		_ = tc.SetWriteBuffer(s.SendBuffer)
	}
	if err := s.startWriter(conn, hdr, v, name, pl); err != nil {
		_ = conn.Close()
		v.Close()
		s.stopped(pl, 0)
		s.Log.Warn("viewer writer", "err", err)
	}
}

// Wait blocks until every viewer writer has finished (after BaseContext ends or
// the streams stop).
func (s *Server) Wait() { s.writers.Wait() }

func setFLVHeaders(h http.Header) {
	h.Set("Content-Type", "video/x-flv")
	h.Set("Cache-Control", "no-cache, no-store")
	h.Set("X-Content-Type-Options", "nosniff")
}

func (s *Server) refuse(w http.ResponseWriter, name stream.Name, err error) {
	switch {
	case errors.Is(err, edge.ErrNotFound):
		http.Error(w, "stream not found: "+string(name), http.StatusNotFound)
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

// serveFlushed is the fallback for HTTP/1.0 and HTTP/2: the ResponseWriter frames it.
// It returns the FLV bytes written.
func (s *Server) serveFlushed(r *http.Request, w http.ResponseWriter, v *edge.Viewer, name stream.Name) (written int64) {
	rc := http.NewResponseController(w)
	w.WriteHeader(http.StatusOK)
	ctx := r.Context()
	var bufs net.Buffers
	for {
		var err error
		bufs, err = v.Next(ctx, bufs[:0])
		_ = rc.SetWriteDeadline(time.Now().Add(s.writeTimeout()))
		for _, b := range bufs {
			if _, werr := w.Write(b); werr != nil {
				s.dropped(name, werr)
				return written
			}
			bytesOut.Add(float64(len(b)))
			written += int64(len(b))
			s.written.Add(uint64(len(b)))
		}
		if ferr := rc.Flush(); ferr != nil {
			return written
		}
		if err != nil {
			return written
		}
	}
}
