// Package rtmp owns RTMP ingest. go-rtmp (github.com/yutopp/go-rtmp) does the handshake
// and the commands (connect, createStream, publish, onStatus replies); this package
// validates app/stream names and keys and hands each audio, video and metadata tag to an
// ingest Publication.
//
// Between the socket and go-rtmp sits our chunk-stream normaliser (chunknorm.go). It
// parses the client's chunks itself (working around go-rtmp's extended-timestamp defect,
// setting socket deadlines, sending acknowledgements) and takes audio and video away from
// go-rtmp: their chunk payloads are read from the connection's read buffer straight into
// the body of a tag from Publication.Alloc, the one copy this package makes of them, and
// the tag goes to Publication.Write. Metadata (@setDataFrame, a few hundred bytes a
// stream) still goes through go-rtmp and is copied four or five times on the way: into
// the normaliser's message buffer, go-rtmp's read buffer (unless go-rtmp reads past it),
// its message buffer, its @setDataFrame decode buffer, then the tag. This package never
// keeps media.
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
	// Publish authorises and starts a session. The publisher is refused with
	// NetStream.Publish.Unauthorized when the error wraps ErrUnauthorized, else with
	// NetStream.Publish.Failed; the error's text is the description it reads.
	Publish(ctx context.Context, req PublishRequest) (Publication, error)
}

// PublishRequest describes a publish command.
type PublishRequest struct {
	Name stream.Name
	// Key is the ?key= value (from the stream name, else from the app).
	Key      string
	ClientIP string
	// Query is the raw query string of the publish URL: the stream name's, else the app's.
	Query string
}

// ErrUnauthorized marks a refusal for lack of authorisation (see Unauthorized).
var ErrUnauthorized = errors.New("not authorized")

// Unauthorized returns err marked as ErrUnauthorized, its text unchanged.
func Unauthorized(err error) error { return unauthorized{err} }

type unauthorized struct{ error }

func (u unauthorized) Unwrap() []error { return []error{u.error, ErrUnauthorized} }

// codePublishUnauthorized: go-rtmp v0.0.7 has no constant for this onStatus code.
const codePublishUnauthorized rtmpmsg.NetStreamOnStatusCode = "NetStream.Publish.Unauthorized"

// Publication is one accepted publishing session.
type Publication interface {
	// Alloc returns a new tag of type typ at timestamp ts with an n-byte body that the
	// caller fills (t.Body()) before handing the tag to Write. The tag's backing array
	// may have headroom before it that belongs to the publication.
	Alloc(typ byte, ts uint32, n int) flv.Tag
	// Write ingests a tag obtained from Alloc, body filled. From then on the tag is
	// shared and immutable: the caller must not touch it again.
	Write(t flv.Tag) error
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
			h.norm = newChunkNormalizer(conn, normalizerConfig{
				ReadTimeout: s.ReadTimeout, WriteTimeout: s.ReadTimeout, Ack: h.sendAck})
			return h.norm, &gortmp.ConnConfig{
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
	norm     *chunkNormalizer
	slot     bool
	refuse   string
	deadline *time.Timer

	app       string
	appKey    string
	appQuery  string
	mu        sync.Mutex
	pub       Publication
	name      stream.Name
	pubStream uint32        // message stream id of the publish
	done      chan struct{} // closed by OnClose; ends the kick watcher
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
	h.appKey, h.appQuery = queryKey(q), q
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
	req := PublishRequest{Name: name, Key: queryKey(q), Query: q}
	if req.Key == "" {
		req.Key = h.appKey
	}
	if req.Query == "" {
		req.Query = h.appQuery
	}
	req.ClientIP, _, _ = net.SplitHostPort(h.remote)
	pub, err := h.srv.Ingest.Publish(h.ctx, req)
	if err != nil {
		h.srv.Log.Warn("rtmp: publish refused", "remote", h.remote, "stream", name, "err", err)
		code := rtmpmsg.NetStreamOnStatusCodePublishFailed
		if errors.Is(err, ErrUnauthorized) {
			code = codePublishUnauthorized
		}
		h.status(sc, code, fmt.Sprintf("%s: %v", name, err))
		return err
	}
	h.mu.Lock()
	h.pub, h.name, h.pubStream = pub, name, sc.StreamID
	h.mu.Unlock()
	// From the next message on, the normaliser delivers this stream's media to pub.
	h.norm.publish(sc.StreamID, pub, h.srv.Log.With("stream", name))
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

// OnSetDataFrame copies the metadata into a tag: the @setDataFrame payload is already
// "onMetaData" + object, an FLV script body. (Audio and video never reach go-rtmp: the
// normaliser delivers them, so OnAudio and OnVideo stay DefaultHandler's.)
func (h *handler) OnSetDataFrame(ts uint32, data *rtmpmsg.NetStreamSetDataFrame) error {
	if h.pub == nil || len(data.Payload) == 0 {
		return nil
	}
	t := h.pub.Alloc(flv.TypeScript, ts, len(data.Payload))
	copy(t.Body(), data.Payload)
	if err := h.pub.Write(t); err != nil {
		h.srv.Log.Debug("rtmp: metadata not delivered", "stream", h.name, "err", err)
	}
	return nil
}

// OnDeleteStream ends the delivery of media when the client deletes the publishing
// stream (ffmpeg 5.1 does before it disconnects); the publication itself ends with
// the connection.
func (h *handler) OnDeleteStream(_ uint32, cmd *rtmpmsg.NetStreamDeleteStream) error {
	if h.pub != nil && cmd.StreamID == h.pubStream {
		h.norm.unpublish()
	}
	return nil
}

// sendAck is the normaliser's way to acknowledge received bytes: through go-rtmp's
// writer, on the control chunk stream, like the acknowledgements go-rtmp sends itself.
// The normaliser calls it from go-rtmp's read loop, the goroutine that makes all of
// go-rtmp's other Write calls too (its message encoder is not safe for concurrent use).
func (h *handler) sendAck(seq uint32) error {
	if h.rtmpConn == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(h.ctx, h.srv.ReadTimeout)
	defer cancel()
	return h.rtmpConn.Write(ctx, 2, 0, &gortmp.ChunkMessage{StreamID: 0, Message: &rtmpmsg.Ack{SequenceNumber: seq}})
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
// go-rtmp follows it with its generic NetStream.Publish.Failed. Ours goes on the chunk
// stream of the publish command, where go-rtmp answers too: go-rtmp writes one message
// per chunk stream at a time, so ours arrives complete first even when it spans
// several chunks (on another chunk stream go-rtmp's one-chunk status could overtake
// it, and ffmpeg prints the first error status it gets).
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
	csid := int(h.norm.commandCSID())
	if csid < 3 {
		csid = 5
	}
	_ = h.rtmpConn.Write(ctx, csid, 0, &gortmp.ChunkMessage{StreamID: sc.StreamID, Message: &rtmpmsg.CommandMessage{
		CommandName: "onStatus", Encoding: rtmpmsg.EncodingTypeAMF0, Body: &buf}})
}

func queryKey(q string) string {
	v, err := url.ParseQuery(q)
	if err != nil {
		return ""
	}
	return v.Get("key")
}
