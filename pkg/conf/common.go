package conf

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/flvcdn/flvcdn/pkg/bus"
)

// Common are the settings both binaries share (the contract scripts and the chart
// rely on these names).
type Common struct {
	NATS      bus.ConnOptions
	RedisURL  string
	Namespace string
	ID        string
	LogFormat string
	LogLevel  string
	APIToken  string
}

// Register adds the shared flags to fs; role names the binary in help texts.
func (c *Common) Register(fs *flag.FlagSet, role string) {
	fs.StringVar(&c.NATS.URL, "nats-url", "nats://127.0.0.1:4222", "NATS server URL(s), comma-separated")
	fs.StringVar(&c.NATS.CredsFile, "nats-creds", "", "NATS credentials file")
	fs.StringVar(&c.NATS.User, "nats-user", "", "NATS user")
	fs.StringVar(&c.NATS.Password, "nats-password", "", "NATS password")
	fs.StringVar(&c.NATS.TLSCA, "nats-tls-ca", "", "CA file to verify the NATS server's TLS certificate")
	fs.StringVar(&c.RedisURL, "redis-url", "", "registry: redis://[:password@]host:port/db or rediss:// for TLS; empty = JetStream KV on the NATS server (laptops)")
	fs.StringVar(&c.Namespace, "registry-namespace", "flvcdn", "prefix of registry keys")
	fs.StringVar(&c.ID, "id", DefaultID(), role+" id (default: POD_NAME, else hostname)")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.APIToken, "api-token", "", "when set, every /api/ call needs 'Authorization: Bearer <token>'; DELETE works only with a token set")
}

// Settings returns the shared settings; binaries' Config structs embed Common, so
// they have this method too.
func (c *Common) Settings() *Common { return c }

// RegistryKind names the registry backend a --redis-url selects, for logs.
func (c *Common) RegistryKind() string {
	if c.RedisURL == "" {
		return "nats-kv"
	}
	return "redis"
}

// Main is the whole main() of a binary: parse the settings (exit 2 naming the bad
// one), build the logger, run (exit 1 on failure).
func Main[C interface{ Settings() *Common }](name string, parse func([]string) (C, error), run func(C, *slog.Logger) error) {
	cfg, err := parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err == nil {
		var log *slog.Logger
		if log, err = Logger(cfg.Settings().LogFormat, cfg.Settings().LogLevel); err == nil {
			if err := run(cfg, log); err != nil {
				log.Error(name+" stopped", "err", err)
				os.Exit(1)
			}
			return
		}
	}
	fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	os.Exit(2)
}

// NATSCheck is a readiness check for a NATS connection.
func NATSCheck(connected func() bool) func(context.Context) error {
	return func(context.Context) error {
		if !connected() {
			return errors.New("not connected")
		}
		return nil
	}
}
