// Package probe checks a live FLV byte stream the way a player experiences it: the
// byte layout (header, PreviousTagSize chain), the join and splice order (sequence
// headers, then a keyframe), per-track timestamps, and timing against the wall clock
// (stalls, media time running at the wall clock's rate, audio-video drift).
//
// It owns its own FLV parsing and codec classification and must never import pkg/flv:
// it judges the product, so it must not share the product's bugs. The checker consumes
// bytes (Watch reads any io.ReadCloser); the transport that produced them (HTTP-FLV
// in http.go, WebSocket-FLV in ws.go) is separate (see Dial).
package probe

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrViolation marks a stream that breaks what a player relies on (as opposed to an
// I/O error or a stop asked for by the caller).
var ErrViolation = errors.New("flv violation")

// ErrEnded reports a response that ended cleanly at a tag boundary.
var ErrEnded = errors.New("stream ended")

// Defaults of Options.
const (
	DefaultMaxStall      = 3 * time.Second
	DefaultRateWindow    = 5 * time.Second
	DefaultRateTolerance = 0.2
	DefaultWarmup        = time.Second
	DefaultMaxDrift      = time.Second
)

// rateResetGap: a track silent for longer than this restarts its rate measurement
// (the silence itself is judged as a stall; what follows may be a catch-up burst).
const rateResetGap = time.Second

// checkpointEvery spaces the points a rate window is measured from.
const checkpointEvery = 100 * time.Millisecond

// Tracks names the tracks a stream carries.
type Tracks struct{ Audio, Video bool }

// Flags returns the FLV header's TypeFlags byte for these tracks.
func (t Tracks) Flags() byte {
	var f byte
	if t.Audio {
		f |= 4
	}
	if t.Video {
		f |= 1
	}
	return f
}

// Options say how strict a Checker is. The zero value means the defaults.
type Options struct {
	// MaxStall is the longest wait for a tag (and, per track, for that track's next
	// tag while the other keeps coming). Default 3 s.
	MaxStall time.Duration
	// RateWindow is the span of wall clock over which a track's media time must
	// advance at the wall clock's rate within RateTolerance. Default 5 s.
	RateWindow time.Duration
	// RateTolerance is the allowed relative deviation of that rate. Default 0.2.
	RateTolerance float64
	// Warmup is the wall time after the first media tag (and after every splice or
	// stall) that is not measured for rate and drift: the server may send its GOP
	// cache as fast as the network allows. Default 1 s.
	Warmup time.Duration
	// MaxDrift is the largest allowed difference between the audio and the video
	// media time, both taken against the wall clock. Default 1 s.
	MaxDrift time.Duration
	// Expect, when set, is the exact set of tracks the header flags must announce.
	Expect *Tracks
	// Strict adds flvcdn's join contract: the first tag is onMetaData and, in a
	// stream with video, no audio frame comes before the first keyframe.
	Strict bool
	// OnTag, when set, sees every tag after it was checked (on the reading
	// goroutine; Body is only valid during the call).
	OnTag func(Tag)
}

func (o Options) withDefaults() Options {
	if o.MaxStall <= 0 {
		o.MaxStall = DefaultMaxStall
	}
	if o.RateWindow <= 0 {
		o.RateWindow = DefaultRateWindow
	}
	if o.RateTolerance <= 0 {
		o.RateTolerance = DefaultRateTolerance
	}
	if o.Warmup <= 0 {
		o.Warmup = DefaultWarmup
	}
	if o.MaxDrift <= 0 {
		o.MaxDrift = DefaultMaxDrift
	}
	return o
}

// Tag is one tag as the checker saw it.
type Tag struct {
	At   time.Time // when its last byte arrived
	Type byte
	TS   uint32 // milliseconds, with the extended byte
	Class
	Body []byte
}

// Checker judges one FLV byte stream. Feed it Header, then Tag for every tag, then
// Finish; each returns the first violation (it sticks: later calls return it too). Its
// methods are safe to call from several goroutines (Report while another feeds it).
type Checker struct {
	mu         sync.Mutex
	o          Options
	start      time.Time
	r          Report
	err        error
	header     bool
	lastAt     time.Time // last tag (or the header) arrival
	tracks     [2]track  // video, audio
	epochAt    time.Time // rate and drift are measured from here (after warmup)
	kfPrev     uint32
	kfSum      uint64
	kfN        int
	frames     int    // video pictures, for fps
	firstFrame uint32 // timestamp of the first of them
}

type track struct {
	name     string
	seen     bool // any tag of this track
	data     bool // a tag that is not a sequence header (frames, even of unknown codecs)
	framed   bool // a coded frame seen
	firstTS  uint32
	lastTS   uint32
	lastAt   time.Time
	header   bool // a sequence header seen (for the current codec)
	headers  int
	needKey  bool // video: the next picture must be a keyframe
	spliceAt int  // tag number of the sequence header that set needKey after the start
	points   []point
	mediaMS  float64 // measured media time (rate), summed over measured spans
	wallMS   float64
	prev     point
	hasPrev  bool
	lastFram point // last coded frame: ts and arrival, for drift
}

type point struct {
	at time.Time
	ts int64
}

// New returns a Checker whose clock starts at start (when the request was sent).
func New(o Options, start time.Time) *Checker {
	c := &Checker{o: o.withDefaults(), start: start}
	c.tracks[0] = track{name: "video", needKey: true}
	c.tracks[1] = track{name: "audio"}
	return c
}

// Report returns what the checker has seen so far.
func (c *Checker) Report() Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.report()
}

func (c *Checker) report() Report {
	r := c.r
	r.Head = append([]string(nil), c.r.Head...)
	v, a := &c.tracks[0], &c.tracks[1]
	r.FirstVideoTS, r.LastVideoTS, r.FirstAudioTS, r.LastAudioTS = v.firstTS, v.lastTS, a.firstTS, a.lastTS
	if !c.lastAt.IsZero() {
		r.Elapsed = Millis(c.lastAt.Sub(c.start))
	}
	if span := float64(v.lastTS) - float64(c.firstFrame); span > 0 && c.frames > 1 {
		r.FPS = round2(float64(c.frames-1) / (span / 1000))
	}
	if c.kfN > 0 {
		r.KeyframeInterval = Millis(time.Duration(c.kfSum/uint64(c.kfN)) * time.Millisecond)
	}
	if d := c.lastAt.Sub(c.start); d > 0 {
		r.BitrateKbps = round2(float64(r.Bytes) * 8 / d.Seconds() / 1000)
	}
	for i := range c.tracks {
		t := &c.tracks[i]
		if t.wallMS > 0 {
			rate := round2(t.mediaMS / t.wallMS)
			if i == 0 {
				r.VideoRate = rate
			} else {
				r.AudioRate = rate
			}
		}
	}
	if c.err != nil {
		r.Violation = c.err.Error()
	}
	return r
}

func (c *Checker) fail(format string, args ...any) error {
	if c.err == nil {
		c.err = fmt.Errorf("%w: tag #%d: %s", ErrViolation, c.r.Tags, fmt.Sprintf(format, args...))
	}
	return c.err
}

// Err returns the first violation, or nil.
func (c *Checker) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Responded records the transport's answer: when the response headers arrived, the
// status and the content type.
func (c *Checker) Responded(at time.Time, status int, contentType string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.r.Status, c.r.ContentType = status, contentType
	c.r.TimeToHeaders = Millis(at.Sub(c.start))
	c.lastAt = at
}

// Header checks the FLV header's TypeFlags byte (the signature, version and offset
// are the reader's business).
func (c *Checker) Header(at time.Time, flags byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	c.header = true
	c.r.Flags = flags
	c.r.Bytes += 13
	c.r.TimeToFLVHeader = Millis(at.Sub(c.start))
	c.stall(at, "the FLV header")
	c.lastAt = at
	if c.err != nil {
		return c.err
	}
	if flags&^5 != 0 {
		return c.fail("header flags 0x%02x have reserved bits set", flags)
	}
	if c.o.Expect != nil && flags != c.o.Expect.Flags() {
		return c.fail("header flags 0x%02x, want 0x%02x", flags, c.o.Expect.Flags())
	}
	return nil
}

// stall records the wait before at and fails when it is longer than MaxStall.
func (c *Checker) stall(at time.Time, what string) {
	since := c.lastAt
	if since.IsZero() {
		since = c.start
	}
	gap := at.Sub(since)
	if gap > time.Duration(c.r.LongestStall) {
		c.r.LongestStall = Millis(gap)
	}
	if gap > c.o.MaxStall {
		c.fail("stall: waited %v for %s (max %v)", gap.Round(time.Millisecond), what, c.o.MaxStall)
	}
}

// Idle tells the checker that nothing has arrived up to now; it fails once the wait is
// longer than MaxStall. The reader calls it from a timer while a read is blocked.
func (c *Checker) Idle(now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	what := "the next tag"
	if !c.header {
		what = "the FLV header"
	} else if c.r.Tags == 0 {
		what = "the first tag"
	}
	c.stall(now, what)
	return c.err
}

// Tag checks one tag: its type, the stream id (streamID, the 24-bit field), the
// timestamp (with the extended byte) and its body.
func (c *Checker) Tag(at time.Time, typ byte, ts uint32, streamID uint32, body []byte) error {
	c.mu.Lock()
	err := c.tag(at, typ, ts, streamID, body)
	c.mu.Unlock()
	return err
}

func (c *Checker) tag(at time.Time, typ byte, ts uint32, streamID uint32, body []byte) error {
	if c.err != nil {
		return c.err
	}
	c.r.Tags++
	c.r.Bytes += int64(11 + len(body) + 4)
	cl := Classify(typ, body)
	if len(c.r.Head) < 8 {
		c.r.Head = append(c.r.Head, describe(typ, cl, ts))
	}
	if c.r.Tags == 1 {
		c.r.TimeToFirstTag = Millis(at.Sub(c.start))
	}
	quiet := !c.lastAt.IsZero() && at.Sub(c.lastAt) > rateResetGap
	c.stall(at, "the next tag")
	c.lastAt = at
	if c.err != nil {
		return c.err
	}
	if quiet && !c.epochAt.IsZero() {
		c.newEpoch(at) // after a stall (judged above) the server may catch up in a burst
	}
	if streamID != 0 {
		return c.fail("stream id %d, want 0", streamID)
	}
	if cl.Multitrack && c.o.Strict {
		// flvcdn delivers one track per viewer: players read single-track FLV only.
		return c.fail("%s at %d ms is an Enhanced RTMP multitrack message, want single-track tags", tagTypeName(typ), ts)
	}
	if c.r.Tags == 1 && c.o.Strict && cl.Kind != KindMetadata {
		return c.fail("first tag is %s, want onMetaData", describe(typ, cl, ts))
	}
	switch typ {
	case TypeScript:
		c.r.Script++
		if cl.Kind == KindMetadata {
			c.r.Metadata++
		}
		return nil
	case TypeVideo:
		if c.r.Flags&1 == 0 {
			return c.fail("video tag in a stream whose header (flags 0x%02x) announces no video", c.r.Flags)
		}
		c.r.Video++
		return c.media(0, at, ts, cl, typ)
	case TypeAudio:
		if c.r.Flags&4 == 0 {
			return c.fail("audio tag in a stream whose header (flags 0x%02x) announces no audio", c.r.Flags)
		}
		c.r.Audio++
		return c.media(1, at, ts, cl, typ)
	}
	return c.fail("tag type %d (not audio 8, video 9 or script 18)", typ)
}

func (c *Checker) media(i int, at time.Time, ts uint32, cl Class, typ byte) error {
	t := &c.tracks[i]
	if !t.seen {
		t.seen, t.firstTS = true, ts
		if i == 0 {
			c.r.VideoCodec = cl.Codec
		} else {
			c.r.AudioCodec = cl.Codec
		}
	} else if ts < t.lastTS {
		return c.fail("%s timestamp went back from %d to %d ms", t.name, t.lastTS, ts)
	}
	t.lastTS = ts
	// A track silent for long while the other one kept coming: that track stalled.
	if o := &c.tracks[1-i]; o.framed && at.Sub(o.lastAt) > c.o.MaxStall {
		return c.fail("%s stalled: no %s tag for %v while %s kept coming", o.name, o.name, at.Sub(o.lastAt).Round(time.Millisecond), t.name)
	}
	if t.framed && at.Sub(t.lastAt) > rateResetGap {
		t.points, t.hasPrev = nil, false
	}
	t.lastAt = at
	if cl.Kind != KindVideoHeader && cl.Kind != KindAudioHeader {
		t.data = true
	}
	switch cl.Kind {
	case KindVideoHeader, KindAudioHeader:
		t.headers++
		if i == 0 {
			c.r.VideoHeaders++
		} else {
			c.r.AudioHeaders++
		}
		t.header = true
		if t.headers > 1 || t.framed {
			// A new sequence header mid-stream is a splice (new session, resync): the
			// next picture must be a keyframe, and what follows may be a burst.
			if i == 0 {
				t.needKey, t.spliceAt = true, c.r.Tags
			}
			c.newEpoch(at)
		}
		return nil
	case KindVideoInfo, KindOther:
		return nil
	case KindKeyframe:
		if cl.NeedsHeader && !t.header {
			return c.fail("%s keyframe at %d ms before any %s sequence header", cl.Codec, ts, cl.Codec)
		}
		if c.r.Keyframes > 0 {
			c.kfSum += uint64(ts - c.kfPrev)
			c.kfN++
		}
		c.kfPrev = ts
		c.r.Keyframes++
		if c.r.Keyframes == 1 {
			c.r.TimeToFirstKeyframe = Millis(at.Sub(c.start))
		}
		t.needKey = false
		c.r.VideoAfterKey = 0
	case KindInter:
		if t.needKey {
			if t.spliceAt > 0 {
				return c.fail("video inter frame at %d ms after the sequence header of tag #%d (a splice) and before a keyframe", ts, t.spliceAt)
			}
			return c.fail("video inter frame at %d ms before the first keyframe", ts)
		}
	case KindAudio:
		if cl.NeedsHeader && !t.header {
			return c.fail("%s audio frame at %d ms before its sequence header", cl.Codec, ts)
		}
		if c.o.Strict && c.r.Flags&1 != 0 && c.r.Keyframes == 0 {
			return c.fail("audio frame at %d ms before the first video keyframe (a join must start at the GOP's keyframe)", ts)
		}
	}
	if i == 0 {
		if c.frames == 0 {
			c.firstFrame = ts
		}
		c.frames++
		c.r.VideoAfterKey++
	}
	if !t.framed {
		t.framed = true
		if c.epochAt.IsZero() {
			c.newEpoch(at)
		}
	}
	t.lastFram = point{at, int64(ts)}
	return c.timing(i, at, int64(ts))
}

// newEpoch restarts rate and drift measurement after a warmup.
func (c *Checker) newEpoch(at time.Time) {
	c.epochAt = at.Add(c.o.Warmup)
	for i := range c.tracks {
		c.tracks[i].points, c.tracks[i].hasPrev = nil, false
	}
}

// timing checks the rate of track i's media time against the wall clock over the last
// RateWindow, and the audio-video drift.
func (c *Checker) timing(i int, at time.Time, ts int64) error {
	t := &c.tracks[i]
	if at.Before(c.epochAt) {
		return nil
	}
	p := point{at, ts}
	if t.hasPrev {
		t.mediaMS += float64(ts - t.prev.ts)
		t.wallMS += float64(at.Sub(t.prev.at)) / float64(time.Millisecond)
	}
	t.prev, t.hasPrev = p, true
	if n := len(t.points); n == 0 || at.Sub(t.points[n-1].at) >= checkpointEvery {
		t.points = append(t.points, p)
	}
	// The newest checkpoint at least RateWindow old; older ones are no longer needed.
	k := -1
	for j := range t.points {
		if at.Sub(t.points[j].at) >= c.o.RateWindow {
			k = j
		} else {
			break
		}
	}
	if k >= 0 {
		ref := t.points[k]
		t.points = t.points[k:]
		wall := at.Sub(ref.at)
		rate := float64(ts-ref.ts) / (float64(wall) / float64(time.Millisecond))
		if c.r.RateWindows == 0 || rate < c.r.RateMin {
			c.r.RateMin = round2(rate)
		}
		if c.r.RateWindows == 0 || rate > c.r.RateMax {
			c.r.RateMax = round2(rate)
		}
		c.r.RateWindows++
		if rate < 1-c.o.RateTolerance || rate > 1+c.o.RateTolerance {
			if ts == ref.ts {
				return c.fail("%s timestamps stood still at %d ms for %v of wall clock", t.name, ts, wall.Round(time.Millisecond))
			}
			return c.fail("%s media time advanced %v in %v of wall clock (rate %.2f, want 1±%.2f)", t.name,
				time.Duration(ts-ref.ts)*time.Millisecond, wall.Round(time.Millisecond), rate, c.o.RateTolerance)
		}
	}
	// Drift: each track's media time minus its arrival time, compared between tracks.
	v, a := &c.tracks[0], &c.tracks[1]
	if v.framed && a.framed && !v.lastFram.at.Before(c.epochAt) && !a.lastFram.at.Before(c.epochAt) {
		ahead := func(p point) float64 {
			return float64(p.ts) - float64(p.at.Sub(c.start))/float64(time.Millisecond)
		}
		d := ahead(v.lastFram) - ahead(a.lastFram)
		if abs := time.Duration(max(d, -d) * float64(time.Millisecond)); abs > time.Duration(c.r.AVDriftMax) {
			c.r.AVDriftMax = Millis(abs)
			if abs > c.o.MaxDrift {
				return c.fail("audio and video drifted apart by %v (video %d ms, audio %d ms; max %v)",
					abs.Round(time.Millisecond), v.lastFram.ts, a.lastFram.ts, c.o.MaxDrift)
			}
		}
	}
	return nil
}

// Finish ends the check at the given time and judges what can only be judged at the
// end: an empty body, a header without tags, tracks announced but never sent.
func (c *Checker) Finish(at time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	if !c.header {
		return c.fail("no FLV header in %v (an empty body)", at.Sub(c.start).Round(time.Millisecond))
	}
	if c.r.Tags == 0 {
		return c.fail("only the FLV header, no tag in %v", at.Sub(c.start).Round(time.Millisecond))
	}
	// A track the header announces must play (more than its sequence header) once the
	// other has run for a while.
	for i, bit := range []byte{1, 4} {
		t, o := &c.tracks[i], &c.tracks[1-i]
		if c.r.Flags&bit != 0 && !t.data && o.data && o.lastTS-o.firstTS >= 2000 {
			return c.fail("header flags 0x%02x announce %s, but no %s frame came in %d ms of %s", c.r.Flags, t.name, t.name, o.lastTS-o.firstTS, o.name)
		}
	}
	return nil
}

func tagTypeName(typ byte) string {
	switch typ {
	case TypeVideo:
		return "video"
	case TypeAudio:
		return "audio"
	}
	return "script"
}

func describe(typ byte, cl Class, ts uint32) string {
	name := map[byte]string{TypeAudio: "audio", TypeVideo: "video", TypeScript: "script"}[typ]
	if name == "" {
		name = fmt.Sprintf("type%d", typ)
	}
	if cl.Kind != KindOther {
		name += "/" + cl.Kind.String()
	}
	return fmt.Sprintf("%s@%d", name, ts)
}

func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

// Millis is a duration that reads as milliseconds in JSON.
type Millis time.Duration

// MarshalJSON writes the duration in milliseconds.
func (m Millis) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf("%.1f", float64(m)/float64(time.Millisecond))), nil
}

// UnmarshalJSON reads milliseconds.
func (m *Millis) UnmarshalJSON(b []byte) error {
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("milliseconds %q: %w", b, err)
	}
	*m = Millis(f * float64(time.Millisecond))
	return nil
}

func (m Millis) String() string { return time.Duration(m).Round(time.Millisecond).String() }

// Report is what one connection showed. JSON names are the -json report's.
type Report struct {
	Status      int    `json:"status,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	// Times from sending the request.
	TimeToHeaders       Millis `json:"time_to_headers_ms"`
	TimeToFLVHeader     Millis `json:"time_to_flv_header_ms"`
	TimeToFirstTag      Millis `json:"time_to_first_tag_ms"`
	TimeToFirstKeyframe Millis `json:"time_to_first_keyframe_ms"`
	// Elapsed is the time to the last byte read.
	Elapsed Millis `json:"elapsed_ms"`

	Flags        byte   `json:"flags"`
	Bytes        int64  `json:"bytes"`
	Tags         int    `json:"tags"`
	Video        int    `json:"video_tags"`
	Audio        int    `json:"audio_tags"`
	Script       int    `json:"script_tags"`
	Metadata     int    `json:"metadata"`
	VideoHeaders int    `json:"video_headers"`
	AudioHeaders int    `json:"audio_headers"`
	Keyframes    int    `json:"keyframes"`
	VideoCodec   string `json:"video_codec,omitempty"`
	AudioCodec   string `json:"audio_codec,omitempty"`
	// VideoAfterKey counts video pictures since the last keyframe (inclusive).
	VideoAfterKey int `json:"-"`
	// BitrateKbps is the bytes read over the time since the request.
	BitrateKbps float64 `json:"bitrate_kbps"`
	// FPS is video pictures per second of media time.
	FPS float64 `json:"fps"`
	// KeyframeInterval is the mean media time between keyframes.
	KeyframeInterval Millis `json:"keyframe_interval_ms"`
	// LongestStall is the longest wait for the next tag (or the header).
	LongestStall Millis `json:"longest_stall_ms"`
	// VideoRate and AudioRate are media time over wall time while measured (after
	// warmups), 1.0 for a live stream; RateMin/RateMax are the extremes over
	// RateWindows windows of Options.RateWindow.
	VideoRate   float64 `json:"video_rate"`
	AudioRate   float64 `json:"audio_rate"`
	RateMin     float64 `json:"rate_min"`
	RateMax     float64 `json:"rate_max"`
	RateWindows int     `json:"rate_windows"`
	// AVDriftMax is the largest audio-video drift seen (after warmups).
	AVDriftMax Millis `json:"av_drift_max_ms"`

	FirstVideoTS, LastVideoTS uint32 `json:"-"`
	FirstAudioTS, LastAudioTS uint32 `json:"-"`
	// Head lists the first tags (kind@timestamp), for messages.
	Head []string `json:"head,omitempty"`
	// Violation is the first violation, empty when the stream conforms.
	Violation string `json:"violation,omitempty"`
}

func (r Report) String() string {
	return fmt.Sprintf("flags=0x%02x tags=%d (video %d, audio %d, script %d) keyframes=%d headers v%d/a%d metadata=%d bytes=%d "+
		"video ts %d..%d audio ts %d..%d fps=%.1f keyint=%v stall=%v rate v%.2f/a%.2f [%.2f..%.2f in %d windows] drift=%v "+
		"headers in %v, first keyframe in %v, elapsed %v; head %s",
		r.Flags, r.Tags, r.Video, r.Audio, r.Script, r.Keyframes, r.VideoHeaders, r.AudioHeaders, r.Metadata, r.Bytes,
		r.FirstVideoTS, r.LastVideoTS, r.FirstAudioTS, r.LastAudioTS, r.FPS, r.KeyframeInterval, r.LongestStall,
		r.VideoRate, r.AudioRate, r.RateMin, r.RateMax, r.RateWindows, r.AVDriftMax,
		r.TimeToHeaders, r.TimeToFirstKeyframe, r.Elapsed, strings.Join(r.Head, ","))
}
