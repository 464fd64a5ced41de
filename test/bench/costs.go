package main

// The cost model: what each dimension of a cluster costs, measured on processes of
// its own (a fresh nats-server, redis-server and origin with no file sources, so
// that nothing else moves their CPU): ingest (S publishers into one origin), idle
// streams lingering at an edge, viewers spread over streams against one stream,
// and one stream pulled by E edges.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// ingestRow is one ingest step: S publishers into one origin.
type ingestRow struct {
	Publishers    int     `json:"publishers"`
	IngestMbps    float64 `json:"ingest_mbps"`
	OriginCPUs    float64 `json:"origin_cpus"`
	OriginMsPerS  float64 `json:"origin_ms_per_publisher_s"`
	OriginMsPerMb float64 `json:"origin_ms_per_mbit"`
	OriginRSSMB   float64 `json:"origin_rss_mb"`
	RSSPerPubMB   float64 `json:"origin_rss_per_publisher_mb"`
	NATSCPUs      float64 `json:"nats_cpus"`
	NATSMsPerMb   float64 `json:"nats_ms_per_mbit"`
	PublisherCPUs float64 `json:"publishers_cpus"`
	HostBusy      float64 `json:"host_busy"`
	MaxLateMs     float64 `json:"max_late_ms"`
}

// idleRow is streams lingering at an edge with no viewers.
type idleRow struct {
	Streams      int     `json:"streams"`
	EdgeCPUs     float64 `json:"edge_cpus"`
	MsPerStreamS float64 `json:"edge_ms_per_stream_s"`
	RSSPerStream float64 `json:"edge_rss_per_stream_mb"`
	HeapPerStrm  float64 `json:"edge_heap_per_stream_mb"`
	LingeredS    float64 `json:"lingered_s"`
	HostBusy     float64 `json:"host_busy"`
}

// spreadRow is N viewers on one edge, over one stream or several.
type spreadRow struct {
	Streams   int     `json:"streams"`
	PerStream int     `json:"viewers_per_stream"`
	Viewers   int     `json:"viewers"`
	EdgeMsVS  float64 `json:"edge_ms_per_viewer_s"`
	WindowMs  float64 `json:"window_ms"`
	HostBusy  float64 `json:"host_busy"`
	Refused   int     `json:"refused"`
	EndedEarl int     `json:"ended_early"`
}

// fanoutRow is one stream pulled by E edges.
type fanoutRow struct {
	Edges         int     `json:"edges"`
	ViewersPer    int     `json:"viewers_per_edge"`
	OriginCPUs    float64 `json:"origin_cpus"`
	NATSCPUs      float64 `json:"nats_cpus"`
	NATSOutPerEdg float64 `json:"nats_out_mbps_per_edge"`
	EdgeCPUs      float64 `json:"edge_cpus_each"`
	HostBusy      float64 `json:"host_busy"`
}

// costs is the cost model's results.
type costs struct {
	Ingest      []ingestRow `json:"ingest"`
	IngestLimit string      `json:"ingest_limit,omitempty"`
	Idle        *idleRow    `json:"idle,omitempty"`
	Spread      []spreadRow `json:"spread"`
	Fanout      []fanoutRow `json:"fanout"`
}

// runCosts measures the cost model on a world of its own, after the viewer steps.
func runCosts(ctx context.Context, main *world) (*costs, error) {
	cfg := *main.cfg
	cfg.coldStreams = 0
	w := &world{cfg: &cfg, root: main.root, self: main.self, originBin: main.originBin, edgeBin: main.edgeBin,
		media: main.media, noMain: true}
	var err error
	if w.tmp, err = os.MkdirTemp("", "flvcdn-bench-costs-"); err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(w.tmp)
	defer w.stopAll()
	if cfg.nats != "external" {
		return nil, fmt.Errorf("the cost model needs --nats=external (it meters the NATS server)")
	}
	w.logf("cost model: fresh nats-server, registry and origin")
	if err := w.startBackends(ctx); err != nil {
		return nil, err
	}
	var pubs []*publisher
	defer func() {
		for _, p := range pubs {
			p.stop()
		}
	}()
	out := &costs{}
	originMetrics := "http://" + w.originAPI + "/metrics"
	base, _, err := settledMemory(ctx, originMetrics, w.originP.PID())
	if err != nil {
		return nil, err
	}
	rate := w.media.bitrate / 1e6
	for _, s := range cfg.ingest {
		for len(pubs) < s {
			p, err := startLoadPublisher(ctx, w.rtmpAddr, app, fmt.Sprintf("s%d", len(pubs)), w.media)
			if err != nil {
				return nil, fmt.Errorf("ingest: publisher %d: %w", len(pubs)+1, err)
			}
			pubs = append(pubs, p)
		}
		w.logf("cost model: ingest, %d publishers", s)
		if err := sleep(ctx, cfg.costSettle); err != nil {
			return nil, err
		}
		for _, p := range pubs {
			p.late.Store(0)
		}
		used, wall, busy, err := cpuFor(ctx, w.cfg.costDuration, w.originP.PID(), w.natsP.PID(), os.Getpid())
		if err != nil {
			return nil, err
		}
		for _, p := range pubs {
			if err := p.err(); err != nil {
				return nil, fmt.Errorf("ingest with %d publishers: %w", s, err)
			}
		}
		mem, _, err := settledMemory(ctx, originMetrics, w.originP.PID())
		if err != nil {
			return nil, err
		}
		late := time.Duration(0)
		for _, p := range pubs {
			late = max(late, time.Duration(p.late.Load()))
		}
		r := ingestRow{Publishers: s, IngestMbps: float64(s) * rate, HostBusy: busy,
			OriginCPUs: used[0].Seconds() / wall.Seconds(), NATSCPUs: used[1].Seconds() / wall.Seconds(),
			PublisherCPUs: used[2].Seconds() / wall.Seconds(), OriginRSSMB: mb(mem.rss),
			RSSPerPubMB: mb(mem.rss-base.rss) / float64(s), MaxLateMs: ms64(late)}
		r.OriginMsPerS = r.OriginCPUs * 1000 / float64(s)
		r.OriginMsPerMb = r.OriginCPUs * 1000 / r.IngestMbps
		r.NATSMsPerMb = r.NATSCPUs * 1000 / r.IngestMbps
		out.Ingest = append(out.Ingest, r)
		if late > time.Second {
			out.IngestLimit = fmt.Sprintf("at %d publishers they fell %s behind real time (host %.0f%% busy, the publishers in this process %.2f CPUs): this machine's CPUs, not the origin, set the limit; larger S was not run", s, late.Round(time.Millisecond), busy*100, r.PublisherCPUs)
			break
		}
	}
	printIngest(out)

	if len(pubs) > 0 {
		if out.Idle, err = w.idleCost(ctx, len(pubs)); err != nil {
			return nil, err
		}
		printIdle(out.Idle, float64(len(w.media.tags))*1000/float64(w.media.loopMS))
	}
	keep := func(n int) { // fewer publishers: the rest would only load the host
		n = min(n, len(pubs))
		for _, p := range pubs[n:] {
			p.stop()
		}
		pubs = pubs[:n]
	}
	keep(cfg.spreadStreams)
	if cfg.spreadStreams > 1 && len(pubs) >= cfg.spreadStreams {
		for _, k := range []int{cfg.spreadStreams, 1} {
			r, err := w.spread(ctx, k, cfg.spreadStreams*cfg.spreadViewers/k)
			if err != nil {
				return nil, err
			}
			out.Spread = append(out.Spread, *r)
		}
		printSpread(out.Spread)
	}
	keep(1)
	if len(pubs) == 1 {
		if out.Fanout, err = w.fanout(ctx); err != nil {
			return nil, err
		}
		printFanout(out.Fanout)
	}
	return out, nil
}

// startBareEdge starts an edge with no viewer.
func (w *world) startBareEdge(ctx context.Context, linger time.Duration) (*edgeRun, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.edges++
	id := w.edges
	w.mu.Unlock()
	args := []string{"--nats-url", w.natsURL, "--http-addr", addr, "--id", fmt.Sprintf("bench-cost-edge-%d", id),
		"--linger", linger.String(), "--drain-grace", "500ms", "--log-level", "warn"}
	if w.redisURL != "" {
		args = append(args, "--redis-url", w.redisURL)
	}
	p, err := w.start(fmt.Sprintf("flvcdn-edge#%d", id), w.edgeBin, args...)
	if err != nil {
		return nil, err
	}
	e := &edgeRun{p: p, addr: addr}
	if err := waitReady(ctx, p, 20*time.Second, httpOK(e.url("/readyz"))); err != nil {
		e.stop()
		return nil, err
	}
	return e, nil
}

// idleCost: an edge that pulled each of n streams for one viewer, which left: the
// streams linger. Their CPU and memory are what an edge pays for idle streams.
func (w *world) idleCost(ctx context.Context, n int) (*idleRow, error) {
	w.logf("cost model: %d idle (lingering) streams at an edge", n)
	e, err := w.startBareEdge(ctx, 30*time.Minute)
	if err != nil {
		return nil, err
	}
	defer e.stop()
	base, _, err := e.settledMemory(ctx)
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := firstKeyframe(ctx, e.addr, fmt.Sprintf("/%s/s%d.flv", app, i), 10*time.Second); err != nil {
				errs <- fmt.Errorf("idle: stream s%d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	joined := time.Now()
	if err := waitReady(ctx, e.p, 30*time.Second, func() error {
		m, err := scrape(e.url("/metrics"))
		if err != nil {
			return err
		}
		if m["flvcdn_edge_viewers"] != 0 || int(m["flvcdn_edge_streams"]) != n {
			return fmt.Errorf("%v viewers, %v streams", m["flvcdn_edge_viewers"], m["flvcdn_edge_streams"])
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("idle: streams not lingering: %w", err)
	}
	if err := sleep(ctx, w.cfg.costSettle); err != nil {
		return nil, err
	}
	used, wall, busy, err := cpuFor(ctx, w.cfg.costDuration, e.p.PID())
	if err != nil {
		return nil, err
	}
	mem, _, err := e.settledMemory(ctx)
	if err != nil {
		return nil, err
	}
	cpus := used[0].Seconds() / wall.Seconds()
	return &idleRow{Streams: n, EdgeCPUs: cpus, MsPerStreamS: cpus * 1000 / float64(n),
		RSSPerStream: mb(mem.rss-base.rss) / float64(n), HeapPerStrm: mb(mem.heap-base.heap) / float64(n),
		LingeredS: time.Since(joined).Seconds(), HostBusy: busy}, nil
}

// spread measures k streams × per viewers on one edge.
func (w *world) spread(ctx context.Context, k, per int) (*spreadRow, error) {
	w.logf("cost model: %d stream(s) x %d viewers on one edge", k, per)
	e, err := w.startBareEdge(ctx, time.Second)
	if err != nil {
		return nil, err
	}
	defer e.stop()
	var crowds []*crowd
	defer func() {
		for _, c := range crowds {
			c.stop()
		}
	}()
	for i := range k {
		c := newCrowd(e.addr, fmt.Sprintf("/%s/s%d.flv", app, i), nil, nil)
		crowds = append(crowds, c)
		c.connect(ctx, per, 0, w.cfg.connectPar)
	}
	if err := sleep(ctx, w.cfg.warmup); err != nil {
		return nil, err
	}
	used, wall, busy, err := cpuFor(ctx, w.cfg.costDuration, e.p.PID())
	if err != nil {
		return nil, err
	}
	r := &spreadRow{Streams: k, PerStream: per, HostBusy: busy}
	for _, c := range crowds {
		ref, early := c.failures()
		nr, _ := summarize(ref)
		ne, _ := summarize(early)
		r.Refused += nr
		r.EndedEarl += ne
	}
	r.Viewers = k*per - r.Refused
	r.EdgeMsVS = cpuPerViewer(used[0], r.Viewers, wall)
	if mt, err := scrape(e.url("/metrics")); err == nil {
		r.WindowMs = mt["flvcdn_edge_merge_window_seconds"] * 1000
	}
	return r, nil
}

// fanout pulls one stream (s0) with E edges, a few viewers each.
func (w *world) fanout(ctx context.Context) ([]fanoutRow, error) {
	const per = 5
	var edges []*edgeRun
	var crowds []*crowd
	defer func() {
		for _, c := range crowds {
			c.stop()
		}
		for _, e := range edges {
			e.stop()
		}
	}()
	var rows []fanoutRow
	for _, n := range w.cfg.fanout {
		for len(edges) < n {
			e, err := w.startBareEdge(ctx, time.Second)
			if err != nil {
				return nil, err
			}
			edges = append(edges, e)
			c := newCrowd(e.addr, "/"+app+"/s0.flv", nil, nil)
			crowds = append(crowds, c)
			c.connect(ctx, per, 0, per)
		}
		w.logf("cost model: one stream pulled by %d edge(s)", n)
		if err := sleep(ctx, w.cfg.costSettle); err != nil {
			return nil, err
		}
		pids := []int{w.originP.PID(), w.natsP.PID()}
		for _, e := range edges {
			pids = append(pids, e.p.PID())
		}
		out0, err := natsOutBytes(w.natsMon)
		if err != nil {
			return nil, err
		}
		used, wall, busy, err := cpuFor(ctx, w.cfg.costDuration, pids...)
		if err != nil {
			return nil, err
		}
		out1, err := natsOutBytes(w.natsMon)
		if err != nil {
			return nil, err
		}
		r := fanoutRow{Edges: n, ViewersPer: per, HostBusy: busy,
			OriginCPUs: used[0].Seconds() / wall.Seconds(), NATSCPUs: used[1].Seconds() / wall.Seconds(),
			NATSOutPerEdg: float64(out1-out0) * 8 / 1e6 / wall.Seconds() / float64(n)}
		for _, u := range used[2:] {
			r.EdgeCPUs += u.Seconds() / wall.Seconds() / float64(n)
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// natsOutBytes reads out_bytes from nats-server's /varz.
func natsOutBytes(mon string) (int64, error) {
	resp, err := httpc.Get("http://" + mon + "/varz")
	if err != nil {
		return 0, fmt.Errorf("nats varz: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("nats varz: %s %v", resp.Status, err)
	}
	var v struct {
		OutBytes int64 `json:"out_bytes"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return 0, fmt.Errorf("nats varz: %w", err)
	}
	return v.OutBytes, nil
}

func ms64(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func printIngest(c *costs) {
	fmt.Println("== Cost model: ingest (S publishers at the bench media's bit rate into one origin; NATS has no subscribers) ==")
	tw := newTable("publishers\tingest Mbit/s\torigin CPUs\tms per publisher-s\tms per Mbit\torigin RSS MB\tRSS per publisher MB\tNATS CPUs\tNATS ms per Mbit\tpublishers (this process) CPUs\thost busy\tworst lateness")
	for _, r := range c.Ingest {
		tw.row("%d\t%.1f\t%.3f\t%.3f\t%.3f\t%.1f\t%.2f\t%.3f\t%.3f\t%.2f\t%.0f%%\t%.0f ms", r.Publishers, r.IngestMbps, r.OriginCPUs, r.OriginMsPerS,
			r.OriginMsPerMb, r.OriginRSSMB, r.RSSPerPubMB, r.NATSCPUs, r.NATSMsPerMb, r.PublisherCPUs, r.HostBusy*100, r.MaxLateMs)
	}
	tw.done()
	fmt.Println("  RSS per publisher = (origin RSS after forced GC - before any publisher) / S; lateness = how far the load publishers' sends fell behind their real-time schedule")
	if c.IngestLimit != "" {
		fmt.Println("  limit: " + c.IngestLimit)
	}
	fmt.Println()
}

func printIdle(r *idleRow, tagsPerSec float64) {
	fmt.Println("== Cost model: idle streams (pulled, no viewers, lingering) at one edge ==")
	tw := newTable("streams\tedge CPUs\tms per stream-s\tRSS per stream MB\theap per stream MB\tlingering for\thost busy")
	tw.row("%d\t%.3f\t%.3f\t%.2f\t%.2f\t%.0f s\t%.0f%%", r.Streams, r.EdgeCPUs, r.MsPerStreamS, r.RSSPerStream, r.HeapPerStrm, r.LingeredS, r.HostBusy*100)
	tw.done()
	fmt.Printf("  memory per stream grows while it lingers until its ring of %d tags is full (about %.0f s of this media), then stays\n\n", edgeRing, float64(edgeRing)/tagsPerSec)
}

func printSpread(rows []spreadRow) {
	fmt.Println("== Cost model: viewers over several streams against one stream, same edge and total ==")
	tw := newTable("streams x viewers\tedge ms per viewer-s\tmerge window\trefused\tended early\thost busy")
	for _, r := range rows {
		tw.row("%d x %d\t%.3f\t%.1f ms\t%d\t%d\t%.0f%%", r.Streams, r.PerStream, r.EdgeMsVS, r.WindowMs, r.Refused, r.EndedEarl, r.HostBusy*100)
	}
	tw.done()
	fmt.Println()
}

func printFanout(rows []fanoutRow) {
	fmt.Println("== Cost model: one stream pulled by E edges (5 viewers each) ==")
	tw := newTable("edges\torigin CPUs\tNATS CPUs\tNATS out per edge Mbit/s\tCPUs per edge\thost busy")
	for _, r := range rows {
		tw.row("%d\t%.3f\t%.3f\t%.2f\t%.3f\t%.0f%%", r.Edges, r.OriginCPUs, r.NATSCPUs, r.NATSOutPerEdg, r.EdgeCPUs, r.HostBusy*100)
	}
	tw.done()
	fmt.Println()
}

// table is a right-aligned text table.
type table struct {
	b    strings.Builder
	rows [][]string
}

func newTable(header string) *table {
	t := &table{}
	t.rows = append(t.rows, strings.Split(header, "\t"))
	return t
}

func (t *table) row(format string, args ...any) {
	t.rows = append(t.rows, strings.Split(fmt.Sprintf(format, args...), "\t"))
}

func (t *table) done() {
	widths := []int{}
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], len([]rune(c)))
		}
	}
	for _, r := range t.rows {
		cells := slices.Clone(r)
		for i, c := range cells {
			cells[i] = strings.Repeat(" ", widths[i]-len([]rune(c))) + c
		}
		fmt.Println(strings.Join(cells, "  "))
	}
}

// cpuFor meters the CPU of pids over one window of d.
func cpuFor(ctx context.Context, d time.Duration, pids ...int) (used []time.Duration, wall time.Duration, busy float64, err error) {
	m, err := startCPU(pids...)
	if err != nil {
		return nil, 0, 0, err
	}
	if err := sleep(ctx, d); err != nil {
		return nil, 0, 0, err
	}
	return m.stop()
}
