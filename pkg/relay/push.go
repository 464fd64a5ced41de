package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flvcdn/flvcdn/pkg/cluster"
	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/origin"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// Push is one --push setting: the streams it matches and where they go.
type Push struct {
	// Match is "app/stream" or a path.Match pattern such as "app/*".
	Match string
	// Target is an rtmp:// URL in which "{stream}" stands for the stream part of the name.
	Target string
}

// ParsePush parses "app/stream=rtmp://host/app/key" or "app/*=rtmp://host/app/{stream}".
func ParsePush(v string) (Push, error) {
	m, target, ok := strings.Cut(v, "=")
	if !ok || target == "" {
		return Push{}, fmt.Errorf("--push %q: want app/stream=rtmp://host/app/key", v)
	}
	if _, err := path.Match(m, "a/b"); err != nil || strings.Count(m, "/") != 1 {
		return Push{}, fmt.Errorf("--push %q: %q is not an app/stream name or pattern", v, m)
	}
	if !strings.ContainsAny(m, "*?[") {
		if _, err := stream.ParseName(m); err != nil {
			return Push{}, fmt.Errorf("--push %q: %w", v, err)
		}
	}
	u, err := url.Parse(strings.ReplaceAll(target, "{stream}", "x"))
	if err != nil {
		return Push{}, fmt.Errorf("--push %q: %w", v, err)
	}
	if _, _, _, _, err := rtmpTarget(u); err != nil {
		return Push{}, fmt.Errorf("--push %q: %w", v, err)
	}
	return Push{Match: m, Target: target}, nil
}

// PushConfig tunes a Pusher. Zero values take the documented defaults.
type PushConfig struct {
	Pushes []Push
	// Linger keeps a push connection open this long after its stream's session
	// ended, so that a publisher reconnecting to this origin continues the same
	// outgoing stream, timestamps continuous. Default 10s.
	Linger time.Duration
	// MinBackoff and MaxBackoff bound the wait between connection attempts,
	// doubled after each failure. Defaults 1s and 30s.
	MinBackoff, MaxBackoff time.Duration
	// Queue bounds the tags waiting for the connection; past it tags are dropped
	// until the next keyframe. Default 2048.
	Queue int
}

// Pusher forwards the streams an origin owns to other RTMP servers. It gives each
// matching session a tap (Open); one connection per stream and target outlives a
// session by Linger.
type Pusher struct {
	cfg PushConfig
	log *slog.Logger
	ctx context.Context
	wg  sync.WaitGroup

	mu      sync.Mutex
	streams map[string]*pushStream // by name + " " + target
}

// NewPusher returns a Pusher whose connections live until ctx ends.
func NewPusher(ctx context.Context, cfg PushConfig, log *slog.Logger) *Pusher {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&cfg.Linger, 10*time.Second)
	set(&cfg.MinBackoff, time.Second)
	set(&cfg.MaxBackoff, 30*time.Second)
	if cfg.Queue <= 0 {
		cfg.Queue = 2048
	}
	return &Pusher{cfg: cfg, log: log, ctx: ctx, streams: map[string]*pushStream{}}
}

// Open returns the taps that push a new session of name (none when no --push matches).
func (p *Pusher) Open(name stream.Name) []origin.Tap {
	var taps []origin.Tap
	for _, ps := range p.cfg.Pushes {
		if ok, _ := path.Match(ps.Match, string(name)); !ok {
			continue
		}
		target := strings.ReplaceAll(ps.Target, "{stream}", name.Stream())
		u, err := url.Parse(target)
		if err != nil {
			continue // checked by ParsePush
		}
		key := string(name) + " " + target
		p.mu.Lock()
		s := p.streams[key]
		if s == nil {
			s = &pushStream{p: p, name: name, url: u, items: make(chan pushItem, p.cfg.Queue)}
			s.status.Target = u.Redacted()
			p.streams[key] = s
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				s.run(p.ctx)
				p.mu.Lock()
				if p.streams[key] == s {
					delete(p.streams, key)
				}
				p.mu.Unlock()
			}()
		}
		s.attach()
		p.mu.Unlock()
		taps = append(taps, &pushTap{s: s})
	}
	return taps
}

// Status returns every push by stream name.
func (p *Pusher) Status() map[string][]cluster.Push {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string][]cluster.Push{}
	for _, s := range p.streams {
		out[string(s.name)] = append(out[string(s.name)], s.snapshot())
	}
	return out
}

// Wait returns once every push connection has closed (after ctx ended).
func (p *Pusher) Wait() { p.wg.Wait() }

// pushItem is one tag of a session.
type pushItem struct {
	tag flv.Tag
}

// pushStream is one stream pushed to one target; run owns the connection.
type pushStream struct {
	p    *Pusher
	name stream.Name
	url  *url.URL

	items    chan pushItem
	sessions atomic.Int32  // attached sessions, counted under p.mu
	starts   atomic.Uint64 // sessions ever attached: a change is a new session
	lost     atomic.Bool   // a tag was dropped: resume at a keyframe

	mu     sync.Mutex
	status cluster.Push
}

// attach counts a new session (under p.mu, so a stream about to close sees it).
// Its tags follow through the queue, after the count.
func (s *pushStream) attach() {
	s.sessions.Add(1)
	s.starts.Add(1)
}

func (s *pushStream) snapshot() cluster.Push {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// pushTap feeds one session into its pushStream.
type pushTap struct {
	s    *pushStream
	once sync.Once
}

func (t *pushTap) Tag(tag flv.Tag) {
	select {
	case t.s.items <- pushItem{tag: tag}:
	default:
		t.s.lost.Store(true)
		pushDropped.Inc()
	}
}

func (t *pushTap) End() { t.once.Do(func() { t.s.sessions.Add(-1) }) }

// run keeps the connection to the target and writes the tags on one timeline.
func (s *pushStream) run(ctx context.Context) {
	cfg := s.p.cfg
	log := s.p.log.With("stream", s.name, "target", s.url.Redacted())
	var (
		conn                     *rtmpClient
		dead                     chan struct{}
		timeline                 flv.Timeline
		meta, videoHdr, audioHdr flv.Tag
		hasVideo, needKey        bool
		backoff                  = cfg.MinBackoff
		nextDial                 time.Time
		idleSince                time.Time
		seen                     uint64
	)
	setStatus := func(f func(*cluster.Push)) {
		s.mu.Lock()
		f(&s.status)
		s.mu.Unlock()
	}
	drop := func(err error) {
		if conn != nil {
			_ = conn.Close()
			conn, dead = nil, nil
			pushConnected.Dec()
		}
		pushErrors.Inc()
		setStatus(func(st *cluster.Push) { st.Connected = false; st.Errors++; st.LastError = err.Error() })
		log.Warn("push failed", "err", err, "retry_in", backoff)
		nextDial = time.Now().Add(backoff)
		backoff = min(2*backoff, cfg.MaxBackoff)
	}
	defer func() {
		if conn != nil {
			_ = conn.Close()
			pushConnected.Dec()
		}
		log.Info("push stopped")
	}()
	write := func(typ byte, ts uint32, body []byte) {
		if conn == nil {
			return
		}
		if err := conn.writeTag(typ, ts, body); err != nil {
			drop(fmt.Errorf("write: %w", err))
			return
		}
		n := uint64(flv.TagHeaderSize + len(body))
		pushBytes.Add(float64(n))
		setStatus(func(st *cluster.Push) { st.Bytes += n })
	}
	dial := func() {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		c, name, err := dialRTMP(dctx, s.url, 0)
		if err == nil {
			if err = c.publish(dctx, name); err != nil {
				_ = c.Close()
			}
		}
		if err != nil {
			drop(err)
			return
		}
		conn, dead = c, make(chan struct{})
		go func(c *rtmpClient, dead chan struct{}) {
			// The server's acknowledgements and pings are read and dropped; a read
			// error means the connection is gone.
			for {
				if _, err := c.r.next(); err != nil {
					close(dead)
					return
				}
			}
		}(c, dead)
		pushConnected.Inc()
		setStatus(func(st *cluster.Push) { st.Connected = true })
		log.Info("push connected")
		backoff = cfg.MinBackoff
		needKey = true
		for _, h := range []flv.Tag{meta, videoHdr, audioHdr} {
			if h != nil {
				write(h.Type(), timeline.Now(), h.Body())
			}
		}
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-dead:
			drop(errors.New("connection closed by the target"))
		case now := <-tick.C:
			if s.sessions.Load() == 0 {
				if idleSince.IsZero() {
					idleSince = now
				}
				if now.Sub(idleSince) >= cfg.Linger {
					s.p.mu.Lock()
					idle := s.sessions.Load() == 0
					if idle {
						// Forget the stream now, under the lock, so that a session
						// opening from here on gets a new one.
						for k, v := range s.p.streams {
							if v == s {
								delete(s.p.streams, k)
							}
						}
					}
					s.p.mu.Unlock()
					if idle {
						return
					}
				}
				continue
			}
			idleSince = time.Time{}
			if conn == nil && now.After(nextDial) && (videoHdr != nil || audioHdr != nil) {
				dial()
			}
		case it := <-s.items:
			if n := s.starts.Load(); n != seen {
				// A new session (a publisher reconnected): one timeline across them.
				seen = n
				timeline.Splice()
				meta, videoHdr, audioHdr, hasVideo = nil, nil, nil, false
				needKey = true
			}
			t := it.tag
			kind := flv.Classify(t.Type(), t.Body())
			switch kind {
			case flv.KindMetadata:
				meta = t
				if md, err := flv.ParseMetadata(t.Body()); err == nil && md.HasVideo() {
					hasVideo = true
				}
				write(t.Type(), timeline.Now(), t.Body())
				continue
			case flv.KindVideoHeader:
				videoHdr, hasVideo = t, true
				write(t.Type(), timeline.Now(), t.Body())
				continue
			case flv.KindAudioHeader:
				audioHdr = t
				write(t.Type(), timeline.Now(), t.Body())
				continue
			}
			if s.lost.Swap(false) {
				needKey = true
			}
			if t.Type() == flv.TypeVideo {
				hasVideo = true
			}
			if needKey {
				if kind != flv.KindKeyframe && (hasVideo || t.Type() != flv.TypeAudio) {
					continue // resume at a keyframe (audio-only streams resume at once)
				}
				needKey = false
			}
			ts := timeline.Map(t.Timestamp())
			write(t.Type(), ts, t.Body())
			if conn != nil && len(s.items) == 0 {
				if err := conn.flush(); err != nil {
					drop(fmt.Errorf("write: %w", err))
				}
			}
		}
	}
}
