// Package relay moves live streams between flvcdn and other servers: it pulls
// streams from upstream RTMP or HTTP-FLV servers into an origin, exactly as if they
// had been published there (Puller), and pushes streams an origin owns to other RTMP
// servers (Pusher). It also has the edge's side of pulling on demand (OnDemand).
//
// It never serves viewers and never touches the registry's claims itself: a pulled
// stream is claimed by package origin like any publish, and a push runs only where
// the stream's session runs, on the origin that owns it.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/origin"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// Pull modes.
const (
	// ModeOnDemand pulls a stream from its first viewer anywhere in the cluster until a
	// linger period after its last.
	ModeOnDemand = "on-demand"
	// ModeAlways pulls a stream while any origin configured with it is up.
	ModeAlways = "always"
)

// Pull is one --pull setting: a stream name and its upstream.
type Pull struct {
	Name stream.Name
	URL  *url.URL
}

// ParsePull parses "app/stream=URL" with an rtmp://, http:// or https:// URL.
func ParsePull(v string) (Pull, error) {
	n, raw, ok := strings.Cut(v, "=")
	if !ok || raw == "" {
		return Pull{}, fmt.Errorf("--pull %q: want app/stream=URL", v)
	}
	name, err := stream.ParseName(n)
	if err != nil {
		return Pull{}, fmt.Errorf("--pull %q: %w", v, err)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Pull{}, fmt.Errorf("--pull %q: %w", v, err)
	}
	switch u.Scheme {
	case "rtmp":
		if _, _, _, _, err := rtmpTarget(u); err != nil {
			return Pull{}, fmt.Errorf("--pull %q: %w", v, err)
		}
	case "http", "https":
		if u.Host == "" {
			return Pull{}, fmt.Errorf("--pull %q: want http://host/path.flv", v)
		}
	default:
		return Pull{}, fmt.Errorf("--pull %q: scheme %q: want rtmp, http or https", v, u.Scheme)
	}
	return Pull{Name: name, URL: u}, nil
}

// PullConfig tunes a Puller. Zero values take the documented defaults.
type PullConfig struct {
	Pulls []Pull
	// Mode is ModeOnDemand (default) or ModeAlways.
	Mode string
	// Linger: an on-demand pull stops this long after the edges last reported a
	// viewer of it. Default 10s.
	Linger time.Duration
	// MinBackoff and MaxBackoff bound the wait between upstream attempts, doubled
	// after each failure. Defaults 1s and 30s.
	MinBackoff, MaxBackoff time.Duration
	// DialTimeout bounds connecting to the upstream up to its first answer. Default 10s.
	DialTimeout time.Duration
	// Idle drops an upstream that sends nothing for this long. Default 10s.
	Idle time.Duration
}

// CheckMode validates a --pull-mode value.
func CheckMode(m string) error {
	if m != ModeOnDemand && m != ModeAlways {
		return fmt.Errorf("--pull-mode %q: want %s or %s", m, ModeOnDemand, ModeAlways)
	}
	return nil
}

func (c *PullConfig) defaults() {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.Mode == "" {
		c.Mode = ModeOnDemand
	}
	set(&c.Linger, 10*time.Second)
	set(&c.MinBackoff, time.Second)
	set(&c.MaxBackoff, 30*time.Second)
	set(&c.DialTimeout, 10*time.Second)
	set(&c.Idle, 10*time.Second)
}

// Origin is the part of an origin a Puller drives.
type Origin interface {
	Pull(ctx context.Context, name stream.Name) (*origin.Stream, error)
	Draining() bool
}

// Lookup finds a stream's owner in the registry.
type Lookup interface {
	LookupStream(ctx context.Context, stream string) (registry.Owner, error)
}

// Requests delivers on-demand pull requests (bus.Cluster.HandlePulls).
type Requests func(names []string, f func(name string, reply func())) (stop func(), err error)

// Puller runs the --pull streams of one origin.
type Puller struct {
	cfg    PullConfig
	o      Origin
	reg    Lookup
	demand func(name string) int
	log    *slog.Logger
	pulls  map[string]*pullState
}

type pullState struct {
	Pull
	requests chan func()
	running  atomic.Bool
}

// NewPuller returns a Puller. demand reports the viewers edges hold for a name
// (cluster.View.Demand).
func NewPuller(cfg PullConfig, o Origin, reg Lookup, demand func(name string) int, log *slog.Logger) *Puller {
	cfg.defaults()
	p := &Puller{cfg: cfg, o: o, reg: reg, demand: demand, log: log, pulls: map[string]*pullState{}}
	for _, pl := range cfg.Pulls {
		p.pulls[string(pl.Name)] = &pullState{Pull: pl, requests: make(chan func(), 64)}
	}
	return p
}

// Run pulls until ctx ends. Requests (on-demand mode; each reaches one origin of
// the queue group) start a pull at once; a periodic check (every second) starts one
// that nobody owns while it is wanted: always, or, on demand, while edges report
// viewers of it (a takeover after the pulling origin died). Concurrent attempts of
// several origins are settled by the registry claim.
func (p *Puller) Run(ctx context.Context, requests Requests) error {
	if len(p.pulls) == 0 {
		return nil
	}
	if p.cfg.Mode == ModeOnDemand {
		names := make([]string, 0, len(p.pulls))
		for n := range p.pulls {
			names = append(names, n)
		}
		stop, err := requests(names, func(name string, reply func()) {
			ps := p.pulls[name]
			switch {
			case ps == nil || p.o.Draining():
			case ps.running.Load():
				reply()
			default:
				select {
				case ps.requests <- reply:
				default: // a burst: the ones queued already will start it
				}
			}
		})
		if err != nil {
			return err
		}
		var once sync.Once
		unsubscribe := func() { once.Do(stop) }
		defer unsubscribe()
		// A draining origin leaves the queue group, so requests go to the others.
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if p.o.Draining() {
						unsubscribe()
						return
					}
				}
			}
		}()
	}
	done := make(chan struct{})
	for _, ps := range p.pulls {
		go func() {
			defer func() { done <- struct{}{} }()
			p.loop(ctx, ps)
		}()
	}
	for range p.pulls {
		<-done
	}
	return nil
}

// loop waits until the stream is wanted and nobody has it, then pulls it.
func (p *Puller) loop(ctx context.Context, ps *pullState) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	// A start that failed (callback denied, registry down) is tried again by the
	// periodic check only after a backoff; a request from an edge tries at once.
	var notBefore time.Time
	backoff := p.cfg.MinBackoff
	// The periodic check starts a pull only when two checks in a row (a second
	// apart) found no owner: a live owner's claim can vanish for a moment (a
	// registry restarted empty, until the owner's next heartbeat restores it), and a
	// rival claiming then would cut the owner off from its upstream.
	unowned := 0
	for {
		var waiting []func()
		select {
		case <-ctx.Done():
			return
		case r := <-ps.requests:
			waiting = append(waiting, r)
		case <-tick.C:
		}
	more:
		for {
			select {
			case r := <-ps.requests:
				waiting = append(waiting, r)
			default:
				break more
			}
		}
		if p.o.Draining() {
			continue
		}
		if len(waiting) == 0 {
			if time.Now().Before(notBefore) || (p.cfg.Mode == ModeOnDemand && p.demand(string(ps.Name)) == 0) {
				unowned = 0
				continue
			}
			lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := p.reg.LookupStream(lctx, string(ps.Name))
			cancel()
			if !errors.Is(err, registry.ErrNotFound) {
				unowned = 0
				continue // owned elsewhere (or the registry cannot say)
			}
			if unowned++; unowned < 2 {
				continue
			}
		}
		unowned = 0
		started, upErr := p.session(ctx, ps, waiting)
		switch {
		case started:
			notBefore, backoff = time.Time{}, p.cfg.MinBackoff
		default:
			if upErr != nil {
				p.failed(p.log.With("stream", ps.Name, "upstream", ps.URL.Redacted()), upErr, backoff)
			}
			notBefore = time.Now().Add(backoff)
			backoff = min(2*backoff, p.cfg.MaxBackoff)
		}
	}
}

var (
	errNoViewers = errors.New("no viewers anywhere for the linger period")
	errKicked    = errors.New("stream claim lost or publisher kicked")
	errDraining  = errors.New("origin draining")
)

// session connects to the upstream and reads up to its first keyframe, then claims
// the stream, answers the requests, and pulls until the stream is no longer wanted,
// retrying the upstream with capped exponential backoff. Claiming with a GOP in hand
// means edges that join the new session get a keyframe at once, not an empty cache
// (and a burst later). It reports false when the pull could not start for a reason
// other than another origin holding the stream, with the upstream's error when that
// was the reason (the caller logs it with its backoff).
func (p *Puller) session(ctx context.Context, ps *pullState, waiting []func()) (bool, error) {
	log := p.log.With("stream", ps.Name, "upstream", ps.URL.Redacted())
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	started := time.Now()
	up, err := p.prime(ctx, ps.URL)
	if err != nil {
		return false, err
	}
	s, err := p.o.Pull(ctx, ps.Name)
	if err == nil || errors.Is(err, registry.ErrTaken) {
		for _, reply := range waiting {
			reply()
		}
	}
	if err != nil {
		_ = up.Close()
		if errors.Is(err, registry.ErrTaken) {
			return true, nil
		}
		log.Warn("pull not started", "err", err)
		return false, nil
	}
	ps.running.Store(true)
	pullsActive.Inc()
	watch := func(s *origin.Stream) (stop func()) {
		wctx, stop := context.WithCancel(ctx)
		go func() {
			select {
			case <-s.Kicked():
				cancel(errKicked)
			case <-wctx.Done():
			}
		}()
		return stop
	}
	unwatch := watch(s)
	defer func() {
		unwatch()
		if s != nil {
			s.Close(context.WithoutCancel(ctx))
		}
		pullsActive.Dec()
		ps.running.Store(false)
		log.Info("pull stopped", "why", context.Cause(ctx))
	}()
	log.Info("pull started", "mode", p.cfg.Mode, "since_start", time.Since(started).Round(time.Millisecond))
	go p.watch(ctx, cancel, string(ps.Name))
	backoff := p.cfg.MinBackoff
	for {
		if up == nil {
			if up, err = p.prime(ctx, ps.URL); err == nil && s == nil {
				// The upstream is back after its session ended: a new claim and session,
				// as a publisher that reconnects gets, so edges still within their
				// grace period splice onto the new connection's clock and headers.
				next, perr := p.o.Pull(ctx, ps.Name)
				if perr != nil {
					_ = up.Close()
					if !errors.Is(perr, registry.ErrTaken) { // taken: another origin pulls it now
						log.Warn("pull not resumed", "err", perr)
					}
					cancel(perr)
					return true, nil
				}
				s = next
				unwatch = watch(s)
				log.Info("upstream reconnected: new session")
			}
		}
		if err == nil {
			began := time.Now()
			var tags int
			tags, err = pump(ctx, s, up)
			_ = up.Close()
			up = nil
			if tags > 0 && ctx.Err() == nil {
				// The session ends with its upstream connection, as it does when an
				// RTMP publisher disconnects: edges start their grace period now
				// instead of waiting for their stall timer, and viewers end after
				// --grace unless the upstream comes back. The claim is released, so
				// another origin may take the pull over meanwhile.
				unwatch()
				s.Close(context.WithoutCancel(ctx))
				s = nil
			}
			if time.Since(began) > p.cfg.MaxBackoff {
				backoff = p.cfg.MinBackoff // it ran well for a while: start over
			}
		}
		if ctx.Err() != nil {
			return true, nil
		}
		p.failed(log, err, backoff)
		select {
		case <-ctx.Done():
			return true, nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, p.cfg.MaxBackoff)
	}
}

// failed logs and counts an upstream failure.
func (p *Puller) failed(log *slog.Logger, err error, retry time.Duration) {
	switch {
	case errors.Is(err, errInvalid):
		upstreamFailures.WithLabelValues("invalid").Inc()
		log.Warn("upstream sent invalid data: connection dropped", "err", err, "retry_in", retry)
	case errors.Is(err, errUpstreamEnded):
		upstreamFailures.WithLabelValues("ended").Inc()
		log.Warn("upstream ended the stream", "retry_in", retry)
	default:
		upstreamFailures.WithLabelValues("error").Inc()
		log.Warn("upstream failed", "err", err, "retry_in", retry)
	}
}

// maxPrimed bounds the tags read while waiting for the first keyframe.
const maxPrimed = 2000

// primed is an upstream connection with its first tags, up to the first keyframe
// (or the first audio frame of a stream without video), already read.
type primed struct {
	upstream
	first []primedTag
}

type primedTag struct {
	typ  byte
	ts   uint32
	body []byte
}

// prime connects to the upstream and reads up to its first keyframe, within
// DialTimeout.
func (p *Puller) prime(ctx context.Context, u *url.URL) (*primed, error) {
	dctx, cancel := context.WithTimeout(ctx, p.cfg.DialTimeout)
	defer cancel()
	up, err := dialUpstream(dctx, u, p.cfg.Idle)
	if err != nil {
		return nil, err
	}
	upstreamConnects.Inc()
	stop := context.AfterFunc(dctx, func() { _ = up.Close() })
	defer stop()
	pr := &primed{upstream: up}
	video := false
	for len(pr.first) < maxPrimed {
		typ, ts, body, err := up.next()
		if err != nil {
			_ = up.Close()
			if dctx.Err() != nil && ctx.Err() == nil {
				err = fmt.Errorf("no keyframe within %v: %w", p.cfg.DialTimeout, err)
			}
			return nil, err
		}
		pr.first = append(pr.first, primedTag{typ, ts, body})
		switch k := flv.Classify(typ, body); {
		case k == flv.KindKeyframe, typ == flv.TypeAudio && k != flv.KindAudioHeader && !video:
			return pr, nil
		case k == flv.KindVideoHeader:
			video = true
		}
	}
	return pr, nil
}

// watch cancels a pull when the origin starts draining (so that another origin takes
// it over at once), and an on-demand pull once the edges have reported no viewer of
// it for the linger period.
func (p *Puller) watch(ctx context.Context, cancel context.CancelCauseFunc, name string) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if p.o.Draining() {
				cancel(errDraining)
				return
			}
			if p.cfg.Mode != ModeOnDemand || p.demand(name) > 0 {
				last = now
			} else if now.Sub(last) >= p.cfg.Linger {
				cancel(errNoViewers)
				return
			}
		}
	}
}

// pump copies the upstream's tags into the session, the primed ones first, until
// either fails or ctx ends.
func pump(ctx context.Context, s *origin.Stream, up *primed) (int, error) {
	stop := context.AfterFunc(ctx, func() { _ = up.Close() })
	defer stop()
	n := 0
	for _, t := range up.first {
		if err := s.WriteTag(t.typ, t.ts, t.body); err != nil {
			return n, err
		}
		n++
	}
	up.first = nil
	for {
		typ, ts, body, err := up.next()
		if err != nil {
			return n, err
		}
		if err := s.WriteTag(typ, ts, body); err != nil {
			return n, err
		}
		n++
	}
}
