package main

import (
	"flag"
	"log/slog"
	"time"

	"github.com/flvcdn/flvcdn/pkg/conf"
	"github.com/flvcdn/flvcdn/pkg/hook"
	"github.com/flvcdn/flvcdn/pkg/origin"
	"github.com/flvcdn/flvcdn/pkg/record"
)

// RelayConfig holds the relay and recording settings (issue 13).
type RelayConfig struct {
	Record        conf.Multi
	RecordDir     string
	RecordSegment time.Duration
}

func (r *RelayConfig) register(fs *flag.FlagSet) {
	fs.Var(&r.Record, "record", "record streams matching this app/stream pattern, e.g. 'live/*' or '*/*' (repeatable)")
	fs.StringVar(&r.RecordDir, "record-dir", "", "directory of recordings: DIR/app/stream/<UTC start>.flv")
	fs.DurationVar(&r.RecordSegment, "record-segment", 10*time.Minute, "start a new recording file at the first keyframe after this long")
}

// check validates the settings without side effects, naming the wrong one.
func (r *RelayConfig) check() error {
	if len(r.Record) == 0 {
		return nil
	}
	_, err := r.recorder("", nil, slog.New(slog.DiscardHandler), true)
	return err
}

// recorder returns the Recorder (nil without --record). dryRun checks only.
func (r *RelayConfig) recorder(id string, hooks *hook.Client, log *slog.Logger, dryRun bool) (*record.Recorder, error) {
	if len(r.Record) == 0 {
		return nil, nil
	}
	cfg := record.Config{Dir: r.RecordDir, Match: r.Record, Segment: r.RecordSegment, Hook: hooks, Node: id}
	if dryRun {
		return nil, record.Check(cfg)
	}
	return record.New(cfg, log)
}

// taps composes the session taps of recording (and push).
func taps(rec *record.Recorder) origin.TapFactory {
	if rec == nil {
		return nil
	}
	return func(s origin.SessionInfo) []origin.Tap {
		var out []origin.Tap
		if w := rec.Open(s.Name, s.Session); w != nil {
			out = append(out, w)
		}
		return out
	}
}
