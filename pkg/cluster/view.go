// Package cluster owns the cluster-wide view that operators see: the report each
// node (origin or edge) publishes on the bus every interval, the View that every node
// assembles from everyone's reports, and the HTTP API (/api/v1/...) answered from it.
//
// Reports travel on the bus rather than through the registry: they are ephemeral
// figures, rewritten every second, that every node already has a connection to
// carry; the registry stays a small set of compare-and-set claims. A node that stops
// reporting vanishes from the view after MaxAge (three intervals), judged by the
// receiving node's own clock, so clock skew between pods does not matter.
//
// This package never touches media and never writes the registry.
package cluster

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
)

// Interval is how often a node reports; MaxAge is when a silent node is forgotten.
const (
	Interval = time.Second
	MaxAge   = 3 * Interval
)

// Roles and states of a node.
const (
	RoleOrigin    = "origin"
	RoleEdge      = "edge"
	StateReady    = "ready"
	StateDraining = "draining"
)

// Node is one origin or edge as GET /api/v1/nodes shows it.
type Node struct {
	ID    string `json:"id"`
	Role  string `json:"role"`
	State string `json:"state"`
	// Streams published (origin) or pulled (edge) there.
	Streams int `json:"streams"`
	// Viewers served (edges; 0 on origins).
	Viewers int `json:"viewers"`
	// BytesOutPerS: edges, FLV bytes written to viewers; origins, tag bytes
	// published on the bus (snapshots not counted). Averaged over one interval.
	BytesOutPerS float64   `json:"bytes_out_per_s"`
	Updated      time.Time `json:"updated"`
}

// Published is a stream as its origin reports it.
type Published struct {
	Name    string         `json:"name"`
	Started time.Time      `json:"started"`
	Video   *flv.VideoInfo `json:"video,omitempty"`
	Audio   *flv.AudioInfo `json:"audio,omitempty"`
	// Tracks: the video tracks of a multitrack (Enhanced RTMP v2) stream.
	Tracks      []flv.TrackInfo `json:"tracks,omitempty"`
	BitrateKbps float64         `json:"bitrate_kbps"`
	// Push lists where the origin forwards the stream (--push).
	Push []Push `json:"push,omitempty"`
}

// Served is a stream as an edge reports it.
type Served struct {
	Name    string `json:"name"`
	Viewers int    `json:"viewers"`
}

// Report is what one node publishes every Interval.
type Report struct {
	Node      Node        `json:"node"`
	Published []Published `json:"published,omitempty"`
	Served    []Served    `json:"served,omitempty"`
}

// Stream is one live stream across the cluster, as GET /api/v1/streams shows it.
type Stream struct {
	Name   string         `json:"name"`
	Origin string         `json:"origin"`
	Video  *flv.VideoInfo `json:"video"`
	Audio  *flv.AudioInfo `json:"audio"`
	// Tracks lists the video tracks of a multitrack stream (absent for one track):
	// id and codec; players pick one with ?vtrack=ID.
	Tracks        []flv.TrackInfo `json:"tracks,omitempty"`
	BitrateKbps   float64         `json:"bitrate_kbps"`
	UptimeS       float64         `json:"uptime_s"`
	Viewers       int             `json:"viewers"`
	ViewersByEdge map[string]int  `json:"viewers_by_edge"`
	// Push lists where the owning origin forwards the stream (--push), with status.
	Push []Push `json:"push,omitempty"`
}

// View is the latest report of every node (by role and id) heard from within MaxAge.
type View struct {
	now func() time.Time

	mu    sync.Mutex
	nodes map[string]heard
}

type heard struct {
	r  Report
	at time.Time // when this node received it
}

// NewView returns an empty view.
func NewView() *View { return &View{now: time.Now, nodes: map[string]heard{}} }

// Add keeps r as its node's latest report.
func (v *View) Add(r Report) {
	if r.Node.ID == "" {
		return
	}
	v.mu.Lock()
	// An origin and an edge may share an id (both default to the host name on a
	// laptop), so a node is its role and its id.
	v.nodes[r.Node.Role+"/"+r.Node.ID] = heard{r: r, at: v.now()}
	v.mu.Unlock()
}

// live returns the reports heard within MaxAge, dropping older ones.
func (v *View) live() []Report {
	now := v.now()
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]Report, 0, len(v.nodes))
	for id, h := range v.nodes {
		if now.Sub(h.at) > MaxAge {
			delete(v.nodes, id)
			continue
		}
		out = append(out, h.r)
	}
	return out
}

// Nodes lists every node heard from, origins first, then by id.
func (v *View) Nodes() []Node {
	reports := v.live()
	out := make([]Node, len(reports))
	for i, r := range reports {
		out[i] = r.Node
	}
	slices.SortFunc(out, func(a, b Node) int {
		if a.Role != b.Role {
			return strings.Compare(b.Role, a.Role) // "origin" before "edge"
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// Streams lists every live stream (one an origin reports) by name, with the
// viewers every edge reports for it.
func (v *View) Streams() []Stream {
	reports := v.live()
	now := v.now()
	byName := map[string]*Stream{}
	for _, r := range reports {
		for _, p := range r.Published {
			s := &Stream{Name: p.Name, Origin: r.Node.ID, Video: p.Video, Audio: p.Audio,
				Tracks: p.Tracks, BitrateKbps: p.BitrateKbps, UptimeS: now.Sub(p.Started).Round(time.Second).Seconds(),
				ViewersByEdge: map[string]int{}, Push: p.Push}
			// Two origins reporting one name (a takeover in progress): the newer session wins.
			if old := byName[p.Name]; old == nil || old.UptimeS > s.UptimeS {
				byName[p.Name] = s
			}
		}
	}
	for _, r := range reports {
		for _, sv := range r.Served {
			if s := byName[sv.Name]; s != nil && sv.Viewers > 0 {
				s.ViewersByEdge[r.Node.ID] += sv.Viewers
				s.Viewers += sv.Viewers
			}
		}
	}
	out := make([]Stream, 0, len(byName))
	for _, s := range byName {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b Stream) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Stream returns one live stream.
func (v *View) Stream(name string) (Stream, bool) {
	for _, s := range v.Streams() {
		if s.Name == name {
			return s, true
		}
	}
	return Stream{}, false
}
