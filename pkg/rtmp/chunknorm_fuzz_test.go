package rtmp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand"
	"slices"
	"strings"
	"testing"
)

// cnFuzzConfig is small so the fuzzer reaches the limits quickly.
// Its Ack accepts everything, so acknowledgement bookkeeping runs too.
var cnFuzzConfig = normalizerConfig{MaxMessageSize: 1 << 16, MaxChunkStreams: 4, Ack: func(uint32) error { return nil }}

// cnCheckBounds verifies the normaliser's memory accounting: at most MaxChunkStreams
// partial messages, at most MaxChunkStreams+1 message buffers alive (partials, the one
// being delivered and the pool), none larger than MaxMessageSize; tags allocated for
// media in flight declaring at most 2×MaxMessageSize, and aborted tags' unsent bytes at
// most the bytes received plus MaxMessageSize.
// (No t.Helper: this runs after every Read and Helper is costly at fuzzing rates.)
func cnCheckBounds(t *testing.T, n *chunkNormalizer) {
	buffers, inFlight := 0, 0
	check := func(b []byte, what string) {
		if cap(b) == 0 {
			return
		}
		buffers++
		if cap(b) > int(n.cfg.MaxMessageSize) {
			t.Fatalf("%s buffer capacity %d exceeds MaxMessageSize %d", what, cap(b), n.cfg.MaxMessageSize)
		}
	}
	streams := 0
	var tagBytes uint64
	visit := func(cs *cnStream) {
		if cs == nil {
			return
		}
		streams++
		sinks := 0
		if cs.buf != nil {
			sinks++
		}
		if cs.tag != nil {
			sinks++
			tagBytes += uint64(cs.length)
			if cs.tag.DataSize() != int(cs.length) {
				t.Fatalf("csid %d: tag of %d bytes for a %d-byte message", cs.csid, cs.tag.DataSize(), cs.length)
			}
		}
		if cs.discard {
			sinks++
		}
		if cs.inFlight {
			inFlight++
			if cs.got >= cs.length || (cs.buf != nil && len(cs.buf) != int(cs.got)) || sinks != 1 {
				t.Fatalf("csid %d: partial message holds %d (buffer %d) of %d bytes in %d places",
					cs.csid, cs.got, len(cs.buf), cs.length, sinks)
			}
		} else if sinks != 0 || cs.got != 0 {
			t.Fatalf("csid %d: payload state kept without a message in flight", cs.csid)
		}
		check(cs.buf, "partial message")
	}
	for _, cs := range n.small {
		visit(cs)
	}
	for _, cs := range n.big {
		visit(cs)
	}
	for _, b := range n.free {
		check(b, "pooled")
	}
	if n.bodyPooled {
		check(n.body, "pending")
	}
	if inFlight != n.inFlight || inFlight > n.cfg.MaxChunkStreams {
		t.Fatalf("%d partial messages (counter %d), limit %d", inFlight, n.inFlight, n.cfg.MaxChunkStreams)
	}
	if buffers > n.cfg.MaxChunkStreams+1 {
		t.Fatalf("%d message buffers alive, limit %d", buffers, n.cfg.MaxChunkStreams+1)
	}
	if streams != n.known || streams > cnMaxKnownChunkStreams {
		t.Fatalf("%d csids tracked (counter %d)", streams, n.known)
	}
	if tagBytes != n.tagBytes || tagBytes > 2*uint64(n.cfg.MaxMessageSize) {
		t.Fatalf("tags in flight declare %d bytes (counter %d), limit %d", tagBytes, n.tagBytes, 2*n.cfg.MaxMessageSize)
	}
	if n.abandoned > n.rd.n+uint64(n.cfg.MaxMessageSize) {
		t.Fatalf("aborted tags left %d bytes unsent after %d received", n.abandoned, n.rd.n)
	}
}

// cnFuzzRun reads everything out of a normaliser publishing on cnPubSID, fed with
// handshake+data, checking the bounds after every Read.
func cnFuzzRun(t *testing.T, data []byte, readSizes []int) ([]byte, *cnRecorder, error) {
	n, rec := newTestNormalizer(&cnConn{r: bytes.NewReader(append(cnHandshake(), data...))}, cnFuzzConfig)
	var out []byte
	served := 0
	rec.served = &served
	p := make([]byte, slices.Max(readSizes))
	for i := 0; ; i++ {
		k, err := n.Read(p[:readSizes[i%len(readSizes)]])
		out = append(out, p[:k]...)
		served = len(out)
		cnCheckBounds(t, n)
		if err != nil {
			if _, err2 := n.Read(p[:1]); n.handshakeLeft == 0 && err2 != err {
				t.Fatalf("error not sticky: %v then %v", err, err2)
			}
			return out, rec, err
		}
		if k == 0 {
			t.Fatal("Read returned 0 bytes and no error")
		}
	}
}

func FuzzChunkNormalizer(f *testing.F) {
	// Seeds: valid streams from the test encoder in its different modes, plus a few
	// hand-built ones for the control messages.
	for seed := int64(0); seed < 12; seed++ {
		rnd := rand.New(rand.NewSource(seed))
		e := newCNEncoder()
		e.contExt = cnContExt(seed % 3)
		if seed%2 == 0 {
			e.setChunkSize([]uint32{60, 4096, 1}[seed%3])
		}
		var msgs []cnMsg
		ts := uint32(0xFFFF00)
		for i := 0; i < 8; i++ {
			ts += uint32(rnd.Intn(3)) * 20
			msgs = append(msgs, cnMsg{
				csid:    []uint32{3, 4, 6, 70, 400}[rnd.Intn(5)],
				typ:     []byte{8, 9, 18, 20}[rnd.Intn(4)],
				sid:     1,
				ts:      ts,
				payload: cnPayload(rnd, []int{0, 4, 127, 300, 700}[rnd.Intn(5)]),
			})
		}
		e.writeInterleaved(msgs, rnd)
		f.Add(e.out)
	}
	var b []byte
	b = cnChunk{fmt: 0, csid: 6, ts: 0x1000000, length: 300, typ: 9, sid: 1, payload: make([]byte, 128)}.appendTo(b)
	b = cnChunk{fmt: 0, csid: 2, length: 4, typ: 2, payload: []byte{0, 0, 0, 6}}.appendTo(b)
	b = cnChunk{fmt: 0, csid: 6, ts: 0x1000000, length: 300, typ: 9, sid: 1, payload: make([]byte, 128)}.appendTo(b)
	b = cnChunk{fmt: 3, csid: 6, payload: make([]byte, 128)}.appendTo(b)
	b = cnChunk{fmt: 3, csid: 6, ext: true, extVal: 0x1000000, payload: make([]byte, 44)}.appendTo(b)
	f.Add(b)
	f.Add(cnChunk{fmt: 0, csid: 2, length: 4, typ: 1, payload: binary.BigEndian.AppendUint32(nil, 0x80000000)}.appendTo(nil))
	// A small acknowledgement window, then media on the publishing stream and another.
	b = cnChunk{fmt: 0, csid: 2, length: 4, typ: 5, payload: binary.BigEndian.AppendUint32(nil, 64)}.appendTo(nil)
	b = cnChunk{fmt: 0, csid: 6, ts: 40, length: 200, typ: 9, sid: 1, payload: make([]byte, 128)}.appendTo(b)
	b = cnChunk{fmt: 0, csid: 4, ts: 41, length: 20, typ: 8, sid: 2, payload: make([]byte, 20)}.appendTo(b)
	b = cnChunk{fmt: 3, csid: 6, payload: make([]byte, 72)}.appendTo(b)
	f.Add(b)
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, data []byte) {
		out, rec, err := cnFuzzRun(t, data, []int{4096})
		if err != io.EOF && !strings.HasPrefix(err.Error(), "rtmp chunk: ") {
			t.Fatalf("error without context: %v", err)
		}
		if errors.Is(err, io.EOF) && err != io.EOF {
			t.Fatalf("wrapped io.EOF would hide truncation: %v", err)
		}
		msgs, derr := cnMerge(out, rec)
		if derr != nil {
			t.Fatalf("malformed output: %v", derr)
		}
		if len(rec.tags) > rec.allocs {
			t.Fatalf("%d tags written, %d allocated", len(rec.tags), rec.allocs)
		}
		for _, m := range msgs {
			if len(m.payload) > int(cnFuzzConfig.MaxMessageSize) {
				t.Fatalf("message of %d bytes passed the limit", len(m.payload))
			}
		}
		// The result must not depend on how go-rtmp sizes its reads.
		out2, rec2, err2 := cnFuzzRun(t, data, []int{1, 13, 5000})
		msgs2, _ := cnMerge(out2, rec2)
		if !bytes.Equal(out, out2) || err.Error() != err2.Error() || len(msgs) != len(msgs2) {
			t.Fatalf("read sizes change the result: %d vs %d bytes, %v vs %v", len(out), len(out2), err, err2)
		}
		for i := range msgs {
			if a, b := msgs[i], msgs2[i]; a.csid != b.csid || a.typ != b.typ || a.ts != b.ts || !bytes.Equal(a.payload, b.payload) {
				t.Fatalf("read sizes change message %d: %v vs %v", i, a, b)
			}
		}
	})
}
