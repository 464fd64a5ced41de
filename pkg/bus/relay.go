package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
)

// pullRoot prefixes the on-demand pull requests: flvcdn.pull.<app>.<stream>.
// Origins answer them as one queue group, so each request reaches one origin.
const (
	pullRoot  = "flvcdn.pull."
	pullQueue = "flvcdn-pullers"
)

// RequestPull asks the origins configured to pull stream name ("app/stream") on
// demand to start it, and returns once one answered that it has claimed the stream
// (or that another origin has). ErrNoOwner (wrapped) when no origin pulls that
// name (NATS says at once that nobody listens) or none answered by ctx's end.
func (c *Cluster) RequestPull(ctx context.Context, name string) error {
	if _, err := c.nc.RequestWithContext(ctx, pullRoot+strings.Replace(name, "/", ".", 1), nil); err != nil {
		if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s: %w", name, ErrNoOwner)
		}
		return fmt.Errorf("bus: pull %s: %w", name, err)
	}
	return nil
}

// HandlePulls subscribes to the pull requests of names, in the origins' queue group
// (each request goes to one of the origins that pull the name), and calls f for
// each with a reply function, which f (or whoever it hands it to) calls once the
// stream is claimed; f must not block. Until stop.
func (c *Cluster) HandlePulls(names []string, f func(name string, reply func())) (stop func(), err error) {
	var subs []*nats.Subscription
	stop = func() {
		for _, s := range subs {
			_ = s.Unsubscribe()
		}
	}
	for _, name := range names {
		sub, err := c.nc.QueueSubscribe(pullRoot+strings.Replace(name, "/", ".", 1), pullQueue, func(m *nats.Msg) {
			f(name, func() {
				if m.Reply != "" {
					_ = m.Respond(nil)
				}
			})
		})
		if err != nil {
			stop()
			return nil, fmt.Errorf("bus: handle pulls of %s: %w", name, err)
		}
		subs = append(subs, sub)
	}
	return stop, nil
}
