package rtmp

// Chunk-stream normaliser for go-rtmp v0.0.7.
//
// Why this exists: go-rtmp v0.0.7 does not read the 4-byte extended timestamp that
// follows a type-3 (fmt 3) chunk header when the chunk stream's last timestamp field
// was the 0xFFFFFF marker. ffmpeg and OBS send that field (as the RTMP specification
// requires), so once timestamps pass 0xFFFFFF ms (4h40m, or at once for an encoder that
// starts high) go-rtmp reads 4 bytes of the extended field as payload, loses framing and
// resets the connection. Forks are not reachable from the module proxy here, so instead of
// patching the library we parse the client's chunk stream ourselves and give go-rtmp only
// what it parses correctly: every message it still needs is re-emitted as exactly one fmt-0
// chunk (whose extended timestamp go-rtmp does read), after a SetChunkSize(0xFFFFFF) that
// guarantees no message ever needs a continuation chunk.
//
// Media bypasses go-rtmp. Audio (type 8) and video (type 9) messages on the message
// stream of an accepted publish are assembled straight into a tag from the Publication's
// Alloc: each chunk's payload is read from the connection's read buffer into the tag body
// (one copy; a read larger than the buffer lands in the body directly), and the finished
// tag goes to Publication.Write. Media before the publish, or on another message stream,
// is read past and dropped, as go-rtmp ignores it. Everything else (commands, data such
// as @setDataFrame, user control) still reaches go-rtmp as above.
//
// Acknowledgements: go-rtmp acknowledges the bytes it reads itself, which no longer
// include the media. So the normaliser consumes the client's Window Acknowledgement Size
// and sends the acknowledgements itself, through normalizerConfig.Ack, counting every byte
// received after the handshake, each time half a window has arrived (as go-rtmp did).
// go-rtmp's own window stays at its 2 GiB default, so it would acknowledge only after
// 1 GiB of non-media messages, which publishers do not send.
//
// Written from the RTMP 1.0 specification (section 5.3 "Chunking") and by reading how
// go-rtmp consumes its io.ReadWriteCloser; no foreign code is copied.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

const (
	// cnHandshakeSize is what a client sends before its first chunk: C0 (version byte),
	// C1 (1536 bytes) and C2 (1536 bytes). go-rtmp's handshake reads exactly these.
	cnHandshakeSize = 1 + 1536 + 1536

	// cnMaxMessageLength is the largest length the 24-bit message length field can carry.
	cnMaxMessageLength = 0xFFFFFF

	// cnTimestampMarker in a 24-bit timestamp/delta field means "the real value follows as
	// a 32-bit extended timestamp".
	cnTimestampMarker = 0xFFFFFF

	// cnInjectedChunkSize is announced to go-rtmp before the client's first message. It is
	// go-rtmp's own maximum and not smaller than any message length, so every re-emitted
	// message fits in one chunk. (A ConnConfig.ControlState.MaxChunkSize below this value
	// would make go-rtmp refuse it; leave that setting at its default.)
	cnInjectedChunkSize = 0xFFFFFF

	cnDefaultMaxChunkStreams = 64

	// cnMaxKnownChunkStreams bounds the per-connection header state (a few dozen bytes per
	// csid). Real encoders use fewer than ten csids; without a bound a client could make us
	// (and go-rtmp, which keeps a reader per csid) remember all 65598 of them.
	cnMaxKnownChunkStreams = 1024

	cnReadBufferSize = 16 << 10

	// cnPoolKeepCap: message buffers (for go-rtmp's messages; media goes into tags)
	// larger than this are not kept for reuse after the message is delivered, so one huge
	// message does not pin its memory for the life of the connection.
	cnPoolKeepCap = 4 << 20

	// cnMaxOutHeader is the longest fmt-0 chunk header we emit: 3-byte basic header,
	// 11-byte message header and a 4-byte extended timestamp.
	cnMaxOutHeader = 3 + 11 + 4

	cnTypeSetChunkSize = 1
	cnTypeCommandAMF3  = 17
	cnTypeCommandAMF0  = 20
	cnTypeAbort        = 2
	cnTypeWinAckSize   = 5
	cnTypeAudio        = 8
	cnTypeVideo        = 9
)

// normalizerConfig bounds and times the normaliser. Zero values select the defaults.
type normalizerConfig struct {
	ReadTimeout     time.Duration // deadline set on conn before every underlying Read (go-rtmp sets none); 0 = none
	WriteTimeout    time.Duration // deadline set on conn before every Write; 0 = none
	MaxMessageSize  uint32        // larger messages are refused (default and ceiling 16 MiB-1, the RTMP maximum)
	MaxChunkStreams int           // bound on distinct csids with partial messages in flight (default 64)
	// Ack sends an Acknowledgement carrying the count of bytes received (see above);
	// nil sends none.
	Ack func(sequence uint32) error
}

// cnStream is the receive state of one chunk stream id (csid).
type cnStream struct {
	csid      uint32
	hasHeader bool // a fmt-0 header was seen; fmt 1/2/3 need the fields it set

	// Header state. fmt 0/1/2 headers are refused while a message is incomplete, so during
	// a message these fields describe that message.
	timestamp uint32 // absolute timestamp of the message most recently begun on this csid
	tsField   uint32 // last timestamp (fmt 0) or delta (fmt 1/2/3) value, after the extended field
	extended  bool   // the last fmt 0/1/2 header carried the 0xFFFFFF marker
	length    uint32
	typeID    byte
	streamID  uint32

	inFlight bool   // a message is partially received
	got      uint32 // payload bytes of the current message received so far
	// Where the current message's payload goes: exactly one of these while it is received.
	buf     []byte  // messages for go-rtmp: payload so far (len = got); from the normaliser's pool
	tag     flv.Tag // publishing media: the Publication's tag, body filled up to got
	discard bool    // other media: read past and dropped
}

// chunkNormalizer implements io.ReadWriteCloser for go-rtmp's ServerConfig.OnConnect.
// Read yields the client's handshake unchanged and then a normalised chunk stream;
// Write and Close pass through to conn (Write with a deadline).
//
// Read is called from one goroutine (go-rtmp's message loop), which is also the one that
// runs the handler (publish, unpublish, the Ack callback); Write is called from go-rtmp's
// writer goroutine. Read and Write share no state.
type chunkNormalizer struct {
	conn net.Conn
	cfg  normalizerConfig
	rd   *cnDeadlineReader
	br   *bufio.Reader

	handshakeLeft int  // client handshake bytes still to pass through
	injected      bool // SetChunkSize(0xFFFFFF) has been queued for go-rtmp
	chunkSize     uint32

	small    [64]*cnStream // csids 2..63 (one-byte basic header), the common case, no map lookup
	big      map[uint32]*cnStream
	known    int // number of csids with state
	inFlight int // number of csids with a partial message

	free [][]byte // message buffers for reuse (len 0)

	// Publishing: media on message stream pubStream goes to pub (see publish).
	pub       Publication
	pubStream uint32
	pubLog    *slog.Logger
	tagBytes  uint64 // declared bytes of tags allocated and not yet written
	abandoned uint64 // declared bytes of tags dropped by Abort before they were received

	ackWindow uint32 // client's Window Acknowledgement Size; 0 = none announced
	acked     uint64 // bytes received when the last acknowledgement was sent

	// Pending output: one re-emitted message served to Read from hdr then body.
	hdr        [cnMaxOutHeader]byte
	hdrLen     int
	hdrOff     int
	body       []byte
	bodyOff    int
	bodyPooled bool // body came from the pool and goes back to it once served

	cmdCSID uint32 // see commandCSID

	injectBody [4]byte
	scratch    [11]byte

	err error // sticky: once parsing failed, every Read returns it
}

var _ io.ReadWriteCloser = (*chunkNormalizer)(nil)

// newChunkNormalizer wraps conn for go-rtmp. The read side passes the handshake through
// untouched (C0+C1+C2 from the client), then parses the client's chunk stream itself (fmt
// 0-3 headers, 1/2/3-byte basic headers, extended timestamps on every fmt including fmt 3,
// SetChunkSize and Abort), assembles whole messages and re-emits each that go-rtmp needs
// as one fmt-0 chunk with an absolute timestamp, after first injecting one
// SetChunkSize(0xFFFFFF) message.
// Client SetChunkSize, Abort and Window Acknowledgement Size messages are consumed, audio
// and video go to the publication or nowhere (see publish); everything else is forwarded
// with its type id, message stream id and csid. Zero-length messages are dropped: they
// carry nothing and go-rtmp v0.0.7 panics on them.
func newChunkNormalizer(conn net.Conn, cfg normalizerConfig) *chunkNormalizer {
	if cfg.MaxMessageSize == 0 || cfg.MaxMessageSize > cnMaxMessageLength {
		cfg.MaxMessageSize = cnMaxMessageLength
	}
	if cfg.MaxChunkStreams <= 0 {
		cfg.MaxChunkStreams = cnDefaultMaxChunkStreams
	}
	rd := &cnDeadlineReader{conn: conn, timeout: cfg.ReadTimeout}
	return &chunkNormalizer{
		conn:          conn,
		cfg:           cfg,
		rd:            rd,
		br:            bufio.NewReaderSize(rd, cnReadBufferSize),
		handshakeLeft: cnHandshakeSize,
		chunkSize:     128, // RTMP default until the client sends SetChunkSize
	}
}

// publish routes the audio and video messages of message stream streamID to pub from the
// next message on; log reports tags pub refuses. go-rtmp calls its handler's OnPublish
// from the goroutine that calls Read, between two Reads, and nothing after the publish
// command has been parsed yet, so no media message can slip past.
func (c *chunkNormalizer) publish(streamID uint32, pub Publication, log *slog.Logger) {
	c.pub, c.pubStream, c.pubLog = pub, streamID, log
}

// unpublish stops routing media to the publication (the client deleted the stream);
// messages in flight into tags are read past and dropped from here on.
func (c *chunkNormalizer) unpublish() {
	c.pub = nil
	c.eachStream(func(cs *cnStream) {
		if cs.tag != nil {
			c.tagBytes -= uint64(cs.length)
			cs.tag, cs.discard = nil, true
		}
	})
}

func (c *chunkNormalizer) eachStream(f func(*cnStream)) {
	for _, cs := range c.small {
		if cs != nil {
			f(cs)
		}
	}
	for _, cs := range c.big {
		f(cs)
	}
}

// cnDeadlineReader arms the read deadline before every read from the socket, so a client
// that stalls (mid-handshake, mid-message or between messages) is dropped after
// ReadTimeout instead of holding a goroutine and its buffers forever.
type cnDeadlineReader struct {
	conn    net.Conn
	timeout time.Duration
	n       uint64 // bytes received, handshake included
}

func (r *cnDeadlineReader) Read(p []byte) (int, error) {
	if r.timeout > 0 {
		if err := r.conn.SetReadDeadline(time.Now().Add(r.timeout)); err != nil {
			return 0, fmt.Errorf("rtmp conn: set read deadline: %w", err)
		}
	}
	n, err := r.conn.Read(p)
	r.n += uint64(n)
	return n, err
}

// Read returns handshake bytes, then normalised chunks. It returns as soon as it has
// something: what is pending from the current message, or, when nothing is pending, the
// next complete message (which may mean waiting for its remaining chunks). A clean client
// close between messages yields io.EOF; every other failure is a wrapped error.
func (c *chunkNormalizer) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if c.handshakeLeft > 0 {
		if len(p) > c.handshakeLeft {
			p = p[:c.handshakeLeft]
		}
		// bufio.Reader.Read does at most one socket read, so the handshake's request/
		// response turns (C0C1 → S0S1S2 → C2) never block on bytes not yet sent.
		n, err := c.br.Read(p)
		c.handshakeLeft -= n
		if err != nil && err != io.EOF {
			err = fmt.Errorf("rtmp conn: read handshake: %w", err)
		}
		return n, err
	}

	for c.hdrOff == c.hdrLen && c.bodyOff == len(c.body) {
		c.releasePending()
		if c.err != nil {
			return 0, c.err
		}
		if !c.injected {
			c.injected = true
			binary.BigEndian.PutUint32(c.injectBody[:], cnInjectedChunkSize)
			c.setPending(2, 0, cnTypeSetChunkSize, 0, c.injectBody[:], false)
			break
		}
		if err := c.nextMessage(); err != nil {
			c.err = err
			return 0, err
		}
	}

	n := copy(p, c.hdr[c.hdrOff:c.hdrLen])
	c.hdrOff += n
	m := copy(p[n:], c.body[c.bodyOff:])
	c.bodyOff += m
	if c.hdrOff == c.hdrLen && c.bodyOff == len(c.body) {
		// Return the buffer now so the next message can reuse it.
		c.releasePending()
	}
	return n + m, nil
}

// Write passes go-rtmp's output to the client with a fresh write deadline, so a client
// that stops reading cannot block go-rtmp's writer goroutine forever.
func (c *chunkNormalizer) Write(p []byte) (int, error) {
	if c.cfg.WriteTimeout > 0 {
		if err := c.conn.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout)); err != nil {
			return 0, fmt.Errorf("rtmp conn: set write deadline: %w", err)
		}
	}
	n, err := c.conn.Write(p)
	if err != nil {
		return n, fmt.Errorf("rtmp conn: write: %w", err)
	}
	return n, nil
}

// Close closes the underlying connection.
func (c *chunkNormalizer) Close() error {
	return c.conn.Close()
}

// releasePending drops the served message and returns its buffer to the pool.
func (c *chunkNormalizer) releasePending() {
	if c.bodyPooled {
		c.putBuf(c.body)
	}
	c.body, c.bodyOff, c.bodyPooled = nil, 0, false
	c.hdrLen, c.hdrOff = 0, 0
}

// setPending queues one message as a single fmt-0 chunk with an absolute timestamp.
func (c *chunkNormalizer) setPending(csid, ts uint32, typeID byte, streamID uint32, body []byte, pooled bool) {
	h := c.hdr[:]
	i := 0
	switch {
	case csid < 64:
		h[0] = byte(csid) // fmt 0 in the top two bits
		i = 1
	case csid < 64+256:
		h[0], h[1] = 0, byte(csid-64)
		i = 2
	default:
		h[0], h[1], h[2] = 1, byte(csid-64), byte((csid-64)>>8)
		i = 3
	}
	field := ts
	if ts >= cnTimestampMarker {
		field = cnTimestampMarker
	}
	cnPut24(h[i:], field)
	cnPut24(h[i+3:], uint32(len(body)))
	h[i+6] = typeID
	binary.LittleEndian.PutUint32(h[i+7:], streamID) // message stream id is little-endian
	i += 11
	if ts >= cnTimestampMarker {
		binary.BigEndian.PutUint32(h[i:], ts)
		i += 4
	}
	c.hdrLen, c.hdrOff = i, 0
	c.body, c.bodyOff, c.bodyPooled = body, 0, pooled
}

// nextMessage reads chunks until a message is ready to be passed on to go-rtmp. Media
// is delivered to the publication on the way.
func (c *chunkNormalizer) nextMessage() error {
	for {
		ready, err := c.readChunk()
		if err != nil {
			return err
		}
		if err := c.maybeAck(); err != nil {
			return err
		}
		if ready {
			return nil
		}
	}
}

// maybeAck sends an Acknowledgement once half of the client's window has been received
// since the last one. Its sequence number counts the bytes received after the handshake,
// modulo 2^32 as the field requires.
func (c *chunkNormalizer) maybeAck() error {
	if c.ackWindow == 0 || c.cfg.Ack == nil {
		return nil
	}
	received := c.rd.n - cnHandshakeSize
	if received-c.acked < uint64(max(c.ackWindow/2, 1)) {
		return nil
	}
	c.acked = received
	if err := c.cfg.Ack(uint32(received)); err != nil {
		return fmt.Errorf("rtmp conn: send acknowledgement: %w", err)
	}
	return nil
}

// readChunk reads one chunk. It reports true when that chunk completed a message that is
// now pending for go-rtmp.
func (c *chunkNormalizer) readChunk() (bool, error) {
	b0, err := c.br.ReadByte()
	if err != nil {
		if err == io.EOF {
			if c.inFlight > 0 {
				return false, fmt.Errorf("rtmp chunk: connection closed with %d incomplete message(s): %w",
					c.inFlight, io.ErrUnexpectedEOF)
			}
			return false, io.EOF // clean close between messages
		}
		return false, fmt.Errorf("rtmp chunk: read basic header: %w", err)
	}

	format := b0 >> 6
	csid := uint32(b0 & 0x3f)
	switch csid {
	case 0: // two-byte form: csid 64..319
		if err := c.readFull(c.scratch[:1]); err != nil {
			return false, fmt.Errorf("rtmp chunk: read basic header: %w", err)
		}
		csid = 64 + uint32(c.scratch[0])
	case 1: // three-byte form: csid 64..65599, low byte first
		if err := c.readFull(c.scratch[:2]); err != nil {
			return false, fmt.Errorf("rtmp chunk: read basic header: %w", err)
		}
		csid = 64 + uint32(c.scratch[0]) + uint32(c.scratch[1])<<8
	}

	cs, err := c.stream(csid)
	if err != nil {
		return false, err
	}
	if format != 0 && !cs.hasHeader {
		return false, fmt.Errorf("rtmp chunk: csid %d: fmt %d chunk before any fmt 0 header", csid, format)
	}
	if format != 3 && cs.inFlight {
		// Compliant encoders send continuation chunks as fmt 3. Accepting a new header
		// here would leave the partial message ambiguous, so refuse.
		return false, fmt.Errorf("rtmp chunk: csid %d: fmt %d header while a message is incomplete (%d of %d bytes)",
			csid, format, cs.got, cs.length)
	}

	newMessage := true
	switch format {
	case 0:
		if err := c.readFull(c.scratch[:11]); err != nil {
			return false, fmt.Errorf("rtmp chunk: csid %d: read fmt 0 header: %w", csid, err)
		}
		field := cnGet24(c.scratch[0:])
		cs.length = cnGet24(c.scratch[3:])
		cs.typeID = c.scratch[6]
		cs.streamID = binary.LittleEndian.Uint32(c.scratch[7:11])
		if field, err = c.extendedField(cs, field, format); err != nil {
			return false, err
		}
		cs.timestamp = field // absolute
		cs.tsField = field
		cs.hasHeader = true
	case 1:
		if err := c.readFull(c.scratch[:7]); err != nil {
			return false, fmt.Errorf("rtmp chunk: csid %d: read fmt 1 header: %w", csid, err)
		}
		field := cnGet24(c.scratch[0:])
		cs.length = cnGet24(c.scratch[3:])
		cs.typeID = c.scratch[6]
		if field, err = c.extendedField(cs, field, format); err != nil {
			return false, err
		}
		cs.timestamp += field // delta; uint32 arithmetic wraps like RTMP timestamps do
		cs.tsField = field
	case 2:
		if err := c.readFull(c.scratch[:3]); err != nil {
			return false, fmt.Errorf("rtmp chunk: csid %d: read fmt 2 header: %w", csid, err)
		}
		field := cnGet24(c.scratch[0:])
		if field, err = c.extendedField(cs, field, format); err != nil {
			return false, err
		}
		cs.timestamp += field
		cs.tsField = field
	case 3:
		if cs.inFlight {
			newMessage = false
			if cs.extended {
				c.skipContinuationExtended(cs)
			}
		} else {
			// A fmt-3 chunk that begins a message repeats the previous header, and its
			// timestamp advances by the previous chunk's timestamp field: the delta, or
			// after a fmt-0 header its absolute value (spec 5.3.1.2.4: a type 3 may follow
			// a type 0 directly when the delta equals the first message's timestamp).
			// When that field was extended, the spec requires the 4 bytes here; read them.
			if cs.extended {
				if err := c.readFull(c.scratch[:4]); err != nil {
					return false, fmt.Errorf("rtmp chunk: csid %d: read fmt 3 extended timestamp: %w", csid, err)
				}
				cs.tsField = binary.BigEndian.Uint32(c.scratch[:4])
			}
			cs.timestamp += cs.tsField
		}
	}

	if newMessage {
		if cs.length > c.cfg.MaxMessageSize {
			return false, fmt.Errorf("rtmp chunk: csid %d: message length %d exceeds limit %d",
				csid, cs.length, c.cfg.MaxMessageSize)
		}
		if cs.length == 0 {
			return c.complete(cs, nil)
		}
		// Only messages that span chunks are "in flight" and count against the limit; a
		// single-chunk message is complete (or the read failed) before the next chunk is
		// read, so it cannot pile up.
		if cs.length > c.chunkSize {
			if c.inFlight >= c.cfg.MaxChunkStreams {
				return false, fmt.Errorf("rtmp chunk: csid %d: more than %d chunk streams with incomplete messages",
					csid, c.cfg.MaxChunkStreams)
			}
			cs.inFlight = true
			c.inFlight++
		}
		if err := c.begin(cs); err != nil {
			return false, err
		}
	}

	n := min(cs.length-cs.got, c.chunkSize)
	if err := c.readPayload(cs, int(n)); err != nil {
		if !cs.inFlight { // keep the invariant: only partial messages hold buffers
			c.drop(cs)
		}
		return false, err
	}
	if cs.got < cs.length {
		return false, nil
	}
	if cs.inFlight {
		cs.inFlight = false
		c.inFlight--
	}
	switch {
	case cs.tag != nil:
		t := cs.tag
		c.drop(cs)
		if err := c.pub.Write(t); err != nil {
			c.pubLog.Debug("rtmp: tag not delivered", "err", err)
		}
		return false, nil
	case cs.discard:
		c.drop(cs)
		return false, nil
	}
	buf := cs.buf
	cs.buf, cs.got = nil, 0
	return c.complete(cs, buf)
}

// begin chooses where the payload of the message starting on cs goes: the publication's
// tag, nowhere, or a buffer for go-rtmp.
func (c *chunkNormalizer) begin(cs *cnStream) error {
	cs.got = 0
	if cs.typeID != cnTypeAudio && cs.typeID != cnTypeVideo {
		cs.buf = c.getBuf()
		return nil
	}
	if c.pub == nil || cs.streamID != c.pubStream {
		cs.discard = true
		return nil
	}
	// The tag is allocated at its full declared size up front, so bound what a client can
	// make us allocate without sending it: all tags in flight together, and (below, in
	// Abort) tags abandoned unfilled.
	if c.tagBytes+uint64(cs.length) > 2*uint64(c.cfg.MaxMessageSize) {
		return fmt.Errorf("rtmp chunk: csid %d: media messages in flight would declare %d bytes, over %d",
			cs.csid, c.tagBytes+uint64(cs.length), 2*uint64(c.cfg.MaxMessageSize))
	}
	t := c.pub.Alloc(cs.typeID, cs.timestamp, int(cs.length))
	if len(t) < flv.TagHeaderSize || t.DataSize() != int(cs.length) || len(t) < flv.TagHeaderSize+int(cs.length) {
		return fmt.Errorf("rtmp chunk: csid %d: publication allocated a %d-byte tag for a %d-byte message",
			cs.csid, len(t), cs.length)
	}
	cs.tag = t
	c.tagBytes += uint64(cs.length)
	return nil
}

// drop forgets the current message of cs and releases what holds its payload.
func (c *chunkNormalizer) drop(cs *cnStream) {
	if cs.tag != nil {
		c.tagBytes -= uint64(cs.length)
	}
	c.putBuf(cs.buf)
	cs.buf, cs.tag, cs.discard, cs.got = nil, nil, false, 0
}

// extendedField resolves a 24-bit timestamp/delta field of a fmt 0/1/2 header, reading
// the extended timestamp when the field holds the marker, and records whether it did:
// fmt-3 chunks that follow carry the extended field too.
func (c *chunkNormalizer) extendedField(cs *cnStream, field uint32, format byte) (uint32, error) {
	cs.extended = field == cnTimestampMarker
	if !cs.extended {
		return field, nil
	}
	if err := c.readFull(c.scratch[:4]); err != nil {
		return 0, fmt.Errorf("rtmp chunk: csid %d: read fmt %d extended timestamp: %w", cs.csid, format, err)
	}
	return binary.BigEndian.Uint32(c.scratch[:4]), nil
}

// skipContinuationExtended consumes the extended timestamp of a fmt-3 continuation
// chunk. The spec (and ffmpeg, OBS, librtmp) send it on every fmt-3 chunk of a stream
// whose last header was extended, repeating that header's value; some servers and
// encoders repeat the message's absolute timestamp instead, and some old encoders omit it
// on continuation chunks. To tolerate all of them we look at the next 4 bytes: if they
// equal either expected value they are the extended field and are skipped, otherwise they
// are the chunk's payload and stay. A payload that happens to start with exactly the
// expected value would be misread, a 2^-32 chance per chunk of an already non-compliant
// stream. Peek may wait for 4 bytes; a compliant sender always has them in the chunk,
// and for the omitting kind the next message's bytes arrive soon.
func (c *chunkNormalizer) skipContinuationExtended(cs *cnStream) {
	b, err := c.br.Peek(4)
	if err != nil {
		// Fewer than 4 bytes before EOF or an error: they cannot be an extended field
		// followed by payload. The payload read reports the error.
		return
	}
	if v := binary.BigEndian.Uint32(b); v == cs.tsField || v == cs.timestamp {
		_, _ = c.br.Discard(4) // cannot fail: the bytes are buffered
	}
}

// complete handles a whole message: protocol control messages that concern chunking are
// applied here and consumed, empty messages are dropped, the rest becomes pending output.
func (c *chunkNormalizer) complete(cs *cnStream, buf []byte) (bool, error) {
	switch cs.typeID {
	case cnTypeSetChunkSize:
		if len(buf) < 4 {
			c.putBuf(buf)
			return false, fmt.Errorf("rtmp chunk: csid %d: SetChunkSize message of %d bytes, want 4", cs.csid, len(buf))
		}
		size := binary.BigEndian.Uint32(buf)
		c.putBuf(buf)
		// The spec reserves the top bit (must be 0) and requires at least 1.
		if size == 0 || size > 0x7FFFFFFF {
			return false, fmt.Errorf("rtmp chunk: csid %d: invalid chunk size %d (want 1..%d)", cs.csid, size, 0x7FFFFFFF)
		}
		c.chunkSize = size
		return false, nil
	case cnTypeAbort:
		if len(buf) < 4 {
			c.putBuf(buf)
			return false, fmt.Errorf("rtmp chunk: csid %d: Abort message of %d bytes, want 4", cs.csid, len(buf))
		}
		target := binary.BigEndian.Uint32(buf)
		c.putBuf(buf)
		if t := c.lookup(target); t != nil && t.inFlight {
			if t.tag != nil {
				// A tag's declared size was allocated before its bytes came. Aborting
				// many large, barely sent messages would turn a few bytes into much
				// allocation: unfilled bytes may not exceed what was received plus one message.
				c.abandoned += uint64(t.length - t.got)
				if c.abandoned > c.rd.n+uint64(c.cfg.MaxMessageSize) {
					return false, fmt.Errorf("rtmp chunk: csid %d: aborted media messages left %d declared bytes unsent, more than the %d received",
						cs.csid, c.abandoned, c.rd.n)
				}
			}
			c.drop(t)
			t.inFlight = false
			c.inFlight--
		}
		return false, nil
	case cnTypeWinAckSize:
		if len(buf) < 4 {
			c.putBuf(buf)
			return false, fmt.Errorf("rtmp chunk: csid %d: Window Acknowledgement Size message of %d bytes, want 4", cs.csid, len(buf))
		}
		c.ackWindow = binary.BigEndian.Uint32(buf)
		c.putBuf(buf)
		return false, nil
	}
	if len(buf) == 0 {
		c.putBuf(buf)
		return false, nil
	}
	if cs.typeID == cnTypeCommandAMF0 || cs.typeID == cnTypeCommandAMF3 {
		c.cmdCSID = cs.csid
	}
	c.setPending(cs.csid, cs.timestamp, cs.typeID, cs.streamID, buf, true)
	return true, nil
}

// commandCSID is the chunk stream of the last command handed to go-rtmp (0: none).
// go-rtmp handles a command before it reads the next message, so in a handler
// callback this is the csid of the command being handled, the one go-rtmp answers on.
func (c *chunkNormalizer) commandCSID() uint32 { return c.cmdCSID }

// readPayload reads the next n payload bytes of the csid's message: into the tag body,
// past them, or appended to the message buffer. That buffer grows by doubling but never
// beyond the declared message length, so a client that announces a large message and
// sends little of it costs only what it sent.
func (c *chunkNormalizer) readPayload(cs *cnStream, n int) error {
	var err error
	switch {
	case cs.tag != nil:
		off := flv.TagHeaderSize + int(cs.got)
		err = c.readFull(cs.tag[off : off+n])
	case cs.discard:
		if _, err = c.br.Discard(n); errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
	default:
		err = c.appendPayload(cs, n)
	}
	if err != nil {
		return fmt.Errorf("rtmp chunk: csid %d: read %d payload bytes (message %d of %d bytes): %w",
			cs.csid, n, cs.got, cs.length, err)
	}
	cs.got += uint32(n)
	return nil
}

func (c *chunkNormalizer) appendPayload(cs *cnStream, n int) error {
	old := len(cs.buf)
	need := old + n
	if need > cap(cs.buf) {
		newCap := 2 * cap(cs.buf)
		if newCap < need {
			newCap = need
		}
		if newCap > int(cs.length) {
			newCap = int(cs.length)
		}
		nb := make([]byte, old, newCap)
		copy(nb, cs.buf)
		cs.buf = nb
	}
	cs.buf = cs.buf[:need]
	if err := c.readFull(cs.buf[old:need]); err != nil {
		cs.buf = cs.buf[:old]
		return err
	}
	return nil
}

// readFull reads exactly len(p) bytes; end of stream inside a chunk is unexpected.
func (c *chunkNormalizer) readFull(p []byte) error {
	_, err := io.ReadFull(c.br, p)
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (c *chunkNormalizer) lookup(csid uint32) *cnStream {
	if csid < uint32(len(c.small)) {
		return c.small[csid]
	}
	return c.big[csid]
}

// stream returns the state of csid, creating it (within cnMaxKnownChunkStreams).
func (c *chunkNormalizer) stream(csid uint32) (*cnStream, error) {
	if cs := c.lookup(csid); cs != nil {
		return cs, nil
	}
	if c.known >= cnMaxKnownChunkStreams {
		return nil, fmt.Errorf("rtmp chunk: csid %d: more than %d distinct chunk stream ids", csid, cnMaxKnownChunkStreams)
	}
	cs := &cnStream{csid: csid}
	if csid < uint32(len(c.small)) {
		c.small[csid] = cs
	} else {
		if c.big == nil {
			c.big = make(map[uint32]*cnStream)
		}
		c.big[csid] = cs
	}
	c.known++
	return cs, nil
}

// getBuf takes a message buffer from the pool. At most MaxChunkStreams partial messages
// plus the one being delivered hold buffers, so the pool never exceeds that count and
// memory stays below (MaxChunkStreams+1) × MaxMessageSize.
func (c *chunkNormalizer) getBuf() []byte {
	if n := len(c.free); n > 0 {
		b := c.free[n-1]
		c.free[n-1] = nil
		c.free = c.free[:n-1]
		return b
	}
	return nil // readPayload allocates on first use
}

func (c *chunkNormalizer) putBuf(b []byte) {
	if cap(b) == 0 || cap(b) > cnPoolKeepCap {
		return
	}
	c.free = append(c.free, b[:0])
}

func cnGet24(b []byte) uint32 {
	return uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2])
}

func cnPut24(b []byte, v uint32) {
	b[0], b[1], b[2] = byte(v>>16), byte(v>>8), byte(v)
}
