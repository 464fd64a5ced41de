//go:build k8s_e2e

// Failover of a live stream when the pod of its origin is deleted, with the
// product's real processes on the host standing in for the pods' containers:
// two flvcdn-origin processes whose POD_NAME is the name of a pod that kwok
// keeps Running, one flvcdn-edge, nats-server, redis-server, ffmpeg
// publishing and an HTTP-FLV viewer checked tag by tag.
//
// The user story: "a streamer publishes through origin A, a viewer plays
// through an edge; A's pod is deleted (its process dies with it); the
// streamer's encoder reconnects and lands on origin B; the viewer keeps
// playing on the same connection". Run once with the janitor and once
// without, to show what the janitor buys: without it B must wait for A's
// registry entries to expire.
package k8s_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/flvcdn/flvcdn/test/harness"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flvcdn/flvcdn/pkg/k8s"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/test/e2e"
)

// originTTL is the origins' --ttl (their default): how long a dead origin's
// claim and liveness record survive without the janitor.
const originTTL = 3 * time.Second

func TestFailoverOnPodDeletion(t *testing.T) {
	env := failoverEnv{
		kubeconfig:        mustEnv(t, "KUBECONFIG"),
		ns:                mustEnv(t, "FLVCDN_K8S_NAMESPACE"),
		lease:             mustEnv(t, "FLVCDN_K8S_LEASE"),
		janitorKubeconfig: os.Getenv("FLVCDN_K8S_JANITOR_KUBECONFIG"),
	}
	if env.janitorKubeconfig == "" {
		env.janitorKubeconfig = env.kubeconfig
	}
	for _, tool := range []string{"ffmpeg", "nats-server", "redis-server"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: the failover scenario needs it", tool) // never a skip
		}
	}
	env.bin = buildBinaries(t)
	env.media = makeMedia(t)

	withJanitor := env.failover(t, true)
	withoutJanitor := env.failover(t, false)
	t.Logf("FIGURE failover with janitor (%s): after the pod delete, origin A purged %d ms, stream claimed by origin B %d ms, viewer resumed %d ms",
		withJanitor.janitorMode, withJanitor.purged.Milliseconds(), withJanitor.claimed.Milliseconds(), withJanitor.resumed.Milliseconds())
	if withJanitor.purged == 0 {
		t.Error("with the janitor, no origin-down event for origin A was seen")
	}
	t.Logf("FIGURE failover without janitor (registry TTL %v): claimed %d ms, resumed %d ms",
		originTTL, withoutJanitor.claimed.Milliseconds(), withoutJanitor.resumed.Milliseconds())
	if withJanitor.claimed >= withoutJanitor.claimed {
		t.Errorf("the janitor made no difference: %v with, %v without", withJanitor.claimed, withoutJanitor.claimed)
	}
}

type failoverEnv struct {
	kubeconfig, janitorKubeconfig, ns, lease string
	bin, media                               string
}

type failoverResult struct {
	purged, claimed, resumed time.Duration // after the pod delete; purged 0 = never
	janitorMode              string
}

func (env failoverEnv) failover(t *testing.T, janitor bool) failoverResult {
	var res failoverResult
	name := map[bool]string{true: "with janitor", false: "without janitor"}[janitor]
	t.Run(name, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		admin, err := k8s.NewClient(env.kubeconfig)
		must(t, err)

		natsURL := startNATSServer(t)
		redisURL, store := startRedisURL(ctx, t)

		instance := fmt.Sprintf("failover-%d", time.Now().UnixNano()%1_000_000)
		selector := "app.kubernetes.io/name=flvcdn,app.kubernetes.io/instance=" + instance + ",app.kubernetes.io/component=origin"
		podA, podB := instance+"-origin-a", instance+"-origin-b"
		for _, p := range []string{podA, podB} {
			createOriginPod(ctx, t, admin, env.ns, instance, p)
			t.Cleanup(func() { _ = admin.CoreV1().Pods(env.ns).Delete(context.Background(), p, metav1.DeleteOptions{}) })
		}
		for _, p := range []string{podA, podB} {
			waitPodReady(ctx, t, admin, env.ns, p)
		}

		// The origins get the janitor's settings as the chart would pass them;
		// a binary that does not run the janitor yet says so in its log.
		common := []string{"--nats-url", natsURL, "--redis-url", redisURL, "--log-format", "text", "--ttl", originTTL.String()}
		originEnv := []string{
			"POD_NAMESPACE=" + env.ns,
			"FLVCDN_JANITOR_NAMESPACE=" + env.ns,
			"FLVCDN_JANITOR_LEASE=" + env.lease,
			"FLVCDN_JANITOR_SELECTOR=" + selector,
		}
		if janitor {
			common = append(common, "--janitor", "--kubeconfig", env.janitorKubeconfig)
		}
		// B first, so that when the janitor runs inside the origins, B (the
		// survivor) holds the Lease.
		b := startOrigin(ctx, t, env.bin, podB, common, originEnv)
		if janitor {
			res.janitorMode = b.janitorMode(ctx, t)
			if res.janitorMode == "in origin processes" {
				waitLog(ctx, t, b.proc, "janitor: leading")
			}
		}
		a := startOrigin(ctx, t, env.bin, podA, common, originEnv)
		if janitor && res.janitorMode == "in the test process" {
			runJanitorInTest(ctx, t, env, selector, store)
		}
		edgeAddr := freeAddr(t)
		edge := startProc(t, "edge", filepath.Join(env.bin, "flvcdn-edge"), nil,
			"--id", "edge-1", "--nats-url", natsURL, "--redis-url", redisURL, "--http-addr", edgeAddr, "--log-format", "text")
		waitHTTP(ctx, t, edge, "http://"+edgeAddr+"/readyz")

		const stream = "live/failover"
		pubA := startProc(t, "ffmpeg-a", "ffmpeg", nil, ffmpegArgs(env.media, "rtmp://"+a.rtmp+"/"+stream)...)
		waitOwner(ctx, t, store, stream, podA)
		url := "http://" + edgeAddr + "/" + stream + ".flv"
		var viewer *e2e.Viewer
		waitUntil(ctx, t, "the stream plays on the edge", func() error {
			v, err := e2e.StartViewer(ctx, url, e2e.ViewOptions{WantAudio: true, WantVideo: true, MaxStall: 3 * originTTL})
			viewer = v
			return err
		})
		defer viewer.Stop()
		if err := viewer.WaitTags(ctx, "two keyframes", func(v *e2e.Viewer) bool { return v.Keyframes() >= 2 }); err != nil {
			t.Fatal(err)
		}
		events, err := store.Events(ctx)
		must(t, err)

		// The pod of origin A is deleted and its process dies with it; the
		// encoder reconnects and the load balancer sends it to B.
		start := time.Now()
		must(t, admin.CoreV1().Pods(env.ns).Delete(ctx, podA, metav1.DeleteOptions{}))
		a.kill()
		pubA.kill()
		startProc(t, "ffmpeg-b", "ffmpeg", nil, ffmpegArgs(env.media, "rtmp://"+b.rtmp+"/"+stream)...)

		downAt := waitPublishEvent(ctx, t, events, stream, podB, podA)
		res.claimed = time.Since(start)
		if !downAt.IsZero() {
			res.purged = downAt.Sub(start)
		}
		keys := viewer.Keyframes()
		if err := viewer.WaitTags(ctx, "a keyframe from origin B", func(v *e2e.Viewer) bool { return v.Keyframes() > keys }); err != nil {
			t.Fatal(err)
		}
		res.resumed = time.Since(start)
		if err := viewer.WaitTags(ctx, "two more keyframes", func(v *e2e.Viewer) bool { return v.Keyframes() > keys+2 }); err != nil {
			t.Fatal(err)
		}
		if err := viewer.Err(); err != nil {
			t.Fatalf("viewer: %v", err)
		}
		t.Logf("%s: B claimed the stream after %v, the viewer got B's first keyframe after %v (%s)",
			name, res.claimed, res.resumed, viewer.Report())
		t.Logf("origin B's log around the failover:\n%s", grepLines(b.logs(), "janitor", "publish", "claim"))
	})
	if res.resumed == 0 {
		t.FailNow() // the subtest failed
	}
	return res
}

// originProc is one flvcdn-origin host process standing in for a pod.
type originProc struct {
	*proc
	rtmp, http string
}

func startOrigin(ctx context.Context, t *testing.T, bin, pod string, common, env []string) *originProc {
	t.Helper()
	o := &originProc{rtmp: freeAddr(t), http: freeAddr(t)}
	args := append([]string{"--rtmp-addr", o.rtmp, "--http-addr", o.http}, common...)
	o.proc = startProc(t, pod, filepath.Join(bin, "flvcdn-origin"), append(env, "POD_NAME="+pod), args...)
	waitHTTP(ctx, t, o.proc, "http://"+o.http+"/readyz")
	return o
}

// janitorMode tells whether the origin binary runs the janitor itself.
func (o *originProc) janitorMode(ctx context.Context, t *testing.T) string {
	t.Helper()
	var mode string
	waitUntil(ctx, t, o.Name+" to say what its janitor does", func() error {
		switch l := o.logs(); {
		case strings.Contains(l, "janitor: leading"), strings.Contains(l, "janitor: following"):
			mode = "in origin processes"
		case strings.Contains(l, "not built into this binary"):
			mode = "in the test process"
		default:
			return errors.New("no janitor line in the log yet")
		}
		return nil
	})
	return mode
}

// runJanitorInTest runs the janitor as the origins will, with the chart
// ServiceAccount's rights, until the subtest ends.
func runJanitorInTest(ctx context.Context, t *testing.T, env failoverEnv, selector string, store registry.Store) {
	t.Helper()
	cs, err := k8s.NewClient(env.janitorKubeconfig)
	must(t, err)
	watching := make(chan struct{})
	log := newSignalLogger("janitor: watching origin pods", watching)
	jctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- k8s.RunJanitor(jctx, cs, k8s.JanitorConfig{
			Namespace: env.ns, Identity: "failover-test", LeaseName: env.lease, OriginSelector: selector,
			RetryPeriod: time.Second,
		}, store, log)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunJanitor: %v", err)
		}
	})
	select {
	case <-watching:
	case err := <-done:
		t.Fatalf("janitor stopped: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("janitor never watched origin pods")
	}
}

func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := harness.BuildBinaries(repoRoot(t), dir, false); err != nil {
		t.Fatal(err)
	}
	return dir
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := harness.RepoRoot()
	must(t, err)
	return dir
}

func ffmpegArgs(file, url string) []string {
	return []string{"-hide_banner", "-loglevel", "warning", "-nostdin", "-re", "-stream_loop", "-1",
		"-i", file, "-c", "copy", "-f", "flv", url}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := harness.FreeAddr()
	must(t, err)
	return addr
}

func startNATSServer(t *testing.T) string {
	t.Helper()
	addr := freeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	p := startProc(t, "nats-server", "nats-server", nil, "-a", host, "-p", port)
	waitUntil(context.Background(), t, "nats-server", func() error {
		if err := p.running(); err != nil {
			return err
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	return "nats://" + addr
}

func startRedisURL(ctx context.Context, t *testing.T) (string, *registry.Redis) {
	t.Helper()
	addr := freeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	startProc(t, "redis-server", "redis-server", nil, "--port", port, "--bind", host, "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	client := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { client.Close() })
	waitUntil(ctx, t, "redis-server", func() error { return client.Ping(ctx).Err() })
	store := registry.NewRedis(client, "") // the binaries' default namespace
	t.Cleanup(func() { store.Close() })
	return "redis://" + addr + "/0", store
}

func waitOwner(ctx context.Context, t *testing.T, store registry.Store, stream, origin string) {
	t.Helper()
	waitUntil(ctx, t, stream+" owned by "+origin, func() error {
		o, err := store.LookupStream(ctx, stream)
		if err != nil {
			return err
		}
		if o.Origin != origin {
			return fmt.Errorf("owned by %s", o.Origin)
		}
		return nil
	})
}

// waitPublishEvent waits for the publish event of stream by origin (the
// moment origin holds the claim) and returns when the origin-down event of
// dead arrived before it (zero if none did).
func waitPublishEvent(ctx context.Context, t *testing.T, events <-chan registry.Event, stream, origin, dead string) time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var downAt time.Time
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("registry events closed")
			}
			if ev.Kind == registry.EventOriginDown && ev.Origin == dead && downAt.IsZero() {
				downAt = time.Now()
			}
			if ev.Stream == stream && ev.Origin == origin && ev.Kind == registry.EventPublish {
				return downAt
			}
		case <-ctx.Done():
			t.Fatalf("no publish event for %s by %s", stream, origin)
		}
	}
}

// waitUntil polls check until it returns nil, for at most 30 s.
func waitUntil(ctx context.Context, t *testing.T, what string, check func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := harness.Poll(ctx, check); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func waitHTTP(ctx context.Context, t *testing.T, p *proc, url string) {
	t.Helper()
	waitUntil(ctx, t, p.Name+" "+url, func() error {
		if err := p.running(); err != nil {
			return err
		}
		code, err := httpStatus(ctx, url)
		if err == nil && code != 200 {
			err = fmt.Errorf("status %d", code)
		}
		return err
	})
}

func waitLog(ctx context.Context, t *testing.T, p *proc, text string) {
	t.Helper()
	waitUntil(ctx, t, p.Name+" to log "+strconv.Quote(text), func() error {
		if !strings.Contains(p.logs(), text) {
			return errors.New("not yet")
		}
		return nil
	})
}

// proc is a process started by the test (test/harness runs it): stopped at cleanup
// (SIGTERM, then SIGKILL after 2 s), its output shown when the test fails.
type proc struct{ *harness.Proc }

func (p *proc) logs() string { return p.Log.String() }

func startProc(t *testing.T, name, bin string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	hp, err := harness.Start(name, cmd, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{hp}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("--- %s log:\n%s", name, lastLines(p.logs(), 40))
		}
	})
	return p
}

func (p *proc) running() error { return p.Running() }

func (p *proc) stop() { p.Stop(2 * time.Second) }

func (p *proc) kill() { p.Kill() }

// grepLines returns the lines of s that contain any of words.
func grepLines(s string, words ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func httpStatus(ctx context.Context, url string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
