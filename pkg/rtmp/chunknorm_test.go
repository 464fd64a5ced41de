package rtmp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	gortmp "github.com/yutopp/go-rtmp"
	rtmpmsg "github.com/yutopp/go-rtmp/message"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/test/harness"
)

// ---------------------------------------------------------------------------------------
// Test-only chunk encoder and decoder (written for these tests from the RTMP spec).

// cnMsg is one RTMP message as a test sees it.
type cnMsg struct {
	csid    uint32
	typ     byte
	sid     uint32
	ts      uint32
	payload []byte
}

func (m cnMsg) String() string {
	return fmt.Sprintf("{csid %d type %d sid %d ts %d len %d}", m.csid, m.typ, m.sid, m.ts, len(m.payload))
}

// cnChunk is one raw chunk for hand-built streams: every field is written as given.
type cnChunk struct {
	fmt     byte
	csid    uint32
	form    int    // basic header size 1/2/3, 0 = shortest form for csid
	ts      uint32 // fmt 0: timestamp, fmt 1/2: delta; >= 0xFFFFFF is written as marker + extended
	length  uint32 // fmt 0/1
	typ     byte   // fmt 0/1
	sid     uint32 // fmt 0
	ext     bool   // fmt 3: append a 4-byte extended timestamp extVal
	extVal  uint32
	payload []byte
}

func cnAppendBasic(b []byte, format byte, csid uint32, form int) []byte {
	if form == 0 {
		switch {
		case csid < 64:
			form = 1
		case csid < 320:
			form = 2
		default:
			form = 3
		}
	}
	switch form {
	case 1:
		return append(b, format<<6|byte(csid))
	case 2:
		return append(b, format<<6, byte(csid-64))
	default:
		return append(b, format<<6|1, byte(csid-64), byte((csid-64)>>8))
	}
}

func cnAppend24(b []byte, v uint32) []byte { return append(b, byte(v>>16), byte(v>>8), byte(v)) }

func (c cnChunk) appendTo(b []byte) []byte {
	b = cnAppendBasic(b, c.fmt, c.csid, c.form)
	field, ext := c.ts, false
	if c.fmt < 3 && c.ts >= 0xFFFFFF {
		field, ext = 0xFFFFFF, true
	}
	switch c.fmt {
	case 0:
		b = cnAppend24(b, field)
		b = cnAppend24(b, c.length)
		b = append(b, c.typ)
		b = binary.LittleEndian.AppendUint32(b, c.sid)
	case 1:
		b = cnAppend24(b, field)
		b = cnAppend24(b, c.length)
		b = append(b, c.typ)
	case 2:
		b = cnAppend24(b, field)
	case 3:
		ext = c.ext
		c.ts = c.extVal
	}
	if ext {
		b = binary.BigEndian.AppendUint32(b, c.ts)
	}
	return append(b, c.payload...)
}

// cnContExt selects what an encoder writes after a fmt-3 continuation chunk header when
// the chunk stream's last timestamp field was extended.
type cnContExt int

const (
	cnContExtSpec     cnContExt = iota // the header's extended value again (spec, ffmpeg, OBS)
	cnContExtOmit                      // nothing (some old encoders)
	cnContExtAbsolute                  // the message's absolute timestamp (some servers)
)

// cnEncCS is the encoder's state of one csid.
type cnEncCS struct {
	have              bool // a header was sent
	ts, field, length uint32
	typ               byte
	sid               uint32
	ext               bool   // the last header's timestamp field was extended
	curTS             uint32 // absolute timestamp of the active message
	pending           []byte // unsent payload of the active message
	active            bool
	cur               cnMsg   // the active message
	queue             []cnMsg // messages waiting on this csid (writeInterleaved)
}

// cnEncoder writes messages the way a compliant encoder compresses headers: fmt 0 for a
// new csid, another message stream or a backwards timestamp; fmt 1 when length or type
// change; fmt 2 when only the delta changes; fmt 3 when nothing does (including directly
// after a fmt 0 whose timestamp equals the next delta). Continuation chunks are fmt 3.
type cnEncoder struct {
	out       []byte
	chunkSize uint32
	contExt   cnContExt
	st        map[uint32]*cnEncCS
	fmts      [4]int  // number of chunks written per fmt, to prove coverage
	extChunks int     // chunks that carried an extended timestamp
	done      []cnMsg // messages in the order their last chunk was written
}

func newCNEncoder() *cnEncoder {
	return &cnEncoder{chunkSize: 128, st: map[uint32]*cnEncCS{}}
}

func (e *cnEncoder) state(csid uint32) *cnEncCS {
	s := e.st[csid]
	if s == nil {
		s = &cnEncCS{}
		e.st[csid] = s
	}
	return s
}

// begin writes the first chunk of m on its csid.
func (e *cnEncoder) begin(m cnMsg) {
	s := e.state(m.csid)
	length := uint32(len(m.payload))
	var f byte
	field := m.ts
	if s.have && m.sid == s.sid && m.ts >= s.ts {
		field = m.ts - s.ts
		switch {
		case length != s.length || m.typ != s.typ:
			f = 1
		case field != s.field:
			f = 2
		default:
			f = 3
		}
	}
	c := cnChunk{fmt: f, csid: m.csid, ts: field, length: length, typ: m.typ, sid: m.sid}
	if f == 3 {
		c.ext, c.extVal = s.ext, s.field
	} else {
		s.ext = field >= 0xFFFFFF
	}
	if s.ext {
		e.extChunks++
	}
	e.fmts[f]++
	s.have, s.ts, s.field, s.length, s.typ, s.sid = true, m.ts, field, length, m.typ, m.sid
	n := min(length, e.chunkSize)
	c.payload = m.payload[:n]
	e.out = c.appendTo(e.out)
	s.active, s.pending, s.curTS, s.cur = n < length, m.payload[n:], m.ts, m
	if !s.active {
		e.done = append(e.done, m)
	}
}

// cont writes the next continuation chunk of the csid's active message.
func (e *cnEncoder) cont(csid uint32) {
	s := e.st[csid]
	n := min(uint32(len(s.pending)), e.chunkSize)
	c := cnChunk{fmt: 3, csid: csid, payload: s.pending[:n]}
	if s.ext {
		switch e.contExt {
		case cnContExtSpec:
			c.ext, c.extVal = true, s.field
		case cnContExtAbsolute:
			c.ext, c.extVal = true, s.curTS
		}
		if c.ext {
			e.extChunks++
		}
	}
	e.fmts[3]++
	e.out = c.appendTo(e.out)
	s.pending = s.pending[n:]
	s.active = len(s.pending) > 0
	if !s.active {
		e.done = append(e.done, s.cur)
	}
}

// write writes messages one after another.
func (e *cnEncoder) write(msgs ...cnMsg) {
	for _, m := range msgs {
		e.begin(m)
		for e.st[m.csid].active {
			e.cont(m.csid)
		}
	}
}

// writeInterleaved writes messages with chunks of different csids interleaved at random;
// messages of one csid keep their order.
func (e *cnEncoder) writeInterleaved(msgs []cnMsg, rnd *rand.Rand) {
	var order []uint32
	for _, m := range msgs {
		s := e.state(m.csid)
		if len(s.queue) == 0 {
			order = append(order, m.csid)
		}
		s.queue = append(s.queue, m)
	}
	for len(order) > 0 {
		i := rnd.Intn(len(order))
		csid := order[i]
		s := e.st[csid]
		if s.active {
			e.cont(csid)
		} else {
			m := s.queue[0]
			s.queue = s.queue[1:]
			e.begin(m)
		}
		if !s.active && len(s.queue) == 0 {
			order = append(order[:i], order[i+1:]...)
		}
	}
}

// setChunkSize sends SetChunkSize on csid 2 and uses the new size from then on.
func (e *cnEncoder) setChunkSize(n uint32) {
	e.write(cnMsg{csid: 2, typ: 1, payload: binary.BigEndian.AppendUint32(nil, n)})
	e.chunkSize = n
}

// cnHandshake is a recognisable C0+C1+C2.
func cnHandshake() []byte {
	b := make([]byte, cnHandshakeSize)
	b[0] = 3
	for i := 1; i < len(b); i++ {
		b[i] = byte(i * 7)
	}
	return b
}

// cnDecodeOutput strictly decodes what the normaliser gave go-rtmp: the handshake, then
// only fmt-0 single-chunk messages, the first being the injected SetChunkSize(0xFFFFFF).
// It returns the messages after that one.
func cnDecodeOutput(out []byte) ([]cnMsg, error) {
	msgs, _, err := cnDecodeOutputEnds(out)
	return msgs, err
}

// cnDecodeOutputEnds is cnDecodeOutput that also returns where in out each message ends.
func cnDecodeOutputEnds(out []byte) (msgs []cnMsg, ends []int, err error) {
	hs := cnHandshake()
	if len(out) < len(hs) || !bytes.Equal(out[:len(hs)], hs) {
		return nil, nil, errors.New("handshake not passed through unchanged")
	}
	b := out[len(hs):]
	first := true
	for len(b) > 0 {
		if b[0]>>6 != 0 {
			return nil, nil, fmt.Errorf("output chunk has fmt %d, want 0", b[0]>>6)
		}
		var csid uint32
		switch b[0] & 0x3f {
		case 0:
			if len(b) < 2 {
				return nil, nil, errors.New("truncated basic header")
			}
			csid, b = 64+uint32(b[1]), b[2:]
		case 1:
			if len(b) < 3 {
				return nil, nil, errors.New("truncated basic header")
			}
			csid, b = 64+uint32(b[1])+uint32(b[2])<<8, b[3:]
		default:
			csid, b = uint32(b[0]&0x3f), b[1:]
		}
		if len(b) < 11 {
			return nil, nil, errors.New("truncated message header")
		}
		m := cnMsg{csid: csid, ts: cnGet24(b), typ: b[6], sid: binary.LittleEndian.Uint32(b[7:])}
		length := cnGet24(b[3:])
		b = b[11:]
		if m.ts == 0xFFFFFF {
			if len(b) < 4 {
				return nil, nil, errors.New("truncated extended timestamp")
			}
			m.ts, b = binary.BigEndian.Uint32(b), b[4:]
			if m.ts < 0xFFFFFF {
				return nil, nil, fmt.Errorf("extended timestamp %d used for a value that fits 24 bits", m.ts)
			}
		}
		if uint32(len(b)) < length {
			return nil, nil, fmt.Errorf("message of %d bytes truncated at %d", length, len(b))
		}
		if length == 0 {
			return nil, nil, errors.New("zero-length message emitted")
		}
		m.payload, b = b[:length], b[length:]
		if first {
			if m.csid != 2 || m.typ != 1 || m.sid != 0 || binary.BigEndian.Uint32(m.payload) != 0xFFFFFF {
				return nil, nil, fmt.Errorf("first message %v is not SetChunkSize(0xFFFFFF)", m)
			}
			first = false
			continue
		}
		if m.typ == 1 || m.typ == 2 {
			return nil, nil, fmt.Errorf("chunk-level control message %v forwarded", m)
		}
		msgs = append(msgs, m)
		ends = append(ends, len(out)-len(b))
	}
	if first {
		return nil, nil, errors.New("no SetChunkSize injected")
	}
	return msgs, ends, nil
}

// cnConn is an in-memory net.Conn over a reader; writes are collected.
type cnConn struct {
	r      io.Reader
	w      bytes.Buffer
	closed bool
}

func (c *cnConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *cnConn) Write(p []byte) (int, error)      { return c.w.Write(p) }
func (c *cnConn) Close() error                     { c.closed = true; return nil }
func (c *cnConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *cnConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *cnConn) SetDeadline(time.Time) error      { return nil }
func (c *cnConn) SetReadDeadline(time.Time) error  { return nil }
func (c *cnConn) SetWriteDeadline(time.Time) error { return nil }

// cnPubSID is the message stream the tests' publication publishes on: media there goes
// to the recorder, media on other streams is dropped.
const cnPubSID = 1

// cnAnyCSID marks a message delivered to the publication, which does not see csids.
const cnAnyCSID = ^uint32(0)

// cnRecorder is a Publication that records the tags the normaliser writes. at is the
// number of bytes Read had returned when the tag was written: the tag completed after
// the forwarded messages that end there and before the next one.
type cnRecorder struct {
	served *int // updated by the test's read loop
	tags   []cnMsg
	at     []int
	allocs int
	bad    error // first malformed tag
	reuse  flv.Tag
}

func (r *cnRecorder) Alloc(typ byte, ts uint32, n int) flv.Tag {
	r.allocs++
	if r.reuse != nil && r.reuse.DataSize() == n { // allocation-free mode for the allocation test
		r.reuse[0] = typ
		r.reuse.SetTimestamp(ts)
		return r.reuse
	}
	_, t := flv.AllocTag(5, typ, ts, n)
	for i := range t.Body() {
		t.Body()[i] = 0xEE // not what a test sends, so an unfilled body shows
	}
	return t
}

func (r *cnRecorder) Write(t flv.Tag) error {
	if err := t.Check(); err != nil && r.bad == nil {
		r.bad = err
	}
	if r.reuse != nil {
		r.tags = r.tags[:0] // keep only the last, without allocating
	}
	r.tags = append(r.tags, cnMsg{csid: cnAnyCSID, typ: t.Type(), sid: cnPubSID, ts: t.Timestamp(), payload: t.Body()})
	at := 0
	if r.served != nil {
		at = *r.served
	}
	if r.reuse != nil {
		r.at = r.at[:0]
	}
	r.at = append(r.at, at)
	return nil
}

func (r *cnRecorder) Kicked() <-chan struct{} { return nil }
func (r *cnRecorder) Close(context.Context)   {}

// newTestNormalizer is a normaliser publishing on cnPubSID into a new cnRecorder.
func newTestNormalizer(conn net.Conn, cfg normalizerConfig) (*chunkNormalizer, *cnRecorder) {
	n := newChunkNormalizer(conn, cfg)
	rec := &cnRecorder{}
	n.publish(cnPubSID, rec, slog.New(slog.NewTextHandler(io.Discard, nil)))
	return n, rec
}

// cnMerge interleaves what the normaliser forwarded (out) and what it wrote to the
// recorder in the order the messages completed.
func cnMerge(out []byte, rec *cnRecorder) ([]cnMsg, error) {
	fwd, ends, err := cnDecodeOutputEnds(out)
	if err != nil {
		return nil, err
	}
	if rec.bad != nil {
		return nil, fmt.Errorf("malformed tag written: %w", rec.bad)
	}
	var all []cnMsg
	i := 0
	for k, tag := range rec.tags {
		for i < len(fwd) && ends[i] <= rec.at[k] {
			all = append(all, fwd[i])
			i++
		}
		all = append(all, tag)
	}
	return append(all, fwd[i:]...), nil
}

// cnRun feeds handshake+chunks through a normaliser publishing on cnPubSID, reading with
// the given buffer sizes in rotation, and returns everything read and the error that
// ended reading. The recorder is n.pub.
func cnRun(chunks []byte, cfg normalizerConfig, readSizes ...int) ([]byte, error, *chunkNormalizer) {
	if len(readSizes) == 0 {
		readSizes = []int{4096}
	}
	in := append(cnHandshake(), chunks...)
	n, rec := newTestNormalizer(&cnConn{r: bytes.NewReader(in)}, cfg)
	var out []byte
	served := 0
	rec.served = &served
	buf := make([]byte, slices.Max(readSizes))
	for i := 0; ; i++ {
		k, err := n.Read(buf[:readSizes[i%len(readSizes)]])
		out = append(out, buf[:k]...)
		served = len(out)
		if err != nil {
			return out, err, n
		}
		if i > 1<<24 {
			panic("normaliser makes no progress")
		}
	}
}

// cnMustMessages runs chunks through the normaliser, requires a clean io.EOF and returns
// the messages forwarded and the tags written, in the order they completed.
func cnMustMessages(t *testing.T, chunks []byte, cfg normalizerConfig, readSizes ...int) []cnMsg {
	t.Helper()
	out, err, n := cnRun(chunks, cfg, readSizes...)
	if err != io.EOF {
		t.Fatalf("read ended with %v, want io.EOF", err)
	}
	msgs, derr := cnMerge(out, n.pub.(*cnRecorder))
	if derr != nil {
		t.Fatalf("decode output: %v", derr)
	}
	return msgs
}

func cnCompare(t *testing.T, got, want []cnMsg) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d messages, want %d\ngot  %v\nwant %v", len(got), len(want), got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if (g.csid != w.csid && g.csid != cnAnyCSID) || g.typ != w.typ || g.sid != w.sid || g.ts != w.ts || !bytes.Equal(g.payload, w.payload) {
			t.Fatalf("message %d: got %v want %v (payload equal %v)", i, g, w, bytes.Equal(g.payload, w.payload))
		}
	}
}

// cnForwarded is what the normaliser must deliver from msgs (forwarded to go-rtmp, or
// written to the publication): no chunk-level control messages, no empty messages, no
// media outside the publishing stream.
func cnForwarded(msgs []cnMsg) []cnMsg {
	var out []cnMsg
	for _, m := range msgs {
		media := m.typ == 8 || m.typ == 9
		if m.typ != 1 && m.typ != 2 && m.typ != 5 && len(m.payload) > 0 && (!media || m.sid == cnPubSID) {
			out = append(out, m)
		}
	}
	return out
}

func cnPayload(rnd *rand.Rand, n int) []byte {
	b := make([]byte, n)
	rnd.Read(b)
	return b
}

// ---------------------------------------------------------------------------------------
// Unit tests

func TestChunkNormalizerHandshakeAndInjectedChunkSize(t *testing.T) {
	out, err, _ := cnRun(nil, normalizerConfig{}, 1000, 1, 7, 4096)
	if err != io.EOF {
		t.Fatalf("err = %v, want io.EOF", err)
	}
	msgs, derr := cnDecodeOutput(out)
	if derr != nil || len(msgs) != 0 {
		t.Fatalf("decode: %v %v", msgs, derr)
	}
	// Exactly handshake + one 1-byte basic header + 11-byte header + 4-byte body.
	if want := cnHandshakeSize + 1 + 11 + 4; len(out) != want {
		t.Fatalf("output %d bytes, want %d", len(out), want)
	}

	// A read never crosses the handshake boundary: go-rtmp's handshake must not see chunks.
	in := append(cnHandshake(), 0x02)
	n := newChunkNormalizer(&cnConn{r: bytes.NewReader(in)}, normalizerConfig{})
	p := make([]byte, 8192)
	total := 0
	for total < cnHandshakeSize {
		k, err := n.Read(p)
		if err != nil {
			t.Fatal(err)
		}
		total += k
	}
	if total != cnHandshakeSize {
		t.Fatalf("handshake reads returned %d bytes, want %d", total, cnHandshakeSize)
	}
}

func TestChunkNormalizerHandshakeTruncated(t *testing.T) {
	n := newChunkNormalizer(&cnConn{r: bytes.NewReader(cnHandshake()[:100])}, normalizerConfig{})
	got, err := io.ReadAll(n)
	if err != nil || len(got) != 100 {
		t.Fatalf("ReadAll = %d bytes, %v; want the 100 bytes and a clean EOF (go-rtmp reports the short handshake)", len(got), err)
	}
}

func TestChunkNormalizerBasicHeaderForms(t *testing.T) {
	cases := []struct {
		csid uint32
		form int
	}{
		{2, 1}, {3, 1}, {63, 1},
		{64, 2}, {200, 2}, {319, 2},
		{64, 3}, {319, 3}, {320, 3}, {4000, 3}, {65599, 3},
	}
	var b []byte
	var want []cnMsg
	for i, c := range cases {
		p := []byte{byte(i), 1, 2, 3}
		b = cnChunk{fmt: 0, csid: c.csid, form: c.form, ts: uint32(10 * i), length: 4, typ: 8, sid: 1, payload: p}.appendTo(b)
		want = append(want, cnMsg{csid: c.csid, typ: 8, sid: 1, ts: uint32(10 * i), payload: p})
	}
	cnCompare(t, cnMustMessages(t, b, normalizerConfig{}), want)
}

func TestChunkNormalizerHeaderFormats(t *testing.T) {
	p := func(n int, v byte) []byte { return bytes.Repeat([]byte{v}, n) }
	var b []byte
	for _, c := range []cnChunk{
		{fmt: 0, csid: 4, ts: 1000, length: 10, typ: 9, sid: 1, payload: p(10, 1)}, // ts 1000
		{fmt: 3, csid: 4, payload: p(10, 2)},                                       // new msg, delta = fmt-0 value: 2000
		{fmt: 2, csid: 4, ts: 40, payload: p(10, 3)},                               // 2040
		{fmt: 3, csid: 4, payload: p(10, 4)},                                       // 2080
		{fmt: 1, csid: 4, ts: 23, length: 5, typ: 8, payload: p(5, 5)},             // 2103, new length/type
		{fmt: 3, csid: 4, payload: p(5, 6)},                                        // 2126
		{fmt: 0, csid: 4, ts: 7, length: 3, typ: 18, sid: 2, payload: p(3, 7)},     // backwards via fmt 0
		{fmt: 2, csid: 4, ts: 0, payload: p(3, 8)},                                 // delta 0
		{fmt: 3, csid: 4, payload: p(3, 9)},                                        // delta 0 again
		// Wrap-around: timestamps are uint32 and wrap.
		{fmt: 0, csid: 5, ts: 0xFFFFFFF0, length: 2, typ: 8, sid: 1, payload: p(2, 10)},
		{fmt: 2, csid: 5, ts: 0x20, payload: p(2, 11)},
	} {
		b = c.appendTo(b)
	}
	want := []cnMsg{
		{4, 9, 1, 1000, p(10, 1)}, {4, 9, 1, 2000, p(10, 2)}, {4, 9, 1, 2040, p(10, 3)}, {4, 9, 1, 2080, p(10, 4)},
		{4, 8, 1, 2103, p(5, 5)}, {4, 8, 1, 2126, p(5, 6)},
		{4, 18, 2, 7, p(3, 7)}, {4, 18, 2, 7, p(3, 8)}, {4, 18, 2, 7, p(3, 9)},
		{5, 8, 1, 0xFFFFFFF0, p(2, 10)}, {5, 8, 1, 0x10, p(2, 11)},
	}
	cnCompare(t, cnMustMessages(t, b, normalizerConfig{}), want)
}

func TestChunkNormalizerExtendedTimestamps(t *testing.T) {
	const big = 20_000_000 // > 0xFFFFFF, as with ffmpeg -output_ts_offset 20000
	rnd := rand.New(rand.NewSource(1))
	v1, v2, v3, v4 := cnPayload(rnd, 300), cnPayload(rnd, 300), cnPayload(rnd, 50), cnPayload(rnd, 200)
	var b []byte
	for _, c := range []cnChunk{
		// fmt 0 with extended timestamp, two fmt-3 continuations carrying it (spec).
		{fmt: 0, csid: 6, ts: big, length: 300, typ: 9, sid: 1, payload: v1[:128]},
		{fmt: 3, csid: 6, ext: true, extVal: big, payload: v1[128:256]},
		{fmt: 3, csid: 6, ext: true, extVal: big, payload: v1[256:]},
		// fmt 3 beginning a new message: extended field read per spec, used as the delta.
		{fmt: 3, csid: 6, ext: true, extVal: big, payload: v2[:128]},
		{fmt: 3, csid: 6, ext: true, extVal: big, payload: v2[128:256]},
		{fmt: 3, csid: 6, ext: true, extVal: big, payload: v2[256:]},
		// fmt 1 with an extended delta, single chunk.
		{fmt: 1, csid: 6, ts: 0x1000000, length: 50, typ: 8, payload: v3},
		// fmt 2 with a small delta ends the extended state: continuation without field.
		{fmt: 2, csid: 6, ts: 40, payload: v3},
		// fmt 0 exactly at the marker value must be extended too.
		{fmt: 0, csid: 7, ts: 0xFFFFFF, length: 200, typ: 9, sid: 1, payload: v4[:128]},
		{fmt: 3, csid: 7, ext: true, extVal: 0xFFFFFF, payload: v4[128:]},
	} {
		b = c.appendTo(b)
	}
	want := []cnMsg{
		{6, 9, 1, big, v1},
		{6, 9, 1, 2 * big, v2},
		{6, 8, 1, 2*big + 0x1000000, v3},
		{6, 8, 1, 2*big + 0x1000000 + 40, v3},
		{7, 9, 1, 0xFFFFFF, v4},
	}
	cnCompare(t, cnMustMessages(t, b, normalizerConfig{}), want)
}

// Old encoders omit the extended field on continuation chunks, some servers write the
// absolute timestamp there; both must parse. A fmt-3 chunk that begins a message always
// carries the field (read as per spec).
func TestChunkNormalizerExtendedTolerant(t *testing.T) {
	const base = 0x2000000
	rnd := rand.New(rand.NewSource(2))
	v1, v2 := cnPayload(rnd, 300), cnPayload(rnd, 300)
	for _, tc := range []struct {
		name    string
		mode    cnContExt
		contVal uint32
	}{
		{"omitted", cnContExtOmit, 0},
		{"absolute", cnContExtAbsolute, base + 0x1000000},
		{"spec", cnContExtSpec, 0x1000000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cont := func(p []byte) cnChunk {
				return cnChunk{fmt: 3, csid: 6, ext: tc.mode != cnContExtOmit, extVal: tc.contVal, payload: p}
			}
			var b []byte
			b = cnChunk{fmt: 0, csid: 6, ts: base, length: 10, typ: 9, sid: 1, payload: v1[:10]}.appendTo(b)
			// fmt 1 with extended delta 0x1000000: continuation value differs from absolute.
			b = cnChunk{fmt: 1, csid: 6, ts: 0x1000000, length: 300, typ: 9, payload: v1[:128]}.appendTo(b)
			b = cont(v1[128:256]).appendTo(b)
			b = cont(v1[256:]).appendTo(b)
			// Interleave a chunk of another csid between continuations.
			b = cnChunk{fmt: 0, csid: 4, ts: 5, length: 3, typ: 8, sid: 1, payload: v2[:3]}.appendTo(b)
			b = cnChunk{fmt: 3, csid: 6, ext: true, extVal: 0x1000000, payload: v2[:128]}.appendTo(b) // new message
			if tc.mode == cnContExtAbsolute {
				tc.contVal += 0x1000000
			}
			b = cont(v2[128:256]).appendTo(b)
			b = cont(v2[256:]).appendTo(b)
			want := []cnMsg{
				{6, 9, 1, base, v1[:10]},
				{6, 9, 1, base + 0x1000000, v1},
				{4, 8, 1, 5, v2[:3]},
				{6, 9, 1, base + 0x2000000, v2},
			}
			cnCompare(t, cnMustMessages(t, b, normalizerConfig{}), want)
		})
	}
}

func TestChunkNormalizerChunkSizeChangeAndInterleave(t *testing.T) {
	rnd := rand.New(rand.NewSource(3))
	a, v := cnPayload(rnd, 1000), cnPayload(rnd, 5000)
	var b []byte
	// A video message on csid 6 is half sent at chunk size 128 when SetChunkSize(4096)
	// arrives on csid 2; the rest of it uses the new size.
	b = cnChunk{fmt: 0, csid: 6, ts: 40, length: 5000, typ: 9, sid: 1, payload: v[:128]}.appendTo(b)
	b = cnChunk{fmt: 0, csid: 4, ts: 41, length: 1000, typ: 8, sid: 1, payload: a[:128]}.appendTo(b)
	b = cnChunk{fmt: 3, csid: 6, payload: v[128:256]}.appendTo(b)
	b = cnChunk{fmt: 0, csid: 2, length: 4, typ: 1, payload: []byte{0, 0, 0x10, 0}}.appendTo(b)
	b = cnChunk{fmt: 3, csid: 6, payload: v[256 : 256+4096]}.appendTo(b)
	b = cnChunk{fmt: 3, csid: 4, payload: a[128:]}.appendTo(b)
	b = cnChunk{fmt: 3, csid: 6, payload: v[256+4096:]}.appendTo(b)
	// Chunk size 1 works too (every byte its own chunk).
	b = cnChunk{fmt: 0, csid: 2, length: 4, typ: 1, payload: []byte{0, 0, 0, 1}}.appendTo(b)
	b = cnChunk{fmt: 1, csid: 4, ts: 20, length: 3, typ: 8, payload: a[:1]}.appendTo(b)
	b = cnChunk{fmt: 3, csid: 4, payload: a[1:2]}.appendTo(b)
	b = cnChunk{fmt: 3, csid: 4, payload: a[2:3]}.appendTo(b)
	want := []cnMsg{{4, 8, 1, 41, a}, {6, 9, 1, 40, v}, {4, 8, 1, 61, a[:3]}}
	for _, sizes := range [][]int{{4096}, {1}, {3, 17, 65536}} {
		cnCompare(t, cnMustMessages(t, b, normalizerConfig{}, sizes...), want)
	}
}

// Random streams from the compliant encoder: interleaved csids of all basic header forms,
// random chunk sizes, extended timestamps and all three continuation conventions.
func TestChunkNormalizerRandomStreams(t *testing.T) {
	var total [4]int
	extTotal := 0
	for seed := int64(0); seed < 200; seed++ {
		rnd := rand.New(rand.NewSource(seed))
		e := newCNEncoder()
		e.contExt = cnContExt(seed % 3)
		csids := []uint32{3, 4, 6, 8, 70, 400}
		ts := map[uint32]uint32{}
		for _, c := range csids {
			if rnd.Intn(2) == 0 {
				ts[c] = 0xFFFF00 + uint32(rnd.Intn(0x200)) // crosses the 24-bit limit
			}
		}
		var all []cnMsg
		for batch := 0; batch < 4; batch++ {
			if rnd.Intn(2) == 0 {
				e.setChunkSize([]uint32{1, 60, 128, 4096, 65536, 0x7FFFFFFF}[rnd.Intn(6)])
			}
			var msgs []cnMsg
			for i := 0; i < 30; i++ {
				c := csids[rnd.Intn(len(csids))]
				switch rnd.Intn(10) {
				case 0:
					ts[c] += uint32(rnd.Intn(0x3000000)) // extended delta
				case 1:
				default:
					ts[c] += uint32(rnd.Intn(3)) * 20
				}
				typ := []byte{8, 9, 18, 20, 4, 22}[rnd.Intn(6)]
				size := []int{0, 1, 4, 100, 128, 129, 3000, 9000}[rnd.Intn(8)]
				msgs = append(msgs, cnMsg{csid: c, typ: typ, sid: uint32(rnd.Intn(2)), ts: ts[c], payload: cnPayload(rnd, size)})
			}
			e.writeInterleaved(msgs, rnd)
			all = append(all, msgs...)
		}
		// Messages complete in the order the encoder wrote their last chunks, whether
		// forwarded to go-rtmp or written to the publication.
		got := cnMustMessages(t, e.out, normalizerConfig{}, 1+rnd.Intn(5000), 4096)
		cnCompare(t, got, cnForwarded(e.done))
		if a, b := len(cnForwarded(e.done)), len(cnForwarded(all)); a != b {
			t.Fatalf("encoder completed %d of %d messages", a, b)
		}
		for i := range total {
			total[i] += e.fmts[i]
		}
		extTotal += e.extChunks
	}
	t.Logf("chunks per fmt %v, with extended timestamp %d", total, extTotal)
	for f, n := range total {
		if n == 0 {
			t.Fatalf("random streams never used fmt %d", f)
		}
	}
}

func cnFilterCSID(msgs []cnMsg, csid uint32) []cnMsg {
	var out []cnMsg
	for _, m := range msgs {
		if m.csid == csid {
			out = append(out, m)
		}
	}
	return out
}

func TestChunkNormalizerAbortAndEmpty(t *testing.T) {
	rnd := rand.New(rand.NewSource(4))
	v, w := cnPayload(rnd, 400), cnPayload(rnd, 20)
	var b []byte
	b = cnChunk{fmt: 0, csid: 6, ts: 100, length: 400, typ: 9, sid: 1, payload: v[:128]}.appendTo(b)
	// Abort csid 6: its partial message is dropped.
	b = cnChunk{fmt: 0, csid: 2, length: 4, typ: 2, payload: []byte{0, 0, 0, 6}}.appendTo(b)
	// Abort of a csid with nothing in flight, and of an unknown csid, are no-ops.
	b = cnChunk{fmt: 0, csid: 2, length: 4, typ: 2, payload: []byte{0, 0, 0, 7}}.appendTo(b)
	b = cnChunk{fmt: 0, csid: 2, length: 4, typ: 2, payload: []byte{0, 0, 0xff, 0xff}}.appendTo(b)
	// csid 6 may start over with a new header.
	b = cnChunk{fmt: 1, csid: 6, ts: 40, length: 20, typ: 9, payload: w}.appendTo(b)
	// Zero-length messages are dropped (go-rtmp v0.0.7 panics on them) but advance time.
	b = cnChunk{fmt: 1, csid: 6, ts: 40, length: 0, typ: 9}.appendTo(b)
	b = cnChunk{fmt: 1, csid: 6, ts: 40, length: 20, typ: 9, payload: w}.appendTo(b)
	want := []cnMsg{{6, 9, 1, 140, w}, {6, 9, 1, 220, w}}
	cnCompare(t, cnMustMessages(t, b, normalizerConfig{}), want)
}

func TestChunkNormalizerErrors(t *testing.T) {
	ok := cnChunk{fmt: 0, csid: 3, length: 4, typ: 20, payload: []byte{1, 2, 3, 4}}.appendTo(nil)
	cases := []struct {
		name   string
		chunks []byte
		cfg    normalizerConfig
		want   string
	}{
		{"oversize", cnChunk{fmt: 0, csid: 6, length: 20000, typ: 9, sid: 1}.appendTo(nil),
			normalizerConfig{MaxMessageSize: 10000}, "rtmp chunk: csid 6: message length 20000 exceeds limit 10000"},
		{"chunk size zero", cnChunk{fmt: 0, csid: 2, length: 4, typ: 1, payload: []byte{0, 0, 0, 0}}.appendTo(nil),
			normalizerConfig{}, "rtmp chunk: csid 2: invalid chunk size 0"},
		{"chunk size top bit", cnChunk{fmt: 0, csid: 2, length: 4, typ: 1, payload: []byte{0x80, 0, 0, 1}}.appendTo(nil),
			normalizerConfig{}, "invalid chunk size 2147483649"},
		{"chunk size short", cnChunk{fmt: 0, csid: 2, length: 2, typ: 1, payload: []byte{0, 1}}.appendTo(nil),
			normalizerConfig{}, "SetChunkSize message of 2 bytes"},
		{"abort short", cnChunk{fmt: 0, csid: 2, length: 1, typ: 2, payload: []byte{0}}.appendTo(nil),
			normalizerConfig{}, "Abort message of 1 bytes"},
		{"fmt1 first", cnChunk{fmt: 1, csid: 5, length: 1, typ: 8, payload: []byte{0}}.appendTo(nil),
			normalizerConfig{}, "csid 5: fmt 1 chunk before any fmt 0 header"},
		{"fmt3 first", cnChunk{fmt: 3, csid: 70, payload: []byte{0}}.appendTo(append([]byte(nil), ok...)),
			normalizerConfig{}, "csid 70: fmt 3 chunk before any fmt 0 header"},
		{"header mid message", cnChunk{fmt: 0, csid: 6, length: 3, typ: 9}.appendTo(
			cnChunk{fmt: 0, csid: 6, length: 300, typ: 9, payload: make([]byte, 128)}.appendTo(nil)),
			normalizerConfig{}, "csid 6: fmt 0 header while a message is incomplete (128 of 300 bytes)"},
	}
	// Too many chunk streams with partial messages.
	var many []byte
	for c := uint32(3); c < 3+5; c++ {
		many = cnChunk{fmt: 0, csid: c, length: 300, typ: 9, sid: 1, payload: make([]byte, 128)}.appendTo(many)
	}
	cases = append(cases, struct {
		name   string
		chunks []byte
		cfg    normalizerConfig
		want   string
	}{"too many partial", many, normalizerConfig{MaxChunkStreams: 4}, "csid 7: more than 4 chunk streams with incomplete messages"})
	// Too many distinct csids.
	var ids []byte
	for c := uint32(3); c < 3+cnMaxKnownChunkStreams+1; c++ {
		ids = cnChunk{fmt: 0, csid: c, length: 1, typ: 8, sid: 1, payload: []byte{1}}.appendTo(ids)
	}
	cases = append(cases, struct {
		name   string
		chunks []byte
		cfg    normalizerConfig
		want   string
	}{"too many csids", ids, normalizerConfig{}, "more than 1024 distinct chunk stream ids"})

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err, n := cnRun(append(append([]byte(nil), ok...), tc.chunks...), tc.cfg)
			if err == nil || err == io.EOF || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			// Sticky: the next Read fails the same way.
			if _, err2 := n.Read(make([]byte, 10)); err2 != err {
				t.Fatalf("second Read = %v, want the same error", err2)
			}
			// What was delivered before the error is well formed.
			if _, derr := cnDecodeOutput(out); derr != nil {
				t.Fatalf("output before the error: %v", derr)
			}
		})
	}
}

// Every prefix of a valid stream ends in io.EOF or io.ErrUnexpectedEOF, never a panic or
// another error, and delivers a prefix of the messages.
func TestChunkNormalizerTruncated(t *testing.T) {
	rnd := rand.New(rand.NewSource(5))
	e := newCNEncoder()
	var msgs []cnMsg
	for i := 0; i < 12; i++ {
		msgs = append(msgs, cnMsg{csid: []uint32{4, 6, 300}[i%3], typ: []byte{9, 8, 20}[i%3], sid: 1, ts: 0xFFFFF0 + uint32(i)*40, payload: cnPayload(rnd, 50+rnd.Intn(300))})
	}
	e.writeInterleaved(msgs[:6], rnd)
	e.setChunkSize(100)
	e.writeInterleaved(msgs[6:], rnd)
	full := cnMustMessages(t, e.out, normalizerConfig{})
	sawUnexpected := false
	for cut := 0; cut < len(e.out); cut++ {
		out, err, n := cnRun(e.out[:cut], normalizerConfig{}, 1+cut%9)
		if err == nil || (err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF)) {
			t.Fatalf("cut %d: err = %v", cut, err)
		}
		sawUnexpected = sawUnexpected || errors.Is(err, io.ErrUnexpectedEOF)
		got, derr := cnMerge(out, n.pub.(*cnRecorder))
		if derr != nil {
			t.Fatalf("cut %d: %v", cut, derr)
		}
		if len(got) > len(full) {
			t.Fatalf("cut %d: more messages than the full stream", cut)
		}
		cnCompare(t, got, full[:len(got)])
	}
	if !sawUnexpected {
		t.Fatal("no prefix produced io.ErrUnexpectedEOF")
	}
	_, err, _ := cnRun(e.out[:len(e.out)-1], normalizerConfig{})
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "rtmp chunk: csid") {
		t.Fatalf("cut mid-payload: %v", err)
	}
}

// go-rtmp's own ChunkStreamer is the real consumer: it must decode the normalised stream
// (including extended timestamps, which it reads on fmt 0), and it demonstrably misreads
// the raw stream that ffmpeg-style fmt-3 extended timestamps produce. Media no longer
// reaches go-rtmp, so this uses data messages (type 18, as @setDataFrame), which take
// the same path through the chunk layer: a name go-rtmp decodes, then the raw body.
func TestChunkNormalizerGoRTMPChunkStreamer(t *testing.T) {
	rnd := rand.New(rand.NewSource(6))
	e := newCNEncoder()
	e.setChunkSize(4096) // as ffmpeg does
	var msgs []cnMsg
	for i := 0; i < 20; i++ {
		csid, size := uint32(6), 3000+rnd.Intn(9000)
		if i%2 == 1 {
			csid, size = 4, 200+rnd.Intn(200)
		}
		name := cnAMFString(fmt.Sprintf("data-%d", i))
		msgs = append(msgs, cnMsg{csid: csid, typ: 18, sid: 1, ts: 20_000_000 + uint32(i/2)*40,
			payload: append(name, cnPayload(rnd, size)...)})
	}
	e.write(msgs...)

	decode := func(stream []byte) (got []cnMsg, err error) {
		cs := gortmp.NewChunkStreamer(bytes.NewReader(stream), io.Discard, nil)
		defer cs.Close()
		defer func() {
			// go-rtmp panics on some misframed input (its message loop recovers too).
			if r := recover(); r != nil {
				err = fmt.Errorf("go-rtmp panicked: %v", r)
			}
		}()
		for {
			var cmsg gortmp.ChunkMessage
			csid, ts, err := cs.Read(&cmsg)
			if err != nil {
				return got, err
			}
			switch m := cmsg.Message.(type) {
			case *rtmpmsg.SetChunkSize:
				if err := cs.PeerState().SetChunkSize(m.ChunkSize); err != nil {
					return got, err
				}
			case *rtmpmsg.DataMessage:
				p, _ := io.ReadAll(m.Body)
				got = append(got, cnMsg{uint32(csid), 18, cmsg.StreamID, ts, append(cnAMFString(m.Name), p...)})
			}
		}
	}

	out, err, _ := cnRun(e.out, normalizerConfig{})
	if err != io.EOF {
		t.Fatal(err)
	}
	got, err := decode(out[cnHandshakeSize:])
	if err != io.EOF {
		t.Fatalf("go-rtmp on normalised stream: %v", err)
	}
	cnCompare(t, got, msgs)

	// Without the normaliser go-rtmp loses framing: this is the defect being fixed.
	raw, rawErr := decode(e.out)
	matches := 0
	for i := 0; i < len(raw) && i < len(msgs); i++ {
		if bytes.Equal(raw[i].payload, msgs[i].payload) && raw[i].ts == msgs[i].ts {
			matches++
		}
	}
	t.Logf("go-rtmp on raw stream: %d of %d messages intact, ended with: %v", matches, len(msgs), rawErr)
	if matches == len(msgs) {
		t.Fatal("go-rtmp decoded the raw stream correctly; the defect this shim fixes did not show")
	}
}

// cnAMFString is s as an AMF0 string value.
func cnAMFString(s string) []byte {
	return append(binary.BigEndian.AppendUint16([]byte{2}, uint16(len(s))), s...)
}

// Read returns what it has without waiting to fill p, and the read deadline is armed.
func TestChunkNormalizerPromptReadAndDeadlines(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	n := newChunkNormalizer(server, normalizerConfig{ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond})
	defer n.Close()

	msg := cnChunk{fmt: 0, csid: 4, ts: 1, length: 3, typ: 20, payload: []byte{7, 8, 9}}.appendTo(nil)
	writeDone := make(chan error, 1)
	go func() {
		_, err := client.Write(append(cnHandshake(), msg...))
		writeDone <- err
	}()
	// Read the handshake, the injected SetChunkSize and the message with a huge p each
	// time: every call must return without more input arriving.
	var out []byte
	p := make([]byte, 1<<20)
	for len(out) < cnHandshakeSize+16+len(msg) {
		k, err := n.Read(p)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(out), err)
		}
		out = append(out, p[:k]...)
	}
	if err := <-writeDone; err != nil {
		t.Fatal(err)
	}
	msgs, err := cnDecodeOutput(out)
	if err != nil || len(msgs) != 1 || !bytes.Equal(msgs[0].payload, []byte{7, 8, 9}) {
		t.Fatalf("decoded %v, %v", msgs, err)
	}

	// Nothing more arrives: the read deadline ends the wait.
	start := time.Now()
	_, err = n.Read(p)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("idle Read = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("idle Read took %v", d)
	}

	// Nobody reads the client side: the write deadline ends the write.
	_, err = n.Write(make([]byte, 10))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blocked Write = %v, want deadline exceeded", err)
	}
}

// cnSteadyStream is an endless publish: a head, then a repeating cycle of one 10000-byte
// video message on the publishing stream (fmt 1 + two fmt-3 chunks at chunk size 4096,
// 40 ms apart, timestamps past 0xFFFFFF) and one 5-byte command for go-rtmp, so that
// every Read returns after one cycle.
func cnSteadyStream(payload []byte) (head, pattern []byte) {
	cmd := []byte{1, 2, 3, 4, 5}
	head = cnChunk{fmt: 0, csid: 2, length: 4, typ: 1, payload: []byte{0, 0, 0x10, 0}}.appendTo(head)
	head = cnChunk{fmt: 0, csid: 6, ts: 0x1000000, length: 10000, typ: 9, sid: cnPubSID, payload: payload[:4096]}.appendTo(head)
	head = cnChunk{fmt: 3, csid: 6, ext: true, extVal: 0x1000000, payload: payload[4096:8192]}.appendTo(head)
	head = cnChunk{fmt: 3, csid: 6, ext: true, extVal: 0x1000000, payload: payload[8192:]}.appendTo(head)
	head = cnChunk{fmt: 0, csid: 3, length: 5, typ: 20, payload: cmd}.appendTo(head)
	pattern = cnChunk{fmt: 1, csid: 6, ts: 40, length: 10000, typ: 9, payload: payload[:4096]}.appendTo(pattern)
	pattern = cnChunk{fmt: 3, csid: 6, payload: payload[4096:8192]}.appendTo(pattern)
	pattern = cnChunk{fmt: 3, csid: 6, payload: payload[8192:]}.appendTo(pattern)
	pattern = cnChunk{fmt: 3, csid: 3, payload: cmd}.appendTo(pattern)
	return append(cnHandshake(), head...), pattern
}

// Steady-state reading allocates nothing per chunk or per message besides the
// publication's tag (which this test's publication reuses).
func TestChunkNormalizerAllocations(t *testing.T) {
	rnd := rand.New(rand.NewSource(7))
	payload := cnPayload(rnd, 10000)
	head, pattern := cnSteadyStream(payload)
	n, rec := newTestNormalizer(&cnConn{r: &cnRepeatReader{head: head, pattern: pattern}}, normalizerConfig{})
	_, rec.reuse = flv.AllocTag(0, flv.TypeVideo, 0, len(payload))
	p := make([]byte, 1<<16)
	// Warm up: handshake, injected message, first messages (buffers grow once).
	for i := 0; i < 10; i++ {
		if _, err := n.Read(p); err != nil {
			t.Fatal(err)
		}
	}
	allocs0 := rec.allocs
	allocs := testing.AllocsPerRun(2000, func() {
		k, err := n.Read(p) // one video tag written, then the command returned
		if err != nil || k != 1+11+5 {
			panic(fmt.Sprintf("Read = %d, %v", k, err))
		}
	})
	if allocs > 0 {
		t.Fatalf("%.2f allocations per message, want 0", allocs)
	}
	if rec.allocs-allocs0 < 2000 || len(rec.tags) != 1 {
		t.Fatalf("%d tags allocated during the run", rec.allocs-allocs0)
	}
	if last := rec.tags[0]; last.ts <= 0x1000000+2000*40 || !bytes.Equal(last.payload, payload) || last.typ != 9 {
		t.Fatalf("last tag: ts %d type %d, payload intact %v", last.ts, last.typ, bytes.Equal(last.payload, payload))
	}
}

type cnRepeatReader struct {
	head, pattern []byte
	off           int
}

func (r *cnRepeatReader) Read(p []byte) (int, error) {
	if len(r.head) > 0 {
		n := copy(p, r.head)
		r.head = r.head[n:]
		return n, nil
	}
	n := copy(p, r.pattern[r.off:])
	r.off = (r.off + n) % len(r.pattern)
	return n, nil
}

// BenchmarkChunkNormalizer: one op is one 10000-byte video message parsed into the
// publication's tag (reused here, so the figure is the normaliser alone).
func BenchmarkChunkNormalizer(b *testing.B) {
	rnd := rand.New(rand.NewSource(8))
	payload := cnPayload(rnd, 10000)
	head, pattern := cnSteadyStream(payload)
	n, rec := newTestNormalizer(&cnConn{r: &cnRepeatReader{head: head, pattern: pattern}}, normalizerConfig{})
	_, rec.reuse = flv.AllocTag(0, flv.TypeVideo, 0, len(payload))
	p := make([]byte, 4096) // go-rtmp reads through a 4 KiB bufio.Reader
	for i := 0; i < 10; i++ {
		_, _ = n.Read(p)
	}
	b.SetBytes(int64(len(pattern)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := n.Read(p); err != nil {
			b.Fatal(err)
		}
	}
}

// ---------------------------------------------------------------------------------------
// Integration: real ffmpeg publishing to a real go-rtmp server.

// cnTag is what the integration test compares per audio/video message: its timestamp
// and whether it is a codec sequence header (AVC or AAC config), which ffmpeg's FLV
// muxer writes at timestamp 0 whatever the offset.
type cnTag struct {
	ts     uint32
	seqHdr bool
}

func cnIsSeqHeader(typ byte, p []byte) bool {
	if len(p) < 2 {
		return false
	}
	if typ == 9 {
		return p[0]&0x0f == 7 && p[1] == 0 // AVC, AVCPacketType 0
	}
	return p[0]>>4 == 10 && p[1] == 0 // AAC, AACPacketType 0
}

type cnTestHandler struct {
	gortmp.DefaultHandler
	mu     sync.Mutex
	audio  []cnTag
	video  []cnTag
	closed chan struct{}
}

func (h *cnTestHandler) OnPublish(_ *gortmp.StreamContext, _ uint32, _ *rtmpmsg.NetStreamPublish) error {
	return nil
}

func (h *cnTestHandler) record(typ byte, ts uint32, payload io.Reader) error {
	p, err := io.ReadAll(payload)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	tag := cnTag{ts: ts, seqHdr: cnIsSeqHeader(typ, p)}
	if typ == 9 {
		h.video = append(h.video, tag)
	} else {
		h.audio = append(h.audio, tag)
	}
	return nil
}

func (h *cnTestHandler) OnAudio(ts uint32, payload io.Reader) error { return h.record(8, ts, payload) }
func (h *cnTestHandler) OnVideo(ts uint32, payload io.Reader) error { return h.record(9, ts, payload) }
func (h *cnTestHandler) OnClose()                                   { close(h.closed) }

// cnErrorHook keeps go-rtmp's error log lines (e.g. "Server closed by error") as evidence.
type cnErrorHook struct {
	mu    sync.Mutex
	lines []string
}

func (h *cnErrorHook) Levels() []logrus.Level { return []logrus.Level{logrus.ErrorLevel} }
func (h *cnErrorHook) Fire(e *logrus.Entry) error {
	h.mu.Lock()
	h.lines = append(h.lines, e.Message)
	h.mu.Unlock()
	return nil
}

// cnFLVTags lists the audio and video tags of an FLV file.
func cnFLVTags(t *testing.T, path string) (audio, video []cnTag) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 13 || string(b[:3]) != "FLV" {
		t.Fatalf("%s is not FLV", path)
	}
	b = b[binary.BigEndian.Uint32(b[5:9])+4:]
	for len(b) >= 11 {
		typ, size := b[0]&0x1f, int(cnGet24(b[1:]))
		if len(b) < 11+size+4 {
			t.Fatalf("%s: truncated FLV tag", path)
		}
		tag := cnTag{ts: cnGet24(b[4:]) | uint32(b[7])<<24, seqHdr: cnIsSeqHeader(typ, b[11:11+size])}
		switch typ {
		case 8:
			audio = append(audio, tag)
		case 9:
			video = append(video, tag)
		}
		b = b[11+size+4:]
	}
	return audio, video
}

type cnPublishResult struct {
	audio, video []cnTag
	ffmpegErr    error
	ffmpegLog    string
	serverErrors []string
}

// cnFFmpegArgs builds the publish (or reference remux) command line.
func cnFFmpegArgs(in, tsOffset, out string) []string {
	args := []string{"-hide_banner", "-nostdin", "-loglevel", "warning", "-re", "-i", in, "-c", "copy"}
	if tsOffset != "" {
		args = append(args, "-output_ts_offset", tsOffset)
	}
	return append(args, "-f", "flv", out)
}

// cnPublish serves one bare go-rtmp connection on a free loopback port, publishes in.flv
// to it with ffmpeg and waits, with deadlines, for ffmpeg to exit and the server
// connection to close.
func cnPublish(t *testing.T, ffmpeg, in string, tsOffset string) cnPublishResult {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &cnTestHandler{closed: make(chan struct{})}
	hook := &cnErrorHook{}
	logger := logrus.New()
	logger.Out = io.Discard
	logger.AddHook(hook)
	var once sync.Once
	srv := gortmp.NewServer(&gortmp.ServerConfig{
		OnConnect: func(conn net.Conn) (io.ReadWriteCloser, *gortmp.ConnConfig) {
			var handler gortmp.Handler = &gortmp.DefaultHandler{}
			once.Do(func() { handler = h }) // only the first connection is observed
			return conn, &gortmp.ConnConfig{Handler: handler, Logger: logger}
		},
	})
	serveDone := make(chan error, 1)
	go func() { serveDone <- srv.Serve(l) }()
	defer func() {
		_ = srv.Close()
		select {
		case <-serveDone:
		case <-time.After(10 * time.Second):
			t.Error("go-rtmp server did not stop")
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ffmpeg, cnFFmpegArgs(in, tsOffset, fmt.Sprintf("rtmp://%s/live/test", l.Addr()))...)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	res := cnPublishResult{ffmpegErr: cmd.Run()} // CommandContext kills it at the deadline
	res.ffmpegLog = log.String()
	if ctx.Err() != nil {
		t.Fatalf("ffmpeg did not finish within the deadline:\n%s", res.ffmpegLog)
	}
	select {
	case <-h.closed:
	case <-time.After(15 * time.Second):
		t.Fatalf("server connection did not close after ffmpeg exited (ffmpeg: %v)", res.ffmpegErr)
	}
	h.mu.Lock()
	res.audio, res.video = slices.Clone(h.audio), slices.Clone(h.video)
	h.mu.Unlock()
	hook.mu.Lock()
	res.serverErrors = slices.Clone(hook.lines)
	hook.mu.Unlock()
	return res
}

// cnReadFLV reads every tag of an FLV file.
func cnReadFLV(t *testing.T, path string) []flv.Tag {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := flv.NewReader(f, 0)
	if err := r.ReadHeader(); err != nil {
		t.Fatal(err)
	}
	var tags []flv.Tag
	for {
		tag, err := r.ReadTag()
		if err == io.EOF {
			return tags
		}
		if err != nil {
			t.Fatal(err)
		}
		tags = append(tags, tag)
	}
}

// recordingIngest accepts one publisher and keeps every tag written to it.
type recordingIngest struct {
	mu     sync.Mutex
	tags   []flv.Tag
	closed chan struct{}
}

type recordingPub struct{ ing *recordingIngest }

func (r *recordingIngest) Publish(context.Context, PublishRequest) (Publication, error) {
	return recordingPub{r}, nil
}

func (p recordingPub) Alloc(typ byte, ts uint32, n int) flv.Tag {
	_, t := flv.AllocTag(27, typ, ts, n)
	return t
}

func (p recordingPub) Write(t flv.Tag) error {
	if err := t.Check(); err != nil {
		return err
	}
	p.ing.mu.Lock()
	p.ing.tags = append(p.ing.tags, t)
	p.ing.mu.Unlock()
	return nil
}

func (p recordingPub) Kicked() <-chan struct{} { return nil }
func (p recordingPub) Close(context.Context)   { close(p.ing.closed) }

// cnPublishServer publishes in.flv with ffmpeg into a real Server and returns the tags
// its publication received, once the publication is closed.
func cnPublishServer(t *testing.T, ffmpeg, in, tsOffset string) []flv.Tag {
	t.Helper()
	ing := &recordingIngest{closed: make(chan struct{})}
	addr := startServer(t, ing)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ffmpeg, cnFFmpegArgs(in, tsOffset, "rtmp://"+addr+"/live/test")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg: %v\n%s", err, out)
	}
	select {
	case <-ing.closed:
	case <-time.After(15 * time.Second):
		t.Fatal("publication not closed after ffmpeg exited")
	}
	ing.mu.Lock()
	defer ing.mu.Unlock()
	return slices.Clone(ing.tags)
}

func TestChunkNormalizerFFmpegPublish(t *testing.T) {
	harness.NeedTools(t, "ffmpeg")
	if testing.Short() {
		harness.Skip(t, "publishes for several seconds in real time; skipped in -short mode")
	}
	ffmpeg, err := exec.LookPath("ffmpeg")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "in.flv")
	run := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, ffmpeg, args...).CombinedOutput(); err != nil {
			t.Fatalf("ffmpeg %q: %v\n%s", args, err, out)
		}
	}
	run("-hide_banner", "-nostdin", "-loglevel", "error",
		"-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi", "-i", "sine",
		"-t", "4", "-c:v", "libx264", "-g", "25", "-c:a", "aac", "-f", "flv", in)

	// The reference is what the same ffmpeg command writes to a file instead of RTMP:
	// the server must receive exactly these tags (the RTMP payload is the FLV tag body).
	reference := func(t *testing.T, tsOffset string) (audio, video []cnTag) {
		ref := filepath.Join(dir, "ref"+tsOffset+".flv")
		args := cnFFmpegArgs(in, tsOffset, ref)
		run(slices.DeleteFunc(args, func(a string) bool { return a == "-re" })...)
		return cnFLVTags(t, ref)
	}

	check := func(t *testing.T, res cnPublishResult, tsOffset string) {
		t.Helper()
		wantAudio, wantVideo := reference(t, tsOffset)
		if res.ffmpegErr != nil || len(res.serverErrors) > 0 {
			t.Fatalf("ffmpeg: %v\n%s\nserver errors: %q", res.ffmpegErr, res.ffmpegLog, res.serverErrors)
		}
		if !slices.Equal(res.video, wantVideo) || !slices.Equal(res.audio, wantAudio) {
			t.Fatalf("received %d video, %d audio messages, want %d, %d, or timestamps differ\nvideo got  %v\nvideo want %v\naudio got  %v\naudio want %v",
				len(res.video), len(res.audio), len(wantVideo), len(wantAudio), res.video, wantVideo, res.audio, wantAudio)
		}
		if len(wantVideo) < 100 || len(wantAudio) < 100 {
			t.Fatalf("only %d video and %d audio tags in the reference", len(wantVideo), len(wantAudio))
		}
	}

	for _, offset := range []string{"", "20000"} {
		label := "no offset"
		if offset != "" {
			label = "offset " + offset + "s"
		}
		t.Run("Server, "+label, func(t *testing.T) {
			got := cnPublishServer(t, ffmpeg, in, offset)
			ref := filepath.Join(dir, "server-ref"+offset+".flv")
			run(slices.DeleteFunc(cnFFmpegArgs(in, offset, ref), func(a string) bool { return a == "-re" })...)
			want := cnReadFLV(t, ref)
			// Every audio and video tag arrives intact, in order: type, timestamp and body
			// bytes equal to what the same ffmpeg command writes to a file.
			media := func(tags []flv.Tag) []flv.Tag {
				return slices.DeleteFunc(slices.Clone(tags), func(t flv.Tag) bool { return t.Type() == flv.TypeScript })
			}
			gm, wm := media(got), media(want)
			if len(wm) < 200 {
				t.Fatalf("only %d media tags in the reference", len(wm))
			}
			if len(gm) != len(wm) {
				t.Fatalf("received %d audio/video tags, want %d", len(gm), len(wm))
			}
			for i := range wm {
				if !bytes.Equal(gm[i], wm[i]) {
					t.Fatalf("tag %d: got type %d ts %d %d bytes, want type %d ts %d %d bytes (bodies equal: %v)", i,
						gm[i].Type(), gm[i].Timestamp(), len(gm[i].Body()), wm[i].Type(), wm[i].Timestamp(), len(wm[i].Body()),
						bytes.Equal(gm[i].Body(), wm[i].Body()))
				}
			}
			// Metadata (through go-rtmp's @setDataFrame) arrives first; its values differ
			// from the file's (ffmpeg rewrites duration and size in a file), so parse it.
			if len(got) == 0 || got[0].Type() != flv.TypeScript {
				t.Fatal("first tag is not the metadata")
			}
			if md, err := flv.ParseMetadata(got[0].Body()); err != nil || !md.HasVideo() || !md.HasAudio() {
				t.Fatalf("metadata %+v, %v", md, err)
			}
			if offset != "" && gm[len(gm)-1].Timestamp() <= 0xFFFFFF {
				t.Fatalf("last timestamp %d: the offset did not take timestamps past 24 bits", gm[len(gm)-1].Timestamp())
			}
			t.Logf("%d tags intact, timestamps %d..%d", len(got), gm[0].Timestamp(), gm[len(gm)-1].Timestamp())
		})
	}

	t.Run("without normalizer, no offset (control)", func(t *testing.T) {
		// Proves the harness works with bare go-rtmp while timestamps stay small.
		check(t, cnPublish(t, ffmpeg, in, ""), "")
	})

	t.Run("without normalizer, offset 20000s (the defect)", func(t *testing.T) {
		res := cnPublish(t, ffmpeg, in, "20000")
		media := len(res.video) + len(res.audio)
		firstErr := ""
		if len(res.serverErrors) > 0 {
			firstErr, _, _ = strings.Cut(res.serverErrors[0], "\n")
		}
		t.Logf("bare go-rtmp received %d video + %d audio messages; ffmpeg: %v; go-rtmp: %q",
			len(res.video), len(res.audio), res.ffmpegErr, firstErr)
		if media >= 5 {
			t.Fatalf("bare go-rtmp received %d media messages; expected the v0.0.7 defect to reset the connection early", media)
		}
	})
}

// Media goes to the publication only from publish on, only on its message stream, and
// no more after unpublish, even for a message already half received into a tag.
func TestChunkNormalizerPublishRouting(t *testing.T) {
	rnd := rand.New(rand.NewSource(10))
	v := func(n int) []byte { return cnPayload(rnd, n) }
	early, mine, other, late, half := v(300), v(300), v(40), v(40), v(300)
	cmd := func(b []byte, i byte) []byte {
		return cnChunk{fmt: 0, csid: 3, length: 1, typ: 20, payload: []byte{i}}.appendTo(b)
	}
	var b []byte
	b = cnChunk{fmt: 0, csid: 6, ts: 10, length: 300, typ: 9, sid: 1, payload: early[:128]}.appendTo(b)
	b = cnChunk{fmt: 3, csid: 6, payload: early[128:256]}.appendTo(b)
	b = cmd(b, 1) // "publish": the test calls publish when Read returns it
	b = cnChunk{fmt: 3, csid: 6, payload: early[256:]}.appendTo(b)
	b = cnChunk{fmt: 0, csid: 6, ts: 20, length: 300, typ: 9, sid: 1, payload: mine[:128]}.appendTo(b)
	b = cnChunk{fmt: 0, csid: 4, ts: 21, length: 40, typ: 8, sid: 2, payload: other}.appendTo(b)
	b = cnChunk{fmt: 3, csid: 6, payload: mine[128:256]}.appendTo(b)
	b = cnChunk{fmt: 3, csid: 6, payload: mine[256:]}.appendTo(b)
	b = cnChunk{fmt: 0, csid: 6, ts: 30, length: 300, typ: 9, sid: 1, payload: half[:128]}.appendTo(b)
	b = cmd(b, 2) // "deleteStream": the test calls unpublish
	b = cnChunk{fmt: 3, csid: 6, payload: half[128:256]}.appendTo(b)
	b = cnChunk{fmt: 3, csid: 6, payload: half[256:]}.appendTo(b)
	b = cnChunk{fmt: 0, csid: 4, ts: 40, length: 40, typ: 8, sid: 1, payload: late}.appendTo(b)
	b = cmd(b, 3)

	n := newChunkNormalizer(&cnConn{r: bytes.NewReader(append(cnHandshake(), b...))}, normalizerConfig{})
	rec := &cnRecorder{}
	var out []byte
	p := make([]byte, 4096)
	for {
		k, err := n.Read(p)
		out = append(out, p[:k]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if k > 0 && len(out) > cnHandshakeSize+16 {
			switch p[k-1] { // the command's only byte
			case 1:
				n.publish(cnPubSID, rec, slog.New(slog.NewTextHandler(io.Discard, nil)))
			case 2:
				n.unpublish()
			}
		}
	}
	msgs, err := cnDecodeOutput(out)
	if err != nil || len(msgs) != 3 {
		t.Fatalf("forwarded %v, %v; want the 3 commands only", msgs, err)
	}
	cnCompare(t, rec.tags, []cnMsg{{cnAnyCSID, 9, 1, 20, mine}})
	if rec.allocs != 2 || n.tagBytes != 0 {
		t.Fatalf("%d tags allocated (want the delivered one and the unpublished one), %d bytes still counted", rec.allocs, n.tagBytes)
	}
}

// Tags are allocated at their declared size before their bytes arrive, so what a client
// can make us allocate without sending it is bounded.
func TestChunkNormalizerTagBounds(t *testing.T) {
	cfg := normalizerConfig{MaxMessageSize: 10000}
	t.Run("in flight", func(t *testing.T) {
		var b []byte
		b = cnChunk{fmt: 0, csid: 6, length: 9000, typ: 9, sid: 1, payload: make([]byte, 128)}.appendTo(b)
		b = cnChunk{fmt: 0, csid: 7, length: 9000, typ: 9, sid: 1, payload: make([]byte, 128)}.appendTo(b)
		b = cnChunk{fmt: 0, csid: 4, length: 9000, typ: 8, sid: 1, payload: make([]byte, 128)}.appendTo(b)
		_, err, _ := cnRun(b, cfg)
		if err == nil || !strings.Contains(err.Error(), "csid 4: media messages in flight would declare 27000 bytes, over 20000") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("aborted", func(t *testing.T) {
		var b []byte
		for i := 0; i < 20; i++ {
			b = cnChunk{fmt: 0, csid: 6, length: 9000, typ: 9, sid: 1, payload: make([]byte, 128)}.appendTo(b)
			b = cnChunk{fmt: 0, csid: 2, length: 4, typ: 2, payload: []byte{0, 0, 0, 6}}.appendTo(b)
		}
		_, err, n := cnRun(b, cfg)
		if err == nil || !strings.Contains(err.Error(), "aborted media messages left") {
			t.Fatalf("err = %v", err)
		}
		if a := n.pub.(*cnRecorder).allocs; a > 3 {
			t.Fatalf("%d tags of 9000 bytes allocated for %d bytes sent", a, n.rd.n-cnHandshakeSize)
		}
	})
}

// The client's Window Acknowledgement Size is consumed, and acknowledgements count every
// byte received after the handshake, media included, once per half window.
func TestChunkNormalizerAcknowledgements(t *testing.T) {
	rnd := rand.New(rand.NewSource(11))
	const window = 10000
	b := cnChunk{fmt: 0, csid: 2, length: 4, typ: 5, payload: binary.BigEndian.AppendUint32(nil, window)}.appendTo(nil)
	for i := 0; i < 40; i++ {
		b = cnChunk{fmt: 0, csid: 6, ts: uint32(i), length: 100, typ: 9, sid: 1, payload: cnPayload(rnd, 100)}.appendTo(b)
	}
	b = cnChunk{fmt: 0, csid: 3, length: 1, typ: 20, payload: []byte{1}}.appendTo(b)
	for i := 0; i < 40; i++ {
		b = cnChunk{fmt: 0, csid: 6, ts: uint32(i), length: 100, typ: 9, sid: 1, payload: cnPayload(rnd, 100)}.appendTo(b)
	}
	var acks []uint32
	cfg := normalizerConfig{Ack: func(seq uint32) error { acks = append(acks, seq); return nil }}
	// Feed 50 bytes per socket read so the count is exact to within a read.
	n, _ := newTestNormalizer(&cnConn{r: &cnSlowReader{r: bytes.NewReader(append(cnHandshake(), b...)), max: 50}}, cfg)
	out, err := io.ReadAll(n)
	if err != nil {
		t.Fatal(err)
	}
	if msgs, err := cnDecodeOutput(out); err != nil || len(msgs) != 1 || msgs[0].typ != 20 {
		t.Fatalf("forwarded %v, %v; want only the command", msgs, err)
	}
	last := uint32(0)
	for _, a := range acks {
		if a-last < window/2 || a-last > window/2+50+12+100 || a > uint32(len(b)) {
			t.Fatalf("acknowledgements %v for %d bytes with window %d", acks, len(b), window)
		}
		last = a
	}
	if len(acks) != len(b)/(window/2) {
		t.Fatalf("%d acknowledgements for %d bytes with window %d: %v", len(acks), len(b), window, acks)
	}
}

type cnSlowReader struct {
	r   io.Reader
	max int
}

func (r *cnSlowReader) Read(p []byte) (int, error) { return r.r.Read(p[:min(len(p), r.max)]) }
