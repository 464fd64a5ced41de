package registry

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
)

func TestOpen(t *testing.T) {
	nc := connectNATS(t, startNATSServer(t))
	tests := []struct {
		name      string
		url       string
		nc        *nats.Conn
		namespace string
		check     func(t *testing.T, s Store) // for a store
		wantErr   string                      // for an error
	}{
		{name: "redis", url: "redis://localhost:6379/2", check: wantRedis("localhost:6379", 2, "", "", false, "flvcdn")},
		{name: "redis with user, password and namespace", url: "redis://app:s3cret@redis.example:6380/0", namespace: "prod",
			check: wantRedis("redis.example:6380", 0, "app", "s3cret", false, "prod")},
		{name: "rediss uses TLS", url: "rediss://:pw@redis.example:6380", check: wantRedis("redis.example:6380", 0, "", "pw", true, "flvcdn")},
		{name: "empty URL is NATS KV", url: "", nc: nc, check: wantNATSKV("flvcdn.events")},
		{name: "nats-kv", url: "nats-kv", nc: nc, namespace: "dev", check: wantNATSKV("dev.events")},
		{name: "nats-kv with bucket", url: "nats-kv://mybucket", nc: nc, check: wantNATSKV("mybucket.events")},
		{name: "nats-kv with empty bucket", url: "nats-kv://", nc: nc, check: wantNATSKV("flvcdn.events")},

		{name: "unknown scheme", url: "http://localhost:6379", wantErr: `unsupported registry URL "http://localhost:6379"`},
		{name: "no scheme", url: "localhost:6379", wantErr: `unsupported registry URL "localhost:6379"`},
		{name: "unknown scheme hides password", url: "memcached://u:hunter2@h", wantErr: `"memcached://u:xxxxx@h"`},
		{name: "bad redis port hides password", url: "redis://u:hunter2@host:port", wantErr: `bad registry URL "redis://u:xxxxx@host:port"`},
		{name: "bad redis database", url: "redis://localhost/abc", wantErr: `bad registry URL "redis://localhost/abc"`},
		{name: "bad bucket", url: "nats-kv://my.bucket", nc: nc, wantErr: `bad registry URL "nats-kv://my.bucket"`},
		{name: "nats-kv without a connection", url: "nats-kv", wantErr: `registry URL "nats-kv" needs a NATS connection`},
		{name: "bad namespace", url: "redis://localhost", namespace: "a}b", wantErr: `namespace "a}b"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(testCtx(t), tc.url, tc.nc, tc.namespace)
			if tc.wantErr != "" {
				if err == nil {
					s.Close()
					t.Fatalf("Open(%q) succeeded, want error containing %s", tc.url, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.wantErr) || strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("Open(%q) error %q, want it to contain %s and no password", tc.url, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open(%q): %v", tc.url, err)
			}
			defer s.Close()
			tc.check(t, s)
		})
	}
}

func wantRedis(addr string, db int, user, password string, tls bool, ns string) func(*testing.T, Store) {
	return func(t *testing.T, s Store) {
		r, ok := s.(*Redis)
		if !ok {
			t.Fatalf("got %T, want *Redis", s)
		}
		opts := r.client.(*redis.Client).Options()
		if opts.Addr != addr || opts.DB != db || opts.Username != user || opts.Password != password || (opts.TLSConfig != nil) != tls {
			t.Errorf("options: addr %s db %d user %q password %q TLS %v; want %s %d %q %q %v",
				opts.Addr, opts.DB, opts.Username, opts.Password, opts.TLSConfig != nil, addr, db, user, password, tls)
		}
		if r.ns != ns || !r.ownsClient {
			t.Errorf("namespace %q, owns client %v; want %q, true", r.ns, r.ownsClient, ns)
		}
	}
}

func wantNATSKV(subject string) func(*testing.T, Store) {
	return func(t *testing.T, s Store) {
		n, ok := s.(*NATSKV)
		if !ok {
			t.Fatalf("got %T, want *NATSKV", s)
		}
		if n.subject != subject {
			t.Errorf("events subject %q, want %q", n.subject, subject)
		}
		if err := n.Ping(testCtx(t)); err != nil {
			t.Errorf("Ping: %v", err)
		}
	}
}
