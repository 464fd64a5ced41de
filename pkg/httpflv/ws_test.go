package httpflv

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// A WebSocket viewer that keeps falling behind is dropped with close 1008 and a
// reason, not cut off. The viewer stops reading while a burst of keyframes far bigger
// than MaxLagBytes (and than everything its sockets and the batch being written can
// hold) reaches the edge, then reads again: each such round makes the edge skip it
// ahead at least once (more if the sockets drained enough meanwhile for it to fetch
// and fall behind again), so by the second round it is past MaxSkips (1), and the
// edge must close it. The write timeout and the ping interval are a minute, so
// neither can end the viewer first.
//
// The burst is paced by a second viewer, the probe, which reads all the time: a tag
// is published only once the probe has received the one four tags before it, so the
// probe never lags by more than MaxLagBytes, and once the probe has the burst's last
// tag the edge has the whole burst.
func TestWebSocketTooSlowClosesWith1008(t *testing.T) {
	const (
		maxLag   = 256 << 10
		tagSize  = 32 << 10
		perBurst = 64 // 2 MiB: far past maxLag plus a batch (512 KiB) plus the socket buffers
		ahead    = 4  // tags the publisher may be ahead of the probe: 128 KiB < maxLag
		step     = 40 // ms between tags
	)
	r := newTransportRig(t, edge.Config{MaxLagBytes: maxLag, MaxSkips: 1},
		&Server{CORSOrigin: "*", SendBuffer: 64 << 10, WriteTimeout: time.Minute, PingEvery: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	n, _ := stream.ParseName("live/slow")
	pub, err := r.origin.Publish(r.ctx, n, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close(r.ctx) })
	key := make([]byte, tagSize)
	key[0], key[1] = 0x17, 1 // AVC keyframe NALU: every tag is a place to skip to
	for _, tag := range []struct {
		typ  byte
		body []byte
	}{{flv.TypeScript, metadata()}, {flv.TypeVideo, []byte{0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f}}, {flv.TypeAudio, []byte{0xAF, 0, 0x12, 0x10}}, {flv.TypeVideo, key}} {
		if err := pub.WriteTag(tag.typ, 0, tag.body); err != nil {
			t.Fatal(err)
		}
	}

	// The probe sends the timestamp of every video tag it reads to seen.
	probe, _, err := r.dialWS(ctx, "ws", "/live/slow.flv", nil)
	if err != nil {
		t.Fatal(err)
	}
	probe.SetReadLimit(-1) // a message is a merge window's tags: often more than the default 32 KiB
	seen := make(chan uint32, 4*perBurst)
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		fr := flv.NewReader(&wsReader{ctx: ctx, c: probe}, 0)
		if fr.ReadHeader() != nil {
			return
		}
		for {
			tg, err := fr.ReadTag()
			if err != nil {
				return // the connection closed at the test's end
			}
			if tg.Type() == flv.TypeVideo {
				seen <- tg.Timestamp()
			}
		}
	}()
	defer func() { probe.CloseNow(); <-probeDone }()
	probed := uint32(0)
	waitProbe := func(ts uint32) {
		t.Helper()
		for probed < ts {
			select {
			case got := <-seen:
				probed = max(probed, got)
			case <-ctx.Done():
				t.Fatalf("the probe viewer never got the tag at %d ms (last %d)", ts, probed)
			}
		}
	}

	// The slow viewer's sockets hold little: a 64 KiB receive buffer here, 64 KiB
	// send buffer at the edge (SendBuffer); Linux doubles both. (With 4 KiB buffers
	// loopback TCP crawls: a round took seconds to read.)
	small := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(64 << 10)
		}
		return c, err
	}}
	defer small.CloseIdleConnections()
	slow, _, err := websocket.Dial(ctx, r.url("ws", "/live/slow.flv"), &websocket.DialOptions{HTTPClient: &http.Client{Transport: small}})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.CloseNow()
	slow.SetReadLimit(-1)
	fr := flv.NewReader(&wsReader{ctx: ctx, c: slow}, 0)
	if err := fr.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	// readTo reads the slow viewer until its video reaches ts; it reports the error
	// that ended the read first, and how many of the burst's tags were left out.
	readTo := func(ts uint32, sent int) (missed int, err error) {
		got := 0
		for {
			tg, err := fr.ReadTag()
			if err != nil {
				return sent - got, err
			}
			if flv.Classify(tg.Type(), tg.Body()) != flv.KindKeyframe {
				continue
			}
			if tg.Timestamp() > 0 { // a burst's tag, not the join's
				got++
			}
			if tg.Timestamp() >= ts {
				return sent - got, nil
			}
		}
	}
	if _, err := readTo(0, 0); err != nil { // the join: the keyframe at 0
		t.Fatal(err)
	}

	next := uint32(0)
	var closeErr error
	for round := 1; round <= 3 && closeErr == nil; round++ {
		// The slow viewer reads nothing while the burst goes out.
		for i := range perBurst {
			next += step
			if i >= ahead {
				waitProbe(next - ahead*step)
			}
			if err := pub.WriteTag(flv.TypeVideo, next, key); err != nil {
				t.Fatal(err)
			}
		}
		waitProbe(next) // the edge holds the whole burst
		missed, err := readTo(next, perBurst)
		if err != nil {
			closeErr = err
			t.Logf("round %d: the slow viewer's read ended: %v", round, err)
			if round > 2 {
				t.Errorf("closed in round %d: want by round 2 (MaxSkips 1, one skip or more per round)", round)
			}
			break
		}
		t.Logf("round %d: the slow viewer caught up, %d of the burst's %d tags skipped", round, missed, perBurst)
		if missed == 0 {
			t.Errorf("round %d: the slow viewer got the whole burst of %d KiB: it never fell %d KiB behind, the test proves nothing",
				round, perBurst*tagSize>>10, maxLag>>10)
		}
	}
	if code := websocket.CloseStatus(closeErr); code != websocket.StatusPolicyViolation {
		t.Fatalf("the slow viewer ended with %v (close status %d), want a close frame with 1008", closeErr, code)
	}
	var ce websocket.CloseError
	if !errors.As(closeErr, &ce) || ce.Reason == "" {
		t.Errorf("close 1008 without a reason: %v", closeErr)
	}
}
