package httpflv

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// HTTP/2 (and HTTP/1.0) viewers cannot be taken over: net/http's ResponseWriter frames
// the body (DATA frames, or a close-delimited body for HTTP/1.0). For those, a merge
// window's tags are gathered into one buffer and handed over in one Write, then
// flushed. Over HTTP/2 that is one data write per viewer per window: the handler's
// Write passes the buffer to the connection's frame writer, which splits it into
// DATA frames (at most the peer's frame size, within flow control) and copies them
// into the connection's write buffer. So each byte is copied twice per viewer here:
// once into the gather buffer and once by net/http into its frame buffer. Writing each
// tag on its own instead would cost a hand-off to the connection's goroutine per tag.
//
// Write returns once net/http has written the data, so the gather buffer goes back to
// a pool shared by every viewer: an idle viewer holds none. Under TLS, encryption
// copies once more, as it does for every transport.

// gatherPool holds the buffers windows are gathered into.
var gatherPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// maxPooled keeps the pool from holding on to the occasional huge join burst.
const maxPooled = 1 << 20

// serveGathered writes the response through the ResponseWriter, one Write and one
// Flush per merge window. It returns the FLV bytes written.
func (s *Server) serveGathered(r *http.Request, w http.ResponseWriter, v *edge.Viewer, name stream.Name) (written int64) {
	if r.ProtoMajor == 2 {
		plays.WithLabelValues("http/2").Inc()
	} else {
		plays.WithLabelValues("http/1.0").Inc()
	}
	rc := http.NewResponseController(w)
	w.WriteHeader(http.StatusOK)
	// The handler lives as long as the viewer: it ends with the request, or when the
	// edge stops (BaseContext), like the writers of taken-over connections.
	ctx := r.Context()
	if s.BaseContext != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		defer context.AfterFunc(s.BaseContext, cancel)()
	}
	timeout := s.writeTimeout()
	var until time.Time
	bufs := make(net.Buffers, 0, 64)
	for {
		var err error
		bufs, err = v.Next(ctx, bufs[:0])
		if len(bufs) > 0 {
			// As in viewerConn.write, the deadline moves about once a second.
			if time.Until(until) < timeout-time.Second {
				until = time.Now().Add(timeout)
				_ = rc.SetWriteDeadline(until)
			}
			n, werr := writeGathered(w, bufs)
			if werr == nil {
				werr = rc.Flush()
			}
			if werr != nil {
				s.dropped(name, werr)
				return written
			}
			bytesOut.Add(float64(n))
			written += int64(n)
			s.written.Add(uint64(n))
		}
		if err != nil {
			return written
		}
	}
}

// writeGathered copies bufs into a pooled buffer and writes it in one Write.
func writeGathered(w http.ResponseWriter, bufs net.Buffers) (int, error) {
	b := gather(bufs)
	n, err := w.Write(*b)
	// After a failed write net/http may still hold the slice (a reset HTTP/2 stream
	// returns before its queued data is dropped): that buffer is not reused.
	if err == nil {
		release(b)
	}
	return n, err
}

// gather copies bufs into one buffer from the pool.
func gather(bufs net.Buffers) *[]byte {
	bp := gatherPool.Get().(*[]byte)
	b := (*bp)[:0]
	for _, t := range bufs {
		b = append(b, t...)
	}
	*bp = b
	return bp
}

// release returns a buffer to the pool unless it grew past maxPooled.
func release(bp *[]byte) {
	if cap(*bp) <= maxPooled {
		*bp = (*bp)[:0]
		gatherPool.Put(bp)
	}
}
