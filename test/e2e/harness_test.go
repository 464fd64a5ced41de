package e2e

// The harness starts every piece as a real process on loopback ports: nats-server,
// redis-server, flvcdn-origin, flvcdn-edge and ffmpeg. Each test owns its processes,
// stops them (by PID, SIGTERM then SIGKILL) in cleanup, and prints their logs when it
// fails. Waits are on conditions with deadlines, never on fixed sleeps.

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/test/harness"
)

var (
	binDir   string // where TestMain builds the flvcdn binaries
	buildErr error  // why they could not be built, reported by every test that needs them
	repoRoot string
)

// TestMain builds cmd/origin and cmd/edge once. A failed build does not stop the run:
// tests that need the binaries fail with the compiler's output, the others still run.
// FLVCDN_E2E_RACE=1 builds them with -race (and a race report fails the test).
func TestMain(m *testing.M) {
	code := func() int {
		var err error
		if repoRoot, err = harness.RepoRoot(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 2
		}
		if binDir, err = os.MkdirTemp("", "flvcdn-e2e-bin-"); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 2
		}
		defer os.RemoveAll(binDir)
		flag.Parse()
		if testing.Short() {
			buildErr = errors.New("not built in -short mode")
		} else {
			buildErr = harness.BuildBinaries(repoRoot, binDir, raceBuilt())
		}
		return m.Run()
	}()
	os.Exit(code)
}

// raceBuilt reports whether the product binaries were built with -race.
func raceBuilt() bool { return os.Getenv("FLVCDN_E2E_RACE") == "1" }

// needBinaries fails the test when the product could not be built.
func needBinaries(t testing.TB) {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("flvcdn binaries did not build:\n%v", buildErr)
	}
}

// scenario is the common start of every end-to-end test: it skips in -short mode,
// checks tools and binaries, and returns a context bounded by limit and the test deadline.
func scenario(t *testing.T, limit time.Duration, tools ...string) context.Context {
	t.Helper()
	if testing.Short() {
		harness.Skip(t, "end-to-end scenario; skipped in -short mode")
	}
	harness.NeedTools(t, append([]string{"nats-server", "redis-server"}, tools...)...)
	needBinaries(t)
	if d, ok := t.Deadline(); ok && time.Until(d)-5*time.Second < limit {
		limit = time.Until(d) - 5*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	t.Cleanup(cancel)
	return ctx
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// waitFor polls check until it returns nil, and fails the test with the last error
// when ctx ends first.
func waitFor(ctx context.Context, t testing.TB, what string, check func() error) {
	t.Helper()
	if err := harness.Poll(ctx, check); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// poll is waitFor without the test: it returns the last error at the deadline.
func poll(ctx context.Context, check func() error) error { return harness.Poll(ctx, check) }

// within returns a child of ctx limited to d.
func within(ctx context.Context, t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(ctx, d)
	t.Cleanup(cancel)
	return ctx
}

// proc is one process the test started (test/harness runs it).
type proc struct {
	*harness.Proc
	stopping bool // set by stop; an exit before that is unexpected
	product  bool // an flvcdn binary: crashes and race reports fail the test
}

// start runs bin with args, its stdout and stderr captured, and registers cleanup that
// stops it and, if the test failed, prints its log.
func start(t testing.TB, name, bin string, args ...string) *proc {
	t.Helper()
	return startCmd(t, name, exec.Command(bin, args...))
}

// startCmd is start for a prepared command; its stdout goes to the log (and to
// cmd.Stdout, if the caller set it).
func startCmd(t testing.TB, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	cmd.Env = harness.Env()
	hp, err := harness.Start(name, cmd, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{Proc: hp}
	t.Cleanup(func() {
		unexpected := false
		select {
		case <-p.Exited():
			unexpected = !p.stopping
		default:
		}
		p.stop()
		logs := p.Log.String()
		if p.product {
			if unexpected {
				t.Errorf("%s (pid %d) exited on its own during the test: %s", p.Name, p.PID(), p.State())
			}
			for _, bad := range []string{"panic:", "WARNING: DATA RACE", "fatal error:"} {
				if strings.Contains(logs, bad) {
					t.Errorf("%s log contains %q", p.Name, bad)
				}
			}
		}
		if t.Failed() || os.Getenv("FLVCDN_E2E_LOGS") == "1" {
			t.Logf("----- %s (pid %d, %s) log -----\n%s", p.Name, p.PID(), p.State(), logs)
		}
	})
	return p
}

func (p *proc) pid() int { return p.PID() }

// stop sends SIGTERM to the process (by its PID), then SIGKILL if it is still there
// after two seconds, and waits for it.
func (p *proc) stop() {
	p.stopping = true
	p.Stop(2 * time.Second)
}

// kill ends the process at once with SIGKILL, as a crash or a pulled cable would.
func (p *proc) kill() {
	p.stopping = true
	p.Kill()
}

// waitExit waits for the process to end on its own and returns its exit code.
func (p *proc) waitExit(ctx context.Context) (int, error) {
	code, err := p.WaitExit(ctx)
	if err == nil {
		p.stopping = true
	}
	return code, err
}

// running reports an error if the process has already exited.
func (p *proc) running() error { return p.Running() }

// startNATS starts nats-server on a free loopback port and returns its URL.
func startNATS(ctx context.Context, t testing.TB) string {
	t.Helper()
	port := freePort(t)
	p := start(t, "nats-server", "nats-server", "-a", "127.0.0.1", "-p", strconv.Itoa(port))
	waitFor(ctx, t, "nats-server", func() error {
		if err := p.running(); err != nil {
			return err
		}
		c, err := net.DialTimeout("tcp", hostPort(port), time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(line, "INFO ") {
			return fmt.Errorf("greeting %q", line)
		}
		return nil
	})
	return "nats://" + hostPort(port)
}

// startRedis starts redis-server without persistence and returns its URL.
func startRedis(ctx context.Context, t testing.TB) string {
	t.Helper()
	port := freePort(t)
	p := start(t, "redis-server", "redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	waitFor(ctx, t, "redis-server", func() error {
		if err := p.running(); err != nil {
			return err
		}
		c, err := net.DialTimeout("tcp", hostPort(port), time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := io.WriteString(c, "*1\r\n$4\r\nPING\r\n"); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != "+PONG\r\n" {
			return fmt.Errorf("PING answered %q", line)
		}
		return nil
	})
	return "redis://" + hostPort(port) + "/0"
}

// cluster is one test's flvcdn: a NATS server, a Redis server, origins and edges.
type cluster struct {
	t        *testing.T
	ctx      context.Context
	natsURL  string
	redisURL string
	n        int // processes started, for ids
}

func newCluster(ctx context.Context, t *testing.T) *cluster {
	t.Helper()
	return &cluster{t: t, ctx: ctx, natsURL: startNATS(ctx, t), redisURL: startRedis(ctx, t)}
}

type origin struct {
	*proc
	id       string
	rtmpAddr string
	httpAddr string
}

// rtmpURL is where ffmpeg publishes app/stream; key is appended when not empty.
func (o *origin) rtmpURL(stream, key string) string {
	u := "rtmp://" + o.rtmpAddr + "/" + stream
	if key != "" {
		u += "?key=" + key
	}
	return u
}

type edge struct {
	*proc
	id   string
	addr string
}

// url is the playback URL of app/stream.
func (e *edge) url(stream string) string { return "http://" + e.addr + "/" + stream + ".flv" }

// startOrigin starts flvcdn-origin on free ports with the cluster's NATS and Redis;
// extra flags come last and so win.
func (c *cluster) startOrigin(extra ...string) *origin {
	c.t.Helper()
	c.n++
	var o *origin
	for attempt := 1; ; attempt++ {
		o = &origin{id: fmt.Sprintf("origin-%d", c.n), rtmpAddr: hostPort(freePort(c.t)), httpAddr: hostPort(freePort(c.t))}
		args := append([]string{
			"--id", o.id, "--nats-url", c.natsURL, "--redis-url", c.redisURL,
			"--rtmp-addr", o.rtmpAddr, "--http-addr", o.httpAddr, "--log-format", "text",
		}, extra...)
		o.proc = start(c.t, o.id, filepath.Join(binDir, "flvcdn-origin"), args...)
		o.product = true
		if attempt == 3 || !lostPort(c.ctx, o.proc, o.httpAddr) {
			break
		}
	}
	waitReady(c.ctx, c.t, o.proc, o.httpAddr)
	waitFor(c.ctx, c.t, o.id+" RTMP listener", func() error {
		if err := o.running(); err != nil {
			return err
		}
		conn, err := net.DialTimeout("tcp", o.rtmpAddr, time.Second)
		if err == nil {
			conn.Close()
		}
		return err
	})
	return o
}

// startEdge starts flvcdn-edge on a free port; extra flags come last.
func (c *cluster) startEdge(extra ...string) *edge {
	c.t.Helper()
	c.n++
	var e *edge
	for attempt := 1; ; attempt++ {
		e = &edge{id: fmt.Sprintf("edge-%d", c.n), addr: hostPort(freePort(c.t))}
		args := append([]string{
			"--id", e.id, "--nats-url", c.natsURL, "--redis-url", c.redisURL,
			"--http-addr", e.addr, "--log-format", "text",
		}, extra...)
		e.proc = start(c.t, e.id, filepath.Join(binDir, "flvcdn-edge"), args...)
		e.product = true
		if attempt == 3 || !lostPort(c.ctx, e.proc, e.addr) {
			break
		}
	}
	waitReady(c.ctx, c.t, e.proc, e.addr)
	return e
}

// lostPort reports whether p exited at start because another process took one of the
// ports picked for it (freePort can only say that a port was free a moment ago; other
// test runs share the machine). Such a process is marked as stopped on purpose, and the
// caller starts another on new ports.
func lostPort(ctx context.Context, p *proc, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_ = poll(ctx, func() error {
		select {
		case <-p.Exited():
			return nil
		default:
		}
		if code, _, err := httpGet(ctx, "http://"+addr+"/readyz"); err != nil || code != http.StatusOK {
			return fmt.Errorf("not ready: %d %v", code, err)
		}
		return nil
	})
	select {
	case <-p.Exited():
		if strings.Contains(p.Log.String(), "address already in use") {
			p.stopping = true
			return true
		}
	default:
	}
	return false
}

// waitReady waits for GET /readyz to answer 200 (and fails fast if the process dies).
func waitReady(ctx context.Context, t testing.TB, p *proc, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	waitFor(ctx, t, p.Name+" /readyz", func() error {
		if err := p.running(); err != nil {
			return err
		}
		code, body, err := httpGet(ctx, "http://"+addr+"/readyz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("status %d: %s", code, body)
		}
		return nil
	})
}

// httpGet fetches a small document.
func httpGet(ctx context.Context, url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}

// waitPlayable waits until the edge answers 200 for the stream (a publisher is live).
func (e *edge) waitPlayable(ctx context.Context, t testing.TB, stream string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	waitFor(ctx, t, stream+" playable on "+e.id, func() error {
		if err := e.running(); err != nil {
			return err
		}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, e.url(stream), nil)
		resp, err := httpClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
			return fmt.Errorf("status %d: %q", resp.StatusCode, b)
		}
		return nil
	})
}

// metric returns the sum of all series of a metric from the edge's /metrics.
func (e *edge) metric(ctx context.Context, name string) (float64, error) {
	code, body, err := httpGet(ctx, "http://"+e.addr+"/metrics")
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("/metrics status %d", code)
	}
	return parseMetric(body, name)
}

// parseMetric sums the samples of name in a Prometheus text exposition.
func parseMetric(body, name string) (float64, error) {
	var sum float64
	found := false
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue // a longer name with this prefix
		}
		if i := strings.LastIndexByte(rest, '}'); i >= 0 {
			rest = rest[i+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return 0, fmt.Errorf("metric line without value: %q", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %v", line, err)
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("metric %s not exposed", name)
	}
	return sum, nil
}

// lastLines returns the last n lines of s, for short failure messages.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// The harness's own servers start, answer and stop.
func TestHarnessServers(t *testing.T) {
	if testing.Short() {
		harness.Skip(t, "starts servers; skipped in -short mode")
	}
	harness.NeedTools(t, "nats-server", "redis-server")
	ctx := within(context.Background(), t, 20*time.Second)
	n, r := startNATS(ctx, t), startRedis(ctx, t)
	if !strings.HasPrefix(n, "nats://127.0.0.1:") || !strings.HasPrefix(r, "redis://127.0.0.1:") || !strings.HasSuffix(r, "/0") {
		t.Errorf("URLs %q %q", n, r)
	}
	if v, err := parseMetric("# HELP x\nflvcdn_edge_streams 2\nflvcdn_edge_streams_total 9\nflvcdn_edge_viewers{stream=\"a\"} 3\nflvcdn_edge_viewers{stream=\"b\"} 4\n", "flvcdn_edge_viewers"); err != nil || v != 7 {
		t.Errorf("parseMetric = %v, %v; want 7", v, err)
	}
	if v, err := parseMetric("flvcdn_edge_streams 2\nflvcdn_edge_streams_total 9\n", "flvcdn_edge_streams"); err != nil || v != 2 {
		t.Errorf("parseMetric = %v, %v; want 2", v, err)
	}
}
