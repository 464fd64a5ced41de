package edge

import (
	"testing"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/flv"
)

var (
	s1 = bus.Session{Origin: "o1", ID: 1}
	s2 = bus.Session{Origin: "o2", ID: 2}
)

// media builds a live message whose tag timestamp encodes its seq (for checks).
func media(s bus.Session, seq uint64, key bool) bus.Message {
	b := []byte{0x27, 1, 0, 0, 0}
	if key {
		b[0] = 0x17
	}
	_, tag := flv.NewTag(0, flv.TypeVideo, uint32(seq), b)
	return bus.Message{Kind: bus.KindTag, Seq: seq, Session: s, Tag: tag}
}

func header(s bus.Session, seq uint64) seqTag {
	_, tag := flv.NewTag(0, flv.TypeVideo, 0, []byte{0x17, 0, 0, 0, 0})
	return seqTag{Seq: seq, Tag: tag}
}

func snap(s bus.Session, last uint64, gopFrom uint64) bus.Snapshot {
	sn := bus.Snapshot{Session: s, Last: last, Flags: bus.FlagHasVideo, Tags: []seqTag{header(s, 1)}}
	for q := gopFrom; q <= last; q++ {
		m := media(s, q, q == gopFrom)
		sn.Tags = append(sn.Tags, seqTag{Seq: q, Tag: m.Tag})
	}
	return sn
}

func seqs(ts []seqTag) []uint64 {
	var out []uint64
	for _, t := range ts {
		out = append(out, t.Seq)
	}
	return out
}

func eq(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestJoinDropsBufferedAtOrBelowSnapshot(t *testing.T) {
	var j joiner
	// Subscribed first: live messages 10..14 arrive before the snapshot answer.
	for q := uint64(10); q <= 14; q++ {
		if r := j.onLive(media(s1, q, false)); len(r.deliver) != 0 {
			t.Fatalf("delivered %d before the snapshot", q)
		}
	}
	r := j.onSnapshot(snap(s1, 12, 8))
	if !r.newSession || !r.fromKeyframe || len(r.headers) != 1 {
		t.Fatalf("first snapshot: %+v", r)
	}
	if !eq(seqs(r.gop), []uint64{8, 9, 10, 11, 12}) || !eq(seqs(r.deliver), []uint64{13, 14}) {
		t.Fatalf("gop %v deliver %v", seqs(r.gop), seqs(r.deliver))
	}
	// Live continues from 15; a duplicate is dropped.
	if r := j.onLive(media(s1, 14, false)); len(r.deliver) != 0 || r.needSnapshot {
		t.Fatalf("duplicate: %+v", r)
	}
	if r := j.onLive(media(s1, 15, false)); !eq(seqs(r.deliver), []uint64{15}) {
		t.Fatalf("next: %+v", r)
	}
}

func TestGapTriggersSnapshotAndBridges(t *testing.T) {
	var j joiner
	j.onSnapshot(snap(s1, 20, 18))
	r := j.onLive(media(s1, 23, false)) // 21, 22 lost
	if !r.needSnapshot || len(r.deliver) != 0 {
		t.Fatalf("gap: %+v", r)
	}
	if r := j.onLive(media(s1, 24, false)); len(r.deliver) != 0 {
		t.Fatal("delivered while resynchronising")
	}
	// The new snapshot's GOP (from 15) covers 21..22: viewers continue seamlessly.
	r2 := j.onSnapshot(snap(s1, 22, 15))
	if r2.newSession || r2.fromKeyframe || len(r2.headers) != 0 {
		t.Fatalf("same-session resync: %+v", r2)
	}
	if !eq(seqs(r2.gop), []uint64{21, 22}) || !eq(seqs(r2.deliver), []uint64{23, 24}) {
		t.Fatalf("gop %v deliver %v", seqs(r2.gop), seqs(r2.deliver))
	}
}

func TestGapPastGOPRestartsAtKeyframe(t *testing.T) {
	var j joiner
	j.onSnapshot(snap(s1, 20, 18))
	j.onLive(media(s1, 90, false))
	r := j.onSnapshot(snap(s1, 90, 80)) // 21..79 are gone for good
	if r.newSession || !r.fromKeyframe || r.gop[0].Seq != 80 {
		t.Fatalf("resync past the GOP: %+v", r)
	}
}

func TestNewSessionTriggersSnapshot(t *testing.T) {
	var j joiner
	j.onSnapshot(snap(s1, 5, 3))
	if r := j.onLive(bus.Message{Kind: bus.KindEnd, Seq: 6, Session: s1}); !r.ended {
		t.Fatalf("end of stream not reported: %+v", r)
	}
	r := j.onLive(media(s2, 1, true)) // publisher came back on another origin
	if !r.needSnapshot || len(r.deliver) != 0 {
		t.Fatalf("new session: %+v", r)
	}
	r2 := j.onSnapshot(snap(s2, 3, 1))
	if !r2.newSession || !r2.fromKeyframe || len(r2.headers) != 1 || !eq(seqs(r2.gop), []uint64{1, 2, 3}) {
		t.Fatalf("new session snapshot: %+v", r2)
	}
	// Stale messages of the old session are ignored from now on... as a new session
	// would be: they trigger a resync rather than interleave.
	if r := j.onLive(media(s2, 4, false)); !eq(seqs(r.deliver), []uint64{4}) {
		t.Fatalf("after switch: %+v", r)
	}
}

func TestSessionChangeWhileJoining(t *testing.T) {
	var j joiner
	j.onLive(media(s1, 10, false))
	r := j.onLive(media(s2, 1, true))
	if !r.needSnapshot {
		t.Fatal("a new session seen while joining must ask again")
	}
	r2 := j.onSnapshot(snap(s2, 1, 1))
	if r2.gop[0].Seq != 1 || len(r2.deliver) != 0 {
		t.Fatalf("%+v", r2)
	}
}

func TestPendingIsBounded(t *testing.T) {
	j := joiner{maxPending: 16}
	for q := uint64(1); q <= 100; q++ {
		j.onLive(media(s1, q, false))
	}
	if len(j.pending) != 16 || j.pending[0].seq != 85 {
		t.Fatalf("pending %d from %d", len(j.pending), j.pending[0].seq)
	}
}
