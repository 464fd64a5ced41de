package relay

import (
	"bytes"
	"errors"
	"io"
	"net/url"
	"strings"
	"testing"
)

// Messages written by the relay's chunk writer read back through its reader,
// across chunk sizes, chunk streams and extended timestamps.
func TestChunksRoundTrip(t *testing.T) {
	for _, size := range []uint32{128, 4096, 60000} {
		var buf bytes.Buffer
		w := newChunkWriter(&buf)
		w.chunkSize = size
		msgs := []message{
			{typ: msgVideo, ts: 0, streamID: 1, body: bytes.Repeat([]byte{1}, 10000)},
			{typ: msgAudio, ts: 23, streamID: 1, body: []byte{0xaf, 1, 2}},
			{typ: msgVideo, ts: 0xffffff + 5, streamID: 1, body: bytes.Repeat([]byte{2}, 300)}, // extended timestamp
			{typ: msgDataAMF0, ts: 0x1000000, streamID: 1, body: nil},
		}
		csids := []byte{6, 4, 6, 5}
		// The reader must learn the chunk size first, as a peer would tell it.
		setSize := []byte{byte(size >> 24), byte(size >> 16), byte(size >> 8), byte(size)}
		if err := w.write(2, message{typ: msgSetChunkSize, body: setSize}); err != nil {
			t.Fatal(err)
		}
		for i, m := range msgs {
			if err := w.write(csids[i], m); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.flush(); err != nil {
			t.Fatal(err)
		}
		r := newChunkReader(&buf)
		if m, err := r.next(); err != nil || m.typ != msgSetChunkSize || r.chunkSize != size {
			t.Fatalf("size %d: set chunk size: %v %+v", size, err, m)
		}
		for _, want := range msgs {
			got, err := r.next()
			if err != nil {
				t.Fatalf("size %d: %v", size, err)
			}
			if got.typ != want.typ || got.ts != want.ts || got.streamID != want.streamID || !bytes.Equal(got.body, want.body) {
				t.Fatalf("size %d: got type %d ts %d len %d, want type %d ts %d len %d", size, got.typ, got.ts, len(got.body), want.typ, want.ts, len(want.body))
			}
		}
		if _, err := r.next(); !errors.Is(err, io.EOF) {
			t.Fatalf("after the last message: %v", err)
		}
	}
}

// Delta headers (types 1-3) add to the chunk stream's timestamp, as encoders send them.
func TestChunkDeltaTimestamps(t *testing.T) {
	in := []byte{
		0x06, 0, 0, 10, 0, 0, 2, 9, 1, 0, 0, 0, 'a', 'b', // type 0: ts 10, len 2, video, stream 1
		0x46, 0, 0, 40, 0, 0, 1, 9, 'c', // type 1: delta 40, len 1
		0x86, 0, 0, 40, 'd', // type 2: delta 40
		0xc6, 'e', // type 3: delta 40 again
	}
	r := newChunkReader(bytes.NewReader(in))
	for _, want := range []uint32{10, 50, 90, 130} {
		m, err := r.next()
		if err != nil || m.ts != want {
			t.Fatalf("ts %d (%v), want %d", m.ts, err, want)
		}
	}
}

// Hostile input is refused with a protocol error, never a panic or a large allocation.
func TestChunkReaderRefusesNonsense(t *testing.T) {
	for name, in := range map[string][]byte{
		"type 3 first":        {0xc3, 1, 2, 3},
		"header in a message": {0x06, 0, 0, 0, 0, 1, 0, 9, 1, 0, 0, 0, 'a', 0x06},
		"zero chunk size":     {0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0},
		"huge chunk size":     {0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff},
	} {
		r := newChunkReader(bytes.NewReader(in))
		var err error
		for err == nil {
			_, err = r.next()
		}
		if !errors.Is(err, errProtocol) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func FuzzChunkReader(f *testing.F) {
	var buf bytes.Buffer
	w := newChunkWriter(&buf)
	_ = w.write(3, message{typ: msgCommandAMF0, body: amfAppend(amfAppend(amfAppend(nil, "_result"), 1.0), amfObject{"code": "NetConnection.Connect.Success"})})
	_ = w.write(6, message{typ: msgVideo, ts: 0xffffff, streamID: 1, body: bytes.Repeat([]byte{7}, 300)})
	_ = w.flush()
	f.Add(buf.Bytes())
	f.Add([]byte{0x06, 0, 0, 10, 0, 0, 2, 9, 1, 0, 0, 0, 'a', 'b', 0x46, 0, 0, 40, 0, 0, 1, 9, 'c'})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := newChunkReader(bytes.NewReader(in))
		for i := 0; i < 1000; i++ {
			m, err := r.next()
			if err != nil {
				return
			}
			if len(m.body) > len(in) {
				t.Fatalf("a %d-byte message from %d bytes of input", len(m.body), len(in))
			}
			_ = amfValues(m.body)
		}
	})
}

func FuzzAMFValues(f *testing.F) {
	f.Add(amfAppend(amfAppend(amfAppend(nil, "onStatus"), 0.0), amfObject{"level": "error", "code": "NetStream.Play.StreamNotFound", "n": 1.0, "b": true}))
	f.Add([]byte{0x08, 0, 0, 0, 1, 0, 1, 'a', 0x05, 0, 0, 9})
	f.Fuzz(func(t *testing.T, in []byte) {
		_ = amfValues(in)
		_ = describe(amfValues(in))
	})
}

func TestAMFRoundTrip(t *testing.T) {
	in := amfAppend(amfAppend(amfAppend(amfAppend(nil, "_error"), 2.0), nil), amfObject{"code": "NetConnection.Connect.Rejected", "description": "no"})
	v := amfValues(in)
	if len(v) != 4 || v[0] != "_error" || v[1] != 2.0 || describe(v[2:]) != "NetConnection.Connect.Rejected no" {
		t.Fatalf("%#v", v)
	}
}

func TestParsePullAndPush(t *testing.T) {
	good := map[string]string{
		"live/cam=rtmp://10.0.0.1/live/src":         "10.0.0.1:1935",
		"live/cam=rtmp://h:1936/app/inst/src?k=v":   "h:1936",
		"live/cam=http://h:8080/live/src.flv":       "",
		"live/cam=https://cdn.example/live/src.flv": "",
	}
	for v, addr := range good {
		p, err := ParsePull(v)
		if err != nil {
			t.Errorf("%q: %v", v, err)
			continue
		}
		if addr != "" {
			a, app, name, _, _ := rtmpTarget(p.URL)
			if a != addr || app == "" || name == "" {
				t.Errorf("%q: addr %q app %q name %q", v, a, app, name)
			}
		}
	}
	for _, v := range []string{"live/cam", "live/cam=", "bad name/x=rtmp://h/a/b", "live/cam=rtmp://h/onlyapp", "live/cam=ftp://h/a", "live/cam=http:///x", "live/cam=rtmp:///a/b"} {
		if _, err := ParsePull(v); err == nil || !strings.Contains(err.Error(), "--pull") {
			t.Errorf("%q: %v, want an error naming --pull", v, err)
		}
	}
	for _, v := range []string{"live/x=rtmp://h/app/key", "live/*=rtmp://h/app/{stream}", "*/*=rtmp://h:1/a/{stream}?t=1"} {
		if _, err := ParsePush(v); err != nil {
			t.Errorf("%q: %v", v, err)
		}
	}
	for _, v := range []string{"live/x", "live=rtmp://h/a/b", "live/x=http://h/a/b", "live/x=rtmp://h/a", "live/[=rtmp://h/a/b"} {
		if _, err := ParsePush(v); err == nil || !strings.Contains(err.Error(), "--push") {
			t.Errorf("%q: %v, want an error naming --push", v, err)
		}
	}
	u, _ := url.Parse("rtmp://h/live/key?token=1")
	if _, app, name, tc, _ := rtmpTarget(u); app != "live" || name != "key?token=1" || tc != "rtmp://h/live" {
		t.Errorf("target: app %q name %q tcUrl %q", app, name, tc)
	}
}
