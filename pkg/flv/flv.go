// Package flv owns the FLV byte layout: the file header, tags (11-byte header, body,
// PreviousTagSize), and what a tag is (codec, keyframe, sequence header).
//
// A Tag is the complete wire form of one FLV tag, PreviousTagSize included, so the
// bytes built once at ingest are the bytes every viewer receives. AllocTag lays out a tag
// whose body the caller fills in place (RTMP ingest reads it from the connection);
// NewTag copies a body the caller already holds; Reader reads tags from a file. Nothing
// else in this package copies a tag.
package flv

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Tag types.
const (
	TypeAudio  byte = 8
	TypeVideo  byte = 9
	TypeScript byte = 18
)

// Sizes of the fixed parts of the format.
const (
	HeaderSize    = 9  // "FLV", version, flags, header length
	TagHeaderSize = 11 // type, data size, timestamp, stream id
	TrailerSize   = 4  // PreviousTagSize
	// MaxDataSize is the largest body a tag header can describe (24 bits).
	MaxDataSize = 1<<24 - 1
)

// Header flag bits.
const (
	FlagVideo byte = 0x01
	FlagAudio byte = 0x04
)

var (
	// ErrShort reports bytes too few for what their header claims.
	ErrShort = errors.New("flv: truncated")
	// ErrSignature reports a stream that does not start with "FLV".
	ErrSignature = errors.New("flv: bad signature")
	// ErrPrevTagSize reports a PreviousTagSize that does not match its tag.
	ErrPrevTagSize = errors.New("flv: PreviousTagSize mismatch")
	// ErrTooLarge reports a body over the configured or format limit.
	ErrTooLarge = errors.New("flv: tag too large")
)

// FileHeader returns the 9-byte FLV header followed by PreviousTagSize0, with the
// audio and video flags set from the tracks a stream really has.
func FileHeader(hasAudio, hasVideo bool) []byte {
	var flags byte
	if hasAudio {
		flags |= FlagAudio
	}
	if hasVideo {
		flags |= FlagVideo
	}
	return []byte{'F', 'L', 'V', 1, flags, 0, 0, 0, HeaderSize, 0, 0, 0, 0}
}

// ParseFileHeader checks an FLV file header and returns its flags byte.
func ParseFileHeader(b []byte) (flags byte, err error) {
	if len(b) < HeaderSize {
		return 0, fmt.Errorf("flv header: %w", ErrShort)
	}
	if b[0] != 'F' || b[1] != 'L' || b[2] != 'V' {
		return 0, ErrSignature
	}
	if off := binary.BigEndian.Uint32(b[5:9]); off < HeaderSize {
		return 0, fmt.Errorf("flv header: data offset %d below %d", off, HeaderSize)
	}
	return b[4], nil
}

// Tag is one complete FLV tag: header, body and PreviousTagSize.
// Tags are shared between goroutines and must be treated as immutable once published,
// except through SetTimestamp by their single owner before sharing.
type Tag []byte

// AllocTag allocates one buffer of headroom+TagHeaderSize+n+TrailerSize bytes and
// writes a tag's header (type, data size n, timestamp ts) and PreviousTagSize into it,
// leaving the n-byte body (t.Body()) for the caller to fill. It returns the whole buffer
// and the tag inside it; the headroom in front of the tag is the caller's (the bus
// prefix). Ingest fills the body straight from the connection, so the tag needs no copy.
func AllocTag(headroom int, typ byte, ts uint32, n int) (buf []byte, t Tag) {
	buf = make([]byte, headroom+TagHeaderSize+n+TrailerSize)
	t = Tag(buf[headroom:])
	t[0] = typ
	put24(t[1:4], uint32(n))
	t.SetTimestamp(ts)
	// stream id (3 bytes) stays zero
	binary.BigEndian.PutUint32(t[TagHeaderSize+n:], uint32(TagHeaderSize+n))
	return buf, t
}

// NewTag is AllocTag with body copied in: the copy for callers that hold the body
// elsewhere already (the file source, metadata, tests).
func NewTag(headroom int, typ byte, ts uint32, body []byte) (buf []byte, t Tag) {
	buf, t = AllocTag(headroom, typ, ts, len(body))
	copy(t[TagHeaderSize:], body)
	return buf, t
}

// Type returns the tag type (TypeAudio, TypeVideo, TypeScript).
func (t Tag) Type() byte { return t[0] }

// DataSize returns the body length from the tag header.
func (t Tag) DataSize() int { return int(get24(t[1:4])) }

// Timestamp returns the 32-bit timestamp (24 bits plus the extension byte).
func (t Tag) Timestamp() uint32 {
	return get24(t[4:7]) | uint32(t[7])<<24
}

// SetTimestamp rewrites the timestamp in place. Only the owner of an unshared tag may call it.
func (t Tag) SetTimestamp(ts uint32) {
	put24(t[4:7], ts&0xFFFFFF)
	t[7] = byte(ts >> 24)
}

// Body returns the tag body.
func (t Tag) Body() []byte { return t[TagHeaderSize : TagHeaderSize+t.DataSize()] }

// Check validates that t is exactly one well-formed tag.
func (t Tag) Check() error {
	if len(t) < TagHeaderSize+TrailerSize {
		return fmt.Errorf("flv tag: %d bytes: %w", len(t), ErrShort)
	}
	n := t.DataSize()
	if len(t) != TagHeaderSize+n+TrailerSize {
		return fmt.Errorf("flv tag: %d bytes for data size %d: %w", len(t), n, ErrShort)
	}
	if p := binary.BigEndian.Uint32(t[TagHeaderSize+n:]); p != uint32(TagHeaderSize+n) {
		return fmt.Errorf("flv tag: PreviousTagSize %d, want %d: %w", p, TagHeaderSize+n, ErrPrevTagSize)
	}
	return nil
}

func get24(b []byte) uint32 { return uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2]) }

func put24(b []byte, v uint32) {
	b[0] = byte(v >> 16)
	b[1] = byte(v >> 8)
	b[2] = byte(v)
}
