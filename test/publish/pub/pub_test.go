package pub

import (
	"errors"
	"io"
	"os"
	"testing"
)

func TestDumpInputs(t *testing.T) {
	dir := os.Getenv("PUB_MEDIA")
	if dir == "" {
		t.Skip("PUB_MEDIA not set")
	}
	for _, f := range []string{"av1.ivf", "hevc.h265", "vp9.ivf", "opus.ogg", "aac.adts"} {
		tr, _, err := Open(dir+"/"+f, Options{})
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		w, h := tr.Size()
		n, keys := 0, 0
		var last Frame
		for {
			fr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			n++
			if fr.Key {
				keys++
			}
			last = fr
		}
		t.Logf("%s: %s %dx%d rate %.1f config %d bytes %x; %d frames, %d keys, last at %v", f, tr.FourCC(), w, h, tr.Rate(), len(tr.Config()), tr.Config()[:min(8, len(tr.Config()))], n, keys, last.Time)
	}
}
