package pub

// bits reads a big-endian bit string; reads past the end give zeros and set over.
type bits struct {
	b    []byte
	pos  int // in bits
	over bool
}

func (r *bits) u(n int) uint64 {
	var v uint64
	for i := 0; i < n; i++ {
		v <<= 1
		if r.pos >= len(r.b)*8 {
			r.over = true
		} else if r.b[r.pos/8]&(0x80>>(r.pos%8)) != 0 {
			v |= 1
		}
		r.pos++
	}
	return v
}

func (r *bits) flag() bool { return r.u(1) == 1 }

// uvlc is AV1's variable length code.
func (r *bits) uvlc() uint64 {
	lead := 0
	for !r.flag() {
		lead++
		if lead >= 32 || r.over {
			r.over = true
			return 0
		}
	}
	return r.u(lead) + (1 << lead) - 1
}

// leb128 reads AV1's little-endian base-128 number from b; n is its length (0: malformed).
func leb128(b []byte) (v uint64, n int) {
	for i := 0; i < 8 && i < len(b); i++ {
		v |= uint64(b[i]&0x7F) << (7 * i)
		if b[i]&0x80 == 0 {
			return v, i + 1
		}
	}
	return 0, 0
}

// unescape removes H.26x emulation prevention bytes (00 00 03 -> 00 00).
func unescape(b []byte) []byte {
	out := make([]byte, 0, len(b))
	zeros := 0
	for _, c := range b {
		if zeros >= 2 && c == 3 {
			zeros = 0
			continue
		}
		if c == 0 {
			zeros++
		} else {
			zeros = 0
		}
		out = append(out, c)
	}
	return out
}

func le16(b []byte) int { return int(b[0]) | int(b[1])<<8 }
func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
func le64(b []byte) uint64 { return uint64(le32(b)) | uint64(le32(b[4:]))<<32 }
