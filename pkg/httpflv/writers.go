package httpflv

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// The bytes of hijacked HTTP/1.1 viewers are written by a few goroutines per
// stream, one per CPU ("shards"), not by one goroutine per viewer. At each wake-up
// of its stream a shard gives each of its viewers everything queued since that
// viewer's last write, as one HTTP chunk in one non-blocking writev. What a socket
// does not take is handed to a drain goroutine of that viewer's own, which writes it
// as fast as the socket takes it (waiting for writability in Go's netpoller) and
// then gives the viewer back to its shard. Until then the viewer gets nothing new:
// its cursor falls behind in the stream's ring, and at each wake-up the edge's lag
// rule (edge.Viewer.Behind) skips it to a keyframe or drops it. A viewer whose
// socket takes nothing for WriteTimeout is dropped.
//
// Why: per viewer this costs a small struct instead of a goroutine stack and the
// scheduling of one goroutine per viewer per window (measured with make bench: RSS
// and CPU per viewer; see README), and a full socket never parks a shard. A viewer
// pays for a goroutine only while its backlog is larger than its socket buffer (a
// join burst, a multi-megabyte keyframe, a slow reader). Waiting for the stream's
// next wake-up instead would drain a backlog one socket buffer per wake-up: a
// 3.4 MB keyframe took about 0.4 s to reach three loopback viewers that way, an
// audio gap a player hears (TestChaosTagLargerThanNATSMaxPayloadDeliveredIntact).

// shardKey names one shard: a stream actor's viewers, split by slot.
type shardKey struct {
	s    *edge.Stream
	slot int
}

// shard writes to its share of one stream's viewers.
type shard struct {
	srv   *Server
	key   shardKey
	kick  chan struct{} // a viewer was added
	added []*flvConn    // guarded by srv.shardMu
	conns []*flvConn    // the shard goroutine's own
	bufs  net.Buffers   // scratch for one viewer's batch
	vw    *vecWriter
	// FLV bytes written in this round, added to the edge's counters once per round,
	// so that the shards do not both add to the same shared counters at every write.
	counted int64
}

// flvConn is one hijacked viewer. The fields a shard reads at every write come
// first, so that they share the struct's first cache lines.
type flvConn struct {
	// draining is set while a drain goroutine owns pending (and drainErr): the
	// shard then touches neither. Cleared by that goroutine when it is done.
	draining atomic.Bool
	drainErr error
	v        *edge.Viewer
	raw      syscall.RawConn
	pending  net.Buffers // what the socket has not taken yet
	chunk    int64       // FLV bytes in pending's chunk, counted once it is all written
	written  int64       // FLV bytes written
	line     [20]byte    // pending chunk's size line
	end      error       // why the viewer ends, once known
	conn     net.Conn
	name     stream.Name
	pl       play
}

// maxRounds bounds how often one viewer is served in a row within one wake-up
// (a join burst larger than a batch takes several).
const maxRounds = 8

// startWriter hands a hijacked viewer to its stream's shard; the response head
// goes out as its first bytes.
func (s *Server) startWriter(conn net.Conn, hdr http.Header, v *edge.Viewer, name stream.Name, pl play) error {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return errors.New("hijacked connection has no file descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var head strings.Builder
	head.WriteString("HTTP/1.1 200 OK\r\n")
	hdr.Set("Transfer-Encoding", "chunked")
	hdr.Set("Connection", "close")
	_ = hdr.Write(&head)
	head.WriteString("\r\n")
	c := &flvConn{conn: conn, raw: raw, v: v, name: name, pl: pl, pending: net.Buffers{[]byte(head.String())}}

	ctx := s.BaseContext
	if ctx == nil {
		ctx = context.Background()
	}
	s.shardMu.Lock()
	if s.shards == nil {
		s.shards = map[shardKey]*shard{}
	}
	s.nextSlot++
	key := shardKey{v.Stream(), s.nextSlot % runtime.GOMAXPROCS(0)}
	sh := s.shards[key]
	if sh == nil {
		sh = &shard{srv: s, key: key, kick: make(chan struct{}, 1), vw: newVecWriter(false, 0)}
		if !s.goWriter(func() { sh.run(ctx) }) {
			s.shardMu.Unlock()
			return errors.New("edge is shutting down")
		}
		s.shards[key] = sh
	}
	sh.added = append(sh.added, c)
	s.shardMu.Unlock()
	select {
	case sh.kick <- struct{}{}:
	default:
	}
	return nil
}

// run serves the shard's viewers until it has none left, or ctx ends.
func (sh *shard) run(ctx context.Context) {
	for {
		s := sh.srv
		s.shardMu.Lock()
		sh.conns = append(sh.conns, sh.added...)
		clear(sh.added)
		sh.added = sh.added[:0]
		if len(sh.conns) == 0 {
			delete(s.shards, sh.key) // under shardMu: nobody can add to it any more
			s.shardMu.Unlock()
			return
		}
		s.shardMu.Unlock()

		// Taken before serving: a wake-up during the round is not missed.
		wake := sh.conns[0].v.Wake()
		kept := sh.conns[:0]
		for _, c := range sh.conns {
			if sh.serve(c) {
				sh.finish(c)
				continue
			}
			kept = append(kept, c)
		}
		clear(sh.conns[len(kept):])
		sh.conns = kept
		sh.count()
		select {
		case <-wake:
		case <-sh.kick:
		case <-ctx.Done():
			for _, c := range sh.conns {
				c.end = context.Canceled
				sh.finish(c)
			}
			sh.conns = nil
			s.shardMu.Lock()
			for _, c := range sh.added {
				c.end = context.Canceled
				sh.finish(c)
			}
			sh.added = nil
			delete(s.shards, sh.key)
			s.shardMu.Unlock()
			return
		}
	}
}

// serve writes what c has waiting and what its viewer has due; it reports whether
// c is done (c.end says why).
func (sh *shard) serve(c *flvConn) bool {
	if c.draining.Load() {
		// Still writing an older batch: the stream moves on without this viewer, and
		// the lag rule may skip it (what it gets next) or drop it.
		if err := c.v.Behind(); err != nil {
			c.end = err
			return true
		}
		return false
	}
	if c.drainErr != nil {
		c.end, c.drainErr = c.drainErr, nil
		return true
	}
	sh.account(c)
	for range maxRounds {
		if len(c.pending) == 0 {
			if c.end != nil {
				return true
			}
			if cap(sh.bufs) == 0 {
				sh.bufs = make(net.Buffers, 0, keptSlices)
			}
			bufs, err := c.v.Poll(sh.bufs[:1]) // slot 0: the chunk size line
			if len(bufs) > 1 {
				var n int64
				for _, b := range bufs[1:] {
					n += int64(len(b))
				}
				bufs[0] = append(strconv.AppendInt(c.line[:0], n, 16), '\r', '\n')
				c.pending, c.chunk = append(bufs, crlf), n
				if cap(c.pending) <= keptSlices {
					sh.bufs = c.pending[:0] // a join burst's larger array is left to the GC
				}
			}
			if err != nil {
				c.end = err
			}
			if len(c.pending) == 0 {
				return c.end != nil
			}
		}
		if err := writev(c, sh.vw); err != nil {
			c.end = err
			return true
		}
		if len(c.pending) > 0 { // the socket is full: the rest goes to a drain goroutine
			if sameArray(c.pending, sh.bufs) {
				c.pending = append(net.Buffers(nil), c.pending...) // the scratch serves the next viewer
			}
			c.draining.Store(true)
			if !sh.srv.goWriter(func() { sh.drain(c) }) {
				c.draining.Store(false)
				c.end = errShuttingDown
				return true
			}
			return false
		}
		sh.account(c)
	}
	return false
}

// account counts a chunk once all of it is written.
func (sh *shard) account(c *flvConn) {
	if c.chunk > 0 && len(c.pending) == 0 {
		c.written += c.chunk
		sh.counted += c.chunk
		c.chunk = 0
	}
}

// count adds the round's bytes to the edge's counters.
func (sh *shard) count() {
	if sh.counted > 0 {
		bytesOut.Add(float64(sh.counted))
		sh.srv.written.Add(uint64(sh.counted))
		sh.counted = 0
	}
}

// drain writes c.pending, waiting for the socket to take it, then gives c back to
// its shard. It fails when the socket takes nothing for WriteTimeout or the
// connection closes (the shard finishing c closes it).
func (sh *shard) drain(c *flvConn) {
	drains.Inc()
	draining.Inc()
	defer draining.Dec()
	vw := newVecWriter(true, min(len(c.pending), maxIovecs)) // one array, not append's series
	var err error
	for len(c.pending) > 0 && err == nil {
		// A fresh deadline after each write that made progress.
		if err = c.conn.SetWriteDeadline(time.Now().Add(sh.srv.writeTimeout())); err == nil {
			err = writev(c, vw)
		}
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = errWriteTimeout
	}
	if err == nil {
		err = c.conn.SetWriteDeadline(time.Time{})
	}
	c.drainErr = err
	c.draining.Store(false)
	select {
	case sh.kick <- struct{}{}:
	default:
	}
}

var (
	crlf            = []byte("\r\n")
	errWriteTimeout = errors.New("write timeout")
	errShuttingDown = errors.New("edge is shutting down")
)

// keptSlices bounds the scratch slice array a shard keeps between batches.
const keptSlices = 64

// maxIovecs is IOV_MAX on Linux: what one writev takes.
const maxIovecs = 1024

// vecWriter is one goroutine's writev: its iovec array, and the function handed
// to RawConn.Write, made once so that a write allocates nothing.
type vecWriter struct {
	iov   []syscall.Iovec
	wait  bool
	n     uintptr
	errno syscall.Errno
	do    func(fd uintptr) bool
}

// newVecWriter returns a writer that, with wait, has the netpoller wait while the
// socket takes nothing (see writev).
func newVecWriter(wait bool, iovecs int) *vecWriter {
	w := &vecWriter{iov: make([]syscall.Iovec, 0, iovecs), wait: wait}
	w.do = w.write
	return w
}

// write is one writev of w.iov. The socket is non-blocking, so the call cannot
// block: it is made as a raw system call, without telling the scheduler. Through
// Syscall, each write told the scheduler it entered a system call, and Go's sysmon
// thread, watching for goroutines stuck in one, slept and woke about 2,400 times a
// second at N=2000; as raw calls, about 960 (the rest is pkg/bus's NATS reads),
// and the edge's CPU over the same 8 s fell from 3.89 to 3.26 s (perf stat -p,
// syscalls:sys_enter_nanosleep and task-clock, one run each on this host).
func (w *vecWriter) write(fd uintptr) bool {
	w.n, _, w.errno = syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iov[0])), uintptr(len(w.iov)))
	// Without wait, what the socket does not take stays pending; with it, false has
	// the netpoller wait until the socket is writable.
	return !w.wait || w.errno != syscall.EAGAIN
}

// writev writes c.pending and drops what the socket took from it. Unless w waits
// it does not block: it writes until the socket is full or nothing is left. A
// waiting w returns after one write that made progress, waiting for the socket
// (and the connection's write deadline) as long as it takes none, so that its
// caller can renew the deadline.
func writev(c *flvConn, w *vecWriter) error {
	for len(c.pending) > 0 {
		vs := w.iov[:0]
		want := 0
		for _, b := range c.pending {
			if len(vs) == maxIovecs {
				break
			}
			if len(b) > 0 {
				iv := syscall.Iovec{Base: &b[0]}
				iv.SetLen(len(b))
				vs = append(vs, iv)
				want += len(b)
			}
		}
		w.iov = vs
		if want == 0 {
			c.pending = c.pending[:0]
			break
		}
		err := c.raw.Write(w.do)
		n, errno := w.n, w.errno
		clear(vs)
		switch {
		case err != nil:
			return err
		case errno == syscall.EAGAIN || errno == syscall.EINTR:
			return nil
		case errno != 0:
			return errno
		}
		consume(&c.pending, int(n))
		if w.wait || int(n) < want {
			break
		}
	}
	if len(c.pending) == 0 {
		c.pending = nil // the array may be the shard's scratch
	}
	return nil
}

// consume drops the first n bytes from bufs.
func consume(bufs *net.Buffers, n int) {
	v := *bufs
	for len(v) > 0 && n >= len(v[0]) {
		n -= len(v[0])
		v[0] = nil
		v = v[1:]
	}
	if len(v) > 0 {
		v[0] = v[0][n:]
	}
	*bufs = v
}

// sameArray reports whether a and b are slices of one array (they end together).
func sameArray(a, b net.Buffers) bool {
	if cap(a) == 0 || cap(b) == 0 {
		return false
	}
	return &a[:cap(a)][cap(a)-1] == &b[:cap(b)][cap(b)-1]
}

// finish ends a viewer: a terminating chunk when its stream ended or the edge
// shuts down (unless an older batch is still unwritten), then the socket closes
// (which ends a drain goroutine) and the viewer leaves its stream.
func (sh *shard) finish(c *flvConn) {
	s := sh.srv
	draining := c.draining.Load() // then pending is the drain goroutine's
	switch {
	case errors.Is(c.end, io.EOF) || errors.Is(c.end, context.Canceled):
		if !draining && len(c.pending) == 0 {
			c.pending = net.Buffers{[]byte("0\r\n\r\n")}
			_ = writev(c, sh.vw)
		}
	case errors.Is(c.end, edge.ErrTooSlow):
		s.Log.Info("viewer dropped: too slow", "stream", c.name)
	case errors.Is(c.end, errWriteTimeout):
		edge.CountDrop("write-timeout")
		s.Log.Info("viewer dropped: write timeout", "stream", c.name)
	default:
		s.Log.Debug("viewer left", "stream", c.name, "err", c.end)
	}
	_ = c.conn.Close()
	c.v.Close()
	if !draining {
		c.pending = nil
	}
	s.stopped(c.pl, c.written)
}
