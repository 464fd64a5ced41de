package registry

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/flvcdn/flvcdn/test/harness"
)

func TestRedisOnMiniredis(t *testing.T) {
	runContract(t, func(t *testing.T) Store {
		mr := miniredis.RunT(t)
		client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { _ = client.Close() })
		s := NewRedis(client, uniqueName("mini"))
		clocks.Store(Store(s), mr.FastForward)
		t.Cleanup(func() { clocks.Delete(Store(s)) })
		return s
	})
}

func TestRedisOnRedisServer(t *testing.T) {
	addr := startRedisServer(t)
	runContract(t, func(t *testing.T) Store {
		client := redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { _ = client.Close() })
		return NewRedis(client, uniqueName("real"))
	})
}

// TestRedisKeys pins the key layout: every key of a namespace shares one
// Redis Cluster hash tag.
func TestRedisKeys(t *testing.T) {
	mr := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()
	s := NewRedis(client, "flvcdn")
	ctx := testCtx(t)
	if err := s.PutOrigin(ctx, OriginInfo{ID: "origin-0"}, longTTL); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, s, "live/demo", Owner{Origin: "origin-0", Session: "s1"}, longTTL)

	for _, key := range []string{"{flvcdn}:stream:live/demo", "{flvcdn}:origin:origin-0", "{flvcdn}:origin-streams:origin-0"} {
		if !mr.Exists(key) {
			t.Errorf("key %s missing; keys: %q", key, mr.Keys())
		}
		if ttl := mr.TTL(key); ttl <= 0 || ttl > longTTL {
			t.Errorf("key %s has TTL %v, want (0, %v]", key, ttl, longTTL)
		}
	}
	if got, _ := mr.Get("{flvcdn}:stream:live/demo"); got != `{"origin":"origin-0","session":"s1"}` {
		t.Errorf("claim value = %s", got)
	}
}

// TestRedisTakeoverMovesIndex: after a takeover the stream is listed under
// the new origin only, so the old origin's set does not grow stale members.
func TestRedisTakeoverMovesIndex(t *testing.T) {
	mr := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer client.Close()
	s := NewRedis(client, "flvcdn")
	alive(t, s, bob.Origin)
	mustClaim(t, s, "live/demo", alice, longTTL) // alice has no liveness record
	mustClaim(t, s, "live/demo", bob, longTTL)
	if ok, _ := mr.SIsMember("{flvcdn}:origin-streams:"+alice.Origin, "live/demo"); ok {
		t.Error("old owner's set still lists the stream")
	}
	if ok, _ := mr.SIsMember("{flvcdn}:origin-streams:"+bob.Origin, "live/demo"); !ok {
		t.Error("new owner's set does not list the stream")
	}
}

// startRedisServer runs redis-server on a free loopback port for the life of
// the test and returns its address.
func startRedisServer(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		harness.Skip(t, "redis-server not installed: %v", err)
	}
	var lastErr error
	for range 3 { // another process may grab the port between probe and bind
		addr, err := tryRedisServer(t, bin)
		if err == nil {
			return addr
		}
		lastErr = err
	}
	t.Fatalf("start redis-server: %v", lastErr)
	return ""
}

func tryRedisServer(t *testing.T, bin string) (string, error) {
	addr, err := harness.FreeAddr()
	if err != nil {
		return "", err
	}
	host, port, _ := net.SplitHostPort(addr)
	p, err := harness.Start("redis-server", exec.Command(bin, "--port", port, "--bind", host,
		"--save", "", "--appendonly", "no", "--dir", t.TempDir()), 64<<10)
	if err != nil {
		return "", err
	}
	client := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	var exited error
	err = harness.Poll(ctx, func() error {
		if exited = p.Running(); exited != nil {
			return nil // stop polling: it is gone
		}
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		defer pcancel()
		return client.Ping(pctx).Err()
	})
	if err == nil && exited == nil {
		t.Cleanup(p.Kill)
		return addr, nil
	}
	p.Kill()
	return "", errors.Join(errors.New("redis-server not answering"), exited, err)
}
