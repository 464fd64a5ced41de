package web

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
)

func TestHandlerServesPageAndPlayer(t *testing.T) {
	js, err := os.ReadFile("assets/mpegts.js")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler())
	defer srv.Close()

	tests := []struct {
		method, path string
		wantStatus   int
		wantType     string
		wantBody     func([]byte) bool
	}{
		{"GET", "/", 200, "text/html; charset=utf-8", func(b []byte) bool {
			return bytes.Contains(b, []byte("window.flvcdnStats")) && bytes.Contains(b, []byte(`src="/mpegts.js"`))
		}},
		{"GET", "/?stream=live/e2e", 200, "text/html; charset=utf-8", func(b []byte) bool {
			return bytes.Contains(b, []byte("<video"))
		}},
		{"GET", "/wall?streams=live/a,live/b&transport=ws", 200, "text/html; charset=utf-8", func(b []byte) bool {
			return bytes.Contains(b, []byte("window.flvcdnWall")) && bytes.Contains(b, []byte(`src="/mpegts.js"`))
		}},
		{"GET", "/mpegts.js", 200, "text/javascript; charset=utf-8", func(b []byte) bool { return bytes.Equal(b, js) }},
		{"HEAD", "/mpegts.js", 200, "text/javascript; charset=utf-8", func(b []byte) bool { return len(b) == 0 }},
		{"HEAD", "/", 200, "text/html; charset=utf-8", func(b []byte) bool { return len(b) == 0 }},
		{"GET", "/nope.js", 404, "", nil},
		{"GET", "/live/demo.flv", 404, "", nil},
		{"POST", "/", 405, "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if tc.wantType != "" {
				if got := resp.Header.Get("Content-Type"); got != tc.wantType {
					t.Errorf("Content-Type %q, want %q", got, tc.wantType)
				}
				if got := resp.Header.Get("Content-Length"); tc.method == "GET" && got == "" {
					t.Errorf("no Content-Length")
				}
			}
			if tc.wantBody != nil && !tc.wantBody(body) {
				n := min(len(body), 200)
				t.Errorf("unexpected body (%d bytes): %q", len(body), body[:n])
			}
		})
	}
}

func TestHandlerRevalidates(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/mpegts.js")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	etag := resp.Header.Get("ETag")
	if !strings.HasPrefix(etag, `"`) {
		t.Fatalf("ETag %q", etag)
	}
	req, _ := http.NewRequest("GET", srv.URL+"/mpegts.js", nil)
	req.Header.Set("If-None-Match", etag)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified {
		t.Fatalf("status %d with matching If-None-Match, want 304", resp.StatusCode)
	}
}

// The embedded build must be the minified mpegts.js, not the source map or a dev build,
// and its licence must travel with it.
func TestAssetsLicensed(t *testing.T) {
	lic, err := os.ReadFile("assets/LICENSE.mpegts.txt")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(lic, []byte("Apache License")) || !bytes.Contains(lic, []byte("Version 2.0")) {
		t.Error("LICENSE.mpegts.txt is not the Apache License 2.0")
	}
	if len(mpegtsJS.body) < 100_000 || !bytes.Contains(mpegtsJS.body[:200], []byte("mpegts.js.LICENSE.txt")) {
		t.Error("assets/mpegts.js does not look like the minified mpegts.js build")
	}
}
