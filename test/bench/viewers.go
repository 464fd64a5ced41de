package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// crowd is a set of HTTP-FLV viewers of one URL, all in this process: one goroutine
// per viewer. Most read into a 64 KiB buffer and count bytes; a sample parses tags
// and, while measuring, records how long after its send each media tag arrived.
type crowd struct {
	addr, path string
	sent       *sendLog // nil: viewers do not look up latency
	viaNATS    *sendLog // when each tag arrived from NATS (nil: unknown)

	measuring atomic.Bool
	stopping  atomic.Bool
	wg        sync.WaitGroup

	mu        sync.Mutex
	viewers   []*viewer
	lat       []time.Duration // publisher send -> viewer socket
	hop       []time.Duration // NATS arrival -> viewer socket: the edge's part
	unmatched int
	refused   map[string]int // connections that never got a 200 response
	early     map[string]int // connections that ended before the crowd was stopped
}

type viewer struct {
	conn  net.Conn
	parse bool
	bytes atomic.Int64
	tags  atomic.Int64 // parsing viewers only
}

func newCrowd(addr, path string, sent, viaNATS *sendLog) *crowd {
	return &crowd{addr: addr, path: path, sent: sent, viaNATS: viaNATS, refused: map[string]int{}, early: map[string]int{}}
}

// connect opens n viewers, par at a time, of which parsers (spread evenly) parse
// tags, and returns once each has its response header or has failed.
func (c *crowd) connect(ctx context.Context, n, parsers, par int) {
	sem := make(chan struct{}, par)
	var ready sync.WaitGroup
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			c.refuse(ctx.Err())
			continue
		}
		ready.Add(1)
		parse := i*parsers/n < (i+1)*parsers/n
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.run(ctx, parse, func() {
				<-sem
				ready.Done()
			})
		}()
	}
	ready.Wait()
}

func (c *crowd) refuse(err error) {
	c.mu.Lock()
	c.refused[shortErr(err)]++
	c.mu.Unlock()
}

// run is one viewer; connected is called once the response header arrived or the
// attempt failed.
func (c *crowd) run(ctx context.Context, parse bool, connected func()) {
	once := sync.OnceFunc(connected)
	defer once()
	var conn net.Conn
	var err error
	if parse {
		conn, err = dialArrival(ctx, c.addr, 5*time.Second)
	} else {
		d := net.Dialer{Timeout: 5 * time.Second}
		conn, err = d.DialContext(ctx, "tcp", c.addr)
	}
	if err != nil {
		c.refuse(err)
		return
	}
	v := &viewer{conn: conn, parse: parse}
	c.mu.Lock()
	c.viewers = append(c.viewers, v)
	c.mu.Unlock()
	if c.stopping.Load() {
		conn.Close()
		return
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, request(c.addr, c.path)); err != nil {
		c.refuse(err)
		conn.Close()
		return
	}
	if parse {
		err = c.parseLoop(v, once)
	} else {
		err = c.discardLoop(v, once)
	}
	if !c.stopping.Load() && !errors.Is(err, errRefused) {
		c.mu.Lock()
		c.early[shortErr(err)]++
		c.mu.Unlock()
	}
	conn.Close()
}

func request(host, path string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: flvcdn-bench\r\nAccept: */*\r\n\r\n"
}

// errRefused marks a viewer that never got a 200 response.
var errRefused = errors.New("refused")

func (c *crowd) discardLoop(v *viewer, connected func()) error {
	buf := make([]byte, 64<<10)
	// The first read holds the status line (the edge writes the header on its own).
	got := 0
	for got < len("HTTP/1.1 200") {
		n, err := v.conn.Read(buf[got:])
		got += n
		if err != nil {
			c.refuse(err)
			return errRefused
		}
	}
	if !strings.HasPrefix(string(buf[:got]), "HTTP/1.1 200") {
		status, _, _ := strings.Cut(string(buf[:got]), "\r\n")
		c.refuse(errors.New(status))
		return errRefused
	}
	v.bytes.Add(int64(got))
	_ = v.conn.SetDeadline(time.Time{})
	connected()
	for {
		n, err := v.conn.Read(buf)
		v.bytes.Add(int64(n))
		if err != nil {
			return err
		}
	}
}

// arrivalOf is when the data last read from conn reached the kernel (wall ns).
func arrivalOf(conn net.Conn) int64 {
	if c, ok := conn.(*arrivalConn); ok {
		if at := c.last.Load(); at > 0 {
			return at
		}
	}
	return wallNow()
}

// countingReader counts the bytes a parsing viewer reads from its socket.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (r countingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n.Add(int64(n))
	return n, err
}

func (c *crowd) parseLoop(v *viewer, connected func()) error {
	br := bufio.NewReaderSize(countingReader{v.conn, &v.bytes}, 64<<10)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		c.refuse(err)
		return errRefused
	}
	if resp.StatusCode != http.StatusOK {
		c.refuse(errors.New(resp.Status))
		return errRefused
	}
	_ = v.conn.SetDeadline(time.Time{})
	connected()
	r := flv.NewReader(resp.Body, 0)
	if err := r.ReadHeader(); err != nil {
		return err
	}
	for {
		t, err := r.ReadTag()
		if err != nil {
			return err
		}
		at := arrivalOf(v.conn)
		v.tags.Add(1)
		if c.sent == nil || !c.measuring.Load() || isHeader(t) || t.Type() == flv.TypeScript {
			continue
		}
		sent, ok := c.sent.lookup(t.Type(), t.Timestamp())
		var viaNATS int64
		hop := false
		if c.viaNATS != nil {
			viaNATS, hop = c.viaNATS.lookup(t.Type(), t.Timestamp())
		}
		c.mu.Lock()
		if ok {
			c.lat = append(c.lat, time.Duration(at-sent))
		} else {
			c.unmatched++
		}
		if hop {
			c.hop = append(c.hop, time.Duration(at-viaNATS))
		}
		c.mu.Unlock()
	}
}

// parsers returns how many viewers parse tags.
func (c *crowd) parsers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.viewers {
		if v.parse {
			n++
		}
	}
	return n
}

// bytes returns what all viewers have read so far.
func (c *crowd) bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, v := range c.viewers {
		n += v.bytes.Load()
	}
	return n
}

// first returns the crowd's first viewer (the pilot), or nil.
func (c *crowd) first() *viewer {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.viewers) == 0 {
		return nil
	}
	return c.viewers[0]
}

// latency returns the samples recorded while measuring (from the publisher, and
// from NATS), and how many media tags had no send record.
func (c *crowd) latency() (lat, hop []time.Duration, unmatched int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.lat), slices.Clone(c.hop), c.unmatched
}

// failures returns connections refused and ended early, by cause.
func (c *crowd) failures() (refused, early map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return clone(c.refused), clone(c.early)
}

func clone(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// stop closes every viewer and waits for their goroutines.
func (c *crowd) stop() {
	c.stopping.Store(true)
	c.mu.Lock()
	for _, v := range c.viewers {
		v.conn.Close()
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// firstKeyframe opens a viewer and returns the time from dialling to the end of
// the first video keyframe tag.
func firstKeyframe(ctx context.Context, addr, path string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(start.Add(timeout))
	if _, err := io.WriteString(conn, request(addr, path)); err != nil {
		return 0, fmt.Errorf("request: %w", err)
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		return 0, fmt.Errorf("response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	r := flv.NewReader(resp.Body, 0)
	if err := r.ReadHeader(); err != nil {
		return 0, err
	}
	for {
		t, err := r.ReadTag()
		if err != nil {
			return 0, fmt.Errorf("before the first keyframe: %w", err)
		}
		if t.Type() == flv.TypeVideo && flv.Classify(t.Type(), t.Body()) == flv.KindKeyframe {
			return time.Since(start), nil
		}
	}
}

// shortErr names an error briefly for the drop tables.
func shortErr(err error) string {
	switch {
	case err == nil:
		return "closed"
	case errors.Is(err, io.EOF):
		return "EOF"
	case errors.Is(err, errRefused):
		return "refused"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// summarize turns a cause→count map into "3 EOF, 1 timeout".
func summarize(m map[string]int) (int, string) {
	total := 0
	var parts []string
	for k, v := range m {
		total += v
		parts = append(parts, fmt.Sprintf("%d %s", v, k))
	}
	sort.Strings(parts)
	return total, strings.Join(parts, ", ")
}
