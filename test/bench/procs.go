package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/flvcdn/flvcdn/test/harness"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a child process this run started; it is stopped by its PID only.
type proc = harness.Proc

// tailBuffer keeps the last Max bytes written to it.
type tailBuffer = harness.Tail

// startProc starts bin with args. Children inherit the raised RLIMIT_NOFILE and
// are killed by the kernel if this process dies.
func startProc(name, bin string, args []string, env []string, stdout io.Writer) (*proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = stdout
	return harness.Start(name, cmd, 64<<10)
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr() (string, error) { return harness.FreeAddr() }

// waitReady polls check until it succeeds, p exits, or d passes.
func waitReady(ctx context.Context, p *proc, d time.Duration, check func() error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var exited error
	err := harness.Poll(ctx, func() error {
		if p != nil {
			if exited = p.Running(); exited != nil {
				return nil // stop polling: the process is gone
			}
		}
		return check()
	})
	if exited != nil {
		return exited
	}
	if err != nil {
		return fmt.Errorf("%s not ready: %w", p.Name, err)
	}
	return nil
}

func dialCheck(addr string) func() error {
	return func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	}
}

var httpc = &http.Client{Timeout: 5 * time.Second}

func httpOK(url string) func() error {
	return func() error {
		resp, err := httpc.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", url, resp.Status)
		}
		return nil
	}
}

// cpuTicks is user+system CPU of a process in clock ticks (USER_HZ = 100 on Linux).
const userHZ = 100

func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu of %d: %w", pid, err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("cpu of %d: malformed stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("cpu of %d: short stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14: utime
	st, err2 := strconv.ParseInt(f[12], 10, 64) // field 15: stime
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("cpu of %d: %w", pid, err)
	}
	return time.Duration(ut+st) * time.Second / userHZ, nil
}

// procRSS is VmRSS in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("rss of %d: %w", pid, err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("rss of %d: %w", pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("rss of %d: no VmRSS", pid)
}

// hostCPU returns busy and total jiffies of all CPUs.
func hostCPU() (busy, total int64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("host cpu: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0, errors.New("host cpu: malformed /proc/stat")
	}
	for i, s := range f[1:] {
		if i >= 8 { // guest time is already in user
			break
		}
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("host cpu: %w", err)
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total, nil
}

// cpuMeter measures CPU of some processes and of the host over a window.
type cpuMeter struct {
	names     []string // of pids, for share
	pids      []int
	start     []time.Duration
	busy0     int64
	total0    int64
	wallStart time.Time
}

func startCPU(pids ...int) (*cpuMeter, error) {
	m := &cpuMeter{pids: pids, wallStart: time.Now()}
	for _, p := range pids {
		c, err := procCPU(p)
		if err != nil {
			return nil, err
		}
		m.start = append(m.start, c)
	}
	var err error
	m.busy0, m.total0, err = hostCPU()
	return m, err
}

// stop returns CPU time used by each process, the wall time, and the host's busy share.
func (m *cpuMeter) stop() (used []time.Duration, wall time.Duration, hostBusy float64, err error) {
	wall = time.Since(m.wallStart)
	for i, p := range m.pids {
		c, err := procCPU(p)
		if err != nil {
			return nil, 0, 0, err
		}
		used = append(used, c-m.start[i])
	}
	busy, total, err := hostCPU()
	if err != nil {
		return nil, 0, 0, err
	}
	if total > m.total0 {
		hostBusy = float64(busy-m.busy0) / float64(total-m.total0)
	}
	return used, wall, hostBusy, nil
}

// metrics is a scrape of a Prometheus text endpoint: sums by metric name, labels ignored.
type metrics map[string]float64

func scrape(url string) (metrics, error) {
	resp, err := httpc.Get(url)
	if err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	m := metrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name := line[:i]
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name = name[:j]
		}
		m[name] += v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	return m, nil
}

// raiseNoFile lifts RLIMIT_NOFILE to its hard limit for this process and its
// children. The Go runtime raises its own soft limit at start but gives children
// the original one back unless the program calls Setrlimit itself, so it is
// called even when the soft limit already equals the hard one.
func raiseNoFile() (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	l.Cur = l.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("setrlimit: %w", err)
	}
	return l.Cur, nil
}

// cpuShare is how the host's CPUs were spent during a window, in CPUs.
type cpuShare struct {
	names []string
	cpus  []float64
	host  float64 // CPUs busy in all
}

func (m *cpuMeter) share(used []time.Duration, wall time.Duration, hostBusy float64) cpuShare {
	s := cpuShare{names: m.names, host: hostBusy * float64(numCPU)}
	for _, u := range used {
		s.cpus = append(s.cpus, u.Seconds()/wall.Seconds())
	}
	return s
}

// other is what processes outside this run used, in CPUs.
func (s cpuShare) other() float64 {
	rest := s.host
	for _, c := range s.cpus {
		rest -= c
	}
	return max(rest, 0)
}

// String reads "edge 0.52 + bench (viewers) 0.40 + ... + other 0.30 = 1.95 of 2 CPUs".
func (s cpuShare) String() string {
	var b strings.Builder
	for i, n := range s.names {
		fmt.Fprintf(&b, "%s %.2f + ", n, s.cpus[i])
	}
	fmt.Fprintf(&b, "other %.2f = %.2f of %d CPUs", s.other(), s.host, numCPU)
	return b.String()
}
