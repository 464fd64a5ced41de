// Package conf owns process configuration plumbing shared by the binaries: every
// flag is also read from the environment as FLVCDN_<NAME>, the logger is built from
// --log-format, and the process identity defaults to the pod name. It never holds
// a binary's settings itself; each cmd declares its own Config struct.
package conf

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// EnvName returns the environment variable for a flag: FLVCDN_ + upper snake case.
func EnvName(flagName string) string {
	return "FLVCDN_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Parse parses args into fs, then fills every flag not given on the command line
// from its environment variable. A bad environment value is reported with its name.
func Parse(fs *flag.FlagSet, args []string) error {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage of %s (every flag is also read from FLVCDN_<NAME>, e.g. %s):\n", fs.Name(), EnvName("nats-url"))
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		v, ok := os.LookupEnv(EnvName(f.Name))
		if !ok {
			return
		}
		if mv, isMulti := f.Value.(*Multi); isMulti {
			for _, part := range strings.Split(v, ",") {
				if part = strings.TrimSpace(part); part != "" {
					_ = mv.Set(part)
				}
			}
			return
		}
		if e := f.Value.Set(v); e != nil {
			err = fmt.Errorf("%s=%q: %w", EnvName(f.Name), v, e)
		}
	})
	return err
}

// Multi is a repeatable string flag (from the environment: comma-separated).
type Multi []string

func (m *Multi) String() string { return strings.Join(*m, ",") }

// Set appends a value.
func (m *Multi) Set(v string) error { *m = append(*m, v); return nil }

// DefaultID is the pod name from the downward API, else the host name.
func DefaultID() string {
	if p := os.Getenv("POD_NAME"); p != "" {
		return p
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "flvcdn"
	}
	return h
}

// Logger builds the process logger for format "text" or "json".
func Logger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
