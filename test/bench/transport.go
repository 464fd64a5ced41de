package main

// The transport table: what a viewer costs the edge on each player transport, at one
// N, each beside a floor that writes the same bytes with the same merge policy through
// the same libraries and nothing else:
//
//	http/1.1   edge: taken-over connection, one writev per window   floor: `bench floor`
//	https/1.1  edge: the same over TLS, window gathered, one Write  floor: floor-transport https1
//	h2         edge: HTTP/2 over TLS (package h2), one gathered     floor: floor-transport h2
//	           write of DATA frames per window
//	h2c        edge: HTTP/2 without TLS, one writev of the frame    floor: floor-transport h2c
//	           headers and shared tags per window
//	ws         edge: WebSocket-FLV (no TLS), one message per window floor: floor-transport ws
//	h2-mux     edge: as h2, muxStreams streams per connection       floor: floor-transport h2
//
// After the h2 row comes a floor-only row, "h2 net/http": the h2 floor's viewers
// served by net/http's own HTTP/2 server (floor-transport h2-nethttp), which the edge
// used before package h2, for comparison.
//
// Every viewer is its own client connection (1,000 viewers are 1,000 people, not one
// browser), except in h2-mux: there viewers come muxStreams to an HTTP/2 connection, as
// walls of streams in browser tabs do, so that the connection's own costs are shared.
// All are in this process, reading and discarding: HTTP/1.1 and WebSocket viewers
// through pkg/probe's transports (the HTTP client and the WebSocket client flvprobe
// uses), HTTP/2 viewers through h2viewer.go's client, which gives window back as
// browsers do. All edges are started
// first and their rings filled together, so stream memory does not count as viewer
// memory; then each transport runs in turn on its own edge, then its floor.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/flvcdn/flvcdn/pkg/probe"
	"github.com/flvcdn/flvcdn/test/harness"
)

var allTransports = []string{"http/1.1", "https/1.1", "h2", "h2c", "ws", "h2-mux"}

// muxStreams is how many h2-mux viewers share one HTTP/2 connection.
const muxStreams = 10

func parseTransports(s string) ([]string, error) {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		ok := false
		for _, t := range allTransports {
			ok = ok || t == f
		}
		if !ok {
			return nil, fmt.Errorf("%q: want some of %s", f, strings.Join(allTransports, ","))
		}
		out = append(out, f)
	}
	return out, nil
}

// transportResult is one row of the table.
type transportResult struct {
	name                 string
	floorMode            string // floor-transport --mode, when not the name's
	n, connected, floorN int
	edgeCPU, floorCPU    time.Duration
	edgeWall, floorWall  time.Duration
	mem                  memResult
	floorRSS             float64 // per viewer
	edgeShare, floorShr  cpuShare
	bytesPerSec          float64 // per viewer, edge
	floorBytesPerSec     float64
	refused, early       map[string]int
	floorRef, floorEarly map[string]int
	edgeDrops, floorDrop int
}

// runTransports measures every transport of the table at N viewers.
func (w *world) runTransports(ctx context.Context) error {
	c := w.cfg
	cert, err := harness.SelfSigned(w.tmp, "bench", 1)
	if err != nil {
		return err
	}
	w.logf("transport table: %s at N=%d; starting %d edges and filling their rings", strings.Join(c.transports, ", "), c.transportN, len(c.transports))
	type prepared struct {
		e     *edgeRun
		https string
		err   error
	}
	edges := make([]prepared, len(c.transports))
	var wg sync.WaitGroup
	for i := range c.transports {
		wg.Go(func() {
			https, err := freeAddr()
			if err != nil {
				edges[i].err = err
				return
			}
			e, err := w.startEdge(ctx, c.mergeWindow, true, "--tls-cert", cert.CertFile, "--tls-key", cert.KeyFile, "--https-addr", https, "--h2c")
			edges[i] = prepared{e, https, err}
			if err != nil || !c.fillRing {
				return
			}
			start := time.Now()
			for e.crowd.first().tags.Load() < edgeRing+16 {
				if time.Since(start) > 3*time.Minute || ctx.Err() != nil {
					edges[i].err = fmt.Errorf("transport edge: ring not full after %s", time.Since(start).Round(time.Second))
					return
				}
				time.Sleep(250 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	defer func() {
		for _, p := range edges {
			p.e.stop()
		}
	}()
	var rows []*transportResult
	for i, name := range c.transports {
		if edges[i].err != nil {
			return edges[i].err
		}
		r, err := w.runTransport(ctx, name, edges[i].e, edges[i].https, cert)
		edges[i].e.stop()
		if err != nil {
			return fmt.Errorf("transport %s: %w", name, err)
		}
		rows = append(rows, r)
		if name == "h2" {
			ref := &transportResult{name: "h2 net/http", n: r.n, floorMode: "h2-nethttp"}
			if err := w.runTransportFloor(ctx, ref, cert); err != nil {
				return fmt.Errorf("transport h2 net/http: %w", err)
			}
			rows = append(rows, ref)
		}
	}
	printTransports(c, rows)
	return nil
}

// opener opens one viewer's stream.
type opener func(ctx context.Context) (io.ReadCloser, error)

// openerFor returns how a viewer of name reaches addr (plain) or https (TLS).
func openerFor(name, addr, https string, cert *harness.Cert) opener {
	tlsConf := &tls.Config{RootCAs: cert.Pool()}
	switch name {
	case "https/1.1":
		tr := &http.Transport{TLSClientConfig: tlsConf, DisableCompression: true, Protocols: new(http.Protocols)}
		tr.Protocols.SetHTTP1(true)
		client := &http.Client{Transport: tr}
		return func(ctx context.Context) (io.ReadCloser, error) {
			return probe.HTTP{Client: client}.Open(ctx, "https://"+https+mainPath, probe.New(probe.Options{}, time.Now()))
		}
	case "h2": // a connection per viewer, as separate people have (h2viewer.go)
		return h2Opener(https, tlsConf, 1)
	case "h2c":
		return h2Opener(addr, nil, 1)
	case "ws":
		return func(ctx context.Context) (io.ReadCloser, error) {
			return probe.WebSocket{}.Open(ctx, "ws://"+addr+mainPath, probe.New(probe.Options{}, time.Now()))
		}
	case "h2-mux":
		return h2Opener(https, tlsConf, muxStreams)
	}
	return nil
}

// streamCrowd is viewers that read through an opener and discard, counting bytes.
type streamCrowd struct {
	open     opener
	bytes    atomic.Int64
	stopping atomic.Bool
	cancel   context.CancelFunc
	ctx      context.Context
	wg       sync.WaitGroup
	mu       sync.Mutex
	refused  map[string]int
	early    map[string]int
}

func newStreamCrowd(open opener) *streamCrowd {
	ctx, cancel := context.WithCancel(context.Background())
	return &streamCrowd{open: open, ctx: ctx, cancel: cancel, refused: map[string]int{}, early: map[string]int{}}
}

// connect opens n viewers, par at a time, and returns once each has its response or
// has failed.
func (c *streamCrowd) connect(ctx context.Context, n, par int) {
	sem := make(chan struct{}, par)
	var ready sync.WaitGroup
	for range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		ready.Add(1)
		c.wg.Go(func() {
			// The stream lives as long as its context: it is cancelled only if
			// opening takes over 10 s, or when the crowd stops.
			vctx, cancel := context.WithCancel(c.ctx)
			defer cancel()
			t := time.AfterFunc(10*time.Second, cancel)
			rc, err := c.open(vctx)
			if !t.Stop() && err == nil {
				err = errors.New("open took over 10 s")
				rc.Close()
			}
			<-sem
			ready.Done()
			if err != nil {
				c.note(c.refused, err)
				return
			}
			defer rc.Close()
			buf := make([]byte, 64<<10)
			for {
				k, err := rc.Read(buf)
				c.bytes.Add(int64(k))
				if err != nil {
					if !c.stopping.Load() {
						c.note(c.early, err)
					}
					return
				}
			}
		})
	}
	ready.Wait()
}

func (c *streamCrowd) note(m map[string]int, err error) {
	c.mu.Lock()
	m[shortErr(err)]++
	c.mu.Unlock()
}

func (c *streamCrowd) failures() (refused, early map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return clone(c.refused), clone(c.early)
}

// stop ends every viewer: each stream was opened with a child of c.ctx, and reads
// end with it.
func (c *streamCrowd) stop() {
	c.stopping.Store(true)
	c.cancel()
	c.wg.Wait()
}

// viewers is what runTransport needs of a crowd of either kind.
type viewers interface {
	bytes() int64
	failures() (refused, early map[string]int)
	stop()
}

type rawCrowd struct{ *crowd }

func (r rawCrowd) bytes() int64 { return r.crowd.bytes() }

type libCrowd struct{ *streamCrowd }

func (l libCrowd) bytes() int64 { return l.streamCrowd.bytes.Load() }

// crowdFor connects n viewers of name to addr/https.
func (w *world) crowdFor(ctx context.Context, name, addr, https string, cert *harness.Cert, n int) viewers {
	if name == "http/1.1" {
		cr := newCrowd(addr, mainPath, nil, nil)
		cr.connect(ctx, n, 0, w.cfg.connectPar)
		return rawCrowd{cr}
	}
	sc := newStreamCrowd(openerFor(name, addr, https, cert))
	sc.connect(ctx, n, w.cfg.connectPar)
	return libCrowd{sc}
}

func (w *world) runTransport(ctx context.Context, name string, e *edgeRun, https string, cert *harness.Cert) (*transportResult, error) {
	n := w.cfg.transportN
	r := &transportResult{name: name, n: n}
	w.logf("%s, N=%d: baseline", name, n)
	base, _, err := e.settledMemory(ctx)
	if err != nil {
		return nil, err
	}
	m0, err := scrape(e.url("/metrics"))
	if err != nil {
		return nil, err
	}
	cr := w.crowdFor(ctx, name, e.addr, https, cert, n-1) // the pilot is the N-th
	defer cr.stop()
	refused, _ := cr.failures()
	nRef, why := summarize(refused)
	r.connected = n - nRef
	w.logf("%s, N=%d: %d connected%s; warm-up %s", name, n, r.connected, ifs(nRef > 0, ", refused: "+why), w.cfg.warmup)
	if err := sleep(ctx, w.cfg.warmup); err != nil {
		return nil, err
	}
	m, err := w.measure(ctx, "edge", e.p, cr.bytes, w.cfg.duration)
	if err != nil {
		return nil, err
	}
	r.edgeCPU, r.edgeWall, r.edgeShare = m.cpu, m.wall, m.share
	r.bytesPerSec = float64(m.bytes) / m.wall.Seconds() / float64(max(r.connected-1, 1))
	loaded, _, err := e.settledMemory(ctx)
	if err != nil {
		return nil, err
	}
	r.mem = perViewerMemory(base, loaded, r.connected-1)
	m1, err := scrape(e.url("/metrics"))
	if err != nil {
		return nil, err
	}
	r.edgeDrops = int(m1["flvcdn_edge_viewer_drops_total"] - m0["flvcdn_edge_viewer_drops_total"])
	r.refused, r.early = cr.failures()
	if err := e.p.Running(); err != nil {
		return nil, err
	}
	cr.stop()
	return r, w.runTransportFloor(ctx, r, cert)
}

// runTransportFloor measures the floor of r's transport at the same N.
func (w *world) runTransportFloor(ctx context.Context, r *transportResult, cert *harness.Cert) error {
	args := []string{"floor", "--media", w.media.path, "--merge-window", w.cfg.mergeWindow.String(), "--fixed-window"}
	if r.name != "http/1.1" {
		mode := map[string]string{"https/1.1": "https1", "h2": "h2", "h2c": "h2c", "ws": "ws", "h2-mux": "h2"}[r.name]
		if r.floorMode != "" {
			mode = r.floorMode
		}
		args = []string{"floor-transport", "--mode", mode, "--media", w.media.path, "--merge-window", w.cfg.mergeWindow.String(),
			"--cert", cert.CertFile, "--key", cert.KeyFile}
	}
	out := &tailBuffer{Max: 4096}
	p, err := w.startOut("floor-"+r.name, w.self, args, out)
	if err != nil {
		return err
	}
	defer p.Stop(5 * time.Second)
	var addr string
	if err := waitReady(ctx, p, 20*time.Second, func() error {
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
	rss0, err := procRSS(p.PID())
	if err != nil {
		return err
	}
	w.logf("%s, N=%d: floor", r.name, r.n)
	cr := w.crowdFor(ctx, strings.TrimSuffix(r.name, " net/http"), addr, addr, cert, r.n)
	defer cr.stop()
	if err := sleep(ctx, w.cfg.warmup); err != nil {
		return err
	}
	m, err := w.measure(ctx, "floor", p, cr.bytes, w.cfg.duration)
	if err != nil {
		return err
	}
	rss1, err := procRSS(p.PID())
	if err != nil {
		return err
	}
	r.floorRef, r.floorEarly = cr.failures()
	nRef, _ := summarize(r.floorRef)
	r.floorN = r.n - nRef
	r.floorCPU, r.floorWall, r.floorShr = m.cpu, m.wall, m.share
	r.floorBytesPerSec = float64(m.bytes) / m.wall.Seconds() / float64(max(r.floorN, 1))
	r.floorRSS = float64(rss1-rss0) / float64(max(r.floorN, 1))
	cr.stop()
	p.Stop(5 * time.Second)
	for line := range strings.SplitSeq(out.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "drops "); ok {
			r.floorDrop, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return nil
}

func printTransports(c *config, rows []*transportResult) {
	fmt.Printf("== transports: N = %d viewers each, merge window %s ==\n", c.transportN, c.mergeWindow)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "transport\tedge CPU ms/viewer-s\tfloor CPU ms/viewer-s\tedge/floor\tedge RSS KB/viewer\tfloor RSS KB/viewer\tedge heap+stack KB/viewer\tMbit/s per viewer (edge, floor)\tviewers lost (edge; floor)\t")
	for _, r := range rows {
		edge, floor := cpuPerViewer(r.edgeCPU, r.connected, r.edgeWall), cpuPerViewer(r.floorCPU, r.floorN, r.floorWall)
		ratio := 0.0
		if floor > 0 {
			ratio = edge / floor
		}
		lost := func(ref, early map[string]int, drops int) string {
			a, _ := summarize(ref)
			b, _ := summarize(early)
			return fmt.Sprintf("%d refused, %d ended, %d dropped", a, b, drops)
		}
		if r.floorMode != "" { // a floor-only reference row
			fmt.Fprintf(tw, "%s\t-\t%.3f\t-\t-\t%.1f\t-\t-, %.2f\t-; %s\t\n", r.name, floor, r.floorRSS/kib,
				r.floorBytesPerSec*8/1e6, lost(r.floorRef, r.floorEarly, r.floorDrop))
			continue
		}
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%.2f\t%.1f\t%.1f\t%.1f\t%.2f, %.2f\t%s; %s\t\n", r.name, edge, floor, ratio,
			r.mem.rss/kib, r.floorRSS/kib, (r.mem.heap+r.mem.stack)/kib, r.bytesPerSec*8/1e6, r.floorBytesPerSec*8/1e6,
			lost(r.refused, r.early, r.edgeDrops), lost(r.floorRef, r.floorEarly, r.floorDrop))
	}
	tw.Flush()
	for _, r := range rows {
		fmt.Printf("  %s: CPUs during edge window: %s; during floor window: %s\n", r.name, r.edgeShare, r.floorShr)
		for _, m := range []map[string]int{r.refused, r.early, r.floorRef, r.floorEarly} {
			if k, why := summarize(m); k > 0 {
				fmt.Printf("    %d: %s\n", k, why)
			}
		}
	}
	fmt.Println("  Viewers are separate connections from this process (pkg/probe's HTTP and WebSocket clients;")
	fmt.Println("  HTTP/2 viewers: h2viewer.go, which gives window back at half of Chromium's windows).")
	fmt.Println("  Edge RSS per viewer is from settled readings (two GCs forced by scraping /metrics), the floors' from")
	fmt.Println("  plain RSS before and after their viewers. The host is shared: figures move between runs.")
	fmt.Println()
}
