package conf

import (
	"flag"
	"io"
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
