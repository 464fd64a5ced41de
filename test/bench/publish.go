package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/test/publish/pub"
)

// clock is the one time base of the run: durations since it are monotonic and are
// compared between the publisher (send) and the viewers (arrival).
var clock = time.Now()

func now() time.Duration { return time.Since(clock) }

// sendLog records when (wall clock, ns) each tag timestamp was handed to the RTMP
// connection, or arrived somewhere. The origin maps the first tag to 0 and keeps
// later ones as they are (they start at 0 and never step back here), and the edge
// keeps the origin's timestamps for its first session, so a viewer can look up the
// send time of any media tag it reads.
type sendLog struct {
	mu sync.RWMutex
	at map[uint64]int64
}

func newSendLog() *sendLog { return &sendLog{at: map[uint64]int64{}} }

func sendKey(typ byte, ts uint32) uint64 { return uint64(ts)<<8 | uint64(typ) }

// record keeps the first time seen for a tag.
func (l *sendLog) record(typ byte, ts uint32, wall int64) {
	l.mu.Lock()
	if _, ok := l.at[sendKey(typ, ts)]; !ok {
		l.at[sendKey(typ, ts)] = wall
	}
	l.mu.Unlock()
}

func (l *sendLog) lookup(typ byte, ts uint32) (int64, bool) {
	l.mu.RLock()
	t, ok := l.at[sendKey(typ, ts)]
	l.mu.RUnlock()
	return t, ok
}

// publisher sends the bench media to an origin over RTMP with the test publisher's
// client (test/publish/pub), looping it in real time with continuous timestamps.
// Metadata and sequence headers are sent once, as an encoder would.
type publisher struct {
	sent   *sendLog     // nil for load publishers: nothing measures their latency
	late   atomic.Int64 // worst lateness of a send against its real-time schedule (ns)
	conn   *pub.Publisher
	errc   chan error
	cancel context.CancelFunc
	done   chan struct{}
}

func startPublisher(ctx context.Context, addr, app, name string, m *media) (*publisher, error) {
	return startPublishing(ctx, addr, app, name, m, true)
}

// startLoadPublisher publishes like startPublisher without logging send times
// (the cost model runs many of them for minutes).
func startLoadPublisher(ctx context.Context, addr, app, name string, m *media) (*publisher, error) {
	return startPublishing(ctx, addr, app, name, m, false)
}

func startPublishing(ctx context.Context, addr, app, name string, m *media, record bool) (*publisher, error) {
	conn, err := pub.Dial("rtmp://"+addr+"/"+app+"/"+name, 10*time.Second)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &publisher{conn: conn,
		errc: make(chan error, 1), cancel: cancel, done: make(chan struct{})}
	if record {
		p.sent = newSendLog()
		// The send time of every tag, taken just before it is written.
		conn.OnSend = func(typ byte, ts uint32) { p.sent.record(typ, ts, wallNow()) }
	}
	go func() {
		defer close(p.done)
		p.errc <- p.loop(ctx, m)
	}()
	return p, nil
}

func (p *publisher) loop(ctx context.Context, m *media) error {
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var offset uint32
	for loop := 0; ; loop++ {
		tags := m.tags
		if loop > 0 {
			tags = tags[m.headers:]
		}
		for _, t := range tags {
			ts := t.Timestamp() - m.base + offset
			if wait := time.Until(start.Add(time.Duration(ts) * time.Millisecond)); wait > 0 {
				timer.Reset(wait)
				select {
				case <-ctx.Done():
					return nil
				case <-timer.C:
				}
			} else if -wait > time.Duration(p.late.Load()) {
				p.late.Store(int64(-wait))
			}
			if err := p.conn.Write(pub.Message{Type: t.Type(), Body: t.Body()}, ts); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("rtmp send at %d ms: %w", ts, err)
			}
		}
		offset += m.loopMS
	}
}

// err returns the publisher's failure, if it stopped.
func (p *publisher) err() error {
	select {
	case err := <-p.errc:
		if err == nil {
			err = errors.New("publisher stopped")
		}
		p.errc <- err
		return err
	default:
		return nil
	}
}

func (p *publisher) stop() {
	if p == nil {
		return
	}
	p.cancel()
	_ = p.conn.Close()
	<-p.done
}

// natsProbe subscribes to the main stream's live subject like an edge would, and
// logs when each tag arrived from NATS: a viewer's latency then splits into the
// part before NATS (publisher, origin, NATS) and the edge's hop after it. Arrival
// is the kernel receive time of the probe's newest socket read when nats.go hands
// the message over (messages come some 14 ms apart; reads are rarely further behind).
type natsProbe struct {
	nc      *nats.Conn
	arrived *sendLog
	conn    atomic.Pointer[arrivalConn]
}

func startNATSProbe(url, stream string) (*natsProbe, error) {
	p := &natsProbe{arrived: newSendLog()}
	nc, err := nats.Connect(url, nats.Name("flvcdn-bench probe"), nats.SetCustomDialer(p))
	if err != nil {
		return nil, fmt.Errorf("nats probe: %w", err)
	}
	p.nc = nc
	_, err = nc.Subscribe(bus.LiveSubject(stream), func(m *nats.Msg) {
		at := wallNow()
		if c := p.conn.Load(); c != nil && c.last.Load() > 0 {
			at = c.last.Load()
		}
		d, err := bus.Decode(m.Data)
		if err != nil || d.Kind != bus.KindTag {
			return
		}
		p.arrived.record(d.Tag.Type(), d.Tag.Timestamp(), at)
	})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("nats probe: %w", err)
	}
	return p, nil
}

// Dial makes the probe its own nats.CustomDialer, to read with receive timestamps.
func (p *natsProbe) Dial(network, address string) (net.Conn, error) {
	if network != "tcp" {
		return nil, fmt.Errorf("nats probe: network %q", network)
	}
	c, err := dialArrival(context.Background(), address, 5*time.Second)
	if err != nil {
		return nil, err
	}
	p.conn.Store(c)
	return c, nil
}

func (p *natsProbe) stop() {
	if p != nil && p.nc != nil {
		p.nc.Close()
	}
}
