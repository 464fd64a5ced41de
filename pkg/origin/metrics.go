package origin

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	streamsGauge = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "flvcdn_origin_streams", Help: "Streams being published to this origin."})
	publishRefused = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "flvcdn_origin_publish_refused_total", Help: "Publishes refused, by reason."}, []string{"reason"})
	tagsIn = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_origin_tags_total", Help: "FLV tags ingested."})
	bytesIn = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_origin_bytes_in_total", Help: "Tag body bytes ingested."})
	publishErrors = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_origin_bus_publish_errors_total", Help: "Tags that could not be published to NATS."})
	snapshotsServed = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_origin_snapshots_total", Help: "Join snapshots answered."})
	heartbeats = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_origin_heartbeats_total", Help: "Registry heartbeats (liveness record and every claim in one call)."})
	heartbeatErrors = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_origin_heartbeat_errors_total", Help: "Registry heartbeats that failed or ran past their deadline."})
	gopOverflows = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_origin_gop_overflows_total", Help: "GOP caches dropped for exceeding their byte or frame cap."})
)
