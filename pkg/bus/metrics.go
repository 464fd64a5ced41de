package bus

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	feedDropped = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_bus_feed_dropped_total",
		Help: "Live messages an edge lost before its stream actor took them: malformed, unassembled, or over the feed's byte bound. Each loss is repaired with a snapshot."})
	requestsDropped = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_bus_snapshot_requests_dropped_total",
		Help: "Edge snapshot requests an origin session dropped because its queue was full (the edge asks again)."})
)
