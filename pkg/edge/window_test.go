package edge

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestWindowPolicyRule(t *testing.T) {
	p := NewWindowPolicy(60 * time.Millisecond)
	for _, c := range []struct {
		viewers float64
		want    time.Duration
	}{
		{0, time.Millisecond}, {10, time.Millisecond}, {100, 3200 * time.Microsecond},
		{1000, 32 * time.Millisecond}, {1875, 60 * time.Millisecond}, {2000, 60 * time.Millisecond}, {1e6, 60 * time.Millisecond},
	} {
		if got := p.Target(c.viewers); got != c.want {
			t.Errorf("Target(%v) = %s, want %s", c.viewers, got, c.want)
		}
	}
}

// drive feeds load(t) to a policy every WindowSample for d and returns the window
// after each sample.
func drive(p *WindowPolicy, d time.Duration, load func(time.Duration) int) []time.Duration {
	t0 := time.Unix(1000, 0)
	var out []time.Duration
	for at := time.Duration(0); at <= d; at += WindowSample {
		out = append(out, p.Update(t0.Add(at), load(at)))
	}
	return out
}

// changes returns the indexes where the window changed.
func changes(ws []time.Duration) []int {
	var out []int
	for i := 1; i < len(ws); i++ {
		if ws[i] != ws[i-1] {
			out = append(out, i)
		}
	}
	return out
}

// A step in the load moves the window one way only, in a bounded number of
// changes, each at least the band, and settles on the rule's value.
func TestWindowPolicyStep(t *testing.T) {
	for _, c := range []struct {
		name     string
		from, to int
		settled  time.Duration // want, within the band
		exact    bool
		rising   bool
		maxSteps int
	}{
		{"100 to 2000", 100, 2000, 60 * time.Millisecond, true, true, 12},
		{"2000 to 100", 2000, 100, 3200 * time.Microsecond, false, false, 12},
		{"0 to 1000", 0, 1000, 32 * time.Millisecond, false, true, 16},
		{"1000 to 0", 1000, 0, time.Millisecond, true, false, 16},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := NewWindowPolicy(60 * time.Millisecond)
			stepAt := 20 * time.Second
			ws := drive(p, 60*time.Second, func(at time.Duration) int {
				if at < stepAt {
					return c.from
				}
				return c.to
			})
			before := int(stepAt / WindowSample)
			if ch := changes(ws[before/2 : before]); len(ch) != 0 {
				t.Fatalf("window still changing before the step under a constant load: %v", ws[before/2:before])
			}
			after := ws[before-1:]
			ch := changes(after)
			if len(ch) == 0 || len(ch) > c.maxSteps {
				t.Fatalf("%d changes after the step, want 1..%d: %v", len(ch), c.maxSteps, after)
			}
			for _, i := range ch {
				prev, cur := after[i-1], after[i]
				if (cur > prev) != c.rising {
					t.Fatalf("window went %s -> %s: not monotonic after a step (%v)", prev, cur, after)
				}
				d := cur - prev
				if d < 0 {
					d = -d
				}
				atBound := cur == p.Min || cur == p.Max
				if !atBound && (d < time.Millisecond || float64(d) <= p.Band*float64(prev)) {
					t.Fatalf("change %s -> %s is inside the dead band", prev, cur)
				}
			}
			// Settled within 8 time constants, and stays.
			settle := int(8 * p.Smooth / WindowSample)
			if ch[len(ch)-1] > settle {
				t.Fatalf("last change %s after the step, want within %s", time.Duration(ch[len(ch)-1])*WindowSample, 8*p.Smooth)
			}
			got := after[len(after)-1]
			if c.exact && got != c.settled {
				t.Fatalf("settled at %s, want %s", got, c.settled)
			}
			if lo, hi := time.Duration(float64(c.settled)/(1+p.Band)), time.Duration(float64(c.settled)*(1+p.Band)); got < lo || got > hi {
				t.Fatalf("settled at %s, want %s within the band", got, c.settled)
			}
		})
	}
}

// A load that wobbles (viewers joining and leaving at random around a level)
// does not move a settled window, and a load that flaps between two levels
// faster than the smoothing moves it no more than one step would.
func TestWindowPolicyNoOscillation(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, level := range []int{50, 300, 1000, 1875} {
		p := NewWindowPolicy(60 * time.Millisecond)
		ws := drive(p, 120*time.Second, func(time.Duration) int { return level - level/10 + r.IntN(level/5+1) })
		if ch := changes(ws[100:]); len(ch) != 0 {
			t.Errorf("level %d ±10%%: %d changes after settling: %v", level, len(ch), ws[100:])
		}
	}
	p := NewWindowPolicy(60 * time.Millisecond)
	ws := drive(p, 120*time.Second, func(at time.Duration) int {
		if (at/(300*time.Millisecond))%2 == 0 {
			return 100
		}
		return 2000
	})
	if ch := changes(ws); len(ch) > 12 {
		t.Errorf("load flapping 100/2000 every 300ms: %d window changes, want at most 12: %v", len(ch), ws)
	}
	if ch := changes(ws[100:]); len(ch) != 0 {
		t.Errorf("load flapping 100/2000 every 300ms: window still changing after 10s: %v", ws[100:])
	}
}

func TestWindowPolicyFixed(t *testing.T) {
	p := NewWindowPolicy(60 * time.Millisecond)
	p.Min = p.Max // Config.FixedWindow
	for _, w := range drive(p, 10*time.Second, func(at time.Duration) int { return int(at / time.Millisecond) }) {
		if w != 60*time.Millisecond {
			t.Fatalf("fixed window moved to %s", w)
		}
	}
}
