package main

// The run's figures as files: bench.json (every figure of the tables) and PNG plots
// drawn with gonum.org/v1/plot, for the README.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// stepJSON is one viewer step.
type stepJSON struct {
	Viewers       int     `json:"viewers"`
	Fixed         bool    `json:"fixed_window"`
	CeilingMs     float64 `json:"window_ceiling_ms"`
	WindowMs      float64 `json:"window_ms"`
	FloorWindowMs float64 `json:"floor_window_ms"`
	EdgeMsVS      float64 `json:"edge_ms_per_viewer_s"`
	// the edge's figure in each half of its window: before the floor's, after it
	EdgeHalves [2]float64 `json:"edge_ms_per_viewer_s_halves"`
	FloorMsVS  float64    `json:"floor_ms_per_viewer_s"`
	Ratio      float64    `json:"edge_over_floor"`
	RSSKB      float64    `json:"rss_kb_per_viewer"`
	HeapKB     float64    `json:"heap_kb_per_viewer"`
	StackKB    float64    `json:"stack_kb_per_viewer"`
	LatP50Ms   float64    `json:"latency_p50_ms"`
	LatP99Ms   float64    `json:"latency_p99_ms"`
	LatMaxMs   float64    `json:"latency_max_ms"`
	HopP99Ms   float64    `json:"edge_hop_p99_ms"`
	HostBusy   float64    `json:"host_busy"`
	OtherCPUs  float64    `json:"other_cpus"`
	Dropped    int        `json:"dropped"`
}

// benchJSON is bench.json.
type benchJSON struct {
	Time         string     `json:"time"`
	CPUs         int        `json:"cpus"`
	MediaMbps    float64    `json:"media_mbps"`
	Quick        bool       `json:"quick"`
	Steps        []stepJSON `json:"steps"`
	MergeWindows []stepJSON `json:"merge_windows"`
	WarmFKP99Ms  float64    `json:"first_keyframe_warm_p99_ms"`
	ColdFKP99Ms  float64    `json:"first_keyframe_cold_p99_ms"`
	Costs        *costs     `json:"costs,omitempty"`
}

func toJSON(r *stepResult) stepJSON {
	edge, floor := cpuPerViewer(r.edgeCPU, r.connected, r.window), cpuPerViewer(r.floorCPU, r.floorN, r.floorWall)
	dropped, _ := drops(r)
	s := stepJSON{Viewers: r.n, Fixed: r.fixed, CeilingMs: ms64(r.step.window), WindowMs: ms64(r.chosen), FloorWindowMs: ms64(r.floorChosen),
		EdgeMsVS: edge, EdgeHalves: r.edgeHalves, FloorMsVS: floor, RSSKB: r.mem.rss / kib, HeapKB: r.mem.heap / kib, StackKB: r.mem.stack / kib,
		LatP50Ms: ms64(pct(r.lat, 50)), LatP99Ms: ms64(pct(r.lat, 99)), LatMaxMs: ms64(pct(r.lat, 100)), HopP99Ms: ms64(pct(r.hop, 99)),
		HostBusy: r.hostBusy, OtherCPUs: r.edgeShare.other(), Dropped: dropped}
	if r.fixed {
		s.WindowMs, s.FloorWindowMs = ms64(r.step.window), ms64(r.step.window)
	}
	if floor > 0 {
		s.Ratio = edge / floor
	}
	return s
}

// writeOutputs writes bench.json and the plots into dir.
func writeOutputs(dir string, b *benchJSON) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("output dir: %w", err)
	}
	js, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("bench.json: %w", err)
	}
	files := []string{filepath.Join(dir, "bench.json")}
	if err := os.WriteFile(files[0], append(js, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("bench.json: %w", err)
	}
	var edge, floor, p50, p99, win plotter.XYs
	for _, s := range b.Steps {
		n := float64(s.Viewers)
		edge = append(edge, plotter.XY{X: n, Y: s.EdgeMsVS})
		floor = append(floor, plotter.XY{X: n, Y: s.FloorMsVS})
		p50 = append(p50, plotter.XY{X: n, Y: s.LatP50Ms})
		p99 = append(p99, plotter.XY{X: n, Y: s.LatP99Ms})
		win = append(win, plotter.XY{X: n, Y: s.WindowMs})
	}
	type chart struct {
		file, title, x, y string
		lines             []any
		legendLeft        bool // where the curves leave room
	}
	charts := []chart{
		{"cpu-per-viewer.png", "Edge CPU per viewer-second (adaptive merge window)", "viewers on one edge (one 2.5 Mbit/s stream)", "ms CPU per viewer-second",
			[]any{"edge", edge, "floor (same policy)", floor}, false},
		{"latency.png", "Ingest-to-viewer added latency", "viewers on one edge", "ms",
			[]any{"p99", p99, "p50", p50, "merge window chosen", win}, true},
	}
	if b.Costs != nil && len(b.Costs.Ingest) > 0 {
		var origin, nats plotter.XYs
		for _, r := range b.Costs.Ingest {
			s := float64(r.Publishers)
			origin = append(origin, plotter.XY{X: s, Y: r.OriginCPUs})
			nats = append(nats, plotter.XY{X: s, Y: r.NATSCPUs})
		}
		charts = append(charts, chart{"ingest.png", "Ingest cost: one origin, 2.5 Mbit/s publishers", "publishers", "CPUs",
			[]any{"origin", origin, "NATS server", nats}, true})
	}
	for _, c := range charts {
		if len(edge) == 0 && c.file != "ingest.png" {
			continue
		}
		p := plot.New()
		p.Title.Text = c.title
		p.X.Label.Text = c.x
		p.Y.Label.Text = c.y
		p.Y.Min = 0
		p.Add(plotter.NewGrid())
		if err := plotutil.AddLinePoints(p, c.lines...); err != nil {
			return files, fmt.Errorf("%s: %w", c.file, err)
		}
		p.Legend.Top = true
		p.Legend.Left = c.legendLeft
		path := filepath.Join(dir, c.file)
		if err := p.Save(7*vg.Inch, 4*vg.Inch, path); err != nil {
			return files, fmt.Errorf("%s: %w", c.file, err)
		}
		files = append(files, path)
	}
	return files, nil
}

func benchHeader(c *config, m *media) *benchJSON {
	return &benchJSON{Time: time.Now().UTC().Format(time.RFC3339), CPUs: numCPU, MediaMbps: m.bitrate / 1e6, Quick: c.quick}
}

// plotMain is `bench plot DIR`: it draws the plots again from DIR/bench.json.
func plotMain(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: bench plot DIR (the directory of a run's bench.json)")
	}
	js, err := os.ReadFile(filepath.Join(args[0], "bench.json"))
	if err != nil {
		return err
	}
	var b benchJSON
	if err := json.Unmarshal(js, &b); err != nil {
		return fmt.Errorf("bench.json: %w", err)
	}
	files, err := writeOutputs(args[0], &b)
	fmt.Println(strings.Join(files, "\n"))
	return err
}
