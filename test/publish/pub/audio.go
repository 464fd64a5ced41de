package pub

import (
	"fmt"
	"time"
)

// newOggOpus reads Opus in Ogg (RFC 7845): the first packet is the ID header
// (OpusHead, the Enhanced RTMP sequence start), the second the comment header
// (dropped), then one Opus packet per message, timed by the durations their TOC
// bytes give (RFC 6716, section 3.1).
func newOggOpus(data []byte) (Track, error) {
	var packets [][]byte
	var cur []byte
	for off := 0; off < len(data); {
		if off+27 > len(data) || string(data[off:off+4]) != "OggS" {
			return nil, fmt.Errorf("%w: Ogg page at %d", ErrFormat, off)
		}
		nseg := int(data[off+26])
		if off+27+nseg > len(data) {
			return nil, fmt.Errorf("%w: Ogg segment table at %d", ErrFormat, off)
		}
		lacing := data[off+27 : off+27+nseg]
		p := off + 27 + nseg
		for _, l := range lacing {
			if p+int(l) > len(data) {
				return nil, fmt.Errorf("%w: Ogg segment past the end", ErrFormat)
			}
			cur = append(cur, data[p:p+int(l)]...)
			p += int(l)
			if l < 255 {
				packets = append(packets, cur)
				cur = nil
			}
		}
		off = p
	}
	if len(packets) < 2 || len(packets[0]) < 19 || string(packets[0][:8]) != "OpusHead" {
		return nil, fmt.Errorf("%w: no OpusHead", ErrFormat)
	}
	t := &frames{fourcc: "Opus", config: packets[0], rate: 48000}
	var at time.Duration
	for _, p := range packets[2:] {
		d := opusDuration(p)
		if d == 0 {
			return nil, fmt.Errorf("%w: Opus packet of %d bytes without a duration", ErrFormat, len(p))
		}
		t.list = append(t.list, Frame{Time: at, Key: true, Data: p})
		at += d
	}
	return t, nil
}

// opusDuration: the TOC byte's config gives the frame size, its code the frame count.
func opusDuration(p []byte) time.Duration {
	if len(p) == 0 {
		return 0
	}
	cfg := p[0] >> 3
	var size time.Duration
	switch {
	case cfg < 12:
		size = []time.Duration{10, 20, 40, 60}[cfg%4] * time.Millisecond
	case cfg < 16:
		size = []time.Duration{10, 20}[cfg%2] * time.Millisecond
	default:
		size = []time.Duration{2500, 5000, 10000, 20000}[cfg%4] * time.Microsecond
	}
	switch p[0] & 3 {
	case 0:
		return size
	case 1, 2:
		return 2 * size
	}
	if len(p) < 2 {
		return 0
	}
	return time.Duration(p[1]&0x3F) * size
}

var adtsRates = []int{96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350}

// newADTS reads AAC in ADTS: each frame's header gives the AudioSpecificConfig
// (object type, sampling frequency index, channels) and the frame length; every
// frame is 1024 samples.
func newADTS(data []byte) (Track, error) {
	t := &frames{fourcc: "mp4a"}
	n := 0
	for off := 0; off < len(data); {
		h := data[off:]
		if len(h) < 7 || h[0] != 0xFF || h[1]&0xF6 != 0xF0 {
			return nil, fmt.Errorf("%w: ADTS sync at %d", ErrFormat, off)
		}
		hdrLen := 7
		if h[1]&1 == 0 {
			hdrLen = 9 // CRC present
		}
		obj := int(h[2]>>6) + 1
		idx := int(h[2]>>2) & 0x0F
		ch := int(h[2]&1)<<2 | int(h[3]>>6)
		length := int(h[3]&3)<<11 | int(h[4])<<3 | int(h[5]>>5)
		if idx >= len(adtsRates) || length < hdrLen || length > len(h) {
			return nil, fmt.Errorf("%w: ADTS frame at %d (rate index %d, length %d)", ErrFormat, off, idx, length)
		}
		if t.config == nil {
			t.config = []byte{byte(obj<<3 | idx>>1), byte(idx<<7 | ch<<3)}
			t.rate = float64(adtsRates[idx])
		}
		at := time.Duration(n) * 1024 * time.Second / time.Duration(t.rate)
		t.list = append(t.list, Frame{Time: at, Key: true, Data: h[hdrLen:length]})
		n++
		off += length
	}
	if len(t.list) == 0 {
		return nil, fmt.Errorf("%w: no ADTS frames", ErrFormat)
	}
	return t, nil
}
