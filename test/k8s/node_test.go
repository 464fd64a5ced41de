//go:build k8s_node

// The user stories of the chart on a real node (test/k8s/node.sh starts it and
// installs the release first): every byte a viewer gets here went through
// containers that containerd runs, a CNI bridge and kube-proxy's iptables
// rules.
//
//  1. ffmpeg publishes through the origin Service (ClusterIP, kube-proxy);
//     viewers play through the edge Service: ClusterIP, NodePort and the
//     LoadBalancer address.
//  2. kubectl scale to 3 edges: each new pod gets ready and serves the stream.
//  3. kubectl delete pod of the origin holding the stream while a viewer
//     watches through the edge Service: the viewer keeps its connection; the
//     longest wait between two tags is the stall.
//  4. helm upgrade changing an edge setting rolls the edges: viewers of a
//     draining edge get a clean end and reconnect through the Service; the
//     reconnect time and the fewest ready edges during the rollout are measured.
//
// Figures are printed as FIGURE lines for node.sh's summary.
package k8s_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flvcdn/flvcdn/pkg/flv"
	"github.com/flvcdn/flvcdn/pkg/probe"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

type nodeEnv struct {
	ns, release, chart, values string
	nodeIP, lbIP               string
}

func TestNode(t *testing.T) {
	env := nodeEnv{
		ns:      nodeMustEnv(t, "FLVCDN_NODE_NAMESPACE"),
		release: nodeMustEnv(t, "FLVCDN_NODE_RELEASE"),
		chart:   nodeMustEnv(t, "FLVCDN_NODE_CHART"),
		values:  nodeMustEnv(t, "FLVCDN_NODE_VALUES"),
		nodeIP:  nodeMustEnv(t, "FLVCDN_NODE_IP"),
		lbIP:    nodeMustEnv(t, "FLVCDN_NODE_LB_IP"),
	}
	nodeMustEnv(t, "KUBECONFIG")
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()

	originSvc := env.release + "-origin"
	edgeSvc := env.release + "-edge"
	originIP := kubectl(t, "get", "svc", originSvc, "-n", env.ns, "-o", "jsonpath={.spec.clusterIP}")
	edgeIP := kubectl(t, "get", "svc", edgeSvc, "-n", env.ns, "-o", "jsonpath={.spec.clusterIP}")
	edgeNodePort := kubectl(t, "get", "svc", edgeSvc, "-n", env.ns, "-o", "jsonpath={.spec.ports[0].nodePort}")
	secretB64 := kubectl(t, "get", "secret", env.release+"-publish", "-n", env.ns, "-o", "jsonpath={.data.publish-secret}")
	secret, err := base64.StdEncoding.DecodeString(secretB64)
	if err != nil || len(secret) == 0 {
		t.Fatalf("publish secret: %v (%q)", err, secretB64)
	}
	name, err := stream.NewName("live", "node")
	if err != nil {
		t.Fatal(err)
	}
	publishURL := fmt.Sprintf("rtmp://%s:1935/%s?key=%s", originIP, name, stream.PublishKey(string(secret), name))
	path := "/" + string(name) + ".flv"
	clusterURL := "http://" + edgeIP + ":80" + path
	nodePortURL := "http://" + net.JoinHostPort(env.nodeIP, edgeNodePort) + path
	lbURL := "http://" + env.lbIP + ":80" + path

	// --- publish through the origin Service ----------------------------------
	media := makeMedia(t)
	pub := startPublisher(ctx, t, media, publishURL)
	defer pub.stop()

	// --- play through the edge Service: ClusterIP, NodePort, LoadBalancer -------
	for _, p := range []struct{ what, url string }{
		{"ClusterIP", clusterURL}, {"NodePort", nodePortURL}, {"LoadBalancer", lbURL},
	} {
		start := time.Now()
		var v *nodeViewer
		// The first play of the stream may come before the origin has claimed it.
		nodeWait(ctx, t, "playing via "+p.what, 60*time.Second, func() error {
			v = startNodeViewer(ctx, p.url, false)
			if err := v.waitTags(ctx, 25, 20*time.Second); err != nil {
				v.stop()
				return err
			}
			return nil
		})
		first := v.firstTagAfter(start)
		if err := v.waitKeyframes(ctx, 2, 20*time.Second); err != nil {
			t.Fatalf("via %s: %v", p.what, err)
		}
		r, err := v.stop()
		if err != nil {
			t.Fatalf("via %s: %v", p.what, err)
		}
		t.Logf("via %s (%s): %s", p.what, p.url, r)
		nodeFigure(t, "play via %s: first tag after %.1f ms, %d tags / %d keyframes checked", p.what, float64(first.Microseconds())/1000, r.Tags, r.Keyframes)
	}

	// --- kubectl scale to 3 edges -----------------------------------------------
	start := time.Now()
	kubectl(t, "scale", "-n", env.ns, "deploy/"+edgeSvc, "--replicas=3")
	var edges []string
	nodeWait(ctx, t, "3 ready edge pods", 120*time.Second, func() error {
		edges = readyPodIPs(t, env, "edge")
		if len(edges) != 3 {
			return fmt.Errorf("%d ready edge pods", len(edges))
		}
		if n := readyEndpoints(t, env, edgeSvc); n != 3 {
			return fmt.Errorf("%d ready endpoints", n)
		}
		return nil
	})
	scaleMs := time.Since(start).Milliseconds()
	for _, ip := range edges {
		v := startNodeViewer(ctx, "http://"+net.JoinHostPort(ip, "8080")+path, false)
		if err := v.waitKeyframes(ctx, 1, 20*time.Second); err != nil {
			t.Fatalf("edge pod %s: %v", ip, err)
		}
		if _, err := v.stop(); err != nil {
			t.Fatalf("edge pod %s: %v", ip, err)
		}
	}
	nodeFigure(t, "kubectl scale to 3 edges: all ready and in the Service after %d ms, each pod serves the stream", scaleMs)

	// --- delete the origin pod holding the stream -------------------------------
	holder := streamOrigin(ctx, t, env)
	watcher := startNodeViewer(ctx, clusterURL, false)
	if err := watcher.waitKeyframes(ctx, 2, 20*time.Second); err != nil {
		t.Fatalf("viewer before the origin deletion: %v", err)
	}
	restartsBefore := pub.restarts()
	deleted := time.Now()
	watcher.resetGap()
	kubectl(t, "delete", "pod", holder, "-n", env.ns, "--wait=false")
	// The origin drains its publisher (preStop sleep + --drain-grace), the
	// encoder reconnects through the Service to the other origin, the edge
	// follows; then the viewer must keep receiving keyframes.
	nodeWait(ctx, t, "the publisher back on another origin", 90*time.Second, func() error {
		if pub.restarts() == restartsBefore {
			return errors.New("publisher not reconnected yet")
		}
		if o := streamOriginOnce(t, env); o == "" || o == holder {
			return fmt.Errorf("stream held by %q", o)
		}
		return nil
	})
	keys := watcher.keyframes()
	if err := watcher.waitKeyframes(ctx, keys+3, 30*time.Second); err != nil {
		t.Fatalf("viewer after the origin deletion: %v", err)
	}
	stall, conns := watcher.maxGap(), watcher.connections()
	r, err := watcher.stop()
	if err != nil {
		t.Fatalf("viewer across the origin deletion: %v (%s)", err, r)
	}
	if conns != 1 {
		t.Fatalf("the viewer reconnected (%d connections) across the origin deletion", conns)
	}
	nodeFigure(t, "origin pod %s deleted: the viewer kept its connection, longest gap between tags %d ms, publisher back after %d ms",
		holder, stall.Milliseconds(), pub.lastStart().Sub(deleted).Milliseconds())

	// --- helm upgrade rolls the edges while viewers watch -------------------------
	viewers := make([]*nodeViewer, 3)
	for i := range viewers {
		viewers[i] = startNodeViewer(ctx, clusterURL, true)
		if err := viewers[i].waitKeyframes(ctx, 1, 20*time.Second); err != nil {
			t.Fatalf("viewer %d before the upgrade: %v", i, err)
		}
	}
	oldEdges := podNames(t, env, "edge")
	var (
		minReady = 1 << 30
		sampleMu sync.Mutex
	)
	sampleCtx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sampleCtx.Err() == nil {
			n := readyEndpoints(t, env, edgeSvc)
			sampleMu.Lock()
			minReady = min(minReady, n)
			sampleMu.Unlock()
			time.Sleep(200 * time.Millisecond)
		}
	}()
	start = time.Now()
	out, err := exec.CommandContext(ctx, "helm", "upgrade", env.release, env.chart, "-n", env.ns, "-f", env.values,
		"--set", "edge.limits.maxViewersPerStream=1000", "--wait", "--timeout", "5m").CombinedOutput()
	if err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	nodeWait(ctx, t, "old edge pods gone", 120*time.Second, func() error {
		now := podNames(t, env, "edge")
		for _, o := range oldEdges {
			for _, n := range now {
				if n == o {
					return fmt.Errorf("old edge pod %s still there", o)
				}
			}
		}
		return nil
	})
	rollMs := time.Since(start).Milliseconds()
	stopSampling()
	<-sampled
	var reconnects []time.Duration
	for i, v := range viewers {
		if err := v.waitKeyframes(ctx, v.keyframes()+2, 30*time.Second); err != nil {
			t.Fatalf("viewer %d after the upgrade: %v", i, err)
		}
		rs := v.reconnectTimes()
		if len(rs) == 0 {
			t.Fatalf("viewer %d was never moved off its edge by the rollout", i)
		}
		if _, err := v.stop(); err != nil {
			t.Fatalf("viewer %d: %v", i, err)
		}
		reconnects = append(reconnects, rs...)
	}
	sort.Slice(reconnects, func(i, j int) bool { return reconnects[i] < reconnects[j] })
	if minReady < 1 {
		t.Fatalf("no ready edge in the Service at some point of the rollout")
	}
	nodeFigure(t, "helm upgrade rolled 3 edges in %d ms: %d viewer reconnects, all after a clean end, reconnect median %.1f ms max %.1f ms, at least %d edge(s) ready throughout",
		rollMs, len(reconnects), float64(reconnects[len(reconnects)/2].Microseconds())/1000, float64(reconnects[len(reconnects)-1].Microseconds())/1000, minReady)
}

// --- viewers -------------------------------------------------------------------------

// nodeViewer plays one HTTP-FLV URL, checks every tag with pkg/probe's checker and
// measures the longest wall-clock wait between two tags. With reconnect, a
// clean end of the response (EOF at a tag boundary, as a draining edge ends
// it) is followed by a new request to the same URL, and the time from the end
// to the first tag of the new response is recorded; any other failure ends it.
type nodeViewer struct {
	url       string
	reconnect bool
	cancel    context.CancelFunc
	done      chan struct{}

	mu        sync.Mutex
	err       error
	tags      int
	keys      int
	conns     int
	started   time.Time
	firstTag  time.Time
	lastTag   time.Time
	gap       time.Duration
	endedAt   time.Time // last clean end, zero once the next response has a tag
	reconns   []time.Duration
	last      probe.Report
	stopped   bool
	stallWait time.Duration
}

func startNodeViewer(ctx context.Context, url string, reconnect bool) *nodeViewer {
	ctx, cancel := context.WithCancel(ctx)
	v := &nodeViewer{url: url, reconnect: reconnect, cancel: cancel, done: make(chan struct{}),
		started: time.Now(), stallWait: 10 * time.Second}
	go v.run(ctx)
	return v
}

// nodeHTTP is the viewers' client: a pod that is gone must fail the dial in
// seconds (no ARP answer), not after the kernel's SYN retries.
var nodeHTTP = &http.Client{Transport: &http.Transport{
	DialContext:           (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
	ResponseHeaderTimeout: 10 * time.Second,
	DisableCompression:    true,
}}

// metricsHTTP reads /metrics of a pod.
var metricsHTTP = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
	DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
}}

func (v *nodeViewer) run(ctx context.Context) {
	defer close(v.done)
	for {
		err := v.playOnce(ctx)
		v.mu.Lock()
		stopped, ended := v.stopped, v.endedAt
		v.mu.Unlock()
		if stopped || ctx.Err() != nil {
			return
		}
		if v.reconnect && errors.Is(err, probe.ErrEnded) {
			continue // at once, as a player does
		}
		if v.reconnect && !ended.IsZero() && time.Since(ended) < 10*time.Second {
			// The Service may briefly refuse while its endpoints move.
			time.Sleep(50 * time.Millisecond)
			continue
		}
		v.mu.Lock()
		v.err = err
		v.mu.Unlock()
		return
	}
}

func (v *nodeViewer) playOnce(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.url, nil)
	if err != nil {
		return err
	}
	resp, err := nodeHTTP.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", v.url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return fmt.Errorf("GET %s: status %d %q", v.url, resp.StatusCode, b)
	}
	v.mu.Lock()
	v.conns++
	v.mu.Unlock()
	// A stalled response is cut after stallWait: that is a failure, not an end.
	stall := time.AfterFunc(v.stallWait, func() { resp.Body.Close() })
	defer stall.Stop()
	// Structure (header flags, join order, splices, timestamps) is judged tag by tag;
	// media rate and drift are the e2e suite's to judge, not this node run's, whose
	// failovers stall for seconds, so their windows are set out of reach here.
	c := probe.New(probe.Options{Expect: &probe.Tracks{Audio: true, Video: true},
		MaxStall: v.stallWait, RateWindow: time.Hour, MaxDrift: time.Hour}, time.Now())
	fr := flv.NewReader(resp.Body, 0)
	if err := fr.ReadHeader(); err != nil {
		return fmt.Errorf("FLV header: %w", err)
	}
	if err := c.Header(time.Now(), fr.Flags); err != nil {
		return err
	}
	for {
		tag, err := fr.ReadTag()
		if err != nil {
			v.mu.Lock()
			defer v.mu.Unlock()
			v.last = c.Report()
			if errors.Is(err, io.EOF) {
				v.endedAt = time.Now()
				return fmt.Errorf("%w after %d tags", probe.ErrEnded, c.Report().Tags)
			}
			return fmt.Errorf("after %d tags: %w", c.Report().Tags, err)
		}
		stall.Reset(v.stallWait)
		if err := c.Tag(time.Now(), tag.Type(), tag.Timestamp(), 0, tag.Body()); err != nil {
			return err
		}
		now := time.Now()
		kind := flv.Classify(tag.Type(), tag.Body())
		v.mu.Lock()
		if !v.lastTag.IsZero() && now.Sub(v.lastTag) > v.gap {
			v.gap = now.Sub(v.lastTag)
		}
		if v.firstTag.IsZero() {
			v.firstTag = now
		}
		if !v.endedAt.IsZero() {
			v.reconns = append(v.reconns, now.Sub(v.endedAt))
			v.endedAt = time.Time{}
		}
		v.lastTag = now
		v.tags++
		if kind == flv.KindKeyframe {
			v.keys++
		}
		v.last = c.Report()
		v.mu.Unlock()
	}
}

func (v *nodeViewer) snapshot() (tags, keys int, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.tags, v.keys, v.err
}

func (v *nodeViewer) waitTags(ctx context.Context, n int, limit time.Duration) error {
	return v.waitFor(ctx, limit, fmt.Sprintf("%d tags", n), func(tags, _ int) bool { return tags >= n })
}

func (v *nodeViewer) waitKeyframes(ctx context.Context, n int, limit time.Duration) error {
	return v.waitFor(ctx, limit, fmt.Sprintf("%d keyframes", n), func(_, keys int) bool { return keys >= n })
}

func (v *nodeViewer) waitFor(ctx context.Context, limit time.Duration, what string, ok func(tags, keys int) bool) error {
	deadline := time.Now().Add(limit)
	for {
		tags, keys, err := v.snapshot()
		if ok(tags, keys) {
			return nil
		}
		select {
		case <-v.done:
			tags, keys, err = v.snapshot()
			if ok(tags, keys) {
				return nil
			}
			return fmt.Errorf("%s: viewer ended before %s (%d tags): %v", v.url, what, tags, err)
		default:
		}
		if err != nil {
			return err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s: no %s within %v (%d tags, %d keyframes)", v.url, what, limit, tags, keys)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (v *nodeViewer) keyframes() int { _, k, _ := v.snapshot(); return k }

func (v *nodeViewer) firstTagAfter(t time.Time) time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.firstTag.Sub(t)
}

func (v *nodeViewer) resetGap() { v.mu.Lock(); v.gap = 0; v.mu.Unlock() }

func (v *nodeViewer) maxGap() time.Duration { v.mu.Lock(); defer v.mu.Unlock(); return v.gap }

func (v *nodeViewer) connections() int { v.mu.Lock(); defer v.mu.Unlock(); return v.conns }

func (v *nodeViewer) reconnectTimes() []time.Duration {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]time.Duration(nil), v.reconns...)
}

// stop ends the viewer and returns what it saw and its failure, if any.
func (v *nodeViewer) stop() (probe.Report, error) {
	v.mu.Lock()
	v.stopped = true
	v.mu.Unlock()
	v.cancel()
	<-v.done
	v.mu.Lock()
	defer v.mu.Unlock()
	r := v.last
	r.Tags = v.tags
	r.Keyframes = v.keys
	return r, v.err
}

// --- the publisher -----------------------------------------------------------------------

// publisher runs ffmpeg publishing a looped file over RTMP and restarts it
// when it exits, as an encoder with auto-reconnect does.
type publisher struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	starts []time.Time
	log    bytes.Buffer
}

func startPublisher(ctx context.Context, t *testing.T, media, url string) *publisher {
	ctx, cancel := context.WithCancel(ctx)
	p := &publisher{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			p.mu.Lock()
			p.starts = append(p.starts, time.Now())
			p.mu.Unlock()
			cmd := exec.CommandContext(ctx, "ffmpeg", "-hide_banner", "-loglevel", "warning", "-nostdin", "-re",
				"-stream_loop", "-1", "-i", media, "-c", "copy", "-f", "flv", url)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			p.mu.Lock()
			fmt.Fprintf(&p.log, "ffmpeg exited: %v: %s\n", err, out.Bytes())
			p.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() {
		p.stop()
		p.mu.Lock()
		defer p.mu.Unlock()
		if t.Failed() {
			t.Logf("publisher:\n%s", p.log.String())
		}
	})
	return p
}

func (p *publisher) stop() { p.cancel(); <-p.done }

func (p *publisher) restarts() int { p.mu.Lock(); defer p.mu.Unlock(); return len(p.starts) - 1 }

func (p *publisher) lastStart() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts[len(p.starts)-1]
}

// --- cluster helpers -----------------------------------------------------------------------

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("kubectl", args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("kubectl %s: %v: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out))
}

func selector(env nodeEnv, component string) string {
	return "app.kubernetes.io/instance=" + env.release + ",app.kubernetes.io/component=" + component
}

// readyPodIPs lists the IPs of the component's pods that are ready and not terminating.
func readyPodIPs(t *testing.T, env nodeEnv, component string) []string {
	out := kubectl(t, "get", "pods", "-n", env.ns, "-l", selector(env, component), "-o",
		`jsonpath={range .items[*]}{.metadata.deletionTimestamp}{"|"}{.status.podIP}{"|"}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
	var ips []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, "|")
		if len(f) == 3 && f[0] == "" && f[1] != "" && f[2] == "True" {
			ips = append(ips, f[1])
		}
	}
	return ips
}

func podNames(t *testing.T, env nodeEnv, component string) []string {
	return strings.Fields(kubectl(t, "get", "pods", "-n", env.ns, "-l", selector(env, component), "-o", "jsonpath={.items[*].metadata.name}"))
}

func readyEndpoints(t *testing.T, env nodeEnv, svc string) int {
	out, err := exec.Command("kubectl", "get", "endpointslices", "-n", env.ns, "-l", "kubernetes.io/service-name="+svc,
		"-o", `jsonpath={range .items[*].endpoints[*]}{.conditions.ready}{"\n"}{end}`).Output()
	if err != nil {
		return -1
	}
	return strings.Count(string(out), "true")
}

// streamOriginOnce returns the origin pod whose /metrics reports a live
// stream, or "" when none or several do.
func streamOriginOnce(t *testing.T, env nodeEnv) string {
	out := kubectl(t, "get", "pods", "-n", env.ns, "-l", selector(env, "origin"), "-o",
		`jsonpath={range .items[*]}{.metadata.name}{" "}{.status.podIP}{" "}{.metadata.deletionTimestamp}{"\n"}{end}`)
	var holders []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 2 { // no IP yet, or terminating
			continue
		}
		resp, err := metricsHTTP.Get("http://" + net.JoinHostPort(f[1], "8081") + "/metrics")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "flvcdn_origin_streams "); ok {
				if n, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && n > 0 {
					holders = append(holders, f[0])
				}
			}
		}
	}
	if len(holders) != 1 {
		return ""
	}
	return holders[0]
}

func streamOrigin(ctx context.Context, t *testing.T, env nodeEnv) string {
	var holder string
	nodeWait(ctx, t, "the origin holding the stream", 30*time.Second, func() error {
		if holder = streamOriginOnce(t, env); holder == "" {
			return errors.New("no single origin reports the stream")
		}
		return nil
	})
	return holder
}

func nodeWait(ctx context.Context, t *testing.T, what string, limit time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func nodeFigure(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("FIGURE "+format, args...)
}

func nodeMustEnv(t *testing.T, k string) string {
	t.Helper()
	v := os.Getenv(k)
	if v == "" {
		t.Fatalf("%s is not set: run test/k8s/node.sh", k)
	}
	return v
}

// TestNodeHPA is step 6, run by node.sh once metrics-server serves the
// metrics API: viewer load through the edge Service raises the edges' CPU past
// the HPA's target, and the HPA adds an edge. Viewers are added in batches
// until the HPA asks for more edges; the time from the first batch to that
// decision and to the new edge being ready are the figures.
func TestNodeHPA(t *testing.T) {
	env := nodeEnv{
		ns:      nodeMustEnv(t, "FLVCDN_NODE_NAMESPACE"),
		release: nodeMustEnv(t, "FLVCDN_NODE_RELEASE"),
	}
	nodeMustEnv(t, "KUBECONFIG")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	hpa := env.release + "-edge"
	status := func() (util, current, desired int, err error) {
		out := kubectl(t, "get", "hpa", hpa, "-n", env.ns, "-o",
			`jsonpath={.status.currentMetrics[0].resource.current.averageUtilization} {.status.currentReplicas} {.status.desiredReplicas}`)
		f := strings.Fields(out)
		if len(f) != 3 {
			return 0, 0, 0, fmt.Errorf("HPA status %q: no CPU reading yet", out)
		}
		var n [3]int
		for i := range f {
			if n[i], err = strconv.Atoi(f[i]); err != nil {
				return 0, 0, 0, fmt.Errorf("HPA status %q: %w", out, err)
			}
		}
		return n[0], n[1], n[2], nil
	}
	target := kubectl(t, "get", "hpa", hpa, "-n", env.ns, "-o", `jsonpath={.spec.metrics[0].resource.target.averageUtilization}`)

	// At rest: the HPA reads the edges' CPU and has settled (it may first
	// scale 3 edges down to minReplicas).
	var util0, replicas0 int
	nodeWait(ctx, t, "the HPA settled on a CPU reading", 4*time.Minute, func() error {
		u, c, d, err := status()
		if err != nil {
			return err
		}
		if c != d {
			return fmt.Errorf("HPA scaling from %d to %d", c, d)
		}
		if n := len(readyPodIPs(t, env, "edge")); n != c {
			return fmt.Errorf("%d ready edges, HPA has %d", n, c)
		}
		util0, replicas0 = u, c
		return nil
	})
	t.Logf("HPA at rest: %d%% of the CPU request (target %s%%), %d edges", util0, target, replicas0)

	// A stream to watch.
	originIP := kubectl(t, "get", "svc", env.release+"-origin", "-n", env.ns, "-o", "jsonpath={.spec.clusterIP}")
	edgeIP := kubectl(t, "get", "svc", env.release+"-edge", "-n", env.ns, "-o", "jsonpath={.spec.clusterIP}")
	secret, err := base64.StdEncoding.DecodeString(kubectl(t, "get", "secret", env.release+"-publish", "-n", env.ns, "-o", "jsonpath={.data.publish-secret}"))
	if err != nil {
		t.Fatal(err)
	}
	name, err := stream.NewName("live", "load")
	if err != nil {
		t.Fatal(err)
	}
	pub := startPublisher(ctx, t, makeMedia(t), fmt.Sprintf("rtmp://%s:1935/%s?key=%s", originIP, name, stream.PublishKey(string(secret), name)))
	defer pub.stop()
	url := "http://" + edgeIP + ":80/" + string(name) + ".flv"
	probe := startNodeViewer(ctx, url, false)
	nodeWait(ctx, t, "the load stream playing", 60*time.Second, func() error {
		if err := probe.waitKeyframes(ctx, 1, 20*time.Second); err != nil {
			probe.stop()
			probe = startNodeViewer(ctx, url, false)
			return err
		}
		return nil
	})
	probe.stop()

	// Load: batches of viewers that read and discard, until the HPA asks for more edges.
	const batch, maxViewers = 50, 1000
	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopLoad(); wg.Wait() }()
	var active atomicCounter
	start := time.Now()
	viewers, util, desired := 0, util0, replicas0
	var decided time.Duration
	lastBatch := time.Time{}
	for decided == 0 {
		if viewers < maxViewers && time.Since(lastBatch) >= 10*time.Second {
			for i := 0; i < batch; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					loadViewer(loadCtx, url, &active)
				}()
			}
			viewers += batch
			lastBatch = time.Now()
		}
		if u, _, d, err := status(); err == nil {
			util, desired = u, d
			if d > replicas0 {
				decided = time.Since(start)
				break
			}
		}
		if ctx.Err() != nil || time.Since(start) > 5*time.Minute {
			t.Fatalf("the HPA never asked for more than %d edges: %d viewers (%d connected), CPU %d%% of requests (target %s%%)",
				replicas0, viewers, active.load(), util, target)
		}
		time.Sleep(time.Second)
	}
	nodeWait(ctx, t, fmt.Sprintf("%d ready edges", desired), 120*time.Second, func() error {
		if n := len(readyPodIPs(t, env, "edge")); n < desired {
			return fmt.Errorf("%d ready edges", n)
		}
		if n := readyEndpoints(t, env, env.release+"-edge"); n < desired {
			return fmt.Errorf("%d ready endpoints", n)
		}
		return nil
	})
	ready := time.Since(start)
	nodeFigure(t, "HPA: at rest %d%% CPU of requests on %d edges (target %s%%); viewers added %d per 10 s, at %d viewers (%d connected) it read %d%% and asked for %d edges %.1f s after the first viewers and %.1f s after the last batch, new edge ready in the Service %.1f s after the first viewers",
		util0, replicas0, target, batch, viewers, active.load(), util, desired, decided.Seconds(), (decided - lastBatch.Sub(start)).Seconds(), ready.Seconds())
}

// atomicCounter counts the load viewers that are connected.
type atomicCounter struct {
	mu sync.Mutex
	n  int
}

func (c *atomicCounter) add(d int) { c.mu.Lock(); c.n += d; c.mu.Unlock() }
func (c *atomicCounter) load() int { c.mu.Lock(); defer c.mu.Unlock(); return c.n }

// loadViewer plays url and discards the bytes until ctx ends, reconnecting
// after an error: load only, the checked viewers are nodeViewer.
func loadViewer(ctx context.Context, url string, active *atomicCounter) {
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return
		}
		resp, err := nodeHTTP.Do(req)
		if err == nil {
			active.add(1)
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			active.add(-1)
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}
