package pub

import (
	"fmt"
	"time"
)

// IVF: a 32-byte file header ("DKIF", version, header size, FourCC, width, height,
// time base rate and scale, frame count), then frames of a 12-byte header (size,
// 64-bit pts in time base units) and the data.
func newIVF(data []byte) (Track, error) {
	if len(data) < 32 {
		return nil, fmt.Errorf("%w: IVF header of %d bytes", ErrFormat, len(data))
	}
	hdrLen := le16(data[6:])
	codec := string(data[8:12])
	rate, scale := le32(data[16:]), le32(data[20:])
	if hdrLen < 32 || hdrLen > len(data) || rate == 0 || scale == 0 {
		return nil, fmt.Errorf("%w: IVF header (size %d, time base %d/%d)", ErrFormat, hdrLen, scale, rate)
	}
	t := &frames{video: true, w: le16(data[12:]), h: le16(data[14:]), rate: float64(rate) / float64(scale)}
	switch codec {
	case "AV01":
		t.fourcc = "av01"
	case "VP90":
		t.fourcc = "vp09"
	default:
		return nil, fmt.Errorf("%w: IVF codec %q (want AV01 or VP90)", ErrFormat, codec)
	}
	var first time.Duration
	for off := hdrLen; off < len(data); {
		if off+12 > len(data) {
			return nil, fmt.Errorf("%w: IVF frame header at %d", ErrFormat, off)
		}
		n := int(le32(data[off:]))
		pts := le64(data[off+4:])
		off += 12
		if n > len(data)-off || n == 0 || pts > 1<<40 {
			return nil, fmt.Errorf("%w: IVF frame of %d bytes (pts %d) at %d", ErrFormat, n, pts, off)
		}
		f := Frame{Time: time.Duration(pts) * time.Duration(scale) * time.Second / time.Duration(rate), Data: data[off : off+n]}
		off += n
		if len(t.list) == 0 {
			first = f.Time
		}
		f.Time -= first
		var err error
		if t.fourcc == "av01" {
			if f.Key, err = av1Key(f.Data, t); err == nil {
				f.Data = av1Filter(f.Data) // OBU sizes checked by av1Key
			}
		} else {
			f.Key, err = vp9Key(f.Data, t)
		}
		if err != nil {
			return nil, err
		}
		t.list = append(t.list, f)
	}
	if t.config == nil {
		return nil, fmt.Errorf("%w: no %s keyframe with a sequence header", ErrFormat, t.fourcc)
	}
	return t, nil
}

// AV1 OBU types.
const (
	obuSequenceHeader    = 1
	obuTemporalDelimiter = 2
	obuPadding           = 15
	obuFrameHeader       = 3
	obuFrame             = 6
)

// av1Key reads the OBUs of one temporal unit: a sequence header gives the track's
// AV1CodecConfigurationRecord (the first one), and a frame (header) with frame_type
// KEY_FRAME makes it a keyframe.
func av1Key(tu []byte, t *frames) (bool, error) {
	key := false
	for off := 0; off < len(tu); {
		h := tu[off]
		typ := (h >> 3) & 0x0F
		hasExt, hasSize := h&0x04 != 0, h&0x02 != 0
		start := off
		off++
		if hasExt {
			off++
		}
		if !hasSize {
			return false, fmt.Errorf("%w: AV1 OBU without a size field", ErrFormat)
		}
		size, n := leb128(tu[min(off, len(tu)):])
		if n == 0 || size > uint64(len(tu)-off-n) {
			return false, fmt.Errorf("%w: AV1 OBU size", ErrFormat)
		}
		off += n
		payload := tu[off : off+int(size)]
		off += int(size)
		switch typ {
		case obuSequenceHeader:
			if t.config == nil {
				rec, err := av1Config(tu[start:off], payload)
				if err != nil {
					return false, err
				}
				t.config = rec
			}
		case obuFrameHeader, obuFrame:
			// Not reduced_still_picture_header: show_existing_frame(1), frame_type(2).
			r := bits{b: payload}
			if !r.flag() && r.u(2) == 0 {
				key = true
			}
		}
	}
	return key, nil
}

// av1Filter drops temporal delimiter and padding OBUs from a temporal unit (checked
// by av1Key already): like an AV1 sample in ISO BMFF, an Enhanced RTMP frame is
// the unit's other OBUs. It copies only when there is something to drop.
func av1Filter(tu []byte) []byte {
	var out []byte
	for off := 0; off < len(tu); {
		h := tu[off]
		typ := (h >> 3) & 0x0F
		n := 1
		if h&0x04 != 0 {
			n++
		}
		size, m := leb128(tu[off+n:])
		end := off + n + m + int(size)
		if typ == obuTemporalDelimiter || typ == obuPadding {
			if out == nil {
				out = append(make([]byte, 0, len(tu)), tu[:off]...)
			}
		} else if out != nil {
			out = append(out, tu[off:end]...)
		}
		off = end
	}
	if out == nil {
		return tu
	}
	return out
}

// av1Config builds an AV1CodecConfigurationRecord: marker and version, then
// seq_profile, seq_level_idx_0 and seq_tier_0 from the sequence header; the colour
// fields say 8-bit 4:2:0 (what the tests encode), then the sequence header OBU.
func av1Config(obu, payload []byte) ([]byte, error) {
	r := bits{b: payload}
	profile := r.u(3)
	r.u(1) // still_picture
	reduced := r.flag()
	var level, tier uint64
	if reduced {
		level = r.u(5)
	} else {
		decoderModel := false
		var bufDelayLen uint64
		if r.flag() { // timing_info_present_flag
			r.u(32)
			r.u(32)
			if r.flag() { // equal_picture_interval
				r.uvlc()
			}
			decoderModel = r.flag()
			if decoderModel {
				bufDelayLen = r.u(5) + 1
				r.u(32)
				r.u(5)
				r.u(5)
			}
		}
		displayDelay := r.flag()
		ops := r.u(5) + 1
		for i := uint64(0); i < ops; i++ {
			r.u(12)
			lv := r.u(5)
			tr := uint64(0)
			if lv > 7 {
				tr = r.u(1)
			}
			if i == 0 {
				level, tier = lv, tr
			}
			if decoderModel && r.flag() {
				r.u(int(bufDelayLen))
				r.u(int(bufDelayLen))
				r.u(1)
			}
			if displayDelay && r.flag() {
				r.u(4)
			}
		}
	}
	if r.over {
		return nil, fmt.Errorf("%w: AV1 sequence header too short", ErrFormat)
	}
	rec := []byte{0x81, byte(profile<<5 | level), byte(tier<<7 | 1<<3 | 1<<2), 0}
	return append(rec, obu...), nil
}

// vp9Key reads a VP9 uncompressed frame header: frame_marker(2), profile bits,
// show_existing_frame, frame_type (0 key). The first frame gives the track's
// VPCodecConfigurationRecord (version 1): profile, level 3.1, 8-bit 4:2:0, no
// colour description.
func vp9Key(f []byte, t *frames) (bool, error) {
	r := bits{b: f}
	if r.u(2) != 2 {
		return false, fmt.Errorf("%w: VP9 frame marker", ErrFormat)
	}
	lo, hi := r.u(1), r.u(1)
	profile := hi<<1 | lo
	if profile == 3 {
		r.u(1)
	}
	if r.flag() { // show_existing_frame
		return false, nil
	}
	key := r.u(1) == 0
	if r.over {
		return false, fmt.Errorf("%w: VP9 frame header too short", ErrFormat)
	}
	if t.config == nil && key {
		t.config = []byte{1, 0, 0, 0, byte(profile), 31, 8<<4 | 1<<1, 2, 2, 2, 0, 0}
	}
	return key, nil
}
