// Package origin owns the live streams published to one origin process: for each,
// the publishing session, its monotonic timeline, the join caches (metadata, sequence
// headers, current GOP), the NATS publication of its tags and the answers to edge
// snapshot requests, and its claim in the registry.
//
// Ingest (package rtmp, or the file source) hands each tag body to Stream.WriteTag,
// which copies it once into an immutable bus frame; from then on the same bytes are
// published live, kept in the GOP cache and replayed in snapshots. This package never
// talks RTMP and never serves viewers.
package origin

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// Registry is the part of the registry an origin uses.
type Registry interface {
	ClaimStream(ctx context.Context, stream string, o registry.Owner, ttl time.Duration) error
	RefreshStream(ctx context.Context, stream string, o registry.Owner, ttl time.Duration) error
	ReleaseStream(ctx context.Context, stream string, o registry.Owner) error
	PutOrigin(ctx context.Context, info registry.OriginInfo, ttl time.Duration) error
	PublishEvent(ctx context.Context, ev registry.Event) error
}

// Errors a publisher can be refused with.
var (
	ErrDraining     = errors.New("origin is draining: publish to another origin")
	ErrUnauthorized = errors.New("publish key missing or wrong")
	ErrTooMany      = errors.New("origin is at its publisher limit")
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

// Origin holds the streams published here.
type Origin struct {
	cfg Config
	nc  *nats.Conn
	reg Registry
	log *slog.Logger

	mu       sync.Mutex
	streams  map[stream.Name]*Stream
	draining bool
}

// New returns an Origin. Call Run to keep its registry records alive.
func New(cfg Config, nc *nats.Conn, reg Registry, log *slog.Logger) (*Origin, error) {
	cfg.defaults()
	if err := bus.ValidOrigin(cfg.ID); err != nil {
		return nil, fmt.Errorf("origin: %w", err)
	}
	return &Origin{cfg: cfg, nc: nc, reg: reg, log: log, streams: map[stream.Name]*Stream{}}, nil
}

// Publish starts a publishing session for name. key is checked when a secret is set.
// The caller feeds tags with WriteTag and must Close the stream when the publisher leaves.
func (o *Origin) Publish(ctx context.Context, name stream.Name, key string) (*Stream, error) {
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
		old := o.streams[name]
		o.mu.Unlock()
		// A publisher whose connection died without a FIN still holds the stream
		// until its read timeout. If it has gone silent, the newcomer (most likely
		// the same encoder reconnecting) replaces it; a live one is never displaced.
		if !old.silentFor(o.cfg.StaleAfter) || !o.awaitGone(ctx, old) {
			publishRefused.WithLabelValues("taken").Inc()
			return nil, fmt.Errorf("%s: %w", name, registry.ErrTaken)
		}
		return o.Publish(ctx, name, key)
	}
	s := newStream(o, name, bus.Session{Origin: o.cfg.ID, ID: randomID()})
	o.streams[name] = s // reserve the name while the registry is asked
	o.mu.Unlock()

	if err := o.claim(ctx, s); err != nil {
		o.forget(s)
		if errors.Is(err, registry.ErrTaken) {
			publishRefused.WithLabelValues("taken").Inc()
		}
		return nil, fmt.Errorf("claim %s: %w", name, err)
	}
	sub, err := o.nc.Subscribe(bus.SnapshotSubject(string(name)), s.answerSnapshot)
	if err != nil {
		o.forget(s)
		_ = o.reg.ReleaseStream(context.WithoutCancel(ctx), string(name), s.owner())
		return nil, fmt.Errorf("subscribe snapshots of %s: %w", name, err)
	}
	o.mu.Lock()
	s.snapSub = sub // under o.mu: heartbeat refreshes only fully started streams
	o.mu.Unlock()
	o.event(ctx, registry.EventPublish, s)
	streamsGauge.Inc()
	o.log.Info("publish started", "stream", name, "session", s.session.String())
	return s, nil
}

// claim asks the registry for the stream. While another origin holds it, it keeps
// asking for up to ClaimWait: when that origin died, its claim lapses within one
// TTL (sooner when the Kubernetes janitor purges it) and this publisher takes over,
// instead of being refused and having to reconnect. A live owner keeps its stream.
func (o *Origin) claim(ctx context.Context, s *Stream) error {
	deadline := time.Now().Add(o.cfg.ClaimWait)
	for {
		err := o.reg.ClaimStream(ctx, string(s.name), s.owner(), o.cfg.TTL)
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
	o.log.Warn("replacing a silent publisher", "stream", old.name, "session", old.session.String())
	old.kick()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	select {
	case <-old.closedCh:
		return true
	case <-ctx.Done():
		return false
	}
}

func (o *Origin) forget(s *Stream) {
	o.mu.Lock()
	if o.streams[s.name] == s {
		delete(o.streams, s.name)
	}
	o.mu.Unlock()
}

func (o *Origin) event(ctx context.Context, k registry.EventKind, s *Stream) {
	ev := registry.Event{Kind: k, Stream: string(s.name), Origin: o.cfg.ID, Session: s.owner().Session, At: time.Now()}
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

// heartbeat refreshes the liveness record and every claim. A claim that vanished
// (registry restarted, or purged) is claimed again; one that another origin holds
// now means this publisher lost the stream, so it is disconnected.
func (o *Origin) heartbeat(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, o.cfg.TTL/2)
	defer cancel()
	o.mu.Lock()
	info := registry.OriginInfo{ID: o.cfg.ID, Addr: o.cfg.Addr, Draining: o.draining, Updated: time.Now()}
	list := make([]*Stream, 0, len(o.streams))
	for _, s := range o.streams {
		if s.snapSub != nil { // fully started
			list = append(list, s)
		}
	}
	o.mu.Unlock()
	if err := o.reg.PutOrigin(ctx, info, o.cfg.TTL); err != nil {
		o.log.Warn("liveness record not written", "err", err)
	}
	for _, s := range list {
		o.refresh(ctx, s)
	}
}

// refresh keeps one claim alive. It holds the stream's claim lock so that a Close
// running at the same time cannot be followed by a re-claim of the closed session.
func (o *Origin) refresh(ctx context.Context, s *Stream) {
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	if s.isClosed() {
		return
	}
	err := o.reg.RefreshStream(ctx, string(s.name), s.owner(), o.cfg.TTL)
	if errors.Is(err, registry.ErrNotOwner) {
		err = o.reg.ClaimStream(ctx, string(s.name), s.owner(), o.cfg.TTL)
		if err == nil {
			o.log.Info("stream claim restored", "stream", s.name)
			o.event(ctx, registry.EventPublish, s)
			return
		}
	}
	switch {
	case errors.Is(err, registry.ErrTaken):
		o.log.Warn("stream claimed elsewhere: disconnecting publisher", "stream", s.name)
		s.kick()
	case err != nil:
		o.log.Warn("stream claim not refreshed", "stream", s.name, "err", err)
	}
}

func randomID() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails on Linux
	return binary.BigEndian.Uint64(b[:])
}
