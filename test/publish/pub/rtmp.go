package pub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	gortmp "github.com/yutopp/go-rtmp"
	rtmpmsg "github.com/yutopp/go-rtmp/message"
)

// csidMedia is the one RTMP chunk stream for all media: go-rtmp schedules chunk
// streams independently, so audio and video on two of them could leave out of order.
const csidMedia = 6

// Publisher is one RTMP publishing connection.
type Publisher struct {
	client *gortmp.ClientConn
	stream *gortmp.Stream
	// OnSend, if set, is called just before each message is written, with its
	// RTMP timestamp (for a load generator's latency log).
	OnSend func(typ byte, ts uint32)
}

// Dial connects to rawURL (rtmp://host[:port]/app/stream[?query]) and starts
// publishing; it gives up after timeout.
func Dial(rawURL string, timeout time.Duration) (*Publisher, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "rtmp" || u.Host == "" {
		return nil, fmt.Errorf("publish url %q: want rtmp://host/app/stream", rawURL)
	}
	parts := strings.SplitN(strings.TrimPrefix(u.Path, "/"), "/", 2)
	if len(parts) != 2 || parts[0] == "" || parts[1] == "" {
		return nil, fmt.Errorf("publish url %q: want rtmp://host/app/stream", rawURL)
	}
	app, name := parts[0], parts[1]
	if u.RawQuery != "" {
		name += "?" + u.RawQuery
	}
	host := u.Host
	if u.Port() == "" {
		host += ":1935"
	}
	quiet := logrus.New()
	quiet.SetOutput(io.Discard)
	logrus.SetOutput(io.Discard) // go-rtmp logs a chunk size change on the standard logger
	client, err := gortmp.Dial("rtmp", host, &gortmp.ConnConfig{Logger: quiet})
	if err != nil {
		return nil, fmt.Errorf("rtmp dial %s: %w", host, err)
	}
	type result struct {
		s   *gortmp.Stream
		err error
	}
	res := make(chan result, 1)
	go func() { // go-rtmp's client waits without a deadline: bounded by closing the conn
		s, err := setup(client, host, app, name)
		res <- result{s, err}
	}()
	select {
	case r := <-res:
		if r.err != nil {
			_ = client.Close()
			return nil, r.err
		}
		return &Publisher{client: client, stream: r.s}, nil
	case <-time.After(timeout):
		_ = client.Close()
		<-res
		return nil, fmt.Errorf("rtmp publish %s: no answer in %v", rawURL, timeout)
	}
}

func setup(c *gortmp.ClientConn, host, app, name string) (*gortmp.Stream, error) {
	if err := c.Connect(&rtmpmsg.NetConnectionConnect{Command: rtmpmsg.NetConnectionConnectCommand{
		App: app, Type: "nonprivate", FlashVer: "FMLE/3.0 (compatible; flvcdn-publish)",
		TCURL: "rtmp://" + host + "/" + app}}); err != nil {
		return nil, fmt.Errorf("rtmp connect: %w", err)
	}
	s, err := c.CreateStream(nil, 4096)
	if err != nil {
		return nil, fmt.Errorf("rtmp createStream: %w", err)
	}
	if err := s.Publish(&rtmpmsg.NetStreamPublish{PublishingName: name, PublishingType: "live"}); err != nil {
		return nil, fmt.Errorf("rtmp publish: %w", err)
	}
	return s, nil
}

// Write sends one message with RTMP timestamp ts (milliseconds).
func (p *Publisher) Write(m Message, ts uint32) error {
	if p.OnSend != nil {
		p.OnSend(m.Type, ts)
	}
	body := bytes.NewReader(m.Body)
	switch m.Type {
	case TypeAudio:
		return p.stream.Write(csidMedia, ts, &rtmpmsg.AudioMessage{Payload: body})
	case TypeVideo:
		return p.stream.Write(csidMedia, ts, &rtmpmsg.VideoMessage{Payload: body})
	case TypeScript:
		// The body is "onMetaData" and its value: @setDataFrame carries it as is.
		return p.stream.Write(csidMedia, ts, &rtmpmsg.DataMessage{Name: "@setDataFrame", Encoding: rtmpmsg.EncodingTypeAMF0, Body: body})
	}
	return nil
}

// Close ends the connection.
func (p *Publisher) Close() error { return p.client.Close() }

// Run sends the messages of open() in real time until they end, or, with loop,
// forever (open is called again for each pass; headers are sent once and
// timestamps continue), or until ctx ends (then it returns nil).
func (p *Publisher) Run(ctx context.Context, open func() (Input, error), loop bool) error {
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var offset time.Duration
	for pass := 0; ; pass++ {
		in, err := open()
		if err != nil {
			return err
		}
		var last time.Duration
		for {
			m, err := in.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			if pass > 0 && m.Header {
				continue
			}
			at := offset + m.Time
			last = max(last, m.Time)
			if wait := time.Until(start.Add(at)); wait > 0 {
				timer.Reset(wait)
				select {
				case <-ctx.Done():
					return nil
				case <-timer.C:
				}
			}
			if err := p.Write(m, uint32(at/time.Millisecond)); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("rtmp send at %v: %w", at, err)
			}
		}
		if !loop {
			return nil
		}
		offset += last + 40*time.Millisecond
	}
}
