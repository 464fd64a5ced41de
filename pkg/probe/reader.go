package probe

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Reader splits an FLV byte stream into its header and tags and checks the byte
// layout: the signature, the version, the header's DataOffset, and the PreviousTagSize
// chain (PreviousTagSize0 is 0, every later one is 11 + DataSize of the tag before it).
type Reader struct {
	br   *bufio.Reader
	prev uint32 // what the next PreviousTagSize must be
	body []byte
}

// NewReader reads FLV from r.
func NewReader(r io.Reader) *Reader { return &Reader{br: bufio.NewReaderSize(r, 64<<10)} }

// maxHeaderOffset bounds the header's DataOffset (the spec's header is 9 bytes; a
// larger offset skips bytes a future version may add).
const maxHeaderOffset = 1 << 16

// ReadHeader reads the file header and PreviousTagSize0 and returns the TypeFlags byte.
// It returns io.EOF when the stream ends before its first byte.
func (r *Reader) ReadHeader() (byte, error) {
	var h [9]byte
	if n, err := io.ReadFull(r.br, h[:]); err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return 0, io.EOF
		}
		return 0, cut(err, "FLV header cut after %d bytes", n)
	}
	if h[0] != 'F' || h[1] != 'L' || h[2] != 'V' {
		return 0, fmt.Errorf("%w: body starts %q, not an FLV signature", ErrViolation, h[:3])
	}
	if h[3] != 1 {
		return 0, fmt.Errorf("%w: FLV version %d, want 1", ErrViolation, h[3])
	}
	off := uint32(h[5])<<24 | uint32(h[6])<<16 | uint32(h[7])<<8 | uint32(h[8])
	if off < 9 || off > maxHeaderOffset {
		return 0, fmt.Errorf("%w: FLV header DataOffset %d", ErrViolation, off)
	}
	if _, err := r.br.Discard(int(off - 9)); err != nil {
		return 0, cut(err, "FLV header cut inside its DataOffset")
	}
	if err := r.previous(); err != nil {
		return 0, err
	}
	return h[4], nil
}

func (r *Reader) previous() error {
	var b [4]byte
	if _, err := io.ReadFull(r.br, b[:]); err != nil {
		return cut(err, "stream cut inside a PreviousTagSize")
	}
	if got := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]); got != r.prev {
		return fmt.Errorf("%w: PreviousTagSize %d, want %d", ErrViolation, got, r.prev)
	}
	return nil
}

// cut reports the stream ending inside a structure: a violation when the stream
// ended (EOF), the read error itself otherwise (a reset, or our own close).
func cut(err error, format string, args ...any) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: "+format, append([]any{ErrViolation}, args...)...)
	}
	return fmt.Errorf("reading FLV: %w", err)
}

// RawTag is one tag read from the stream; Body is valid until the next ReadTag.
type RawTag struct {
	Type     byte // TagType (the low 5 bits); Filter and reserved bits in Flags
	Flags    byte // the first byte's top 3 bits (reserved 2, Filter 1)
	TS       uint32
	StreamID uint32
	Body     []byte
}

// ReadTag reads the next tag and the PreviousTagSize after it. A stream that ends
// cleanly between tags returns io.EOF; one that ends inside a tag returns a violation.
func (r *Reader) ReadTag() (RawTag, error) {
	var h [11]byte
	n, err := io.ReadFull(r.br, h[:])
	if err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			return RawTag{}, io.EOF
		}
		return RawTag{}, cut(err, "stream cut inside a tag header after %d bytes", n)
	}
	size := int(h[1])<<16 | int(h[2])<<8 | int(h[3])
	t := RawTag{
		Type:     h[0] & 0x1f,
		Flags:    h[0] >> 5,
		TS:       uint32(h[7])<<24 | uint32(h[4])<<16 | uint32(h[5])<<8 | uint32(h[6]),
		StreamID: uint32(h[8])<<16 | uint32(h[9])<<8 | uint32(h[10]),
	}
	// Grown as bytes arrive, so a bogus size costs nothing until the bytes are there.
	buf := bytes.NewBuffer(r.body[:0])
	if _, err := io.CopyN(buf, r.br, int64(size)); err != nil {
		return RawTag{}, cut(err, "stream cut inside a %d-byte tag body", size)
	}
	r.body = buf.Bytes()
	t.Body = r.body
	r.prev = uint32(11 + size)
	if err := r.previous(); err != nil {
		return RawTag{}, err
	}
	return t, nil
}

// Watch reads an FLV stream from rc through c until ctx ends (a stop the caller asked
// for: nil), the stream ends (ErrEnded), a violation, a stall longer than
// Options.MaxStall, or a read error. It always closes rc and calls c.Finish, and
// returns the first violation or error. c's Report says what was seen.
func Watch(ctx context.Context, rc io.ReadCloser, c *Checker) error {
	var (
		mu      sync.Mutex
		closed  bool
		stalled error
	)
	closeOnce := func() {
		mu.Lock()
		defer mu.Unlock()
		if !closed {
			closed = true
			rc.Close()
		}
	}
	defer closeOnce()
	// The stall timer: a blocked read cannot notice that nothing arrives.
	tick := c.o.MaxStall / 10
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				closeOnce()
				return
			case now := <-t.C:
				if err := c.Idle(now); err != nil {
					mu.Lock()
					stalled = err
					mu.Unlock()
					closeOnce()
					return
				}
			}
		}
	}()
	err := read(rc, c)
	close(done)
	wg.Wait()
	mu.Lock()
	st := stalled
	mu.Unlock()
	end := time.Now()
	switch {
	case st != nil:
		err = st
	case errors.Is(err, ErrViolation):
	case ctx.Err() != nil:
		err = nil // the caller stopped reading; a read error after that is ours
	}
	if ferr := c.Finish(end); err == nil || errors.Is(err, ErrEnded) {
		if ferr != nil {
			return ferr
		}
	}
	return err
}

// read runs the stream through the checker until an error; the reader's own
// violations (layout) are recorded in the checker too.
func read(r io.Reader, c *Checker) error {
	err := readTags(r, c)
	if errors.Is(err, ErrViolation) {
		return c.violation(strings.TrimPrefix(err.Error(), ErrViolation.Error()+": "))
	}
	return err
}

func readTags(r io.Reader, c *Checker) error {
	fr := NewReader(r)
	flags, err := fr.ReadHeader()
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%w (empty body)", ErrEnded)
	}
	if err != nil {
		return err
	}
	if err := c.Header(time.Now(), flags); err != nil {
		return err
	}
	for {
		t, err := fr.ReadTag()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%w (EOF) after %d tags", ErrEnded, c.Report().Tags)
		}
		if err != nil {
			return err
		}
		at := time.Now()
		if t.Flags&1 != 0 {
			return c.violation(fmt.Sprintf("tag with the Filter bit set (encrypted), type %d", t.Type))
		}
		if err := c.Tag(at, t.Type, t.TS, t.StreamID, t.Body); err != nil {
			return err
		}
		if c.o.OnTag != nil {
			c.o.OnTag(Tag{At: at, Type: t.Type, TS: t.TS, Class: Classify(t.Type, t.Body), Body: t.Body})
		}
	}
}

func (c *Checker) violation(msg string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fail("%s", msg)
}
