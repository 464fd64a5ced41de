package pub

import (
	"encoding/binary"
	"fmt"
	"time"
)

// HEVC NAL unit types used here.
const (
	hevcIRAPFirst = 16 // BLA_W_LP .. RSV_IRAP_23: random access points
	hevcIRAPLast  = 23
	hevcVPS       = 32
	hevcSPS       = 33
	hevcPPS       = 34
	hevcAUD       = 35
	hevcPrefixSEI = 39
)

// newHEVC reads an Annex B byte stream (start codes, as `ffmpeg -f hevc` writes),
// groups NAL units into access units, and gives each the time n/fps: Annex B has
// no timestamps, so it must be encoded without B-frames (x265 bframes=0), and every
// composition time offset is 0. Frames carry 4-byte length-prefixed NAL units.
func newHEVC(data []byte, fps float64) (Track, error) {
	nals := splitAnnexB(data)
	if len(nals) == 0 {
		return nil, fmt.Errorf("%w: no HEVC NAL units (not Annex B)", ErrFormat)
	}
	t := &frames{fourcc: "hvc1", video: true, rate: fps}
	var vps, sps, pps []byte
	var cur []byte
	curVCL, curKey := false, false
	flush := func() {
		if curVCL {
			t.list = append(t.list, Frame{Time: time.Duration(float64(len(t.list)) * float64(time.Second) / fps), Key: curKey, Data: cur})
		}
		cur, curVCL, curKey = nil, false, false
	}
	for _, n := range nals {
		if len(n) < 2 {
			continue
		}
		typ := (n[0] >> 1) & 0x3F
		vcl := typ < 32
		switch {
		case typ == hevcAUD:
			flush()
			continue // not carried in FLV
		case vcl && len(n) > 2 && n[2]&0x80 != 0 && curVCL: // first_slice_segment_in_pic_flag
			flush()
		case !vcl && curVCL && (typ == hevcVPS || typ == hevcSPS || typ == hevcPPS || typ == hevcPrefixSEI):
			flush()
		}
		switch typ {
		case hevcVPS:
			vps = n
		case hevcSPS:
			sps = n
		case hevcPPS:
			pps = n
		}
		if vcl {
			curVCL = true
			curKey = curKey || (typ >= hevcIRAPFirst && typ <= hevcIRAPLast)
		}
		cur = binary.BigEndian.AppendUint32(cur, uint32(len(n)))
		cur = append(cur, n...)
	}
	flush()
	if vps == nil || sps == nil || pps == nil {
		return nil, fmt.Errorf("%w: HEVC stream without VPS, SPS and PPS", ErrFormat)
	}
	rec, w, h, err := hvcConfig(vps, sps, pps)
	if err != nil {
		return nil, err
	}
	t.config, t.w, t.h = rec, w, h
	if len(t.list) == 0 || !t.list[0].Key {
		return nil, fmt.Errorf("%w: HEVC stream does not start at a random access point", ErrFormat)
	}
	return t, nil
}

// splitAnnexB returns the NAL units between start codes (00 00 01 or 00 00 00 01).
func splitAnnexB(b []byte) [][]byte {
	var out [][]byte
	start := -1
	for i := 0; i+2 < len(b); {
		if b[i] == 0 && b[i+1] == 0 && b[i+2] == 1 {
			if start >= 0 {
				end := i
				for end > start && b[end-1] == 0 {
					end-- // trailing zero of a 4-byte start code
				}
				out = append(out, b[start:end])
			}
			i += 3
			start = i
			continue
		}
		i++
	}
	if start >= 0 && start < len(b) {
		out = append(out, b[start:])
	}
	return out
}

// hvcConfig builds an HEVCDecoderConfigurationRecord (ISO/IEC 14496-15): the
// general profile, tier, compatibility and constraint flags and level copied from
// the SPS's profile_tier_level, chroma format and bit depths read from the SPS,
// 4-byte NAL lengths, and one array each of VPS, SPS and PPS. It also returns the
// picture size (conformance window applied).
func hvcConfig(vps, sps, pps []byte) (rec []byte, w, h int, err error) {
	rb := unescape(sps[2:])
	if len(rb) < 13 {
		return nil, 0, 0, fmt.Errorf("%w: HEVC SPS of %d bytes", ErrFormat, len(rb))
	}
	maxSub := int(rb[0]>>1) & 0x07 // sps_max_sub_layers_minus1
	ptl := rb[1:13]                // general profile_tier_level: 12 bytes, byte aligned
	r := bits{b: rb, pos: 13 * 8}
	subProfile := make([]bool, maxSub)
	subLevel := make([]bool, maxSub)
	for i := 0; i < maxSub; i++ {
		subProfile[i], subLevel[i] = r.flag(), r.flag()
	}
	if maxSub > 0 {
		for i := maxSub; i < 8; i++ {
			r.u(2)
		}
	}
	for i := 0; i < maxSub; i++ {
		if subProfile[i] {
			r.u(88)
		}
		if subLevel[i] {
			r.u(8)
		}
	}
	ue := func() uint64 {
		lead := 0
		for !r.flag() {
			lead++
			if lead > 31 || r.over {
				r.over = true
				return 0
			}
		}
		return r.u(lead) + (1 << lead) - 1
	}
	ue() // sps_seq_parameter_set_id
	chroma := ue()
	if chroma == 3 {
		r.u(1)
	}
	pw, ph := ue(), ue()
	var cl, cr, ct, cb uint64
	if r.flag() { // conformance_window_flag
		cl, cr, ct, cb = ue(), ue(), ue(), ue()
	}
	depthY, depthC := ue(), ue()
	if r.over {
		return nil, 0, 0, fmt.Errorf("%w: HEVC SPS too short", ErrFormat)
	}
	subW, subH := uint64(1), uint64(1)
	if chroma == 1 || chroma == 2 {
		subW = 2
	}
	if chroma == 1 {
		subH = 2
	}
	w = int(pw - subW*(cl+cr))
	h = int(ph - subH*(ct+cb))
	rec = append([]byte{1}, ptl...) // version, then 12 bytes of general PTL
	rec = append(rec, 0xF0, 0x00, 0xFC, 0xFC|byte(chroma&3), 0xF8|byte(depthY&7), 0xF8|byte(depthC&7), 0, 0)
	// constantFrameRate 0, numTemporalLayers, temporalIdNested 1, lengthSizeMinusOne 3.
	rec = append(rec, byte(maxSub+1)<<3|1<<2|3, 3)
	for _, n := range [][]byte{vps, sps, pps} {
		rec = append(rec, 0x80|(n[0]>>1)&0x3F, 0, 1, byte(len(n)>>8), byte(len(n)))
		rec = append(rec, n...)
	}
	return rec, w, h, nil
}
