package flv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Reader reads an FLV byte stream (a file or an HTTP-FLV response) strictly:
// every PreviousTagSize must match the tag before it.
type Reader struct {
	r       io.Reader
	maxData int
	hdr     [TagHeaderSize]byte
	// Flags is the file header's flags byte, valid after ReadHeader.
	Flags byte
	// KnownTypes makes ReadTag refuse, from the tag header alone, a tag that is not
	// audio, video or script data (ErrTagType), instead of reading a body whose size
	// came from garbage. For streams from peers that may send anything (relay).
	KnownTypes bool
}

// ErrTagType reports a tag type other than audio, video or script (see Reader.KnownTypes).
var ErrTagType = errors.New("flv: unknown tag type")

// NewReader returns a Reader that refuses tag bodies over maxData bytes (0 = MaxDataSize).
func NewReader(r io.Reader, maxData int) *Reader {
	if maxData <= 0 || maxData > MaxDataSize {
		maxData = MaxDataSize
	}
	return &Reader{r: r, maxData: maxData}
}

// ReadHeader reads the file header and PreviousTagSize0.
func (r *Reader) ReadHeader() error {
	var b [HeaderSize]byte
	if _, err := io.ReadFull(r.r, b[:]); err != nil {
		return fmt.Errorf("flv header: %w", err)
	}
	flags, err := ParseFileHeader(b[:])
	if err != nil {
		return err
	}
	r.Flags = flags
	skip := int64(binary.BigEndian.Uint32(b[5:9])) - HeaderSize
	if _, err := io.CopyN(io.Discard, r.r, skip); err != nil {
		return fmt.Errorf("flv header padding: %w", err)
	}
	var pts [TrailerSize]byte
	if _, err := io.ReadFull(r.r, pts[:]); err != nil {
		return fmt.Errorf("flv PreviousTagSize0: %w", err)
	}
	if p := binary.BigEndian.Uint32(pts[:]); p != 0 {
		return fmt.Errorf("flv PreviousTagSize0 is %d: %w", p, ErrPrevTagSize)
	}
	return nil
}

// ReadTag reads the next tag into a new buffer. It returns io.EOF at a clean end.
func (r *Reader) ReadTag() (Tag, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("flv tag header: %w", ErrShort)
		}
		return nil, err
	}
	if typ := r.hdr[0] & 0x1f; r.KnownTypes && typ != TypeAudio && typ != TypeVideo && typ != TypeScript {
		return nil, fmt.Errorf("flv tag type %d: %w", r.hdr[0], ErrTagType)
	}
	n := int(get24(r.hdr[1:4]))
	if n > r.maxData {
		return nil, fmt.Errorf("flv tag body of %d bytes over %d: %w", n, r.maxData, ErrTooLarge)
	}
	t := make(Tag, TagHeaderSize+n+TrailerSize)
	copy(t, r.hdr[:])
	if _, err := io.ReadFull(r.r, t[TagHeaderSize:]); err != nil {
		return nil, fmt.Errorf("flv tag body (%d bytes): %w", n, ErrShort)
	}
	if err := t.Check(); err != nil {
		return nil, err
	}
	return t, nil
}
