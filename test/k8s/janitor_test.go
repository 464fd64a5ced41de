//go:build k8s_e2e

// The janitor against a real kube-apiserver (started by test/k8s/run.sh) and a
// real Redis registry: origin pods are API objects that kwok keeps Running and
// Ready; the registry is what origins would have written. The user story:
// "an origin's pod is deleted (or stops being ready) → within about a second
// its streams are free and another origin can take the publisher".
//
//	KUBECONFIG                     admin kubeconfig (creates and deletes pods)
//	FLVCDN_K8S_NAMESPACE           namespace of the pods and the Lease
//	FLVCDN_K8S_LEASE               Lease name (the one the chart's Role allows)
//	FLVCDN_K8S_JANITOR_KUBECONFIG  kubeconfig the janitor runs with (the
//	                               chart ServiceAccount's token); default KUBECONFIG
//
// Run by run.sh: go test -tags k8s_e2e -run TestJanitor ./test/k8s/
package k8s_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/flvcdn/flvcdn/pkg/k8s"
	"github.com/flvcdn/flvcdn/pkg/registry"
)

// Deadlines of the waits below. The janitor normally acts within a second;
// these only bound how long a broken janitor makes the test hang.
const (
	podReadyWithin = 60 * time.Second
	purgeWithin    = 15 * time.Second
)

func TestJanitorAgainstAPIServer(t *testing.T) {
	kubeconfig := mustEnv(t, "KUBECONFIG")
	ns := mustEnv(t, "FLVCDN_K8S_NAMESPACE")
	lease := mustEnv(t, "FLVCDN_K8S_LEASE")
	janitorKubeconfig := os.Getenv("FLVCDN_K8S_JANITOR_KUBECONFIG")
	if janitorKubeconfig == "" {
		janitorKubeconfig = kubeconfig
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	admin, err := k8s.NewClient(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	janitorClient, err := k8s.NewClient(janitorKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	store := startRedisRegistry(ctx, t)

	// Three origin pods of a release of their own, so the chart's ReplicaSets
	// never adopt them.
	instance := fmt.Sprintf("janitor-test-%d", time.Now().UnixNano()%1_000_000)
	selector := "app.kubernetes.io/name=flvcdn,app.kubernetes.io/instance=" + instance + ",app.kubernetes.io/component=origin"
	originA, originB, originC := instance+"-origin-a", instance+"-origin-b", instance+"-origin-c"
	for _, name := range []string{originA, originB, originC} {
		createOriginPod(ctx, t, admin, ns, instance, name)
	}
	for _, name := range []string{originA, originB, originC} {
		waitPodReady(ctx, t, admin, ns, name)
	}

	// What the origins would have written: liveness records and claims.
	const streamA, streamB = "live/from-a", "live/from-b"
	for _, o := range []string{originA, originB, originC} {
		must(t, store.PutOrigin(ctx, registry.OriginInfo{ID: o}, 5*time.Minute))
	}
	must(t, store.ClaimStream(ctx, streamA, registry.Owner{Origin: originA, Session: "a1"}, 5*time.Minute))
	must(t, store.ClaimStream(ctx, streamB, registry.Owner{Origin: originB, Session: "b1"}, 5*time.Minute))
	// While A lives, another origin cannot take its publisher.
	if err := store.ClaimStream(ctx, streamA, registry.Owner{Origin: originC, Session: "c1"}, 5*time.Minute); !errors.Is(err, registry.ErrTaken) {
		t.Fatalf("claim of a live stream by another origin: %v, want ErrTaken", err)
	}
	events, err := store.Events(ctx)
	must(t, err)

	// The janitor, with the chart ServiceAccount's rights.
	watching := make(chan struct{})
	log := newSignalLogger("janitor: watching origin pods", watching)
	jctx, stopJanitor := context.WithCancel(ctx)
	janitorDone := make(chan error, 1)
	go func() {
		janitorDone <- k8s.RunJanitor(jctx, janitorClient, k8s.JanitorConfig{
			Namespace:      ns,
			Identity:       "janitor-test",
			LeaseName:      lease,
			OriginSelector: selector,
			LeaseDuration:  15 * time.Second,
			RenewDeadline:  10 * time.Second,
			RetryPeriod:    time.Second,
		}, store, log)
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		stopJanitor()
		select {
		case err := <-janitorDone:
			if err != nil {
				t.Errorf("RunJanitor: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("RunJanitor did not return after cancel")
		}
	}
	defer stop()
	select {
	case <-watching:
	case err := <-janitorDone:
		t.Fatalf("janitor stopped before leading: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("janitor never led and watched origin pods (lease or RBAC trouble?)")
	}

	t.Run("pod deleted", func(t *testing.T) {
		start := time.Now()
		must(t, admin.CoreV1().Pods(ns).Delete(ctx, originA, metav1.DeleteOptions{}))
		waitOriginDown(t, events, originA)
		purged := time.Since(start)

		if _, err := store.LookupStream(ctx, streamA); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("stream of the deleted origin still claimed: %v", err)
		}
		if _, err := store.GetOrigin(ctx, originA); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("liveness record of the deleted origin still there: %v", err)
		}
		// The publisher reconnecting through the Service lands on C at once.
		must(t, store.ClaimStream(ctx, streamA, registry.Owner{Origin: originC, Session: "c1"}, 5*time.Minute))
		resumed := time.Since(start)
		// Nothing else was touched.
		if o, err := store.LookupStream(ctx, streamB); err != nil || o.Origin != originB {
			t.Fatalf("stream of a healthy origin: owner %+v, %v; want %s", o, err, originB)
		}
		t.Logf("FIGURE pod delete -> registry purged + origin-down event: %d ms; -> stream claimed by another origin: %d ms",
			purged.Milliseconds(), resumed.Milliseconds())
	})

	t.Run("pod stops being ready", func(t *testing.T) {
		start := time.Now()
		setReady(ctx, t, admin, ns, originB, false)
		waitOriginDown(t, events, originB)
		purged := time.Since(start)
		if _, err := store.LookupStream(ctx, streamB); !errors.Is(err, registry.ErrNotFound) {
			t.Fatalf("stream of the unready origin still claimed: %v", err)
		}
		if o, err := store.LookupStream(ctx, streamA); err != nil || o.Origin != originC {
			t.Fatalf("stream of a healthy origin: owner %+v, %v; want %s", o, err, originC)
		}
		t.Logf("FIGURE pod Ready=False -> registry purged + origin-down event: %d ms", purged.Milliseconds())
	})

	t.Run("lease released on stop", func(t *testing.T) {
		stop()
		l, err := admin.CoordinationV1().Leases(ns).Get(ctx, lease, metav1.GetOptions{})
		must(t, err)
		if h := l.Spec.HolderIdentity; h != nil && *h != "" {
			t.Fatalf("lease still held by %q after the janitor stopped", *h)
		}
	})

	for _, name := range []string{originB, originC} {
		_ = admin.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
	}
}

func mustEnv(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		// Built only with -tags k8s_e2e, i.e. on purpose: never skip.
		t.Fatalf("%s is not set; run this test through test/k8s/run.sh", name)
	}
	return v
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ptr[T any](v T) *T { return &v }

// createOriginPod creates a pod that passes the "restricted" Pod Security
// Standard of the release namespace; kwok makes it Running and Ready.
func createOriginPod(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, instance, name string) {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				"app.kubernetes.io/name":      "flvcdn",
				"app.kubernetes.io/instance":  instance,
				"app.kubernetes.io/component": "origin",
			},
		},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken:  ptr(false),
			TerminationGracePeriodSeconds: ptr(int64(30)),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr(true),
				RunAsUser:      ptr(int64(65532)),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:  "origin",
				Image: "ghcr.io/flvcdn/flvcdn-origin:test",
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr(false),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
	if _, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func waitPodReady(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string) {
	t.Helper()
	deadline := time.Now().Add(podReadyWithin)
	for {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && p.Status.Phase == corev1.PodRunning && podReady(p) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s not Running and Ready within %v (last error %v)", name, podReadyWithin, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// setReady writes the pod's Ready condition, as a kubelet whose readiness
// probe started failing would.
func setReady(ctx context.Context, t *testing.T, cs kubernetes.Interface, ns, name string, ready bool) {
	t.Helper()
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	for attempt := 0; ; attempt++ {
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		must(t, err)
		for i := range p.Status.Conditions {
			if c := &p.Status.Conditions[i]; c.Type == corev1.PodReady || c.Type == corev1.ContainersReady {
				c.Status = status
				c.LastTransitionTime = metav1.Now()
			}
		}
		_, err = cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		if err == nil {
			return
		}
		if !apierrors.IsConflict(err) || attempt == 5 {
			t.Fatalf("update status of %s: %v", name, err)
		}
	}
}

// waitOriginDown waits for the origin-down event of origin as a whole (the
// janitor publishes it after the purge).
func waitOriginDown(t *testing.T, events <-chan registry.Event, origin string) {
	t.Helper()
	timeout := time.After(purgeWithin)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("registry event channel closed")
			}
			if ev.Kind == registry.EventOriginDown && ev.Origin == origin && ev.Stream == "" {
				return
			}
		case <-timeout:
			t.Fatalf("no origin-down event for %s within %v", origin, purgeWithin)
		}
	}
}

// startRedisRegistry runs a real redis-server on a free loopback port for the
// life of the test and returns the production registry on it.
func startRedisRegistry(ctx context.Context, t *testing.T) *registry.Redis {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	client := redis.NewClient(&redis.Options{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))})
	t.Cleanup(func() { client.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for client.Ping(ctx).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not answer PING within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	store := registry.NewRedis(client, "k8se2e")
	t.Cleanup(func() { store.Close() })
	return store
}

// newSignalLogger logs to stderr and closes hit when msg is first logged.
func newSignalLogger(msg string, hit chan struct{}) *slog.Logger {
	return slog.New(&signalHandler{
		inner: slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}),
		msg:   msg,
		hit:   hit,
		once:  new(sync.Once),
	})
}

// signalHandler passes records on to inner and closes hit the first time a
// record with message msg is logged.
type signalHandler struct {
	inner slog.Handler
	msg   string
	hit   chan struct{}
	once  *sync.Once
}

func (h *signalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *signalHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(func() { close(h.hit) })
	}
	return h.inner.Handle(ctx, r)
}

func (h *signalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.inner = h.inner.WithAttrs(as)
	return &c
}

func (h *signalHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.inner = h.inner.WithGroup(name)
	return &c
}
