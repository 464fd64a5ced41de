package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is the Store used in production.
//
// Keys, for namespace "flvcdn":
//
//	{flvcdn}:stream:live/demo      JSON Owner, PX ttl
//	{flvcdn}:origin:<id>           JSON OriginInfo, PX ttl
//	{flvcdn}:origin-streams:<id>   set of stream names claimed by <id>, PX >= its claims
//	{flvcdn}:events                pub/sub channel, JSON Event
//
// Every key starts with the hash tag {namespace}, so all of them land in one
// Redis Cluster slot and a Lua script may touch a stream, an origin and both
// origins' sets atomically. The price is that the registry cannot spread over
// shards; it is tiny (one short key per live stream and per origin, written on
// publish, heartbeat and unpublish), so one shard carries it easily.
//
// A claim's value is the JSON encoding of Owner. encoding/json writes a struct's
// fields in a fixed order, so equal owners encode to equal strings and the
// scripts compare values as plain strings.
//
// The origin-streams set is an index for PurgeOrigin. Claim, refresh, takeover
// and release keep it in step with the claims in the same script; members whose
// claim expired on its own are left behind and ignored (and removed) by
// PurgeOrigin. Its TTL is only ever raised to cover the claims it lists.
type Redis struct {
	client     redis.UniversalClient
	ns         string
	ownsClient bool // set by Open, which created the client

	feed      eventFeed
	done      chan struct{}
	closeOnce sync.Once
}

var _ Store = (*Redis)(nil)

// NewRedis returns a Store on client with every key under namespace (for
// example "flvcdn"; "" means "flvcdn"). namespace becomes the Redis Cluster
// hash tag, so it must not contain braces; Open checks this. Close does not
// close client.
func NewRedis(client redis.UniversalClient, namespace string) *Redis {
	if namespace == "" {
		namespace = defaultNamespace
	}
	return &Redis{client: client, ns: namespace, done: make(chan struct{})}
}

func (r *Redis) key(parts ...string) string {
	k := "{" + r.ns + "}"
	for _, p := range parts {
		k += ":" + p
	}
	return k
}

func (r *Redis) streamKey(stream string) string { return r.key("stream", stream) }
func (r *Redis) originKey(id string) string     { return r.key("origin", id) }
func (r *Redis) indexKey(id string) string      { return r.key("origin-streams", id) }
func (r *Redis) eventsChannel() string          { return r.key("events") }

// indexLua adds a stream to an origin's set and stretches the set's TTL so it
// outlives the claim. Prepended to the scripts that create or extend claims.
const indexLua = `
local function index(set, stream, ttl)
  redis.call('SADD', set, stream)
  if redis.call('PTTL', set) < tonumber(ttl) then
    redis.call('PEXPIRE', set, ttl)
  end
end
`

// claimScript: SET NX PX, or refresh when the holder is the claimant itself.
// Done in Lua rather than a bare SET NX so the index update is atomic with it.
// KEYS: stream, claimant's set. ARGV: owner value, ttl ms, stream name.
// Returns 1 when claimed or refreshed, else the current holder's value.
var claimScript = redis.NewScript(indexLua + `
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  index(KEYS[2], ARGV[3], ARGV[2])
  return 1
end
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  index(KEYS[2], ARGV[3], ARGV[2])
  return 1
end
return cur
`)

// takeoverScript replaces a claim whose origin has no liveness record,
// provided the claim is still the one the caller read.
// KEYS: stream, old origin, old origin's set, claimant's set.
// ARGV: old value, new value, ttl ms, stream name.
// Returns 1 taken over, 0 old origin alive, -1 claim changed since read.
var takeoverScript = redis.NewScript(indexLua + `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SREM', KEYS[3], ARGV[4])
index(KEYS[4], ARGV[4], ARGV[3])
return 1
`)

// refreshScript is compare-and-pexpire.
// KEYS: stream, owner's set. ARGV: owner value, ttl ms, stream name.
var refreshScript = redis.NewScript(indexLua + `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
index(KEYS[2], ARGV[3], ARGV[2])
return 1
`)

// heartbeatScript writes an origin's liveness record and compare-and-pexpires
// every claim it lists, in one round trip.
// KEYS: origin, origin's set, then one key per stream.
// ARGV: record value, ttl ms, then per stream: owner value, stream name.
// Returns one 1 (refreshed) or 0 (not the owner) per stream.
var heartbeatScript = redis.NewScript(indexLua + `
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local res = {}
for i = 3, #KEYS do
  local j = (i - 3) * 2 + 3
  if redis.call('GET', KEYS[i]) == ARGV[j] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    index(KEYS[2], ARGV[j + 1], ARGV[2])
    res[#res + 1] = 1
  else
    res[#res + 1] = 0
  end
end
return res
`)

// releaseScript is compare-and-delete.
// KEYS: stream, owner's set. ARGV: owner value, stream name.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
`)

// purgeScript compare-and-deletes the claims PurgeOrigin read, and the
// origin's liveness record, each only if unchanged since it was read.
// KEYS: origin, origin's set, then one key per stream.
// ARGV: origin value seen ("" if absent), then per stream: name, value seen
// ("" if absent), "1" if that value is held by the origin being purged.
// A stream whose value changed in between is left alone, set member included.
// Returns the names of the claims deleted.
var purgeScript = redis.NewScript(`
local removed = {}
for i = 3, #KEYS do
  local j = (i - 3) * 3 + 2
  local name, seen, mine = ARGV[j], ARGV[j + 1], ARGV[j + 2]
  local cur = redis.call('GET', KEYS[i]) or ''
  if cur == seen then
    if mine == '1' and cur ~= '' then
      redis.call('DEL', KEYS[i])
      removed[#removed + 1] = name
    end
    redis.call('SREM', KEYS[2], name)
  end
end
if (redis.call('GET', KEYS[1]) or '') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return removed
`)

func encodeOwner(o Owner) string {
	b, _ := json.Marshal(o) // two strings: cannot fail
	return string(b)
}

func decodeOwner(v string) (Owner, error) {
	var o Owner
	if err := json.Unmarshal([]byte(v), &o); err != nil {
		return Owner{}, fmt.Errorf("bad claim value %q: %w", v, err)
	}
	return o, nil
}

// ClaimStream implements Store.
func (r *Redis) ClaimStream(ctx context.Context, stream string, o Owner, ttl time.Duration) error {
	if err := checkTTL(ttl); err != nil {
		return fmt.Errorf("registry: claim %s: %w", stream, err)
	}
	for range casAttempts {
		holder, err := r.claimOrRefresh(ctx, stream, o, ttl)
		if err != nil || holder == "" {
			return wrapf(err, "claim", stream)
		}
		res, err := r.takeover(ctx, stream, holder, o, ttl)
		switch {
		case err != nil:
			return wrapf(err, "claim", stream)
		case res == 1:
			return nil
		case res == 0:
			return fmt.Errorf("registry: claim %s: %w", stream, ErrTaken)
		}
		// The claim changed between the two scripts: start over.
	}
	return fmt.Errorf("registry: claim %s: %w", stream, errContention)
}

// claimOrRefresh runs claimScript. It returns "" when o now holds the
// stream, else the value of the current holder.
func (r *Redis) claimOrRefresh(ctx context.Context, stream string, o Owner, ttl time.Duration) (string, error) {
	keys := []string{r.streamKey(stream), r.indexKey(o.Origin)}
	res, err := claimScript.Run(ctx, r.client, keys, encodeOwner(o), ttl.Milliseconds(), stream).Result()
	if err != nil {
		return "", err
	}
	if holder, ok := res.(string); ok {
		return holder, nil
	}
	return "", nil
}

// takeover runs takeoverScript against holder, the value claimOrRefresh saw.
func (r *Redis) takeover(ctx context.Context, stream, holder string, o Owner, ttl time.Duration) (int64, error) {
	old, err := decodeOwner(holder)
	if err != nil {
		return 0, err
	}
	keys := []string{r.streamKey(stream), r.originKey(old.Origin), r.indexKey(old.Origin), r.indexKey(o.Origin)}
	return takeoverScript.Run(ctx, r.client, keys, holder, encodeOwner(o), ttl.Milliseconds(), stream).Int64()
}

// RefreshStream implements Store.
func (r *Redis) RefreshStream(ctx context.Context, stream string, o Owner, ttl time.Duration) error {
	if err := checkTTL(ttl); err != nil {
		return fmt.Errorf("registry: refresh %s: %w", stream, err)
	}
	keys := []string{r.streamKey(stream), r.indexKey(o.Origin)}
	ok, err := refreshScript.Run(ctx, r.client, keys, encodeOwner(o), ttl.Milliseconds(), stream).Int64()
	return wrapf(ownerResult(ok, err), "refresh", stream)
}

// ReleaseStream implements Store.
func (r *Redis) ReleaseStream(ctx context.Context, stream string, o Owner) error {
	keys := []string{r.streamKey(stream), r.indexKey(o.Origin)}
	ok, err := releaseScript.Run(ctx, r.client, keys, encodeOwner(o), stream).Int64()
	return wrapf(ownerResult(ok, err), "release", stream)
}

// ownerResult maps a compare script's 0/1 answer to ErrNotOwner/nil.
func ownerResult(ok int64, err error) error {
	if err == nil && ok != 1 {
		return ErrNotOwner
	}
	return err
}

// LookupStream implements Store.
func (r *Redis) LookupStream(ctx context.Context, stream string) (Owner, error) {
	v, err := r.client.Get(ctx, r.streamKey(stream)).Result()
	if errors.Is(err, redis.Nil) {
		err = ErrNotFound
	}
	if err != nil {
		return Owner{}, wrapf(err, "lookup", stream)
	}
	o, err := decodeOwner(v)
	return o, wrapf(err, "lookup", stream)
}

// PutOrigin implements Store.
func (r *Redis) PutOrigin(ctx context.Context, info OriginInfo, ttl time.Duration) error {
	info, err := prepareOrigin(info, ttl)
	if err != nil {
		return wrapf(err, "put origin", info.ID)
	}
	v, _ := json.Marshal(info)
	return wrapf(r.client.Set(ctx, r.originKey(info.ID), v, ttl).Err(), "put origin", info.ID)
}

// Heartbeat implements Store: one script, one round trip.
func (r *Redis) Heartbeat(ctx context.Context, info OriginInfo, claims []Claim, ttl time.Duration) ([]error, error) {
	info, err := prepareOrigin(info, ttl)
	if err != nil {
		return nil, wrapf(err, "heartbeat", info.ID)
	}
	v, _ := json.Marshal(info)
	keys := make([]string, 0, 2+len(claims))
	args := make([]any, 0, 2+2*len(claims))
	keys = append(keys, r.originKey(info.ID), r.indexKey(info.ID))
	args = append(args, string(v), ttl.Milliseconds())
	for _, c := range claims {
		if c.Owner.Origin != info.ID {
			return nil, fmt.Errorf("registry: heartbeat %s: claim of %s held for %s", info.ID, c.Stream, c.Owner.Origin)
		}
		keys = append(keys, r.streamKey(c.Stream))
		args = append(args, encodeOwner(c.Owner), c.Stream)
	}
	res, err := heartbeatScript.Run(ctx, r.client, keys, args...).Int64Slice()
	if err != nil {
		return nil, wrapf(err, "heartbeat", info.ID)
	}
	if len(res) != len(claims) {
		return nil, fmt.Errorf("registry: heartbeat %s: %d answers for %d claims", info.ID, len(res), len(claims))
	}
	out := make([]error, len(claims))
	for i, ok := range res {
		out[i] = wrapf(ownerResult(ok, nil), "refresh", claims[i].Stream)
	}
	return out, nil
}

// GetOrigin implements Store.
func (r *Redis) GetOrigin(ctx context.Context, id string) (OriginInfo, error) {
	v, err := r.client.Get(ctx, r.originKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		err = ErrNotFound
	}
	if err != nil {
		return OriginInfo{}, wrapf(err, "get origin", id)
	}
	var info OriginInfo
	if err := json.Unmarshal(v, &info); err != nil {
		return OriginInfo{}, fmt.Errorf("registry: get origin %s: bad value: %w", id, err)
	}
	return info, nil
}

// PurgeOrigin implements Store. It reads the origin's set and the claims it
// lists, then deletes in one script only what is unchanged since the read.
func (r *Redis) PurgeOrigin(ctx context.Context, id string) ([]string, error) {
	streams, err := r.client.SMembers(ctx, r.indexKey(id)).Result()
	if err != nil {
		return nil, wrapf(err, "purge origin", id)
	}
	keys := []string{r.originKey(id), r.indexKey(id)}
	for _, s := range streams {
		keys = append(keys, r.streamKey(s))
	}
	// One MGET: every key shares the {namespace} slot.
	seen, err := r.client.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, wrapf(err, "purge origin", id)
	}
	args := []any{valueOrEmpty(seen[0])}
	for i, s := range streams {
		v := valueOrEmpty(seen[i+2])
		mine := "0"
		if o, err := decodeOwner(v); err == nil && o.Origin == id {
			mine = "1"
		}
		args = append(args, s, v, mine)
	}
	removed, err := purgeScript.Run(ctx, r.client, keys, args...).StringSlice()
	if err != nil {
		return nil, wrapf(err, "purge origin", id)
	}
	slices.Sort(removed)
	return removed, nil
}

// valueOrEmpty turns an MGET entry (string or nil) into a string.
func valueOrEmpty(v any) string {
	s, _ := v.(string)
	return s
}

// PublishEvent implements Store.
func (r *Redis) PublishEvent(ctx context.Context, ev Event) error {
	data, err := encodeEvent(ev)
	if err == nil {
		err = r.client.Publish(ctx, r.eventsChannel(), data).Err()
	}
	return wrapf(err, "publish event", string(ev.Kind))
}

// Events implements Store. The subscription is confirmed by Redis before
// Events returns.
func (r *Redis) Events(ctx context.Context) (<-chan Event, error) {
	sub := r.client.Subscribe(ctx, r.eventsChannel())
	if _, err := sub.Receive(ctx); err != nil {
		_ = sub.Close()
		return nil, fmt.Errorf("registry: subscribe events: %w", err)
	}
	out := make(chan Event, eventBuffer)
	go r.forwardEvents(ctx, sub, out)
	return out, nil
}

// forwardEvents moves events from a subscription to out until ctx ends or
// the store closes. It never waits on out, so go-redis never waits on it.
func (r *Redis) forwardEvents(ctx context.Context, sub *redis.PubSub, out chan<- Event) {
	defer close(out)
	defer sub.Close()
	msgs := sub.Channel()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.done:
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			if ev, err := decodeEvent([]byte(m.Payload)); err == nil {
				r.feed.offer(out, ev)
			}
		}
	}
}

// Ping implements Store.
func (r *Redis) Ping(ctx context.Context) error {
	return wrapf(r.client.Ping(ctx).Err(), "ping", "redis")
}

// Close implements Store. It closes the client only if Open created it.
func (r *Redis) Close() error {
	var err error
	r.closeOnce.Do(func() {
		close(r.done)
		if r.ownsClient {
			err = r.client.Close()
		}
	})
	return wrapf(err, "close", "redis")
}
