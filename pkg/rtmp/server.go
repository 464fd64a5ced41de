// Package rtmp owns RTMP ingest: it accepts publishers with go-rtmp, validates their
// app/stream names and keys, and hands each audio, video and metadata payload to an
// ingest Publication. Below go-rtmp sits a chunk-stream normaliser (chunknorm.go)
// that works around go-rtmp's extended-timestamp defect and sets socket deadlines.
// This package never keeps media; it only passes payloads through.
package rtmp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	gortmp "github.com/yutopp/go-rtmp"
	rtmpmsg "github.com/yutopp/go-rtmp/message"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// Ingest accepts publishers (package origin implements it).
type Ingest interface {
	// Publish authorises and starts a session; key is the publisher's ?key= value.
	Publish(ctx context.Context, name stream.Name, key string) (Publication, error)
}

// Publication is one accepted publishing session.
type Publication interface {
	// WriteTag ingests one tag body; body is not retained after the call.
	WriteTag(typ byte, ts uint32, body []byte) error
	// Kicked is closed when the origin wants this publisher disconnected.
	Kicked() <-chan struct{}
	Close(ctx context.Context)
}

// Server is an RTMP listener. Zero durations take defaults.
type Server struct {
	Ingest Ingest
	Log    *slog.Logger
	// ReadTimeout closes a connection that sends nothing for this long. Default 15s.
	ReadTimeout time.Duration
	// HandshakeTimeout bounds the time to a publish command. Default 10s.
	HandshakeTimeout time.Duration
	// MaxConns bounds concurrent RTMP connections (0 = 1024).
	MaxConns int

	srv   *gortmp.Server
	slots chan struct{}
}

// Serve accepts connections on ln until ctx ends or ln fails.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.ReadTimeout <= 0 {
		s.ReadTimeout = 15 * time.Second
	}
	if s.HandshakeTimeout <= 0 {
		s.HandshakeTimeout = 10 * time.Second
	}
	if s.MaxConns <= 0 {
		s.MaxConns = 1024
	}
	s.slots = make(chan struct{}, s.MaxConns)
	quiet := logrus.New()
	quiet.SetOutput(io.Discard)
	s.srv = gortmp.NewServer(&gortmp.ServerConfig{
		OnConnect: func(conn net.Conn) (io.ReadWriteCloser, *gortmp.ConnConfig) {
			h := &handler{srv: s, ctx: ctx, remote: conn.RemoteAddr().String(), conn: conn}
			select {
			case s.slots <- struct{}{}:
				h.slot = true
			default:
				h.refuse = "too many connections"
			}
			// go-rtmp sets no deadlines; the normaliser sets one before every read and write.
			// A publisher must reach publish within the handshake timeout.
			h.deadline = time.AfterFunc(s.HandshakeTimeout, func() {
				if !h.started() {
					s.Log.Warn("rtmp: no publish before handshake timeout", "remote", h.remote)
					conn.Close()
				}
			})
			rw := newChunkNormalizer(conn, normalizerConfig{ReadTimeout: s.ReadTimeout, WriteTimeout: s.ReadTimeout})
			return rw, &gortmp.ConnConfig{
				Handler: h,
				Logger:  quiet,
				ControlState: gortmp.StreamControlStateConfig{
					DefaultBandwidthWindowSize: 6 * 1024 * 1024 / 8,
				},
			}
		},
	})
	stop := context.AfterFunc(ctx, func() { _ = s.srv.Close() })
	defer stop()
	err := s.srv.Serve(ln)
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("rtmp: serve: %w", err)
}

// handler is one RTMP connection. go-rtmp calls it from the connection's goroutine.
type handler struct {
	gortmp.DefaultHandler
	srv      *Server
	ctx      context.Context
	remote   string
	conn     net.Conn
	rtmpConn *gortmp.Conn
	slot     bool
	refuse   string
	deadline *time.Timer

	app     string
	appKey  string
	mu      sync.Mutex
	pub     Publication
	name    stream.Name
	scratch bytes.Buffer
	done    chan struct{} // closed by OnClose; ends the kick watcher
}

func (h *handler) started() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pub != nil
}

func (h *handler) OnServe(c *gortmp.Conn) { h.rtmpConn = c }

func (h *handler) OnConnect(_ uint32, cmd *rtmpmsg.NetConnectionConnect) error {
	if h.refuse != "" {
		h.srv.Log.Warn("rtmp: connection refused", "remote", h.remote, "reason", h.refuse)
		return errors.New(h.refuse)
	}
	// Some clients put the query on the app ("live?key=..."); keep the key either way.
	app, q, _ := strings.Cut(cmd.Command.App, "?")
	h.app = strings.TrimSuffix(app, "/")
	h.appKey = queryKey(q)
	return nil
}

func (h *handler) OnPublish(sc *gortmp.StreamContext, ts uint32, cmd *rtmpmsg.NetStreamPublish) error {
	raw, q, _ := strings.Cut(cmd.PublishingName, "?")
	name, err := stream.NewName(h.app, raw)
	if err != nil {
		h.srv.Log.Warn("rtmp: publish refused: bad name", "remote", h.remote, "err", err)
		h.status(sc, rtmpmsg.NetStreamOnStatusCodePublishBadName, "bad stream name: "+err.Error())
		return err
	}
	key := queryKey(q)
	if key == "" {
		key = h.appKey
	}
	pub, err := h.srv.Ingest.Publish(h.ctx, name, key)
	if err != nil {
		h.srv.Log.Warn("rtmp: publish refused", "remote", h.remote, "stream", name, "err", err)
		h.status(sc, rtmpmsg.NetStreamOnStatusCodePublishFailed, fmt.Sprintf("%s: %v", name, err))
		return err
	}
	h.mu.Lock()
	h.pub, h.name = pub, name
	h.mu.Unlock()
	h.deadline.Stop()
	// Close the connection when the origin kicks this publisher (its claim was lost).
	h.done = make(chan struct{})
	go func(kicked <-chan struct{}, done <-chan struct{}) {
		select {
		case <-kicked:
			h.conn.Close()
		case <-done:
		}
	}(pub.Kicked(), h.done)
	h.srv.Log.Info("rtmp: publishing", "remote", h.remote, "stream", name)
	return nil
}

func (h *handler) OnSetDataFrame(ts uint32, data *rtmpmsg.NetStreamSetDataFrame) error {
	if h.pub == nil {
		return nil
	}
	// The @setDataFrame payload is already "onMetaData" + object: an FLV script body.
	return h.write(flv.TypeScript, ts, bytes.NewReader(data.Payload))
}

func (h *handler) OnAudio(ts uint32, payload io.Reader) error {
	return h.write(flv.TypeAudio, ts, payload)
}

func (h *handler) OnVideo(ts uint32, payload io.Reader) error {
	return h.write(flv.TypeVideo, ts, payload)
}

// write drains go-rtmp's reused payload reader into a per-connection scratch buffer;
// WriteTag then copies it once into the immutable frame that everyone shares.
func (h *handler) write(typ byte, ts uint32, payload io.Reader) error {
	if h.pub == nil {
		return errors.New("rtmp: media before publish")
	}
	h.scratch.Reset()
	if _, err := h.scratch.ReadFrom(payload); err != nil {
		return fmt.Errorf("rtmp: read payload: %w", err)
	}
	if err := h.pub.WriteTag(typ, ts, h.scratch.Bytes()); err != nil {
		h.srv.Log.Debug("rtmp: tag not delivered", "stream", h.name, "err", err)
	}
	if h.scratch.Cap() > 1<<20 {
		h.scratch = bytes.Buffer{} // don't pin a huge keyframe's buffer for the session
	}
	return nil
}

func (h *handler) OnClose() {
	h.deadline.Stop()
	if h.done != nil {
		close(h.done)
	}
	h.mu.Lock()
	pub := h.pub
	h.pub = nil
	h.mu.Unlock()
	if pub != nil {
		pub.Close(h.ctx)
		h.srv.Log.Info("rtmp: publisher left", "remote", h.remote, "stream", h.name)
	}
	if h.slot {
		<-h.srv.slots
	}
}

// status sends an onStatus error with a description the publisher can read;
// go-rtmp follows it with its generic NetStream.Publish.Failed.
func (h *handler) status(sc *gortmp.StreamContext, code rtmpmsg.NetStreamOnStatusCode, desc string) {
	if h.rtmpConn == nil || sc == nil {
		return
	}
	var buf bytes.Buffer
	enc := rtmpmsg.NewAMFEncoder(&buf, rtmpmsg.EncodingTypeAMF0)
	body := &rtmpmsg.NetStreamOnStatus{InfoObject: rtmpmsg.NetStreamOnStatusInfoObject{
		Level: rtmpmsg.NetStreamOnStatusLevelError, Code: code, Description: desc}}
	if err := rtmpmsg.EncodeBodyAnyValues(enc, body); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(h.ctx, time.Second)
	defer cancel()
	_ = h.rtmpConn.Write(ctx, 5, 0, &gortmp.ChunkMessage{StreamID: sc.StreamID, Message: &rtmpmsg.CommandMessage{
		CommandName: "onStatus", Encoding: rtmpmsg.EncodingTypeAMF0, Body: &buf}})
}

func queryKey(q string) string {
	v, err := url.ParseQuery(q)
	if err != nil {
		return ""
	}
	return v.Get("key")
}
