package httpflv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/flv"
)

// rawExchange sends one request line (with Host and Connection: close for HTTP/1.1;
// an HTTP/1.0 request goes as old clients send it, without Host) over a fresh TCP
// connection and reads until the server closes it. It returns the parsed response
// and every byte that came after the header block.
func rawExchange(t *testing.T, addr, method, path, proto string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := fmt.Sprintf("%s %s %s\r\n", method, path, proto)
	if proto == "HTTP/1.1" {
		req += "Host: " + addr + "\r\nConnection: close\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(conn) // ends when the server closes the connection
	if err != nil {
		t.Fatalf("%s %s %s: the connection did not close after the response: %v", method, path, proto, err)
	}
	end := bytes.Index(raw, []byte("\r\n\r\n"))
	if end < 0 {
		t.Fatalf("%s %s %s: no complete header block in %q", method, path, proto, raw)
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %s %s: %v", method, path, proto, err)
	}
	resp.Body.Close()
	return resp, raw[end+4:]
}

// HEAD, OPTIONS and a 404 answer an HTTP/1.0 client as they answer HTTP/1.1: same
// status, same Content-Type, CORS and Allow headers, no body where there is none, no
// chunked encoding, and the connection closed after the response.
func TestHTTP10AnswersAsHTTP11(t *testing.T) {
	r := newTransportRig(t, edge.Config{}, &Server{CORSOrigin: "*"})
	r.live(t, "live/a")
	headers := []string{"Content-Type", "Cache-Control", "X-Content-Type-Options", "Allow",
		"Access-Control-Allow-Origin", "Access-Control-Expose-Headers", "Access-Control-Allow-Methods",
		"Access-Control-Allow-Headers", "Access-Control-Max-Age"}
	cases := []struct {
		method, path string
		code         int
		contentType  string
		body         string // a prefix of the body; "" means no body at all
	}{
		{"HEAD", "/live/a.flv", 200, "video/x-flv", ""},
		{"HEAD", "/live/none.flv", 404, "text/plain; charset=utf-8", ""},
		{"OPTIONS", "/live/a.flv", 204, "", ""},
		{"GET", "/live/none.flv", 404, "text/plain; charset=utf-8", "stream not found: live/none"},
	}
	for _, tc := range cases {
		old, oldBody := rawExchange(t, r.plain, tc.method, tc.path, "HTTP/1.0")
		cur, curBody := rawExchange(t, r.plain, tc.method, tc.path, "HTTP/1.1")
		what := tc.method + " " + tc.path
		if old.Proto != "HTTP/1.0" || old.StatusCode != tc.code || old.Header.Get("Content-Type") != tc.contentType ||
			old.Header.Get("Access-Control-Allow-Origin") != "*" || len(old.TransferEncoding) != 0 {
			t.Errorf("%s over HTTP/1.0: %s %s, transfer-encoding %v, headers %v", what, old.Proto, old.Status, old.TransferEncoding, old.Header)
		}
		if cur.StatusCode != old.StatusCode {
			t.Errorf("%s: %s over HTTP/1.1, %s over HTTP/1.0", what, cur.Status, old.Status)
		}
		for _, h := range headers {
			if a, b := old.Header.Values(h), cur.Header.Values(h); fmt.Sprint(a) != fmt.Sprint(b) {
				t.Errorf("%s: %s is %q over HTTP/1.0, %q over HTTP/1.1", what, h, a, b)
			}
		}
		if tc.method == "OPTIONS" && (old.Header.Get("Allow") != "GET, HEAD, OPTIONS" || old.Header.Get("Access-Control-Allow-Methods") == "") {
			t.Errorf("%s over HTTP/1.0: Allow %q, Access-Control-Allow-Methods %q", what, old.Header.Get("Allow"), old.Header.Get("Access-Control-Allow-Methods"))
		}
		for proto, body := range map[string][]byte{"HTTP/1.0": oldBody, "HTTP/1.1": curBody} {
			if tc.body == "" && len(body) != 0 || !bytes.HasPrefix(body, []byte(tc.body)) {
				t.Errorf("%s over %s: body %q, want %q", what, proto, body, tc.body)
			}
		}
	}
}

// An HTTP/1.0 viewer gets the stream as a body delimited by the connection's close:
// no chunked encoding, no length, the FLV header and then whole tags, and when the
// stream ends the edge closes the connection after the last whole tag.
func TestHTTP10GetEndsWithTheStream(t *testing.T) {
	r := newTransportRig(t, edge.Config{Grace: 200 * time.Millisecond}, &Server{CORSOrigin: "*"})
	stop := r.live(t, "live/a")
	conn, err := net.Dial("tcp", r.plain)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(conn, "GET /live/a.flv HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	// No resp.Body.Close: it would read on to the deadline if the body never ended;
	// closing conn ends it.
	if resp.StatusCode != 200 || resp.Proto != "HTTP/1.0" || len(resp.TransferEncoding) != 0 || resp.ContentLength != -1 ||
		!resp.Close || resp.Header.Get("Content-Type") != "video/x-flv" || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("%s %s, transfer-encoding %v, length %d, close %v, headers %v",
			resp.Proto, resp.Status, resp.TransferEncoding, resp.ContentLength, resp.Close, resp.Header)
	}
	// resp.Body is the connection's bytes as they come (no framing to undo).
	body := readAtLeast(t, "http/1.0", resp.Body, 32<<10)
	stop()
	stopped := time.Now()
	rest, err := io.ReadAll(resp.Body) // the edge closes the connection when the stream ends
	closed := time.Since(stopped)
	if err != nil {
		t.Fatalf("after the stream ended: %v (%d bytes read); want the connection closed", err, len(rest))
	}
	body = append(body, rest...)
	if v := checkFLV(t, "http/1.0", body); v < 5 {
		t.Errorf("%d video tags", v)
	}
	fr := flv.NewReader(bytes.NewReader(body), 0)
	if err := fr.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	tags := 0
	for {
		_, err := fr.ReadTag()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the body of %d bytes ends inside a tag after %d whole ones: %v", len(body), tags, err)
		}
		tags++
	}
	t.Logf("%d bytes in %d whole tags; the connection closed %v after the publisher left (grace 200ms)", len(body), tags, closed.Round(time.Millisecond))
}
