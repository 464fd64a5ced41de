package pub

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"
)

// flvInput replays an FLV file's tags as they are (legacy or Enhanced bodies):
// onMetaData and sequence headers before the first media frame count as headers.
type flvInput struct {
	msgs []Message
	i    int
}

func newFLVInput(data []byte) (*flvInput, error) {
	if len(data) < 13 {
		return nil, fmt.Errorf("%w: FLV header", ErrFormat)
	}
	off := int(binary.BigEndian.Uint32(data[5:9])) + 4
	in := &flvInput{}
	media := false
	var first uint32
	for off < len(data) {
		if off+11 > len(data) {
			return nil, fmt.Errorf("%w: FLV tag header at %d", ErrFormat, off)
		}
		typ := data[off] & 0x1F
		n := int(data[off+1])<<16 | int(data[off+2])<<8 | int(data[off+3])
		ts := uint32(data[off+4])<<16 | uint32(data[off+5])<<8 | uint32(data[off+6]) | uint32(data[off+7])<<24
		if off+11+n+4 > len(data) {
			return nil, fmt.Errorf("%w: FLV tag of %d bytes at %d", ErrFormat, n, off)
		}
		body := data[off+11 : off+11+n]
		off += 11 + n + 4
		if typ != TypeAudio && typ != TypeVideo && typ != TypeScript {
			continue
		}
		hdr := typ == TypeScript || isSequenceStart(typ, body)
		if !hdr && !media {
			media, first = true, ts
		}
		m := Message{Type: typ, Body: body, Header: hdr && !media}
		if media && ts >= first {
			m.Time = time.Duration(ts-first) * time.Millisecond
		}
		in.msgs = append(in.msgs, m)
	}
	return in, nil
}

// isSequenceStart: an AVC/HEVC sequence header, an AAC AudioSpecificConfig, or an
// Enhanced RTMP SequenceStart (no ModEx or multitrack in files we replay).
func isSequenceStart(typ byte, b []byte) bool {
	if len(b) < 2 {
		return false
	}
	switch typ {
	case TypeVideo:
		if b[0]&0x80 != 0 {
			return b[0]&0x0F == 0
		}
		return (b[0]&0x0F == 7 || b[0]&0x0F == 12) && b[1] == 0
	case TypeAudio:
		if b[0]>>4 == 9 {
			return b[0]&0x0F == 0
		}
		return b[0]>>4 == 10 && b[1] == 0
	}
	return false
}

func (in *flvInput) Next() (Message, error) {
	if in.i >= len(in.msgs) {
		return Message{}, io.EOF
	}
	in.i++
	return in.msgs[in.i-1], nil
}
