package h2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/net/http2"
)

// stream is one request and its response. The read loop creates it and feeds its
// body; its handler goroutine writes the response.
type stream struct {
	c      *conn
	id     uint32
	ctx    context.Context
	cancel context.CancelFunc
	body   *body

	// Under c.mu.
	sendWin      int64
	recvWin      int64
	remoteClosed bool // the client sent END_STREAM
}

// headers opens a stream (or takes a request's trailers).
func (c *conn) headers(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return connErr{http2.ErrCodeProtocol, "even stream id from a client"}
	}
	if f.HasPriority() && f.Priority.StreamDep == id {
		return http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol} // a stream cannot depend on itself
	}
	c.mu.Lock()
	if st := c.streams[id]; st != nil {
		closed := st.remoteClosed
		st.remoteClosed = true
		c.mu.Unlock()
		switch {
		case closed:
			c.resetStream(id, http2.ErrCodeStreamClosed)
		case !f.StreamEnded():
			c.resetStream(id, http2.ErrCodeProtocol) // trailers must end the stream
		default:
			st.body.end() // trailers are not passed on
		}
		return nil
	}
	if id <= c.maxID {
		c.mu.Unlock()
		return connErr{http2.ErrCodeStreamClosed, "HEADERS on a closed stream"}
	}
	c.maxID = id
	if c.goingAway {
		c.mu.Unlock()
		return nil // after GOAWAY: not processed, as its last stream id told the client
	}
	if c.running >= c.srv.maxStreams() {
		c.refused++
		many := c.refused > 4*int(c.srv.maxStreams())
		c.mu.Unlock()
		if many {
			return connErr{http2.ErrCodeEnhanceYourCalm, "too many refused streams"}
		}
		c.resetStream(id, http2.ErrCodeRefusedStream)
		return nil
	}
	c.mu.Unlock()

	req, status, err := c.request(f)
	if err != nil {
		c.logger().Debug("h2: malformed request", "stream", id, "err", err)
		c.resetStream(id, http2.ErrCodeProtocol)
		return nil
	}
	ctx, cancel := context.WithCancel(c.ctx)
	st := &stream{c: c, id: id, ctx: ctx, cancel: cancel, recvWin: defaultWindow, remoteClosed: f.StreamEnded()}
	st.body = &body{st: st, declared: req.ContentLength}
	st.body.cond.L = &st.body.mu
	if f.StreamEnded() {
		st.body.err = io.EOF
		req.Body = http.NoBody
	} else {
		req.Body = st.body
	}
	c.mu.Lock()
	st.sendWin = c.peerWin
	c.streams[id] = st
	c.running++
	c.idle.Stop()
	c.mu.Unlock()
	c.handlers.Add(1)
	go st.serve(req.WithContext(ctx), status)
	return nil
}

// request builds the request of a HEADERS frame. A nonzero status is an answer the
// stream gets instead of its handler (431: the header list was too big).
func (c *conn) request(f *http2.MetaHeadersFrame) (*http.Request, int, error) {
	var method, scheme, authority, path string
	for _, hf := range f.PseudoFields() {
		var p *string
		switch hf.Name {
		case ":method":
			p = &method
		case ":scheme":
			p = &scheme
		case ":authority":
			p = &authority
		case ":path":
			p = &path
		default:
			return nil, 0, fmt.Errorf("pseudo-header %q in a request", hf.Name)
		}
		if *p != "" {
			return nil, 0, fmt.Errorf("pseudo-header %q twice", hf.Name)
		}
		*p = hf.Value
	}
	if method == "" || scheme == "" || path == "" {
		return nil, 0, fmt.Errorf("request without :method, :scheme or :path (CONNECT is not served)")
	}
	hdr := make(http.Header, len(f.Fields))
	for _, hf := range f.RegularFields() {
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
			return nil, 0, fmt.Errorf("connection-specific header %q", hf.Name)
		case "te":
			if hf.Value != "trailers" {
				return nil, 0, fmt.Errorf("te: %q", hf.Value)
			}
		}
		k := textproto.CanonicalMIMEHeaderKey(hf.Name)
		hdr[k] = append(hdr[k], hf.Value)
	}
	if cookies := hdr["Cookie"]; len(cookies) > 1 {
		hdr["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	if authority == "" {
		authority = hdr.Get("Host")
	}
	var u *url.URL
	var err error
	if path == "*" && method == http.MethodOptions {
		u = &url.URL{Path: "*"}
	} else if u, err = url.ParseRequestURI(path); err != nil {
		return nil, 0, fmt.Errorf(":path: %w", err)
	}
	req := &http.Request{
		Method:        method,
		URL:           u,
		Proto:         "HTTP/2.0",
		ProtoMajor:    2,
		Header:        hdr,
		Host:          authority,
		RemoteAddr:    c.nc.RemoteAddr().String(),
		RequestURI:    path,
		TLS:           c.tls,
		ContentLength: -1,
	}
	if f.StreamEnded() {
		req.ContentLength = 0
	} else if cl := hdr.Get("Content-Length"); cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 {
			return nil, 0, fmt.Errorf("content-length %q", cl)
		}
		req.ContentLength = n
	}
	status := 0
	if f.Truncated {
		status = http.StatusRequestHeaderFieldsTooLarge
	}
	return req, status, nil
}

// serve runs the handler (or answers status) and ends the stream.
func (st *stream) serve(req *http.Request, status int) {
	c := st.c
	w := &responseWriter{st: st, head: req.Method == http.MethodHead, header: http.Header{}}
	defer c.handlers.Done()
	defer st.done(w)
	if status != 0 {
		http.Error(w, http.StatusText(status), status)
		return
	}
	c.handler.ServeHTTP(w, req)
}

// done ends the response (or resets the stream after a panic) and frees the slot.
func (st *stream) done(w *responseWriter) {
	c := st.c
	if p := recover(); p != nil {
		if p != http.ErrAbortHandler {
			c.logger().Error("h2: handler panicked", "stream", st.id, "panic", p, "stack", string(debug.Stack()))
		}
		c.resetStream(st.id, http2.ErrCodeInternal)
	} else if err := w.end(); err == nil {
		c.mu.Lock()
		open := !st.remoteClosed && c.streams[st.id] == st
		c.mu.Unlock()
		if open { // the client still sends a body nobody reads: stop it
			_ = c.writeFrame(func() error { return c.fr.WriteRSTStream(st.id, http2.ErrCodeNo) })
		}
	}
	st.cancel()
	c.closeStream(st)
	c.mu.Lock()
	c.running--
	last := c.running == 0
	gone := last && c.goingAway
	if last && !gone && !c.over {
		c.idle.Reset(c.srv.idleTimeout())
	}
	c.mu.Unlock()
	if gone {
		_ = c.nc.Close()
	}
}

// data takes a DATA frame into its stream's body.
func (c *conn) data(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Header().Length) // padding counts against the windows too
	if n > 0 {
		// The connection's window is given back at once, so a body nobody reads
		// holds up only its own stream.
		if err := c.writeFrame(func() error { return c.fr.WriteWindowUpdate(0, uint32(n)) }); err != nil {
			return err
		}
	}
	c.mu.Lock()
	if id > c.maxID {
		c.mu.Unlock()
		return connErr{http2.ErrCodeProtocol, "DATA on an idle stream"}
	}
	st := c.streams[id]
	if st == nil || st.remoteClosed {
		c.mu.Unlock()
		c.resetStream(id, http2.ErrCodeStreamClosed)
		return nil
	}
	if n > st.recvWin {
		c.mu.Unlock()
		c.resetStream(id, http2.ErrCodeFlowControl)
		return nil
	}
	st.recvWin -= n
	if f.StreamEnded() {
		st.remoteClosed = true
	}
	c.mu.Unlock()
	if !st.body.write(f.Data(), int(n)-len(f.Data()), f.StreamEnded()) {
		c.resetStream(id, http2.ErrCodeProtocol) // more or less than its content-length
	}
	return nil
}

var errBodyClosed = errors.New("h2: read of a closed request body")

// body is a request body: what DATA frames brought and the handler has not read.
// Reading gives the stream's window back to the client.
type body struct {
	st       *stream
	mu       sync.Mutex
	cond     sync.Cond
	buf      []byte
	err      error // io.EOF at the end of the stream, or why it was cut
	got      int64
	declared int64 // content-length, or -1
	unacked  int64 // read but not yet given back
}

// write appends a frame's data; it reports false when the body outgrows or falls
// short of its content-length.
func (b *body) write(p []byte, pad int, end bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.got += int64(len(p))
	if b.declared >= 0 && (b.got > b.declared || end && b.got != b.declared) {
		return false
	}
	if b.err == nil {
		b.buf = append(b.buf, p...)
		b.unacked += int64(pad)
		if end {
			b.err = io.EOF
		}
		b.cond.Broadcast()
	}
	return true
}

// end marks the body complete (trailers arrived).
func (b *body) end() { b.fail(io.EOF) }

func (b *body) fail(err error) {
	b.mu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.cond.Broadcast()
	b.mu.Unlock()
}

func (b *body) Read(p []byte) (int, error) {
	b.mu.Lock()
	for len(b.buf) == 0 && b.err == nil {
		b.cond.Wait()
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	if len(b.buf) == 0 {
		b.buf = nil
	}
	b.unacked += int64(n)
	give := int64(0)
	if b.unacked >= 4<<10 || len(b.buf) == 0 && b.err == nil {
		give, b.unacked = b.unacked, 0
	}
	err := b.err
	b.mu.Unlock()
	if give > 0 {
		c := b.st.c
		c.mu.Lock()
		b.st.recvWin += give
		c.mu.Unlock()
		_ = c.writeFrame(func() error { return c.fr.WriteWindowUpdate(b.st.id, uint32(give)) })
	}
	if n > 0 {
		return n, nil
	}
	return 0, err
}

func (b *body) Close() error {
	b.fail(errBodyClosed)
	return nil
}
