package cluster

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/origin"
)

// Bus is the part of the bus the view needs (bus.Cluster implements it).
type Bus interface {
	Report(data []byte) error
	Reports(f func(data []byte)) (stop func(), err error)
}

// Run publishes this node's report every Interval, and adds everyone's reports
// (this node's included) to view, until ctx ends. report builds the current report.
func Run(ctx context.Context, b Bus, view *View, report func(now time.Time) Report, log *slog.Logger) error {
	stop, err := b.Reports(func(data []byte) {
		var r Report
		if err := json.Unmarshal(data, &r); err != nil {
			log.Debug("cluster: bad report", "err", err)
			return
		}
		view.Add(r)
	})
	if err != nil {
		return err
	}
	defer stop()
	t := time.NewTicker(Interval)
	defer t.Stop()
	for {
		data, err := json.Marshal(report(time.Now()))
		if err == nil {
			err = b.Report(data)
		}
		if err != nil {
			log.Debug("cluster: report not sent", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// rate turns a growing counter into a per-second rate between two calls.
type rate struct {
	last uint64
	at   time.Time
}

func (r *rate) per(now time.Time, v uint64) float64 {
	var out float64
	if !r.at.IsZero() && now.After(r.at) && v >= r.last {
		out = float64(v-r.last) / now.Sub(r.at).Seconds()
	}
	r.last, r.at = v, now
	return out
}

// OriginReport returns a report builder for an origin. It is called from one goroutine.
func OriginReport(id string, o *origin.Origin) func(now time.Time) Report {
	bySession := map[string]*rate{}
	return func(now time.Time) Report {
		r := Report{Node: Node{ID: id, Role: RoleOrigin, State: StateReady, Updated: now}}
		if o.Draining() {
			r.Node.State = StateDraining
		}
		seen := map[string]bool{}
		for _, s := range o.Sessions() {
			sr := bySession[s.Session]
			if sr == nil {
				sr = &rate{at: s.Started}
				bySession[s.Session] = sr
			}
			seen[s.Session] = true
			bps := sr.per(now, s.Bytes)
			r.Node.BytesOutPerS += bps
			r.Published = append(r.Published, Published{Name: string(s.Name), Started: s.Started,
				Video: s.Media.Video, Audio: s.Media.Audio, Tracks: s.Media.Tracks, BitrateKbps: bps * 8 / 1000})
		}
		for k := range bySession {
			if !seen[k] {
				delete(bySession, k)
			}
		}
		r.Node.Streams = len(r.Published)
		return r
	}
}

// EdgeReport returns a report builder for an edge. bytesOut is the server's count of
// bytes written to viewers; draining says whether the edge is shutting down.
func EdgeReport(id string, h *edge.Hub, bytesOut func() uint64, draining func() bool) func(now time.Time) Report {
	var out rate
	return func(now time.Time) Report {
		r := Report{Node: Node{ID: id, Role: RoleEdge, State: StateReady, Updated: now}}
		if draining() {
			r.Node.State = StateDraining
		}
		for _, s := range h.Stats() {
			r.Served = append(r.Served, Served{Name: string(s.Name), Viewers: s.Viewers})
			r.Node.Viewers += s.Viewers
		}
		r.Node.Streams = len(r.Served)
		r.Node.BytesOutPerS = out.per(now, bytesOut())
		return r
	}
}
