// Package h2 serves the edge's HTTP/2 connections, over TLS (ALPN "h2") and as h2c
// with prior knowledge, for net/http handlers. It owns the connection: frame reading,
// flow control, HPACK and the write of every frame. It exists for the play path: a
// response writer here also takes a window of shared tag slices (WriteBuffers) and
// writes it as DATA frames from the handler's goroutine, in one write to the socket
// when the flow-control windows hold it: writev of the frame headers and the slices
// themselves on h2c, no copy; under TLS, which has no writev, one gather into a
// pooled buffer (one per 64 KiB). net/http's own HTTP/2 server copies every write
// into its frame buffer and writes frames from goroutines of its own.
//
// Frames are parsed and built by golang.org/x/net/http2's Framer and hpack, except
// the 9-byte headers of DATA frames, which are written beside the data. It never
// pushes, ignores priorities, and does not offer extended CONNECT (WebSocket over
// HTTP/2): browsers open WebSockets over HTTP/1.1 instead.
package h2

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Server holds the settings and the live connections. The zero value is usable.
type Server struct {
	// MaxStreams is how many requests a connection may have running at once
	// (SETTINGS_MAX_CONCURRENT_STREAMS); 0 means 100. A stream counts until its
	// handler returns, so resetting streams does not make room for more handlers.
	MaxStreams uint32
	// MaxHeaderBytes bounds a request's decoded header list; 0 means 16 KiB. A bigger
	// list is answered 431.
	MaxHeaderBytes int
	// WriteTimeout is how long a write to the socket may take when the handler set
	// no deadline; 0 means 10s. A write that times out ends the connection: a frame
	// may have been half written.
	WriteTimeout time.Duration
	// IdleTimeout closes a connection that has had no stream this long; 0 means 1 min.
	IdleTimeout time.Duration
	// Log gets connection errors at debug level and handler panics at error level.
	Log *slog.Logger

	mu      sync.Mutex
	conns   map[*conn]struct{}
	closing bool
	wg      sync.WaitGroup
}

// Configure makes hs serve HTTP/2 through s: over TLS when ALPN picks "h2", and as
// h2c with prior knowledge when hs.Protocols allows unencrypted HTTP/2. hs.Shutdown
// sends GOAWAY on every connection (running requests go on; the connection closes
// when the last ends). Call it before hs serves.
func Configure(hs *http.Server, s *Server) {
	if hs.TLSNextProto == nil {
		hs.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	if hs.MaxHeaderBytes > 0 && s.MaxHeaderBytes == 0 {
		s.MaxHeaderBytes = hs.MaxHeaderBytes
	}
	if hs.IdleTimeout > 0 && s.IdleTimeout == 0 {
		s.IdleTimeout = hs.IdleTimeout
	}
	hs.TLSNextProto["h2"] = func(_ *http.Server, tc *tls.Conn, h http.Handler) {
		s.serve(baseContext(h), tc, h, false)
	}
	// net/http has read the client preface of an h2c connection already, and hands
	// the connection over wrapped in a *tls.Conn that only carries it.
	hs.TLSNextProto["unencrypted_http2"] = func(_ *http.Server, tc *tls.Conn, h http.Handler) {
		u, ok := tc.NetConn().(interface{ UnencryptedNetConn() net.Conn })
		if !ok {
			s.logger().Error("h2c: net/http handed over a connection of an unknown kind")
			return
		}
		s.serve(baseContext(h), u.UnencryptedNetConn(), h, true)
	}
	hs.RegisterOnShutdown(s.Shutdown)
}

// baseContext is the connection's context that net/http gives its handler, with the
// server and local address in it.
func baseContext(h http.Handler) context.Context {
	if b, ok := h.(interface{ BaseContext() context.Context }); ok {
		return b.BaseContext()
	}
	return context.Background()
}

// Shutdown sends GOAWAY on every connection and refuses new streams; a connection
// closes when its last request ends. It does not wait: see Wait.
func (s *Server) Shutdown() {
	s.mu.Lock()
	s.closing = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.goAway(http2.ErrCodeNo, nil)
	}
}

// Close closes every connection at once and refuses new ones; their handlers see
// their requests' contexts end. It does not wait: see Wait.
func (s *Server) Close() {
	s.mu.Lock()
	s.closing = true
	for c := range s.conns {
		_ = c.nc.Close()
	}
	s.mu.Unlock()
}

// Wait blocks until every connection has closed and its handlers have returned.
func (s *Server) Wait() { s.wg.Wait() }

// Stop sends GOAWAY, gives the connections until ctx ends to close after their last
// response, closes the rest, and waits for all.
func (s *Server) Stop(ctx context.Context) {
	s.Shutdown()
	done := make(chan struct{})
	go func() { // ends with Wait, which Close below guarantees
		s.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.Close()
		<-done
	}
}

func (s *Server) logger() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Server) maxStreams() uint32 {
	if s.MaxStreams == 0 {
		return 100
	}
	return s.MaxStreams
}

func (s *Server) maxHeaderBytes() uint32 {
	if s.MaxHeaderBytes <= 0 {
		return 16 << 10
	}
	return uint32(s.MaxHeaderBytes)
}

func (s *Server) writeTimeout() time.Duration {
	if s.WriteTimeout <= 0 {
		return 10 * time.Second
	}
	return s.WriteTimeout
}

func (s *Server) idleTimeout() time.Duration {
	if s.IdleTimeout <= 0 {
		return time.Minute
	}
	return s.IdleTimeout
}

// Frame and window sizes. A DATA frame carries at most dataFrame bytes so that with
// its 9-byte header it fills one 16 KiB TLS record exactly; windows are the
// protocol's defaults, which this server never changes for what it receives.
const (
	frameHeader   = 9
	dataFrame     = 16<<10 - frameHeader
	defaultWindow = 65535
	maxWindow     = 1<<31 - 1
	prefaceWait   = 10 * time.Second
)

const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// serve runs one connection until it ends, then waits for its handlers.
func (s *Server) serve(ctx context.Context, nc net.Conn, h http.Handler, sawPreface bool) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	s.wg.Add(1)
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(ctx)
	c := &conn{
		srv:      s,
		nc:       nc,
		handler:  h,
		ctx:      ctx,
		cancel:   cancel,
		streams:  map[uint32]*stream{},
		sendWin:  defaultWindow,
		peerWin:  defaultWindow,
		maxFrame: 16 << 10,
		changed:  make(chan struct{}),
	}
	_, c.plain = nc.(*net.TCPConn)
	if tc, ok := nc.(*tls.Conn); ok {
		st := tc.ConnectionState()
		c.tls = &st
	}
	if s.conns == nil {
		s.conns = map[*conn]struct{}{}
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	c.run(sawPreface)
}

// conn is one HTTP/2 connection. Its read loop (run) owns the Framer's reading side
// and the request side of every stream; frames are written under wmu by whichever
// goroutine has one to send; mu guards the stream table and the flow-control windows.
type conn struct {
	srv      *Server
	nc       net.Conn
	plain    bool // a *net.TCPConn: DATA goes out with writev
	tls      *tls.ConnectionState
	handler  http.Handler
	ctx      context.Context
	cancel   context.CancelFunc
	fr       *http2.Framer
	handlers sync.WaitGroup

	wmu      sync.Mutex
	enc      *hpack.Encoder
	encBuf   []byte
	headBuf  []byte // frame headers of a DATA write (writev)
	iov      net.Buffers
	deadline time.Time
	broken   error // a write failed: the connection is over

	mu        sync.Mutex
	streams   map[uint32]*stream
	running   uint32 // handlers running
	maxID     uint32 // highest client stream id seen
	sendWin   int64  // connection send window
	peerWin   int64  // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	maxFrame  uint32 // the peer's SETTINGS_MAX_FRAME_SIZE
	changed   chan struct{}
	goingAway bool
	over      bool // the read loop has ended
	idle      *time.Timer
	refused   int
}

// logger is the server's, with the client's address: made when something is logged,
// not kept per connection.
func (c *conn) logger() *slog.Logger {
	return c.srv.logger().With("remote", c.nc.RemoteAddr().String())
}

// wake tells writers waiting for window that it changed; c.mu is held.
func (c *conn) wake() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *conn) run(sawPreface bool) {
	// On the way out: cancel the requests, close the socket (a write blocked in it
	// fails), then wait for the handlers.
	defer c.handlers.Wait()
	defer c.nc.Close()
	defer c.cancel()
	br := bufio.NewReaderSize(c.nc, 4<<10)
	c.fr = http2.NewFramer(c.nc, br)
	dec := hpack.NewDecoder(4096, nil)
	dec.SetMaxStringLength(int(c.srv.maxHeaderBytes()))
	c.fr.ReadMetaHeaders = dec
	c.fr.SetMaxReadFrameSize(16 << 10) // SETTINGS_MAX_FRAME_SIZE is left at its default
	c.fr.MaxHeaderListSize = c.srv.maxHeaderBytes()
	c.enc = hpack.NewEncoder(&encWriter{c})

	_ = c.nc.SetReadDeadline(time.Now().Add(prefaceWait))
	if !sawPreface {
		var p [len(clientPreface)]byte
		if _, err := io.ReadFull(br, p[:]); err != nil || string(p[:]) != clientPreface {
			c.logger().Debug("h2: bad client preface", "err", err)
			return
		}
	}
	if err := c.writeFrame(func() error {
		return c.fr.WriteSettings(
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.srv.maxStreams()},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: c.srv.maxHeaderBytes()},
		)
	}); err != nil {
		return
	}
	c.mu.Lock()
	c.idle = time.AfterFunc(c.srv.idleTimeout(), c.idleTimeout)
	c.mu.Unlock()
	defer func() { // the handlers still running learn that the connection is over
		c.mu.Lock()
		c.over = true
		c.idle.Stop()
		for _, st := range c.streams {
			st.body.fail(errStreamClosed)
		}
		c.wake()
		c.mu.Unlock()
	}()
	first := true
	for {
		f, err := c.fr.ReadFrame()
		if first {
			_ = c.nc.SetReadDeadline(time.Time{})
		}
		if err == nil && first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				err = connErr{http2.ErrCodeProtocol, "first frame is not SETTINGS"}
			}
			first = false
		}
		if err == nil {
			err = c.handle(f)
		}
		var se http2.StreamError
		if errors.As(err, &se) { // from the Framer or from handle
			c.mu.Lock()
			if se.StreamID%2 == 1 && se.StreamID > c.maxID { // a malformed HEADERS still opens (and closes) its stream
				c.maxID = se.StreamID
			}
			c.mu.Unlock()
			c.resetStream(se.StreamID, se.Code)
			continue
		}
		if err != nil {
			c.end(err)
			return
		}
	}
}

// end ends the connection after err: with GOAWAY and its code when err is a
// connection error, else (the client left, a write failed) just logged.
func (c *conn) end(err error) {
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		c.goAway(http2.ErrCode(ce), err)
	case errors.Is(err, http2.ErrFrameTooLarge):
		c.goAway(http2.ErrCodeFrameSize, err)
	default:
		c.logger().Debug("h2: connection ended", "err", err)
	}
}

// connErr is a connection error with the reason logged beside its code.
type connErr struct {
	code http2.ErrCode
	why  string
}

func (e connErr) Error() string { return fmt.Sprintf("%v: %s", e.code, e.why) }
func (e connErr) As(t any) bool {
	if p, ok := t.(*http2.ConnectionError); ok {
		*p = http2.ConnectionError(e.code)
		return true
	}
	return false
}

// handle acts on one frame. A StreamError resets its stream; any other error ends
// the connection (with GOAWAY when it is a connection error).
func (c *conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		if err := f.ForeachSetting(c.setting); err != nil {
			return err
		}
		return c.writeFrame(c.fr.WriteSettingsAck)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		return c.writeFrame(func() error { return c.fr.WritePing(true, f.Data) })
	case *http2.WindowUpdateFrame:
		return c.windowUpdate(f.StreamID, int64(f.Increment))
	case *http2.MetaHeadersFrame:
		return c.headers(f)
	case *http2.DataFrame:
		return c.data(f)
	case *http2.RSTStreamFrame:
		c.mu.Lock()
		idle := f.StreamID > c.maxID
		st := c.streams[f.StreamID]
		c.mu.Unlock()
		if idle {
			return connErr{http2.ErrCodeProtocol, "RST_STREAM on an idle stream"}
		}
		if st != nil {
			st.cancel()
			c.closeStream(st)
		}
		return nil
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID { // reset without opening it: PRIORITY may name an idle stream
			c.resetStream(f.StreamID, http2.ErrCodeProtocol)
		}
		return nil
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.goingAway = true
		done := len(c.streams) == 0
		c.mu.Unlock()
		if done {
			return io.EOF
		}
		return nil
	case *http2.PushPromiseFrame:
		return connErr{http2.ErrCodeProtocol, "PUSH_PROMISE from a client"}
	case *http2.ContinuationFrame:
		return connErr{http2.ErrCodeProtocol, "stray CONTINUATION"}
	}
	return nil // unknown frame types are ignored
}

func (c *conn) setting(s http2.Setting) error {
	if err := s.Valid(); err != nil {
		return err
	}
	switch s.ID {
	case http2.SettingInitialWindowSize:
		c.mu.Lock()
		delta := int64(s.Val) - c.peerWin
		c.peerWin = int64(s.Val)
		for _, st := range c.streams {
			st.sendWin += delta
			if st.sendWin > maxWindow {
				c.mu.Unlock()
				return connErr{http2.ErrCodeFlowControl, "a stream window grew past 2^31-1"}
			}
		}
		c.wake()
		c.mu.Unlock()
	case http2.SettingMaxFrameSize:
		c.mu.Lock()
		c.maxFrame = s.Val
		c.mu.Unlock()
	case http2.SettingHeaderTableSize:
		c.wmu.Lock()
		c.enc.SetMaxDynamicTableSizeLimit(s.Val)
		c.wmu.Unlock()
	}
	return nil
}

func (c *conn) windowUpdate(id uint32, inc int64) error {
	c.mu.Lock()
	var err error
	overflow := false // of a stream's window: a stream error
	switch st := c.streams[id]; {
	case id == 0:
		c.sendWin += inc
		if c.sendWin > maxWindow {
			err = connErr{http2.ErrCodeFlowControl, "connection window grew past 2^31-1"}
		}
	case id > c.maxID:
		err = connErr{http2.ErrCodeProtocol, "WINDOW_UPDATE on an idle stream"}
	case st != nil: // else closed: ignored
		st.sendWin += inc
		overflow = st.sendWin > maxWindow
	}
	c.wake()
	c.mu.Unlock()
	if overflow {
		c.resetStream(id, http2.ErrCodeFlowControl)
	}
	return err
}

// idleTimeout closes a connection that still has no stream.
func (c *conn) idleTimeout() {
	c.mu.Lock()
	idle := len(c.streams) == 0 && c.running == 0
	if !idle {
		c.idle.Reset(c.srv.idleTimeout())
	}
	c.mu.Unlock()
	if idle {
		c.goAway(http2.ErrCodeNo, nil)
	}
}

// goAway sends GOAWAY. With an error the connection closes at once; without, no new
// stream is taken and it closes when the last handler returns.
func (c *conn) goAway(code http2.ErrCode, err error) {
	c.mu.Lock()
	last := c.maxID
	c.goingAway = true
	done := c.running == 0
	c.mu.Unlock()
	_ = c.writeFrame(func() error { return c.fr.WriteGoAway(last, code, nil) })
	if err != nil {
		c.logger().Debug("h2: connection error", "code", code, "err", err)
	}
	if err != nil || done {
		_ = c.nc.Close()
	}
}

// resetStream sends RST_STREAM and forgets the stream.
func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	st := c.streams[id]
	c.mu.Unlock()
	if st != nil {
		st.cancel()
		c.closeStream(st)
	}
	_ = c.writeFrame(func() error { return c.fr.WriteRSTStream(id, code) })
}

// closeStream takes a stream out of the table (its handler may still run).
func (c *conn) closeStream(st *stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.streams[st.id] == st {
		delete(c.streams, st.id)
		st.body.fail(errStreamClosed)
		c.wake()
	}
}

var errStreamClosed = errors.New("h2: stream closed")

// writeFrame runs one of the Framer's writes under the write lock.
func (c *conn) writeFrame(write func() error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.broken != nil {
		return c.broken
	}
	c.renewDeadline(time.Time{})
	if err := write(); err != nil {
		c.breakConn(err)
		return err
	}
	return nil
}

// renewDeadline sets the socket's write deadline for the next write; wmu is held.
// Without a deadline of the handler's, the server's timeout moves about once a second.
func (c *conn) renewDeadline(want time.Time) {
	if want.IsZero() {
		t := c.srv.writeTimeout()
		if time.Until(c.deadline) >= t-time.Second {
			return
		}
		want = time.Now().Add(t)
	}
	if !want.Equal(c.deadline) {
		c.deadline = want
		_ = c.nc.SetWriteDeadline(want)
	}
}

// breakConn ends the connection after a failed write; wmu is held.
func (c *conn) breakConn(err error) {
	if c.broken == nil {
		c.broken = fmt.Errorf("h2: write: %w", err)
		c.logger().Debug("h2: write failed", "err", err)
		_ = c.nc.Close()
	}
}

// encWriter appends HPACK output to the connection's header block buffer.
type encWriter struct{ c *conn }

func (w *encWriter) Write(p []byte) (int, error) {
	w.c.encBuf = append(w.c.encBuf, p...)
	return len(p), nil
}
