package flv

// Timeline puts one stream's tags on one continuous, never-decreasing millisecond
// timeline, whatever its publishers do. It is the one place where timestamps are
// normalised: the edge's stream actor applies it once per stream (not per viewer),
// because the edge is the only place that sees every change of publishing session,
// whether a publisher reconnected or another origin took over. Origins forward the
// publisher's timestamps untouched.
//
// The rule:
//   - The first tag keeps its own timestamp.
//   - Within a session, a forward step of up to MaxJump is kept as it is; a
//     backwards step of up to MaxBack (audio/video interleave jitter) is clamped to
//     the last output; a larger jump either way (an encoder restarting its clock)
//     is a discontinuity, bridged by Gap. 32-bit wrap-around is unwrapped.
//   - After Splice (a new session), the next media tag continues at the last
//     output plus Gap, and the new session's steps follow from there.
//   - Headers (metadata, sequence headers) take the last output (Now) and move
//     nothing.
//
// The zero Timeline is ready to use.
type Timeline struct {
	started bool
	splice  bool
	lastRaw uint32
	ext     int64 // raw timestamp unwrapped to 64 bits
	offset  int64 // output = ext + offset
	lastOut int64
}

// The rule's bounds, in milliseconds.
const (
	// MaxJump is the largest forward step kept as is.
	MaxJump = 10_000
	// MaxBack is the largest backwards step clamped rather than bridged.
	MaxBack = 1_000
	// Gap is the step inserted at a discontinuity or a splice: one frame at 25 fps.
	Gap = 40
)

// Begin starts a timeline that has seen no tag at raw, the timestamp of the media
// tag that will come first, so that headers sent before it take its time rather
// than zero. Once started it does nothing.
func (t *Timeline) Begin(raw uint32) {
	if !t.started {
		t.Map(raw)
	}
}

// Splice marks a change of publishing session: the next Map starts a new base.
func (t *Timeline) Splice() { t.splice = t.started }

// Now returns the last output timestamp (0 before the first tag): the time a
// header takes.
func (t *Timeline) Now() uint32 { return uint32(t.lastOut) }

// Map returns the output timestamp of a media tag with raw timestamp raw.
func (t *Timeline) Map(raw uint32) uint32 {
	switch {
	case !t.started:
		t.started = true
		t.lastRaw, t.ext, t.offset, t.lastOut = raw, int64(raw), 0, int64(raw)
		return raw
	case t.splice:
		t.splice = false
		t.lastRaw, t.ext = raw, int64(raw)
		t.offset = t.lastOut + Gap - t.ext
		t.lastOut += Gap
		return uint32(t.lastOut)
	}
	// A signed 32-bit difference unwraps the 2^32 ms wrap-around.
	t.ext += int64(int32(raw - t.lastRaw))
	t.lastRaw = raw
	out := t.ext + t.offset
	switch {
	case out > t.lastOut+MaxJump || out < t.lastOut-MaxBack:
		t.offset = t.lastOut + Gap - t.ext
		out = t.lastOut + Gap
	case out < t.lastOut:
		out = t.lastOut
	}
	t.lastOut = out
	return uint32(out)
}
