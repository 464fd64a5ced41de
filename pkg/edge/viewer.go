package edge

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// ErrTooSlow: the viewer kept falling behind and was dropped.
var ErrTooSlow = errors.New("viewer too slow: dropped")

// audioBacklog is how many tags back an audio-only viewer starts (about 1 s of AAC).
const audioBacklog = 48

// maxPerWrite and maxBatchBytes bound one writev (the kernel takes at most 1024
// iovecs anyway); a join burst of a large GOP goes out in several.
const (
	maxPerWrite   = 1000
	maxBatchBytes = 512 << 10
)

// Viewer is one reader of a stream. Its methods are called from one goroutine (the
// viewer's writer); it reads the stream's ring through its own cursor, without locks.
type Viewer struct {
	s       *Stream
	cursor  uint64
	started bool     // cursor is at a start point (keyframe) or past it
	pre     [][]byte // FLV header and join tags, sent first
	lastCh  *chan struct{}
	skips   []time.Time
	capped  bool // the last batch stopped at a size cap with more queued
	once    sync.Once
	track   int16 // the video track this viewer gets (multitrack streams)
}

func newViewer(s *Stream, jp *joinPoint, track int16) *Viewer {
	v := &Viewer{s: s, cursor: s.ring.head.Load(), track: track}
	trackViewers.WithLabelValues(strconv.Itoa(int(track))).Inc()
	if jp != nil && jp.tracks != nil {
		v.joinTrack(jp)
	} else if jp != nil {
		v.pre = append(v.pre, jp.header)
		for _, t := range jp.tags {
			v.pre = append(v.pre, t)
		}
		if jp.ok {
			v.cursor = jp.start
		}
		if head := s.ring.head.Load(); jp.audioOnly && head > audioBacklog && v.cursor < head-audioBacklog {
			v.cursor = head - audioBacklog
		}
	}
	return v
}

// Next appends to bufs the tags due to this viewer. It returns at once with the
// join tags on the first call, then at most once per merge window with everything
// queued since. io.EOF means the stream ended and everything was delivered.
func (v *Viewer) Next(ctx context.Context, bufs net.Buffers) (net.Buffers, error) {
	n0 := len(bufs) // the caller may reserve slots (a chunk header)
	for {
		ch := v.s.notify.Load()
		var err error
		if bufs, err = v.Poll(bufs); err != nil || len(bufs) > n0 {
			return bufs, err
		}
		select {
		case <-*ch:
		case <-ctx.Done():
			return bufs, ctx.Err()
		}
	}
}

// Poll is Next without the wait, for a writer that serves many viewers from one
// goroutine: it appends what is due now (nothing between two wake-ups of the
// stream, see Wake).
func (v *Viewer) Poll(bufs net.Buffers) (net.Buffers, error) {
	n0 := len(bufs)
	ch := v.s.notify.Load()
	// A new window, or the rest of a batch that hit its size cap.
	if ch != v.lastCh || v.cursor < v.s.ring.head.Load() && v.started && v.capped {
		v.lastCh = ch
		var err error
		if bufs, err = v.collect(bufs); err != nil || len(bufs) > n0 {
			return bufs, err
		}
		if v.s.ended.Load() {
			return bufs, io.EOF
		}
	}
	return bufs, nil
}

// Behind applies the lag rule to a viewer whose writer still has bytes waiting and
// so cannot take more: more than MaxLagBytes behind the head, it skips to its
// track's newest keyframe (what it is sent next), and past MaxSkips in SkipWindow
// it reports ErrTooSlow. Without it, a viewer whose socket drains slowly but never
// stops would be judged only between its batches.
func (v *Viewer) Behind() error {
	r := v.s.ring
	head := r.head.Load()
	if !v.started || head == 0 || v.cursor >= head {
		return nil
	}
	first, last := r.at(v.cursor), r.at(head-1)
	if first == nil || (last != nil && last.cum-first.cum > uint64(v.s.hub.cfg.MaxLagBytes)) {
		return v.skip(head)
	}
	return nil
}

// Wake returns a channel that is closed at the stream's next wake-up: when Poll
// may have something again. Viewers of one Stream share it.
func (v *Viewer) Wake() <-chan struct{} { return *v.s.notify.Load() }

// Stream returns the stream this viewer reads.
func (v *Viewer) Stream() *Stream { return v.s }

func (v *Viewer) collect(bufs net.Buffers) (net.Buffers, error) {
	if v.pre != nil {
		bufs = append(bufs, v.pre...)
		v.pre = nil
	}
	r := v.s.ring
	head := r.head.Load()
	if head == 0 || v.cursor >= head {
		return bufs, nil
	}
	// A start that the ring already overwrote (audio-only backlog) moves forward.
	if oldest := head - min(head, uint64(len(r.slots))/2); v.cursor < oldest {
		if v.started {
			if err := v.skip(head); err != nil {
				return bufs, err
			}
		} else {
			v.cursor = oldest
		}
	}
	if !v.started {
		for ; v.cursor < head; v.cursor++ {
			if e := r.at(v.cursor); e != nil && e.key && v.wants(e) {
				v.started = true
				break
			}
		}
		if !v.started {
			return bufs, nil
		}
	}
	first, last := r.at(v.cursor), r.at(head-1)
	if first == nil || (last != nil && last.cum-first.cum > uint64(v.s.hub.cfg.MaxLagBytes)) {
		if err := v.skip(head); err != nil {
			return bufs, err
		}
	}
	n, size := 0, 0
	for v.cursor < head && n < maxPerWrite && size < maxBatchBytes {
		e := r.at(v.cursor)
		if e == nil {
			break // overwritten while we read: the next call skips
		}
		v.cursor++
		if !v.wants(e) {
			continue // another track's tag: not sent, not charged
		}
		bufs = append(bufs, e.tag)
		size += len(e.tag)
		n++
	}
	v.capped = v.cursor < head && (n >= maxPerWrite || size >= maxBatchBytes)
	return bufs, nil
}

// skip moves a lagging viewer to the newest keyframe (never into a GOP's middle),
// and reports ErrTooSlow when it had to skip too often.
func (v *Viewer) skip(head uint64) error {
	now := time.Now()
	cfg := v.s.hub.cfg
	kept := v.skips[:0]
	for _, t := range v.skips {
		if now.Sub(t) < cfg.SkipWindow {
			kept = append(kept, t)
		}
	}
	v.skips = append(kept, now)
	viewerSkips.Inc()
	if len(v.skips) > cfg.MaxSkips {
		viewerDrops.WithLabelValues("slow").Inc()
		return ErrTooSlow
	}
	if k := v.s.keyFor(v.track); k > 0 && k-1 > v.cursor {
		v.cursor = k - 1
		return nil
	}
	// No newer keyframe yet: wait for the next one.
	v.cursor, v.started = head, false
	return nil
}

// Close releases the viewer. It is safe to call more than once.
func (v *Viewer) Close() {
	v.once.Do(func() {
		trackViewers.WithLabelValues(strconv.Itoa(int(v.track))).Dec()
		v.s.viewerLeft()
	})
}
