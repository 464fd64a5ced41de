package httpflv

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"testing"
)

// writeLog records a copy of every Write it is given and where its bytes were, and
// fails the failAt-th Write (from 1) if set.
type writeLog struct {
	writes [][]byte
	at     []*byte
	failAt int
}

func (w *writeLog) Write(p []byte) (int, error) {
	w.writes = append(w.writes, bytes.Clone(p))
	w.at = append(w.at, &p[0])
	if len(w.writes) == w.failAt {
		return 0, errors.New("peer gone")
	}
	return len(p), nil
}

func filled(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

// TestWritePiecesShape checks how a window reaches net/http: the bytes in order, no
// Write of more than pieceSize; a window of one tag as it is; one of at most
// wholeWindow bytes gathered; a bigger one with small tags copied into pieces and tags
// of pieceSize or more handed over as they are (the shared slice itself, no copy).
func TestWritePiecesShape(t *testing.T) {
	p := pieceSize
	big := filled(3*p+5, 'V')
	exact := filled(p, 'K')
	many := func() net.Buffers {
		var b net.Buffers
		for i := range 100 {
			b = append(b, filled(1000, byte(i)))
		}
		return b
	}()
	cases := []struct {
		name  string
		bufs  net.Buffers
		sizes []int         // of the Writes expected
		own   map[int]*byte // Writes that must be a tag's own bytes, from there
	}{
		{"a window of one tag as it is", net.Buffers{exact}, []int{p}, map[int]*byte{0: &exact[0]}},
		{"a window of one big tag as it is, in frames", net.Buffers{big}, []int{p, p, p, 5},
			map[int]*byte{0: &big[0], 1: &big[p], 2: &big[2*p], 3: &big[3*p]}},
		{"a small window in one Write", net.Buffers{filled(400, 'a'), filled(9000, 'v'), filled(400, 'a')}, []int{9800}, nil},
		{"a window of wholeWindow bytes gathered", net.Buffers{filled(wholeWindow-400, 'v'), filled(400, 'a')}, []int{p, p, wholeWindow - 2*p}, nil},
		{"a bigger one in pieces", net.Buffers{filled(10000, 'v'), filled(10000, 'w'), filled(10000, 'x'), filled(10000, 'y')}, []int{p, p, 40000 - 2*p}, nil},
		{"its big tags as they are", net.Buffers{filled(400, 'a'), big, filled(400, 'b')}, []int{400, p, p, p, 5, 400},
			map[int]*byte{1: &big[0], 2: &big[p], 3: &big[2*p], 4: &big[3*p]}},
		{"a tag of exactly pieceSize too", net.Buffers{filled(9000, 'a'), exact, filled(9000, 'b')}, []int{9000, p, 9000}, map[int]*byte{1: &exact[0]}},
		{"many small tags", many, []int{p, p, p, p, p, p, 100000 - 6*p}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := &writeLog{}
			want := bytes.Join(c.bufs, nil)
			n, err := writePieces(w, c.bufs)
			if err != nil || n != len(want) {
				t.Fatalf("writePieces = %d, %v; want %d, nil", n, err, len(want))
			}
			if got := bytes.Join(w.writes, nil); !bytes.Equal(got, want) {
				t.Fatal("the bytes written differ from the window")
			}
			var sizes []int
			for _, p := range w.writes {
				sizes = append(sizes, len(p))
			}
			if !slices.Equal(sizes, c.sizes) {
				t.Fatalf("Write sizes %v, want %v", sizes, c.sizes)
			}
			for i := range w.writes {
				if own, ok := c.own[i]; ok && w.at[i] != own {
					t.Errorf("write %d: a copy of the big tag, want the tag's own bytes", i)
				}
			}
		})
	}
}

// TestWritePiecesStopsAtError checks that a failed Write ends the window and counts
// only what was written.
func TestWritePiecesStopsAtError(t *testing.T) {
	w := &writeLog{failAt: 2}
	n, err := writePieces(w, net.Buffers{filled(pieceSize, 'a'), filled(pieceSize, 'b'), filled(pieceSize, 'c')}) // in parts
	if err == nil || n != pieceSize || len(w.writes) != 2 {
		t.Fatalf("writePieces = %d, %v after %d writes; want %d, an error, 2 writes", n, err, len(w.writes), pieceSize)
	}
}

// TestGatherTakesItsSizeClass checks that a window is gathered whole, into a buffer
// of the smallest size class that holds it, so that it never grows while copying.
func TestGatherTakesItsSizeClass(t *testing.T) {
	for _, c := range []struct {
		tags    []int
		wantCap int
	}{
		{[]int{400}, 16 << 10},
		{[]int{400, 9000, 400, 8000}, 32 << 10},
		{[]int{16 << 10}, 16 << 10},
		{[]int{16<<10 + 1}, 32 << 10},
		{[]int{150 << 10, 400}, 256 << 10},
		{[]int{1 << 20}, 1 << 20},
		{[]int{1 << 20, 1}, 1<<20 + 1}, // past the largest class: its own size
	} {
		var bufs net.Buffers
		for i, n := range c.tags {
			bufs = append(bufs, filled(n, byte('a'+i)))
		}
		for range 2 { // once from an empty pool, once maybe from a released buffer
			b := gather(bufs)
			if !bytes.Equal(*b, bytes.Join(bufs, nil)) {
				t.Fatalf("%v: gathered bytes differ", c.tags)
			}
			if cap(*b) != c.wantCap {
				t.Errorf("%v: buffer of %d bytes, want %d", c.tags, cap(*b), c.wantCap)
			}
			release(b)
		}
	}
}
