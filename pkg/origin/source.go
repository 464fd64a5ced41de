package origin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// FileSource loops a recorded FLV file as a live stream, paced in real time, with
// timestamps continuing across loops. Metadata and sequence headers are sent once.
// It does not call the publish hook: it is the operator's own configuration, like
// the key it computes for itself (and a denial would only make it retry forever).
type FileSource struct {
	Name stream.Name
	Path string
	tags []flv.Tag
	dur  uint32 // from the first tag to one frame past the last
}

// ParseSource parses a --source value "app/stream=path/to/file.flv" and loads the file.
func ParseSource(v string) (*FileSource, error) {
	n, path, ok := strings.Cut(v, "=")
	if !ok || path == "" {
		return nil, fmt.Errorf("source %q: want app/stream=path.flv", v)
	}
	name, err := stream.ParseName(n)
	if err != nil {
		return nil, fmt.Errorf("source %q: %w", v, err)
	}
	src := &FileSource{Name: name, Path: path}
	if err := src.load(); err != nil {
		return nil, fmt.Errorf("source %q: %w", v, err)
	}
	return src, nil
}

func (f *FileSource) load() error {
	fh, err := os.Open(f.Path)
	if err != nil {
		return err
	}
	defer fh.Close()
	r := flv.NewReader(fh, 0)
	if err := r.ReadHeader(); err != nil {
		return err
	}
	var first, last uint32
	for {
		t, err := r.ReadTag()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if len(f.tags) == 0 {
			first = t.Timestamp()
		}
		last = t.Timestamp()
		f.tags = append(f.tags, t)
	}
	if len(f.tags) == 0 {
		return errors.New("no tags")
	}
	f.dur = last - first + 40
	return nil
}

// Run publishes the file through o until ctx ends, claiming the stream again after
// a pause whenever it cannot (another publisher holds it, or the registry is down).
func (f *FileSource) Run(ctx context.Context, o *Origin) error {
	for ctx.Err() == nil {
		s, err := o.publish(ctx, PublishRequest{Name: f.Name, Key: stream.PublishKey(o.cfg.PublishSecret, f.Name)}, nil)
		if err != nil {
			o.log.Warn("file source cannot publish; retrying", "stream", f.Name, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
			}
			continue
		}
		err = f.play(ctx, s)
		s.Close(ctx)
		if err != nil && ctx.Err() == nil {
			o.log.Warn("file source stopped", "stream", f.Name, "err", err)
		}
	}
	return nil
}

func (f *FileSource) play(ctx context.Context, s *Stream) error {
	start := time.Now()
	base := f.tags[0].Timestamp()
	var offset uint32
	timer := time.NewTimer(0)
	defer timer.Stop()
	for loop := 0; ; loop++ {
		for _, t := range f.tags {
			body := t.Body()
			if loop > 0 {
				k := flv.Classify(t.Type(), body)
				if k == flv.KindMetadata || k == flv.KindVideoHeader || k == flv.KindAudioHeader {
					continue
				}
			}
			ts := t.Timestamp() - base + offset
			if wait := time.Until(start.Add(time.Duration(ts) * time.Millisecond)); wait > 0 {
				timer.Reset(wait)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-s.Kicked():
					return errors.New("claim lost")
				case <-timer.C:
				}
			}
			if err := s.WriteTag(t.Type(), ts, body); err != nil {
				return err
			}
		}
		offset += f.dur
	}
}
