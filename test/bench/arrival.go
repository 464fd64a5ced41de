package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// wallNow is the wall clock in nanoseconds: the clock of the kernel's receive
// timestamps, so send times are taken on it too.
func wallNow() int64 { return time.Now().UnixNano() }

// arrivalConn is a TCP connection whose reads report when the kernel received the
// data (SO_TIMESTAMPNS), not when this process got around to reading it. With
// thousands of viewer goroutines in this process, the difference is its own
// scheduling delay, which is not the edge's latency.
type arrivalConn struct {
	net.Conn
	raw  syscall.RawConn
	oob  []byte
	last atomic.Int64 // receive time (wall ns) of the newest data read
}

func dialArrival(ctx context.Context, addr string, timeout time.Duration) (*arrivalConn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("raw conn: %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		c.Close()
		return nil, fmt.Errorf("SO_TIMESTAMPNS: %w", errOr(err, serr))
	}
	return &arrivalConn{Conn: c, raw: raw, oob: make([]byte, syscall.CmsgSpace(16))}, nil
}

func errOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// Read reads with recvmsg and keeps the kernel's receive timestamp of the data.
func (c *arrivalConn) Read(p []byte) (int, error) {
	var n, oobn int
	var rerr error
	err := c.raw.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = syscall.Recvmsg(int(fd), p, c.oob, 0)
		return rerr != syscall.EAGAIN
	})
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, rerr
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	if at, ok := receiveTime(c.oob[:oobn]); ok {
		c.last.Store(at)
	} else {
		c.last.Store(wallNow())
	}
	return n, nil
}

// receiveTime finds the SCM_TIMESTAMPNS control message (a struct timespec).
func receiveTime(oob []byte) (int64, bool) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, m := range msgs {
		if m.Header.Level == syscall.SOL_SOCKET && m.Header.Type == syscall.SO_TIMESTAMPNS && len(m.Data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
			return sec*1e9 + nsec, true
		}
	}
	return 0, false
}
