package flv

import (
	"errors"
	"fmt"
)

// This file reads the Enhanced RTMP (v1, v2) ExVideoTagHeader and ExAudioTagHeader:
// ModEx prefixes, FourCCs and multitrack messages, and writes one track of such a
// message back as an ordinary single-track tag body. Written from the Enhanced RTMP
// v2 specification (veovera/enhanced-rtmp, "Enhanced Audio", "Enhanced Video",
// "Multitrack Streaming").

// Enhanced RTMP packet types used beyond codec.go's.
const (
	audioExCodedFrames   = 1
	audioExMultitrack    = 5
	audioExModEx         = 7
	multitrackOne        = 0    // AvMultitrackType.OneTrack
	multitrackMany       = 1    // ManyTracks (one codec)
	multitrackManyCodecs = 2    // ManyTracksManyCodecs
	legacyAACHeaderByte  = 0xAF // AAC, 44 kHz, 16 bit, stereo: what every AAC tag carries
)

var (
	// ErrNotEnhanced reports a body that has no Enhanced RTMP header (a legacy tag).
	ErrNotEnhanced = errors.New("flv: not an Enhanced RTMP packet")
	// ErrMalformed reports an Enhanced RTMP header that its bytes do not hold.
	ErrMalformed = errors.New("flv: malformed Enhanced RTMP packet")
)

// ExPacket is one track's part of an Enhanced RTMP audio or video message.
type ExPacket struct {
	Track      uint8   // 0 unless the message is multitrack
	PacketType uint8   // VideoPacketType or AudioPacketType (never ModEx or Multitrack)
	FourCC     [4]byte // the codec
	// Data is what follows the track's header: the configuration record, coded
	// frames (for avc1/hvc1 CodedFrames, the SI24 composition time first), ...
	// It aliases the message body.
	Data []byte
}

// ExMessage is a parsed Enhanced RTMP audio or video tag body.
type ExMessage struct {
	FrameType  uint8 // video: VideoFrameType (1 key, 2 inter, 5 command); audio: 0
	Multitrack bool
	// Command is a video command frame (no FourCC, no packets).
	Command bool
	Packets []ExPacket
}

// IsMultitrack reports whether an audio or video body is an Enhanced RTMP
// multitrack message (after any ModEx prefixes). It reads no further than that.
func IsMultitrack(typ byte, body []byte) bool {
	_, pt, _, ok := exPacketType(typ, body)
	switch typ {
	case TypeVideo:
		return ok && pt == exMultitrack
	case TypeAudio:
		return ok && pt == audioExMultitrack
	}
	return false
}

// exPacketType walks the first byte and the ModEx prefixes of an Enhanced body and
// returns the frame type, the packet type that follows them, and the offset just
// after it.
func exPacketType(typ byte, b []byte) (frame, packet uint8, off int, ok bool) {
	if len(b) == 0 {
		return 0, 0, 0, false
	}
	modEx := uint8(audioExModEx)
	switch {
	case typ == TypeVideo && b[0]&videoExHeaderBit != 0:
		frame, modEx = (b[0]>>4)&0x07, exModEx
	case typ == TypeAudio && b[0]>>4 == audioExHdr:
	default:
		return 0, 0, 0, false
	}
	packet, off = b[0]&0x0F, 1
	for packet == modEx {
		if off >= len(b) {
			return 0, 0, 0, false
		}
		size := int(b[off]) + 1
		off++
		if size == 256 {
			if off+2 > len(b) {
				return 0, 0, 0, false
			}
			size = (int(b[off])<<8 | int(b[off+1])) + 1
			off += 2
		}
		off += size // the ModEx data (e.g. a nanosecond timestamp offset): not used here
		if off >= len(b) {
			return 0, 0, 0, false
		}
		packet = b[off] & 0x0F // high nibble: the ModEx type
		off++
	}
	return frame, packet, off, true
}

// ParseEx parses an Enhanced RTMP audio or video body into its tracks, appending
// them to dst's backing array (pass nil or a reused slice). A legacy body gives
// ErrNotEnhanced; bytes too few for what a header announces give ErrMalformed.
func ParseEx(typ byte, body []byte, dst []ExPacket) (ExMessage, error) {
	frame, packet, off, ok := exPacketType(typ, body)
	if !ok {
		if len(body) > 0 && ((typ == TypeVideo && body[0]&videoExHeaderBit != 0) || (typ == TypeAudio && body[0]>>4 == audioExHdr)) {
			return ExMessage{}, fmt.Errorf("%w: ModEx runs past the end", ErrMalformed)
		}
		return ExMessage{}, ErrNotEnhanced
	}
	m := ExMessage{FrameType: frame, Packets: dst[:0]}
	multi := uint8(audioExMultitrack)
	if typ == TypeVideo {
		multi = exMultitrack
		if frame == frameCommand && packet != exMetadata {
			m.Command = true
			return m, nil
		}
	}
	b := body[off:]
	mtype := uint8(multitrackOne)
	if packet == multi {
		if len(b) < 1 {
			return m, fmt.Errorf("%w: multitrack type missing", ErrMalformed)
		}
		m.Multitrack = true
		mtype, packet = b[0]>>4, b[0]&0x0F
		b = b[1:]
		if mtype > multitrackManyCodecs {
			return m, fmt.Errorf("%w: multitrack type %d", ErrMalformed, mtype)
		}
		if packet == multi || (typ == TypeVideo && packet == exModEx) || (typ == TypeAudio && packet == audioExModEx) {
			return m, fmt.Errorf("%w: packet type %d inside a multitrack message", ErrMalformed, packet)
		}
	}
	var fourcc [4]byte
	if !m.Multitrack || mtype != multitrackManyCodecs {
		if len(b) < 4 {
			return m, fmt.Errorf("%w: FourCC missing", ErrMalformed)
		}
		copy(fourcc[:], b)
		b = b[4:]
	}
	if !m.Multitrack {
		m.Packets = append(m.Packets, ExPacket{PacketType: packet, FourCC: fourcc, Data: b})
		return m, nil
	}
	for len(b) > 0 {
		if mtype == multitrackManyCodecs {
			if len(b) < 4 {
				return m, fmt.Errorf("%w: track FourCC missing", ErrMalformed)
			}
			copy(fourcc[:], b)
			b = b[4:]
		}
		if len(b) < 1 {
			return m, fmt.Errorf("%w: track id missing", ErrMalformed)
		}
		p := ExPacket{Track: b[0], PacketType: packet, FourCC: fourcc}
		b = b[1:]
		if mtype == multitrackOne {
			p.Data, b = b, nil
		} else {
			if len(b) < 3 {
				return m, fmt.Errorf("%w: track size missing", ErrMalformed)
			}
			n := int(get24(b))
			b = b[3:]
			if n > len(b) {
				return m, fmt.Errorf("%w: track %d of %d bytes in %d", ErrMalformed, p.Track, n, len(b))
			}
			p.Data, b = b[:n], b[n:]
		}
		m.Packets = append(m.Packets, p)
	}
	if len(m.Packets) == 0 {
		return m, fmt.Errorf("%w: multitrack message without tracks", ErrMalformed)
	}
	return m, nil
}

// SingleTrackSize is the length of the body AppendSingleTrack writes for p.
func SingleTrackSize(typ byte, p ExPacket) int {
	if legacyForm(typ, p) {
		if typ == TypeAudio {
			return 2 + len(p.Data)
		}
		if p.PacketType == exCodedFrames {
			return 2 + len(p.Data) // the composition time is in Data already
		}
		return 5 + len(p.Data)
	}
	return 5 + len(p.Data)
}

// legacyForm: AVC video and AAC audio go out in the legacy FLV form, which every
// player reads; other codecs in the Enhanced single-track form.
func legacyForm(typ byte, p ExPacket) bool {
	switch {
	case typ == TypeVideo && string(p.FourCC[:]) == "avc1":
		switch p.PacketType {
		case exSequenceStart, exCodedFrames, exCodedFramesX, exSequenceEnd:
			return p.PacketType != exCodedFrames || len(p.Data) >= 3
		}
	case typ == TypeAudio && string(p.FourCC[:]) == "mp4a":
		return p.PacketType == audioExSequenceStrt || p.PacketType == audioExCodedFrames
	}
	return false
}

// AppendSingleTrack appends to dst the body of an ordinary single-track tag that
// carries packet p of a message with the given video frame type: the legacy FLV
// form for AVC and AAC, the Enhanced single-track form otherwise.
func AppendSingleTrack(dst []byte, typ byte, frameType uint8, p ExPacket) []byte {
	if legacyForm(typ, p) {
		if typ == TypeAudio {
			pt := byte(1)
			if p.PacketType == audioExSequenceStrt {
				pt = 0
			}
			return append(append(dst, legacyAACHeaderByte, pt), p.Data...)
		}
		dst = append(dst, frameType<<4|VideoAVC)
		switch p.PacketType {
		case exSequenceStart:
			dst = append(dst, 0, 0, 0, 0)
		case exCodedFrames:
			dst = append(dst, 1) // Data starts with the SI24 composition time
		case exCodedFramesX:
			dst = append(dst, 1, 0, 0, 0)
		case exSequenceEnd:
			dst = append(dst, 2, 0, 0, 0)
		}
		return append(dst, p.Data...)
	}
	if typ == TypeAudio {
		dst = append(dst, audioExHdr<<4|p.PacketType)
	} else {
		dst = append(dst, videoExHeaderBit|(frameType&0x07)<<4|p.PacketType)
	}
	return append(append(dst, p.FourCC[:]...), p.Data...)
}
