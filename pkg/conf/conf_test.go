package conf

import (
	"flag"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestFlagsFallBackToEnvironment(t *testing.T) {
	t.Setenv("FLVCDN_NATS_URL", "nats://env:4222")
	t.Setenv("FLVCDN_GRACE", "3s")
	t.Setenv("FLVCDN_SOURCE", "live/a=a.flv, live/b=b.flv")
	t.Setenv("FLVCDN_LOG_FORMAT", "json")
	var c Common
	var grace time.Duration
	var src Multi
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c.Register(fs, "edge")
	fs.DurationVar(&grace, "grace", time.Second, "")
	fs.Var(&src, "source", "")
	// A flag given on the command line wins over its environment variable.
	if err := Parse(fs, []string{"--log-format", "text"}); err != nil {
		t.Fatal(err)
	}
	if c.NATS.URL != "nats://env:4222" || grace != 3*time.Second || c.LogFormat != "text" {
		t.Fatalf("nats %q grace %v format %q", c.NATS.URL, grace, c.LogFormat)
	}
	if len(src) != 2 || src[1] != "live/b=b.flv" {
		t.Fatalf("sources %q", src)
	}
	if c.RegistryKind() != "nats-kv" {
		t.Fatal(c.RegistryKind())
	}
}

func TestBadEnvironmentValueNamesTheVariable(t *testing.T) {
	t.Setenv("FLVCDN_GRACE", "soon")
	var grace time.Duration
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.DurationVar(&grace, "grace", time.Second, "")
	err := Parse(fs, nil)
	if err == nil || !strings.Contains(err.Error(), "FLVCDN_GRACE") {
		t.Fatalf("%v, want an error naming FLVCDN_GRACE", err)
	}
	if _, err := Logger("xml", "info"); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Fatalf("%v, want an error naming --log-format", err)
	}
	if EnvName("max-viewers-per-stream") != "FLVCDN_MAX_VIEWERS_PER_STREAM" {
		t.Fatal(EnvName("max-viewers-per-stream"))
	}
}

func TestHookSettings(t *testing.T) {
	t.Setenv("FLVCDN_HOOK_URL", "http://127.0.0.1:9/hook")
	t.Setenv("FLVCDN_HOOK_SECRET", "from-a-secret")
	var h Hook
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	h.Register(fs, "play")
	if err := Parse(fs, []string{"--hook-timeout", "500ms", "--hook-fail-open"}); err != nil {
		t.Fatal(err)
	}
	if h.URL != "http://127.0.0.1:9/hook" || h.Secret != "from-a-secret" || h.Timeout != 500*time.Millisecond || !h.FailOpen {
		t.Fatalf("%+v", h)
	}
	if c, err := h.Client("edge-1", slog.Default()); err != nil || c == nil {
		t.Fatalf("client %v %v", c, err)
	}
	bad := map[string]Hook{
		"--hook-url":     {URL: "localhost:8080/hook", Timeout: time.Second},
		"--hook-timeout": {URL: "http://h/", Timeout: 0},
		"--hook-secret":  {Secret: "s", Timeout: time.Second},
	}
	for setting, h := range bad {
		if _, err := h.Client("n", slog.Default()); err == nil || !strings.Contains(err.Error(), setting) {
			t.Errorf("%+v: %v, want an error naming %s", h, err, setting)
		}
	}
	if c, err := (&Hook{Timeout: time.Second}).Client("n", slog.Default()); c != nil || err != nil {
		t.Errorf("no --hook-url: %v %v, want no client", c, err)
	}
}
