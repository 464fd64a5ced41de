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
	"sync"
	"syscall"
	"testing"
	"time"
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
		if repoRoot, err = findRepoRoot(); err != nil {
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
			buildErr = buildBinaries()
		}
		return m.Run()
	}()
	os.Exit(code)
}

func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

func buildBinaries() error {
	if _, err := exec.LookPath("go"); err != nil {
		return fmt.Errorf("go toolchain not in PATH: %w", err)
	}
	var errs []error
	for _, b := range []struct{ out, pkg string }{
		{"flvcdn-origin", "./cmd/origin"},
		{"flvcdn-edge", "./cmd/edge"},
	} {
		args := []string{"build"}
		if raceBuilt() {
			args = append(args, "-race")
		}
		args = append(args, "-o", filepath.Join(binDir, b.out), b.pkg)
		cmd := exec.Command("go", args...)
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out))
		}
	}
	return errors.Join(errs...)
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

// needTools skips the test when an external tool is missing, except in CI (CI=true),
// where a missing tool is a broken machine and fails the test.
func needTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not installed (required in CI): %v", tool, err)
			}
			t.Skipf("%s not installed: %v", tool, err)
		}
	}
}

// scenario is the common start of every end-to-end test: it skips in -short mode,
// checks tools and binaries, and returns a context bounded by limit and the test deadline.
func scenario(t *testing.T, limit time.Duration, tools ...string) context.Context {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end scenario; skipped in -short mode")
	}
	needTools(t, append([]string{"nats-server", "redis-server"}, tools...)...)
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

// waitFor polls check every 50 ms until it returns nil, and fails the test with the last
// error when ctx ends first.
func waitFor(ctx context.Context, t testing.TB, what string, check func() error) {
	t.Helper()
	if err := poll(ctx, check); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// poll is waitFor without the test: it returns the last error at the deadline.
func poll(ctx context.Context, check func() error) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// within returns a child of ctx limited to d.
func within(ctx context.Context, t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(ctx, d)
	t.Cleanup(cancel)
	return ctx
}

// logBuffer keeps the last max bytes a process wrote.
type logBuffer struct {
	mu      sync.Mutex
	b       []byte
	max     int
	dropped int
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	if over := len(l.b) - l.max; over > 0 {
		l.dropped += over
		l.b = append(l.b[:0], l.b[over:]...)
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dropped > 0 {
		return fmt.Sprintf("[... %d earlier bytes dropped ...]\n%s", l.dropped, l.b)
	}
	return string(l.b)
}

// proc is one process the test started.
type proc struct {
	name     string
	cmd      *exec.Cmd
	log      *logBuffer
	exited   chan struct{}
	err      error // Wait's result, valid after exited is closed
	stopping bool  // set by stop; an exit before that is unexpected
	product  bool  // an flvcdn binary: crashes and race reports fail the test
}

// start runs bin with args, its stdout and stderr captured, and registers cleanup that
// stops it and, if the test failed, prints its log.
func start(t testing.TB, name, bin string, args ...string) *proc {
	t.Helper()
	return startCmd(t, name, exec.Command(bin, args...))
}

// startCmd is start for a prepared command; its stdout goes to the log unless the
// caller set cmd.Stdout.
func startCmd(t testing.TB, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, log: &logBuffer{max: 1 << 20}, exited: make(chan struct{}), cmd: cmd}
	if p.cmd.Stdout == nil {
		p.cmd.Stdout = p.log
	}
	p.cmd.Stderr = p.log
	p.cmd.Env = childEnv()
	// If the test binary dies, the kernel kills what it started.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		unexpected := false
		select {
		case <-p.exited:
			unexpected = !p.stopping
		default:
		}
		p.stop()
		logs := p.log.String()
		if p.product {
			if unexpected {
				t.Errorf("%s (pid %d) exited on its own during the test: %v", p.name, p.cmd.Process.Pid, p.err)
			}
			for _, bad := range []string{"panic:", "WARNING: DATA RACE", "fatal error:"} {
				if strings.Contains(logs, bad) {
					t.Errorf("%s log contains %q", p.name, bad)
				}
			}
		}
		if t.Failed() || os.Getenv("FLVCDN_E2E_LOGS") == "1" {
			t.Logf("----- %s (pid %d, %s) log -----\n%s", p.name, p.cmd.Process.Pid, p.state(), logs)
		}
	})
	return p
}

// childEnv is the test's environment without FLVCDN_ settings, so that a developer's
// shell cannot change what the flags given here mean.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLVCDN_") {
			env = append(env, kv)
		}
	}
	return env
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) state() string {
	select {
	case <-p.exited:
		return fmt.Sprintf("exited: %v", p.err)
	default:
		return "running"
	}
}

// stop sends SIGTERM to the process (by its PID), then SIGKILL if it is still there
// after two seconds, and waits for it.
func (p *proc) stop() {
	p.stopping = true
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return
	case <-time.After(2 * time.Second):
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// kill ends the process at once with SIGKILL, as a crash or a pulled cable would.
func (p *proc) kill() {
	p.stopping = true
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// waitExit waits for the process to end on its own and returns its exit code.
func (p *proc) waitExit(ctx context.Context) (int, error) {
	select {
	case <-p.exited:
		p.stopping = true
		return p.cmd.ProcessState.ExitCode(), nil
	case <-ctx.Done():
		return -1, fmt.Errorf("%s (pid %d) still running: %w", p.name, p.pid(), ctx.Err())
	}
}

// running reports an error if the process has already exited.
func (p *proc) running() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, p.log.String())
	default:
		return nil
	}
}

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
		case <-p.exited:
			return nil
		default:
		}
		if code, _, err := httpGet(ctx, "http://"+addr+"/readyz"); err != nil || code != http.StatusOK {
			return fmt.Errorf("not ready: %d %v", code, err)
		}
		return nil
	})
	select {
	case <-p.exited:
		if strings.Contains(p.log.String(), "address already in use") {
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
	waitFor(ctx, t, p.name+" /readyz", func() error {
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
		t.Skip("starts servers")
	}
	needTools(t, "nats-server", "redis-server")
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
