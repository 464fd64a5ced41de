package relay

import (
	"encoding/binary"
	"fmt"
	"math"
)

// A small AMF0 codec for the RTMP commands the relay sends and the answers it reads
// (_result, _error, onStatus). Reading is bounded (depth, sizes come from the
// buffer) and stops at the first value it does not know, keeping what came before.

type amfObject map[string]any

// amfNull is AMF0 null.
type amfNull struct{}

func amfAppend(b []byte, v any) []byte {
	switch v := v.(type) {
	case float64:
		b = append(b, 0x00)
		return binary.BigEndian.AppendUint64(b, math.Float64bits(v))
	case int:
		return amfAppend(b, float64(v))
	case bool:
		if v {
			return append(b, 0x01, 1)
		}
		return append(b, 0x01, 0)
	case string:
		b = append(b, 0x02)
		b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
		return append(b, v...)
	case amfObject:
		b = append(b, 0x03)
		for _, k := range sortedKeys(v) {
			b = binary.BigEndian.AppendUint16(b, uint16(len(k)))
			b = append(b, k...)
			b = amfAppend(b, v[k])
		}
		return append(b, 0, 0, 0x09)
	default:
		return append(b, 0x05) // null
	}
}

func sortedKeys(m amfObject) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	for i := 1; i < len(keys); i++ { // insertion sort: a handful of keys
		for j := i; j > 0 && keys[j] < keys[j-1]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}

// amfValues decodes AMF0 values until the body ends or a value it cannot read.
func amfValues(b []byte) []any {
	var out []any
	for len(b) > 0 {
		v, rest, err := amfValue(b, 0)
		if err != nil {
			break
		}
		out = append(out, v)
		b = rest
	}
	return out
}

func amfValue(b []byte, depth int) (any, []byte, error) {
	if len(b) == 0 || depth > 8 {
		return nil, nil, errProtocol
	}
	switch b[0] {
	case 0x00:
		if len(b) < 9 {
			return nil, nil, errProtocol
		}
		return math.Float64frombits(binary.BigEndian.Uint64(b[1:9])), b[9:], nil
	case 0x01:
		if len(b) < 2 {
			return nil, nil, errProtocol
		}
		return b[1] != 0, b[2:], nil
	case 0x02:
		s, rest, err := amfString(b[1:])
		return s, rest, err
	case 0x05, 0x06:
		return amfNull{}, b[1:], nil
	case 0x03, 0x08:
		rest := b[1:]
		if b[0] == 0x08 {
			if len(rest) < 4 {
				return nil, nil, errProtocol
			}
			rest = rest[4:]
		}
		obj := amfObject{}
		for {
			if len(rest) >= 3 && rest[0] == 0 && rest[1] == 0 && rest[2] == 0x09 {
				return obj, rest[3:], nil
			}
			k, r, err := amfString(rest)
			if err != nil {
				return nil, nil, err
			}
			v, r, err := amfValue(r, depth+1)
			if err != nil {
				return nil, nil, err
			}
			obj[k] = v
			rest = r
		}
	}
	return nil, nil, fmt.Errorf("%w: AMF0 marker %#x", errProtocol, b[0])
}

func amfString(b []byte) (string, []byte, error) {
	if len(b) < 2 {
		return "", nil, errProtocol
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+n {
		return "", nil, errProtocol
	}
	return string(b[2 : 2+n]), b[2+n:], nil
}
