package probe

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// FuzzRead feeds arbitrary bytes through the reader and the checker: no panic, every
// outcome is an end, a violation or nothing, and the counts fit the input.
func FuzzRead(f *testing.F) {
	f.Add(live(1).bytes())
	f.Add(live(1).add(TypeVideo, 1000, time.Second, []byte{0x90, 'h', 'v', 'c', '1', 1}).bytes())
	f.Add([]byte("FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		c := New(Options{MaxStall: time.Hour, Strict: len(b)%2 == 0}, time.Now())
		err := read(bytes.NewReader(b), c)
		if err == nil {
			t.Fatal("read returned nil at the end of the input")
		}
		if !errors.Is(err, ErrEnded) && !errors.Is(err, ErrViolation) {
			t.Fatalf("unexpected error kind: %v", err)
		}
		r := c.Report()
		if r.Tags > len(b)/15 || r.Bytes > int64(len(b)) || r.Video+r.Audio+r.Script > r.Tags {
			t.Fatalf("counts %s from %d bytes", r, len(b))
		}
		if errors.Is(err, ErrViolation) && r.Violation == "" {
			t.Fatalf("violation %v not in the report", err)
		}
		_ = c.Finish(time.Now())
	})
}
