package relay

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// The RTMP chunk layer of the relay's client (RTMP spec 5.3): go-rtmp v0.0.7 has no
// client-side play (a client's data stream has no message handler) and its
// ChunkStreamer cannot run without its Conn, so the relay reads and writes chunks
// itself. Everything read is bounded: message size, chunk size, chunk streams.

// Message type ids the relay handles.
const (
	msgSetChunkSize = 1
	msgAbort        = 2
	msgAck          = 3
	msgUserControl  = 4
	msgWinAckSize   = 5
	msgPeerBW       = 6
	msgAudio        = 8
	msgVideo        = 9
	msgDataAMF3     = 15
	msgCommandAMF3  = 17
	msgDataAMF0     = 18
	msgCommandAMF0  = 20
	msgAggregate    = 22
)

// Limits on what a peer may make the reader hold.
const (
	maxMessage      = 1<<24 - 1 // an FLV tag body's limit
	maxChunkSize    = 1 << 24
	maxChunkStreams = 64
)

// errProtocol marks input that is not RTMP as the relay understands it.
var errProtocol = errors.New("rtmp: protocol error")

// message is one complete RTMP message.
type message struct {
	typ      byte
	ts       uint32
	streamID uint32
	body     []byte
}

// chunkStream is the header state of one chunk stream id.
type chunkStream struct {
	ts, delta uint32
	length    uint32
	typ       byte
	streamID  uint32
	extended  bool   // the last header carried an extended timestamp
	active    bool   // a message is being assembled in buf
	buf       []byte // the message so far; grown as bytes arrive, never from a header's claim
}

// chunkReader assembles messages from chunks.
type chunkReader struct {
	r         *bufio.Reader
	chunkSize uint32
	streams   map[uint32]*chunkStream
	read      uint64 // bytes read, for acknowledgements
	hdr       [16]byte
}

func newChunkReader(r io.Reader) *chunkReader {
	return &chunkReader{r: bufio.NewReaderSize(r, 16<<10), chunkSize: 128, streams: map[uint32]*chunkStream{}}
}

func (c *chunkReader) full(b []byte) error {
	n, err := io.ReadFull(c.r, b)
	c.read += uint64(n)
	return err
}

// next returns the next complete message. Protocol control messages that change
// how chunks are read (set chunk size, abort) are applied here and returned too.
func (c *chunkReader) next() (message, error) {
	for {
		m, ok, err := c.chunk()
		if err != nil || ok {
			return m, err
		}
	}
}

// chunk reads one chunk; ok reports a completed message.
func (c *chunkReader) chunk() (m message, ok bool, err error) {
	if err := c.full(c.hdr[:1]); err != nil {
		return m, false, err
	}
	format := c.hdr[0] >> 6
	csid := uint32(c.hdr[0] & 0x3f)
	switch csid {
	case 0:
		if err := c.full(c.hdr[:1]); err != nil {
			return m, false, err
		}
		csid = 64 + uint32(c.hdr[0])
	case 1:
		if err := c.full(c.hdr[:2]); err != nil {
			return m, false, err
		}
		csid = 64 + uint32(c.hdr[0]) + uint32(c.hdr[1])<<8
	}
	cs := c.streams[csid]
	if cs == nil {
		if format != 0 {
			return m, false, fmt.Errorf("%w: chunk stream %d starts with a type-%d header", errProtocol, csid, format)
		}
		if len(c.streams) >= maxChunkStreams {
			return m, false, fmt.Errorf("%w: more than %d chunk streams", errProtocol, maxChunkStreams)
		}
		cs = &chunkStream{}
		c.streams[csid] = cs
	}
	var field uint32
	switch format {
	case 0:
		if err := c.full(c.hdr[:11]); err != nil {
			return m, false, err
		}
		field = get24(c.hdr[0:3])
		cs.length, cs.typ = get24(c.hdr[3:6]), c.hdr[6]
		cs.streamID = binary.LittleEndian.Uint32(c.hdr[7:11])
	case 1:
		if err := c.full(c.hdr[:7]); err != nil {
			return m, false, err
		}
		field = get24(c.hdr[0:3])
		cs.length, cs.typ = get24(c.hdr[3:6]), c.hdr[6]
	case 2:
		if err := c.full(c.hdr[:3]); err != nil {
			return m, false, err
		}
		field = get24(c.hdr[0:3])
	}
	if format < 3 {
		cs.extended = field == 0xffffff
		if cs.extended {
			if err := c.full(c.hdr[:4]); err != nil {
				return m, false, err
			}
			field = binary.BigEndian.Uint32(c.hdr[:4])
		}
	} else if cs.extended {
		// Type-3 chunks repeat the extended timestamp of their stream (as ffmpeg,
		// OBS and librtmp write them).
		if err := c.full(c.hdr[:4]); err != nil {
			return m, false, err
		}
		if !cs.active {
			field = binary.BigEndian.Uint32(c.hdr[:4])
		}
	}
	if !cs.active { // the first chunk of a message: its timestamp
		switch format {
		case 0:
			cs.ts, cs.delta = field, 0
		case 1, 2:
			cs.delta = field
			cs.ts += field
		case 3:
			if cs.extended {
				cs.delta = field
			}
			cs.ts += cs.delta
		}
		if cs.length > maxMessage {
			return m, false, fmt.Errorf("%w: message of %d bytes", errProtocol, cs.length)
		}
		cs.active, cs.buf = true, nil
	} else if format != 3 {
		return m, false, fmt.Errorf("%w: type-%d header inside a message on chunk stream %d", errProtocol, format, csid)
	}
	n := min(cs.length-uint32(len(cs.buf)), c.chunkSize)
	start := len(cs.buf)
	cs.buf = slices.Grow(cs.buf, int(n))[:start+int(n)]
	if err := c.full(cs.buf[start:]); err != nil {
		return m, false, err
	}
	if uint32(len(cs.buf)) < cs.length {
		return m, false, nil
	}
	m = message{typ: cs.typ, ts: cs.ts, streamID: cs.streamID, body: cs.buf}
	cs.active, cs.buf = false, nil
	switch m.typ {
	case msgSetChunkSize:
		if len(m.body) < 4 {
			return m, false, fmt.Errorf("%w: short set chunk size", errProtocol)
		}
		size := binary.BigEndian.Uint32(m.body) & 0x7fffffff
		if size < 1 || size > maxChunkSize {
			return m, false, fmt.Errorf("%w: chunk size %d", errProtocol, size)
		}
		c.chunkSize = size
	case msgAbort:
		if len(m.body) >= 4 {
			if s := c.streams[binary.BigEndian.Uint32(m.body)]; s != nil {
				s.active, s.buf = false, nil
			}
		}
	}
	return m, true, nil
}

func get24(b []byte) uint32 { return uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]) }

func put24(b []byte, v uint32) { b[0], b[1], b[2] = byte(v>>16), byte(v>>8), byte(v) }

// chunkWriter writes messages as chunks: a type-0 header for each message's first
// chunk (simple and unambiguous for any server), type-3 for the rest.
type chunkWriter struct {
	w         *bufio.Writer
	chunkSize uint32
}

func newChunkWriter(w io.Writer) *chunkWriter {
	return &chunkWriter{w: bufio.NewWriterSize(w, 32<<10), chunkSize: 128}
}

// write queues one message on chunk stream csid (2..63); flush sends it.
func (c *chunkWriter) write(csid byte, m message) error {
	var h [16]byte
	h[0] = csid & 0x3f
	ext := m.ts >= 0xffffff
	if ext {
		put24(h[1:4], 0xffffff)
	} else {
		put24(h[1:4], m.ts)
	}
	put24(h[4:7], uint32(len(m.body)))
	h[7] = m.typ
	binary.LittleEndian.PutUint32(h[8:12], m.streamID)
	n := 12
	if ext {
		binary.BigEndian.PutUint32(h[12:16], m.ts)
		n = 16
	}
	if _, err := c.w.Write(h[:n]); err != nil {
		return err
	}
	body := m.body
	for {
		k := min(len(body), int(c.chunkSize))
		if _, err := c.w.Write(body[:k]); err != nil {
			return err
		}
		body = body[k:]
		if len(body) == 0 {
			return nil
		}
		h3 := []byte{0xc0 | csid&0x3f}
		if ext {
			h3 = binary.BigEndian.AppendUint32(h3, m.ts)
		}
		if _, err := c.w.Write(h3); err != nil {
			return err
		}
	}
}

func (c *chunkWriter) flush() error { return c.w.Flush() }
