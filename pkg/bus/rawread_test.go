package bus

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestRawReadConnReadsLikeNetConn checks the NATS connection's raw reads against
// what nats.go relies on from a net.Conn: every byte in order across writes larger
// than a read, a read that waits for data, a deadline reported as a timeout, EOF
// when the peer closes, and an error once the connection is closed.
func TestRawReadConnReadsLikeNetConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	d := &rawReadDialer{d: net.Dialer{Timeout: time.Second}}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*rawReadConn); !ok {
		t.Fatalf("dialer returned %T, not the raw-read connection", c)
	}
	peer, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer peer.Close()

	// A read that has to wait: the data comes after it started.
	want := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB, far past the socket buffers
	go func() {
		time.Sleep(50 * time.Millisecond)
		_, _ = peer.Write(want[:100])
		_, _ = peer.Write(want[100:])
	}()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes read differ from bytes written")
	}

	// A deadline with nothing to read is a timeout, as nats.go checks it.
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	_, err = c.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v; want a timeout", err)
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}

	// The peer's close is EOF.
	_ = peer.Close()
	if n, err := c.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Fatalf("read after the peer closed: %d, %v; want 0, EOF", n, err)
	}

	// Our close makes reads fail with net.ErrClosed.
	_ = c.Close()
	if _, err := c.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v; want net.ErrClosed", err)
	}
}
