package pub

import (
	"io"
	"time"
)

// Frame is one access unit of an elementary stream.
type Frame struct {
	Time time.Duration // decode time
	CTS  time.Duration // presentation minus decode time (0 without reordering)
	Key  bool
	Data []byte // AV1 temporal unit, VP9 frame, length-prefixed HEVC NAL units, Opus or AAC packet
}

// Track is an elementary stream: a codec, its configuration record, and frames.
type Track interface {
	// FourCC is the Enhanced RTMP codec: av01, vp09, hvc1, Opus or mp4a.
	FourCC() string
	Video() bool
	// Config is the sequence start payload: AV1CodecConfigurationRecord,
	// VPCodecConfigurationRecord, HEVCDecoderConfigurationRecord, Opus ID header,
	// AudioSpecificConfig.
	Config() []byte
	// Size is the picture size (video), 0 when unknown.
	Size() (w, h int)
	// Rate is frames per second (video) or the sample rate (audio).
	Rate() float64
	Next() (Frame, error)
}

// frames is a Track over frames already split.
type frames struct {
	fourcc string
	video  bool
	config []byte
	w, h   int
	rate   float64
	list   []Frame
	i      int
}

func (f *frames) FourCC() string   { return f.fourcc }
func (f *frames) Video() bool      { return f.video }
func (f *frames) Config() []byte   { return f.config }
func (f *frames) Size() (int, int) { return f.w, f.h }
func (f *frames) Rate() float64    { return f.rate }
func (f *frames) Next() (Frame, error) {
	if f.i >= len(f.list) {
		return Frame{}, io.EOF
	}
	f.i++
	return f.list[f.i-1], nil
}
