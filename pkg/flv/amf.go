package flv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// AMF0 type markers used by onMetaData.
const (
	amfNumber      = 0x00
	amfBoolean     = 0x01
	amfString      = 0x02
	amfObject      = 0x03
	amfNull        = 0x05
	amfUndefined   = 0x06
	amfECMAArray   = 0x08
	amfObjectEnd   = 0x09
	amfStrictArray = 0x0A
	amfDate        = 0x0B
	amfLongString  = 0x0C
)

// maxAMFDepth bounds nesting so hostile metadata cannot exhaust the stack.
const maxAMFDepth = 16

// ErrAMF reports malformed AMF0 data.
var ErrAMF = errors.New("flv: malformed AMF0")

// Metadata is the decoded top-level onMetaData object: numbers are float64, booleans
// bool, strings string; nested objects and arrays are skipped over.
type Metadata map[string]any

// HasAudio and HasVideo report the tracks an encoder declared. Encoders (ffmpeg, OBS)
// write audiocodecid/videocodecid only for tracks they really send.
func (m Metadata) HasAudio() bool { _, ok := m["audiocodecid"]; return ok }

// HasVideo: see HasAudio.
func (m Metadata) HasVideo() bool { _, ok := m["videocodecid"]; return ok }

// ParseMetadata decodes a script tag body of the form "onMetaData" + object/ECMA array.
func ParseMetadata(body []byte) (Metadata, error) {
	d := amfDecoder{b: body}
	name, err := d.value(0)
	if err != nil {
		return nil, fmt.Errorf("flv metadata name: %w", err)
	}
	if s, ok := name.(string); !ok || s != "onMetaData" {
		return nil, fmt.Errorf("flv metadata: first value is %v, want \"onMetaData\": %w", name, ErrAMF)
	}
	v, err := d.value(0)
	if err != nil {
		return nil, fmt.Errorf("flv metadata object: %w", err)
	}
	m, ok := v.(Metadata)
	if !ok {
		return nil, fmt.Errorf("flv metadata: value is %T, want object: %w", v, ErrAMF)
	}
	return m, nil
}

type amfDecoder struct {
	b   []byte
	off int
}

func (d *amfDecoder) take(n int) ([]byte, error) {
	if n < 0 || len(d.b)-d.off < n {
		return nil, fmt.Errorf("need %d bytes at offset %d: %w", n, d.off, ErrAMF)
	}
	p := d.b[d.off : d.off+n]
	d.off += n
	return p, nil
}

func (d *amfDecoder) u16() (int, error) {
	p, err := d.take(2)
	if err != nil {
		return 0, err
	}
	return int(binary.BigEndian.Uint16(p)), nil
}

func (d *amfDecoder) str() (string, error) {
	n, err := d.u16()
	if err != nil {
		return "", err
	}
	p, err := d.take(n)
	return string(p), err
}

func (d *amfDecoder) value(depth int) (any, error) {
	if depth > maxAMFDepth {
		return nil, fmt.Errorf("nesting deeper than %d: %w", maxAMFDepth, ErrAMF)
	}
	m, err := d.take(1)
	if err != nil {
		return nil, err
	}
	switch m[0] {
	case amfNumber:
		p, err := d.take(8)
		if err != nil {
			return nil, err
		}
		return math.Float64frombits(binary.BigEndian.Uint64(p)), nil
	case amfBoolean:
		p, err := d.take(1)
		if err != nil {
			return nil, err
		}
		return p[0] != 0, nil
	case amfString:
		return d.str()
	case amfLongString:
		p, err := d.take(4)
		if err != nil {
			return nil, err
		}
		n := binary.BigEndian.Uint32(p)
		if uint64(n) > uint64(len(d.b)-d.off) {
			return nil, fmt.Errorf("long string of %d bytes: %w", n, ErrAMF)
		}
		s, err := d.take(int(n))
		return string(s), err
	case amfNull, amfUndefined:
		return nil, nil
	case amfECMAArray:
		if _, err := d.take(4); err != nil { // count hint; the end marker is authoritative
			return nil, err
		}
		return d.object(depth)
	case amfObject:
		return d.object(depth)
	case amfStrictArray:
		p, err := d.take(4)
		if err != nil {
			return nil, err
		}
		n := binary.BigEndian.Uint32(p)
		if uint64(n) > uint64(len(d.b)-d.off) { // each element is at least one byte
			return nil, fmt.Errorf("strict array of %d elements: %w", n, ErrAMF)
		}
		for i := uint32(0); i < n; i++ {
			if _, err := d.value(depth + 1); err != nil {
				return nil, err
			}
		}
		return nil, nil
	case amfDate:
		_, err := d.take(10)
		return nil, err
	}
	return nil, fmt.Errorf("unsupported marker 0x%02x at offset %d: %w", m[0], d.off-1, ErrAMF)
}

func (d *amfDecoder) object(depth int) (any, error) {
	out := Metadata{}
	for {
		k, err := d.str()
		if err != nil {
			return nil, err
		}
		if k == "" {
			p, err := d.take(1)
			if err != nil {
				return nil, err
			}
			if p[0] != amfObjectEnd {
				return nil, fmt.Errorf("empty key without object end: %w", ErrAMF)
			}
			return out, nil
		}
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		if _, nested := v.(Metadata); !nested && depth == 0 {
			out[k] = v
		}
	}
}
