package origin

import (
	"context"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/hook"
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
