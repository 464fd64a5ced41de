// Package k8s is flvcdn's side door to Kubernetes: the origin janitor, which
// turns the death of an origin pod into an immediate registry purge, so that
// edges and publishers fail over in about a second instead of waiting for the
// registry's TTLs.
//
// It owns a Lease (leader election), an informer on origin pods and a work
// queue of origins to purge. It must never write to the registry except
// through Purger, whose writes are compare-and-delete: leader election does
// not guarantee a single leader (a paused leader may act after its Lease
// expired), so correctness rests on the registry, not on the Lease. The Lease
// only keeps the API server and the registry from doing the work N times.
package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/util/workqueue"

	"github.com/flvcdn/flvcdn/pkg/registry"
)

// Purger is the registry subset the janitor needs (registry.Store satisfies
// it). PurgeOrigin must be compare-and-delete and idempotent.
type Purger interface {
	PurgeOrigin(ctx context.Context, id string) ([]string, error)
	PublishEvent(ctx context.Context, ev registry.Event) error
}

// JanitorConfig says which pods are origins and how the janitors elect one of
// them to act. Zero durations take the defaults below.
type JanitorConfig struct {
	// Namespace of the origin pods and of the Lease. Required.
	Namespace string
	// Identity of this janitor in the Lease; the pod name in a cluster.
	// Default: the host name.
	Identity string
	// LeaseName is the coordination.k8s.io Lease the janitors compete for.
	// Default: DefaultLeaseName.
	LeaseName string
	// OriginSelector is the label selector of origin pods, e.g.
	// "app.kubernetes.io/instance=flvcdn,app.kubernetes.io/component=origin".
	// Required: an empty selector would treat every pod as an origin.
	OriginSelector string
	// LeaseDuration is how long followers wait before taking over from a
	// leader that stopped renewing. Default 15s.
	LeaseDuration time.Duration
	// RenewDeadline is how long the leader keeps retrying a renewal before it
	// gives up leading. Default 10s.
	RenewDeadline time.Duration
	// RetryPeriod is the pause between attempts to acquire or renew. Default 2s.
	RetryPeriod time.Duration
}

// Defaults of JanitorConfig. The durations are client-go's usual ones: a
// crashed leader is replaced within LeaseDuration; a leader that cancels its
// context releases the Lease at once and a follower takes over within
// RetryPeriod.
const (
	DefaultLeaseName = "flvcdn-origin-janitor"
	// DefaultOriginSelector matches the origin pods of any release of the
	// chart; the chart passes a selector narrowed to its own release.
	DefaultOriginSelector = "app.kubernetes.io/name=flvcdn,app.kubernetes.io/component=origin"
	DefaultLeaseDuration  = 15 * time.Second
	DefaultRenewDeadline  = 10 * time.Second
	DefaultRetryPeriod    = 2 * time.Second
)

// Bounds of one purge and of its retries. A purge is a couple of Redis round
// trips; a failure (Redis restarting) is retried with backoff up to
// maxPurgeBackoff until it succeeds or the janitor stops leading.
const (
	purgeTimeout    = 5 * time.Second
	minPurgeBackoff = 100 * time.Millisecond
	maxPurgeBackoff = 30 * time.Second
	// recheckUnready is how often an unready origin that is kept (no other
	// origin is ready to take its streams) is looked at again.
	recheckUnready = time.Second
	// goneMemory is how long the janitor remembers that it purged an origin
	// whose pod is gone, so the deadline timer of the same pod does not purge
	// (and announce) it twice. Pod names are not reused by Deployments.
	goneMemory = time.Hour
)

func (c *JanitorConfig) setDefaults() error {
	if c.Namespace == "" {
		return errors.New("k8s: janitor: Namespace is required")
	}
	if c.OriginSelector == "" {
		return errors.New("k8s: janitor: OriginSelector is required (an empty selector matches every pod)")
	}
	if c.Identity == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("k8s: janitor: no Identity and no host name: %w", err)
		}
		c.Identity = host
	}
	if c.LeaseName == "" {
		c.LeaseName = DefaultLeaseName
	}
	if c.LeaseDuration == 0 {
		c.LeaseDuration = DefaultLeaseDuration
	}
	if c.RenewDeadline == 0 {
		c.RenewDeadline = DefaultRenewDeadline
	}
	if c.RetryPeriod == 0 {
		c.RetryPeriod = DefaultRetryPeriod
	}
	return nil
}

// reason is why an origin is queued for a purge.
type reason string

const (
	reasonDeleted  reason = "pod deleted"
	reasonUnready  reason = "pod not ready"
	reasonFinished reason = "pod finished" // phase Succeeded or Failed
	reasonDeadline reason = "termination grace period over"
)

// item is one unit of work: an origin (pod name == registry origin id) and
// why it is queued. The queue merges equal items that are waiting.
type item struct {
	origin string
	why    reason
}

// RunJanitor campaigns for the Lease and, while leading, purges the registry
// entries of origins whose pod is deleted, stops being ready or finishes, and
// publishes origin-down events. It blocks until ctx is done, releases the
// Lease if it holds it, and returns nil; it returns an error at once only for
// a bad configuration.
//
// What counts as "down":
//   - the pod object is deleted (or its termination grace period, which ends at
//     its deletionTimestamp, has run out while it still exists: the kubelet
//     has killed it, or its node is gone);
//   - the pod's Ready condition goes from True to False while the pod is not
//     terminating (a terminating origin is draining its publishers on
//     purpose, so it is left alone until its grace period is over), and
//     another origin is ready to take its publishers. When no origin is ready
//     the cause is shared (NATS or Redis down, a bad rollout): purging would
//     only churn every stream, so the janitor waits, re-checking each second,
//     until the origin recovers or another one is ready;
//   - the pod's phase becomes Succeeded or Failed.
func RunJanitor(ctx context.Context, cs kubernetes.Interface, cfg JanitorConfig, p Purger, log *slog.Logger) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	sel, err := labels.Parse(cfg.OriginSelector)
	if err != nil {
		return fmt.Errorf("k8s: janitor: OriginSelector %q: %w", cfg.OriginSelector, err)
	}
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "janitor", "identity", cfg.Identity, "lease", cfg.Namespace+"/"+cfg.LeaseName)
	j := &janitor{cs: cs, cfg: cfg, sel: sel, p: p, log: log}

	for ctx.Err() == nil {
		if err := j.campaign(ctx); err != nil {
			return err
		}
		if ctx.Err() == nil {
			log.Warn("janitor: lost the lease; campaigning again")
		}
	}
	return nil
}

type janitor struct {
	cs  kubernetes.Interface
	cfg JanitorConfig
	sel labels.Selector
	p   Purger
	log *slog.Logger
}

// campaign runs one leader election: it returns when this janitor stops
// leading or ctx is done, and only after the leading work has stopped.
func (j *janitor) campaign(ctx context.Context) error {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	// leaderelection starts OnStartedLeading in its own goroutine and does
	// not wait for it; track it so that a campaign never overlaps the next.
	var mu sync.Mutex
	var leading chan struct{}

	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: j.cfg.Namespace, Name: j.cfg.LeaseName},
		Client:     j.cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: j.cfg.Identity},
	}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		Name:            j.cfg.LeaseName,
		LeaseDuration:   j.cfg.LeaseDuration,
		RenewDeadline:   j.cfg.RenewDeadline,
		RetryPeriod:     j.cfg.RetryPeriod,
		ReleaseOnCancel: true,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) {
				mu.Lock()
				if runCtx.Err() != nil {
					mu.Unlock()
					return
				}
				done := make(chan struct{})
				leading = done
				mu.Unlock()
				defer close(done)
				j.lead(lctx)
			},
			OnStoppedLeading: func() {
				j.log.Info("janitor: stopped leading")
			},
			OnNewLeader: func(id string) {
				if id != j.cfg.Identity {
					j.log.Info("janitor: following", "leader", id)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("k8s: janitor: leader election: %w", err)
	}
	le.Run(runCtx)

	cancel()
	mu.Lock()
	done := leading
	mu.Unlock()
	if done != nil {
		<-done
	}
	return nil
}

// lead watches origin pods and purges dead origins until ctx is done.
func (j *janitor) lead(ctx context.Context) {
	j.log.Info("janitor: leading")
	queue := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[item](minPurgeBackoff, maxPurgeBackoff),
		workqueue.TypedRateLimitingQueueConfig[item]{Name: "flvcdn-origin-janitor"},
	)
	factory := informers.NewSharedInformerFactoryWithOptions(j.cs, 0,
		informers.WithNamespace(j.cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = j.sel.String() }),
	)
	// Deferred calls run last-first: stop the queue, stop the informer, then
	// wait for the informer's goroutines, so nothing outlives lead.
	ctx, cancel := context.WithCancel(ctx)
	defer factory.Shutdown()
	defer cancel()
	defer queue.ShutDown()

	pods := factory.Core().V1().Pods()
	inf := pods.Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { j.onAdd(queue, obj) },
		UpdateFunc: func(old, cur any) { j.onUpdate(queue, old, cur) },
		DeleteFunc: func(obj any) { j.onDelete(queue, obj) },
	}); err != nil {
		j.log.Error("janitor: cannot watch origin pods", "err", err)
		return
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return // ctx done before the first list
	}
	j.log.Info("janitor: watching origin pods", "selector", j.sel.String(), "pods", len(inf.GetStore().ListKeys()))

	w := &worker{janitor: j, queue: queue, pods: pods.Lister().Pods(j.cfg.Namespace),
		gone: map[string]time.Time{}, held: map[string]bool{}}
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	for w.next(ctx) {
	}
}

func (j *janitor) pod(obj any) (*corev1.Pod, bool) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || !j.sel.Matches(labels.Set(pod.Labels)) {
		// The API server filters by the selector; this guards against
		// clients that do not (fakes) and against relabelled pods.
		return nil, false
	}
	return pod, true
}

func (j *janitor) onAdd(q workqueue.TypedRateLimitingInterface[item], obj any) {
	pod, ok := j.pod(obj)
	if !ok {
		return
	}
	// At start (or after a re-list) only certain deaths count: a pod that is
	// merely not ready yet may be starting.
	if finished(pod) {
		q.Add(item{pod.Name, reasonFinished})
	}
	if pod.DeletionTimestamp != nil {
		scheduleDeadline(q, pod)
	}
}

func (j *janitor) onUpdate(q workqueue.TypedRateLimitingInterface[item], oldObj, curObj any) {
	old, ok1 := j.pod(oldObj)
	cur, ok2 := j.pod(curObj)
	switch {
	case !ok2: // not an origin (any more): not ours
		return
	case !ok1: // relabelled into the selector
		j.onAdd(q, curObj)
		return
	}
	if finished(cur) && !finished(old) {
		q.Add(item{cur.Name, reasonFinished})
	}
	if cur.DeletionTimestamp != nil && old.DeletionTimestamp == nil {
		scheduleDeadline(q, cur)
	}
	if ready(old) && !ready(cur) && cur.DeletionTimestamp == nil {
		q.Add(item{cur.Name, reasonUnready})
	}
}

func (j *janitor) onDelete(q workqueue.TypedRateLimitingInterface[item], obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	if pod, ok := j.pod(obj); ok {
		q.Add(item{pod.Name, reasonDeleted})
	}
}

// scheduleDeadline queues a terminating pod for when its grace period ends;
// for pods, deletionTimestamp is the moment the kubelet sends SIGKILL.
func scheduleDeadline(q workqueue.TypedRateLimitingInterface[item], pod *corev1.Pod) {
	q.AddAfter(item{pod.Name, reasonDeadline}, time.Until(pod.DeletionTimestamp.Time))
}

func ready(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func finished(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

// worker drains the queue. One worker is enough: purges are rare and cheap,
// and a single worker keeps the events of one origin in order.
type worker struct {
	*janitor
	queue workqueue.TypedRateLimitingInterface[item]
	pods  corelisters.PodNamespaceLister
	// gone remembers origins already purged because their pod is gone.
	gone map[string]time.Time
	// held are unready origins kept because no other origin is ready.
	held map[string]bool
}

// next handles one item; false when the queue is shut down.
func (w *worker) next(ctx context.Context) bool {
	it, shutdown := w.queue.Get()
	if shutdown {
		return false
	}
	defer w.queue.Done(it)

	if it.why == reasonDeadline {
		if pod, err := w.pods.Get(it.origin); err == nil && pod.DeletionTimestamp != nil {
			if wait := time.Until(pod.DeletionTimestamp.Time); wait > 0 {
				w.queue.AddAfter(it, wait) // deletion re-scheduled with a longer grace
				return true
			}
		}
	}
	if it.why == reasonDeleted || it.why == reasonDeadline {
		if _, done := w.gone[it.origin]; done {
			w.queue.Forget(it)
			return true
		}
	}
	if it.why == reasonUnready && !w.unreadyStillCounts(it) {
		return true
	}

	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, purgeTimeout)
	streams, err := w.purge(pctx, it.origin)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return true // stopped leading: the next leader re-examines the pods
		}
		w.log.Warn("janitor: purge failed; will retry", "origin", it.origin, "reason", string(it.why),
			"attempt", w.queue.NumRequeues(it)+1, "err", err)
		w.queue.AddRateLimited(it)
		return true
	}
	w.queue.Forget(it)
	if it.why == reasonDeleted || it.why == reasonDeadline {
		w.remember(it.origin, start)
	}
	w.log.Info("janitor: purged origin", "origin", it.origin, "reason", string(it.why),
		"streams", streams, "took", time.Since(start))
	return true
}

// purge removes the origin's registry entries and announces it down: one
// origin-down event per stream it held (so stream-keyed consumers route it
// directly), then one for the origin as a whole.
func (w *worker) purge(ctx context.Context, origin string) ([]string, error) {
	streams, err := w.p.PurgeOrigin(ctx, origin)
	if err != nil {
		return nil, fmt.Errorf("purge origin %s: %w", origin, err)
	}
	now := time.Now()
	for _, s := range streams {
		ev := registry.Event{Kind: registry.EventOriginDown, Stream: s, Origin: origin, At: now}
		if err := w.p.PublishEvent(ctx, ev); err != nil {
			return streams, fmt.Errorf("publish origin-down of %s for stream %s: %w", origin, s, err)
		}
	}
	ev := registry.Event{Kind: registry.EventOriginDown, Origin: origin, At: now}
	if err := w.p.PublishEvent(ctx, ev); err != nil {
		return streams, fmt.Errorf("publish origin-down of %s: %w", origin, err)
	}
	return streams, nil
}

// unreadyStillCounts re-examines an origin queued for losing readiness, in
// the informer's current view: false when it recovered, is terminating or
// gone (other items handle those), or when no other origin is ready (then it
// is re-checked later).
func (w *worker) unreadyStillCounts(it item) bool {
	pod, err := w.pods.Get(it.origin)
	if err != nil || ready(pod) || pod.DeletionTimestamp != nil {
		if w.held[it.origin] {
			delete(w.held, it.origin)
			w.log.Info("janitor: kept origin recovered or left", "origin", it.origin)
		}
		w.queue.Forget(it)
		return false
	}
	if !w.anotherReady(it.origin) {
		if !w.held[it.origin] {
			w.held[it.origin] = true
			w.log.Warn("janitor: origin not ready, but no other origin is ready either; not purging", "origin", it.origin)
		}
		w.queue.Forget(it)
		w.queue.AddAfter(it, recheckUnready)
		return false
	}
	delete(w.held, it.origin)
	return true
}

func (w *worker) anotherReady(origin string) bool {
	pods, err := w.pods.List(w.sel)
	if err != nil {
		return false
	}
	for _, p := range pods {
		if p.Name != origin && ready(p) && p.DeletionTimestamp == nil {
			return true
		}
	}
	return false
}

func (w *worker) remember(origin string, now time.Time) {
	for o, at := range w.gone {
		if now.Sub(at) > goneMemory {
			delete(w.gone, o)
		}
	}
	w.gone[origin] = now
}
