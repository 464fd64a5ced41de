package main

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Targets from the issues, stated for N=2000 (and for N=100: latency when light).
const (
	targetN          = 2000
	targetCPU        = 0.26 // ms of edge CPU per viewer-second
	targetLatP99     = 84 * time.Millisecond
	targetRatio      = 1.10
	targetRSS        = 16 << 10 // bytes per viewer
	targetLightN     = 100
	targetLightP99   = 15 * time.Millisecond
	targetWarmP99    = 50 * time.Millisecond
	targetColdP99    = 200 * time.Millisecond
	kib              = 1024.0
	notMeasured      = "n/a"
	targetsFootnote  = "targets are stated for N=2000; smaller N are marked against the same thresholds for reference"
	memoryFootnote   = "memory per viewer = (after the window - before viewers, when only the pilot was connected) / added viewers, each read after two GC cycles forced by scraping the edge's /metrics (so: live heap, and RSS at its steady state for GOGC=100); KB = 1024 bytes"
	latencyFootnote  = "added latency = kernel receive time (SO_TIMESTAMPNS) at a parsing viewer's socket - the moment the publisher handed that tag to go-rtmp; the edge hop starts at the tag's arrival at a NATS subscriber in this process (same clock)"
	rssFootnote      = "RSS moves by several MB with GC phase and heap overshoot whatever N is: per-viewer RSS is meaningful at large N only (heap and stacks are steadier)"
	otherFootnote    = "other = CPU used by processes outside this run (the machine may be shared); when the host is saturated, latency and CPU figures are contended"
	cpuFootnote      = "CPU = utime+stime from /proc/<pid>/stat over the window, per viewer-second"
	floorFootnote    = "floor = `bench floor`: same bytes, same merge window, same mix of viewers, non-blocking writev from one worker per CPU; nothing else. The edge is measured in two halves, before and after the floor's window"
	cpuSharedNotable = 0.9 // host busy share past which CPU figures are contended
)

func printSetup(c *config, w *world, nofile uint64) {
	fmt.Printf("flvcdn bench — %s\n", time.Now().Format(time.RFC3339))
	fmt.Printf("machine      %d CPUs, RLIMIT_NOFILE %d (inherited by children), all traffic on 127.0.0.1\n", numCPU, nofile)
	fmt.Printf("media        %s: 1280x720 30 fps H.264 + AAC, %.2f Mbit/s, %d tags per %d ms loop\n",
		w.media.path, w.media.bitrate/1e6, len(w.media.tags), w.media.loopMS)
	natsDesc := "external nats-server child (max_payload 8MB, JetStream on)"
	if c.nats == "embedded" {
		natsDesc = "origin --embedded-nats (max_payload 8MiB)"
	}
	fmt.Printf("path         RTMP publisher (test/publish/pub, this process) -> flvcdn-origin -> NATS: %s -> flvcdn-edge -> HTTP-FLV viewers (this process)\n", natsDesc)
	fmt.Printf("registry     %s\n", map[string]string{"redis": "redis-server child", "nats-kv": "JetStream KV on the NATS server"}[c.registry])
	fmt.Printf("steps        N=%s, merge window %s, warm-up %s, window %s, %d parsing viewers per step (one is the pilot)\n",
		joinInts(c.viewers), c.mergeWindow, c.warmup, c.duration, c.sampleViewers)
	if len(c.mergeWindows) > 0 {
		fmt.Printf("merge table  N=%d, windows %s\n", c.mwViewers, joinDurations(c.mergeWindows))
	}
	fmt.Printf("edge         --linger %s, defaults otherwise; a fresh edge per step, its ring filled before the baseline: %v\n\n", c.linger, c.fillRing)
}

func printFirstKeyframe(c *config, r *fkResult) {
	fmt.Println("== First keyframe for a new viewer (dial to the end of the first video keyframe tag) ==")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "stream\tsamples\tp50\tp99\tmax\ttarget p99\t\t")
	for _, row := range []struct {
		name   string
		d      []time.Duration
		target time.Duration
	}{{"warm (already pulled)", r.warm, targetWarmP99}, {"cold (first viewer: NATS pull + snapshot)", r.cold, targetColdP99}} {
		p50, p99, mx := pct(row.d, 50), pct(row.d, 99), pct(row.d, 100)
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t≤ %s\t%s\t\n", row.name, len(row.d), ms(p50), ms(p99), ms(mx), ms(row.target),
			mark(len(row.d) > 0 && p99 <= row.target))
	}
	tw.Flush()
	if r.notCold > 0 || len(r.errs) > 0 {
		_, why := summarize(r.errs)
		fmt.Printf("  discarded: %d samples on a stream the edge was still pulling; errors: %s\n", r.notCold, ifs(why != "", why)+ifs(why == "", "none"))
	}
	fmt.Printf("  cold samples rotate over %d origin file sources with edge --linger %s; each is kept only if the edge's joins counter moved\n\n", c.coldStreams, c.linger)
}

func printStep(c *config, r *stepResult) {
	fmt.Printf("== N = %d viewers, merge window %s ==\n", r.n, windowDesc(r))
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tvalue\ttarget\t")
	edge, floor := cpuPerViewer(r.edgeCPU, r.connected, r.window), cpuPerViewer(r.floorCPU, r.floorN, r.floorWall)
	p50, p99 := pct(r.lat, 50), pct(r.lat, 99)
	fmt.Fprintf(tw, "edge CPU\t%.3f ms per viewer-second (%.2f CPU-s in %.1f s)\t≤ %.2f with p99 ≤ %s\t%s\n",
		edge, r.edgeCPU.Seconds(), r.window.Seconds(), targetCPU, ms(targetLatP99), mark(edge <= targetCPU && p99 <= targetLatP99 && len(r.lat) > 0))
	fmt.Fprintf(tw, "  in its two halves\t%.3f before the floor's window, %.3f after it\t\t\n", r.edgeHalves[0], r.edgeHalves[1])
	fmt.Fprintf(tw, "floor CPU\t%.3f ms per viewer-second (%.2f CPU-s in %.1f s)\t\t\n", floor, r.floorCPU.Seconds(), r.floorWall.Seconds())
	ratio := 0.0
	if floor > 0 {
		ratio = edge / floor
	}
	fmt.Fprintf(tw, "edge / floor\t%.2f\t≤ %.1f\t%s\n", ratio, targetRatio, mark(floor > 0 && ratio <= targetRatio))
	m := r.mem
	fmt.Fprintf(tw, "edge RSS per viewer\t%.1f KB (%.1f -> %.1f MB)\t≤ %d KB\t%s\n",
		m.rss/kib, mb(m.base.rss), mb(m.loaded.rss), targetRSS>>10, mark(m.rss <= targetRSS))
	fmt.Fprintf(tw, "edge Go heap_inuse per viewer\t%.1f KB (%.1f -> %.1f MB); stacks %.1f KB (%.1f -> %.1f MB)\t\t\n",
		m.heap/kib, mb(m.base.heap), mb(m.loaded.heap), m.stack/kib, mb(m.base.stack), mb(m.loaded.stack))
	fmt.Fprintf(tw, "added latency ingest -> viewer\tp50 %s, p99 %s, max %s (%d tags on %d viewers%s)\tp99 ≤ %s\t%s\n",
		ms(p50), ms(p99), ms(pct(r.lat, 100)), len(r.lat), r.parsers, ifs(r.unmatched > 0, fmt.Sprintf(", %d unmatched", r.unmatched)),
		ms(targetLatP99), mark(len(r.lat) > 0 && p99 <= targetLatP99))
	if len(r.hop) > 0 {
		fmt.Fprintf(tw, "  of which the edge (NATS -> viewer)\tp50 %s, p99 %s, max %s (same tags, from their arrival at a NATS subscriber)\t\t\n",
			ms(pct(r.hop, 50)), ms(pct(r.hop, 99)), ms(pct(r.hop, 100)))
	}
	dropped, desc := drops(r)
	fmt.Fprintf(tw, "viewers dropped\t%d (%s)\tnone\t%s\n", dropped, desc, mark(dropped == 0))
	fmt.Fprintf(tw, "received per viewer\t%.2f Mbit/s (stream %.2f); floor %.2f\t\t\n", r.bytesPerViewerSec*8/1e6, mediaRate/1e6, r.floorBytesPerSec*8/1e6)
	fmt.Fprintf(tw, "CPUs during edge window\t%s%s\t\t\n", r.edgeShare, ifs(r.hostBusy > cpuSharedNotable, " (saturated)"))
	fmt.Fprintf(tw, "CPUs during floor window\t%s\t\t\n", r.floorShr)
	fmt.Fprintf(tw, "connect\t%d viewers in %s\t\t\n", r.connected, r.connectTime.Round(time.Millisecond))
	tw.Flush()
	if r.perfData != "" {
		fmt.Printf("  perf profile of the edge over the window (%s; perf inflates this step's CPU):\n%s", r.perfData, r.perfSummary)
	}
	if r.floorPerfData != "" {
		fmt.Printf("  perf profile of the floor over its window (%s):\n%s", r.floorPerfData, r.floorPerfSummary)
	}
	fmt.Println()
}

// mediaRate is the bench media's bit rate, set once loaded (for the tables).
var mediaRate float64

func drops(r *stepResult) (int, string) {
	nRef, whyRef := summarize(r.refused)
	nEarly, whyEarly := summarize(r.early)
	total := int(r.edgeDrops) + nEarly + nRef
	parts := []string{fmt.Sprintf("edge metric %d", int(r.edgeDrops))}
	parts = append(parts, fmt.Sprintf("ended early %d%s", nEarly, ifs(nEarly > 0, ": "+whyEarly)))
	if nRef > 0 {
		parts = append(parts, fmt.Sprintf("refused %d: %s", nRef, whyRef))
	}
	if r.edgeSkips > 0 {
		parts = append(parts, fmt.Sprintf("skips %d", int(r.edgeSkips)))
	}
	if r.floorDrops > 0 {
		parts = append(parts, fmt.Sprintf("floor dropped %d", r.floorDrops))
	}
	return total, strings.Join(parts, "; ")
}

func printMergeWindows(c *config, results map[step]*stepResult) {
	if len(c.mergeWindows) == 0 {
		return
	}
	fmt.Printf("== Merge window: CPU against latency at N=%d ==\n", c.mwViewers)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "window\tedge ms/viewer-s\tfloor ms/viewer-s\tedge/floor\tlatency p50\tp99\tmax\tedge hop p50\tp99\tdropped\thost busy\tother CPUs\t")
	for _, w := range c.mergeWindows {
		r := results[step{c.mwViewers, w, true}]
		if r == nil {
			continue
		}
		edge, floor := cpuPerViewer(r.edgeCPU, r.connected, r.window), cpuPerViewer(r.floorCPU, r.floorN, r.floorWall)
		dropped, _ := drops(r)
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%d\t%.0f%%\t%.2f\t\n", w, edge, floor, edge/floor,
			ms(pct(r.lat, 50)), ms(pct(r.lat, 99)), ms(pct(r.lat, 100)), ms(pct(r.hop, 50)), ms(pct(r.hop, 99)), dropped, r.hostBusy*100, r.edgeShare.other())
	}
	tw.Flush()
	fmt.Println()
}

func printTargets(c *config, results map[step]*stepResult, fk *fkResult) {
	n := targetN
	if !slices.Contains(c.viewers, n) {
		n = slices.Max(c.viewers)
	}
	r := results[step{n, c.mergeWindow, false}]
	fmt.Printf("== Targets (at N=%d, adaptive merge window up to %s)%s ==\n", n, c.mergeWindow, ifs(n != targetN, " — this run has no N=2000 step: compared at its largest N"))
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "target\tmeasured\t\t")
	dropped, _ := drops(r)
	edge, floor := cpuPerViewer(r.edgeCPU, r.connected, r.window), cpuPerViewer(r.floorCPU, r.floorN, r.floorWall)
	p99 := pct(r.lat, 99)
	rss := r.mem.rss
	wp99, cp99 := pct(fk.warm, 99), pct(fk.cold, 99)
	rows := []struct {
		target, got string
		ok          bool
	}{
		{"no viewer dropped", fmt.Sprint(dropped), dropped == 0},
		{fmt.Sprintf("edge CPU ≤ %.2f ms per viewer-second", targetCPU), fmt.Sprintf("%.3f", edge), edge <= targetCPU},
		{fmt.Sprintf("  ... with added latency p99 ≤ %s", ms(targetLatP99)), ms(p99), len(r.lat) > 0 && p99 <= targetLatP99},
		{fmt.Sprintf("edge / floor CPU ≤ %.1f", targetRatio), fmt.Sprintf("%.2f", edge/floor), floor > 0 && edge/floor <= targetRatio},
		{fmt.Sprintf("edge RSS per viewer ≤ %d KB", targetRSS>>10), fmt.Sprintf("%.1f KB", rss/kib), rss <= targetRSS},
		{fmt.Sprintf("warm first keyframe p99 ≤ %s", ms(targetWarmP99)), ms(wp99), len(fk.warm) > 0 && wp99 <= targetWarmP99},
		{fmt.Sprintf("cold first keyframe p99 ≤ %s", ms(targetColdP99)), ms(cp99), len(fk.cold) > 0 && cp99 <= targetColdP99},
	}
	if light := results[step{targetLightN, c.mergeWindow, false}]; light != nil {
		lp99 := pct(light.lat, 99)
		rows = append(rows, struct {
			target, got string
			ok          bool
		}{fmt.Sprintf("N=%d: added latency p99 ≤ %s", targetLightN, ms(targetLightP99)), ms(lp99), len(light.lat) > 0 && lp99 <= targetLightP99})
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t\n", row.target, row.got, mark(row.ok))
	}
	tw.Flush()
	fmt.Println()
	for _, f := range []string{targetsFootnote, cpuFootnote, floorFootnote, memoryFootnote, rssFootnote, latencyFootnote, otherFootnote} {
		fmt.Println("  " + f)
	}
}

func cpuPerViewer(cpu time.Duration, n int, wall time.Duration) float64 {
	if n <= 0 || wall <= 0 {
		return 0
	}
	return cpu.Seconds() * 1000 / (float64(n) * wall.Seconds())
}

// pct is the nearest-rank percentile; p=100 is the maximum.
func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

func ms(d time.Duration) string {
	if d == 0 {
		return notMeasured
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func mb(b float64) float64 { return b / (1 << 20) }

func mark(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ",")
}

func joinDurations(v []time.Duration) string {
	s := make([]string, len(v))
	for i, d := range v {
		s[i] = d.String()
	}
	return strings.Join(s, ",")
}

// windowDesc says which merge window a step used: fixed, or the one the adaptive
// policy had chosen at the end of the measurement (edge and floor each).
func windowDesc(r *stepResult) string {
	if r.fixed {
		return fmt.Sprintf("fixed at %s", r.step.window)
	}
	const q = 100 * time.Microsecond
	return fmt.Sprintf("adaptive up to %s: edge at %s, floor at %s", r.step.window, r.chosen.Round(q), r.floorChosen.Round(q))
}
