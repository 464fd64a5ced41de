package edge

import (
	"math"
	"time"
)

// WindowPolicy chooses the merge window from the edge's load: how long a stream
// may hold new tags before its viewers are woken to write them, each viewer then
// writing everything queued in one writev.
//
// The rule: every viewer on the edge adds PerViewer to the window, between Min and
// Max (Config.MergeWindow):
//
//	window = clamp(Min, PerViewer × viewers, Max)
//
// so the edge spends a bounded number of wake-ups and writes per second
// (viewers ÷ window = 1/PerViewer, 31,250/s with the defaults) however many viewers
// it has: a light edge writes each tag almost as it arrives, a loaded one merges
// more per write and its CPU per viewer falls towards the floor. With the defaults
// (32 µs, 1 ms, 60 ms) 100 viewers get 3.2 ms and the ceiling is reached at 1,875.
//
// The load it reads is the number of viewers, not a measured cost: viewers come
// and go for their own reasons, not because of the window, so there is no feedback
// loop through which the window could drive itself into oscillation (a rule fed by
// measured CPU would be: a longer window lowers CPU, which shortens the window…).
// Churn is kept out by smoothing and a dead band:
//   - viewers are smoothed by an exponential moving average with time constant
//     Smooth, sampled every Sample;
//   - the window changes only when the target is off by more than Band (relative)
//     and by at least a millisecond.
//
// After a step in the load the average moves monotonically towards the new
// count, so the window moves in one direction only and settles in a bounded
// number of changes, each at least Band; a load that only wobbles within the band
// never changes it (TestWindowPolicy*). Between the bounds the settled window may
// stay up to Band away from the rule's value; at a bound it is exact.
type WindowPolicy struct {
	Min, Max  time.Duration
	PerViewer time.Duration
	Smooth    time.Duration
	Band      float64

	avg     float64
	window  time.Duration
	last    time.Time
	started bool
}

// Defaults of the policy (Max is Config.MergeWindow).
const (
	DefaultMinWindow   = time.Millisecond
	DefaultPerViewer   = 32 * time.Microsecond
	DefaultWindowDecay = time.Second
	DefaultWindowBand  = 0.2
	// WindowSample is how often the hub reads its viewer count into the policy.
	WindowSample = 100 * time.Millisecond
)

// NewWindowPolicy returns the policy with its defaults and the given ceiling.
func NewWindowPolicy(max time.Duration) *WindowPolicy {
	p := &WindowPolicy{Min: DefaultMinWindow, Max: max, PerViewer: DefaultPerViewer,
		Smooth: DefaultWindowDecay, Band: DefaultWindowBand}
	if p.Min > max {
		p.Min = max
	}
	p.window = p.Min
	return p
}

// Target is the window for a steady load of viewers (no smoothing, no band).
func (p *WindowPolicy) Target(viewers float64) time.Duration {
	w := time.Duration(viewers * float64(p.PerViewer))
	return min(max(w, p.Min), p.Max)
}

// Window returns the current window.
func (p *WindowPolicy) Window() time.Duration { return p.window }

// Update feeds the viewer count seen at now and returns the window to use.
func (p *WindowPolicy) Update(now time.Time, viewers int) time.Duration {
	v := float64(viewers)
	if !p.started {
		p.avg, p.last, p.started = v, now, true
	} else if dt := now.Sub(p.last); dt > 0 {
		a := 1 - math.Exp(-float64(dt)/float64(p.Smooth))
		p.avg += a * (v - p.avg)
		p.last = now
	}
	t := p.Target(p.avg)
	d := t - p.window
	if d < 0 {
		d = -d
	}
	switch {
	case d >= time.Millisecond && float64(d) > p.Band*float64(p.window):
		p.window = t
	case t == p.Max || t == p.Min:
		p.window = t // a bound is a settled value: no reason to stop short of it
	}
	return p.window
}
