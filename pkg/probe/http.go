package probe

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Transport opens one connection to a live FLV URL and returns the FLV bytes: HTTP
// (HTTP-FLV) or WebSocket (WebSocket-FLV, binary messages carrying the same byte
// stream). Watch only needs the bytes.
type Transport interface {
	Open(ctx context.Context, url string, c *Checker) (io.ReadCloser, error)
}

// HTTP is the HTTP-FLV transport: a GET whose 200 body is the FLV stream.
type HTTP struct {
	Client *http.Client // nil: a client that leaves the body as sent (no gzip)
	Header http.Header  // added to the request
}

var defaultClient = &http.Client{Transport: &http.Transport{
	Proxy:                 http.ProxyFromEnvironment,
	ResponseHeaderTimeout: 10 * time.Second,
	DisableCompression:    true,
}}

// Open sends the GET and, on a 200, records the answer in c and returns the body. Any
// other status is an error that quotes the start of the body.
func (h HTTP) Open(ctx context.Context, url string, c *Checker) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("request %s: %w", url, err)
	}
	for k, vs := range h.Header {
		req.Header[k] = vs
	}
	client := h.Client
	if client == nil {
		client = defaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	c.Responded(time.Now(), resp.StatusCode, resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: status %d, body %q", url, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return resp.Body, nil
}
