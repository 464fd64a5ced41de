// Package bus is the transport between origins and edges: it owns every NATS
// interaction of the data path. An origin's Publisher opens one Outlet per
// publishing session, which numbers the stream's tags, publishes them in order on
// the stream's live subject (splitting tags larger than the server's max payload)
// and queues the edges' snapshot requests for the session to answer from its own
// caches. An edge's Subscriber follows live subjects through byte-bounded Feeds and
// fetches snapshots, reassembling split tags. This file is the wire contract:
// subject names, the message layout and the split.
//
// The payload after the message prefix is exactly an flv.Tag, so the bytes an edge
// receives are the bytes it writes to viewers, without re-encoding. The package
// keeps no stream state. It copies tag bytes in three places only: Outlet.Copy (for
// sources that hold their own bytes; ingest fills Alloc'ed frames instead), the
// split of an oversized tag into parts, and the reassembly of those parts.
package bus

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// Subject roots. Stream names are validated ([A-Za-z0-9_-]) before they get here, so
// "app/stream" maps to two safe subject tokens.
const (
	liveRoot     = "flvcdn.live."
	snapshotRoot = "flvcdn.snap."
)

// LiveSubject is where the owning origin publishes a stream's tags in order.
func LiveSubject(stream string) string { return liveRoot + strings.Replace(stream, "/", ".", 1) }

// SnapshotSubject is where edges request a stream's join snapshot.
func SnapshotSubject(stream string) string {
	return snapshotRoot + strings.Replace(stream, "/", ".", 1)
}

// Kind is the first byte after the magic.
type Kind byte

const (
	// KindTag carries one whole FLV tag.
	KindTag Kind = 1
	// KindFragment carries part of a tag too large for one message.
	KindFragment Kind = 2
	// KindEnd announces that the publisher left (end of stream for this session).
	KindEnd Kind = 3
	// KindSnapshotEnd closes a snapshot reply; Seq is the last sequence it covers.
	KindSnapshotEnd Kind = 4
)

const magic = 0xF1

// Flags carried by KindSnapshotEnd.
const (
	FlagHasAudio byte = 0x01
	FlagHasVideo byte = 0x02
)

// Session identifies one publishing session: the origin and a random id.
type Session struct {
	Origin string
	ID     uint64
}

func (s Session) String() string { return fmt.Sprintf("%s/%016x", s.Origin, s.ID) }

// Message is a decoded bus message. Tag and Part alias the received bytes.
type Message struct {
	Kind    Kind
	Seq     uint64
	Session Session
	Tag     flv.Tag // KindTag
	Flags   byte    // KindSnapshotEnd
	Total   int     // KindFragment: size of the whole tag
	Offset  int     // KindFragment: where Part goes
	Part    []byte  // KindFragment
}

// ErrMalformed reports a message that does not follow the wire layout.
var ErrMalformed = errors.New("bus: malformed message")

// Layout: magic(1) kind(1) seq(8) session(8) originLen(1) origin(originLen) then
//
//	KindTag:         the FLV tag
//	KindFragment:    total(4) offset(4) part
//	KindSnapshotEnd: flags(1)
//	KindEnd:         nothing
const fixedLen = 1 + 1 + 8 + 8 + 1

// PrefixLen is the prefix size for messages of a session.
func PrefixLen(s Session) int { return fixedLen + len(s.Origin) }

// PutPrefix writes the prefix for a message of kind k into dst, which must hold PrefixLen bytes.
func PutPrefix(dst []byte, k Kind, seq uint64, s Session) int {
	dst[0] = magic
	dst[1] = byte(k)
	binary.BigEndian.PutUint64(dst[2:10], seq)
	binary.BigEndian.PutUint64(dst[10:18], s.ID)
	dst[18] = byte(len(s.Origin))
	return fixedLen + copy(dst[fixedLen:], s.Origin)
}

// ValidOrigin reports whether an origin id fits the wire layout.
func ValidOrigin(id string) error {
	if id == "" || len(id) > 255 {
		return fmt.Errorf("bus: origin id %q must be 1-255 bytes", id)
	}
	return nil
}

// Decode parses a message without copying: Tag and Part alias data.
func Decode(data []byte) (Message, error) {
	var m Message
	if len(data) < fixedLen || data[0] != magic {
		return m, fmt.Errorf("%d-byte message without prefix: %w", len(data), ErrMalformed)
	}
	m.Kind = Kind(data[1])
	m.Seq = binary.BigEndian.Uint64(data[2:10])
	m.Session.ID = binary.BigEndian.Uint64(data[10:18])
	n := int(data[18])
	if len(data) < fixedLen+n {
		return m, fmt.Errorf("origin id of %d bytes past the end: %w", n, ErrMalformed)
	}
	m.Session.Origin = string(data[fixedLen : fixedLen+n])
	rest := data[fixedLen+n:]
	switch m.Kind {
	case KindTag:
		m.Tag = flv.Tag(rest)
		if err := m.Tag.Check(); err != nil {
			return m, fmt.Errorf("bus: seq %d: %w", m.Seq, err)
		}
	case KindFragment:
		if len(rest) < 8 {
			return m, fmt.Errorf("fragment header: %w", ErrMalformed)
		}
		m.Total = int(binary.BigEndian.Uint32(rest[0:4]))
		m.Offset = int(binary.BigEndian.Uint32(rest[4:8]))
		m.Part = rest[8:]
		if m.Total > flv.TagHeaderSize+flv.MaxDataSize+flv.TrailerSize || m.Offset+len(m.Part) > m.Total || len(m.Part) == 0 {
			return m, fmt.Errorf("fragment %d+%d of %d: %w", m.Offset, len(m.Part), m.Total, ErrMalformed)
		}
	case KindSnapshotEnd:
		if len(rest) < 1 {
			return m, fmt.Errorf("snapshot end without flags: %w", ErrMalformed)
		}
		m.Flags = rest[0]
	case KindEnd:
	default:
		return m, fmt.Errorf("unknown kind %d: %w", m.Kind, ErrMalformed)
	}
	return m, nil
}

// Frames returns the NATS payloads that carry one tag message. buf holds PrefixLen(s)
// bytes of headroom followed by the tag, with the prefix already written (as Outlet.Send
// does). When the whole fits in maxPayload it is returned as is, with no copy;
// otherwise the tag is copied, part by part, into KindFragment messages.
func Frames(buf []byte, s Session, seq uint64, maxPayload int) [][]byte {
	if len(buf) <= maxPayload {
		return [][]byte{buf}
	}
	pre := PrefixLen(s)
	tag := buf[pre:]
	room := maxPayload - pre - 8
	if room < 1 {
		room = 1
	}
	var out [][]byte
	for off := 0; off < len(tag); off += room {
		end := min(off+room, len(tag))
		f := make([]byte, pre+8+end-off)
		n := PutPrefix(f, KindFragment, seq, s)
		binary.BigEndian.PutUint32(f[n:], uint32(len(tag)))
		binary.BigEndian.PutUint32(f[n+4:], uint32(off))
		copy(f[n+8:], tag[off:end])
		out = append(out, f)
	}
	return out
}

// Control builds a KindEnd or KindSnapshotEnd message.
func Control(k Kind, seq uint64, s Session, flags byte) []byte {
	b := make([]byte, PrefixLen(s)+1)
	n := PutPrefix(b, k, seq, s)
	if k == KindSnapshotEnd {
		b[n] = flags
		return b
	}
	return b[:n]
}

// Assembler rebuilds tags from fragments. Fragments of one tag are published
// back to back on one connection, so one partial tag at a time is enough; anything
// out of order is reported and the partial tag dropped (the caller treats it as a gap).
type Assembler struct {
	buf     []byte
	seq     uint64
	session Session
	filled  int
}

// Add feeds a fragment. It returns the complete tag once the last part arrives.
// A first part always starts a new tag (a partial one before it was lost: the
// caller sees the gap in sequence numbers); any other part must continue exactly
// where the partial tag stands.
func (a *Assembler) Add(m Message) (flv.Tag, bool, error) {
	switch {
	case m.Offset == 0:
		a.buf = make([]byte, m.Total)
		a.seq, a.session, a.filled = m.Seq, m.Session, 0
	case a.buf == nil || m.Seq != a.seq || m.Session != a.session || m.Total != len(a.buf) || m.Offset != a.filled:
		a.Reset()
		return nil, false, fmt.Errorf("bus: fragment of seq %d at %d does not continue a tag: %w", m.Seq, m.Offset, ErrMalformed)
	}
	a.filled += copy(a.buf[m.Offset:], m.Part)
	if a.filled < len(a.buf) {
		return nil, false, nil
	}
	t := flv.Tag(a.buf)
	a.Reset()
	if err := t.Check(); err != nil {
		return nil, false, fmt.Errorf("bus: reassembled seq %d: %w", m.Seq, err)
	}
	return t, true, nil
}

// Reset drops any partial tag.
func (a *Assembler) Reset() { a.buf, a.filled = nil, 0 }

// seqOf reads the sequence number of a message built by this package.
func seqOf(msg []byte) uint64 { return binary.BigEndian.Uint64(msg[2:10]) }
