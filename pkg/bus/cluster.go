package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
)

// Cluster carries the cluster's control plane over NATS: every node's periodic
// report (for the cluster API) and operators' requests to disconnect a publisher.
// Nothing here is media.
type Cluster struct{ nc *nats.Conn }

// NewCluster returns the control plane on nc.
func NewCluster(nc *nats.Conn) *Cluster { return &Cluster{nc: nc} }

const (
	reportSubject = "flvcdn.nodes"
	kickRoot      = "flvcdn.kick."
)

// ErrNoOwner: no origin answered for the stream.
var ErrNoOwner = errors.New("bus: no origin publishes the stream")

// Report publishes this node's report (JSON, a few KB).
func (c *Cluster) Report(data []byte) error {
	if err := c.nc.Publish(reportSubject, data); err != nil {
		return fmt.Errorf("bus: report: %w", err)
	}
	return nil
}

// Reports calls f with every node's reports until stop is called. f runs on one
// goroutine, one report at a time.
func (c *Cluster) Reports(f func(data []byte)) (stop func(), err error) {
	sub, err := c.nc.Subscribe(reportSubject, func(m *nats.Msg) { f(m.Data) })
	if err != nil {
		return nil, fmt.Errorf("bus: follow reports: %w", err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// Kick asks the origin publishing stream name ("app/stream") to disconnect its
// publisher, and waits for it to say it did (ErrNoOwner when none answers by ctx's end).
func (c *Cluster) Kick(ctx context.Context, name string) error {
	if _, err := c.nc.RequestWithContext(ctx, kickRoot+strings.Replace(name, "/", ".", 1), nil); err != nil {
		if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s: %w", name, ErrNoOwner)
		}
		return fmt.Errorf("bus: kick %s: %w", name, err)
	}
	return nil
}

// HandleKicks answers kick requests with kick(name), replying only when it returns
// true (so an origin that does not publish the stream stays silent), until stop.
func (c *Cluster) HandleKicks(kick func(name string) bool) (stop func(), err error) {
	sub, err := c.nc.Subscribe(kickRoot+">", func(m *nats.Msg) {
		name := strings.Replace(strings.TrimPrefix(m.Subject, kickRoot), ".", "/", 1)
		if kick(name) && m.Reply != "" {
			_ = m.Respond(nil)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("bus: handle kicks: %w", err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}
