// Package edge owns the edge's live streams: one actor per stream that pulls it from
// the bus on its first viewer (the join protocol), keeps a ring of shared tags and
// the join point for new viewers, puts timestamps on one continuous timeline once per
// stream, and stops a linger period after its last viewer leaves. Viewers read the
// ring through their own cursor.
//
// Tags arrive as bus message bytes and are never copied here: the same slices are
// written to every viewer. This package never talks NATS (package bus does) and
// never writes to a socket (package httpflv does).
package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// Registry is the part of the registry an edge uses: lookups, and the change
// events (origin down, unpublish) that make a stream look again at once.
type Registry interface {
	LookupStream(ctx context.Context, stream string) (registry.Owner, error)
	Events(ctx context.Context) (<-chan registry.Event, error)
}

// Errors returned by Watch.
var (
	// ErrNotFound: no origin has the stream.
	ErrNotFound = errors.New("stream not found")
	// ErrJoinTimeout: the owner did not answer in time.
	ErrJoinTimeout = errors.New("stream did not start in time")
	// ErrShuttingDown: the edge is draining.
	ErrShuttingDown = errors.New("edge is shutting down")
	// ErrTooManyViewers: a viewer limit of the edge or of the stream is reached.
	ErrTooManyViewers = errors.New("too many viewers")
)

// Config tunes a Hub. Zero values take the documented defaults.
type Config struct {
	// Linger keeps pulling a stream this long after its last viewer left. Default 10s.
	Linger time.Duration
	// Grace keeps viewers connected this long after the publisher left, so a
	// reconnecting publisher resumes without dropping them. Default 10s.
	Grace time.Duration
	// Stall treats a stream as ended when no message arrived for this long. Default 5s.
	Stall time.Duration
	// JoinTimeout bounds how long a first viewer waits for the stream. Default 5s.
	JoinTimeout time.Duration
	// SnapshotTimeout bounds one snapshot request. Default 2s.
	SnapshotTimeout time.Duration
	// MergeWindow is the ceiling of the merge window: each viewer writes at most
	// once per window, everything queued in one writev. The window itself follows
	// the edge's viewers (WindowPolicy): 32 µs per viewer, from 1 ms up to this
	// ceiling, which it reaches at 1,875 viewers with the default of 60ms. Set
	// FixedWindow to use MergeWindow as is (experiments, benchmarks).
	MergeWindow time.Duration
	// FixedWindow turns the adaptive window off: every stream uses MergeWindow.
	FixedWindow bool
	// RingSize is the number of tags kept per stream (rounded up to a power of 2). Default 4096.
	RingSize int
	// MaxLagBytes is how far behind a viewer may fall before it skips to the next keyframe. Default 4 MiB.
	MaxLagBytes int
	// MaxViewers bounds viewers on this edge; MaxViewersPerStream on one stream (0 = no limit).
	MaxViewers          int
	MaxViewersPerStream int
	// FeedBytes bounds the live bytes buffered per stream between the bus and the
	// actor; past it messages are lost and the gap repaired with a snapshot. Default 64 MiB.
	FeedBytes int
	// MaxSkips drops a viewer that had to skip this many times within SkipWindow. Default 3.
	MaxSkips int
	// SkipWindow: see MaxSkips. Default 30s.
	SkipWindow time.Duration
}

func (c *Config) defaults() {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&c.Linger, 10*time.Second)
	set(&c.Grace, 10*time.Second)
	set(&c.Stall, 5*time.Second)
	set(&c.JoinTimeout, 5*time.Second)
	set(&c.SnapshotTimeout, 2*time.Second)
	set(&c.MergeWindow, 60*time.Millisecond)
	set(&c.SkipWindow, 30*time.Second)
	if c.RingSize <= 0 {
		c.RingSize = 4096
	}
	if c.MaxLagBytes <= 0 {
		c.MaxLagBytes = 4 << 20
	}
	if c.MaxSkips <= 0 {
		c.MaxSkips = 3
	}
}

// Hub holds the streams this edge is pulling.
type Hub struct {
	cfg Config
	sub *bus.Subscriber
	reg Registry
	log *slog.Logger
	ctx context.Context

	mu      sync.Mutex
	streams map[stream.Name]*Stream
	wg      sync.WaitGroup
	viewers atomic.Int64 // viewers and reserved joins across streams, for MaxViewers
	window  atomic.Int64 // current merge window (ns), set by paceWindow
}

// NewHub returns a Hub whose stream actors live until ctx ends. It follows the
// registry's change events until then.
func NewHub(ctx context.Context, cfg Config, sub *bus.Subscriber, reg Registry, log *slog.Logger) (*Hub, error) {
	cfg.defaults()
	h := &Hub{cfg: cfg, sub: sub, reg: reg, log: log, ctx: ctx, streams: map[stream.Name]*Stream{}}
	events, err := reg.Events(ctx)
	if err != nil {
		return nil, fmt.Errorf("edge: registry events: %w", err)
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.followEvents(events)
	}()
	policy := NewWindowPolicy(cfg.MergeWindow)
	if cfg.FixedWindow {
		policy.Min = cfg.MergeWindow
	}
	h.setWindow(policy.Update(time.Now(), 0))
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		h.paceWindow(ctx, policy)
	}()
	return h, nil
}

// paceWindow feeds the viewer count into the merge window policy until ctx ends.
func (h *Hub) paceWindow(ctx context.Context, p *WindowPolicy) {
	t := time.NewTicker(WindowSample)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			h.setWindow(p.Update(now, int(h.viewers.Load())))
		}
	}
}

func (h *Hub) setWindow(w time.Duration) {
	if h.window.Swap(int64(w)) != int64(w) {
		windowGauge.Set(w.Seconds())
	}
}

// MergeWindow returns the merge window streams use now.
func (h *Hub) MergeWindow() time.Duration { return time.Duration(h.window.Load()) }

// followEvents hands each origin-down or unpublish event to the streams it may
// concern. Events are hints: a lost one only means the stall timer or a snapshot
// timeout notices instead.
func (h *Hub) followEvents(events <-chan registry.Event) {
	for ev := range events {
		if ev.Kind != registry.EventOriginDown && ev.Kind != registry.EventUnpublish {
			continue
		}
		h.mu.Lock()
		var targets []*Stream
		if ev.Stream != "" {
			if n, err := stream.ParseName(ev.Stream); err == nil && h.streams[n] != nil {
				targets = append(targets, h.streams[n])
			}
		} else {
			for _, s := range h.streams {
				targets = append(targets, s)
			}
		}
		h.mu.Unlock()
		for _, s := range targets {
			select {
			case s.events <- ownerEvent{ev}:
			case <-s.done:
			default: // the actor has hints queued already
			}
		}
	}
}

// Watch returns a viewer of name, pulling the stream if this is its first viewer.
// It returns ErrNotFound at once for a stream no origin has. However many first
// viewers arrive together, the stream is looked up and joined once.
func (h *Hub) Watch(ctx context.Context, name stream.Name) (*Viewer, error) {
	return h.WatchTrack(ctx, name, 0)
}

// WatchTrack is Watch for one video track of an Enhanced RTMP multitrack stream
// (0, the default, is the only track of any other stream): the viewer gets that
// track as ordinary single-track FLV. A track the stream does not have is
// ErrNoTrack once the stream has a start point.
func (h *Hub) WatchTrack(ctx context.Context, name stream.Name, track int) (*Viewer, error) {
	if track < 0 || track > MaxTrack {
		return nil, fmt.Errorf("video track %d: %w", track, ErrNoTrack)
	}
	if h.ctx.Err() != nil {
		return nil, ErrShuttingDown
	}
	// Reserve the edge-wide slot first, so concurrent joins cannot exceed the limit.
	if n := h.viewers.Add(1); h.cfg.MaxViewers > 0 && n > int64(h.cfg.MaxViewers) {
		h.viewers.Add(-1)
		viewerRefused.WithLabelValues("edge-limit").Inc()
		return nil, fmt.Errorf("edge limit of %d: %w", h.cfg.MaxViewers, ErrTooManyViewers)
	}
	for attempt := 0; attempt < 3; attempt++ {
		v, err := h.stream(name).addViewer(ctx, int16(track))
		if errors.Is(err, errStreamGone) {
			continue // raced with the actor stopping; start a new one
		}
		if err != nil {
			h.viewers.Add(-1)
		}
		return v, err
	}
	h.viewers.Add(-1)
	return nil, fmt.Errorf("%s: %w", name, ErrJoinTimeout)
}

// stream returns the actor for name, starting one (which resolves the stream in the
// registry itself) when there is none.
func (h *Hub) stream(name stream.Name) *Stream {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.streams[name]; s != nil {
		return s
	}
	s := newStream(h, name)
	h.streams[name] = s
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		s.run(h.ctx)
	}()
	return s
}

func (h *Hub) remove(s *Stream) {
	h.mu.Lock()
	if h.streams[s.name] == s {
		delete(h.streams, s.name)
	}
	h.mu.Unlock()
}

// Viewers returns how many viewers this edge serves (and joins in progress).
func (h *Hub) Viewers() int { return int(h.viewers.Load()) }

// Streams returns how many streams are being pulled.
func (h *Hub) Streams() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.streams)
}

// StreamStats is one pulled stream as a report sees it.
type StreamStats struct {
	Name    stream.Name
	Viewers int
}

// Stats lists the streams being pulled and their viewers.
func (h *Hub) Stats() []StreamStats {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]StreamStats, 0, len(h.streams))
	for n, s := range h.streams {
		out = append(out, StreamStats{Name: n, Viewers: int(s.shown.Load())})
	}
	return out
}

// Wait blocks until every stream actor has stopped (after the hub's context ends).
func (h *Hub) Wait() { h.wg.Wait() }

// Exists reports whether some origin has the stream, without pulling it.
func (h *Hub) Exists(ctx context.Context, name stream.Name) (bool, error) {
	_, err := h.reg.LookupStream(ctx, string(name))
	if errors.Is(err, registry.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}
