package origin

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/hook"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// Tap sees every tag a publishing session ingests, in order, after the origin has
// classified it (only onMetaData among script tags). Tags are shared and immutable:
// a tap must not change them and must not block (it queues and works on its own
// goroutine), because it is called from the session actor. Recording and push are
// taps (packages record and relay).
type Tap interface {
	// Tag is one ingested tag.
	Tag(t flv.Tag)
	// End is called once, after the last Tag, when the session ends.
	End()
}

// TapFactory returns the taps of a new session (nil: none). It is called once per
// session, after the session has claimed its stream: only the owner taps a stream.
type TapFactory func(s SessionInfo) []Tap

// SessionInfo describes a session to a TapFactory.
type SessionInfo struct {
	Name    stream.Name
	Session string // the registry owner's session id (hex)
}

// Pull starts a session for a stream this origin pulls from an upstream: it is
// published exactly like an RTMP publish (callback with action "pull", claim, caches,
// bus), except that the claim is asked for once: when another origin holds the
// stream, Pull returns registry.ErrTaken at once instead of waiting for it to lapse,
// so origins racing for one pull settle in one registry round trip.
func (o *Origin) Pull(ctx context.Context, name stream.Name) (*Stream, error) {
	return o.publish(ctx, PublishRequest{Name: name, Key: stream.PublishKey(o.cfg.PublishSecret, name),
		action: hook.Pull, claimOnce: true}, o.cfg.Hook)
}

// claimOnce asks the registry once (see Pull).
func (o *Origin) claimOnce(ctx context.Context, s *Stream) error {
	return o.reg.ClaimStream(ctx, string(s.name), s.owner, o.cfg.TTL)
}

// Repull replaces old, a session started by Pull whose upstream has reconnected,
// with a new session (so that edges splice onto the new connection's clock and
// headers) without ever letting go of the stream: the claim moves from old's owner
// to the new session's in two registry calls before old ends, so no other origin
// can claim the stream in between (it would cut this one off from its upstream).
// The callbacks are those of a Pull: "pull" for the new session, "unpublish" for
// old. On error old has not been closed when the claim could not move (the caller
// closes it), and has been when the new session failed to start.
func (o *Origin) Repull(ctx context.Context, old *Stream) (*Stream, error) {
	name := old.name
	session := randomID()
	owner := registry.Owner{Origin: o.cfg.ID, Session: strconv.FormatUint(session, 16)}
	h := o.cfg.Hook
	ev := hook.Event{Action: hook.Pull, App: name.App(), Stream: name.Stream(), Session: owner.Session}
	if h != nil {
		if d, _ := h.Call(ctx, ev); !d.Allow {
			publishRefused.WithLabelValues("hook").Inc()
			return nil, fmt.Errorf("%w: %s", ErrDenied, d.Reason)
		}
	}
	allowedButFailed := func() {
		if h != nil {
			h.Notify(ev.Ended(hook.Unpublish, 0, 0))
		}
	}
	if err := o.reg.ReleaseStream(ctx, string(name), old.owner); err != nil && !errors.Is(err, registry.ErrNotOwner) {
		allowedButFailed()
		return nil, fmt.Errorf("hand over %s: %w", name, err)
	}
	if err := o.reg.ClaimStream(ctx, string(name), owner, o.cfg.TTL); err != nil {
		allowedButFailed()
		return nil, fmt.Errorf("claim %s: %w", name, err)
	}
	old.Close(ctx) // edges get its end; its release finds the claim moved on

	fail := func(err error) (*Stream, error) {
		_ = o.reg.ReleaseStream(context.WithoutCancel(ctx), string(name), owner)
		allowedButFailed()
		return nil, err
	}
	o.mu.Lock()
	if o.draining || o.streams[name] != nil {
		o.mu.Unlock()
		return fail(fmt.Errorf("%s: %w", name, registry.ErrTaken))
	}
	e := &entry{}
	o.streams[name] = e
	o.mu.Unlock()
	out, err := o.bus.Open(string(name), session)
	if err != nil {
		o.unreserve(name, e)
		return fail(fmt.Errorf("publish %s: %w", name, err))
	}
	s := newStream(o, name, out)
	if h != nil {
		s.hook, s.hookEv = h, ev
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
	e.s, e.started = s, true
	o.mu.Unlock()
	o.event(ctx, registry.EventPublish, s)
	streamsGauge.Inc()
	o.log.Info("publish started", "stream", name, "session", out.Session().String(), "replaces", old.owner.Session)
	return s, nil
}
