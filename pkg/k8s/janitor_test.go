package k8s

import (
	"context"
	"errors"
	"fmt"
	poll "github.com/flvcdn/flvcdn/test/harness"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/flvcdn/flvcdn/pkg/registry"
)

const (
	testNS       = "cdn"
	testSelector = "app.kubernetes.io/instance=t,app.kubernetes.io/component=origin"
	// waitFor bounds every wait on a condition; the janitor normally acts in
	// milliseconds, so hitting it means the behaviour is missing.
	waitFor = 10 * time.Second
)

// fakePurger is a Purger that records what it is asked to do.
type fakePurger struct {
	mu      sync.Mutex
	streams map[string][]string // origin -> streams it holds
	fail    int                 // PurgeOrigin calls still to fail
	purges  chan string         // origin of every successful PurgeOrigin
	events  chan registry.Event
}

func newFakePurger() *fakePurger {
	return &fakePurger{
		streams: map[string][]string{},
		purges:  make(chan string, 64),
		events:  make(chan registry.Event, 64),
	}
}

func (f *fakePurger) PurgeOrigin(_ context.Context, id string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail > 0 {
		f.fail--
		return nil, errors.New("redis: connection refused")
	}
	s := f.streams[id]
	delete(f.streams, id) // compare-and-delete: a second purge finds nothing
	f.purges <- id
	return s, nil
}

func (f *fakePurger) PublishEvent(_ context.Context, ev registry.Event) error {
	f.events <- ev
	return nil
}

func originPod(name string, ready bool) *corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: testNS,
			Labels:    map[string]string{"app.kubernetes.io/instance": "t", "app.kubernetes.io/component": "origin"},
		},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}},
		},
	}
}

// harness runs one janitor on a fake clientset and waits until its informer
// watches pods, so that changes made afterwards are seen (the fake API has no
// resource versions: a change between list and watch would be lost).
type harness struct {
	t       *testing.T
	cs      *fake.Clientset
	p       *fakePurger
	watches chan struct{} // one per pod watch opened on cs
	cancel  context.CancelFunc
	done    chan error
}

func startJanitor(t *testing.T, objs ...runtime.Object) *harness {
	t.Helper()
	cs := fake.NewClientset(objs...)
	watches := make(chan struct{}, 16)
	cs.PrependWatchReactor("pods", func(k8stesting.Action) (bool, watch.Interface, error) {
		watches <- struct{}{}
		return false, nil, nil // let the default tracker serve the watch
	})
	h := &harness{t: t, cs: cs, p: newFakePurger(), watches: watches, done: make(chan error, 1)}
	h.run(cs, "janitor-0")
	h.waitWatching()
	return h
}

func (h *harness) waitWatching() {
	h.t.Helper()
	select {
	case <-h.watches:
	case <-time.After(waitFor):
		h.t.Fatal("janitor never started watching pods")
	}
}

func (h *harness) run(cs *fake.Clientset, identity string) {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	cfg := testConfig(identity)
	go func() { h.done <- RunJanitor(ctx, cs, cfg, h.p, quietLog()) }()
	h.t.Cleanup(h.stop)
}

func (h *harness) stop() {
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("RunJanitor: %v", err)
		}
		h.done <- nil // stop is idempotent
	case <-time.After(waitFor):
		h.t.Error("RunJanitor did not return after cancel")
	}
}

func testConfig(identity string) JanitorConfig {
	return JanitorConfig{
		Namespace:      testNS,
		Identity:       identity,
		LeaseName:      "janitor",
		OriginSelector: testSelector,
		LeaseDuration:  2 * time.Second,
		RenewDeadline:  time.Second,
		RetryPeriod:    100 * time.Millisecond,
	}
}

func TestMain(m *testing.M) {
	LogKlogTo(quietLog()) // client-go's own lines would drown the test output
	os.Exit(m.Run())
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func (h *harness) wantPurge(origin string) {
	h.t.Helper()
	select {
	case got := <-h.p.purges:
		if got != origin {
			h.t.Fatalf("purged %q, want %q", got, origin)
		}
	case <-time.After(waitFor):
		h.t.Fatalf("origin %q was not purged within %v", origin, waitFor)
	}
}

// wantNoPurge checks that nothing is purged for a while. It can only prove
// absence over a window; the window is long compared with the milliseconds a
// real purge takes here.
func (h *harness) wantNoPurge(window time.Duration) {
	h.t.Helper()
	select {
	case got := <-h.p.purges:
		h.t.Fatalf("unexpected purge of %q", got)
	case <-time.After(window):
	}
}

func (h *harness) update(pod *corev1.Pod) {
	h.t.Helper()
	if _, err := h.cs.CoreV1().Pods(testNS).Update(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) create(pod *corev1.Pod) {
	h.t.Helper()
	if _, err := h.cs.CoreV1().Pods(testNS).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) delete(name string) {
	h.t.Helper()
	if err := h.cs.CoreV1().Pods(testNS).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

func TestDeletedOriginIsPurgedAndAnnounced(t *testing.T) {
	h := startJanitor(t, originPod("origin-a", true), originPod("origin-b", true))
	h.p.mu.Lock()
	h.p.streams["origin-a"] = []string{"live/one", "live/two"}
	h.p.mu.Unlock()

	h.delete("origin-a")
	h.wantPurge("origin-a")

	// One event per stream, then one for the origin as a whole.
	want := []registry.Event{
		{Kind: registry.EventOriginDown, Stream: "live/one", Origin: "origin-a"},
		{Kind: registry.EventOriginDown, Stream: "live/two", Origin: "origin-a"},
		{Kind: registry.EventOriginDown, Origin: "origin-a"},
	}
	for i, w := range want {
		select {
		case ev := <-h.p.events:
			if ev.Kind != w.Kind || ev.Stream != w.Stream || ev.Origin != w.Origin || ev.At.IsZero() {
				t.Fatalf("event %d = %+v, want %+v with a time", i, ev, w)
			}
		case <-time.After(waitFor):
			t.Fatalf("event %d (%+v) never published", i, w)
		}
	}
}

func TestOriginThatStopsBeingReadyIsPurged(t *testing.T) {
	h := startJanitor(t, originPod("origin-a", true), originPod("origin-b", true))
	h.update(originPod("origin-a", false))
	h.wantPurge("origin-a")
}

func TestUnreadyOriginIsKeptWhileNoOtherIsReady(t *testing.T) {
	// Every origin unready at once is a shared outage (NATS, Redis), not a
	// dead origin: moving publishers would gain nothing.
	h := startJanitor(t, originPod("origin-a", true), originPod("origin-b", false))
	h.update(originPod("origin-a", false))
	h.wantNoPurge(1500 * time.Millisecond) // more than one re-check

	// Once another origin can take its publishers, it is purged.
	h.update(originPod("origin-b", true))
	h.wantPurge("origin-a")
}

func TestOriginThatRecoversIsNotPurged(t *testing.T) {
	// Unready with nobody to take over, then ready again: nothing to do.
	h := startJanitor(t, originPod("origin-a", true))
	h.update(originPod("origin-a", false))
	h.update(originPod("origin-a", true))
	h.create(originPod("origin-b", true)) // a later ready origin changes nothing
	h.wantNoPurge(1500 * time.Millisecond)
}

func TestReadinessRules(t *testing.T) {
	h := startJanitor(t, originPod("starting", false), originPod("draining", true), originPod("spare", true))

	// A pod that becomes ready, or that was never ready, is no failure.
	h.update(originPod("starting", true))
	// A terminating origin drains its publishers on purpose: its readiness
	// loss must not cut them off before its grace period ends.
	draining := originPod("draining", false)
	later := metav1.NewTime(time.Now().Add(time.Hour))
	draining.DeletionTimestamp = &later
	h.update(draining)
	h.wantNoPurge(500 * time.Millisecond)

	// Once it is gone, it is purged.
	h.delete("draining")
	h.wantPurge("draining")
}

func TestTerminatingOriginIsPurgedWhenGracePeriodEnds(t *testing.T) {
	h := startJanitor(t, originPod("origin-a", true))
	pod := originPod("origin-a", true)
	end := metav1.NewTime(time.Now().Add(700 * time.Millisecond))
	pod.DeletionTimestamp = &end
	start := time.Now()
	h.update(pod) // the pod object lingers (a lost node): only the deadline fires
	h.wantPurge("origin-a")
	if early := time.Until(end.Time); early > 50*time.Millisecond {
		t.Fatalf("purged %v before the grace period ended (after %v)", early, time.Since(start))
	}
	// The pod's removal later must not purge and announce it a second time.
	h.delete("origin-a")
	h.wantNoPurge(500 * time.Millisecond)
}

func TestFinishedOriginIsPurged(t *testing.T) {
	h := startJanitor(t, originPod("origin-a", true))
	pod := originPod("origin-a", false)
	pod.Status.Phase = corev1.PodFailed
	h.update(pod)
	h.wantPurge("origin-a")
}

func TestPodsOutsideTheSelectorAreIgnored(t *testing.T) {
	other := originPod("redis-0", true)
	other.Labels["app.kubernetes.io/component"] = "redis"
	h := startJanitor(t, other)
	h.delete("redis-0")
	h.wantNoPurge(500 * time.Millisecond)
}

func TestFailedPurgeIsRetried(t *testing.T) {
	h := startJanitor(t, originPod("origin-a", true))
	h.p.mu.Lock()
	h.p.fail = 2
	h.p.mu.Unlock()
	h.delete("origin-a")
	h.wantPurge("origin-a") // after two failures and backoff
}

func TestLeaseIsHandedOverOnCancel(t *testing.T) {
	h := startJanitor(t, originPod("origin-a", true), originPod("origin-b", true))
	ctx := context.Background()
	holder := func() string {
		l, err := h.cs.CoordinationV1().Leases(testNS).Get(ctx, "janitor", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	if got := holder(); got != "janitor-0" {
		t.Fatalf("lease holder %q, want janitor-0", got)
	}

	// A follower on the same cluster and registry.
	follower := &harness{t: t, cs: h.cs, p: h.p, done: make(chan error, 1)}
	follower.run(h.cs, "janitor-1")

	// The leader stops: it must release the Lease (not let it expire), so
	// the follower leads within a few retry periods, well before the 2s
	// LeaseDuration would have run out.
	stopped := time.Now()
	h.stop()
	poll.CheckFor(t, waitFor, "the follower to take the lease", func() error {
		if h := holder(); h != "janitor-1" {
			return fmt.Errorf("holder %q", h)
		}
		return nil
	})
	if took := time.Since(stopped); took >= 2*time.Second {
		t.Errorf("hand-over took %v: the lease was not released on cancel", took)
	}

	// The new leader does the work.
	h.waitWatching()
	h.delete("origin-b")
	h.wantPurge("origin-b")
}

func TestConfigErrors(t *testing.T) {
	cs := fake.NewClientset()
	for name, cfg := range map[string]JanitorConfig{
		"no namespace": {OriginSelector: testSelector},
		"no selector":  {Namespace: testNS},
		"bad selector": {Namespace: testNS, OriginSelector: "a in (b"},
		"bad timings":  {Namespace: testNS, OriginSelector: testSelector, LeaseDuration: time.Second, RenewDeadline: 2 * time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			if err := RunJanitor(ctx, cs, cfg, newFakePurger(), quietLog()); err == nil {
				t.Fatal("RunJanitor accepted a bad config")
			}
		})
	}
}
