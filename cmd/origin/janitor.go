package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/flvcdn/flvcdn/pkg/k8s"
	"github.com/flvcdn/flvcdn/pkg/registry"
)

// runJanitor runs the Lease-elected janitor that purges a dead origin's registry
// entries the moment Kubernetes reports its pod gone or unready.
func runJanitor(ctx context.Context, c *Config, store registry.Store, log *slog.Logger) error {
	cs, err := k8s.NewClient(c.Kubeconfig) // "" = in-cluster
	if err != nil {
		return fmt.Errorf("janitor: %w", err)
	}
	k8s.LogKlogTo(log)
	return k8s.RunJanitor(ctx, cs, k8s.JanitorConfig{
		Namespace: c.JanitorNS, Identity: c.ID, LeaseName: c.JanitorLease, OriginSelector: c.JanitorSel,
	}, store, log)
}
