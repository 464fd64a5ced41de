package httpflv

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// plays counts viewers that got their first bytes, by the transport that carries
// them: "http/1.1" (taken over, one writev per window), "http/1.0" and "http/2"
// (gathered, see h2.go) and "ws" (WebSocket-FLV, see ws.go). Every transport reaches
// it through ServeHTTP, after the same checks (path, signature, play hook, limits).
var plays = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "flvcdn_edge_plays_total", Help: "Viewers that started playing, by transport (http/1.1, http/1.0, http/2, ws)."},
	[]string{"transport"})
