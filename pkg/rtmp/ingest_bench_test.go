package rtmp

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	rtmpmsg "github.com/yutopp/go-rtmp/message"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/flv"
)

// benchHeadroom is what the origin reserves in front of each tag (the bus prefix).
var benchHeadroom = bus.PrefixLen(bus.Session{Origin: "origin-0", ID: 1})

// benchIngest accepts one publisher; its publication builds every tag in its own
// buffer with the bus headroom in front, as the origin does, then drops it.
type benchIngest struct {
	published chan struct{}
	pub       benchPub
}

type benchPub struct {
	tags    atomic.Int64
	payload atomic.Int64
	kicked  chan struct{}
	sink    []byte // keeps the last tag reachable so the compiler cannot drop the work

	mu      sync.Mutex
	target  int64 // reached is closed when tags gets here
	reached chan struct{}
}

// until returns a channel closed once n tags in total have been written.
func (p *benchPub) until(n int64) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.target, p.reached = n, make(chan struct{})
	return p.reached
}

func (p *benchPub) count(payload int) {
	p.payload.Add(int64(payload))
	n := p.tags.Add(1)
	p.mu.Lock()
	if n == p.target {
		close(p.reached)
	}
	p.mu.Unlock()
}

func (b *benchIngest) Publish(context.Context, PublishRequest) (Publication, error) {
	close(b.published)
	return &b.pub, nil
}

func (p *benchPub) Alloc(typ byte, ts uint32, n int) flv.Tag {
	buf, t := flv.AllocTag(benchHeadroom, typ, ts, n)
	p.sink = buf
	return t
}

func (p *benchPub) Write(t flv.Tag) error {
	p.count(len(t.Body()))
	return nil
}

func (p *benchPub) Kicked() <-chan struct{} { return p.kicked }
func (p *benchPub) Close(context.Context)   {}

// benchCommand encodes an AMF0 command message body as a client sends it.
func benchCommand(tb testing.TB, name string, txID int64, body rtmpmsg.AMFConvertible) []byte {
	tb.Helper()
	var args bytes.Buffer
	if body != nil {
		if err := rtmpmsg.EncodeBodyAnyValues(rtmpmsg.NewAMFEncoder(&args, rtmpmsg.EncodingTypeAMF0), body); err != nil {
			tb.Fatal(err)
		}
	}
	var out bytes.Buffer
	err := rtmpmsg.NewEncoder(&out).Encode(&rtmpmsg.CommandMessage{
		CommandName: name, TransactionID: txID, Encoding: rtmpmsg.EncodingTypeAMF0, Body: &args})
	if err != nil {
		tb.Fatal(err)
	}
	return out.Bytes()
}

// benchStream is a synthetic publisher's chunk stream: setup (connect, createStream,
// publish, sequence headers) and a repeating two-second cycle of 720p30-like H.264 at
// 2.5 Mbit/s (a 120 kB keyframe, then 59 frames of about 8.5 kB) interleaved with
// 128 kbit/s AAC (94 frames of 341 bytes), as ffmpeg writes it: each message whole, video
// on csid 6, audio on csid 4, later headers fmt 1 with the delta, continuations fmt 3.
type benchStream struct {
	setup       []byte
	setupTags   int // media tags in setup
	cycle       []byte
	ends        []int // ends[i]: offset in cycle just after its i-th tag
	payloadTags int64 // total payload bytes of one cycle
}

func newBenchStream(tb testing.TB, chunkSize uint32) *benchStream {
	rnd := rand.New(rand.NewSource(9))
	bs := &benchStream{}
	var b []byte
	// Control and commands (csid 3, like ffmpeg), at the default chunk size of 128.
	cmd := func(sid uint32, p []byte) {
		e := newCNEncoder()
		e.write(cnMsg{csid: 3, typ: 20, sid: sid, payload: p})
		b = append(b, e.out...)
	}
	cmd(0, benchCommand(tb, "connect", 1, &rtmpmsg.NetConnectionConnect{
		Command: rtmpmsg.NetConnectionConnectCommand{App: "live", Type: "nonprivate", FlashVer: "FMLE/3.0", TCURL: "rtmp://127.0.0.1/live"}}))
	cmd(0, benchCommand(tb, "createStream", 2, &rtmpmsg.NetConnectionCreateStream{}))
	cmd(1, benchCommand(tb, "publish", 3, &rtmpmsg.NetStreamPublish{PublishingName: "bench", PublishingType: "live"}))
	b = cnChunk{fmt: 0, csid: 2, length: 4, typ: 1, payload: binary.BigEndian.AppendUint32(nil, chunkSize)}.appendTo(b)

	// writeMsg writes one message at chunkSize: the first chunk as given, then fmt 3.
	writeMsg := func(first cnChunk, payload []byte) {
		n := min(len(payload), int(chunkSize))
		first.payload = payload[:n]
		b = first.appendTo(b)
		for off := n; off < len(payload); off += int(chunkSize) {
			b = cnChunk{fmt: 3, csid: first.csid, payload: payload[off:min(off+int(chunkSize), len(payload))]}.appendTo(b)
		}
	}
	videoHdr := append([]byte{0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff, 0xe1}, cnPayload(rnd, 30)...)
	writeMsg(cnChunk{fmt: 0, csid: 6, length: uint32(len(videoHdr)), typ: 9, sid: 1}, videoHdr)
	writeMsg(cnChunk{fmt: 0, csid: 4, length: 4, typ: 8, sid: 1}, []byte{0xAF, 0, 0x12, 0x10})
	bs.setup, bs.setupTags = b, 2

	// One cycle, in timestamp order.
	b = nil
	const videoDelta, audioDelta = 33, 21
	vTS, aTS := 0, 0
	for v, a := 0, 0; v < 60 || a < 94; {
		var payload []byte
		var c cnChunk
		if v < 60 && (a >= 94 || vTS+videoDelta <= aTS+audioDelta) {
			vTS += videoDelta
			size, head := 8560, byte(0x27)
			if v == 0 {
				size, head = 120000, 0x17
			}
			payload = append([]byte{head, 1, 0, 0, 0}, cnPayload(rnd, size-5)...)
			c = cnChunk{fmt: 1, csid: 6, ts: videoDelta, length: uint32(size), typ: 9}
			v++
		} else {
			aTS += audioDelta
			payload = append([]byte{0xAF, 1}, cnPayload(rnd, 339)...)
			c = cnChunk{fmt: 1, csid: 4, ts: audioDelta, length: 341, typ: 8}
			a++
		}
		writeMsg(c, payload)
		bs.ends = append(bs.ends, len(b))
		bs.payloadTags += int64(len(payload))
	}
	bs.cycle = b
	return bs
}

// BenchmarkIngest publishes over loopback TCP into the real Server: one op is one
// ingested tag. It reports the bytes allocated per tag in the whole process (server,
// and the client, which writes pre-encoded bytes and allocates nothing per tag) beside
// the payload bytes per tag: the ratio shows how many tag-sized buffers ingest allocates.
func BenchmarkIngest(b *testing.B) {
	for _, cs := range []uint32{4096, 128} {
		b.Run(fmt.Sprintf("chunk%d", cs), func(b *testing.B) { runBenchIngest(b, newBenchStream(b, cs)) })
	}
}

func runBenchIngest(b *testing.B, bs *benchStream) {
	ing := &benchIngest{published: make(chan struct{})}
	ing.pub.kicked = make(chan struct{})
	addr := startServer(b, ing)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	handshake(b, conn)
	drained := make(chan struct{})
	go func() { defer close(drained); _, _ = io.Copy(io.Discard, conn) }() // server replies and acks
	defer func() { conn.Close(); <-drained }()

	if _, err := conn.Write(bs.setup); err != nil {
		b.Fatal(err)
	}
	select {
	case <-ing.published:
	case <-time.After(5 * time.Second):
		b.Fatal("publish not accepted")
	}
	// Warm up with one cycle (buffers grow to their steady size), then measure b.N tags.
	warm := int64(bs.setupTags + len(bs.ends))
	reached := ing.pub.until(warm)
	if _, err := conn.Write(bs.cycle); err != nil {
		b.Fatal(err)
	}
	select {
	case <-reached:
	case <-time.After(10 * time.Second):
		b.Fatalf("warm-up: %d of %d tags arrived", ing.pub.tags.Load(), warm)
	}
	reached = ing.pub.until(warm + int64(b.N))
	payload0 := ing.pub.payload.Load()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	cpu0 := benchCPU(b)
	b.SetBytes(bs.payloadTags / int64(len(bs.ends)))
	b.ResetTimer()
	writeErr := make(chan error, 1)
	go func() {
		for left := b.N; left > 0; left -= len(bs.ends) {
			chunk := bs.cycle
			if left < len(bs.ends) {
				chunk = bs.cycle[:bs.ends[left-1]]
			}
			if _, err := conn.Write(chunk); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- nil
	}()
	select {
	case <-reached:
	case <-time.After(5*time.Minute + time.Duration(b.N)*time.Millisecond):
		b.Fatalf("only %d of %d tags arrived", ing.pub.tags.Load()-warm, b.N)
	}
	b.StopTimer()
	cpu := benchCPU(b) - cpu0
	runtime.ReadMemStats(&after)
	if err := <-writeErr; err != nil {
		b.Fatal(err)
	}
	n := float64(b.N)
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/n, "alloc-B/tag")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/n, "allocs/tag")
	b.ReportMetric(float64(ing.pub.payload.Load()-payload0)/n, "payload-B/tag")
	b.ReportMetric(float64(cpu.Nanoseconds())/n, "cpu-ns/tag")
}

// benchCPU is the process's user+system CPU time: on a shared machine a steadier
// figure than wall time (it includes the client and the kernel's loopback TCP).
func benchCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
