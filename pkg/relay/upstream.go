package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// upstream is a connected source of one stream's tags.
type upstream interface {
	// next returns the next tag; its body is not reused by the upstream.
	next() (typ byte, ts uint32, body []byte, err error)
	Close() error
}

// errInvalid marks an upstream that sent something that is not a valid stream.
var errInvalid = errors.New("upstream sent invalid data")

// dialUpstream connects to u (rtmp://, http://, https://) within ctx; idle bounds
// the wait for each tag afterwards.
func dialUpstream(ctx context.Context, u *url.URL, idle time.Duration) (upstream, error) {
	switch u.Scheme {
	case "rtmp":
		c, name, err := dialRTMP(ctx, u, idle)
		if err != nil {
			return nil, err
		}
		if err := c.play(name); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("rtmp play: %w", err)
		}
		return rtmpUpstream{c}, nil
	case "http", "https":
		return dialHTTPFLV(ctx, u, idle)
	}
	return nil, fmt.Errorf("unsupported scheme %q", u.Scheme)
}

type rtmpUpstream struct{ c *rtmpClient }

func (r rtmpUpstream) next() (byte, uint32, []byte, error) {
	typ, ts, body, err := r.c.nextTag()
	if errors.Is(err, errProtocol) {
		err = fmt.Errorf("%w: %w", errInvalid, err)
	}
	return typ, ts, body, err
}

func (r rtmpUpstream) Close() error { return r.c.Close() }

// httpFLV reads an HTTP-FLV response.
type httpFLV struct {
	resp   *http.Response
	r      *flv.Reader
	cancel context.CancelFunc
	idle   time.Duration
	timer  *time.Timer
}

var httpTransport = &http.Transport{
	DialContext:           (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	ResponseHeaderTimeout: 10 * time.Second,
	TLSHandshakeTimeout:   5 * time.Second,
	DisableCompression:    true,
}

func dialHTTPFLV(ctx context.Context, u *url.URL, idle time.Duration) (upstream, error) {
	// The response outlives ctx (the dial deadline): it gets its own context,
	// cancelled by Close or when no tag arrives for idle.
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set("User-Agent", "flvcdn-relay")
	resp, err := (&http.Client{Transport: httpTransport}).Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	if !stop() {
		resp.Body.Close()
		cancel()
		return nil, ctx.Err()
	}
	h := &httpFLV{resp: resp, r: flv.NewReader(resp.Body, 0), cancel: cancel, idle: idle, timer: time.AfterFunc(idle, cancel)}
	h.r.KnownTypes = true
	if err := h.r.ReadHeader(); err != nil {
		h.Close()
		return nil, fmt.Errorf("%w: %w", errInvalid, err)
	}
	return h, nil
}

func (h *httpFLV) next() (byte, uint32, []byte, error) {
	h.timer.Reset(h.idle)
	t, err := h.r.ReadTag()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return 0, 0, nil, errUpstreamEnded
		}
		if errors.Is(err, flv.ErrPrevTagSize) || errors.Is(err, flv.ErrTooLarge) || errors.Is(err, flv.ErrTagType) {
			err = fmt.Errorf("%w: %w", errInvalid, err)
		}
		return 0, 0, nil, err
	}
	return t.Type(), t.Timestamp(), t.Body(), nil
}

func (h *httpFLV) Close() error {
	h.timer.Stop()
	h.cancel()
	return h.resp.Body.Close()
}
