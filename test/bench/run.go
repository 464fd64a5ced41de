package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/flvcdn/flvcdn/test/harness"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	app        = "bench"
	mainStream = "main"
	mainPath   = "/" + app + "/" + mainStream + ".flv"
	// edgeRing is the edge's tag ring (edge.Config.RingSize default): once the pilot
	// has seen this many tags the ring is full and stream memory stops growing.
	edgeRing = 4096
)

// world is the processes a run shares: NATS, the registry, the origin, the publisher.
type world struct {
	cfg       *config
	root, tmp string
	self      string // this binary, re-run as the floor
	originBin string
	edgeBin   string
	media     *media
	natsURL   string
	natsMon   string // nats-server monitoring address (external NATS only)
	noMain    bool   // the cost model's world: no main stream, publisher or probe
	redisURL  string
	rtmpAddr  string
	originAPI string
	pub       *publisher
	probe     *natsProbe
	natsP     *proc // nil with --nats=embedded
	originP   *proc
	logMu     sync.Mutex

	mu    sync.Mutex // guards procs and edges: edges start in the background
	procs []*proc
	edges int
}

func (w *world) logf(format string, args ...any) {
	w.logMu.Lock()
	defer w.logMu.Unlock()
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", now().Seconds(), fmt.Sprintf(format, args...))
}

func (w *world) debugf(format string, args ...any) {
	if w.cfg.verbose {
		w.logf(format, args...)
	}
}

func run(ctx context.Context, c *config) error {
	w := &world{cfg: c}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var err error
	if w.root, err = harness.RepoRoot(); err != nil {
		return err
	}
	nofile, err := raiseNoFile()
	if err != nil {
		return err
	}
	need := slices.Max(append(slices.Clone(c.viewers), c.mwViewers, c.transportN))*2 + 256
	if nofile < uint64(need) {
		return fmt.Errorf("RLIMIT_NOFILE hard limit %d is below the %d descriptors the largest step needs", nofile, need)
	}
	for _, tool := range []string{"go", "nats-server"} {
		if c.nats == "embedded" && tool == "nats-server" {
			continue
		}
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is needed: %w", tool, err)
		}
	}
	if c.registry == "redis" {
		if _, err := exec.LookPath("redis-server"); err != nil {
			return fmt.Errorf("redis-server is needed for --registry=redis (or use --registry=nats-kv): %w", err)
		}
	}
	if w.self, err = os.Executable(); err != nil {
		return fmt.Errorf("own executable: %w", err)
	}
	cache := c.cacheDir
	if !filepath.IsAbs(cache) {
		cache = filepath.Join(w.root, cache)
	}
	if w.media, err = ensureMedia(ctx, cache, w.logf); err != nil {
		return err
	}
	mediaRate = w.media.bitrate
	if w.tmp, err = os.MkdirTemp("", "flvcdn-bench-"); err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(w.tmp)
	defer w.stopAll()
	defer cancel() // first: no edge starts in the background while stopAll runs
	if err := w.build(ctx); err != nil {
		return err
	}
	if err := w.startBackends(ctx); err != nil {
		return err
	}
	printSetup(c, w, nofile)
	if c.transportsOnly {
		return w.runTransports(ctx)
	}

	perN, mw := plan(c)
	steps := append(slices.Clone(perN), mw...)
	results := map[step]*stepResult{}
	prepared := w.prepare(ctx, steps[0])
	fk, err := w.firstKeyframes(ctx)
	if err != nil {
		return err
	}
	printFirstKeyframe(c, fk)
	for i, st := range steps {
		e, err := prepared.wait(ctx)
		if err != nil {
			return err
		}
		if i+1 < len(steps) {
			prepared = w.prepare(ctx, steps[i+1])
		}
		r, err := w.runStep(ctx, e, st)
		if err != nil {
			return err
		}
		results[st] = r
		if i < len(perN) {
			printStep(c, r)
		}
	}
	printMergeWindows(c, results)
	printTargets(c, results, fk)
	if len(c.transports) > 0 {
		// The transport table's edges use this world's origin and publisher.
		if err := w.runTransports(ctx); err != nil {
			return err
		}
	}
	fmt.Println()

	out := benchHeader(c, w.media)
	for _, st := range perN {
		out.Steps = append(out.Steps, toJSON(results[st]))
	}
	for _, wd := range c.mergeWindows {
		if r := results[step{c.mwViewers, wd, true}]; r != nil {
			out.MergeWindows = append(out.MergeWindows, toJSON(r))
		}
	}
	out.WarmFKP99Ms, out.ColdFKP99Ms = ms64(pct(fk.warm, 99)), ms64(pct(fk.cold, 99))
	if c.costs {
		w.stopAll() // the cost model runs on processes of its own
		if out.Costs, err = runCosts(ctx, w); err != nil {
			return err
		}
	}
	dir := c.outDir
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(w.root, dir)
	}
	files, err := writeOutputs(dir, out)
	if err != nil {
		return err
	}
	fmt.Printf("written: %s\n", strings.Join(files, ", "))
	return nil
}

func (w *world) build(ctx context.Context) error {
	w.logf("building cmd/origin and cmd/edge")
	if err := harness.BuildBinaries(w.root, w.tmp, false); err != nil {
		return err
	}
	w.originBin, w.edgeBin = filepath.Join(w.tmp, "flvcdn-origin"), filepath.Join(w.tmp, "flvcdn-edge")
	return nil
}

// start starts a child process and keeps it for stopAll.
func (w *world) start(name, bin string, args ...string) (*proc, error) {
	return w.startOut(name, bin, args, nil)
}

func (w *world) startOut(name, bin string, args []string, stdout *tailBuffer) (*proc, error) {
	var out io.Writer
	if stdout != nil {
		out = stdout
	}
	p, err := startProc(name, bin, args, nil, out)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.procs = append(w.procs, p)
	w.mu.Unlock()
	return p, nil
}

// stopAll stops the publisher and every process still running, newest first.
func (w *world) stopAll() {
	w.pub.stop()
	w.probe.stop()
	w.mu.Lock()
	procs := slices.Clone(w.procs)
	w.mu.Unlock()
	for _, p := range slices.Backward(procs) {
		p.Stop(5 * time.Second)
	}
}

// startBackends starts NATS, the registry, the origin (with the cold streams as file
// sources) and the RTMP publisher of the main stream.
func (w *world) startBackends(ctx context.Context) error {
	natsAddr, err := freeAddr()
	if err != nil {
		return err
	}
	w.natsURL = "nats://" + natsAddr
	if w.cfg.nats == "external" {
		conf := filepath.Join(w.tmp, "nats.conf")
		host, port, _ := strings.Cut(natsAddr, ":")
		mon, err := freeAddr()
		if err != nil {
			return err
		}
		w.natsMon = mon
		text := fmt.Sprintf("host: %s\nport: %s\nhttp: %s\nmax_payload: 8MB\njetstream {\n  store_dir: %q\n}\n", host, port, mon, filepath.Join(w.tmp, "js"))
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return fmt.Errorf("nats config: %w", err)
		}
		p, err := w.start("nats-server", "nats-server", "-c", conf)
		if err != nil {
			return err
		}
		w.natsP = p
		if err := waitReady(ctx, p, 10*time.Second, dialCheck(natsAddr)); err != nil {
			return err
		}
	}
	if w.cfg.registry == "redis" {
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		_, port, _ := strings.Cut(addr, ":")
		p, err := w.start("redis-server", "redis-server", "--bind", "127.0.0.1", "--port", port,
			"--save", "", "--appendonly", "no", "--dir", w.tmp)
		if err != nil {
			return err
		}
		if err := waitReady(ctx, p, 10*time.Second, dialCheck(addr)); err != nil {
			return err
		}
		w.redisURL = "redis://" + addr + "/0"
	}
	rtmpAddr, err := freeAddr()
	if err != nil {
		return err
	}
	api, err := freeAddr()
	if err != nil {
		return err
	}
	w.rtmpAddr, w.originAPI = rtmpAddr, api
	args := []string{"--rtmp-addr", rtmpAddr, "--http-addr", api, "--id", "bench-origin",
		"--log-level", "warn", "--drain-grace", "1s"}
	if w.cfg.nats == "embedded" {
		args = append(args, "--embedded-nats", natsAddr)
	} else {
		args = append(args, "--nats-url", w.natsURL)
	}
	if w.redisURL != "" {
		args = append(args, "--redis-url", w.redisURL)
	}
	for k := range w.cfg.coldStreams {
		args = append(args, "--source", fmt.Sprintf("%s/c%d=%s", app, k, w.media.path))
	}
	p, err := w.start("flvcdn-origin", w.originBin, args...)
	if err != nil {
		return err
	}
	w.originP = p
	if err := waitReady(ctx, p, 20*time.Second, httpOK("http://"+api+"/readyz")); err != nil {
		return err
	}
	if w.noMain {
		return nil
	}
	if w.probe, err = startNATSProbe(w.natsURL, app+"/"+mainStream); err != nil {
		return err
	}
	w.logf("publishing %s over RTMP to %s", mainPath, rtmpAddr)
	if w.pub, err = startPublisher(ctx, rtmpAddr, app, mainStream, w.media); err != nil {
		return err
	}
	return nil
}

// edgeRun is one edge process with its pilot viewer (the first of its crowd).
type edgeRun struct {
	p      *proc
	addr   string
	window time.Duration
	crowd  *crowd
}

func (e *edgeRun) url(path string) string { return "http://" + e.addr + path }

func (e *edgeRun) stop() {
	if e == nil {
		return
	}
	if e.crowd != nil {
		e.crowd.stop()
	}
	e.p.Stop(5 * time.Second)
}

// startEdge starts an edge and connects its pilot: one viewer that parses tags,
// keeps the main stream pulled and tells when the ring is full. extra flags come last.
func (w *world) startEdge(ctx context.Context, window time.Duration, fixed bool, extra ...string) (*edgeRun, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.edges++
	id := w.edges
	w.mu.Unlock()
	args := []string{"--nats-url", w.natsURL, "--http-addr", addr, "--id", fmt.Sprintf("bench-edge-%d", id),
		"--linger", w.cfg.linger.String(), "--merge-window", window.String(), "--drain-grace", "500ms",
		"--log-level", "warn"}
	if w.redisURL != "" {
		args = append(args, "--redis-url", w.redisURL)
	}
	if fixed {
		args = append(args, "--fixed-merge-window")
	}
	args = append(args, extra...)
	p, err := w.start(fmt.Sprintf("flvcdn-edge#%d", id), w.edgeBin, args...)
	if err != nil {
		return nil, err
	}
	e := &edgeRun{p: p, addr: addr, window: window}
	if err := waitReady(ctx, p, 20*time.Second, httpOK(e.url("/readyz"))); err != nil {
		e.stop()
		return nil, err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		cr := newCrowd(addr, mainPath, w.pub.sent, w.probe.arrived)
		cr.connect(ctx, 1, 1, 1) // the pilot parses tags
		refused, _ := cr.failures()
		if len(refused) == 0 {
			e.crowd = cr
			return e, nil
		}
		cr.stop()
		if time.Now().After(deadline) || ctx.Err() != nil {
			e.stop()
			_, why := summarize(refused)
			return nil, fmt.Errorf("edge %s: pilot viewer refused: %s", addr, why)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// pending is an edge being prepared in the background.
type pending struct {
	done chan struct{}
	e    *edgeRun
	err  error
}

func (p *pending) wait(ctx context.Context) (*edgeRun, error) {
	select {
	case <-p.done:
		return p.e, p.err
	case <-ctx.Done():
		go func() { <-p.done; p.e.stop() }()
		return nil, ctx.Err()
	}
}

// prepare starts the edge of st now, so that its ring fills while the current step
// runs: memory measured before viewers then already holds a full ring.
func (w *world) prepare(ctx context.Context, st step) *pending {
	p := &pending{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		e, err := w.startEdge(ctx, st.window, st.fixed, w.cfg.edgeArgs...)
		if err != nil {
			p.err = err
			return
		}
		p.e = e
		if !w.cfg.fillRing {
			return
		}
		start := time.Now()
		for e.crowd.first().tags.Load() < edgeRing+16 {
			if err := e.p.Running(); err != nil {
				p.err = err
				return
			}
			if time.Since(start) > 3*time.Minute || ctx.Err() != nil {
				p.err = fmt.Errorf("edge for N=%d: ring not full after %s (pilot saw %d tags)", st.n, time.Since(start).Round(time.Second), e.crowd.first().tags.Load())
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
		w.debugf("edge for N=%d window %s: ring full after %s", st.n, st.window, time.Since(start).Round(time.Second))
	}()
	return p
}

// fkResult is the first-keyframe latency of new viewers.
type fkResult struct {
	warm, cold []time.Duration
	notCold    int
	errs       map[string]int
}

// firstKeyframes measures how long a new viewer waits for its first keyframe, on the
// main stream while it is pulled (warm) and on streams the edge is not pulling
// (cold: the viewer's request starts the NATS subscription and the snapshot). It
// uses an edge of its own so that its viewers leave nothing in the measured ones.
func (w *world) firstKeyframes(ctx context.Context) (*fkResult, error) {
	w.logf("first-keyframe latency: %d warm and %d cold samples", w.cfg.latencySamples, w.cfg.latencySamples)
	e, err := w.startEdge(ctx, w.cfg.mergeWindow, false)
	if err != nil {
		return nil, err
	}
	defer e.stop()
	r := &fkResult{errs: map[string]int{}}
	for k := range w.cfg.coldStreams {
		path := fmt.Sprintf("/%s/c%d.flv", app, k)
		if err := waitReady(ctx, e.p, 20*time.Second, headOK(e.url(path))); err != nil {
			return nil, fmt.Errorf("cold stream %s: %w", path, err)
		}
	}
	for len(r.warm) < w.cfg.latencySamples && ctx.Err() == nil {
		d, err := firstKeyframe(ctx, e.addr, mainPath, 5*time.Second)
		if err != nil {
			r.errs["warm: "+shortErr(err)]++
			if len(r.errs) > w.cfg.latencySamples {
				return nil, fmt.Errorf("warm first keyframe: %w", err)
			}
			continue
		}
		r.warm = append(r.warm, d)
		time.Sleep(time.Duration(50+rand.IntN(200)) * time.Millisecond) // not in step with the window
	}
	// A stream is cold again once the edge stopped pulling it: linger after its
	// viewer left, plus the window in which the edge notices the viewer is gone.
	cooldown := w.cfg.linger + 3*w.cfg.mergeWindow + 500*time.Millisecond
	lastClose := make([]time.Time, w.cfg.coldStreams)
	for i := 0; len(r.cold) < w.cfg.latencySamples && i < 3*w.cfg.latencySamples && ctx.Err() == nil; i++ {
		k := i % w.cfg.coldStreams
		if wait := time.Until(lastClose[k].Add(cooldown)); wait > 0 {
			time.Sleep(wait)
		}
		before, err := scrape(e.url("/metrics"))
		if err != nil {
			return nil, err
		}
		d, err := firstKeyframe(ctx, e.addr, fmt.Sprintf("/%s/c%d.flv", app, k), 5*time.Second)
		lastClose[k] = time.Now()
		if err != nil {
			r.errs["cold: "+shortErr(err)]++
			continue
		}
		after, err := scrape(e.url("/metrics"))
		if err != nil {
			return nil, err
		}
		if after["flvcdn_edge_joins_total"] <= before["flvcdn_edge_joins_total"] {
			r.notCold++ // the edge was still pulling it: not a cold sample
			continue
		}
		r.cold = append(r.cold, d)
	}
	return r, ctx.Err()
}

func headOK(url string) func() error {
	return func() error {
		resp, err := httpc.Head(url)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("HEAD %s: %s", url, resp.Status)
		}
		return nil
	}
}

// stepResult is what one step measured.
type stepResult struct {
	step
	connected   int
	connectTime time.Duration
	window      time.Duration // measured wall time
	chosen      time.Duration // the edge's merge window at the end of the window
	floorChosen time.Duration // the floor's

	edgeCPU   time.Duration
	floorCPU  time.Duration
	floorN    int
	floorWall time.Duration
	hostBusy  float64 // share of all CPUs busy during the edge window
	edgeShare cpuShare
	floorShr  cpuShare
	// edge CPU in ms per viewer-second in each half of its window (before and after the floor's)
	edgeHalves [2]float64

	mem memResult

	lat       []time.Duration
	hop       []time.Duration
	unmatched int
	parsers   int

	edgeDrops  float64
	edgeSkips  float64
	refused    map[string]int
	early      map[string]int
	floorDrops int
	floorEarly map[string]int
	floorRef   map[string]int

	bytesPerViewerSec float64
	floorBytesPerSec  float64
	perfData          string
	perfSummary       string
	floorPerfData     string
	floorPerfSummary  string
}

// memSample is one reading of the edge's memory.
type memSample struct {
	rss, heap, stack float64 // bytes
}

func (e *edgeRun) memory() (memSample, error) { return memoryOf(e.url("/metrics"), e.p.PID()) }

func memoryOf(metricsURL string, pid int) (memSample, error) {
	rss, err := procRSS(pid)
	if err != nil {
		return memSample{}, err
	}
	m, err := scrape(metricsURL)
	if err != nil {
		return memSample{}, err
	}
	return memSample{float64(rss), m["go_memstats_heap_inuse_bytes"], m["go_memstats_stack_inuse_bytes"]}, nil
}

// settledMemory reads the edge's memory in a reproducible state. Between GCs an
// edge's heap holds a varying amount of garbage (NATS messages evicted from the
// full ring, about the stream's bit rate), and RSS depends on how close the heap
// came to its GC goal. So before reading, garbage is made on the edge through its
// own /metrics endpoint (each scrape allocates some 150-200 KB) until two GC cycles
// have completed: the first sets the heap goal from what is live now, the second
// shows the heap has grown to that goal. Heap in use is then close to the live
// heap, and RSS to the steady state for this live heap (GOGC=100: about twice it).
func (e *edgeRun) settledMemory(ctx context.Context) (memSample, int, error) {
	return settledMemory(ctx, e.url("/metrics"), e.p.PID())
}

// settledMemory is edgeRun.settledMemory for any flvcdn process: its /metrics URL and PID.
func settledMemory(ctx context.Context, metricsURL string, pid int) (memSample, int, error) {
	m, err := scrape(metricsURL)
	if err != nil {
		return memSample{}, 0, err
	}
	start, scrapes := m["go_gc_duration_seconds_count"], 1
	deadline := time.Now().Add(2 * time.Minute)
	for m["go_gc_duration_seconds_count"] < start+2 {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return memSample{}, scrapes, fmt.Errorf("edge memory: no GC after %d scrapes of /metrics", scrapes)
		}
		if m, err = scrape(metricsURL); err != nil {
			return memSample{}, scrapes, err
		}
		scrapes++
	}
	if err := sleep(ctx, 300*time.Millisecond); err != nil { // let the sweep finish
		return memSample{}, scrapes, err
	}
	s, err := memoryOf(metricsURL, pid)
	return s, scrapes, err
}

// memResult is memory per added viewer, from settled readings.
type memResult struct {
	base, loaded     memSample
	rss, heap, stack float64 // per viewer
}

func perViewerMemory(base, loaded memSample, viewers int) memResult {
	r := memResult{base: base, loaded: loaded}
	if viewers > 0 {
		n := float64(viewers)
		r.rss = (loaded.rss - base.rss) / n
		r.heap = (loaded.heap - base.heap) / n
		r.stack = (loaded.stack - base.stack) / n
	}
	return r
}

// runStep measures N viewers on a prepared edge, the pilot plus N-1 more, and the
// floor with N. The edge's window is cut in two halves around the floor's (edge,
// floor, edge), each half with its own N-1 viewers: CPU figures on this shared host
// drift (the same floor cost 0.172 and 0.192 ms per viewer-second in two runs 90
// minutes apart, and one edge's halves differed by up to 22 %), and measured so, a
// drift that is linear in time moves the edge's figure as much as the floor's.
func (w *world) runStep(ctx context.Context, e *edgeRun, st step) (*stepResult, error) {
	defer e.stop()
	r := &stepResult{step: st}
	if err := w.pub.err(); err != nil {
		return nil, err
	}
	if _, early := e.crowd.failures(); len(early) > 0 {
		_, why := summarize(early)
		return nil, fmt.Errorf("edge for N=%d: pilot viewer ended before the step: %s", st.n, why)
	}
	w.logf("N=%d, merge window %s: baseline", st.n, st.window)
	base, scrapes, err := e.settledMemory(ctx)
	if err != nil {
		return nil, err
	}
	w.debugf("baseline after %d scrapes: rss %.1f MB heap %.1f MB", scrapes, mb(base.rss), mb(base.heap))
	m0, err := scrape(e.url("/metrics"))
	if err != nil {
		return nil, err
	}

	crowds := []*crowd{e.crowd} // the pilot's, then one per half
	defer func() {
		for _, c := range crowds[1:] {
			c.stop()
		}
	}()
	var halves [2]measured
	for half := range halves {
		cr := newCrowd(e.addr, mainPath, w.pub.sent, w.probe.arrived)
		crowds = append(crowds, cr)
		start := time.Now()
		cr.connect(ctx, st.n-1, min(w.cfg.sampleViewers, st.n)-1, w.cfg.connectPar)
		refused, _ := cr.failures()
		nRefused, why := summarize(refused)
		if half == 0 {
			r.connectTime = time.Since(start)
			r.connected = st.n - nRefused
		} else {
			r.connected = min(r.connected, st.n-nRefused)
		}
		w.logf("N=%d, edge half %d: %d connected in %s%s; warm-up %s", st.n, half+1, st.n-nRefused, time.Since(start).Round(time.Millisecond), ifs(nRefused > 0, ", refused: "+why), w.cfg.warmup)
		if err := sleep(ctx, w.cfg.warmup); err != nil {
			return nil, err
		}
		var perf *perfRecord
		if w.cfg.perfN == st.n && half == 0 {
			if perf, err = w.recordPerf("edge", st, e.p.PID(), w.cfg.duration/2); err != nil {
				return nil, err
			}
			r.perfData = perf.file
		}
		bytes := func() int64 { return e.crowd.bytes() + cr.bytes() }
		e.crowd.measuring.Store(true)
		cr.measuring.Store(true)
		halves[half], err = w.measure(ctx, "edge", e.p, bytes, w.cfg.duration/2)
		e.crowd.measuring.Store(false)
		cr.measuring.Store(false)
		if err != nil {
			return nil, err
		}
		if perf != nil {
			r.perfSummary = perf.summary(ctx)
		}
		if half == 1 {
			break
		}
		if m, err := scrape(e.url("/metrics")); err == nil {
			r.chosen = time.Duration(m["flvcdn_edge_merge_window_seconds"] * float64(time.Second))
		}
		// Memory is read after the first half, with every viewer still connected and
		// long past its first writes (buffers and stacks have grown to their working size).
		loaded, scrapes, err := e.settledMemory(ctx)
		if err != nil {
			return nil, err
		}
		w.debugf("loaded after %d scrapes: rss %.1f MB heap %.1f MB", scrapes, mb(loaded.rss), mb(loaded.heap))
		r.mem = perViewerMemory(base, loaded, r.connected-1)
		cr.stop() // the pilot keeps the stream pulled while the floor runs
		if err := w.runFloor(ctx, st, r); err != nil {
			return nil, err
		}
	}
	for i, h := range halves {
		r.edgeHalves[i] = cpuPerViewer(h.cpu, r.connected, h.wall)
	}
	m := halves[0].plus(halves[1])
	r.edgeShare = m.share
	r.edgeCPU, r.window, r.hostBusy = m.cpu, m.wall, m.busy

	r.refused, r.early = map[string]int{}, map[string]int{}
	for _, c := range crowds {
		lat, hop, unmatched := c.latency()
		r.lat, r.hop, r.unmatched = append(r.lat, lat...), append(r.hop, hop...), r.unmatched+unmatched
		r.parsers += c.parsers()
		refused, early := c.failures()
		addCounts(r.refused, refused)
		addCounts(r.early, early)
	}
	m1, err := scrape(e.url("/metrics"))
	if err != nil {
		return nil, err
	}
	r.edgeDrops = m1["flvcdn_edge_viewer_drops_total"] - m0["flvcdn_edge_viewer_drops_total"]
	r.edgeSkips = m1["flvcdn_edge_viewer_skips_total"] - m0["flvcdn_edge_viewer_skips_total"]
	r.bytesPerViewerSec = float64(m.bytes) / m.wall.Seconds() / float64(max(r.connected, 1))
	if err := e.p.Running(); err != nil {
		return nil, err
	}
	return r, nil
}

// addCounts adds the counts of src to dst.
func addCounts(dst, src map[string]int) {
	for k, v := range src {
		dst[k] += v
	}
}

// runFloor measures the floor process with the step's N and merge window.
func (w *world) runFloor(ctx context.Context, st step, r *stepResult) error {
	out := &tailBuffer{Max: 4096}
	args := []string{"floor", "--media", w.media.path, "--merge-window", st.window.String()}
	if st.fixed {
		args = append(args, "--fixed-window")
	}
	p, err := w.startOut("floor", w.self, args, out)
	if err != nil {
		return err
	}
	defer p.Stop(5 * time.Second)
	var addr string
	// It loads and indexes the media first: on a saturated host that took over 20 s.
	if err := waitReady(ctx, p, time.Minute, func() error {
		for line := range strings.SplitSeq(out.String(), "\n") {
			if a, ok := strings.CutPrefix(line, "listening "); ok {
				addr = a
				return nil
			}
		}
		return errors.New("no address yet")
	}); err != nil {
		return err
	}
	cr := newCrowd(addr, mainPath, nil, nil)
	defer cr.stop()
	w.logf("N=%d, merge window %s: floor", st.n, st.window)
	// As many parsing viewers as the edge has (its pilot and the step's), so that
	// both sides serve the same mix of readers; the floor's record nothing.
	cr.connect(ctx, st.n, min(w.cfg.sampleViewers, st.n), w.cfg.connectPar)
	if ref, _ := cr.failures(); len(ref) > 0 {
		nRef, why := summarize(ref)
		w.logf("floor N=%d: %d refused: %s", st.n, nRef, why)
	}
	if err := sleep(ctx, w.cfg.warmup); err != nil {
		return err
	}
	var perf *perfRecord
	if w.cfg.perfN == st.n {
		if perf, err = w.recordPerf("floor", st, p.PID(), w.cfg.duration); err != nil {
			return err
		}
		r.floorPerfData = perf.file
	}
	m, err := w.measure(ctx, "floor", p, cr.bytes, w.cfg.duration)
	if err != nil {
		return err
	}
	if perf != nil {
		r.floorPerfSummary = perf.summary(ctx)
	}
	r.floorRef, r.floorEarly = cr.failures()
	nRef, _ := summarize(r.floorRef)
	r.floorN = st.n - nRef
	r.floorCPU, r.floorWall, r.floorShr = m.cpu, m.wall, m.share
	r.floorBytesPerSec = float64(m.bytes) / m.wall.Seconds() / float64(max(r.floorN, 1))
	cr.stop()
	p.Stop(5 * time.Second)
	for line := range strings.SplitSeq(out.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "drops "); ok {
			r.floorDrops, _ = strconv.Atoi(strings.TrimSpace(v))
		}
		if v, ok := strings.CutPrefix(line, "window "); ok {
			r.floorChosen, _ = time.ParseDuration(strings.TrimSpace(v))
		}
	}
	return nil
}

// perfRecord is `perf record` of one process over one window.
type perfRecord struct {
	p    *proc
	file string
}

// recordPerf starts recording call graphs of pid (named name, e.g. "edge") for d,
// into a file beside the bench media named after the step.
func (w *world) recordPerf(name string, st step, pid int, d time.Duration) (*perfRecord, error) {
	file := filepath.Join(filepath.Dir(w.media.path), fmt.Sprintf("%s-N%d-%s.perf.data", name, st.n, st.window))
	p, err := w.start("perf", "perf", "record", "-F", "499", "-g", "-p", strconv.Itoa(pid),
		"-o", file, "--", "sleep", strconv.Itoa(int(d.Seconds())))
	if err != nil {
		return nil, err
	}
	return &perfRecord{p: p, file: file}, nil
}

// summary waits for the recording to end and summarizes it.
func (r *perfRecord) summary(ctx context.Context) string {
	<-r.p.Exited()
	return perfSummary(ctx, r.file)
}

// perfSummary is a recorded process's time by binary, then the call-graph symbols (with
// their callees) that hold at least 2% of the samples.
func perfSummary(ctx context.Context, file string) string {
	var b strings.Builder
	for _, args := range [][]string{
		{"report", "-i", file, "--no-children", "--sort", "dso", "--stdio"},
		{"report", "-i", file, "--children", "--sort", "symbol", "--stdio", "-g", "none", "--percent-limit", "2"},
	} {
		out, err := exec.CommandContext(ctx, "perf", args...).Output()
		if err != nil {
			return fmt.Sprintf("perf %s: %v", strings.Join(args, " "), err)
		}
		for line := range strings.SplitSeq(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) > 1 && strings.HasSuffix(f[0], "%") {
				b.WriteString("    " + strings.TrimRight(strings.TrimSuffix(strings.TrimSpace(line), "-      -"), " ") + "\n")
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// meter starts measuring the CPU of the process under test, of this process (the
// viewers and the publisher), and of NATS and the origin; the host's remainder is
// other processes (on a shared machine, other people's work).
func (w *world) meter(name string, p *proc) (*cpuMeter, error) {
	names := []string{name, "bench (viewers)", "origin"}
	pids := []int{p.PID(), os.Getpid(), w.originP.PID()}
	if w.natsP != nil {
		names = append(names, "nats")
		pids = append(pids, w.natsP.PID())
	}
	m, err := startCPU(pids...)
	if err != nil {
		return nil, err
	}
	m.names = names
	return m, nil
}

// measured is one measurement window: the CPU that p (first), the bench and the
// backends used, the host's busy share, and the bytes p's viewers read.
type measured struct {
	cpu   time.Duration // p's
	wall  time.Duration
	busy  float64
	share cpuShare
	bytes int64
}

// plus is a and b as one window: CPU, wall time and bytes add up, shares of the
// host are weighted by wall time.
func (a measured) plus(b measured) measured {
	wall := a.wall + b.wall
	if wall <= 0 {
		return a
	}
	fa, fb := a.wall.Seconds()/wall.Seconds(), b.wall.Seconds()/wall.Seconds()
	sh := cpuShare{names: a.share.names, host: a.share.host*fa + b.share.host*fb}
	for i := range a.share.cpus {
		sh.cpus = append(sh.cpus, a.share.cpus[i]*fa+b.share.cpus[i]*fb)
	}
	return measured{cpu: a.cpu + b.cpu, wall: wall, busy: a.busy*fa + b.busy*fb, share: sh, bytes: a.bytes + b.bytes}
}

// measure meters p (named name) and reads bytes before and after one window of d.
func (w *world) measure(ctx context.Context, name string, p *proc, bytes func() int64, d time.Duration) (measured, error) {
	meter, err := w.meter(name, p)
	if err != nil {
		return measured{}, err
	}
	b0 := bytes()
	if err := sleep(ctx, d); err != nil {
		return measured{}, err
	}
	used, wall, busy, err := meter.stop()
	if err != nil {
		return measured{}, err
	}
	return measured{cpu: used[0], wall: wall, busy: busy, share: meter.share(used, wall, busy), bytes: bytes() - b0}, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func ifs(cond bool, s string) string {
	if cond {
		return s
	}
	return ""
}

// numCPU is printed with the setup: every figure depends on it.
var numCPU = runtime.NumCPU()
