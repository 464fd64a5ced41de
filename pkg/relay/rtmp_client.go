package relay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/yutopp/go-rtmp/handshake"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// rtmpClient is one RTMP client connection that either plays a stream (pull) or
// publishes one (push). The handshake is go-rtmp's; the chunk layer and the few
// commands are the relay's (see chunk.go).
type rtmpClient struct {
	conn     net.Conn
	r        *chunkReader
	w        *chunkWriter
	idle     time.Duration // read deadline per message
	streamID uint32
	winAck   uint32 // the peer's acknowledgement window
	acked    uint64
	txn      float64
}

// rtmpTarget splits an rtmp:// URL into the address, the app (with the URL's query,
// as the tcUrl carries it) and the stream name: the last path segment is the stream,
// the rest the app, so rtmp://host/live/key publishes "key" to app "live".
func rtmpTarget(u *url.URL) (addr, app, name, tcURL string, err error) {
	if u.Scheme != "rtmp" || u.Host == "" {
		return "", "", "", "", fmt.Errorf("want rtmp://host[:port]/app/stream")
	}
	p := strings.Trim(u.Path, "/")
	i := strings.LastIndexByte(p, '/')
	if i <= 0 || i == len(p)-1 {
		return "", "", "", "", fmt.Errorf("%q: want /app/stream in the path", u.Path)
	}
	app, name = p[:i], p[i+1:]
	if u.RawQuery != "" {
		name += "?" + u.RawQuery
	}
	addr = u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "1935")
	}
	tc := *u
	tc.Path, tc.RawQuery, tc.Fragment = "/"+app, "", ""
	return addr, app, name, tc.String(), nil
}

// dialRTMP connects, shakes hands and sends connect and createStream; play or publish
// comes next. ctx bounds the setup; idle bounds each later read.
func dialRTMP(ctx context.Context, u *url.URL, idle time.Duration) (*rtmpClient, string, error) {
	addr, app, name, tcURL, err := rtmpTarget(u)
	if err != nil {
		return nil, "", err
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, "", err
	}
	c := &rtmpClient{conn: conn, r: newChunkReader(conn), w: newChunkWriter(conn), idle: idle, winAck: 2_500_000}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	fail := func(err error) (*rtmpClient, string, error) {
		_ = conn.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, "", err
	}
	if err := handshake.HandshakeWithServer(conn, conn, &handshake.Config{SkipHandshakeVerification: true}); err != nil {
		return fail(fmt.Errorf("rtmp handshake: %w", err))
	}
	c.w.chunkSize = 4096
	setSize := binary.BigEndian.AppendUint32(nil, c.w.chunkSize)
	if err := c.w.write(2, message{typ: msgSetChunkSize, body: setSize}); err != nil {
		return fail(err)
	}
	res, err := c.call(0, "connect", amfObject{"app": app, "tcUrl": tcURL, "flashVer": "FMLE/3.0 (compatible; flvcdn)",
		"type": "nonprivate", "fpad": false, "capabilities": 15.0, "audioCodecs": 3191.0, "videoCodecs": 252.0, "videoFunction": 1.0})
	if err != nil {
		return fail(fmt.Errorf("rtmp connect: %w", err))
	}
	_ = res
	res, err = c.call(0, "createStream", nil)
	if err != nil {
		return fail(fmt.Errorf("rtmp createStream: %w", err))
	}
	if len(res) < 2 {
		return fail(fmt.Errorf("rtmp createStream: no stream id in %v", res))
	}
	id, ok := res[1].(float64)
	if !ok || id < 0 || id > 1<<20 {
		return fail(fmt.Errorf("rtmp createStream: stream id %v", res[1]))
	}
	c.streamID = uint32(id)
	_ = conn.SetDeadline(time.Time{})
	return c, name, nil
}

// call sends a command and waits for its _result (values after the transaction id)
// or _error, answering protocol control meanwhile.
func (c *rtmpClient) call(streamID uint32, name string, arg any) ([]any, error) {
	c.txn++
	txn := c.txn
	body := amfAppend(amfAppend(amfAppend(nil, name), txn), arg)
	if err := c.w.write(3, message{typ: msgCommandAMF0, streamID: streamID, body: body}); err != nil {
		return nil, err
	}
	if err := c.w.flush(); err != nil {
		return nil, err
	}
	for {
		m, err := c.readMessage()
		if err != nil {
			return nil, err
		}
		if m.typ != msgCommandAMF0 {
			continue
		}
		v := amfValues(m.body)
		if len(v) < 2 {
			continue
		}
		if t, _ := v[1].(float64); t != txn {
			continue
		}
		switch v[0] {
		case "_result":
			return v[2:], nil
		case "_error":
			return nil, fmt.Errorf("refused: %s", describe(v[2:]))
		}
	}
}

// describe returns the code and description of a status object among vs.
func describe(vs []any) string {
	for _, v := range vs {
		if o, ok := v.(amfObject); ok {
			code, _ := o["code"].(string)
			desc, _ := o["description"].(string)
			return strings.TrimSpace(code + " " + desc)
		}
	}
	return fmt.Sprint(vs...)
}

// readMessage returns the next message, acknowledging and answering pings.
func (c *rtmpClient) readMessage() (message, error) {
	if c.idle > 0 {
		_ = c.conn.SetReadDeadline(time.Now().Add(c.idle))
	}
	m, err := c.r.next()
	if err != nil {
		return m, err
	}
	switch m.typ {
	case msgWinAckSize:
		if len(m.body) >= 4 {
			if w := binary.BigEndian.Uint32(m.body); w > 0 {
				c.winAck = w
			}
		}
	case msgUserControl:
		// PingRequest (6) gets a PingResponse (7) with the same timestamp.
		if len(m.body) >= 6 && binary.BigEndian.Uint16(m.body) == 6 {
			pong := append([]byte{0, 7}, m.body[2:6]...)
			if err := c.w.write(2, message{typ: msgUserControl, body: pong}); err == nil {
				err = c.w.flush()
			}
		}
	}
	if c.r.read-c.acked >= uint64(c.winAck)/2 {
		c.acked = c.r.read
		ack := binary.BigEndian.AppendUint32(nil, uint32(c.r.read))
		if err := c.w.write(2, message{typ: msgAck, body: ack}); err != nil {
			return m, err
		}
		if err := c.w.flush(); err != nil {
			return m, err
		}
	}
	return m, nil
}

// play asks for the stream; media follows.
func (c *rtmpClient) play(name string) error {
	body := amfAppend(amfAppend(amfAppend(amfAppend(amfAppend(nil, "play"), 0.0), nil), name), -2000.0)
	if err := c.w.write(8, message{typ: msgCommandAMF0, streamID: c.streamID, body: body}); err != nil {
		return err
	}
	// SetBufferLength (3) for the stream: some servers wait for it before sending.
	buf := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint16(nil, 3), c.streamID)
	buf = binary.BigEndian.AppendUint32(buf, 3000)
	if err := c.w.write(2, message{typ: msgUserControl, body: buf}); err != nil {
		return err
	}
	return c.w.flush()
}

// publish announces a publication and waits for NetStream.Publish.Start.
func (c *rtmpClient) publish(ctx context.Context, name string) error {
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Now()) })
	defer stop()
	body := amfAppend(amfAppend(amfAppend(amfAppend(amfAppend(nil, "publish"), 0.0), nil), name), "live")
	if err := c.w.write(8, message{typ: msgCommandAMF0, streamID: c.streamID, body: body}); err != nil {
		return err
	}
	if err := c.w.flush(); err != nil {
		return err
	}
	for {
		m, err := c.readMessage()
		if err != nil {
			return fmt.Errorf("rtmp publish: %w", err)
		}
		if m.typ != msgCommandAMF0 {
			continue
		}
		v := amfValues(m.body)
		if len(v) == 0 || v[0] != "onStatus" {
			if len(v) > 0 && v[0] == "_error" {
				return fmt.Errorf("rtmp publish refused: %s", describe(v))
			}
			continue
		}
		st := describe(v)
		if strings.HasPrefix(st, "NetStream.Publish.Start") {
			_ = c.conn.SetDeadline(time.Time{})
			return nil
		}
		if strings.Contains(st, "Error") || strings.Contains(st, "Failed") || strings.Contains(st, "BadName") {
			return fmt.Errorf("rtmp publish refused: %s", st)
		}
	}
}

// errUpstreamEnded: the upstream said the stream stopped.
var errUpstreamEnded = errors.New("upstream ended the stream")

// nextTag returns the next media or metadata of a played stream as an FLV tag
// (type, timestamp, body). The body is the message's own buffer (not reused).
func (c *rtmpClient) nextTag() (byte, uint32, []byte, error) {
	for {
		m, err := c.readMessage()
		if err != nil {
			return 0, 0, nil, err
		}
		switch m.typ {
		case msgAudio:
			return flv.TypeAudio, m.ts, m.body, nil
		case msgVideo:
			return flv.TypeVideo, m.ts, m.body, nil
		case msgDataAMF0:
			// "@setDataFrame" + "onMetaData" + object, or "onMetaData" + object: the
			// FLV script body is the part from "onMetaData".
			body := m.body
			if v, rest, err := amfValue(body, 0); err == nil && v == "@setDataFrame" {
				body = rest
			}
			if name, _, err := amfValue(body, 0); err == nil && name == "onMetaData" {
				return flv.TypeScript, 0, body, nil
			}
		case msgCommandAMF0:
			v := amfValues(m.body)
			if len(v) > 0 && v[0] == "onStatus" {
				st := describe(v)
				switch {
				case strings.HasPrefix(st, "NetStream.Play.Stop"), strings.HasPrefix(st, "NetStream.Play.UnpublishNotify"):
					return 0, 0, nil, errUpstreamEnded
				case strings.Contains(st, "NotFound"), strings.Contains(st, "Failed"), strings.Contains(st, "Error"):
					return 0, 0, nil, fmt.Errorf("upstream refused play: %s", st)
				}
			}
		case msgAggregate, msgDataAMF3, msgCommandAMF3:
			// Not sent by the servers this relay is tested against; skipped.
		}
	}
}

// writeTag sends one FLV tag of a published stream.
func (c *rtmpClient) writeTag(typ byte, ts uint32, body []byte) error {
	var m message
	var csid byte
	switch typ {
	case flv.TypeAudio:
		m, csid = message{typ: msgAudio, ts: ts, streamID: c.streamID, body: body}, 4
	case flv.TypeVideo:
		m, csid = message{typ: msgVideo, ts: ts, streamID: c.streamID, body: body}, 6
	case flv.TypeScript:
		b := amfAppend(nil, "@setDataFrame")
		m, csid = message{typ: msgDataAMF0, ts: ts, streamID: c.streamID, body: append(b, body...)}, 5
	default:
		return nil
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return c.w.write(csid, m)
}

func (c *rtmpClient) flush() error { return c.w.flush() }

func (c *rtmpClient) Close() error { return c.conn.Close() }
