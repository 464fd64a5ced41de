package edge

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	viewersGauge = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "flvcdn_edge_viewers", Help: "Viewers connected to this edge."})
	streamsGauge = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "flvcdn_edge_streams", Help: "Streams this edge is pulling."})
	joinsTotal = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_edge_joins_total", Help: "Snapshots applied (first joins and resyncs)."})
	ownerEvents = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_edge_owner_events_total", Help: "Registry events (origin down, unpublish) that made a followed stream look its owner up again."})
	viewerSkips = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_edge_viewer_skips_total", Help: "Times a lagging viewer skipped to a keyframe."})
	viewerRefused = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "flvcdn_edge_viewer_refused_total", Help: "Viewers refused, by limit."}, []string{"reason"})
	windowGauge = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "flvcdn_edge_merge_window_seconds", Help: "Merge window the edge's streams use now (follows its viewers; see edge.WindowPolicy)."})
	viewerDrops = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "flvcdn_edge_viewer_drops_total", Help: "Viewers disconnected by the edge, by reason."}, []string{"reason"})
)

func init() {
	// Export every label value from the start, so dashboards and alerts see zeros.
	for _, r := range []string{"slow", "write-timeout"} {
		viewerDrops.WithLabelValues(r)
	}
	for _, r := range []string{"edge-limit", "stream-limit"} {
		viewerRefused.WithLabelValues(r)
	}
}

// CountDrop records a viewer the server disconnected for reason (e.g. "write-timeout").
func CountDrop(reason string) { viewerDrops.WithLabelValues(reason).Inc() }
