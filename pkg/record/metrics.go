package record

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	active = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "flvcdn_record_active", Help: "Streams being recorded now."})
	segments = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_record_segments_total", Help: "Recording segments finished (closed normally)."})
	bytesWritten = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_record_bytes_total", Help: "Bytes written to recording files."})
	writeErrors = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_record_errors_total", Help: "Recordings stopped by a write error (disk full, file too large, I/O error)."})
	dropped = promauto.NewCounter(prometheus.CounterOpts{
		Name: "flvcdn_record_dropped_tags_total", Help: "Tags not recorded because the writer fell behind its queue."})
)
