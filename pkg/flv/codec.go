package flv

// Kind says what a tag is for the purposes of caching and joining.
type Kind uint8

const (
	// KindOther is a tag with no role in joining (an inter frame, audio frame, unknown).
	KindOther Kind = iota
	// KindKeyframe is a video frame a decoder can start from.
	KindKeyframe
	// KindVideoHeader is a video sequence header (AVC/HEVC/AV1/VP9 decoder configuration).
	KindVideoHeader
	// KindAudioHeader is an audio sequence header (AAC AudioSpecificConfig, or enhanced).
	KindAudioHeader
	// KindMetadata is an onMetaData script tag.
	KindMetadata
	// KindEndOfSequence is a video end-of-sequence marker.
	KindEndOfSequence
)

func (k Kind) String() string {
	switch k {
	case KindKeyframe:
		return "keyframe"
	case KindVideoHeader:
		return "video-header"
	case KindAudioHeader:
		return "audio-header"
	case KindMetadata:
		return "metadata"
	case KindEndOfSequence:
		return "end-of-sequence"
	}
	return "other"
}

// Legacy codec ids (FLV spec) and enhanced RTMP FourCCs we recognise.
const (
	VideoAVC   = 7
	VideoHEVC  = 12 // common non-standard extension (Chinese CDNs)
	AudioAAC   = 10
	audioExHdr = 9 // enhanced RTMP v2 audio header

	videoExHeaderBit = 0x80
	frameKey         = 1
	frameCommand     = 5
)

// Enhanced RTMP video packet types.
const (
	exSequenceStart     = 0
	exCodedFrames       = 1
	exSequenceEnd       = 2
	exCodedFramesX      = 3
	exMetadata          = 4
	exMPEG2TSSeqStart   = 5
	exMultitrack        = 6
	exModEx             = 7
	audioExSequenceStrt = 0
)

// Classify tells what role a tag body of the given type plays. Unknown codecs and
// malformed bodies are KindOther: they pass through untouched.
func Classify(typ byte, body []byte) Kind {
	switch typ {
	case TypeVideo:
		return classifyVideo(body)
	case TypeAudio:
		return classifyAudio(body)
	case TypeScript:
		if isOnMetaData(body) {
			return KindMetadata
		}
	}
	return KindOther
}

func classifyVideo(b []byte) Kind {
	if len(b) < 1 {
		return KindOther
	}
	frameType := (b[0] >> 4) & 0x07
	if b[0]&videoExHeaderBit != 0 {
		// Enhanced RTMP: [1|frameType(3)|packetType(4)], ModEx prefixes, then a FourCC
		// or a multitrack header. The frame type holds for every track of a message.
		_, packet, off, ok := exPacketType(TypeVideo, b)
		if !ok || (frameType == frameCommand && packet != exMetadata) {
			return KindOther
		}
		if packet == exMultitrack {
			if off >= len(b) {
				return KindOther
			}
			packet = b[off] & 0x0F
		} else if len(b) < off+4 {
			return KindOther
		}
		switch packet {
		case exSequenceStart, exMPEG2TSSeqStart:
			return KindVideoHeader
		case exSequenceEnd:
			return KindEndOfSequence
		case exCodedFrames, exCodedFramesX:
			if frameType == frameKey {
				return KindKeyframe
			}
		}
		// Metadata and unknown packets are passed through without a role.
		return KindOther
	}
	if frameType == frameCommand {
		return KindOther
	}
	switch b[0] & 0x0F {
	case VideoAVC, VideoHEVC:
		if len(b) < 2 {
			return KindOther
		}
		switch b[1] {
		case 0:
			return KindVideoHeader
		case 2:
			return KindEndOfSequence
		}
	}
	// Legacy codecs without a packet type (Sorenson, VP6...) still mark keyframes.
	if frameType == frameKey {
		return KindKeyframe
	}
	return KindOther
}

func classifyAudio(b []byte) Kind {
	if len(b) < 2 {
		return KindOther
	}
	switch b[0] >> 4 {
	case AudioAAC:
		if b[1] == 0 {
			return KindAudioHeader
		}
	case audioExHdr:
		// Enhanced RTMP v2 audio: [9|packetType(4)], ModEx prefixes, then a FourCC or
		// a multitrack header.
		_, packet, off, ok := exPacketType(TypeAudio, b)
		if !ok {
			return KindOther
		}
		if packet == audioExMultitrack {
			if off >= len(b) {
				return KindOther
			}
			packet = b[off] & 0x0F
		} else if len(b) < off+4 {
			return KindOther
		}
		if packet == audioExSequenceStrt {
			return KindAudioHeader
		}
	}
	return KindOther
}

// isOnMetaData reports whether a script body starts with the AMF0 string "onMetaData".
func isOnMetaData(b []byte) bool {
	const name = "onMetaData"
	if len(b) < 3+len(name) || b[0] != amfString {
		return false
	}
	n := int(b[1])<<8 | int(b[2])
	return n == len(name) && string(b[3:3+n]) == name
}
