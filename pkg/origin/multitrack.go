package origin

import (
	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/flv"
)

// gopTracks keeps, for an Enhanced RTMP multitrack stream, where in the cached GOP
// each video track's newest keyframe is. The tracks' keyframes may come in
// messages of their own (OBS sends each track separately), or half a GOP apart:
// the GOP is then kept from the oldest of those keyframes, so that a snapshot has
// a start point for every track, not only for the track that sent the last one.
type gopTracks struct {
	base uint64           // absolute position of gop[0]
	keys map[uint8]uint64 // track -> absolute position of its newest keyframe
}

// multitrackKey handles a keyframe message that is multitrack (actor only): it
// records the keyframe of its tracks and trims the GOP to the oldest track's
// newest keyframe. It reports false for any other keyframe, which restarts the GOP.
func (c *cache) multitrackKey(f bus.Frame) bool {
	ex, err := flv.ParseEx(flv.TypeVideo, f.Tag.Body(), nil)
	if err != nil || !ex.Multitrack {
		return false
	}
	if c.gop == nil {
		c.gop, c.gopBytes, c.tracks = make([]bus.Frame, 0, 64), 0, gopTracks{}
	}
	if c.tracks.keys == nil {
		c.tracks.keys = map[uint8]uint64{}
	}
	at := c.tracks.base + uint64(len(c.gop)) // where add appends f
	for _, p := range ex.Packets {
		c.tracks.keys[p.Track] = at
	}
	oldest := at
	for _, k := range c.tracks.keys {
		oldest = min(oldest, k)
	}
	if drop := int(oldest - c.tracks.base); drop > 0 {
		for _, g := range c.gop[:drop] {
			c.gopBytes -= len(g.Tag)
		}
		c.gop = append(c.gop[:0:0], c.gop[drop:]...)
		c.tracks.base = oldest
	}
	return true
}
