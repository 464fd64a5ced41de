// Package pub is the test publisher's core: it reads media files (legacy or Enhanced
// FLV, AV1 and VP9 in IVF, HEVC Annex B, Opus in Ogg, AAC in ADTS), turns them into
// RTMP audio, video and data messages of Enhanced RTMP v1/v2 (single-track, or one
// multitrack stream from several video inputs), and publishes them in real time
// over RTMP with go-rtmp's client. It is written from the Enhanced RTMP
// specification; it is a tool for tests and the load generator, never imported by
// the product.
package pub

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// FLV tag types, as RTMP message kinds.
const (
	TypeAudio  byte = 8
	TypeVideo  byte = 9
	TypeScript byte = 18
)

// Message is one RTMP media or data message: an FLV tag body with its time.
type Message struct {
	Type byte
	Time time.Duration
	Body []byte
	// Header: metadata or a sequence start, sent once at the start (not again when looping).
	Header bool
}

// Input yields messages in time order; io.EOF after the last.
type Input interface {
	Next() (Message, error)
}

// ErrFormat reports a file that is not what its name or magic says.
var ErrFormat = errors.New("pub: malformed input")

// Options tune how elementary streams are read.
type Options struct {
	// FPS is the frame rate of Annex B HEVC input, which carries no timestamps (default 25).
	FPS float64
	// Separate sends each track of a multitrack stream in OneTrack messages of its
	// own (as OBS does) instead of one message per time for all tracks.
	Separate bool
}

// Open opens one input file as a Track (an elementary stream) or, for FLV, as
// an Input of its tags. Exactly one of the results is non-nil.
func Open(path string, o Options) (Track, Input, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	data, err := io.ReadAll(f)
	_ = f.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	tr, in, err := Parse(data, strings.ToLower(filepath.Ext(path)), o)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return tr, in, nil
}

// Parse reads a whole file's bytes; ext ("" to sniff) tells Annex B HEVC and ADTS
// apart from the formats that carry a signature.
func Parse(data []byte, ext string, o Options) (Track, Input, error) {
	switch {
	case len(data) >= 3 && string(data[:3]) == "FLV":
		in, err := newFLVInput(data)
		return nil, in, err
	case len(data) >= 4 && string(data[:4]) == "DKIF":
		tr, err := newIVF(data)
		return tr, nil, err
	case len(data) >= 4 && string(data[:4]) == "OggS":
		tr, err := newOggOpus(data)
		return tr, nil, err
	case ext == ".aac" || ext == ".adts" || len(data) >= 2 && data[0] == 0xFF && data[1]&0xF6 == 0xF0:
		tr, err := newADTS(data)
		return tr, nil, err
	case ext == ".hevc" || ext == ".h265" || ext == ".265" || ext == "":
		fps := o.FPS
		if fps <= 0 {
			fps = 25
		}
		tr, err := newHEVC(data, fps)
		return tr, nil, err
	}
	return nil, nil, fmt.Errorf("%w: unknown input type %q", ErrFormat, ext)
}

// OpenAll opens the inputs of one publish: one FLV file alone, or elementary
// streams (several video ones become one multitrack stream, track i from file i).
func OpenAll(files []string, o Options) (Input, error) {
	var video, audio []Track
	for _, f := range files {
		tr, in, err := Open(f, o)
		if err != nil {
			return nil, err
		}
		if in != nil {
			if len(files) != 1 {
				return nil, fmt.Errorf("%s: an FLV input must be the only input", f)
			}
			return in, nil
		}
		if tr.Video() {
			video = append(video, tr)
		} else {
			audio = append(audio, tr)
		}
	}
	if len(audio) > 1 {
		return nil, errors.New("one audio input at most")
	}
	var ins []Input
	switch {
	case len(video) == 1:
		ins = append(ins, TrackInput(video[0]))
	case len(video) > 1:
		mt, err := MultitrackInput(video, o.Separate)
		if err != nil {
			return nil, err
		}
		ins = append(ins, mt)
	}
	for _, a := range audio {
		ins = append(ins, TrackInput(a))
	}
	meta := Message{Type: TypeScript, Header: true, Body: Metadata(append(video, audio...))}
	return Mix([]Message{meta}, ins...), nil
}
