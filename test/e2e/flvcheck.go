// Package e2e runs flvcdn as real processes (nats-server, redis-server, origin, edge)
// and proves the user stories with real clients: ffmpeg publishing over RTMP, ffprobe,
// headless Chromium with mpegts.js, and the strict FLV checker in this file.
//
// The checker is the only non-test code here; everything else lives in _test files.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// Checker validates an HTTP-FLV stream tag by tag against what a viewer is promised:
//
//   - the header flags name exactly the tracks expected;
//   - every PreviousTagSize matches (flv.Reader does this);
//   - the first tag is onMetaData;
//   - the first video tag is a sequence header, and the first video frame after it is a
//     keyframe (no inter frame before the first keyframe);
//   - the first AAC audio tag is a sequence header;
//   - no audio frame precedes the first keyframe when the stream has video (the GOP is
//     sent from its keyframe);
//   - timestamps never decrease within the audio track or within the video track;
//   - tag types are audio, video or script, with stream id 0.
//
// It is pure: feed it Header then Tag; Report says what it saw.
type Checker struct {
	WantAudio, WantVideo bool

	r         Report
	started   bool
	sawKey    bool
	lastVideo uint32
	lastAudio uint32
	sawVideo  bool
	sawAudio  bool
	lastFrame uint32 // timestamp of the last video frame that is not a header
	sawFrame  bool
}

// Report counts what a Checker saw.
type Report struct {
	Flags                      byte
	Bytes                      int64
	Tags, Video, Audio, Script int
	Metadata                   int
	VideoHeaders, AudioHeaders int
	Keyframes                  int
	// VideoAfterKey counts video frames since the last keyframe (inclusive).
	VideoAfterKey int
	// FirstVideoTS and LastVideoTS bound the video timestamps seen (ms).
	FirstVideoTS, LastVideoTS uint32
	// FirstAudioTS and LastAudioTS bound the audio timestamps seen (ms).
	FirstAudioTS, LastAudioTS uint32
	// MaxVideoStep is the largest forward step between video tags (ms).
	MaxVideoStep uint32
	// Head lists the kinds of the first few tags, for messages.
	Head []string
	// Elapsed is the time from the response headers to the end of reading.
	Elapsed time.Duration
}

func (r Report) String() string {
	return fmt.Sprintf("flags=0x%02x tags=%d (video %d, audio %d, script %d) keyframes=%d headers v%d/a%d metadata=%d bytes=%d video ts %d..%d audio ts %d..%d max video step %dms in %v; head %s",
		r.Flags, r.Tags, r.Video, r.Audio, r.Script, r.Keyframes, r.VideoHeaders, r.AudioHeaders, r.Metadata,
		r.Bytes, r.FirstVideoTS, r.LastVideoTS, r.FirstAudioTS, r.LastAudioTS, r.MaxVideoStep,
		r.Elapsed.Round(time.Millisecond), strings.Join(r.Head, ","))
}

// ErrEnded reports a response that ended cleanly, at a tag boundary.
var ErrEnded = errors.New("stream ended")

// ErrViolation marks a stream that breaks the viewer contract (as opposed to an I/O error).
var ErrViolation = errors.New("flv contract violation")

func (c *Checker) violation(format string, args ...any) error {
	return fmt.Errorf("%w: tag #%d: %s", ErrViolation, c.r.Tags, fmt.Sprintf(format, args...))
}

// Header checks the FLV header flags.
func (c *Checker) Header(flags byte) error {
	c.r.Flags = flags
	var want byte
	if c.WantAudio {
		want |= flv.FlagAudio
	}
	if c.WantVideo {
		want |= flv.FlagVideo
	}
	if flags != want {
		return fmt.Errorf("%w: header flags 0x%02x, want 0x%02x", ErrViolation, flags, want)
	}
	return nil
}

// Report returns the counts so far.
func (c *Checker) Report() Report {
	r := c.r
	r.Head = append([]string(nil), c.r.Head...)
	return r
}

// Tag checks one complete tag (as returned by flv.Reader.ReadTag).
func (c *Checker) Tag(t flv.Tag) error {
	c.r.Tags++
	c.r.Bytes += int64(len(t))
	typ, ts, body := t.Type(), t.Timestamp(), t.Body()
	kind := flv.Classify(typ, body)
	if len(c.r.Head) < 8 {
		c.r.Head = append(c.r.Head, describe(typ, kind, ts))
	}
	if t[8] != 0 || t[9] != 0 || t[10] != 0 {
		return c.violation("stream id %x, want 0", t[8:11])
	}
	first := !c.started
	c.started = true
	if first && kind != flv.KindMetadata {
		return c.violation("first tag is %s, want onMetaData", describe(typ, kind, ts))
	}
	switch typ {
	case flv.TypeScript:
		c.r.Script++
		if kind == flv.KindMetadata {
			c.r.Metadata++
			if _, err := flv.ParseMetadata(body); err != nil {
				return c.violation("onMetaData does not parse: %v", err)
			}
		}
	case flv.TypeVideo:
		return c.video(kind, ts, body)
	case flv.TypeAudio:
		return c.audio(kind, ts, body)
	default:
		return c.violation("tag type %d", typ)
	}
	return nil
}

func (c *Checker) video(kind flv.Kind, ts uint32, body []byte) error {
	if !c.WantVideo {
		return c.violation("video tag in a stream announced without video")
	}
	c.r.Video++
	if !c.sawVideo {
		if kind != flv.KindVideoHeader {
			return c.violation("first video tag is %s, want a sequence header", kind)
		}
		c.sawVideo = true
		c.r.FirstVideoTS = ts
	} else if ts < c.lastVideo {
		return c.violation("video timestamp went back from %d to %d ms", c.lastVideo, ts)
	}
	c.lastVideo = ts
	if kind != flv.KindVideoHeader {
		if c.sawFrame {
			c.r.MaxVideoStep = max(c.r.MaxVideoStep, ts-c.lastFrame)
		}
		c.sawFrame, c.lastFrame = true, ts
	}
	c.r.LastVideoTS = ts
	switch kind {
	case flv.KindVideoHeader:
		c.r.VideoHeaders++
	case flv.KindKeyframe:
		c.r.Keyframes++
		c.sawKey = true
		c.r.VideoAfterKey = 1
	case flv.KindOther:
		if len(body) > 0 && body[0]>>4 == 5 { // video info/command frame: no picture
			return nil
		}
		if !c.sawKey {
			return c.violation("video inter frame at %d ms before the first keyframe", ts)
		}
		c.r.VideoAfterKey++
	}
	return nil
}

func (c *Checker) audio(kind flv.Kind, ts uint32, body []byte) error {
	if !c.WantAudio {
		return c.violation("audio tag in a stream announced without audio")
	}
	c.r.Audio++
	if !c.sawAudio {
		if len(body) > 0 && body[0]>>4 == flv.AudioAAC && kind != flv.KindAudioHeader {
			return c.violation("first AAC audio tag is not the AudioSpecificConfig")
		}
		c.sawAudio = true
		c.r.FirstAudioTS = ts
	} else if ts < c.lastAudio {
		return c.violation("audio timestamp went back from %d to %d ms", c.lastAudio, ts)
	}
	c.lastAudio = ts
	c.r.LastAudioTS = ts
	if kind == flv.KindAudioHeader {
		c.r.AudioHeaders++
		return nil
	}
	if c.WantVideo && !c.sawKey {
		return c.violation("audio frame at %d ms before the first video keyframe (a join must start at the GOP's keyframe)", ts)
	}
	return nil
}

func describe(typ byte, kind flv.Kind, ts uint32) string {
	name := map[byte]string{flv.TypeAudio: "audio", flv.TypeVideo: "video", flv.TypeScript: "script"}[typ]
	if name == "" {
		name = fmt.Sprintf("type%d", typ)
	}
	if kind != flv.KindOther {
		name += "/" + kind.String()
	}
	return fmt.Sprintf("%s@%d", name, ts)
}

// CheckReader reads a whole FLV byte stream through the Checker until EOF, an error, or
// maxTags tags (0 = no limit). A clean EOF is returned as io.EOF so callers can decide
// whether an ending stream is acceptable.
func CheckReader(r io.Reader, c *Checker, maxTags int) error {
	fr := flv.NewReader(r, 0)
	if err := fr.ReadHeader(); err != nil {
		return err
	}
	if err := c.Header(fr.Flags); err != nil {
		return err
	}
	for maxTags <= 0 || c.r.Tags < maxTags {
		t, err := fr.ReadTag()
		if err != nil {
			return err
		}
		if err := c.Tag(t); err != nil {
			return err
		}
	}
	return nil
}

// httpClient is the client of every viewer: it reports a server that never answers
// with headers, and leaves the body as the server sent it (no transparent gzip).
var httpClient = &http.Client{Transport: &http.Transport{
	ResponseHeaderTimeout: 10 * time.Second,
	DisableCompression:    true,
}}

// ViewOptions says what a Viewer expects and when it stops by itself.
type ViewOptions struct {
	WantAudio, WantVideo bool
	// Duration stops the viewer after this long (0 = until Stop or MaxTags).
	Duration time.Duration
	// MaxTags stops the viewer after this many tags (0 = no limit).
	MaxTags int
	// MaxStall is the longest wait for a tag before the viewer fails (default 5 s).
	MaxStall time.Duration
	// Header is added to the request.
	Header http.Header
}

// Viewer is one HTTP-FLV client whose every byte goes through a Checker.
type Viewer struct {
	URL    string
	Resp   *http.Response
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	checker  Checker
	err      error // first failure; nil while fine
	stopped  atomic.Bool
	stalled  atomic.Bool
	tags     atomic.Int64
	video    atomic.Int64
	keys     atomic.Int64
	afterKey atomic.Int64
	start    time.Time
	end      time.Time
}

// StartViewer requests url and, when the answer is 200 video/x-flv, starts checking the
// body in the background. Errors in the request or status are returned at once.
func StartViewer(ctx context.Context, url string, o ViewOptions) (*Viewer, error) {
	if o.MaxStall <= 0 {
		o.MaxStall = 5 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	for k, vs := range o.Header {
		req.Header[k] = vs
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("GET %s: status %d, body %q", url, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "video/x-flv" {
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("GET %s: Content-Type %q, want video/x-flv", url, ct)
	}
	v := &Viewer{URL: url, Resp: resp, cancel: cancel, done: make(chan struct{}), start: time.Now()}
	v.checker = Checker{WantAudio: o.WantAudio, WantVideo: o.WantVideo}
	go v.run(resp.Body, o)
	return v, nil
}

func (v *Viewer) run(body io.ReadCloser, o ViewOptions) {
	defer close(v.done)
	defer body.Close()
	stall := time.AfterFunc(o.MaxStall, func() { v.stalled.Store(true); v.cancel() })
	defer stall.Stop()
	var limit <-chan time.Time
	if o.Duration > 0 {
		tm := time.NewTimer(o.Duration)
		defer tm.Stop()
		limit = tm.C
	}
	go func() {
		select {
		case <-limit:
			v.stopped.Store(true)
			v.cancel()
		case <-v.done:
		}
	}()
	fr := flv.NewReader(body, 0)
	err := fr.ReadHeader()
	if err == nil {
		v.mu.Lock()
		err = v.checker.Header(fr.Flags)
		v.checker.r.Bytes += flv.HeaderSize + flv.TrailerSize
		v.mu.Unlock()
		if err != nil {
			v.peek(fr)
		}
	}
	for err == nil {
		var t flv.Tag
		t, err = fr.ReadTag()
		if err != nil {
			break
		}
		stall.Reset(o.MaxStall)
		v.mu.Lock()
		err = v.checker.Tag(t)
		r := v.checker.r
		v.mu.Unlock()
		v.tags.Store(int64(r.Tags))
		v.video.Store(int64(r.Video))
		v.keys.Store(int64(r.Keyframes))
		v.afterKey.Store(int64(r.VideoAfterKey))
		if err == nil && o.MaxTags > 0 && r.Tags >= o.MaxTags {
			v.stopped.Store(true)
			break
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.end = time.Now()
	switch {
	case v.stopped.Load() && !errors.Is(err, ErrViolation):
		// we ended it: a read error after our own cancel is the normal way out
	case v.stalled.Load():
		v.err = fmt.Errorf("stalled: no tag for %v after %d tags", o.MaxStall, v.checker.r.Tags)
	case errors.Is(err, io.EOF):
		v.err = fmt.Errorf("%w (EOF) after %d tags", ErrEnded, v.checker.r.Tags)
	default:
		v.err = err
	}
}

// peek records what the first few tags are after a bad header, so that the failure
// message says more than the flags.
func (v *Viewer) peek(fr *flv.Reader) {
	for i := 0; i < 8; i++ {
		t, err := fr.ReadTag()
		if err != nil {
			return
		}
		v.mu.Lock()
		v.checker.r.Head = append(v.checker.r.Head, describe(t.Type(), flv.Classify(t.Type(), t.Body()), t.Timestamp()))
		v.mu.Unlock()
	}
}

// Tags, VideoTags and Keyframes count what has been read so far.
func (v *Viewer) Tags() int { return int(v.tags.Load()) }

// VideoTags counts video tags read so far.
func (v *Viewer) VideoTags() int { return int(v.video.Load()) }

// Keyframes counts keyframes read so far.
func (v *Viewer) Keyframes() int { return int(v.keys.Load()) }

// VideoSinceKeyframe counts video frames since the last keyframe (inclusive).
func (v *Viewer) VideoSinceKeyframe() int { return int(v.afterKey.Load()) }

// Done is closed when the viewer stops reading, for whatever reason.
func (v *Viewer) Done() <-chan struct{} { return v.done }

// Err returns the failure so far, or nil.
func (v *Viewer) Err() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.err
}

// Report returns the counts so far.
func (v *Viewer) Report() Report {
	v.mu.Lock()
	defer v.mu.Unlock()
	r := v.checker.Report()
	end := v.end
	if end.IsZero() {
		end = time.Now()
	}
	r.Elapsed = end.Sub(v.start)
	return r
}

// Wait blocks until the viewer stops by itself (Duration, MaxTags or a failure) or ctx
// ends, and returns its report and failure.
func (v *Viewer) Wait(ctx context.Context) (Report, error) {
	select {
	case <-v.done:
	case <-ctx.Done():
		v.Stop()
		return v.Report(), fmt.Errorf("viewer still running: %w", ctx.Err())
	}
	return v.Report(), v.Err()
}

// Stop ends the viewer (closing its connection) and returns its report and failure.
func (v *Viewer) Stop() (Report, error) {
	v.stopped.Store(true)
	v.cancel()
	<-v.done
	return v.Report(), v.Err()
}

// WaitTags waits until pred holds on the viewer or the viewer fails or ctx ends.
func (v *Viewer) WaitTags(ctx context.Context, what string, pred func(v *Viewer) bool) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if pred(v) {
			return nil
		}
		select {
		case <-v.done:
			if pred(v) {
				return nil
			}
			return fmt.Errorf("viewer ended before %s: %v (%s)", what, v.Err(), v.Report())
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (%s)", what, ctx.Err(), v.Report())
		case <-tick.C:
		}
	}
}

// CheckURL views url for o.Duration or o.MaxTags and returns the report; any contract
// violation, stall or early end is an error.
func CheckURL(ctx context.Context, url string, o ViewOptions) (Report, error) {
	if o.Duration <= 0 && o.MaxTags <= 0 {
		return Report{}, errors.New("CheckURL needs a Duration or MaxTags")
	}
	v, err := StartViewer(ctx, url, o)
	if err != nil {
		return Report{}, err
	}
	return v.Wait(ctx)
}
