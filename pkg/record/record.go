// Package record writes the live streams an origin owns to FLV files on disk: one
// writer per publishing session, fed by the session actor through a bounded queue,
// splitting the session into segments at keyframes. Each segment is a complete FLV
// file on its own (header, onMetaData, sequence headers, then media from a keyframe),
// flushed to the file every Flush, so that a crash loses at most that much and never
// leaves a file a player cannot read; a segment closed normally gets its duration
// patched into its metadata.
//
// A write error (disk full, file size limit, I/O error) stops the recording of that
// session only, logged and counted; the live stream never waits for the disk.
// This package never talks to the registry or the bus.
package record

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/hook"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// Config of a Recorder. Zero values take the documented defaults.
type Config struct {
	// Dir is the root of the recordings: Dir/app/stream/<UTC start>.flv.
	Dir string
	// Match lists the streams to record as path.Match patterns of "app/stream",
	// such as "live/*" or "*/*".
	Match []string
	// Segment is the length after which a recording moves to a new file at the next
	// keyframe. Default 10m.
	Segment time.Duration
	// Flush is how often buffered bytes are written to the file. Default 1s.
	Flush time.Duration
	// Queue bounds the tags waiting for the writer. Default 8192.
	Queue int
	// Hook, when set, is told of each finished segment (action "record").
	Hook *hook.Client
	// Node is this origin's id, for the callback.
	Node string
}

// Recorder opens a Writer for each session of a matching stream.
type Recorder struct {
	cfg Config
	log *slog.Logger
	wg  sync.WaitGroup
}

// Wait returns once every writer has closed its files (after their sessions ended).
func (r *Recorder) Wait() { r.wg.Wait() }

// Check validates cfg without touching the disk. Errors name the setting.
func Check(cfg Config) error {
	_, err := cfg.checked()
	return err
}

func (cfg Config) checked() (Config, error) {
	if cfg.Dir == "" {
		return cfg, errors.New("--record-dir: required with --record")
	}
	for _, p := range cfg.Match {
		if _, err := path.Match(p, "a/b"); err != nil || strings.Count(p, "/") != 1 {
			return cfg, fmt.Errorf("--record %q: want an app/stream pattern such as live/* or */*", p)
		}
	}
	if cfg.Segment == 0 {
		cfg.Segment = 10 * time.Minute
	}
	if cfg.Segment < time.Second {
		return cfg, fmt.Errorf("--record-segment %s: must be at least 1s", cfg.Segment)
	}
	if cfg.Flush <= 0 {
		cfg.Flush = time.Second
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 8192
	}
	return cfg, nil
}

// New checks cfg and returns a Recorder, creating Dir when missing. Errors name the setting.
func New(cfg Config, log *slog.Logger) (*Recorder, error) {
	cfg, err := cfg.checked()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("--record-dir: %w", err)
	}
	return &Recorder{cfg: cfg, log: log}, nil
}

// Matches reports whether name is to be recorded.
func (r *Recorder) Matches(name stream.Name) bool {
	for _, p := range r.cfg.Match {
		if ok, _ := path.Match(p, string(name)); ok {
			return true
		}
	}
	return false
}

// Open starts a writer for one session of name (session: its id, for the callback),
// or returns nil when name does not match.
func (r *Recorder) Open(name stream.Name, session string) *Writer {
	if !r.Matches(name) {
		return nil
	}
	w := &Writer{r: r, name: name, session: session, tags: make(chan flv.Tag, r.cfg.Queue),
		end: make(chan struct{}), Done: make(chan struct{})}
	active.Inc()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		w.run()
	}()
	return w
}

// Writer records one session. Tag and End are called by the session actor; run,
// on its own goroutine, owns the files.
type Writer struct {
	r       *Recorder
	name    stream.Name
	session string
	tags    chan flv.Tag
	end     chan struct{}
	endOnce atomic.Bool
	lost    atomic.Uint64
	// Done is closed when the writer has closed its last file.
	Done chan struct{}

	// ---- run's state ----
	meta, videoHdr, audioHdr flv.Tag
	hasVideo, hasAudio       bool
	seg                      *segment
	failed                   bool
}

// segment is one open file.
type segment struct {
	path       string
	f          *os.File
	bw         *bufio.Writer
	durationAt int64  // file offset of the metadata's duration value
	base       uint32 // publisher timestamp of the first media tag
	last       uint32 // last publisher timestamp written
	opened     time.Time
	bytes      uint64
}

// Tag queues one tag; when the writer has fallen a whole queue behind, the tag is
// dropped and counted rather than delaying the live stream.
func (w *Writer) Tag(t flv.Tag) {
	select {
	case w.tags <- t:
	default:
		w.lost.Add(1)
		dropped.Inc()
	}
}

// End closes the current segment once queued tags are written. It does not wait.
func (w *Writer) End() {
	if w.endOnce.CompareAndSwap(false, true) {
		close(w.end)
	}
}

func (w *Writer) run() {
	defer close(w.Done)
	defer active.Dec()
	flush := time.NewTicker(w.r.cfg.Flush)
	defer flush.Stop()
	for {
		select {
		case t := <-w.tags:
			w.write(t)
		case <-flush.C:
			if w.seg != nil && !w.failed {
				if err := w.seg.bw.Flush(); err != nil {
					w.fail(err)
				}
			}
		case <-w.end:
		queued:
			for {
				select {
				case t := <-w.tags:
					w.write(t)
				default:
					break queued
				}
			}
			w.closeSegment()
			if n := w.lost.Load(); n > 0 {
				w.r.log.Warn("recording missed tags: the disk fell behind", "stream", w.name, "tags", n)
			}
			return
		}
	}
}

// write takes one tag: headers are kept for the next segment's start; media is
// written, starting a new segment at a keyframe when the current one is long enough.
func (w *Writer) write(t flv.Tag) {
	if w.failed {
		return
	}
	kind := flv.Classify(t.Type(), t.Body())
	switch t.Type() {
	case flv.TypeVideo:
		w.hasVideo = true
	case flv.TypeAudio:
		w.hasAudio = true
	}
	switch kind {
	case flv.KindMetadata:
		w.meta = t
		if md, err := flv.ParseMetadata(t.Body()); err == nil {
			w.hasVideo = w.hasVideo || md.HasVideo()
			w.hasAudio = w.hasAudio || md.HasAudio()
		}
		return // a segment's metadata is written when it opens
	case flv.KindVideoHeader:
		w.videoHdr = t
	case flv.KindAudioHeader:
		w.audioHdr = t
	}
	header := kind == flv.KindVideoHeader || kind == flv.KindAudioHeader
	if w.seg == nil {
		if header {
			return // written when a segment opens
		}
		// A segment starts at a keyframe (or at any audio tag of an audio-only stream).
		if !(kind == flv.KindKeyframe || (!w.hasVideo && t.Type() == flv.TypeAudio)) {
			return
		}
		if err := w.open(t.Timestamp()); err != nil {
			w.fail(err)
			return
		}
	} else if !header && w.splitAt(kind, t) {
		w.closeSegment()
		if err := w.open(t.Timestamp()); err != nil {
			w.fail(err)
			return
		}
	}
	if header {
		w.put(t.Type(), 0, t.Body()) // a codec change mid-segment
		return
	}
	w.put(t.Type(), w.seg.rel(t.Timestamp()), t.Body())
	w.seg.last = t.Timestamp()
}

// splitAt reports whether t begins the next segment.
func (w *Writer) splitAt(kind flv.Kind, t flv.Tag) bool {
	if time.Duration(w.seg.rel(t.Timestamp()))*time.Millisecond < w.r.cfg.Segment {
		return false
	}
	return kind == flv.KindKeyframe || (!w.hasVideo && t.Type() == flv.TypeAudio)
}

// rel is a publisher timestamp relative to the segment's first media tag.
func (s *segment) rel(ts uint32) uint32 {
	if d := int32(ts - s.base); d > 0 {
		return uint32(d)
	}
	return 0
}

// open starts a segment whose first media tag has timestamp base: header,
// metadata (duration to be patched), sequence headers.
func (w *Writer) open(base uint32) error {
	now := time.Now().UTC()
	dir := filepath.Join(w.r.cfg.Dir, w.name.App(), w.name.Stream())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	stamp := now.Format("20060102T150405.000Z")
	var f *os.File
	var p string
	var err error
	for i := 0; i < 100; i++ {
		p = filepath.Join(dir, stamp+".flv")
		if i > 0 {
			p = filepath.Join(dir, fmt.Sprintf("%s-%d.flv", stamp, i))
		}
		f, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if !errors.Is(err, os.ErrExist) {
			break
		}
	}
	if err != nil {
		return err
	}
	s := &segment{path: p, f: f, bw: bufio.NewWriterSize(f, 256<<10), base: base, last: base, opened: now}
	w.seg = s
	w.put(0, 0, nil) // the file header
	var md flv.Metadata
	if w.meta != nil {
		md, _ = flv.ParseMetadata(w.meta.Body())
	}
	body, at := metaBody(md)
	s.durationAt = int64(s.bytes) + flv.TagHeaderSize + int64(at)
	w.put(flv.TypeScript, 0, body)
	for _, h := range []flv.Tag{w.videoHdr, w.audioHdr} {
		if h != nil {
			w.put(h.Type(), 0, h.Body())
		}
	}
	w.r.log.Info("recording segment started", "stream", w.name, "path", p)
	return nil
}

// put writes one tag (typ 0: the file header) to the segment's buffer.
func (w *Writer) put(typ byte, ts uint32, body []byte) {
	s := w.seg
	if s == nil || w.failed {
		return
	}
	var err error
	if typ == 0 {
		hdr := flv.FileHeader(w.hasAudio || w.audioHdr != nil, w.hasVideo || w.videoHdr != nil)
		_, err = s.bw.Write(hdr)
		s.bytes += uint64(len(hdr))
	} else {
		var h [flv.TagHeaderSize]byte
		h[0] = typ
		n := len(body)
		h[1], h[2], h[3] = byte(n>>16), byte(n>>8), byte(n)
		h[4], h[5], h[6], h[7] = byte(ts>>16), byte(ts>>8), byte(ts), byte(ts>>24)
		var tr [flv.TrailerSize]byte
		binary.BigEndian.PutUint32(tr[:], uint32(flv.TagHeaderSize+n))
		if _, err = s.bw.Write(h[:]); err == nil {
			if _, err = s.bw.Write(body); err == nil {
				_, err = s.bw.Write(tr[:])
			}
		}
		s.bytes += uint64(flv.TagHeaderSize + n + flv.TrailerSize)
		bytesWritten.Add(float64(flv.TagHeaderSize + n + flv.TrailerSize))
	}
	if err != nil {
		w.fail(err)
	}
}

// closeSegment flushes the segment, patches its duration, closes it and announces it.
func (w *Writer) closeSegment() {
	s := w.seg
	if s == nil {
		return
	}
	w.seg = nil
	dur := float64(s.rel(s.last)) / 1000
	if !w.failed {
		err := s.bw.Flush()
		if err == nil {
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], math.Float64bits(dur))
			_, err = s.f.WriteAt(b[:], s.durationAt)
		}
		if err != nil {
			w.failed = true
			writeErrors.Inc()
			w.r.log.Error("recording stopped: write failed; the live stream goes on", "stream", w.name, "path", s.path, "err", err)
		}
	}
	if err := s.f.Close(); err != nil && !w.failed {
		w.failed = true
		writeErrors.Inc()
		w.r.log.Error("recording stopped: close failed; the live stream goes on", "stream", w.name, "path", s.path, "err", err)
	}
	if w.failed {
		return
	}
	segments.Inc()
	w.r.log.Info("recording segment finished", "stream", w.name, "path", s.path, "duration_s", dur, "bytes", s.bytes)
	if h := w.r.cfg.Hook; h != nil {
		ev := hook.Event{Action: hook.Record, App: w.name.App(), Stream: w.name.Stream(), Node: w.r.cfg.Node,
			Session: w.session, Path: s.path}
		b := s.bytes
		ev.DurationS, ev.Bytes = &dur, &b
		h.Notify(ev)
	}
}

// fail stops the recording of this session after a write error: the file keeps
// what reached it (a valid FLV up to its last whole tag, at worst a truncated one).
func (w *Writer) fail(err error) {
	if w.failed {
		return
	}
	w.failed = true
	writeErrors.Inc()
	p := ""
	if w.seg != nil {
		p = w.seg.path
		_ = w.seg.f.Close()
		w.seg = nil
	}
	w.r.log.Error("recording stopped: write failed; the live stream goes on", "stream", w.name, "path", p, "err", err)
}
