package httpflv

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// HTTP/2 and HTTP/1.0 viewers cannot be taken over: the ResponseWriter frames the
// body (DATA frames, or a close-delimited body for HTTP/1.0).
//
// The edge serves HTTP/2 through package h2, whose ResponseWriter takes a window of
// slices itself (buffersWriter) and writes it as DATA frames: one socket write when
// the flow-control windows hold it (under TLS, one per 64 KiB gathered).
// Any other ResponseWriter (HTTP/1.0's, or net/http's own HTTP/2 server when a Server
// runs without h2.Configure) gets the window in few Writes (writePieces), then a
// Flush. Over net/http's HTTP/2 each Write is a hand-off to the connection's
// goroutine, and Write returns only once that goroutine has written the data (net/http
// keeps the slice until then, copying it a DATA frame at a time into its frame buffer
// and then through TLS). So:
//
//   - a window of one tag is written as it is, the shared slice itself;
//   - a window of at most wholeWindow bytes (most windows: 2.5 Mbit/s in 60 ms is
//     about 19 KB on average) is copied into one pooled buffer of its size class (see
//     gather);
//   - a bigger window (a keyframe's, a join burst) is written in parts: each tag of at
//     least pieceSize as it is, no copy of ours; smaller tags copied into a pooled
//     piece of pieceSize bytes, written when full and at the end of the window.
//
// Every Write carries at most pieceSize bytes (writeFrames): net/http makes a DATA
// frame of each (frames may be as big as the client allows, 16 KiB or more), and with
// its 9-byte header such a frame is exactly one TLS record of 16 KiB. A Write of more
// is cut into 16 KiB frames by net/http, each of which crypto/tls writes as two
// records, the second of 9 bytes, and two write(2).
//
// A viewer holds at most a buffer of wholeWindow bytes, only while net/http writes it,
// and buffers never grow. A viewer whose connection is slow sits in Write holding it.
// With every window gathered whole into 64 KiB buffers that grew to fit, as this code
// did before, each such viewer held one as big as its window and the pool's buffers
// grew to the largest window (a keyframe's): at 1,000 HTTP/2 viewers that was about
// 110 KB of heap per viewer (heap profile of the bench's edge).

// pieceSize is the most one Write carries (a DATA frame that fills a TLS record), and
// wholeWindow the biggest window writePieces gathers whole.
const (
	pieceSize   = 16<<10 - 9
	wholeWindow = 32 << 10
)

// piecePool holds the pieces small tags are copied into.
var piecePool = sync.Pool{New: func() any { b := make([]byte, 0, pieceSize); return &b }}

// The WebSocket and HTTPS/1.1 writers gather a whole window into one buffer instead,
// because they need it in one piece (one frame; one TLS write): see ws.go and tls.go.
// Those buffers come from pools by size class, powers of two from 16 KiB to 1 MiB,
// and the window's size is counted first, so a buffer is taken at the size it needs
// and never grows. (Taking 64 KiB buffers from one pool and appending, as before, grew
// a buffer on every window bigger than the one it got, a keyframe's: at 1,000
// WebSocket viewers the edge allocated about 620 MB of gather buffers in its first 70
// seconds, allocation profile; with size classes, 42 MB in its first two minutes, all
// of it still pooled.)

// minGather is the smallest size class; there are gatherClasses of them.
const (
	minGather     = 16 << 10
	gatherClasses = 7 // up to 1 MiB; a bigger window (a join burst) gets its own buffer
)

var gatherPools [gatherClasses]sync.Pool

// sizeClass returns the class of the smallest buffer that holds n bytes
// (gatherClasses or more: none).
func sizeClass(n int) int {
	c := 0
	for minGather<<c < n {
		c++
	}
	return c
}

// serveGathered writes the response through the ResponseWriter, a few Writes and one
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
		bufs, err = v.Next(ctx, reuse(bufs))
		if len(bufs) > 0 {
			// As in viewerConn.write, the deadline moves about once a second.
			if time.Until(until) < timeout-time.Second {
				until = time.Now().Add(timeout)
				_ = rc.SetWriteDeadline(until)
			}
			var n int
			var werr error
			if bw, ok := w.(buffersWriter); ok { // the edge's own HTTP/2 server (package h2)
				for _, b := range bufs {
					n += len(b)
				}
				werr = bw.WriteBuffers(bufs)
			} else {
				n, werr = writePieces(w, bufs)
				if werr == nil {
					werr = rc.Flush()
				}
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

// reuse empties a viewer's slice list for its next window: the references to the
// last window's tags are dropped (a list kept whole would hold a join burst's tags
// long after the ring let them go), and a list that a join burst grew past
// keptList is let go (at 24 bytes a slice, hundreds of them per viewer).
func reuse(bufs net.Buffers) net.Buffers {
	if cap(bufs) > keptList {
		return make(net.Buffers, 0, 64)
	}
	clear(bufs[:cap(bufs)])
	return bufs[:0]
}

const keptList = 256

// buffersWriter is a ResponseWriter that writes a window of slices itself, as DATA
// frames in one socket write (package h2): no gather of ours, no Flush.
type buffersWriter interface {
	WriteBuffers(net.Buffers) error
}

// writePieces writes bufs through w in few Writes (see pieceSize) and returns the
// bytes written.
func writePieces(w io.Writer, bufs net.Buffers) (int, error) {
	if len(bufs) == 1 {
		return writeFrames(w, bufs[0]) // shared and never written to, so net/http may keep it
	}
	size := 0
	for _, t := range bufs {
		size += len(t)
	}
	if size <= wholeWindow {
		b := gather(bufs)
		n, err := writeFrames(w, *b)
		if err == nil { // else net/http may still hold it: not reused
			release(b)
		}
		return n, err
	}
	bp := piecePool.Get().(*[]byte)
	piece, n := (*bp)[:0], 0
	put := func() error {
		k, err := w.Write(piece)
		n += k
		piece = piece[:0]
		return err
	}
	for _, t := range bufs {
		if len(t) >= pieceSize {
			if len(piece) > 0 {
				if err := put(); err != nil {
					return n, err // net/http may still hold the piece: not reused
				}
			}
			k, err := writeFrames(w, t) // shared and never written to, so net/http may keep it
			n += k
			if err != nil {
				return n, err
			}
			continue
		}
		for len(t) > 0 {
			k := copy(piece[len(piece):cap(piece)], t)
			piece, t = piece[:len(piece)+k], t[k:]
			if len(piece) == cap(piece) {
				if err := put(); err != nil {
					return n, err
				}
			}
		}
	}
	if len(piece) > 0 {
		if err := put(); err != nil {
			return n, err
		}
	}
	*bp = piece
	piecePool.Put(bp)
	return n, nil
}

// writeFrames writes b in Writes of at most pieceSize bytes.
func writeFrames(w io.Writer, b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		k, err := w.Write(b[:min(len(b), pieceSize)])
		n += k
		if err != nil {
			return n, err
		}
		b = b[k:]
	}
	return n, nil
}

// gather copies bufs into one buffer from the pools.
func gather(bufs net.Buffers) *[]byte {
	n := 0
	for _, t := range bufs {
		n += len(t)
	}
	var bp *[]byte
	if c := sizeClass(n); c < gatherClasses {
		bp, _ = gatherPools[c].Get().(*[]byte)
		if bp == nil {
			b := make([]byte, 0, minGather<<c)
			bp = &b
		}
	} else {
		b := make([]byte, 0, n)
		bp = &b
	}
	b := (*bp)[:0]
	for _, t := range bufs {
		b = append(b, t...)
	}
	*bp = b
	return bp
}

// release returns a buffer to its pool, unless it was one of its own size.
func release(bp *[]byte) {
	if c := sizeClass(cap(*bp)); c < gatherClasses && cap(*bp) == minGather<<c {
		*bp = (*bp)[:0]
		gatherPools[c].Put(bp)
	}
}
