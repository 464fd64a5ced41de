package httpflv

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// WebSocket-FLV: the same URL as HTTP-FLV, with an Upgrade. Every merge window's tags
// leave as one binary message; the messages concatenated are the FLV byte stream that
// an HTTP-FLV viewer gets as its body.
//
// The framing is github.com/coder/websocket's. The window's tags are gathered into
// one pooled buffer (one copy per viewer) and written as a single frame: the library
// puts the frame header and the first part of the payload into the 4 KiB
// bufio.Writer that net/http hands over with the hijacked connection (a second copy,
// of at most 4 KiB), flushes it, and writes the rest from the buffer itself: two
// write(2) per window instead of HTTP/1.1's one writev. Writing the message in parts
// instead (the library's message Writer, a frame per shared tag, no gather copy) was
// measured slower: it costs a frame header and often a write(2) per tag. At 1,000
// viewers (make bench, transport table, same host and hour) the edge used 0.48 ms
// per viewer-second that way and 0.32 ms gathered.

// wsPingEvery is how often a WebSocket viewer is pinged by default (Server.PingEvery);
// a viewer that does not answer within the write timeout is closed. Browsers answer
// pings without the page's help.
const wsPingEvery = 20 * time.Second

// Close codes and reasons a WebSocket viewer gets.
const (
	wsEnded    = websocket.StatusNormalClosure   // the stream ended
	wsShutdown = websocket.StatusGoingAway       // the edge is shutting down
	wsTooSlow  = websocket.StatusPolicyViolation // the viewer kept falling behind
)

// isWebSocket reports whether r asks to switch to WebSocket.
func isWebSocket(r *http.Request) bool {
	return r.ProtoMajor == 1 && headerHasToken(r.Header, "Connection", "upgrade") &&
		headerHasToken(r.Header, "Upgrade", "websocket")
}

func headerHasToken(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// wsOptions maps the CORS setting onto the WebSocket origin check, so that the pages
// allowed to fetch a stream are the pages allowed to open it as a WebSocket: "*" lets
// any origin in, an origin lets that one in (beside the edge's own), empty only the
// edge's own pages.
func (s *Server) wsOptions() *websocket.AcceptOptions {
	o := &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled}
	switch s.CORSOrigin {
	case "":
	case "*":
		o.InsecureSkipVerify = true
	default:
		if u, err := url.Parse(s.CORSOrigin); err == nil && u.Host != "" {
			o.OriginPatterns = []string{u.Host}
		}
	}
	return o
}

// capture is the ResponseWriter given to websocket.Accept: it keeps the hijacked
// connection so that the writer can set its deadlines and send buffer itself (the
// library's own timeouts cost a context per write).
type capture struct {
	http.ResponseWriter
	conn net.Conn
}

func (c *capture) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := c.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("connection cannot be taken over")
	}
	conn, rw, err := hj.Hijack()
	c.conn = conn
	return conn, rw, err
}

// serveWS upgrades the request and hands the connection to a writer goroutine that
// belongs to the Server, as hijack does for HTTP/1.1.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request, v *edge.Viewer, name stream.Name, pl play) {
	cw := &capture{ResponseWriter: w}
	c, err := websocket.Accept(cw, r, s.wsOptions())
	if err != nil { // Accept has answered the request
		v.Close()
		s.stopped(pl, 0)
		s.Log.Debug("websocket upgrade refused", "stream", name, "err", err)
		return
	}
	plays.WithLabelValues("ws").Inc()
	if tc := tcpConn(cw.conn); tc != nil && s.SendBuffer > 0 {
		_ = tc.SetWriteBuffer(s.SendBuffer)
	}
	ctx := s.BaseContext
	if ctx == nil {
		ctx = context.Background()
	}
	if !s.goWriter(func() {
		defer v.Close()
		n := s.writeWS(ctx, c, cw.conn, v, name)
		s.stopped(pl, n)
	}) {
		_ = c.Close(wsShutdown, "edge shutting down")
		v.Close()
		s.stopped(pl, 0)
	}
}

// writeWS sends the viewer's tags, one binary message per merge window, until the
// stream ends, the viewer goes or ctx ends; then it closes with a status and reason.
// It returns the FLV bytes written.
func (s *Server) writeWS(ctx context.Context, c *websocket.Conn, raw net.Conn, v *edge.Viewer, name stream.Name) (written int64) {
	// Reading answers the viewer's pings and close; gone ends when the viewer goes.
	// It is not derived from ctx: the library closes the socket when a read context
	// ends, and a shutdown must still send its close frame.
	gone := c.CloseRead(context.Background())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(gone, cancel)
	defer stop()
	vc := &viewerConn{Conn: raw, timeout: s.writeTimeout()}
	every := s.PingEvery
	if every <= 0 {
		every = wsPingEvery
	}
	pinged := time.Now()
	pings := make(chan error, 1)
	bufs := make(net.Buffers, 0, 64)
	for {
		var err error
		bufs, err = v.Next(ctx, reuse(bufs))
		if len(bufs) > 0 {
			n, werr := s.wsMessage(c, vc, bufs)
			written += n
			if werr != nil {
				s.dropped(name, werr)
				_ = c.CloseNow()
				return written
			}
		}
		if err != nil {
			s.closeWS(c, name, err)
			return written
		}
		select {
		case perr := <-pings:
			if perr != nil {
				s.Log.Info("websocket viewer dropped: no pong", "stream", name, "err", perr)
				_ = c.CloseNow()
				return written
			}
		default:
		}
		if time.Since(pinged) >= every {
			pinged = time.Now()
			go func() { // ends within the write timeout; its result is read above
				pctx, cancel := context.WithTimeout(ctx, s.writeTimeout())
				defer cancel()
				perr := c.Ping(pctx)
				if ctx.Err() != nil {
					perr = nil // the viewer left or the edge stops: reported elsewhere
				}
				select {
				case pings <- perr:
				default:
				}
			}()
		}
	}
}

// wsMessage writes bufs as one binary message in one frame. Deadlines are
// set on the raw connection (see viewerConn.write): a viewer that accepts nothing for
// the write timeout fails the write.
func (s *Server) wsMessage(c *websocket.Conn, vc *viewerConn, bufs net.Buffers) (int64, error) {
	if time.Until(vc.until) < vc.timeout-time.Second {
		vc.until = time.Now().Add(vc.timeout)
		_ = vc.SetWriteDeadline(vc.until)
	}
	// context.Background: no per-frame timer in the library; the deadline above bounds it.
	b := gather(bufs)
	n := int64(len(*b))
	err := c.Write(context.Background(), websocket.MessageBinary, *b)
	release(b)
	if err != nil {
		return 0, err
	}
	bytesOut.Add(float64(n))
	s.written.Add(uint64(n))
	return n, nil
}

// closeWS ends the WebSocket with the status and reason that match why the viewer's
// stream ended.
func (s *Server) closeWS(c *websocket.Conn, name stream.Name, err error) {
	switch {
	case errors.Is(err, io.EOF):
		_ = c.Close(wsEnded, "stream ended")
	case errors.Is(err, edge.ErrTooSlow):
		s.Log.Info("viewer dropped: too slow", "stream", name)
		_ = c.Close(wsTooSlow, "viewer too slow")
	case errors.Is(err, context.Canceled) && s.BaseContext != nil && s.BaseContext.Err() != nil:
		_ = c.Close(wsShutdown, "edge shutting down")
	default: // the viewer went (its read side ended), or the stream failed
		_ = c.CloseNow()
	}
}

// tcpConn returns the TCP connection under c (also under TLS), or nil.
func tcpConn(c net.Conn) *net.TCPConn {
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = tc.NetConn()
	}
	t, _ := c.(*net.TCPConn)
	return t
}
