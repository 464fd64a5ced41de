package main

// The library floors (`bench floor-transport --mode https1|h2|ws`): what writing the
// stream to N viewers costs through the same libraries the edge uses for a transport,
// with nothing else around them (no NATS, no hub, no lag policy, no hooks). Like the
// HTTP/1.1 floor it paces the bench media into a ring of shared tags; every merge
// window each viewer gets everything queued since its last write:
//
//   - https1: net/http over TLS (HTTP/1.1 only), the connection taken over, the window
//     gathered with its chunk framing into one pooled buffer and one tls.Conn Write;
//   - h2: HTTP/2 over TLS through package h2, as the edge serves it: each window one
//     WriteBuffers call (DATA frames gathered by package h2 into one tls.Conn Write);
//   - h2c: the same without TLS (package h2 writes the frames with writev);
//   - h2-nethttp: net/http's own HTTP/2 server over TLS, the window gathered into one
//     pooled buffer, one ResponseWriter Write and one Flush: what the edge used before
//     package h2, kept as a reference;
//   - ws: github.com/coder/websocket without TLS, the window gathered into one
//     pooled buffer and written as one binary message (one frame).
//
// Unlike the HTTP/1.1 floor, each viewer has its own goroutine: an HTTP/2 handler,
// a WebSocket writer.

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/h2"
)

// floorTap is what every viewer of a library floor reads from: the ring, the join
// bytes and the merge window's tick (a channel closed and replaced every window).
type floorTap struct {
	ring   *floorRing
	pre    [][]byte
	notify atomic.Pointer[chan struct{}]
	drops  atomic.Int64
}

func (f *floorTap) tick(window time.Duration) {
	t := time.NewTicker(window)
	defer t.Stop()
	for range t.C {
		ch := make(chan struct{})
		close(*f.notify.Swap(&ch))
	}
}

// floorCursor is one viewer's place in the ring.
type floorCursor struct {
	f       *floorTap
	cursor  uint64
	started bool
	pre     [][]byte
}

func (f *floorTap) cursor() *floorCursor {
	c := &floorCursor{f: f, pre: f.pre}
	if k := f.ring.lastKey.Load(); k > 0 {
		c.cursor, c.started = k-1, true
	} else {
		c.cursor = f.ring.head.Load()
	}
	return c
}

// next waits for the next window and appends what is due to bufs.
func (c *floorCursor) next(ctx context.Context, bufs [][]byte) ([][]byte, error) {
	if c.pre != nil {
		bufs, c.pre = append(bufs, c.pre...), nil
	}
	for {
		ch := c.f.notify.Load()
		r := c.f.ring
		head := r.head.Load()
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
				c.f.drops.Add(1)
				return bufs, errFloorBehind
			}
			for ; c.cursor < head; c.cursor++ {
				e := r.at(c.cursor)
				if e == nil {
					c.f.drops.Add(1)
					return bufs, errFloorBehind
				}
				bufs = append(bufs, e.tag)
			}
		}
		if len(bufs) > 0 {
			return bufs, nil
		}
		select {
		case <-*ch:
		case <-ctx.Done():
			return bufs, ctx.Err()
		}
	}
}

var floorPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

func floorTransportMain(args []string) error {
	fs := flag.NewFlagSet("bench floor-transport", flag.ContinueOnError)
	mode := fs.String("mode", "h2", "https1, h2, h2c, h2-nethttp or ws")
	mediaPath := fs.String("media", "", "FLV file to pace")
	window := fs.Duration("merge-window", 50*time.Millisecond, "write each viewer at most once per window")
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	certFile := fs.String("cert", "", "TLS certificate (https1, h2)")
	keyFile := fs.String("key", "", "TLS key (https1, h2)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	m, err := loadMedia(*mediaPath)
	if err != nil {
		return err
	}
	f := &floorTap{ring: newFloorRing(), pre: [][]byte{flv.FileHeader(m.hasAudio, m.hasVideo)}}
	for _, t := range m.tags[:m.headers] {
		f.pre = append(f.pre, t)
	}
	ch := make(chan struct{})
	f.notify.Store(&ch)
	go floorPace(f.ring, m, func() time.Duration { return *window }) // its wake-ups are unused here: viewers follow tick
	go f.tick(*window)

	srv := &http.Server{}
	switch *mode {
	case "https1":
		srv.Handler = http.HandlerFunc(f.serveHTTPS1)
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
	case "h2", "h2c":
		srv.Handler = http.HandlerFunc(f.serveH2)
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetHTTP2(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
		h2.Configure(srv, &h2.Server{})
	case "h2-nethttp":
		srv.Handler = http.HandlerFunc(f.serveH2)
	case "ws":
		srv.Handler = http.HandlerFunc(f.serveWS)
	default:
		return fmt.Errorf("--mode %q: https1, h2, h2c, h2-nethttp or ws", *mode)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	go func() {
		if *mode == "ws" || *mode == "h2c" {
			_ = srv.Serve(ln)
			return
		}
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench floor-transport:", err)
			os.Exit(1)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		_ = srv.ServeTLS(ln, "", "")
	}()
	fmt.Printf("listening %s\n", ln.Addr())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
	fmt.Printf("drops %d\n", f.drops.Load())
	return nil
}

func (f *floorTap) serveH2(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "video/x-flv")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	c := f.cursor()
	bufs := make([][]byte, 0, 64)
	for {
		var err error
		if bufs, err = c.next(r.Context(), bufs[:0]); err != nil {
			return
		}
		if bw, ok := w.(interface{ WriteBuffers(net.Buffers) error }); ok { // package h2
			if bw.WriteBuffers(net.Buffers(bufs)) != nil {
				return
			}
			continue
		}
		bp := floorPool.Get().(*[]byte)
		b := (*bp)[:0]
		for _, t := range bufs {
			b = append(b, t...)
		}
		_, err = w.Write(b)
		*bp = b[:0]
		if err != nil {
			return
		}
		floorPool.Put(bp)
		if rc.Flush() != nil {
			return
		}
	}
}

func (f *floorTap) serveHTTPS1(w http.ResponseWriter, r *http.Request) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	const head = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: video/x-flv\r\nTransfer-Encoding: chunked\r\n\r\n"
	if _, err := conn.Write([]byte(head)); err != nil {
		return
	}
	c := f.cursor()
	bufs := make([][]byte, 0, 64)
	for {
		if bufs, err = c.next(context.Background(), bufs[:0]); err != nil {
			return
		}
		n := 0
		for _, t := range bufs {
			n += len(t)
		}
		bp := floorPool.Get().(*[]byte)
		b := strconv.AppendInt((*bp)[:0], int64(n), 16)
		b = append(b, '\r', '\n')
		for _, t := range bufs {
			b = append(b, t...)
		}
		b = append(b, '\r', '\n')
		_, err = conn.Write(b)
		*bp = b[:0]
		floorPool.Put(bp)
		if err != nil {
			return
		}
	}
}

func (f *floorTap) serveWS(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return
	}
	defer c.CloseNow()
	gone := c.CloseRead(context.Background())
	cur := f.cursor()
	bufs := make([][]byte, 0, 64)
	for {
		if bufs, err = cur.next(gone, bufs[:0]); err != nil {
			return
		}
		bp := floorPool.Get().(*[]byte)
		b := (*bp)[:0]
		for _, t := range bufs {
			b = append(b, t...)
		}
		err = c.Write(context.Background(), websocket.MessageBinary, b)
		*bp = b[:0]
		floorPool.Put(bp)
		if err != nil {
			return
		}
	}
}
