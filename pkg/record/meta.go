package record

import (
	"encoding/binary"
	"math"
	"slices"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// metaBody returns an onMetaData script body whose first entry is "duration" (zero,
// patched when the segment closes) followed by the publisher's own entries (numbers,
// booleans and strings; nested values are left out), and the offset of the duration's
// 8 bytes within the body.
func metaBody(md flv.Metadata) (body []byte, durationAt int) {
	b := appendString([]byte{0x02}, "onMetaData")
	keys := make([]string, 0, len(md))
	for k, v := range md {
		switch v.(type) {
		case float64, bool, string:
			if k != "duration" && k != "filesize" && len(k) < 0x10000 {
				keys = append(keys, k)
			}
		}
	}
	slices.Sort(keys)
	b = append(b, 0x08) // ECMA array
	b = binary.BigEndian.AppendUint32(b, uint32(1+len(keys)))
	b = appendString(b, "duration")
	b = append(b, 0x00)
	durationAt = len(b)
	b = binary.BigEndian.AppendUint64(b, 0)
	for _, k := range keys {
		b = appendString(b, k)
		switch v := md[k].(type) {
		case float64:
			b = append(b, 0x00)
			b = binary.BigEndian.AppendUint64(b, math.Float64bits(v))
		case bool:
			var x byte
			if v {
				x = 1
			}
			b = append(b, 0x01, x)
		case string:
			if len(v) >= 0x10000 {
				v = v[:0xffff]
			}
			b = appendString(append(b, 0x02), v)
		}
	}
	return append(b, 0, 0, 0x09), durationAt
}

// appendString appends an AMF0 string's length and bytes (its marker is the caller's).
func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}
