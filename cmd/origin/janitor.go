package main

import (
	"context"
	"log/slog"

	"github.com/flvcdn/flvcdn/pkg/registry"
)

// runJanitor is wired to pkg/k8s once it lands; until then it says so.
func runJanitor(ctx context.Context, c *Config, store registry.Store, log *slog.Logger) error {
	log.Warn("janitor requested but not built into this binary yet")
	<-ctx.Done()
	return nil
}
