package h2

import (
	"encoding/binary"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// smallWrites is how much a response keeps from small Writes before it sends them
// as a frame (pages, metrics); a Write that does not fit goes out as it is.
const smallWrites = 4 << 10

// responseWriter is a stream's http.ResponseWriter, used by its handler goroutine only.
type responseWriter struct {
	st         *stream
	head       bool // a HEAD request: the body is not sent
	header     http.Header
	status     int
	sentHeader bool
	buf        []byte
	headBytes  int64 // what a HEAD handler wrote
	deadline   time.Time
	err        error
}

func (w *responseWriter) Header() http.Header { return w.header }

func (w *responseWriter) WriteHeader(code int) {
	if w.sentHeader || w.status != 0 || code < 200 { // informational answers are not sent
		return
	}
	w.status = code
}

// noBody reports whether the response may not carry a body.
func (w *responseWriter) noBody() bool {
	return w.head || w.status == http.StatusNoContent || w.status == http.StatusNotModified
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody() {
		if w.head {
			w.headBytes += int64(len(p))
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if len(w.buf)+len(p) <= smallWrites {
		w.buf = append(w.buf, p...)
		return len(p), nil
	}
	if err := w.WriteBuffers(net.Buffers{p}); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteBuffers sends bufs as DATA frames, after what earlier Writes left buffered,
// in one write to the socket per flow-control grant: writev of the frame headers and
// the slices themselves on h2c, one gather under TLS. bufs' slices are not kept or
// changed after it returns; bufs itself is consumed. It is how a window of shared
// tags reaches an HTTP/2 viewer.
func (w *responseWriter) WriteBuffers(bufs net.Buffers) error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return w.err
	}
	if w.noBody() {
		return nil
	}
	if err := w.sendHeader(false); err != nil {
		return err
	}
	if len(w.buf) > 0 {
		bufs = append(net.Buffers{w.buf}, bufs...)
	}
	err := w.st.writeData(bufs, false, w.deadline)
	w.buf = w.buf[:0]
	if err != nil {
		w.err = err
	}
	return err
}

func (w *responseWriter) Flush() { _ = w.FlushError() }

// FlushError sends the header and whatever small Writes are buffered.
func (w *responseWriter) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return w.err
	}
	if err := w.sendHeader(false); err != nil {
		return err
	}
	if len(w.buf) == 0 {
		return nil
	}
	return w.WriteBuffers(nil)
}

// SetWriteDeadline bounds the writes of this response (http.ResponseController).
func (w *responseWriter) SetWriteDeadline(t time.Time) error {
	w.deadline = t
	return nil
}

// end finishes the response when the handler returns: the header if it was not sent
// (with a content-length when the whole body is known), the rest of the body and
// END_STREAM.
func (w *responseWriter) end() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return w.err
	}
	if !w.sentHeader {
		// The whole body is known: say how long it is (for HEAD, as net/http does,
		// only when the handler wrote the body it would have sent).
		if _, ok := w.header["Content-Length"]; !ok {
			if !w.noBody() {
				w.header.Set("Content-Length", strconv.Itoa(len(w.buf)))
			} else if w.headBytes > 0 {
				w.header.Set("Content-Length", strconv.FormatInt(w.headBytes, 10))
			}
		}
		if len(w.buf) == 0 || w.noBody() {
			return w.sendHeader(true)
		}
		if err := w.sendHeader(false); err != nil {
			return err
		}
	}
	var bufs net.Buffers
	if len(w.buf) > 0 {
		bufs = net.Buffers{w.buf}
	}
	return w.st.writeData(bufs, true, w.deadline)
}

// hopHeaders are not sent in HTTP/2 (RFC 9113, 8.2.2).
var hopHeaders = map[string]bool{"Connection": true, "Keep-Alive": true, "Proxy-Connection": true,
	"Transfer-Encoding": true, "Upgrade": true, "Trailer": true}

// sendHeader sends the response's HEADERS frame once.
func (w *responseWriter) sendHeader(end bool) error {
	if w.sentHeader {
		return nil
	}
	w.sentHeader = true
	h := w.header
	if _, ok := h["Content-Type"]; !ok && len(w.buf) > 0 && !w.noBody() {
		h.Set("Content-Type", http.DetectContentType(w.buf))
	}
	if _, ok := h["Date"]; !ok {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	c := w.st.c
	c.mu.Lock()
	maxFrame := int(c.maxFrame)
	c.mu.Unlock()
	err := c.writeFrame(func() error {
		c.encBuf = c.encBuf[:0]
		_ = c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(w.status)})
		for k, vs := range h {
			if hopHeaders[k] {
				continue
			}
			name := strings.ToLower(k)
			for _, v := range vs {
				_ = c.enc.WriteField(hpack.HeaderField{Name: name, Value: v})
			}
		}
		block := c.encBuf
		first := block[:min(len(block), maxFrame)]
		block = block[len(first):]
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: w.st.id, BlockFragment: first,
			EndStream: end, EndHeaders: len(block) == 0}); err != nil {
			return err
		}
		for len(block) > 0 {
			part := block[:min(len(block), maxFrame)]
			block = block[len(part):]
			if err := c.fr.WriteContinuation(w.st.id, len(block) == 0, part); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		w.err = err
	}
	return err
}

// writeData sends bufs as DATA frames as the flow-control windows allow, END_STREAM
// on the last when end is set.
func (st *stream) writeData(bufs net.Buffers, end bool, deadline time.Time) error {
	total := int64(0)
	for _, b := range bufs {
		total += int64(len(b))
	}
	if total == 0 {
		if !end {
			return nil
		}
		return st.c.writeDATA(st, &bufs, 0, true, deadline)
	}
	for total > 0 {
		n, err := st.takeWindow(total, deadline)
		if err != nil {
			return err
		}
		total -= n
		if err := st.c.writeDATA(st, &bufs, n, end && total == 0, deadline); err != nil {
			return err
		}
	}
	return nil
}

// takeWindow waits until both windows have room and takes up to want bytes of it.
func (st *stream) takeWindow(want int64, deadline time.Time) (int64, error) {
	c := st.c
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		c.mu.Lock()
		if c.streams[st.id] != st {
			c.mu.Unlock()
			return 0, errStreamClosed
		}
		if n := min(want, c.sendWin, st.sendWin); n > 0 {
			c.sendWin -= n
			st.sendWin -= n
			c.mu.Unlock()
			return n, nil
		}
		changed := c.changed
		c.mu.Unlock()
		if timer == nil {
			if deadline.IsZero() {
				deadline = time.Now().Add(c.srv.writeTimeout())
			}
			timer = time.NewTimer(time.Until(deadline))
		}
		select {
		case <-changed:
		case <-st.ctx.Done():
			return 0, errStreamClosed
		case <-timer.C:
			return 0, os.ErrDeadlineExceeded // a client that gives no window is a stalled reader
		}
	}
}

// gatherPools hold the buffers a TLS connection's DATA frames are gathered into, by
// size class: 16, 32 and 64 KiB. A write of more goes out in 64 KiB gathers.
var gatherPools [3]sync.Pool

// writeDATA writes n bytes of bufs (consumed) as DATA frames of at most dataFrame
// bytes, with END_STREAM on the last if end.
func (c *conn) writeDATA(st *stream, bufs *net.Buffers, n int64, end bool, deadline time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.broken != nil {
		return c.broken
	}
	c.renewDeadline(deadline)
	frames := int((n + dataFrame - 1) / dataFrame)
	if frames == 0 {
		frames = 1 // an empty END_STREAM frame
	}
	if cap(c.headBuf) < frames*frameHeader {
		c.headBuf = make([]byte, frames*frameHeader)
	}
	heads := c.headBuf[:frames*frameHeader]
	var err error
	if c.plain {
		iov := c.iov[:0]
		left := n
		for i := range frames {
			m := min(left, dataFrame)
			left -= m
			h := heads[i*frameHeader : (i+1)*frameHeader]
			putHeader(h, uint32(m), st.id, end && left == 0)
			iov = append(iov, h)
			iov = take(iov, bufs, m)
		}
		err = writev(c.nc, iov)
		c.iov = keep(iov, 128)
	} else {
		err = c.gatherWrite(st, bufs, n, frames, heads, end)
	}
	if cap(c.headBuf) > 16*frameHeader {
		c.headBuf = nil // grown by a join burst
	}
	if err != nil {
		c.breakConn(err)
		return c.broken
	}
	return nil
}

// writev writes iov in writev calls of at most iovChunk slices: the runtime keeps,
// per socket, an iovec array as long as the longest writev, and a join burst of
// hundreds of tags would leave one that size behind on every connection.
func writev(nc net.Conn, iov net.Buffers) error {
	const iovChunk = 64
	for len(iov) > 0 {
		part := iov[:min(len(iov), iovChunk)]
		iov = iov[len(part):]
		if _, err := part.WriteTo(nc); err != nil {
			return err
		}
	}
	return nil
}

// keep returns iov emptied for reuse, its references to tags dropped, or nil when
// it grew past most.
func keep(iov net.Buffers, most int) net.Buffers {
	if cap(iov) > most {
		return nil
	}
	clear(iov[:cap(iov)])
	return iov[:0]
}

// gatherWrite copies frames into pooled buffers and writes each buffer once.
func (c *conn) gatherWrite(st *stream, bufs *net.Buffers, n int64, frames int, heads []byte, end bool) error {
	size := int(n) + frames*frameHeader
	class := 0
	for class < len(gatherPools)-1 && 16<<10<<class < size {
		class++
	}
	bp, _ := gatherPools[class].Get().(*[]byte)
	if bp == nil {
		b := make([]byte, 0, 16<<10<<class)
		bp = &b
	}
	defer gatherPools[class].Put(bp)
	buf := (*bp)[:0]
	left := n
	for i := range frames {
		m := min(left, dataFrame)
		left -= m
		if cap(buf)-len(buf) < frameHeader+int(m) {
			if _, err := c.nc.Write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
		h := heads[i*frameHeader : (i+1)*frameHeader]
		putHeader(h, uint32(m), st.id, end && left == 0)
		buf = append(buf, h...)
		for m > 0 {
			b := (*bufs)[0]
			k := min(int64(len(b)), m)
			buf = append(buf, b[:k]...)
			m -= k
			if k == int64(len(b)) {
				*bufs = (*bufs)[1:]
			} else {
				(*bufs)[0] = b[k:]
			}
		}
	}
	_, err := c.nc.Write(buf)
	return err
}

// take appends to iov the first m bytes of bufs and consumes them from bufs.
func take(iov net.Buffers, bufs *net.Buffers, m int64) net.Buffers {
	for m > 0 {
		b := (*bufs)[0]
		if int64(len(b)) <= m {
			iov = append(iov, b)
			m -= int64(len(b))
			*bufs = (*bufs)[1:]
			continue
		}
		iov = append(iov, b[:m])
		(*bufs)[0] = b[m:]
		m = 0
	}
	return iov
}

// putHeader writes a DATA frame header.
func putHeader(h []byte, length, id uint32, end bool) {
	h[0], h[1], h[2] = byte(length>>16), byte(length>>8), byte(length)
	h[3] = byte(http2.FrameData)
	h[4] = 0
	if end {
		h[4] = byte(http2.FlagDataEndStream)
	}
	binary.BigEndian.PutUint32(h[5:], id&(1<<31-1))
}
