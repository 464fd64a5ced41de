package main

// Browser-like HTTP/2 viewers for the transport table. Go's HTTP/2 client gives
// window back (WINDOW_UPDATE) for every 4 KiB it reads, about 80 frames a second
// per viewer at 2.5 Mbit/s, each one a read on the server. Browsers give it back
// when half a large window is used: Chromium opens 6 MiB stream windows and a
// 15 MiB connection window, so at 2.5 Mbit/s it sends one pair every ten seconds or
// so. A server's cost per viewer is what it costs with the players people use, so
// these viewers open their windows as Chromium does (h2Conn.settings) and send
// WINDOW_UPDATE at half. They count the DATA they get and do not copy it: the
// transport table only counts bytes.

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Chromium's windows: SETTINGS_INITIAL_WINDOW_SIZE and the connection's window.
const (
	browserStreamWindow = 6 << 20
	browserConnWindow   = 15 << 20
)

// h2Conn is one HTTP/2 connection carrying one or more viewers' streams.
type h2Conn struct {
	nc        net.Conn
	authority string
	wmu       sync.Mutex
	fr        *http2.Framer
	hbuf      bytes.Buffer
	enc       *hpack.Encoder

	mu      sync.Mutex
	streams map[uint32]*h2Stream
	nextID  uint32
	unacked int // connection window used and not given back
	err     error
}

// h2Stream is one viewer's response as a reader of counts.
type h2Stream struct {
	c       *h2Conn
	id      uint32
	status  chan int // the response status, once
	cond    sync.Cond
	pending int // bytes received and not yet counted by Read
	unacked int
	err     error
}

// dialH2 opens an HTTP/2 connection to addr, TLS (ALPN h2) when tlsConf is set.
func dialH2(ctx context.Context, addr string, tlsConf *tls.Config) (*h2Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tlsConf != nil {
		conf := tlsConf.Clone()
		conf.NextProtos = []string{"h2"}
		conf.ServerName, _, _ = net.SplitHostPort(addr)
		tc := tls.Client(nc, conf)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("tls: %w", err)
		}
		if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
			tc.Close()
			return nil, fmt.Errorf("ALPN gave %q, not h2", p)
		}
		nc = tc
	}
	c := &h2Conn{nc: nc, authority: addr, streams: map[uint32]*h2Stream{}, nextID: 1}
	c.fr = http2.NewFramer(nc, nc)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.hbuf)
	err = c.write(func() error {
		if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
			return err
		}
		if err := c.fr.WriteSettings(
			http2.Setting{ID: http2.SettingEnablePush, Val: 0},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: browserStreamWindow},
		); err != nil {
			return err
		}
		return c.fr.WriteWindowUpdate(0, browserConnWindow-65535)
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	go c.read() // ends when the connection does
	return c, nil
}

func (c *h2Conn) write(f func() error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return f()
}

// open sends a GET of path and waits for its status.
func (c *h2Conn) open(ctx context.Context, path string) (*h2Stream, error) {
	st := &h2Stream{c: c, status: make(chan int, 1)}
	st.cond.L = &c.mu
	// The id is taken under the write lock, so that streams open in the order of
	// their ids, as the server requires.
	err := c.write(func() error {
		c.mu.Lock()
		if c.err != nil {
			c.mu.Unlock()
			return c.err
		}
		st.id = c.nextID
		c.nextID += 2
		c.streams[st.id] = st
		c.mu.Unlock()
		c.hbuf.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", c.authority}, {":path", path}} {
			_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: st.id, BlockFragment: c.hbuf.Bytes(), EndStream: true, EndHeaders: true})
	})
	if err != nil {
		return nil, err
	}
	select {
	case code := <-st.status:
		if code != 200 {
			st.Close()
			return nil, fmt.Errorf("status %d", code)
		}
		context.AfterFunc(ctx, func() { _ = st.Close() }) // the viewer lives as long as ctx
		return st, nil
	case <-ctx.Done():
		st.Close()
		return nil, ctx.Err()
	}
}

// read is the connection's frame loop.
func (c *h2Conn) read() {
	err := c.readFrames()
	c.mu.Lock()
	c.err = err
	for _, st := range c.streams {
		if st.err == nil {
			st.err = err
		}
		select {
		case st.status <- 0:
		default:
		}
		st.cond.Broadcast()
	}
	c.mu.Unlock()
	c.nc.Close()
}

func (c *h2Conn) readFrames() error {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := c.write(c.fr.WriteSettingsAck); err != nil {
					return err
				}
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				if err := c.write(func() error { return c.fr.WritePing(true, f.Data) }); err != nil {
					return err
				}
			}
		case *http2.MetaHeadersFrame:
			c.mu.Lock()
			if st := c.streams[f.StreamID]; st != nil {
				code, _ := strconv.Atoi(f.PseudoValue("status"))
				select {
				case st.status <- code:
				default:
				}
			}
			c.mu.Unlock()
		case *http2.DataFrame:
			n := int(f.Header().Length)
			c.mu.Lock()
			c.unacked += n
			connAck := 0
			if c.unacked >= browserConnWindow/2 {
				connAck, c.unacked = c.unacked, 0
			}
			streamAck := 0
			st := c.streams[f.StreamID]
			if st != nil {
				st.pending += len(f.Data())
				st.unacked += n
				if st.unacked >= browserStreamWindow/2 {
					streamAck, st.unacked = st.unacked, 0
				}
				if f.StreamEnded() {
					st.err = io.EOF
				}
				st.cond.Broadcast()
			}
			c.mu.Unlock()
			if connAck > 0 || streamAck > 0 {
				if err := c.write(func() error {
					if connAck > 0 {
						if err := c.fr.WriteWindowUpdate(0, uint32(connAck)); err != nil {
							return err
						}
					}
					if streamAck > 0 {
						return c.fr.WriteWindowUpdate(f.StreamID, uint32(streamAck))
					}
					return nil
				}); err != nil {
					return err
				}
			}
		case *http2.RSTStreamFrame:
			c.mu.Lock()
			if st := c.streams[f.StreamID]; st != nil && st.err == nil {
				st.err = fmt.Errorf("stream reset: %v", f.ErrCode)
				st.cond.Broadcast()
			}
			c.mu.Unlock()
		case *http2.GoAwayFrame:
			if f.ErrCode != http2.ErrCodeNo {
				return fmt.Errorf("GOAWAY %v", f.ErrCode)
			}
		}
	}
}

// Read reports the bytes received since the last Read (it does not fill p).
func (st *h2Stream) Read(p []byte) (int, error) {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	for st.pending == 0 && st.err == nil {
		st.cond.Wait()
	}
	if st.pending > 0 {
		n := min(st.pending, len(p))
		st.pending -= n
		return n, nil
	}
	return 0, st.err
}

// Close resets the stream; the connection closes with its last stream.
func (st *h2Stream) Close() error {
	c := st.c
	c.mu.Lock()
	if st.err == nil {
		st.err = errors.New("closed")
	}
	st.cond.Broadcast()
	delete(c.streams, st.id)
	last := len(c.streams) == 0
	c.mu.Unlock()
	_ = c.write(func() error { return c.fr.WriteRSTStream(st.id, http2.ErrCodeCancel) })
	if last {
		return c.nc.Close()
	}
	return nil
}

// h2Opener opens viewers of path at addr, perConn streams to a connection: a
// connection's first viewer dials it and the next perConn-1 wait and share it.
func h2Opener(addr string, tlsConf *tls.Config, perConn int) opener {
	type group struct {
		c     *h2Conn // set before ready closes
		ready chan struct{}
	}
	var (
		mu   sync.Mutex
		cur  *group
		used int
	)
	return func(ctx context.Context) (io.ReadCloser, error) {
		mu.Lock()
		first := used%perConn == 0
		if first {
			cur = &group{ready: make(chan struct{})}
		}
		g := cur
		used++
		mu.Unlock()
		if first {
			c, err := dialH2(ctx, addr, tlsConf)
			g.c = c
			close(g.ready)
			if err != nil {
				return nil, err
			}
		} else {
			select {
			case <-g.ready:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if g.c == nil {
				return nil, errors.New("the shared connection failed to open")
			}
		}
		return g.c.open(ctx, mainPath)
	}
}
