// Package harness is what the end-to-end suite (test/e2e), the load generator
// (test/bench) and the Kubernetes checks (test/k8s) share to run real processes:
// starting a child with its output kept, stopping it by its own PID (SIGTERM, then
// SIGKILL), free loopback ports, self-signed certificates for TLS on loopback, and
// polling a condition until a deadline, with the last error in the report. Package tests elsewhere use its polling helper too.
//
// It never kills a process it did not start, and never targets an address other
// than loopback.
package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a child process started by Start. Its stdout and stderr go to Log.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Log  *Tail

	exited chan struct{}
	err    error // Wait's result, valid after exited is closed
}

// Start runs cmd, keeping the last logBytes of its output (1 MiB when <= 0). If
// cmd.Stdout is set, output goes there as well. The kernel kills the child if the
// starting process dies (Pdeathsig), so nothing outlives a crashed test.
func Start(name string, cmd *exec.Cmd, logBytes int) (*Proc, error) {
	if logBytes <= 0 {
		logBytes = 1 << 20
	}
	p := &Proc{Name: name, Cmd: cmd, Log: &Tail{Max: logBytes}, exited: make(chan struct{})}
	if cmd.Stdout != nil {
		cmd.Stdout = io.MultiWriter(p.Log, cmd.Stdout)
	} else {
		cmd.Stdout = p.Log
	}
	cmd.Stderr = p.Log
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if cmd.WaitDelay == 0 {
		// A grandchild holding the output pipes must not keep Wait from returning.
		cmd.WaitDelay = time.Second
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// PID is the child's process id.
func (p *Proc) PID() int { return p.Cmd.Process.Pid }

// Exited is closed when the child has ended.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Running returns an error, with the child's log, if it has already ended.
func (p *Proc) Running() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s (pid %d) exited: %v\n%s", p.Name, p.PID(), p.err, p.Log.String())
	default:
		return nil
	}
}

// State says "running" or how the child ended.
func (p *Proc) State() string {
	select {
	case <-p.exited:
		return fmt.Sprintf("exited: %v", p.err)
	default:
		return "running"
	}
}

// Stop sends SIGTERM to the child, then SIGKILL if it is still there after grace,
// and waits for it to end.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return
	case <-time.After(grace):
	}
	p.Kill()
}

// Kill ends the child at once with SIGKILL, as a crash would, and waits for it.
func (p *Proc) Kill() {
	_ = p.Cmd.Process.Kill()
	<-p.exited
}

// WaitExit waits for the child to end on its own and returns its exit code.
func (p *Proc) WaitExit(ctx context.Context) (int, error) {
	select {
	case <-p.exited:
		return p.Cmd.ProcessState.ExitCode(), nil
	case <-ctx.Done():
		return -1, fmt.Errorf("%s (pid %d) still running: %w", p.Name, p.PID(), ctx.Err())
	}
}

// Tail keeps the last Max bytes written to it.
type Tail struct {
	Max int

	mu      sync.Mutex
	b       []byte
	dropped int
}

func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.Max; over > 0 {
		t.dropped += over
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

// String returns what is kept, saying how much was dropped before it.
func (t *Tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dropped > 0 {
		return fmt.Sprintf("[... %d earlier bytes dropped ...]\n%s", t.dropped, t.b)
	}
	return string(t.b)
}

// FreeAddr returns a loopback address whose port was free a moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Env is the current environment without FLVCDN_ settings, so that a developer's
// shell cannot change what the flags a test passes mean.
func Env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLVCDN_") {
			env = append(env, kv)
		}
	}
	return env
}

// RepoRoot is the nearest directory above the working directory with a go.mod.
func RepoRoot() (string, error) {
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

// Binaries are the product's commands, by the file name BuildBinaries gives them.
var Binaries = map[string]string{"flvcdn-origin": "./cmd/origin", "flvcdn-edge": "./cmd/edge"}

// BuildBinaries builds the product's commands from root into dir, with the race
// detector when race is set.
func BuildBinaries(root, dir string, race bool) error {
	if _, err := exec.LookPath("go"); err != nil {
		return fmt.Errorf("go toolchain not in PATH: %w", err)
	}
	var errs []error
	for out, pkg := range Binaries {
		args := []string{"build"}
		if race {
			args = append(args, "-race")
		}
		args = append(args, "-o", filepath.Join(dir, out), pkg)
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b))
		}
	}
	return errors.Join(errs...)
}
