// Command bench is flvcdn's load generator (`make bench`). It prints figures, never
// pass/fail: what one edge costs per viewer in CPU and memory, how long a new viewer
// waits for its first keyframe, and how much latency the edge adds, each beside the
// target it is compared with.
//
// The whole data path runs as real processes on 127.0.0.1: nats-server (max_payload
// 8 MiB, JetStream for the laptop registry), redis-server (the registry), flvcdn-origin
// and flvcdn-edge built from this tree. A 720p H.264+AAC file of about 2.5 Mbit/s is
// encoded once with ffmpeg into .cache/bench/ and published over RTMP by the test
// publisher's client (test/publish/pub, on go-rtmp) in this process, paced in real time; the send time of every tag timestamp
// is recorded so that viewers that parse tags can tell how long each tag took to
// reach their socket. All viewers live in this process too; most read and discard.
//
// For each N the edge's CPU is compared with a floor: this same binary run as
// `bench floor`, a separate process that paces the same file and writes the same
// bytes to N loopback sockets with the same merge policy (everything queued since a
// connection's last write, in one writev per merge window) and nothing else.
//
// The transport table (transport.go) then compares HTTP/1.1, HTTPS/1.1, HTTP/2 over
// TLS and WebSocket-FLV at one N, each beside a floor that uses the same libraries
// (`bench floor-transport`, floor_transport.go).
//
// Every process it starts is stopped by PID; the run is bounded by --max-run.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is every setting of a run.
type config struct {
	viewers        []int
	duration       time.Duration
	warmup         time.Duration
	mergeWindow    time.Duration
	mergeWindows   []time.Duration
	mwViewers      int
	sampleViewers  int
	latencySamples int
	coldStreams    int
	linger         time.Duration
	registry       string
	nats           string
	cacheDir       string
	fillRing       bool
	edgeArgs       []string
	perfN          int
	connectPar     int
	maxRun         time.Duration
	quick          bool
	verbose        bool
	transports     []string // the transport table (transport.go); empty: none
	transportN     int
	transportsOnly bool
	// the cost model (costs.go) and the output files (out.go)
	costs         bool
	ingest        []int
	fanout        []int
	spreadStreams int
	spreadViewers int
	costDuration  time.Duration
	costSettle    time.Duration
	outDir        string
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	viewers := fs.String("viewers", "100,250,500,1000,2000", "viewer counts N, one step each")
	windows := fs.String("merge-windows", "10ms,60ms", "fixed merge windows compared at --mw-viewers (empty: skip that table)")
	fs.DurationVar(&c.duration, "duration", 20*time.Second, "measurement window per step, after warm-up")
	fs.DurationVar(&c.warmup, "warmup", 5*time.Second, "time between the last viewer connecting and the window")
	fs.DurationVar(&c.mergeWindow, "merge-window", 60*time.Millisecond, "edge --merge-window (the adaptive window's ceiling) for the per-N steps")
	fs.IntVar(&c.mwViewers, "mw-viewers", 1000, "N for the merge-window table")
	fs.IntVar(&c.sampleViewers, "sample-viewers", 20, "viewers per step that parse tags to measure latency (the rest discard)")
	fs.IntVar(&c.latencySamples, "latency-samples", 60, "first-keyframe samples, warm and cold each")
	fs.IntVar(&c.coldStreams, "cold-streams", 8, "streams the origin loops for cold first-keyframe samples")
	fs.DurationVar(&c.linger, "linger", time.Second, "edge --linger (short, so cold samples can repeat)")
	fs.StringVar(&c.registry, "registry", "redis", "registry: redis (redis-server child) or nats-kv")
	fs.StringVar(&c.nats, "nats", "external", "NATS: external (nats-server child, max_payload 8MB) or embedded (origin --embedded-nats)")
	fs.StringVar(&c.cacheDir, "cache", ".cache/bench", "where the encoded media is kept (relative to the repository root)")
	edgeArgs := fs.String("edge-args", "", "extra flags, comma-separated, for the edges of the viewer steps (for experiments, e.g. --send-buffer=0)")
	fs.BoolVar(&c.fillRing, "fill-ring", true, "before each step, wait until the edge's tag ring is full so stream memory does not count as viewer memory")
	fs.IntVar(&c.perfN, "perf", 0, "record `perf` call graphs of the edge and the floor during the windows of the step with this N (inflates that step's CPU)")
	fs.IntVar(&c.connectPar, "connect-parallel", 64, "viewer connections in flight at once")
	fs.DurationVar(&c.maxRun, "max-run", 30*time.Minute, "stop everything after this long")
	fs.BoolVar(&c.quick, "quick", false, "fast run: N=100,500, 8s windows, 20 first-keyframe samples, merge windows at N=500, no ring fill; cost model with S=1,10, E=1,2, 4x50 viewers, 5s windows")
	fs.BoolVar(&c.verbose, "v", false, "log progress details")
	transports := fs.String("transports", strings.Join(allTransports, ","), "transports compared at --transport-viewers, each beside its floor (empty: skip that table)")
	fs.IntVar(&c.transportN, "transport-viewers", 1000, "N for the transport table")
	fs.BoolVar(&c.transportsOnly, "transports-only", false, "run only the transport table")
	fs.BoolVar(&c.costs, "costs", true, "measure the cost model (ingest, idle streams, streams x viewers, pull fan-out) after the viewer steps")
	ingest := fs.String("ingest", "1,10,50,100", "cost model: publisher counts S into one origin")
	fanout := fs.String("fanout", "1,2,4,8", "cost model: edges E pulling one stream")
	fs.IntVar(&c.spreadStreams, "spread-streams", 10, "cost model: streams of the multi-stream run (against 1 stream with as many viewers in all); 0 skips it")
	fs.IntVar(&c.spreadViewers, "spread-viewers", 200, "cost model: viewers per stream of the multi-stream run")
	fs.DurationVar(&c.costDuration, "cost-duration", 10*time.Second, "cost model: measurement window per step")
	fs.DurationVar(&c.costSettle, "cost-settle", 3*time.Second, "cost model: settling time before each window")
	fs.StringVar(&c.outDir, "out", "bench-out", "directory for bench.json and the PNG plots (relative to the repository root)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if *edgeArgs != "" {
		c.edgeArgs = strings.Split(*edgeArgs, ",")
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if c.quick {
		if !set["viewers"] {
			*viewers = "100,500"
		}
		if !set["duration"] {
			c.duration = 8 * time.Second
		}
		if !set["warmup"] {
			c.warmup = 3 * time.Second
		}
		if !set["latency-samples"] {
			c.latencySamples = 20
		}
		if !set["mw-viewers"] {
			c.mwViewers = 500
		}
		if !set["fill-ring"] {
			c.fillRing = false
		}
		if !set["ingest"] {
			*ingest = "1,10"
		}
		if !set["fanout"] {
			*fanout = "1,2"
		}
		if !set["spread-viewers"] {
			c.spreadViewers = 50
		}
		if !set["spread-streams"] {
			c.spreadStreams = 4
		}
		if !set["cost-duration"] {
			c.costDuration = 5 * time.Second
		}
	}
	var err error
	if c.viewers, err = parseInts(*viewers); err != nil {
		return nil, fmt.Errorf("--viewers: %w", err)
	}
	if c.transports, err = parseTransports(*transports); err != nil {
		return nil, fmt.Errorf("--transports: %w", err)
	}
	if c.transportsOnly && len(c.transports) == 0 {
		return nil, errors.New("--transports-only: --transports is empty")
	}
	if c.transportN < 2 {
		return nil, fmt.Errorf("--transport-viewers %d: at least 2 (the pilot and one more)", c.transportN)
	}
	if c.mergeWindows, err = parseDurations(*windows); err != nil {
		return nil, fmt.Errorf("--merge-windows: %w", err)
	}
	if c.ingest, err = parseInts(*ingest); err != nil {
		return nil, fmt.Errorf("--ingest: %w", err)
	}
	if c.fanout, err = parseInts(*fanout); err != nil {
		return nil, fmt.Errorf("--fanout: %w", err)
	}
	slices.Sort(c.ingest)
	slices.Sort(c.fanout)
	switch {
	case len(c.viewers) == 0:
		return nil, errors.New("--viewers: need at least one N")
	case c.duration < time.Second:
		return nil, fmt.Errorf("--duration %s: at least 1s", c.duration)
	case c.warmup < 0:
		return nil, fmt.Errorf("--warmup %s: must not be negative", c.warmup)
	case c.mergeWindow < time.Millisecond || c.mergeWindow > time.Second:
		return nil, fmt.Errorf("--merge-window %s: between 1ms and 1s", c.mergeWindow)
	case c.mwViewers < 1:
		return nil, fmt.Errorf("--mw-viewers %d: at least 1", c.mwViewers)
	case c.sampleViewers < 1:
		return nil, fmt.Errorf("--sample-viewers %d: at least 1 (the pilot)", c.sampleViewers)
	case c.latencySamples < 1:
		return nil, fmt.Errorf("--latency-samples %d: at least 1", c.latencySamples)
	case c.coldStreams < 1:
		return nil, fmt.Errorf("--cold-streams %d: at least 1", c.coldStreams)
	case c.linger <= 0:
		return nil, fmt.Errorf("--linger %s: must be positive", c.linger)
	case c.registry != "redis" && c.registry != "nats-kv":
		return nil, fmt.Errorf("--registry %q: redis or nats-kv", c.registry)
	case c.nats != "external" && c.nats != "embedded":
		return nil, fmt.Errorf("--nats %q: external or embedded", c.nats)
	case c.connectPar < 1:
		return nil, fmt.Errorf("--connect-parallel %d: at least 1", c.connectPar)
	}
	for _, w := range c.mergeWindows {
		if w < time.Millisecond || w > time.Second {
			return nil, fmt.Errorf("--merge-windows: %s not between 1ms and 1s", w)
		}
	}
	return c, nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q: want a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func parseDurations(s string) ([]time.Duration, error) {
	var out []time.Duration
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		d, err := time.ParseDuration(f)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", f, err)
		}
		out = append(out, d)
	}
	return out, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "floor-transport" {
		if err := floorTransportMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench floor-transport:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "floor" {
		if err := floorMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench floor:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "plot" {
		if err := plotMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench plot:", err)
			os.Exit(1)
		}
		return
	}
	c, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.maxRun)
	defer cancel()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// step is one measured configuration: N viewers on an edge with one merge window,
// adaptive up to window (the default) or fixed at it.
type step struct {
	n      int
	window time.Duration
	fixed  bool
}

// plan lists the steps: one per N, then the merge-window comparison, reusing a
// per-N step that already has the same N and window.
func plan(c *config) (perN []step, mw []step) {
	for _, n := range c.viewers {
		perN = append(perN, step{n, c.mergeWindow, false})
	}
	for _, w := range c.mergeWindows {
		s := step{c.mwViewers, w, true}
		if !slices.Contains(perN, s) {
			mw = append(mw, s)
		}
	}
	return perN, mw
}
