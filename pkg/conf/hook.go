package conf

import (
	"errors"
	"flag"
	"log/slog"
	"time"

	"github.com/flvcdn/flvcdn/pkg/hook"
)

// Hook are the HTTP callback settings of both binaries (contract: scripts and the
// chart rely on these names).
type Hook struct {
	URL      string
	Timeout  time.Duration
	FailOpen bool
	Secret   string
}

// Register adds the callback flags to fs; actions names what the binary posts
// (e.g. "publish (waits) and unpublish").
func (h *Hook) Register(fs *flag.FlagSet, actions string) {
	fs.StringVar(&h.URL, "hook-url", "", "POST a JSON event on "+actions+" to this URL; a 2xx answer allows, anything else denies (empty: no callbacks)")
	fs.DurationVar(&h.Timeout, "hook-timeout", 2*time.Second, "longest wait for the hook's answer")
	fs.BoolVar(&h.FailOpen, "hook-fail-open", false, "allow when the hook times out or cannot be reached (default: deny)")
	fs.StringVar(&h.Secret, "hook-secret", "", "sign each event: header X-Flvcdn-Signature: sha256=hex(HMAC-SHA256(secret, body))")
}

// Client checks the settings and returns the callback client for node, or nil when
// --hook-url is empty. Errors name the setting.
func (h *Hook) Client(node string, log *slog.Logger) (*hook.Client, error) {
	if h.Timeout <= 0 {
		return nil, errors.New("--hook-timeout: must be positive")
	}
	if h.URL == "" {
		if h.Secret != "" {
			return nil, errors.New("--hook-secret: set without --hook-url")
		}
		return nil, nil
	}
	return hook.New(hook.Config{URL: h.URL, Node: node, Timeout: h.Timeout, FailOpen: h.FailOpen, Secret: h.Secret}, log)
}
