// Package e2e runs flvcdn as real processes (nats-server, redis-server, origin, edge)
// and proves the user stories with real clients: ffmpeg publishing over RTMP, ffprobe,
// headless Chromium with mpegts.js, and viewers whose every byte goes through the
// conformance checker of pkg/probe (the one flvprobe uses, which never shares code with
// the product's pkg/flv).
//
// The Viewer in this file is the only non-test code here; everything else lives in
// _test files.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/flvcdn/flvcdn/pkg/probe"
)

// Report is what a viewer saw (pkg/probe's report).
type Report = probe.Report

// ErrEnded reports a response that ended cleanly, at a tag boundary.
var ErrEnded = probe.ErrEnded

// ErrViolation marks a stream that breaks the viewer contract.
var ErrViolation = probe.ErrViolation

// rateWindow is the span over which e2e viewers require media time to advance at the
// wall clock's rate (±20%). flvprobe's default is 5 s; the scenarios' viewers watch
// for a few seconds, so they measure over 2.5 s after the 1 s warmup.
const rateWindow = 2500 * time.Millisecond

// checkOptions are the probe options of every e2e viewer: strict (flvcdn's join order)
// and the tracks the header must announce.
func checkOptions(audio, video bool, maxStall time.Duration, onTag func(probe.Tag)) probe.Options {
	return probe.Options{
		MaxStall:   maxStall,
		RateWindow: rateWindow,
		Strict:     true,
		Expect:     &probe.Tracks{Audio: audio, Video: video},
		OnTag:      onTag,
	}
}

// received says what every viewer must have got, however it ended: the FLV header,
// tags, a keyframe when it expects video, and at least one measured window of media
// time advancing at the wall clock's rate (the checker fails a window that does not).
func received(r Report, wantVideo bool) error {
	switch {
	case r.Tags == 0:
		return fmt.Errorf("no tag received: %s", r)
	case wantVideo && r.Keyframes == 0:
		return fmt.Errorf("no keyframe received: %s", r)
	case r.RateWindows == 0:
		return fmt.Errorf("media time never measured against the wall clock (watched too briefly?): %s", r)
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
	// MaxStall is the longest wait for a tag before the viewer fails (default 3 s).
	MaxStall time.Duration
	// Header is added to the request.
	Header http.Header
}

// Viewer is one HTTP-FLV client whose every byte goes through a probe.Checker.
type Viewer struct {
	URL     string
	Resp    *http.Response
	checker *probe.Checker
	want    ViewOptions
	cancel  context.CancelFunc
	done    chan struct{}

	mu      sync.Mutex
	err     error // why it ended; nil while running or when we stopped it cleanly
	stopped bool
}

// StartViewer requests url and, when the answer is 200 video/x-flv, starts checking the
// body in the background. Errors in the request or status are returned at once.
func StartViewer(ctx context.Context, url string, o ViewOptions) (*Viewer, error) {
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	for k, vs := range o.Header {
		req.Header[k] = vs
	}
	began := time.Now()
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
	v := &Viewer{URL: url, Resp: resp, want: o, cancel: cancel, done: make(chan struct{})}
	var onTag func(probe.Tag)
	if o.MaxTags > 0 {
		n := 0
		onTag = func(probe.Tag) {
			if n++; n == o.MaxTags {
				v.stop()
			}
		}
	}
	v.checker = probe.New(checkOptions(o.WantAudio, o.WantVideo, o.MaxStall, onTag), began)
	v.checker.Responded(time.Now(), resp.StatusCode, resp.Header.Get("Content-Type"))
	go v.run(ctx, resp.Body, o)
	return v, nil
}

func (v *Viewer) run(ctx context.Context, body io.ReadCloser, o ViewOptions) {
	defer close(v.done)
	if o.Duration > 0 {
		t := time.AfterFunc(o.Duration, v.stop)
		defer t.Stop()
	}
	err := probe.Watch(ctx, body, v.checker)
	v.mu.Lock()
	defer v.mu.Unlock()
	if err == nil && !v.stopped {
		err = ctx.Err() // the caller's context ended, not us
	}
	v.err = err
}

// stop ends reading as a clean stop of ours.
func (v *Viewer) stop() {
	v.mu.Lock()
	v.stopped = true
	v.mu.Unlock()
	v.cancel()
}

// Tags counts the tags read so far.
func (v *Viewer) Tags() int { return v.checker.Report().Tags }

// VideoTags counts video tags read so far.
func (v *Viewer) VideoTags() int { return v.checker.Report().Video }

// Keyframes counts keyframes read so far.
func (v *Viewer) Keyframes() int { return v.checker.Report().Keyframes }

// VideoSinceKeyframe counts video pictures since the last keyframe (inclusive).
func (v *Viewer) VideoSinceKeyframe() int { return v.checker.Report().VideoAfterKey }

// Done is closed when the viewer stops reading, for whatever reason.
func (v *Viewer) Done() <-chan struct{} { return v.done }

// Err returns the failure so far, or nil. Once the viewer has stopped, a viewer that
// did not receive what every viewer must (see received) has failed too.
func (v *Viewer) Err() error {
	v.mu.Lock()
	err := v.err
	v.mu.Unlock()
	select {
	case <-v.done:
	default:
		return err
	}
	if err != nil && !errors.Is(err, ErrEnded) {
		return err
	}
	if rerr := received(v.Report(), v.want.WantVideo); rerr != nil {
		if err != nil {
			return fmt.Errorf("%w (and it ended: %v)", rerr, err)
		}
		return rerr
	}
	return err
}

// Report returns what the viewer saw so far.
func (v *Viewer) Report() Report { return v.checker.Report() }

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
	v.stop()
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
// violation, stall, early end, or a viewer that did not receive what it must, is an
// error.
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
