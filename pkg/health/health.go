// Package health owns the operational HTTP endpoints both binaries serve:
// /healthz (the process is alive), /readyz (its dependencies answer and it is not
// draining) and /metrics (Prometheus). It never serves media.
package health

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check returns nil when a dependency is usable.
type Check func(ctx context.Context) error

// Register adds the endpoints to mux. Every check runs on each /readyz, with 2 s
// for all of them; the first that fails makes the answer 503 with its name.
func Register(mux *http.ServeMux, checks map[string]Check) {
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		for name, c := range checks {
			if err := c(ctx); err != nil {
				http.Error(w, fmt.Sprintf("%s: %v", name, err), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("/metrics", promhttp.Handler())
}
