// Package origin owns the live streams published to one origin process: for each,
// the publishing session (an actor, see Stream), its join caches (metadata, sequence
// headers, current GOP), its bus outlet, and its claim in the registry.
//
// Ingest (package rtmp, or the file source) fills each tag straight into a frame
// from Stream.Alloc; from then on the same bytes are published live, kept in the GOP
// cache and replayed in snapshots. This package never talks RTMP or NATS (package
// bus does) and never serves viewers. Timestamps pass through as the publisher sent
// them; edges put them on one continuous timeline (flv.Timeline).
package origin

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/hook"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// Registry is the part of the registry an origin uses.
type Registry interface {
	ClaimStream(ctx context.Context, stream string, o registry.Owner, ttl time.Duration) error
	ReleaseStream(ctx context.Context, stream string, o registry.Owner) error
	Heartbeat(ctx context.Context, info registry.OriginInfo, claims []registry.Claim, ttl time.Duration) ([]error, error)
	PublishEvent(ctx context.Context, ev registry.Event) error
}

// Errors a publisher can be refused with.
var (
	ErrDraining     = errors.New("origin is draining: publish to another origin")
	ErrUnauthorized = errors.New("publish key missing or wrong")
	ErrTooMany      = errors.New("origin is at its publisher limit")
	// ErrDenied: the publish callback did not allow it; the error's text ends with its reason.
	ErrDenied = errors.New("publish denied")
)

// Config tunes an Origin. Zero values take the documented defaults.
type Config struct {
	// ID names this origin in the registry and on the bus (pod name).
	ID string
	// Addr is advertised in the liveness record (informational).
	Addr string
	// TTL of stream claims and of the liveness record; heartbeats run every TTL/3.
	// It bounds failover time when an origin dies without Kubernetes noticing. Default 3s.
	TTL time.Duration
	// PublishSecret, when set, requires publishers to present stream.PublishKey.
	PublishSecret string
	// MaxPublishers bounds concurrent publishers (0 = unlimited).
	MaxPublishers int
	// ClaimWait is how long a publish waits for a stream held by another origin,
	// in case that origin is dead and its claim about to lapse. Default TTL + 1s.
	ClaimWait time.Duration
	// StaleAfter: a publisher silent this long is replaced by a new one of the
	// same stream on this origin (an encoder reconnecting). Default 2s.
	StaleAfter time.Duration
	// GOPMaxBytes and GOPMaxFrames cap the GOP cache. Past either, the cache is
	// dropped until the next keyframe (new viewers then wait for it). Defaults 16 MiB, 2000 tags.
	GOPMaxBytes  int
	GOPMaxFrames int
	// Hook, when set, is asked before each publish (after the key check: both must
	// pass) and told of each unpublish. Nil: no callbacks.
	Hook *hook.Client
	// Taps, when set, gives each new session its taps (recording, push). Nil: none.
	Taps TapFactory
}

func (c *Config) defaults() {
	if c.TTL <= 0 {
		c.TTL = 3 * time.Second
	}
	if c.ClaimWait <= 0 {
		c.ClaimWait = c.TTL + time.Second
	}
	if c.StaleAfter <= 0 {
		c.StaleAfter = 2 * time.Second
	}
	if c.GOPMaxBytes <= 0 {
		c.GOPMaxBytes = 16 << 20
	}
	if c.GOPMaxFrames <= 0 {
		c.GOPMaxFrames = 2000
	}
}

// Origin holds the streams published here. Its map of sessions is the only state
// behind its mutex, and no network call is ever made while holding it.
type Origin struct {
	cfg Config
	bus *bus.Publisher
	reg Registry
	log *slog.Logger
	ctx context.Context // lifetime of the session actors

	mu       sync.Mutex
	streams  map[stream.Name]*entry
	draining bool
	wg       sync.WaitGroup
}

// entry is a name's slot: reserved while the registry is asked, then started.
type entry struct {
	s       *Stream
	started bool // claimed and running: the heartbeat refreshes it
}

// New returns an Origin whose session actors live until ctx ends. Call Run to keep
// its registry records alive.
func New(ctx context.Context, cfg Config, pub *bus.Publisher, reg Registry, log *slog.Logger) (*Origin, error) {
	cfg.defaults()
	if cfg.ID != pub.Origin() {
		return nil, fmt.Errorf("origin: id %q differs from the bus publisher's %q", cfg.ID, pub.Origin())
	}
	return &Origin{cfg: cfg, bus: pub, reg: reg, log: log, ctx: ctx, streams: map[stream.Name]*entry{}}, nil
}

// PublishRequest is a publisher asking to publish: the stream, its key, and what the
// publish callback is told about the publisher.
type PublishRequest struct {
	Name     stream.Name
	Key      string
	ClientIP string
	// Query is the raw query string of the publish URL (platforms pass their tokens in it).
	Query string

	action    string // the callback's action: hook.Publish unless set (Pull)
	claimOnce bool   // ask the registry once instead of waiting ClaimWait (Pull)
}

// Publish starts a publishing session for name. key is checked when a secret is set.
// The caller feeds tags with Alloc/Write (or WriteTag) and must Close the stream
// when the publisher leaves.
func (o *Origin) Publish(ctx context.Context, name stream.Name, key string) (*Stream, error) {
	return o.Accept(ctx, PublishRequest{Name: name, Key: key})
}

// Accept is Publish for a publisher described by req (package rtmp's, through cmd/origin).
func (o *Origin) Accept(ctx context.Context, req PublishRequest) (*Stream, error) {
	return o.publish(ctx, req, o.cfg.Hook)
}

// publish starts a session; h (nil: none) is asked once the name is reserved, so that
// an allowed publish that fails later is still followed by its unpublish.
func (o *Origin) publish(ctx context.Context, req PublishRequest, h *hook.Client) (*Stream, error) {
	name, key := req.Name, req.Key
	if o.cfg.PublishSecret != "" && !stream.CheckPublishKey(o.cfg.PublishSecret, name, key) {
		publishRefused.WithLabelValues("auth").Inc()
		return nil, ErrUnauthorized
	}
	o.mu.Lock()
	switch {
	case o.draining:
		o.mu.Unlock()
		publishRefused.WithLabelValues("draining").Inc()
		return nil, ErrDraining
	case o.cfg.MaxPublishers > 0 && len(o.streams) >= o.cfg.MaxPublishers:
		o.mu.Unlock()
		publishRefused.WithLabelValues("limit").Inc()
		return nil, ErrTooMany
	case o.streams[name] != nil:
		old := o.streams[name].s
		o.mu.Unlock()
		// A publisher whose connection died without a FIN still holds the stream
		// until its read timeout. If it has gone silent, the newcomer (most likely
		// the same encoder reconnecting) replaces it; a live one is never displaced.
		if old == nil || !old.silentFor(o.cfg.StaleAfter) || !o.awaitGone(ctx, old) {
			publishRefused.WithLabelValues("taken").Inc()
			return nil, fmt.Errorf("%s: %w", name, registry.ErrTaken)
		}
		return o.publish(ctx, req, h)
	}
	e := &entry{}
	o.streams[name] = e // reserve the name while the callback and the registry are asked
	o.mu.Unlock()

	session := randomID()
	action := req.action
	if action == "" {
		action = hook.Publish
	}
	ev := hook.Event{Action: action, App: name.App(), Stream: name.Stream(), ClientIP: req.ClientIP,
		Query: req.Query, Session: strconv.FormatUint(session, 16)}
	if h != nil {
		if d, _ := h.Call(ctx, ev); !d.Allow {
			o.unreserve(name, e)
			publishRefused.WithLabelValues("hook").Inc()
			return nil, fmt.Errorf("%w: %s", ErrDenied, d.Reason)
		}
	}
	allowedButFailed := func() {
		if h != nil {
			h.Notify(ev.Ended(hook.Unpublish, 0, 0))
		}
	}
	out, err := o.bus.Open(string(name), session)
	if err != nil {
		o.unreserve(name, e)
		allowedButFailed()
		return nil, fmt.Errorf("publish %s: %w", name, err)
	}
	s := newStream(o, name, out)
	if h != nil {
		s.hook, s.hookEv = h, ev
	}
	o.mu.Lock()
	e.s = s
	o.mu.Unlock()
	claim := o.claim
	if req.claimOnce {
		claim = o.claimOnce
	}
	if err := claim(ctx, s); err != nil {
		o.unreserve(name, e)
		allowedButFailed()
		_ = out.End()
		if errors.Is(err, registry.ErrTaken) {
			publishRefused.WithLabelValues("taken").Inc()
		}
		return nil, fmt.Errorf("claim %s: %w", name, err)
	}
	if o.cfg.Taps != nil {
		s.taps = o.cfg.Taps(SessionInfo{Name: name, Session: s.owner.Session})
	}
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		s.run(o.ctx)
	}()
	o.mu.Lock()
	e.started = true
	o.mu.Unlock()
	o.event(ctx, registry.EventPublish, s)
	streamsGauge.Inc()
	o.log.Info("publish started", "stream", name, "session", out.Session().String())
	return s, nil
}

// claim asks the registry for the stream. While another origin holds it, it keeps
// asking for up to ClaimWait: when that origin died, its claim lapses within one
// TTL (sooner when the Kubernetes janitor purges it) and this publisher takes over,
// instead of being refused and having to reconnect. A live owner keeps its stream.
func (o *Origin) claim(ctx context.Context, s *Stream) error {
	deadline := time.Now().Add(o.cfg.ClaimWait)
	for {
		err := o.reg.ClaimStream(ctx, string(s.name), s.owner, o.cfg.TTL)
		if !errors.Is(err, registry.ErrTaken) || !time.Now().Before(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// awaitGone kicks a silent publisher and waits for its session to close.
func (o *Origin) awaitGone(ctx context.Context, old *Stream) bool {
	o.log.Warn("replacing a silent publisher", "stream", old.name, "session", old.out.Session().String())
	old.kick()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	select {
	case <-old.released:
		return true
	case <-ctx.Done():
		return false
	}
}

func (o *Origin) unreserve(name stream.Name, e *entry) {
	o.mu.Lock()
	if o.streams[name] == e {
		delete(o.streams, name)
	}
	o.mu.Unlock()
}

// release forgets a closed session and releases its claim. The session leaves the
// map before the registry is asked, so a heartbeat that re-claims it concurrently
// sees it gone and releases that claim itself (see heartbeat).
func (o *Origin) release(ctx context.Context, s *Stream) {
	o.mu.Lock()
	e := o.streams[s.name]
	started := e != nil && e.s == s && e.started
	if e != nil && e.s == s {
		delete(o.streams, s.name)
	}
	o.mu.Unlock()
	if !started {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, o.cfg.TTL)
	defer cancel()
	if err := o.reg.ReleaseStream(ctx, string(s.name), s.owner); err != nil && !errors.Is(err, registry.ErrNotOwner) {
		o.log.Warn("stream claim not released", "stream", s.name, "err", err)
	}
	o.event(ctx, registry.EventUnpublish, s)
	streamsGauge.Dec()
	st := s.Stats()
	s.reportEnd()
	o.log.Info("publish ended", "stream", s.name, "session", s.out.Session().String(), "tags", st.Tags)
}

func (o *Origin) event(ctx context.Context, k registry.EventKind, s *Stream) {
	ev := registry.Event{Kind: k, Stream: string(s.name), Origin: o.cfg.ID, Session: s.owner.Session, At: time.Now()}
	if err := o.reg.PublishEvent(context.WithoutCancel(ctx), ev); err != nil {
		o.log.Warn("registry event not sent", "kind", k, "stream", s.name, "err", err)
	}
}

// Drain refuses new publishes and marks this origin draining in the registry.
// Current publishers keep streaming.
func (o *Origin) Drain(ctx context.Context) {
	o.mu.Lock()
	o.draining = true
	o.mu.Unlock()
	o.heartbeat(ctx)
}

// Draining reports whether Drain was called.
func (o *Origin) Draining() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.draining
}

// Streams returns how many streams are being published here.
func (o *Origin) Streams() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.streams)
}

// Sessions returns the figures of every started session.
func (o *Origin) Sessions() []Stats {
	o.mu.Lock()
	list := make([]*Stream, 0, len(o.streams))
	for _, e := range o.streams {
		if e.started {
			list = append(list, e.s)
		}
	}
	o.mu.Unlock()
	out := make([]Stats, len(list))
	for i, s := range list {
		out[i] = s.Stats()
	}
	return out
}

// Kick disconnects the publisher of name if it publishes here; it reports whether it did.
func (o *Origin) Kick(name stream.Name) bool {
	o.mu.Lock()
	e := o.streams[name]
	o.mu.Unlock()
	if e == nil || e.s == nil || !e.started {
		return false
	}
	o.log.Info("publisher kicked by an operator", "stream", name)
	e.s.Kick()
	return true
}

// Wait returns once every session actor has exited (after the origin's context ended).
func (o *Origin) Wait() { o.wg.Wait() }

// Run keeps the liveness record and the stream claims alive until ctx ends.
func (o *Origin) Run(ctx context.Context) error {
	t := time.NewTicker(o.cfg.TTL / 3)
	defer t.Stop()
	o.heartbeat(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			o.heartbeat(ctx)
		}
	}
}

// heartbeat writes the liveness record and refreshes every claim in one registry
// call bounded by TTL/2, so that one slow answer cannot outlive the claims it was
// meant to keep. A claim that vanished (registry restarted, or purged) is claimed
// again; one that another origin holds now means this publisher lost the stream,
// so it is disconnected.
func (o *Origin) heartbeat(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, o.cfg.TTL/2)
	defer cancel()
	o.mu.Lock()
	info := registry.OriginInfo{ID: o.cfg.ID, Addr: o.cfg.Addr, Draining: o.draining, Updated: time.Now()}
	var live []*Stream
	var claims []registry.Claim
	for name, e := range o.streams {
		if e.started {
			live = append(live, e.s)
			claims = append(claims, registry.Claim{Stream: string(name), Owner: e.s.owner})
		}
	}
	o.mu.Unlock()
	res, err := o.reg.Heartbeat(ctx, info, claims, o.cfg.TTL)
	heartbeats.Inc()
	if err != nil {
		heartbeatErrors.Inc()
		o.log.Warn("heartbeat failed", "streams", len(claims), "err", err)
		return
	}
	for i, s := range live {
		if errors.Is(res[i], registry.ErrNotOwner) {
			o.reclaim(ctx, s)
		}
	}
}

// reclaim claims again a stream whose claim vanished while its session is live.
func (o *Origin) reclaim(ctx context.Context, s *Stream) {
	err := o.reg.ClaimStream(ctx, string(s.name), s.owner, o.cfg.TTL)
	switch {
	case errors.Is(err, registry.ErrTaken):
		o.log.Warn("stream claimed elsewhere: disconnecting publisher", "stream", s.name)
		s.kick()
		return
	case err != nil:
		o.log.Warn("stream claim not restored", "stream", s.name, "err", err)
		return
	}
	o.mu.Lock()
	e := o.streams[s.name]
	current := e != nil && e.s == s
	o.mu.Unlock()
	if !current {
		// The session closed while we re-claimed: its own release may have run
		// before our claim, so release again (compare-and-delete: harmless if not ours).
		_ = o.reg.ReleaseStream(ctx, string(s.name), s.owner)
		return
	}
	o.log.Info("stream claim restored", "stream", s.name)
	o.event(ctx, registry.EventPublish, s)
}

func randomID() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails on Linux
	return binary.BigEndian.Uint64(b[:])
}
