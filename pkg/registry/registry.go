// Package registry owns the map from a live stream to the origin publishing it.
//
// It holds three things: stream claims (stream -> Owner, with a TTL the owning
// origin keeps refreshing), origin liveness records (one per origin, rewritten
// on every heartbeat, carrying the draining flag), and change events (publish,
// unpublish, origin down). Edges act on origin-down and unpublish events by
// looking the stream up again at once (package edge); the other kinds are for
// operators' tools and tests.
//
// It must never hold media: values are a few dozen bytes of JSON. Every write
// to a stream claim is a compare-and-set, because more than one process may
// believe it is in charge (two origins racing for a stream, two janitors after
// a Lease hand-over). The liveness record is the one plain overwrite: only the
// origin it describes writes it, and PurgeOrigin deletes it only if unchanged.
//
// Two backends sit behind Store: Redis (production, the chart, e2e) and
// JetStream KV on the embedded NATS server (make run on a laptop).
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/redis/go-redis/v9"
)

// Owner identifies who holds a stream: an origin and one publishing session
// on it. A publisher that reconnects gets a new session, so a stale session
// can never refresh or release the new one's claim.
type Owner struct {
	Origin  string `json:"origin"`  // origin id (pod name)
	Session string `json:"session"` // random id of one publishing session
}

// Claim is one stream held by one owner.
type Claim struct {
	Stream string
	Owner  Owner
}

// OriginInfo is an origin's liveness record. Its presence (within its TTL) is
// what "the origin is alive" means to the registry.
type OriginInfo struct {
	ID       string    `json:"id"`
	Addr     string    `json:"addr,omitempty"` // informational
	Draining bool      `json:"draining"`
	Updated  time.Time `json:"updated"`
}

// EventKind names a change event.
type EventKind string

// Event kinds.
const (
	EventPublish    EventKind = "publish"
	EventUnpublish  EventKind = "unpublish"
	EventOriginDown EventKind = "origin-down"
)

// Event is a hint that the registry changed. Consumers re-check the registry
// rather than trust an event, and must tolerate lost ones.
type Event struct {
	Kind    EventKind `json:"kind"`
	Stream  string    `json:"stream,omitempty"`
	Origin  string    `json:"origin,omitempty"`
	Session string    `json:"session,omitempty"`
	At      time.Time `json:"at"`
}

// Errors returned by Store implementations (possibly wrapped; use errors.Is).
var (
	ErrTaken    = errors.New("registry: stream is live on another publisher")
	ErrNotOwner = errors.New("registry: not the owner")
	ErrNotFound = errors.New("registry: not found")
)

// Store is the registry as origins, edges and the janitor see it.
type Store interface {
	// ClaimStream atomically claims stream for o with a TTL (SET NX PX semantics). If the stream is
	// held by an origin whose liveness record is missing/expired, it takes the stream over with a
	// compare-and-set against the old value and returns nil. If held by o itself (same origin+session) it refreshes and returns nil.
	// Otherwise ErrTaken.
	ClaimStream(ctx context.Context, stream string, o Owner, ttl time.Duration) error
	// RefreshStream extends o's claim (compare-and-pexpire). ErrNotOwner if
	// the claim is missing, expired or held by another owner.
	RefreshStream(ctx context.Context, stream string, o Owner, ttl time.Duration) error
	// ReleaseStream deletes o's claim (compare-and-delete). ErrNotOwner if
	// the claim is missing, expired or held by another owner.
	ReleaseStream(ctx context.Context, stream string, o Owner) error
	// LookupStream returns the current owner of stream, or ErrNotFound.
	LookupStream(ctx context.Context, stream string) (Owner, error)
	// PutOrigin writes an origin's liveness record, overwritten each
	// heartbeat. A zero Updated is set to the current time.
	PutOrigin(ctx context.Context, info OriginInfo, ttl time.Duration) error
	// Heartbeat writes info as PutOrigin does and refreshes every claim as
	// RefreshStream does, in one round trip where the backend allows it (Redis:
	// one script; JetStream KV: one call per key, all under ctx). The result has
	// one entry per claim: nil, or ErrNotOwner. Every claim must be info.ID's.
	Heartbeat(ctx context.Context, info OriginInfo, claims []Claim, ttl time.Duration) ([]error, error)
	// GetOrigin returns an origin's liveness record; ErrNotFound when it is
	// absent or expired.
	GetOrigin(ctx context.Context, id string) (OriginInfo, error)
	// PurgeOrigin compare-and-deletes every stream claim held by origin id and its liveness record;
	// returns the streams removed. Used by the Kubernetes janitor when an origin pod dies.
	PurgeOrigin(ctx context.Context, id string) ([]string, error)
	// PublishEvent broadcasts ev to every Events subscriber of this
	// registry. A zero At is set to the current time.
	PublishEvent(ctx context.Context, ev Event) error
	// Events delivers change events until ctx ends (then the channel is closed). Events are hints;
	// lossy delivery is acceptable, blocking the store is not (drop when the consumer is slow, count drops).
	// The subscription is in place when Events returns.
	Events(ctx context.Context) (<-chan Event, error)
	// Ping checks that the backend is reachable.
	Ping(ctx context.Context) error
	// Close ends all Events channels of this store and releases what the
	// store itself created. It does not close a client or connection the
	// caller passed in.
	Close() error
}

const (
	// defaultNamespace names the Redis key prefix and the NATS KV bucket
	// when the caller gives none.
	defaultNamespace = "flvcdn"
	// eventBuffer is how many events an Events channel holds before new
	// ones are dropped.
	eventBuffer = 64
	// casAttempts bounds the read-compare-write retries of one operation.
	// Each retry means another writer changed the key in between; a handful
	// is plenty for a registry written a few times a second.
	casAttempts = 8
)

// errContention reports that casAttempts compare-and-sets in a row lost.
var errContention = errors.New("too many concurrent writers, giving up")

// namePattern is what a namespace or bucket name may contain: it must be a
// valid Redis hash tag body (no braces) and a valid JetStream bucket name.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Open picks a backend from a URL: "redis://..." or "rediss://..." (go-redis
// ParseURL: user, password, database and TLS) gives Redis; "", "nats-kv" or
// "nats-kv://BUCKET" gives NATSKV on nc, with the bucket defaulting to the
// namespace. namespace defaults to "flvcdn".
//
// Open does not contact Redis (go-redis connects lazily; call Ping to check);
// it does contact NATS, because the KV bucket must be created or opened.
// Errors name the URL with any password redacted.
func Open(ctx context.Context, rawURL string, nc *nats.Conn, namespace string) (Store, error) {
	if namespace == "" {
		namespace = defaultNamespace
	}
	if !namePattern.MatchString(namespace) {
		return nil, fmt.Errorf("registry: namespace %q must match %s", namespace, namePattern)
	}
	switch {
	case strings.HasPrefix(rawURL, "redis://"), strings.HasPrefix(rawURL, "rediss://"):
		return openRedis(rawURL, namespace)
	case rawURL == "", rawURL == "nats-kv", strings.HasPrefix(rawURL, "nats-kv://"):
		return openNATSKV(ctx, rawURL, nc, namespace)
	default:
		return nil, fmt.Errorf("registry: unsupported registry URL %q (want redis://, rediss://, nats-kv or nats-kv://BUCKET)", redactURL(rawURL))
	}
}

func openRedis(rawURL, namespace string) (*Redis, error) {
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		// url.Error repeats the whole URL, password included; keep its cause.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("registry: bad registry URL %q: %w", redactURL(rawURL), err)
	}
	r := NewRedis(redis.NewClient(opts), namespace)
	r.ownsClient = true
	return r, nil
}

func openNATSKV(ctx context.Context, rawURL string, nc *nats.Conn, namespace string) (*NATSKV, error) {
	bucket, _ := strings.CutPrefix(rawURL, "nats-kv://")
	if rawURL == "nats-kv" || bucket == "" {
		bucket = namespace
	}
	if !namePattern.MatchString(bucket) {
		return nil, fmt.Errorf("registry: bad registry URL %q: bucket %q must match %s", rawURL, bucket, namePattern)
	}
	if nc == nil {
		return nil, fmt.Errorf("registry: registry URL %q needs a NATS connection", rawURL)
	}
	return NewNATSKV(ctx, nc, bucket)
}

// redactURL hides the password in a URL that may not even parse, so that an
// error message can name the URL without leaking the secret.
func redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return raw
	}
	user, _, hasPassword := strings.Cut(rest[:at], ":")
	if !hasPassword {
		return raw
	}
	return scheme + "://" + user + ":xxxxx" + rest[at:]
}

// checkTTL refuses TTLs that Redis PX or an expiry timestamp cannot express.
func checkTTL(ttl time.Duration) error {
	if ttl < time.Millisecond {
		return fmt.Errorf("ttl %v must be at least 1ms", ttl)
	}
	return nil
}

// prepareOrigin validates a liveness record and stamps Updated if zero.
func prepareOrigin(info OriginInfo, ttl time.Duration) (OriginInfo, error) {
	if info.ID == "" {
		return info, errors.New("origin id is empty")
	}
	if err := checkTTL(ttl); err != nil {
		return info, err
	}
	if info.Updated.IsZero() {
		info.Updated = time.Now()
	}
	return info, nil
}

// wrapf adds "registry: <op> <subject>: " to a non-nil err.
func wrapf(err error, op, subject string) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("registry: %s %s: %w", op, subject, err)
}

// stamp returns ev with At set if the caller left it zero.
func stamp(ev Event) Event {
	if ev.At.IsZero() {
		ev.At = time.Now()
	}
	return ev
}

// eventsDropped counts events a slow consumer missed (exported in /metrics).
var eventsDropped = promauto.NewCounter(prometheus.CounterOpts{
	Name: "flvcdn_registry_events_dropped_total",
	Help: "Registry change events dropped because a consumer's buffer was full."})

// eventFeed hands events to subscribers without ever waiting for them.
type eventFeed struct{}

// offer delivers ev if out has room and counts a drop otherwise.
func (eventFeed) offer(out chan<- Event, ev Event) {
	select {
	case out <- ev:
	default:
		eventsDropped.Inc()
	}
}

func encodeEvent(ev Event) ([]byte, error) {
	if ev.Kind == "" {
		return nil, errors.New("event kind is empty")
	}
	return json.Marshal(stamp(ev))
}

func decodeEvent(data []byte) (Event, error) {
	var ev Event
	err := json.Unmarshal(data, &ev)
	return ev, err
}
