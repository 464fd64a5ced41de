package main

// The floor: what writing the stream to N loopback sockets costs with nothing else
// around it. It runs as its own process (`bench floor`) so its CPU can be read from
// /proc like the edge's. It paces the bench media in real time into a ring of shared
// tags and wakes its workers with the edge's own merge policy: at once when the
// last wake-up is a window ago, else when the window ends, the window chosen by
// edge.WindowPolicy from its connection count (or fixed, with --fixed-window). One
// worker per CPU then gives each of its connections everything queued since that
// connection's last write, as one HTTP chunk in one non-blocking writev. No NATS,
// no HTTP server, no goroutine per viewer, no deadlines: the kernel's copy and the
// syscall are most of what is left.

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/flv"
)

const (
	floorRingSize   = 4096
	floorMaxPending = 8 << 20 // a connection this far behind is dropped
	maxIovecs       = 1024    // IOV_MAX on Linux
)

// floorEntry is one tag in the floor's ring.
type floorEntry struct {
	idx uint64
	tag []byte
	key bool
}

type floorRing struct {
	slots   [floorRingSize]atomic.Pointer[floorEntry]
	head    atomic.Uint64
	lastKey atomic.Uint64 // index + 1 of the newest keyframe
	notify  atomic.Pointer[chan struct{}]
}

// newFloorRing returns an empty ring, ready to wake.
func newFloorRing() *floorRing {
	r := &floorRing{}
	ch := make(chan struct{})
	r.notify.Store(&ch)
	return r
}

// wake releases the workers waiting for new tags.
func (r *floorRing) wake() {
	ch := make(chan struct{})
	close(*r.notify.Swap(&ch))
}

func (r *floorRing) push(t []byte, key bool) {
	i := r.head.Load()
	r.slots[i%floorRingSize].Store(&floorEntry{idx: i, tag: t, key: key})
	if key {
		r.lastKey.Store(i + 1)
	}
	r.head.Store(i + 1)
}

func (r *floorRing) at(i uint64) *floorEntry {
	e := r.slots[i%floorRingSize].Load()
	if e == nil || e.idx != i {
		return nil
	}
	return e
}

type floorConn struct {
	raw     syscall.RawConn
	close   func() error
	cursor  uint64
	started bool
	pending [][]byte
}

type floorWorker struct {
	mu    sync.Mutex
	added []*floorConn
	conns []*floorConn
	bufs  [][]byte
	iov   []syscall.Iovec
	line  []byte
	// one writev, as the edge makes it: a raw system call (the socket does not
	// block), through a function made once
	n     uintptr
	errno syscall.Errno
	do    func(fd uintptr) bool
}

var crlf = []byte("\r\n")

func floorMain(args []string) error {
	fs := flag.NewFlagSet("bench floor", flag.ContinueOnError)
	mediaPath := fs.String("media", "", "FLV file to pace")
	window := fs.Duration("merge-window", 60*time.Millisecond, "ceiling of the merge window (edge --merge-window)")
	fixed := fs.Bool("fixed-window", false, "use --merge-window as is, like edge --fixed-merge-window")
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	m, err := loadMedia(*mediaPath)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	ring := newFloorRing()
	var conns atomic.Int64
	policy := edge.NewWindowPolicy(*window)
	if *fixed {
		policy.Min = *window
	}
	var win atomic.Int64
	win.Store(int64(policy.Update(time.Now(), 0)))
	go func() { // the edge's hub samples its viewers the same way
		for now := range time.Tick(edge.WindowSample) {
			win.Store(int64(policy.Update(now, int(conns.Load()))))
		}
	}()
	pre := [][]byte{flv.FileHeader(m.hasAudio, m.hasVideo)}
	for _, t := range m.tags[:m.headers] {
		pre = append(pre, t)
	}
	go floorPace(ring, m, func() time.Duration { return time.Duration(win.Load()) })

	workers := make([]*floorWorker, runtime.GOMAXPROCS(0))
	var drops atomic.Int64
	for i := range workers {
		w := &floorWorker{}
		w.do = w.write
		workers[i] = w
		go w.run(ring, &drops, &conns)
	}
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go floorAccept(c, pre, ring, workers[i%len(workers)], &conns)
		}
	}()
	fmt.Printf("listening %s\n", ln.Addr())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
	fmt.Printf("window %s\n", time.Duration(win.Load()))
	fmt.Printf("drops %d\n", drops.Load())
	return nil
}

// floorPace pushes the media's tags into the ring in real time, looping, and wakes
// the workers as the edge's stream actor wakes its viewers (Stream.flushSoon).
func floorPace(r *floorRing, m *media, window func() time.Duration) {
	start := time.Now()
	next, flush := time.NewTimer(0), time.NewTimer(time.Hour)
	flush.Stop()
	armed := false
	var lastWake time.Time
	tags := m.tags[m.headers:]
	for i := 0; ; {
		t := tags[i%len(tags)]
		ts := t.Timestamp() - m.base + uint32(i/len(tags))*m.loopMS
		next.Reset(time.Until(start.Add(time.Duration(ts) * time.Millisecond)))
		select {
		case <-flush.C:
			armed, lastWake = false, time.Now()
			r.wake()
			continue
		case <-next.C:
		}
		key := t.Type() == flv.TypeVideo && flv.Classify(t.Type(), t.Body()) == flv.KindKeyframe
		r.push(t, key)
		i++
		if armed {
			continue
		}
		if wait := time.Until(lastWake.Add(window())); wait > 0 {
			flush.Reset(wait)
			armed = true
			continue
		}
		lastWake = time.Now()
		r.wake()
	}
}

// floorAccept reads the request head, answers like the edge and hands the connection
// to a worker, which sends the FLV header and headers with its first write.
func floorAccept(c net.Conn, pre [][]byte, r *floorRing, w *floorWorker, conns *atomic.Int64) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReaderSize(c, 4096)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			c.Close()
			return
		}
		if len(line) <= 2 {
			break
		}
	}
	const head = "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: Content-Type\r\n" +
		"Cache-Control: no-cache, no-store\r\nConnection: close\r\nContent-Type: video/x-flv\r\n" +
		"Transfer-Encoding: chunked\r\nX-Content-Type-Options: nosniff\r\n\r\n"
	if _, err := c.Write([]byte(head)); err != nil {
		c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		c.Close()
		return
	}
	fc := &floorConn{raw: raw, close: c.Close}
	if k := r.lastKey.Load(); k > 0 {
		fc.cursor, fc.started = k-1, true
	} else {
		fc.cursor = r.head.Load()
	}
	// The join bytes go out as the first chunk, ahead of the first window's tags.
	n := 0
	for _, b := range pre {
		n += len(b)
	}
	fc.pending = append([][]byte{chunkLine(nil, n)}, pre...)
	fc.pending = append(fc.pending, crlf)
	w.mu.Lock()
	w.added = append(w.added, fc)
	w.mu.Unlock()
	conns.Add(1)
}

func chunkLine(dst []byte, n int) []byte {
	dst = strconv.AppendInt(dst, int64(n), 16)
	return append(dst, '\r', '\n')
}

func (w *floorWorker) run(r *floorRing, drops, conns *atomic.Int64) {
	var last *chan struct{}
	for {
		// Like Viewer.Next: a wake-up that came while this worker was writing is
		// served at once, not at the next one.
		ch := r.notify.Load()
		if ch == last {
			<-*ch
			continue
		}
		last = ch
		w.mu.Lock()
		w.conns = append(w.conns, w.added...)
		w.added = w.added[:0]
		w.mu.Unlock()
		head := r.head.Load()
		kept := w.conns[:0]
		for _, c := range w.conns {
			switch err := w.flush(c, r, head); {
			case err == nil:
				kept = append(kept, c)
			case errors.Is(err, errFloorBehind):
				drops.Add(1)
				c.close()
				conns.Add(-1)
			default:
				c.close()
				conns.Add(-1)
			}
		}
		clear(w.conns[len(kept):])
		w.conns = kept
	}
}

var errFloorBehind = errors.New("connection too far behind")

// flush writes what c has pending plus the tags up to head, as one chunk.
func (w *floorWorker) flush(c *floorConn, r *floorRing, head uint64) error {
	w.bufs = append(w.bufs[:0], c.pending...)
	if !c.started {
		for ; c.cursor < head; c.cursor++ {
			if e := r.at(c.cursor); e != nil && e.key {
				c.started = true
				break
			}
		}
	}
	if c.started && c.cursor < head {
		if head-c.cursor > floorRingSize/2 {
			return errFloorBehind
		}
		first := len(w.bufs)
		w.bufs = append(w.bufs, nil) // the chunk line, once the size is known
		n := 0
		for ; c.cursor < head; c.cursor++ {
			e := r.at(c.cursor)
			if e == nil {
				return errFloorBehind
			}
			w.bufs = append(w.bufs, e.tag)
			n += len(e.tag)
		}
		w.line = chunkLine(w.line[:0], n)
		w.bufs[first] = w.line
		w.bufs = append(w.bufs, crlf)
	}
	if len(w.bufs) == 0 {
		return nil
	}
	written, err := w.writev(c.raw)
	if err != nil {
		return err
	}
	// Keep what the socket did not take; a chunk line lives in w.line, so copy it.
	c.pending = c.pending[:0]
	pendingBytes := 0
	for _, b := range w.bufs {
		if written >= len(b) {
			written -= len(b)
			continue
		}
		b = b[written:]
		written = 0
		if len(w.line) > 0 && &b[len(b)-1] == &w.line[len(w.line)-1] {
			b = append([]byte(nil), b...)
		}
		c.pending = append(c.pending, b)
		pendingBytes += len(b)
	}
	if pendingBytes > floorMaxPending {
		return errFloorBehind
	}
	return nil
}

// write is one writev of w.iov; it never waits: what the socket did not take stays pending.
func (w *floorWorker) write(fd uintptr) bool {
	w.n, _, w.errno = syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iov[0])), uintptr(len(w.iov)))
	return true
}

// writev writes w.bufs without blocking and returns how many bytes the socket took.
func (w *floorWorker) writev(raw syscall.RawConn) (int, error) {
	total := 0
	for i := 0; i < len(w.bufs); {
		w.iov = w.iov[:0]
		want := 0
		for ; i < len(w.bufs) && len(w.iov) < maxIovecs; i++ {
			if b := w.bufs[i]; len(b) > 0 {
				v := syscall.Iovec{Base: &b[0]}
				v.SetLen(len(b))
				w.iov = append(w.iov, v)
				want += len(b)
			}
		}
		if len(w.iov) == 0 {
			break
		}
		err := raw.Write(w.do)
		n, errno := w.n, w.errno
		switch {
		case err != nil:
			return total, fmt.Errorf("writev: %w", err)
		case errno == syscall.EAGAIN:
			return total, nil
		case errno != 0:
			return total, fmt.Errorf("writev: %w", errno)
		}
		total += int(n)
		if int(n) < want {
			return total, nil
		}
	}
	return total, nil
}
