package edge

import (
	"testing"

	"github.com/flvcdn/flvcdn/pkg/bus"
)

// FuzzJoiner drives the join state machine with an arbitrary schedule of live
// messages (duplicates, gaps, session changes, ends) and snapshots, and checks the
// invariant that matters to viewers: within one shown session, delivered sequence
// numbers strictly increase.
func FuzzJoiner(f *testing.F) {
	f.Add([]byte{0, 1, 0, 2, 3, 2, 0, 5, 1, 9, 2, 4})
	f.Add([]byte{1, 3, 0, 4, 0, 4, 0, 6, 2, 1, 0, 7})
	f.Fuzz(func(t *testing.T, ops []byte) {
		j := joiner{maxPending: 64}
		var lastShown uint64
		var shown bus.Session
		check := func(sess bus.Session, ts []seqTag) {
			for _, x := range ts {
				if sess == shown && x.Seq <= lastShown {
					t.Fatalf("seq %d delivered after %d in session %v", x.Seq, lastShown, sess)
				}
				lastShown, shown = x.Seq, sess
			}
		}
		sessions := []bus.Session{s1, s2}
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i]%4, uint64(ops[i+1])
			sess := sessions[arg%2]
			switch op {
			case 0, 1:
				r := j.onLive(media(sess, arg/2+1, op == 1))
				check(sess, r.deliver)
			case 2:
				last := arg/2 + 1
				r := j.onSnapshot(snap(sess, last, max(1, last-3)))
				if r.newSession {
					lastShown = 0
				}
				var all []seqTag
				all = append(all, r.gop...)
				all = append(all, r.deliver...)
				check(sess, all)
			case 3:
				j.onLive(bus.Message{Kind: bus.KindEnd, Seq: arg/2 + 1, Session: sess})
			}
		}
	})
}
