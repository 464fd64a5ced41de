package relay

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	pullsActive = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "flvcdn_pull_active", Help: "Streams this origin is pulling from an upstream (claimed, connected or retrying)."})
	upstreamConnects = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_pull_upstream_connects_total", Help: "Upstream connections made by pulls."})
	upstreamFailures = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "flvcdn_pull_upstream_failures_total", Help: "Upstream attempts or connections that failed, by kind (error, invalid, ended)."},
		[]string{"kind"})
)
