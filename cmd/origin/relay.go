package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/flvcdn/flvcdn/pkg/cluster"
	"github.com/flvcdn/flvcdn/pkg/conf"
	"github.com/flvcdn/flvcdn/pkg/hook"
	"github.com/flvcdn/flvcdn/pkg/origin"
	"github.com/flvcdn/flvcdn/pkg/record"
	"github.com/flvcdn/flvcdn/pkg/relay"
)

// RelayConfig holds the relay and recording settings (issue 13).
type RelayConfig struct {
	Pull          conf.Multi
	PullMode      string
	PullLinger    time.Duration
	Push          conf.Multi
	PushLinger    time.Duration
	Record        conf.Multi
	RecordDir     string
	RecordSegment time.Duration
}

func (r *RelayConfig) register(fs *flag.FlagSet) {
	fs.Var(&r.Pull, "pull", "pull a stream from an upstream: app/stream=rtmp://host/app/name or =http://host/path.flv (repeatable)")
	fs.StringVar(&r.PullMode, "pull-mode", relay.ModeOnDemand, "on-demand: from the first viewer anywhere until --pull-linger after the last; always: while this origin is up")
	fs.DurationVar(&r.PullLinger, "pull-linger", 10*time.Second, "on-demand pulls stop this long after the edges last reported a viewer")
	fs.Var(&r.Push, "push", "forward streams this origin owns to another RTMP server: app/stream=rtmp://host/app/key or app/*=rtmp://host/app/{stream} (repeatable)")
	fs.DurationVar(&r.PushLinger, "push-linger", 10*time.Second, "keep a push connection this long after its publisher left, so a reconnecting publisher continues it")
	fs.Var(&r.Record, "record", "record streams matching this app/stream pattern, e.g. 'live/*' or '*/*' (repeatable)")
	fs.StringVar(&r.RecordDir, "record-dir", "", "directory of recordings: DIR/app/stream/<UTC start>.flv")
	fs.DurationVar(&r.RecordSegment, "record-segment", 10*time.Minute, "start a new recording file at the first keyframe after this long")
}

// check validates the settings without side effects, naming the wrong one.
func (r *RelayConfig) check() error {
	if _, err := r.pulls(); err != nil {
		return err
	}
	if err := relay.CheckMode(r.PullMode); err != nil {
		return err
	}
	if _, err := r.pushes(); err != nil {
		return err
	}
	if r.PullLinger < time.Second {
		return fmt.Errorf("--pull-linger %s: must be at least 1s", r.PullLinger)
	}
	if len(r.Record) == 0 {
		return nil
	}
	_, err := r.recorder("", nil, slog.New(slog.DiscardHandler), true)
	return err
}

// pulls parses every --pull, naming the one that is wrong.
func (r *RelayConfig) pulls() ([]relay.Pull, error) {
	var out []relay.Pull
	seen := map[string]bool{}
	for _, v := range r.Pull {
		p, err := relay.ParsePull(v)
		if err != nil {
			return nil, err
		}
		if seen[string(p.Name)] {
			return nil, fmt.Errorf("--pull %q: %s is pulled twice", v, p.Name)
		}
		seen[string(p.Name)] = true
		out = append(out, p)
	}
	return out, nil
}

// pushes parses every --push, naming the one that is wrong.
func (r *RelayConfig) pushes() ([]relay.Push, error) {
	var out []relay.Push
	for _, v := range r.Push {
		p, err := relay.ParsePush(v)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// pusher returns the Pusher of the --push settings (nil without any).
func (r *RelayConfig) pusher(ctx context.Context, log *slog.Logger) (*relay.Pusher, error) {
	pushes, err := r.pushes()
	if err != nil || len(pushes) == 0 {
		return nil, err
	}
	for _, p := range pushes {
		log.Info("pushing", "streams", p.Match, "target", p.Target)
	}
	return relay.NewPusher(ctx, relay.PushConfig{Pushes: pushes, Linger: r.PushLinger}, log), nil
}

// puller returns the Puller of the --pull streams (nil without any).
func (r *RelayConfig) puller(o *origin.Origin, reg relay.Lookup, view *cluster.View, log *slog.Logger) (*relay.Puller, error) {
	pulls, err := r.pulls()
	if err != nil || len(pulls) == 0 {
		return nil, err
	}
	for _, p := range pulls {
		log.Info("pulling", "stream", p.Name, "upstream", p.URL.Redacted(), "mode", r.PullMode)
	}
	return relay.NewPuller(relay.PullConfig{Pulls: pulls, Mode: r.PullMode, Linger: r.PullLinger}, o, reg, view.Demand, log), nil
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

// taps composes the session taps of recording and push.
func taps(rec *record.Recorder, push *relay.Pusher) origin.TapFactory {
	if rec == nil && push == nil {
		return nil
	}
	return func(s origin.SessionInfo) []origin.Tap {
		var out []origin.Tap
		if rec != nil {
			if w := rec.Open(s.Name, s.Session); w != nil {
				out = append(out, w)
			}
		}
		if push != nil {
			out = append(out, push.Open(s.Name)...)
		}
		return out
	}
}

// report adds push status to the origin's cluster reports.
func report(r func(time.Time) cluster.Report, push *relay.Pusher) func(time.Time) cluster.Report {
	if push == nil {
		return r
	}
	return cluster.WithPushes(r, push.Status)
}
