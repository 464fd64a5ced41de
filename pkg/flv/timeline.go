package flv

// Timeline turns the raw 32-bit timestamps of one publishing session into a
// monotonic timeline starting at zero. It is the one place where publisher jitter,
// 32-bit wrap-around, encoders that start high and backwards steps are corrected.
//
// Rules: the first tag maps to Start; forward deltas up to MaxJump are kept as they
// are; a small backwards step (audio/video interleave jitter) is clamped to the last
// output; a larger jump either way is a discontinuity and is bridged by Gap.
type Timeline struct {
	// Start is the output timestamp of the first tag.
	Start uint32
	// MaxJump is the largest forward step (ms) kept as is; default 10 s.
	MaxJump int64
	// MaxBack is the largest backwards step (ms) clamped rather than treated as a discontinuity; default 1 s.
	MaxBack int64
	// Gap is the step (ms) inserted at a discontinuity; default 40 ms (one frame at 25 fps).
	Gap int64

	started bool
	lastRaw uint32
	ext     int64 // raw timestamp unwrapped to 64 bits
	offset  int64 // output = ext + offset
	lastOut int64
	// Discontinuities counts the jumps that were bridged.
	Discontinuities int
}

// Map returns the output timestamp for a raw one.
func (t *Timeline) Map(raw uint32) uint32 {
	if !t.started {
		t.started = true
		t.lastRaw = raw
		t.ext = int64(raw)
		t.offset = int64(t.Start) - t.ext
		t.lastOut = int64(t.Start)
		return t.Start
	}
	maxJump, maxBack, gap := t.MaxJump, t.MaxBack, t.Gap
	if maxJump <= 0 {
		maxJump = 10_000
	}
	if maxBack <= 0 {
		maxBack = 1_000
	}
	if gap <= 0 {
		gap = 40
	}
	// A signed 32-bit difference unwraps the 2^32 ms wrap-around.
	delta := int64(int32(raw - t.lastRaw))
	t.lastRaw = raw
	t.ext += delta
	out := t.ext + t.offset
	switch {
	case out > t.lastOut+maxJump || out < t.lastOut-maxBack:
		t.Discontinuities++
		t.offset = t.lastOut + gap - t.ext
		out = t.lastOut + gap
	case out < t.lastOut:
		out = t.lastOut
	}
	t.lastOut = out
	return uint32(out)
}
