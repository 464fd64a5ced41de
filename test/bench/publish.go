package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/sirupsen/logrus"
	gortmp "github.com/yutopp/go-rtmp"
	rtmpmsg "github.com/yutopp/go-rtmp/message"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/flv"
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

// publisher sends the bench media to an origin over RTMP with go-rtmp's client,
// looping it in real time with continuous timestamps. Metadata and sequence headers
// are sent once, as an encoder would.
type publisher struct {
	sent   *sendLog     // nil for load publishers: nothing measures their latency
	late   atomic.Int64 // worst lateness of a send against its real-time schedule (ns)
	client *gortmp.ClientConn
	errc   chan error
	cancel context.CancelFunc
	done   chan struct{}
}

// csidMedia is the one RTMP chunk stream for all media: go-rtmp schedules chunk
// streams independently, so audio and video on two of them can leave out of order,
// and the origin would then clamp a timestamp that stepped back.
const csidMedia = 6

func startPublisher(ctx context.Context, addr, app, name string, m *media) (*publisher, error) {
	return startPublishing(ctx, addr, app, name, m, true)
}

// startLoadPublisher publishes like startPublisher without logging send times
// (the cost model runs many of them for minutes).
func startLoadPublisher(ctx context.Context, addr, app, name string, m *media) (*publisher, error) {
	return startPublishing(ctx, addr, app, name, m, false)
}

func startPublishing(ctx context.Context, addr, app, name string, m *media, record bool) (*publisher, error) {
	quiet := logrus.New()
	quiet.SetOutput(io.Discard)
	logrus.SetOutput(io.Discard) // go-rtmp logs a chunk size change on the standard logger
	client, err := gortmp.Dial("rtmp", addr, &gortmp.ConnConfig{Logger: quiet})
	if err != nil {
		return nil, fmt.Errorf("rtmp dial %s: %w", addr, err)
	}
	// go-rtmp's client calls wait without a deadline: bound them by closing the conn.
	type result struct {
		s   *gortmp.Stream
		err error
	}
	res := make(chan result, 1)
	go func() {
		s, err := setupPublish(client, addr, app, name)
		res <- result{s, err}
	}()
	var r result
	select {
	case r = <-res:
	case <-time.After(10 * time.Second):
		r.err = errors.New("rtmp publish: no answer from the origin in 10s")
	}
	if r.err != nil {
		_ = client.Close()
		return nil, r.err
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &publisher{client: client,
		errc: make(chan error, 1), cancel: cancel, done: make(chan struct{})}
	if record {
		p.sent = newSendLog()
	}
	go func() {
		defer close(p.done)
		p.errc <- p.loop(ctx, r.s, m)
	}()
	return p, nil
}

func setupPublish(client *gortmp.ClientConn, addr, app, name string) (*gortmp.Stream, error) {
	if err := client.Connect(&rtmpmsg.NetConnectionConnect{Command: rtmpmsg.NetConnectionConnectCommand{
		App: app, Type: "nonprivate", FlashVer: "FMLE/3.0 (compatible; flvcdn-bench)",
		TCURL: "rtmp://" + addr + "/" + app}}); err != nil {
		return nil, fmt.Errorf("rtmp connect: %w", err)
	}
	s, err := client.CreateStream(nil, 4096)
	if err != nil {
		return nil, fmt.Errorf("rtmp createStream: %w", err)
	}
	if err := s.Publish(&rtmpmsg.NetStreamPublish{PublishingName: name, PublishingType: "live"}); err != nil {
		return nil, fmt.Errorf("rtmp publish: %w", err)
	}
	return s, nil
}

func (p *publisher) loop(ctx context.Context, s *gortmp.Stream, m *media) error {
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
			if p.sent != nil {
				p.sent.record(t.Type(), ts, wallNow())
			}
			if err := writeTag(s, t, ts); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("rtmp send at %d ms: %w", ts, err)
			}
		}
		offset += m.loopMS
	}
}

func writeTag(s *gortmp.Stream, t flv.Tag, ts uint32) error {
	body := bytes.NewReader(t.Body())
	switch t.Type() {
	case flv.TypeAudio:
		return s.Write(csidMedia, ts, &rtmpmsg.AudioMessage{Payload: body})
	case flv.TypeVideo:
		return s.Write(csidMedia, ts, &rtmpmsg.VideoMessage{Payload: body})
	case flv.TypeScript:
		// The script body is "onMetaData" + object; @setDataFrame carries it as is.
		return s.Write(csidMedia, ts, &rtmpmsg.DataMessage{Name: "@setDataFrame", Encoding: rtmpmsg.EncodingTypeAMF0, Body: body})
	}
	return nil
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
	_ = p.client.Close()
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
