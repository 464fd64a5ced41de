package probe

import "fmt"

// This file classifies FLV tag bodies. It is written from the FLV specification (v10.1,
// annex E: VIDEODATA, AUDIODATA, SCRIPTDATA) and the Enhanced RTMP specification (v1
// and v2: the ExVideoTagHeader and ExAudioTagHeader with a FourCC), on purpose without
// pkg/flv, so that a classification bug cannot hide in the product and its checker at
// once.

// Kind is what a tag is to a player.
type Kind uint8

// Kinds of tags.
const (
	KindOther       Kind = iota // not judged: unknown codecs and packet types
	KindMetadata                // script data named onMetaData (or @setDataFrame onMetaData)
	KindScript                  // other script data
	KindVideoHeader             // a decoder configuration (sequence start)
	KindKeyframe                // a coded picture a decoder can start from
	KindInter                   // a coded picture that needs earlier ones
	KindVideoInfo               // video without a picture: command frame, sequence end, metadata
	KindAudioHeader             // an audio decoder configuration (AAC AudioSpecificConfig)
	KindAudio                   // coded audio
)

var kindNames = [...]string{"other", "metadata", "script", "video-header", "keyframe", "inter", "video-info", "audio-header", "audio"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind%d", uint8(k))
}

// FLV tag types (TagType, the low 5 bits of the first tag header byte).
const (
	TypeAudio  = 8
	TypeVideo  = 9
	TypeScript = 18
)

// Class is the classification of one tag body.
type Class struct {
	Kind Kind
	// Codec names the codec: avc, hevc, av1, vp9, vp8, aac, mp3, opus, flac, ...
	// (empty for script data and bodies too short to say).
	Codec string
	// NeedsHeader: a decoder of this codec needs a sequence header before the first frame.
	NeedsHeader bool
	// Multitrack: an Enhanced RTMP v2 multitrack message (several tracks in one tag),
	// which a single-track player cannot read. Kind and Codec are then those of its
	// first track.
	Multitrack bool
}

// Classify says what a tag of type typ with this body is.
func Classify(typ byte, body []byte) Class {
	switch typ {
	case TypeVideo:
		return classifyVideo(body)
	case TypeAudio:
		return classifyAudio(body)
	case TypeScript:
		return classifyScript(body)
	}
	return Class{}
}

// Legacy VIDEODATA: FrameType (4 bits) | CodecID (4 bits), then for AVC (7) and the
// common HEVC extension (12) an AVCPacketType byte: 0 sequence header, 1 NALU, 2 end of
// sequence. FrameType 1 key, 2 inter, 3 disposable inter, 4 generated key, 5 info/command.
var legacyVideo = map[byte]struct {
	name   string
	packet bool // has the AVCPacketType byte
}{2: {"h263", false}, 3: {"screen", false}, 4: {"vp6", false}, 5: {"vp6a", false}, 6: {"screen2", false}, 7: {"avc", true}, 12: {"hevc", true}}

// Enhanced RTMP video FourCCs; all of these carry their configuration record in a
// SequenceStart packet, which a decoder needs first.
var exVideo = map[string]string{"avc1": "avc", "hvc1": "hevc", "av01": "av1", "vp09": "vp9", "vp08": "vp8"}

func classifyVideo(b []byte) Class {
	if len(b) == 0 {
		return Class{}
	}
	if b[0]&0x80 != 0 { // IsExHeader
		return classifyExVideo(b)
	}
	frame, id := b[0]>>4, b[0]&0x0f
	c, known := legacyVideo[id]
	if !known {
		return Class{Codec: fmt.Sprintf("video-codec-%d", id)}
	}
	out := Class{Codec: c.name, NeedsHeader: c.packet}
	if frame == 5 {
		out.Kind = KindVideoInfo
		return out
	}
	if c.packet {
		if len(b) < 2 {
			return Class{Codec: c.name}
		}
		switch b[1] {
		case 0:
			out.Kind = KindVideoHeader
			return out
		case 2:
			out.Kind = KindVideoInfo
			return out
		case 1:
		default:
			return Class{Codec: c.name}
		}
	}
	out.Kind = frameKind(frame)
	return out
}

func frameKind(frame byte) Kind {
	switch frame {
	case 1, 4:
		return KindKeyframe
	case 2, 3:
		return KindInter
	case 5:
		return KindVideoInfo
	}
	return KindOther
}

// Enhanced RTMP ExVideoTagHeader: IsExHeader (1 bit) | FrameType (3 bits) |
// PacketType (4 bits), then (unless it is a command frame) a FourCC. PacketTypes:
// 0 SequenceStart, 1 CodedFrames, 2 SequenceEnd, 3 CodedFramesX, 4 Metadata,
// 5 MPEG2TSSequenceStart, 6 Multitrack, 7 ModEx.
func classifyExVideo(b []byte) Class {
	frame := (b[0] >> 4) & 7
	packet, rest, ok := exPacket(b, 7)
	if !ok {
		return Class{}
	}
	if frame == 5 && packet != 4 { // a command frame carries a command byte, no FourCC
		return Class{Kind: KindVideoInfo}
	}
	multi := packet == 6
	if multi {
		if packet, rest, ok = exMultitrack(rest); !ok {
			return Class{Multitrack: true}
		}
	}
	if len(rest) < 4 || packet == 6 || packet == 7 {
		return Class{Multitrack: multi}
	}
	fourcc := string(rest[:4])
	name, known := exVideo[fourcc]
	if !known {
		return Class{Codec: fourcc, Multitrack: multi}
	}
	out := Class{Codec: name, NeedsHeader: true, Multitrack: multi}
	switch packet {
	case 0, 5:
		out.Kind = KindVideoHeader
	case 1, 3:
		out.Kind = frameKind(frame)
	case 2, 4:
		out.Kind = KindVideoInfo
	default:
		out.Kind = KindOther
	}
	return out
}

// exPacket reads the packet type of an Enhanced header (the low 4 bits of b[0]),
// stepping over ModEx prefixes (packet type modEx: a size byte, 255 meaning a 16-bit
// size follows, size+1 bytes of data, then [ModExType(4) | PacketType(4)]). It
// returns the packet type and the bytes after it.
func exPacket(b []byte, modEx byte) (byte, []byte, bool) {
	packet, rest := b[0]&0x0f, b[1:]
	for packet == modEx {
		if len(rest) < 1 {
			return 0, nil, false
		}
		n := int(rest[0]) + 1
		rest = rest[1:]
		if n == 256 {
			if len(rest) < 2 {
				return 0, nil, false
			}
			n = int(rest[0])<<8 | int(rest[1]) + 1
			rest = rest[2:]
		}
		if len(rest) < n+1 {
			return 0, nil, false
		}
		packet, rest = rest[n]&0x0f, rest[n+1:]
	}
	return packet, rest, true
}

// exMultitrack reads a multitrack header: [AvMultitrackType(4) | PacketType(4)],
// then (unless the type is 2, ManyTracksManyCodecs) the FourCC of every track; it
// returns the tracks' packet type and the bytes from the (first) FourCC on.
func exMultitrack(b []byte) (byte, []byte, bool) {
	if len(b) < 1 || b[0]>>4 > 2 {
		return 0, nil, false
	}
	return b[0] & 0x0f, b[1:], true
}

// Legacy AUDIODATA: SoundFormat (4 bits) | rate | size | type, then for AAC (10) an
// AACPacketType byte: 0 AudioSpecificConfig, 1 raw. SoundFormat 9 is Enhanced RTMP's
// ExAudioTagHeader: AudioPacketType in the low 4 bits (0 SequenceStart, 1 CodedFrames,
// 2 SequenceEnd, 4 MultichannelConfig, 5 Multitrack, 7 ModEx), then a FourCC.
var legacyAudio = map[byte]string{0: "pcm", 1: "adpcm", 2: "mp3", 3: "pcm-le", 4: "nellymoser16", 5: "nellymoser8",
	6: "nellymoser", 7: "g711a", 8: "g711u", 10: "aac", 11: "speex", 14: "mp3-8k", 15: "device"}

var exAudio = map[string]struct {
	name   string
	header bool
}{"mp4a": {"aac", true}, "fLaC": {"flac", true}, "Opus": {"opus", false}, ".mp3": {"mp3", false}, "ac-3": {"ac3", false}, "ec-3": {"eac3", false}}

func classifyAudio(b []byte) Class {
	if len(b) == 0 {
		return Class{}
	}
	format := b[0] >> 4
	if format == 9 {
		packet, rest, ok := exPacket(b, 7)
		multi := ok && packet == 5
		if multi {
			packet, rest, ok = exMultitrack(rest)
		}
		if !ok || len(rest) < 4 || packet == 5 || packet == 7 {
			return Class{Multitrack: multi}
		}
		c, known := exAudio[string(rest[:4])]
		if !known {
			return Class{Codec: string(rest[:4]), Multitrack: multi}
		}
		out := Class{Codec: c.name, NeedsHeader: c.header, Multitrack: multi}
		switch packet {
		case 0:
			out.Kind = KindAudioHeader
		case 1:
			out.Kind = KindAudio
		default:
			out.Kind = KindOther
		}
		return out
	}
	name, known := legacyAudio[format]
	if !known {
		return Class{Codec: fmt.Sprintf("audio-format-%d", format)}
	}
	if format != 10 {
		return Class{Kind: KindAudio, Codec: name}
	}
	if len(b) < 2 {
		return Class{Codec: name}
	}
	switch b[1] {
	case 0:
		return Class{Kind: KindAudioHeader, Codec: name, NeedsHeader: true}
	case 1:
		return Class{Kind: KindAudio, Codec: name, NeedsHeader: true}
	}
	return Class{Codec: name}
}

// SCRIPTDATA is AMF0: a string (marker 2, u16 length, bytes) naming the call, then its
// value. onMetaData is sent as is by most servers and as "@setDataFrame", "onMetaData"
// by encoders that forward the RTMP data message.
func classifyScript(b []byte) Class {
	name, rest, ok := amfString(b)
	if !ok {
		return Class{Kind: KindScript}
	}
	if name == "@setDataFrame" {
		if name, rest, ok = amfString(rest); !ok {
			return Class{Kind: KindScript}
		}
	}
	// onMetaData's value is an ECMA array (8) or an object (3).
	if name == "onMetaData" && len(rest) > 0 && (rest[0] == 8 || rest[0] == 3) {
		return Class{Kind: KindMetadata}
	}
	return Class{Kind: KindScript}
}

func amfString(b []byte) (string, []byte, bool) {
	if len(b) < 3 || b[0] != 2 {
		return "", nil, false
	}
	n := int(b[1])<<8 | int(b[2])
	if len(b) < 3+n {
		return "", nil, false
	}
	return string(b[3 : 3+n]), b[3+n:], true
}
