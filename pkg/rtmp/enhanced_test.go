package rtmp

import (
	"bytes"
	"testing"
	"time"

	gortmp "github.com/yutopp/go-rtmp"
	rtmpmsg "github.com/yutopp/go-rtmp/message"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// Enhanced RTMP messages (multitrack larger than a chunk, ModEx, Opus, a command
// frame) reach the publication byte for byte: the normaliser never looks inside.
func TestEnhancedMessagesPassIntact(t *testing.T) {
	ing := &recordingIngest{closed: make(chan struct{})}
	addr := startServer(t, ing)
	big := make([]byte, 9000)
	for i := range big {
		big[i] = byte(i * 7)
	}
	mt := append([]byte{0x96, 0x11, 'a', 'v', '0', '1', 0, 0, 0x23, 0x28}, big...)
	mt = append(mt, 1, 0, 0, 3, 0xB1, 0xB2, 0xB3)
	msgs := []struct {
		typ  byte
		body []byte
	}{
		{flv.TypeVideo, []byte{0x96, 0x00, 'a', 'v', '0', '1', 0, 0x81, 0x00}},
		{flv.TypeVideo, mt},
		{flv.TypeVideo, []byte{0x97, 2, 0, 1, 2, 0x03, 'h', 'v', 'c', '1', 0xAA}},
		{flv.TypeAudio, []byte{0x90, 'O', 'p', 'u', 's', 'O', 'p', 'u', 's', 'H', 'e', 'a', 'd'}},
		{flv.TypeAudio, []byte{0x95, 0x11, 'O', 'p', 'u', 's', 0, 0, 0, 1, 0xFC, 1, 0, 0, 1, 0xFD}},
		{flv.TypeVideo, []byte{0xD0, 1}},
	}
	c, err := gortmp.Dial("rtmp", addr, &gortmp.ConnConfig{Logger: quietLogrus()})
	must(t, err)
	defer c.Close()
	must(t, c.Connect(&rtmpmsg.NetConnectionConnect{Command: rtmpmsg.NetConnectionConnectCommand{App: "live"}}))
	s, err := c.CreateStream(nil, 4096)
	must(t, err)
	must(t, s.Publish(&rtmpmsg.NetStreamPublish{PublishingName: "enhanced", PublishingType: "live"}))
	for i, m := range msgs {
		var msg rtmpmsg.Message = &rtmpmsg.VideoMessage{Payload: bytes.NewReader(m.body)}
		if m.typ == flv.TypeAudio {
			msg = &rtmpmsg.AudioMessage{Payload: bytes.NewReader(m.body)}
		}
		must(t, s.Write(6, uint32(i*20), msg))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ing.mu.Lock()
		n := len(ing.tags)
		ing.mu.Unlock()
		if n >= len(msgs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages arrived", n, len(msgs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	ing.mu.Lock()
	defer ing.mu.Unlock()
	for i, m := range msgs {
		got := ing.tags[i]
		if got.Type() != m.typ || got.Timestamp() != uint32(i*20) || !bytes.Equal(got.Body(), m.body) || got.Check() != nil {
			t.Errorf("message %d: type %d at %d, %d bytes; want type %d at %d, %d bytes (equal: %v)",
				i, got.Type(), got.Timestamp(), len(got.Body()), m.typ, i*20, len(m.body), bytes.Equal(got.Body(), m.body))
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
