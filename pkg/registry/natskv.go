package registry

// Why this backend: `make run` must work with only Go installed, so there is no
// Redis server on a laptop. Origin and edge both already reach the embedded NATS
// server, and JetStream KV gives what the registry needs from a store:
// compare-and-set on a per-key revision. What KV lacks is a per-key TTL with the
// semantics of PX, so each value carries its own expiry time (unix ms) and an
// expired value reads as absent. That clock-based expiry assumes the processes
// share a clock, which holds on one laptop; production uses Redis, whose TTLs
// are kept by the server.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// kvMaxAge is the bucket's MaxAge: garbage collection of values nobody
// rewrites (a crashed origin's claims, released keys' delete markers).
// Correctness never relies on it; TTLs above it are refused, since a value
// must not vanish before its own expiry.
const kvMaxAge = 10 * time.Minute

// NATSKV is the Store on a JetStream KV bucket, the embedded default.
//
// Keys: "stream.<app>.<name>" for a claim and "origin.<id>" for a liveness
// record, each part escaped by escapeKeyPart. Values: JSON of Owner or
// OriginInfo plus "exp", the expiry in unix milliseconds. Every claim write is
// a compare-and-set on the key's revision: Create when absent, Update(rev)
// when expired or held by the writer or taken over, Delete with LastRevision
// on release and purge. Events go over core NATS on "<bucket>.events".
type NATSKV struct {
	nc      *nats.Conn
	kv      jetstream.KeyValue
	subject string

	feed      eventFeed
	done      chan struct{}
	closeOnce sync.Once
}

var _ Store = (*NATSKV)(nil)

// NewNATSKV creates or opens the KV bucket (in memory, one replica) on nc's
// JetStream. Close does not close nc.
func NewNATSKV(ctx context.Context, nc *nats.Conn, bucket string) (*NATSKV, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("registry: jetstream: %w", err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "flvcdn stream registry",
		History:     1,
		TTL:         kvMaxAge,
		Storage:     jetstream.MemoryStorage,
		Replicas:    1,
	})
	if err != nil {
		return nil, fmt.Errorf("registry: open KV bucket %s: %w", bucket, err)
	}
	return &NATSKV{nc: nc, kv: kv, subject: bucket + ".events", done: make(chan struct{})}, nil
}

// kvClaim is a stream claim as stored.
type kvClaim struct {
	Owner
	Expires int64 `json:"exp"` // unix ms
}

// kvOrigin is a liveness record as stored.
type kvOrigin struct {
	OriginInfo
	Expires int64 `json:"exp"` // unix ms
}

func expiry(ttl time.Duration) int64 { return time.Now().Add(ttl).UnixMilli() }

func live(expires int64) bool { return time.Now().UnixMilli() < expires }

// errAbsent reports a key that does not exist or was deleted.
var errAbsent = errors.New("absent")

// errConflict reports a lost compare-and-set; the caller reads again.
var errConflict = errors.New("revision conflict")

// casErr maps JetStream's compare-and-set failures to errConflict.
func casErr(err error) error {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return errConflict
	}
	return err
}

// readJSON decodes the value under key into v and returns its revision.
func (s *NATSKV) readJSON(ctx context.Context, key string, v any) (uint64, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, errAbsent
	}
	if err != nil {
		return 0, err
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return 0, fmt.Errorf("bad value under %s: %w", key, err)
	}
	return e.Revision(), nil
}

// readClaim returns the live claim under key and its revision; errAbsent if
// there is none or it expired (the revision is still returned then, for a
// compare-and-set over the expired value).
func (s *NATSKV) readClaim(ctx context.Context, key string) (kvClaim, uint64, error) {
	var c kvClaim
	rev, err := s.readJSON(ctx, key, &c)
	if err == nil && !live(c.Expires) {
		err = errAbsent
	}
	return c, rev, err
}

// retry runs one read-compare-write attempt until it stops losing races.
func retry(attempt func() error) error {
	for range casAttempts {
		if err := attempt(); !errors.Is(err, errConflict) {
			return err
		}
	}
	return errContention
}

// checkKVTTL also refuses TTLs the bucket's MaxAge would cut short.
func checkKVTTL(ttl time.Duration) error {
	if ttl > kvMaxAge {
		return fmt.Errorf("ttl %v exceeds the NATS KV bucket max age %v", ttl, kvMaxAge)
	}
	return checkTTL(ttl)
}

// ClaimStream implements Store.
func (s *NATSKV) ClaimStream(ctx context.Context, stream string, o Owner, ttl time.Duration) error {
	if err := checkKVTTL(ttl); err != nil {
		return wrapf(err, "claim", stream)
	}
	key := streamKVKey(stream)
	return wrapf(retry(func() error { return s.claimOnce(ctx, key, o, ttl) }), "claim", stream)
}

func (s *NATSKV) claimOnce(ctx context.Context, key string, o Owner, ttl time.Duration) error {
	value, _ := json.Marshal(kvClaim{Owner: o, Expires: expiry(ttl)})
	held, rev, err := s.readClaim(ctx, key)
	if err != nil && !errors.Is(err, errAbsent) {
		return err
	}
	switch {
	case rev == 0: // no key, or only a delete marker
		_, err = s.kv.Create(ctx, key, value)
		return casErr(err)
	case errors.Is(err, errAbsent), held.Owner == o: // expired, or our own
		_, err = s.kv.Update(ctx, key, value, rev)
		return casErr(err)
	}
	alive, err := s.originAlive(ctx, held.Origin)
	switch {
	case err != nil:
		return err
	case alive:
		return ErrTaken
	}
	// Takeover: the holder's origin has no liveness record. The revision
	// check makes this a compare-and-set against the claim just read. (Unlike
	// the Redis script, the origin record is read separately; an origin that
	// comes back in between finds its claim gone and republishes.)
	_, err = s.kv.Update(ctx, key, value, rev)
	return casErr(err)
}

func (s *NATSKV) originAlive(ctx context.Context, id string) (bool, error) {
	_, err := s.GetOrigin(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// RefreshStream implements Store.
func (s *NATSKV) RefreshStream(ctx context.Context, stream string, o Owner, ttl time.Duration) error {
	if err := checkKVTTL(ttl); err != nil {
		return wrapf(err, "refresh", stream)
	}
	key := streamKVKey(stream)
	err := retry(func() error {
		rev, err := s.ownedRevision(ctx, key, o)
		if err != nil {
			return err
		}
		value, _ := json.Marshal(kvClaim{Owner: o, Expires: expiry(ttl)})
		_, err = s.kv.Update(ctx, key, value, rev)
		return casErr(err)
	})
	return wrapf(err, "refresh", stream)
}

// ReleaseStream implements Store.
func (s *NATSKV) ReleaseStream(ctx context.Context, stream string, o Owner) error {
	key := streamKVKey(stream)
	err := retry(func() error {
		rev, err := s.ownedRevision(ctx, key, o)
		if err != nil {
			return err
		}
		return casErr(s.kv.Delete(ctx, key, jetstream.LastRevision(rev)))
	})
	return wrapf(err, "release", stream)
}

// ownedRevision returns the revision of o's live claim under key, or
// ErrNotOwner.
func (s *NATSKV) ownedRevision(ctx context.Context, key string, o Owner) (uint64, error) {
	c, rev, err := s.readClaim(ctx, key)
	switch {
	case errors.Is(err, errAbsent):
		return 0, ErrNotOwner
	case err != nil:
		return 0, err
	case c.Owner != o:
		return 0, ErrNotOwner
	}
	return rev, nil
}

// LookupStream implements Store.
func (s *NATSKV) LookupStream(ctx context.Context, stream string) (Owner, error) {
	c, _, err := s.readClaim(ctx, streamKVKey(stream))
	if errors.Is(err, errAbsent) {
		err = ErrNotFound
	}
	return c.Owner, wrapf(err, "lookup", stream)
}

// PutOrigin implements Store. The record is a plain Put: only the origin it
// describes writes it.
func (s *NATSKV) PutOrigin(ctx context.Context, info OriginInfo, ttl time.Duration) error {
	info, err := prepareOrigin(info, ttl)
	if err == nil {
		err = checkKVTTL(ttl)
	}
	if err != nil {
		return wrapf(err, "put origin", info.ID)
	}
	value, _ := json.Marshal(kvOrigin{OriginInfo: info, Expires: expiry(ttl)})
	_, err = s.kv.Put(ctx, originKVKey(info.ID), value)
	return wrapf(err, "put origin", info.ID)
}

// Heartbeat implements Store. JetStream KV has no multi-key operation, so this is
// one request per key, all bounded by ctx.
func (s *NATSKV) Heartbeat(ctx context.Context, info OriginInfo, claims []Claim, ttl time.Duration) ([]error, error) {
	for _, c := range claims {
		if c.Owner.Origin != info.ID {
			return nil, fmt.Errorf("registry: heartbeat %s: claim of %s held for %s", info.ID, c.Stream, c.Owner.Origin)
		}
	}
	if err := s.PutOrigin(ctx, info, ttl); err != nil {
		return nil, err
	}
	out := make([]error, len(claims))
	for i, c := range claims {
		out[i] = s.RefreshStream(ctx, c.Stream, c.Owner, ttl)
		if out[i] != nil && !errors.Is(out[i], ErrNotOwner) {
			return nil, out[i]
		}
	}
	return out, nil
}

// GetOrigin implements Store.
func (s *NATSKV) GetOrigin(ctx context.Context, id string) (OriginInfo, error) {
	var rec kvOrigin
	_, err := s.readJSON(ctx, originKVKey(id), &rec)
	if err == nil && !live(rec.Expires) {
		err = errAbsent
	}
	if errors.Is(err, errAbsent) {
		err = ErrNotFound
	}
	if err != nil {
		return OriginInfo{}, wrapf(err, "get origin", id)
	}
	return rec.OriginInfo, nil
}

// PurgeOrigin implements Store. It lists the claim keys, since KV has no
// secondary index, and compare-and-deletes those held by id.
func (s *NATSKV) PurgeOrigin(ctx context.Context, id string) ([]string, error) {
	keys, err := s.claimKeys(ctx)
	if err != nil {
		return nil, wrapf(err, "purge origin", id)
	}
	var removed []string
	for _, key := range keys {
		wasLive, err := s.purgeClaim(ctx, key, id)
		if err != nil {
			return removed, wrapf(err, "purge origin", id)
		}
		if wasLive {
			removed = append(removed, streamFromKVKey(key))
		}
	}
	if err := s.purgeOriginRecord(ctx, id); err != nil {
		return removed, wrapf(err, "purge origin", id)
	}
	slices.Sort(removed)
	return removed, nil
}

// claimKeys lists every claim key in the bucket.
func (s *NATSKV) claimKeys(ctx context.Context) ([]string, error) {
	lister, err := s.kv.ListKeysFiltered(ctx, streamKVPrefix+">")
	if err != nil {
		return nil, err
	}
	defer lister.Stop()
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	return keys, ctx.Err()
}

// purgeClaim deletes the claim under key if origin id holds it, expired or
// not, and reports whether it was still live.
func (s *NATSKV) purgeClaim(ctx context.Context, key, id string) (bool, error) {
	var wasLive bool
	err := retry(func() error {
		var c kvClaim
		rev, err := s.readJSON(ctx, key, &c)
		if errors.Is(err, errAbsent) || err == nil && c.Origin != id {
			wasLive = false
			return nil
		}
		if err != nil {
			return err
		}
		wasLive = live(c.Expires)
		return casErr(s.kv.Delete(ctx, key, jetstream.LastRevision(rev)))
	})
	return wasLive, err
}

// purgeOriginRecord deletes the liveness record of id if it exists,
// compare-and-delete so a record rewritten meanwhile survives.
func (s *NATSKV) purgeOriginRecord(ctx context.Context, id string) error {
	var rec kvOrigin
	rev, err := s.readJSON(ctx, originKVKey(id), &rec)
	if errors.Is(err, errAbsent) {
		return nil
	}
	if err == nil {
		err = s.kv.Delete(ctx, originKVKey(id), jetstream.LastRevision(rev))
	}
	if errors.Is(casErr(err), errConflict) {
		return nil // the origin wrote a heartbeat after all: leave it
	}
	return err
}

// PublishEvent implements Store.
func (s *NATSKV) PublishEvent(ctx context.Context, ev Event) error {
	data, err := encodeEvent(ev)
	if err == nil {
		err = s.nc.Publish(s.subject, data)
	}
	return wrapf(err, "publish event", string(ev.Kind))
}

// Events implements Store. The server knows of the subscription before
// Events returns.
func (s *NATSKV) Events(ctx context.Context) (<-chan Event, error) {
	out := make(chan Event, eventBuffer)
	var mu sync.Mutex // guards closed, so the callback never sends on a closed out
	closed := false
	sub, err := s.nc.Subscribe(s.subject, func(m *nats.Msg) {
		ev, err := decodeEvent(m.Data)
		if err != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !closed {
			s.feed.offer(out, ev)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("registry: subscribe events: %w", err)
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Second) // a flush needs a deadline
	defer cancel()
	if err := s.nc.FlushWithContext(fctx); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("registry: subscribe events: %w", err)
	}
	go func() {
		select {
		case <-ctx.Done():
		case <-s.done:
		}
		_ = sub.Unsubscribe()
		mu.Lock()
		closed = true
		close(out)
		mu.Unlock()
	}()
	return out, nil
}

// Ping implements Store: a JetStream round trip to the bucket.
func (s *NATSKV) Ping(ctx context.Context) error {
	_, err := s.kv.Status(ctx)
	return wrapf(err, "ping", "nats-kv")
}

// Close implements Store.
func (s *NATSKV) Close() error {
	s.closeOnce.Do(func() { close(s.done) })
	return nil
}

// Key encoding. KV keys are NATS subject tokens: no '/', and '.' separates
// tokens. A stream "app/name" becomes "stream.app.name", an origin id becomes
// "origin.<id>", with each part escaped so any input maps to a distinct,
// valid key.
const (
	streamKVPrefix = "stream."
	originKVPrefix = "origin."
)

func streamKVKey(stream string) string {
	parts := strings.Split(stream, "/")
	for i, p := range parts {
		parts[i] = escapeKeyPart(p)
	}
	return streamKVPrefix + strings.Join(parts, ".")
}

func streamFromKVKey(key string) string {
	parts := strings.Split(strings.TrimPrefix(key, streamKVPrefix), ".")
	for i, p := range parts {
		parts[i] = unescapeKeyPart(p)
	}
	return strings.Join(parts, "/")
}

func originKVKey(id string) string { return originKVPrefix + escapeKeyPart(id) }

// escapeKeyPart keeps [A-Za-z0-9_-], so validated stream names and typical
// pod names pass through unchanged, and writes any other byte as "=XX" (hex),
// '=' included, so the mapping is reversible. An empty part becomes "=", so
// that no key has an empty token.
func escapeKeyPart(s string) string {
	if s == "" {
		return "="
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '-' || c == '_' || '0' <= c && c <= '9' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "=%02X", c)
	}
	return b.String()
}

// unescapeKeyPart reverses escapeKeyPart. Keys come from this package, so a
// malformed escape is kept as it is rather than reported.
func unescapeKeyPart(s string) string {
	if s == "=" {
		return ""
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '=' && i+2 < len(s) {
			if c, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(c))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
