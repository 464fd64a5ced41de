package cluster

import "time"

// Push is one forwarding of a stream to another RTMP server (--push), as its
// origin reports it.
type Push struct {
	Target    string `json:"target"`
	Connected bool   `json:"connected"`
	Bytes     uint64 `json:"bytes"`
	Errors    uint64 `json:"errors"`
	LastError string `json:"last_error,omitempty"`
}

// WithPushes adds each published stream's pushes to an origin's reports. pushes
// returns them by stream name.
func WithPushes(report func(now time.Time) Report, pushes func() map[string][]Push) func(now time.Time) Report {
	return func(now time.Time) Report {
		r := report(now)
		byName := pushes()
		for i := range r.Published {
			r.Published[i].Push = byName[r.Published[i].Name]
		}
		return r
	}
}
