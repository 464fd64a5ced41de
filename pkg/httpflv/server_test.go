package httpflv

import (
	"errors"
	"strings"
	"testing"

	"github.com/flvcdn/flvcdn/pkg/stream"
)

func TestParsePath(t *testing.T) {
	good := map[string]stream.Name{"/live/demo.flv": "live/demo", "/a-1/B_2.flv": "a-1/B_2"}
	for p, want := range good {
		if got, err := ParsePath(p); err != nil || got != want {
			t.Errorf("%q: %q %v", p, got, err)
		}
	}
	for _, p := range []string{"/", "/live/demo", "/live/demo.mp4", "/live.flv", "/live/de.mo.flv",
		"/live/demo/x.flv", "/../x/y.flv", "/live/%2e.flv", "/" + strings.Repeat("a", 65) + "/b.flv"} {
		if _, err := ParsePath(p); err == nil {
			t.Errorf("%q accepted", p)
		}
	}
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"/live/demo.flv", "/a/b.flv", "//.flv", "/x/y/z.flv", "/\x00/a.flv"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		n, err := ParsePath(p)
		if err != nil {
			if !errors.Is(err, stream.ErrBadName) && !strings.Contains(err.Error(), "want /app/stream.flv") {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		// Whatever is accepted must be safe as NATS subject tokens and Redis keys.
		if _, err := stream.ParseName(string(n)); err != nil {
			t.Fatalf("accepted %q gives invalid name %q", p, n)
		}
	})
}
