package rtmp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	gortmp "github.com/yutopp/go-rtmp"
	rtmpmsg "github.com/yutopp/go-rtmp/message"
)

// refusingIngest records each request and refuses it with err.
type refusingIngest struct {
	mu   sync.Mutex
	reqs []PublishRequest
	err  error
}

func (r *refusingIngest) Publish(_ context.Context, req PublishRequest) (Publication, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, req)
	return nil, r.err
}

// publishStatus connects to app, publishes name and returns the description and code
// of the first error onStatus the server sends.
func publishStatus(t *testing.T, addr, app, name string) (code, desc string) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	handshake(t, conn)
	e := newCNEncoder()
	e.write(cnMsg{csid: 3, typ: 20, payload: benchCommand(t, "connect", 1, &rtmpmsg.NetConnectionConnect{
		Command: rtmpmsg.NetConnectionConnectCommand{App: app, Type: "nonprivate", TCURL: "rtmp://127.0.0.1/" + app}})})
	e.write(cnMsg{csid: 3, typ: 20, payload: benchCommand(t, "createStream", 2, &rtmpmsg.NetConnectionCreateStream{})})
	e.write(cnMsg{csid: 3, typ: 20, sid: 1, payload: benchCommand(t, "publish", 3, &rtmpmsg.NetStreamPublish{PublishingName: name, PublishingType: "live"})})
	if _, err := conn.Write(e.out); err != nil {
		t.Fatal(err)
	}
	cs := gortmp.NewChunkStreamer(conn, io.Discard, nil)
	defer cs.Close()
	for {
		var m gortmp.ChunkMessage
		if _, _, err := cs.Read(&m); err != nil {
			t.Fatalf("no error status before %v", err)
		}
		switch msg := m.Message.(type) {
		case *rtmpmsg.SetChunkSize:
			_ = cs.PeerState().SetChunkSize(msg.ChunkSize)
		case *rtmpmsg.CommandMessage:
			if msg.CommandName != "onStatus" {
				continue
			}
			args, err := decodeArgs(msg)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range args { // go-rtmp v0.0.7 cannot decode onStatus itself
				if info, ok := a.(map[string]interface{}); ok && info["level"] == "error" {
					code, _ := info["code"].(string)
					desc, _ := info["description"].(string)
					return code, desc
				}
			}
		}
	}
}

func decodeArgs(msg *rtmpmsg.CommandMessage) ([]interface{}, error) {
	dec := rtmpmsg.NewAMFDecoder(msg.Body, msg.Encoding)
	var args []interface{}
	for {
		var v interface{}
		if err := dec.Decode(&v); err != nil {
			if errors.Is(err, io.EOF) {
				return args, nil
			}
			return nil, err
		}
		args = append(args, v)
	}
}

// A refusal marked Unauthorized reaches the publisher as NetStream.Publish.Unauthorized
// with the ingest's reason; any other as NetStream.Publish.Failed. The ingest is told
// the client's address and the raw query (the stream name's, else the app's).
func TestRefusalCodesAndRequest(t *testing.T) {
	// A reason long enough that our onStatus spans several 128-byte chunks: it must
	// still arrive complete before go-rtmp's own one-chunk "Publish failed." status.
	reason := "publish denied: banned until Monday" + strings.Repeat(".", 300)
	ing := &refusingIngest{err: Unauthorized(errors.New(reason))}
	addr := startServer(t, ing)
	for range 20 {
		code, desc := publishStatus(t, addr, "live", "cam1?key=k1&token=t%201")
		if code != "NetStream.Publish.Unauthorized" || desc != "live/cam1: "+reason {
			t.Fatalf("status %q %q", code, desc)
		}
	}
	code, _ := publishStatus(t, addr, "live?key=k2&tenant=7", "cam2")
	if code != "NetStream.Publish.Unauthorized" {
		t.Fatalf("status %q", code)
	}
	first := PublishRequest{Name: "live/cam1", Key: "k1", ClientIP: "127.0.0.1", Query: "key=k1&token=t%201"}
	want := []PublishRequest{
		first, first, first, first, first, first, first, first, first, first,
		first, first, first, first, first, first, first, first, first, first,
		{Name: "live/cam2", Key: "k2", ClientIP: "127.0.0.1", Query: "key=k2&tenant=7"},
	}
	ing.mu.Lock()
	got := fmt.Sprint(ing.reqs)
	ing.mu.Unlock()
	if got != fmt.Sprint(want) {
		t.Fatalf("requests %s, want %s", got, fmt.Sprint(want))
	}

	other := &refusingIngest{err: errors.New("origin is draining")}
	code, desc := publishStatus(t, startServer(t, other), "live", "cam3")
	if code != "NetStream.Publish.Failed" || !strings.Contains(desc, "draining") {
		t.Fatalf("status %q %q", code, desc)
	}
}
