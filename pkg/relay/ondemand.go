package relay

import (
	"context"
	"errors"
	"time"

	"github.com/flvcdn/flvcdn/pkg/registry"
)

// EdgeRegistry is the registry as an edge uses it (package edge's Registry).
type EdgeRegistry interface {
	LookupStream(ctx context.Context, stream string) (registry.Owner, error)
	Events(ctx context.Context) (<-chan registry.Event, error)
}

// OnDemand is the edge's side of on-demand pulls: a registry whose lookup of a
// stream nobody owns first asks the origins to pull it (bus.Cluster.RequestPull)
// and, when one of them claimed it, answers with the new owner. Names no origin
// pulls cost one NATS round trip that fails at once (no responders).
//
// Every lookup of the edge goes through it, so the edge's first viewer starts a
// pull, and an edge that looks again after its origin died restarts the pull on
// another origin.
type OnDemand struct {
	EdgeRegistry
	// Request asks the origins to pull a stream; nil when some origin claimed it.
	Request func(ctx context.Context, name string) error
	// Wait bounds the request. Default 3s.
	Wait time.Duration
}

// LookupStream returns the stream's owner, starting an on-demand pull when there is none.
func (d *OnDemand) LookupStream(ctx context.Context, name string) (registry.Owner, error) {
	o, err := d.EdgeRegistry.LookupStream(ctx, name)
	if !errors.Is(err, registry.ErrNotFound) {
		return o, err
	}
	wait := d.Wait
	if wait <= 0 {
		wait = 3 * time.Second
	}
	rctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if d.Request(rctx, name) != nil {
		return o, err // nobody pulls it: still not found
	}
	return d.EdgeRegistry.LookupStream(ctx, name)
}
