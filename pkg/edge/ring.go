package edge

import (
	"sync/atomic"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// entry is one tag in a stream's ring. Entries are immutable once published.
type entry struct {
	idx uint64 // position in the stream (edge-local, never reused)
	tag flv.Tag
	key bool   // a keyframe (or, for audio-only streams, any tag): a viewer may start here
	cum uint64 // bytes of all tags up to and including this one
	// track is the video track of a multitrack stream this tag belongs to, or
	// allTracks: only viewers of that track are sent it.
	track int16
}

// ring is a single-producer, many-reader buffer of the latest tags of a stream.
// The stream actor appends; each viewer reads from its own cursor without locks.
// An entry a viewer needs may have been overwritten: the viewer then skips ahead.
type ring struct {
	slots []atomic.Pointer[entry]
	mask  uint64
	head  atomic.Uint64 // index of the next entry to be written
	cum   uint64        // producer-only running byte count
}

func newRing(size int) *ring {
	n := 1
	for n < size {
		n <<= 1
	}
	return &ring{slots: make([]atomic.Pointer[entry], n), mask: uint64(n - 1)}
}

// push appends a tag for every viewer; producer only.
func (r *ring) push(t flv.Tag, key bool) *entry { return r.pushTrack(t, key, allTracks) }

// pushTrack appends a tag for the viewers of one track (or allTracks); producer only.
func (r *ring) pushTrack(t flv.Tag, key bool, track int16) *entry {
	i := r.head.Load()
	r.cum += uint64(len(t))
	e := &entry{idx: i, tag: t, key: key, cum: r.cum, track: track}
	r.slots[i&r.mask].Store(e)
	r.head.Store(i + 1)
	return e
}

// at returns entry i, or nil when it was overwritten or not written yet.
func (r *ring) at(i uint64) *entry {
	e := r.slots[i&r.mask].Load()
	if e == nil || e.idx != i {
		return nil
	}
	return e
}
