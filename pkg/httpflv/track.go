package httpflv

import (
	"context"
	"fmt"
	"net/url"
	"strconv"

	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// TrackHub is a Hub that serves one video track of a multitrack stream per viewer
// (edge.Hub is one). ?vtrack=N on the play URL picks track N; without it a viewer
// gets track 0, the default.
type TrackHub interface {
	WatchTrack(ctx context.Context, name stream.Name, track int) (*edge.Viewer, error)
}

// parseVTrack reads ?vtrack=N: absent is track 0; anything but one decimal number
// from 0 to edge.MaxTrack is an error (the viewer gets 400).
func parseVTrack(q url.Values) (int, error) {
	vs, ok := q["vtrack"]
	if !ok {
		return 0, nil
	}
	if len(vs) != 1 {
		return 0, fmt.Errorf("vtrack given %d times", len(vs))
	}
	v := vs[0]
	if v == "" || len(v) > 3 || v[0] < '0' || v[0] > '9' {
		return 0, fmt.Errorf("vtrack %q: want a track number from 0 to %d", v, edge.MaxTrack)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n > edge.MaxTrack {
		return 0, fmt.Errorf("vtrack %q: want a track number from 0 to %d", v, edge.MaxTrack)
	}
	return n, nil
}

// watch asks the hub for a viewer of the track.
func (s *Server) watch(ctx context.Context, name stream.Name, track int) (*edge.Viewer, error) {
	if th, ok := s.Hub.(TrackHub); ok {
		return th.WatchTrack(ctx, name, track)
	}
	if track != 0 {
		return nil, fmt.Errorf("video track %d: %w", track, edge.ErrNoTrack)
	}
	return s.Hub.Watch(ctx, name)
}
