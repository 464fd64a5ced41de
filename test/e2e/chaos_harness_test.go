package e2e

// Helpers of the chaos scenarios (chaos_*_test.go): servers that can be killed and
// started again on the same port, crowds of HTTP-FLV viewers that record when their
// bytes arrive, edge metrics and memory, and the one format every scenario prints its
// figures in:
//
//	chaos: <scenario>: <figure>=<value> (target <x>)
//
// A crowd is cheap: one goroutine per viewer reading raw socket bytes into a buffer.
// Only a sample of viewers ("checked") parses the response and runs pkg/probe's
// checker; they also record every tag's timestamp and arrival time.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/probe"
	"github.com/flvcdn/flvcdn/test/harness"
)

// chaosScenario is scenario() for the chaos suite: FLVCDN_E2E_CHAOS=0 skips it (it
// also skips in -short mode, like every scenario).
func chaosScenario(t *testing.T, limit time.Duration, tools ...string) context.Context {
	t.Helper()
	if os.Getenv("FLVCDN_E2E_CHAOS") == "0" {
		harness.Skip(t, "chaos scenario; FLVCDN_E2E_CHAOS=0")
	}
	return scenario(t, limit, tools...)
}

// figure logs one measured figure in the suite's common form.
func figure(t testing.TB, scenario, name string, value any, target string) {
	t.Helper()
	if d, ok := value.(time.Duration); ok {
		value = d.Round(time.Millisecond)
	}
	t.Logf("chaos: %s: %s=%v (target %s)", scenario, name, value, target)
}

// ---- servers that restart on the same port ----

// natsServer is a nats-server the test can stop and start again on the same port.
type natsServer struct {
	t    *testing.T
	port int
	conf string // config file, or ""
	p    *proc
	n    int
}

// startNATSServer starts nats-server on a free loopback port; conf (may be empty) is
// the text of a configuration file (listen address and port are given as flags).
func startNATSServer(ctx context.Context, t *testing.T, conf string) *natsServer {
	t.Helper()
	s := &natsServer{t: t, port: freePort(t)}
	if conf != "" {
		s.conf = filepath.Join(t.TempDir(), "nats.conf")
		if err := os.WriteFile(s.conf, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s.start(ctx)
	return s
}

func (s *natsServer) url() string { return "nats://" + hostPort(s.port) }

// start runs nats-server on its port and waits for its INFO greeting, which it returns.
func (s *natsServer) start(ctx context.Context) string {
	s.t.Helper()
	s.n++
	args := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(s.port)}
	if s.conf != "" {
		args = append([]string{"-c", s.conf}, args...)
	}
	s.p = start(s.t, fmt.Sprintf("nats-server-%d", s.n), "nats-server", args...)
	var info string
	waitFor(ctx, s.t, "nats-server on port "+strconv.Itoa(s.port), func() error {
		if err := s.p.running(); err != nil {
			return err
		}
		var err error
		info, err = greeting(s.port, "", "INFO ")
		return err
	})
	return info
}

// greeting connects to port, sends req (if any) and returns the first line, which must
// start with want.
func greeting(port int, req, want string) (string, error) {
	c, err := net.DialTimeout("tcp", hostPort(port), time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if req != "" {
		if _, err := io.WriteString(c, req); err != nil {
			return "", err
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(line, want) {
		return "", fmt.Errorf("greeting %q, want %q", line, want)
	}
	return line, nil
}

// redisServer is a redis-server without persistence that the test can kill and start
// again, empty, on the same port.
type redisServer struct {
	t    *testing.T
	port int
	p    *proc
	n    int
}

func startRedisServer(ctx context.Context, t *testing.T) *redisServer {
	t.Helper()
	s := &redisServer{t: t, port: freePort(t)}
	s.start(ctx)
	return s
}

func (s *redisServer) url() string { return "redis://" + hostPort(s.port) + "/0" }

// start runs a fresh redis-server (new empty directory, no persistence) on its port.
func (s *redisServer) start(ctx context.Context) {
	s.t.Helper()
	s.n++
	s.p = start(s.t, fmt.Sprintf("redis-server-%d", s.n), "redis-server", "--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", s.t.TempDir())
	waitFor(ctx, s.t, "redis-server on port "+strconv.Itoa(s.port), func() error {
		if err := s.p.running(); err != nil {
			return err
		}
		_, err := greeting(s.port, "*1\r\n$4\r\nPING\r\n", "+PONG")
		return err
	})
}

// do runs one Redis command (RESP, bulk-string arguments) and returns its first reply
// line and, for a bulk reply, the value.
func (s *redisServer) do(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", hostPort(s.port), time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	var req strings.Builder
	fmt.Fprintf(&req, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&req, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, req.String()); err != nil {
		return "", err
	}
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(line, "-") {
		return "", fmt.Errorf("redis: %s", line[1:])
	}
	if strings.HasPrefix(line, "$") {
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "", nil // nil bulk: no such key
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(br, b); err != nil {
			return "", err
		}
		return string(b[:n]), nil
	}
	return line, nil
}

// chaosCluster is a cluster whose NATS and Redis servers the test can restart.
func chaosCluster(ctx context.Context, t *testing.T, natsConf string) (*cluster, *natsServer, *redisServer) {
	t.Helper()
	n, r := startNATSServer(ctx, t, natsConf), startRedisServer(ctx, t)
	return &cluster{t: t, ctx: ctx, natsURL: n.url(), redisURL: r.url()}, n, r
}

// ---- edge metrics and memory ----

// scrapeClient does not keep connections alive, so that scraping leaves no goroutine
// behind in the edge (the churn scenario counts them).
var scrapeClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// metrics returns the named metrics of a process's /metrics (each summed over its series).
func metrics(ctx context.Context, addr string, names ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := scrapeClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics status %d", resp.StatusCode)
	}
	out := map[string]float64{}
	for _, n := range names {
		v, err := parseMetric(string(b), n)
		if err != nil {
			return nil, err
		}
		out[n] = v
	}
	return out, nil
}

// series returns the value of one exact series (name with its labels, as exposed,
// e.g. `flvcdn_edge_viewer_drops_total{reason="slow"}`), 0 when it is not there.
func series(ctx context.Context, addr, s string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := scrapeClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, s+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, nil
}

// mustMetric is metric() that fails the test.
func (e *edge) mustMetric(ctx context.Context, t testing.TB, name string) float64 {
	t.Helper()
	m, err := metrics(ctx, e.addr, name)
	if err != nil {
		t.Fatalf("%s: %v", e.id, err)
	}
	return m[name]
}

// waitMetric waits until pred holds for the edge's metric.
func (e *edge) waitMetric(ctx context.Context, t testing.TB, name string, what string, pred func(float64) bool) float64 {
	t.Helper()
	var v float64
	waitFor(ctx, t, fmt.Sprintf("%s on %s: %s", name, e.id, what), func() error {
		m, err := metrics(ctx, e.addr, name)
		if err != nil {
			return err
		}
		v = m[name]
		if !pred(v) {
			return fmt.Errorf("%s = %v", name, v)
		}
		return nil
	})
	return v
}

// rss returns a process's resident set size (VmRSS in /proc/<pid>/status).
func rss(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("VmRSS line %q", line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

func mib(b float64) string { return fmt.Sprintf("%.1fMiB", b/(1<<20)) }

// ---- media ----

// makeClip encodes a clip with ffmpeg (args between the fixed prefix and the output
// file) into an FLV file in the test's temporary directory.
func makeClip(t testing.TB, name string, args ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), name)
	runFFmpeg(t, append(append([]string{"-hide_banner", "-loglevel", "error", "-nostdin", "-y"}, args...), "-f", "flv", out))
	return out
}

// runFFmpeg runs ffmpeg to completion (at most 90 s).
func runFFmpeg(t testing.TB, args []string) {
	t.Helper()
	harness.NeedTools(t, "ffmpeg")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if b, err := exec.CommandContext(ctx, "ffmpeg", args...).CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg %s: %v\n%s", strings.Join(args, " "), err, b)
	}
}

// readTags returns every tag of an FLV file (read with the probe's reader; bodies copied).
func readTags(t testing.TB, file string) []probe.RawTag {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := probe.NewReader(f)
	if _, err := r.ReadHeader(); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var tags []probe.RawTag
	for {
		tag, err := r.ReadTag()
		if errors.Is(err, io.EOF) {
			return tags
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		tag.Body = bytes.Clone(tag.Body)
		tags = append(tags, tag)
	}
}

// bitrate is a file's average rate in bytes per second (size over its last timestamp).
func bitrate(t testing.TB, file string) float64 {
	t.Helper()
	tags := readTags(t, file)
	var n int
	var last uint32
	for _, tag := range tags {
		n += 11 + len(tag.Body) + 4
		last = max(last, tag.TS)
	}
	if last == 0 {
		t.Fatalf("%s: no timestamps", file)
	}
	return float64(n) / (float64(last) / 1000)
}

// ---- crowds of viewers ----

// crowdMaxStall is the stall limit of a crowd's checked viewers: above every stall a
// scenario provokes (each measures and bounds its own gaps), below the edges' grace.
const crowdMaxStall = 8 * time.Second

// burstGap: reads closer together than this belong to one arrival (one writev of the
// edge, split over several reads); only gaps between arrivals enter the histogram.
const burstGap = 2 * time.Millisecond

// gapHist counts inter-arrival gaps in 1 ms buckets up to 10 s.
type gapHist struct{ b [10001]atomic.Int64 }

func (h *gapHist) add(d time.Duration) {
	ms := min(int(d/time.Millisecond), len(h.b)-1)
	h.b[ms].Add(1)
}

// quantile returns the q-quantile (0..1) of the gaps counted and their number.
func (h *gapHist) quantile(q float64) (time.Duration, int64) {
	var n int64
	for i := range h.b {
		n += h.b[i].Load()
	}
	if n == 0 {
		return 0, 0
	}
	rank := int64(math.Ceil(q * float64(n)))
	var c int64
	for i := range h.b {
		c += h.b[i].Load()
		if c >= rank {
			return time.Duration(i) * time.Millisecond, n
		}
	}
	return time.Duration(len(h.b)-1) * time.Millisecond, n
}

// viewerOpts says how a crowd's viewer reads.
type viewerOpts struct {
	// check parses the response and runs the probe's checker; tags are recorded.
	check                bool
	wantAudio, wantVideo bool
	// rcvBuf sets SO_RCVBUF before connecting (0: the kernel's default).
	rcvBuf int
	// rate, in bytes per second, throttles reading (0: as fast as possible).
	rate float64
	// onTag, for checked viewers, sees every tag (on the viewer's goroutine; the
	// body is only valid during the call).
	onTag func(t probe.Tag)
}

// tagRec is one tag a checked viewer read.
type tagRec struct {
	at   time.Time
	ts   uint32
	typ  byte
	kind probe.Kind
}

// crowdViewer is one viewer of a crowd.
type crowdViewer struct {
	c    *crowd
	idx  int
	url  string
	o    viewerOpts
	conn net.Conn

	bytes   atomic.Int64
	last    atomic.Int64 // UnixNano of the latest read that returned data
	maxGap  atomic.Int64 // longest time between reads with data since resetGaps
	done    chan struct{}
	endedAt time.Time // valid after done
	err     error     // why reading ended (valid after done); nil when we closed it
	closing atomic.Bool
	drain   atomic.Bool // a throttled viewer reads as fast as it can from now on

	mu        sync.Mutex
	checker   *probe.Checker
	violation error
	tags      []tagRec
}

// crowd is a set of viewers; each reads on its own goroutine.
type crowd struct {
	t       *testing.T
	mu      sync.Mutex
	viewers []*crowdViewer
	hist    atomic.Pointer[gapHist] // while set, gaps of unchecked viewers go here
	wg      sync.WaitGroup
}

func newCrowd(t *testing.T) *crowd {
	c := &crowd{t: t}
	t.Cleanup(c.close)
	return c
}

// add connects n viewers of url, 32 at a time, and returns them once each has its
// 200 response header. A refused viewer fails the test.
func (c *crowd) add(ctx context.Context, url string, n int, o viewerOpts) []*crowdViewer {
	c.t.Helper()
	vs := make([]*crowdViewer, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i := range vs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			vs[i], errs[i] = c.connect(ctx, url, o)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.t.Fatalf("connecting %d viewers of %s: %v", n, url, err)
	}
	return vs
}

// connect opens one viewer and starts its reader once the response header is in.
func (c *crowd) connect(ctx context.Context, url string, o viewerOpts) (*crowdViewer, error) {
	host, path, ok := strings.Cut(strings.TrimPrefix(url, "http://"), "/")
	if !ok {
		return nil, fmt.Errorf("url %q", url)
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	if o.rcvBuf > 0 {
		// Before connect, so that the window the client announces is small from the start.
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, o.rcvBuf)
			})
			return errors.Join(err, serr)
		}
	}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	v := &crowdViewer{c: c, url: url, o: o, conn: conn, done: make(chan struct{})}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET /" + path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: flvcdn-chaos\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		return nil, err
	}
	// The response header, read byte by byte so that nothing after it is consumed here.
	var head []byte
	one := make([]byte, 1)
	for !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		if len(head) > 8192 {
			conn.Close()
			return nil, fmt.Errorf("GET %s: response header too long", url)
		}
		if _, err := conn.Read(one); err != nil {
			conn.Close()
			return nil, fmt.Errorf("GET %s: %w (after %q)", url, err, head)
		}
		head = append(head, one[0])
	}
	status, _, _ := strings.Cut(string(head), "\r\n")
	if !strings.HasPrefix(status, "HTTP/1.1 200") || !bytes.Contains(bytes.ToLower(head), []byte("transfer-encoding: chunked")) {
		conn.Close()
		return nil, fmt.Errorf("GET %s: %q, want 200 chunked", url, head)
	}
	_ = conn.SetDeadline(time.Time{})
	if o.check {
		// Gaps are the scenarios' to measure and bound: no stall limit here.
		v.checker = probe.New(checkOptions(o.wantAudio, o.wantVideo, crowdMaxStall, v.record), time.Now())
		v.checker.Responded(time.Now(), 200, "video/x-flv")
	}
	v.last.Store(time.Now().UnixNano())
	c.mu.Lock()
	v.idx = len(c.viewers)
	c.viewers = append(c.viewers, v)
	c.mu.Unlock()
	c.wg.Add(1)
	go v.run()
	return v, nil
}

// Read is the viewer's socket read: it counts bytes and records the arrival.
func (v *crowdViewer) Read(p []byte) (int, error) {
	n, err := v.conn.Read(p)
	if n > 0 {
		now := time.Now().UnixNano()
		gap := time.Duration(now - v.last.Swap(now))
		if int64(gap) > v.maxGap.Load() {
			v.maxGap.Store(int64(gap))
		}
		if h := v.c.hist.Load(); h != nil && !v.o.check && v.o.rate == 0 && gap >= burstGap {
			h.add(gap)
		}
		v.bytes.Add(int64(n))
	}
	return n, err
}

func (v *crowdViewer) run() {
	defer v.c.wg.Done()
	defer close(v.done)
	var err error
	switch {
	case v.o.check:
		err = v.readChecked()
	case v.o.rate > 0:
		err = v.readThrottled()
	default:
		buf := make([]byte, 32<<10)
		for err == nil {
			_, err = v.Read(buf)
		}
	}
	v.endedAt = time.Now()
	if !v.closing.Load() {
		if err == nil {
			err = io.EOF
		}
		v.err = err
	}
	v.conn.Close()
}

// readThrottled reads at most rate bytes per second, a tenth of it every 100 ms.
func (v *crowdViewer) readThrottled() error {
	per := max(1, int(v.o.rate/10))
	buf := make([]byte, per)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for range tick.C {
		if v.closing.Load() {
			return nil
		}
		if v.drain.Load() {
			for {
				if _, err := v.Read(buf); err != nil {
					return err
				}
			}
		}
		if _, err := io.ReadFull(v, buf); err != nil {
			return err
		}
	}
	return nil
}

// readChecked decodes the chunked body and runs every tag through the checker. A
// violation ends the reading; a connection the test closed is not one.
func (v *crowdViewer) readChecked() error {
	body := io.NopCloser(httputil.NewChunkedReader(bufio.NewReaderSize(v, 64<<10)))
	err := probe.Watch(context.Background(), body, v.checker)
	if errors.Is(err, probe.ErrViolation) && !v.closing.Load() {
		v.setViolation(err)
	}
	return err
}

// record keeps a checked viewer's tag (the checker's OnTag).
func (v *crowdViewer) record(t probe.Tag) {
	v.mu.Lock()
	v.tags = append(v.tags, tagRec{at: t.At, ts: t.TS, typ: t.Type, kind: t.Kind})
	v.mu.Unlock()
	if v.o.onTag != nil {
		v.o.onTag(t)
	}
}

func (v *crowdViewer) setViolation(err error) {
	v.mu.Lock()
	if v.violation == nil {
		v.violation = err
	}
	v.mu.Unlock()
}

// ended reports whether the viewer stopped reading on its own (and why); a viewer the
// test closed has not ended.
func (v *crowdViewer) ended() (bool, error) {
	select {
	case <-v.done:
		return v.err != nil, v.err
	default:
		return false, nil
	}
}

// gap is the viewer's longest wait for data since resetGaps, counting the wait in
// progress at now.
func (v *crowdViewer) gap(now time.Time) time.Duration {
	g := time.Duration(v.maxGap.Load())
	if ended, _ := v.ended(); !ended {
		g = max(g, now.Sub(time.Unix(0, v.last.Load())))
	}
	return g
}

// recs returns a copy of the tags a checked viewer read.
func (v *crowdViewer) recs() []tagRec {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.tags)
}

// report is the checked viewer's report and first violation.
func (v *crowdViewer) report() (Report, error) {
	var r Report
	if v.checker != nil { // unchecked viewers have none
		r = v.checker.Report()
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return r, v.violation
}

// all returns the crowd's viewers.
func (c *crowd) all() []*crowdViewer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.viewers)
}

// resetGaps starts a new measurement of the longest gap of every viewer.
func (c *crowd) resetGaps() {
	for _, v := range c.all() {
		v.maxGap.Store(0)
	}
}

// byteCounts returns every viewer's byte count.
func byteCounts(vs []*crowdViewer) []int64 {
	out := make([]int64, len(vs))
	for i, v := range vs {
		out[i] = v.bytes.Load()
	}
	return out
}

// waitGrown waits until every viewer in vs has read at least min bytes more than in
// before (and, for checked viewers, is free of violations).
func waitGrown(ctx context.Context, t testing.TB, what string, vs []*crowdViewer, before []int64, min int64) {
	t.Helper()
	waitFor(ctx, t, what, func() error {
		behind := 0
		var first *crowdViewer
		for i, v := range vs {
			if ended, err := v.ended(); ended {
				return fmt.Errorf("viewer %d (%s) ended: %v", v.idx, v.url, err)
			}
			if _, err := v.report(); err != nil {
				return fmt.Errorf("viewer %d (%s): %v", v.idx, v.url, err)
			}
			if v.bytes.Load()-before[i] < min {
				behind++
				if first == nil {
					first = v
				}
			}
		}
		if behind > 0 {
			return fmt.Errorf("%d of %d viewers have read less than %d new bytes (viewer %d: %d)", behind, len(vs), min, first.idx, first.bytes.Load())
		}
		return nil
	})
}

// checkViewers fails the test for every viewer in vs that ended or, when checked, saw
// a violation; it returns how many were fine.
//
// A checked viewer must also have received what every viewer must (received): among
// it one measured window of media time against the wall clock. Stalls and splices
// restart that measurement, so checkViewers first gives checked viewers that are still
// fine up to 10 s (polled) to complete a window after the scenario's last disruption.
func checkViewers(t testing.TB, what string, vs []*crowdViewer) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = poll(ctx, func() error {
		for _, v := range checked(vs) {
			r, err := v.report()
			if ended, _ := v.ended(); ended || err != nil {
				continue
			}
			if r.RateWindows == 0 {
				return fmt.Errorf("viewer %d: no rate window yet", v.idx)
			}
		}
		return nil
	})
	ok := 0
	for _, v := range vs {
		if ended, err := v.ended(); ended {
			t.Errorf("%s: viewer %d (%s) lost its connection at %s after %d bytes: %v", what, v.idx, v.url, v.endedAt.Format("15:04:05.000"), v.bytes.Load(), err)
			continue
		}
		if v.o.check {
			r, err := v.report()
			if err == nil {
				err = received(r, v.o.wantVideo)
			}
			if err != nil {
				t.Errorf("%s: viewer %d (%s): %v; %s", what, v.idx, v.url, err, r)
				continue
			}
		}
		ok++
	}
	return ok
}

// close ends every viewer (closing its connection) and waits for their goroutines.
func (c *crowd) close() {
	for _, v := range c.all() {
		v.closing.Store(true)
		v.conn.Close()
	}
	c.wg.Wait()
}

// closeViewers closes some viewers and waits for their readers.
func closeViewers(vs []*crowdViewer) {
	for _, v := range vs {
		v.closing.Store(true)
		v.conn.Close()
	}
	for _, v := range vs {
		<-v.done
	}
}

// gaps returns the longest gaps of vs at now.
func gaps(vs []*crowdViewer, now time.Time) []time.Duration {
	out := make([]time.Duration, len(vs))
	for i, v := range vs {
		out[i] = v.gap(now)
	}
	return out
}

// pct returns the p-quantile (0..1) of ds.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// checked returns the checked viewers of vs.
func checked(vs []*crowdViewer) []*crowdViewer {
	var out []*crowdViewer
	for _, v := range vs {
		if v.o.check {
			out = append(out, v)
		}
	}
	return out
}

// audience connects n viewers of url, of which the first nChecked run the checker
// (audio+video expected).
func (c *crowd) audience(ctx context.Context, url string, n, nChecked int) []*crowdViewer {
	c.t.Helper()
	vs := c.add(ctx, url, nChecked, viewerOpts{check: true, wantAudio: true, wantVideo: true})
	return append(vs, c.add(ctx, url, n-nChecked, viewerOpts{})...)
}

// videoFrames returns the video tags of recs that are pictures (not sequence headers).
func videoFrames(recs []tagRec) []tagRec {
	var out []tagRec
	for _, r := range recs {
		if r.typ == probe.TypeVideo && r.kind != probe.KindVideoHeader && r.kind != probe.KindVideoInfo {
			out = append(out, r)
		}
	}
	return out
}
