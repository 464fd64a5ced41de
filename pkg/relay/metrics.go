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

var (
	pushConnected = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "flvcdn_push_connected", Help: "Push connections to other RTMP servers that are up."})
	pushBytes = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_push_bytes_total", Help: "Tag bytes pushed to other RTMP servers."})
	pushErrors = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_push_errors_total", Help: "Push connections that failed or broke."})
	pushDropped = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_push_dropped_tags_total", Help: "Tags not pushed because the connection fell a whole queue behind (resumed at the next keyframe)."})
)
