package bus

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// rawReadDialer dials the NATS connection as a TCP connection whose Read is a raw
// read(2) on its non-blocking socket, waiting for data in Go's netpoller as
// net.Conn does.
//
// Why: a read through net.Conn tells the scheduler it enters a system call, and
// when the process was idle that wakes the runtime's sysmon thread, which then
// sleeps 20 µs at a time (longer after the first millisecond) until the process is
// idle again. An edge reads NATS about 160 times a second, and its writers keep it
// busy for milliseconds after every merge window; with net.Conn reads its sysmon
// slept about 1,000 times a second at N=2000, with these reads 65, and the bench
// floor's, which has no NATS connection, 69-87 (perf stat -p,
// syscalls:sys_enter_nanosleep, one run each). A read of a non-blocking socket
// cannot block, so it needs no such hand-off.
type rawReadDialer struct {
	d net.Dialer
}

func (r *rawReadDialer) Dial(network, address string) (net.Conn, error) {
	c, err := r.d.Dial(network, address)
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c, nil // a plain net.Conn read works as well, only less cheaply
	}
	return &rawReadConn{TCPConn: tc, rc: rc}, nil
}

// rawReadConn is a TCP connection with Read as a raw system call; everything else
// is the net.TCPConn's, deadlines included (RawConn.Read honours the read deadline).
type rawReadConn struct {
	*net.TCPConn
	rc syscall.RawConn
}

func (c *rawReadConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n uintptr
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			n, _, errno = syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			if errno != syscall.EINTR {
				break
			}
		}
		// false: nothing to read yet; the netpoller waits for the socket (or the deadline).
		return errno != syscall.EAGAIN
	})
	switch {
	case err != nil:
		return 0, c.opError(err)
	case errno != 0:
		return 0, c.opError(os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return int(n), nil
}

// opError wraps err as net.Conn's Read does, so that callers can ask it Timeout.
func (c *rawReadConn) opError(err error) error {
	return &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
