package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// The bench media: 720p30 H.264 at about 2.35 Mbit/s with a 2 s GOP, plus 128 kbit/s
// AAC, 60 s long, looped by the publishers. Encoded once; the name carries the settings.
const (
	mediaName    = "720p30-h264-2350k-aac128k-gop60-60s.flv"
	mediaSeconds = 60
)

// media is the loaded bench file.
type media struct {
	path     string
	tags     []flv.Tag // in send order, timestamps non-decreasing
	headers  int       // leading metadata and sequence-header tags
	base     uint32    // timestamp of the first tag
	loopMS   uint32    // timeline advance per loop
	bitrate  float64   // bits per second over one loop
	hasAudio bool
	hasVideo bool
}

// ensureMedia returns the cached bench file, encoding it first when missing.
func ensureMedia(ctx context.Context, dir string, log func(string, ...any)) (*media, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cache dir: %w", err)
	}
	path := filepath.Join(dir, mediaName)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if _, err := exec.LookPath("ffmpeg"); err != nil {
			return nil, fmt.Errorf("ffmpeg is needed once to encode %s: %w", path, err)
		}
		log("encoding %s with ffmpeg (once; about a minute on 2 cores)", path)
		tmp := path + ".part"
		args := []string{"-hide_banner", "-loglevel", "error", "-nostdin", "-y",
			"-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
			"-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
			"-t", fmt.Sprint(mediaSeconds),
			"-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
			"-b:v", "2350k", "-maxrate", "2350k", "-bufsize", "4700k",
			"-g", "60", "-keyint_min", "60", "-sc_threshold", "0",
			"-c:a", "aac", "-b:a", "128k", "-ar", "44100",
			"-f", "flv", tmp}
		ectx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ectx, "ffmpeg", args...).CombinedOutput(); err != nil {
			_ = os.Remove(tmp)
			return nil, fmt.Errorf("ffmpeg %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		if err := os.Rename(tmp, path); err != nil {
			return nil, fmt.Errorf("cache media: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("cache media: %w", err)
	}
	return loadMedia(path)
}

func loadMedia(path string) (*media, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("media: %w", err)
	}
	defer f.Close()
	r := flv.NewReader(f, 0)
	if err := r.ReadHeader(); err != nil {
		return nil, fmt.Errorf("media %s: %w", path, err)
	}
	m := &media{path: path}
	for {
		t, err := r.ReadTag()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("media %s: %w", path, err)
		}
		switch t.Type() {
		case flv.TypeAudio:
			m.hasAudio = true
		case flv.TypeVideo:
			m.hasVideo = true
		}
		m.tags = append(m.tags, t)
	}
	if len(m.tags) == 0 || !m.hasVideo {
		return nil, fmt.Errorf("media %s: no video tags", path)
	}
	// Timestamps must not step back in send order: the origin would clamp such a
	// tag and its latency could no longer be looked up by timestamp.
	slices.SortStableFunc(m.tags, func(a, b flv.Tag) int { return int(a.Timestamp()) - int(b.Timestamp()) })
	// Headers first, so that loops after the first can skip them.
	slices.SortStableFunc(m.tags, func(a, b flv.Tag) int { return boolInt(!isHeader(a)) - boolInt(!isHeader(b)) })
	for m.headers < len(m.tags) && isHeader(m.tags[m.headers]) {
		m.headers++
	}
	m.base = m.tags[0].Timestamp()
	var bytes int
	var lastVideo uint32
	frame := uint32(40)
	for _, t := range m.tags {
		bytes += len(t)
		if t.Type() == flv.TypeVideo && !isHeader(t) {
			if lastVideo > 0 && t.Timestamp() > lastVideo {
				frame = t.Timestamp() - lastVideo
			}
			lastVideo = t.Timestamp()
		}
	}
	m.loopMS = m.tags[len(m.tags)-1].Timestamp() - m.base + frame
	m.bitrate = float64(bytes*8) / (float64(m.loopMS) / 1000)
	return m, nil
}

func isHeader(t flv.Tag) bool {
	switch flv.Classify(t.Type(), t.Body()) {
	case flv.KindMetadata, flv.KindVideoHeader, flv.KindAudioHeader:
		return true
	}
	return false
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
