package probe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// WebSocket is the WebSocket-FLV transport: a ws:// or wss:// URL whose binary
// messages, concatenated, are the FLV byte stream. A text message is an error, and
// so is a close with any status but 1000 (normal closure).
type WebSocket struct {
	Client *http.Client // nil: the library's default client
	Header http.Header  // added to the handshake
}

// Open dials the URL and, when the server switches protocols, records the 101 in c
// and returns the message stream. A refused handshake is an error with its status.
func (w WebSocket) Open(ctx context.Context, url string, c *Checker) (io.ReadCloser, error) {
	conn, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: w.Client, HTTPHeader: w.Header})
	if err != nil {
		if resp != nil {
			c.Responded(time.Now(), resp.StatusCode, resp.Header.Get("Content-Type"))
			return nil, fmt.Errorf("websocket %s: status %d: %w", url, resp.StatusCode, err)
		}
		return nil, fmt.Errorf("websocket %s: %w", url, err)
	}
	c.Responded(time.Now(), resp.StatusCode, "")
	conn.SetReadLimit(-1) // a message is a merge window of tags, a join burst included
	return &wsStream{ctx: ctx, c: conn}, nil
}

// wsStream reads binary messages as one byte stream.
type wsStream struct {
	ctx context.Context
	c   *websocket.Conn
	cur io.Reader
}

func (s *wsStream) Read(p []byte) (int, error) {
	for {
		if s.cur != nil {
			n, err := s.cur.Read(p)
			if n > 0 || !errors.Is(err, io.EOF) {
				return n, err
			}
			s.cur = nil
		}
		typ, r, err := s.c.Reader(s.ctx)
		if websocket.CloseStatus(err) == websocket.StatusNormalClosure {
			return 0, io.EOF // the server ended the stream cleanly
		}
		if err != nil {
			return 0, err
		}
		if typ != websocket.MessageBinary {
			return 0, fmt.Errorf("websocket: a %v message in an FLV stream", typ)
		}
		s.cur = r
	}
}

func (s *wsStream) Close() error { return s.c.CloseNow() }

// Dial opens url with the transport its scheme names: WebSocket for ws:// and wss://,
// HTTP for http:// and https://.
func Dial(ctx context.Context, url string, c *Checker, client *http.Client) (io.ReadCloser, error) {
	if strings.HasPrefix(url, "ws://") || strings.HasPrefix(url, "wss://") {
		return WebSocket{Client: client}.Open(ctx, url, c)
	}
	return HTTP{Client: client}.Open(ctx, url, c)
}
