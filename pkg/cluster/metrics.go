package cluster

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var apiRefused = promauto.NewCounter(prometheus.CounterOpts{
	Name: "flvcdn_api_unauthorized_total", Help: "Cluster API calls refused for a missing or wrong bearer token."})
