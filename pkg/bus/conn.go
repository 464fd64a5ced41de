package bus

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// ConnOptions are the NATS client settings both binaries expose.
type ConnOptions struct {
	URL  string
	Name string
	// CredsFile, User/Password and TLS CA make production servers reachable.
	CredsFile string
	User      string
	Password  string
	TLSCA     string
}

// Connect dials NATS and keeps reconnecting forever. Publishes made while
// disconnected fail at once instead of being buffered: replaying stale video after
// a reconnect is worse than the gap, which edges repair with a snapshot.
func Connect(o ConnOptions, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.ReconnectBufSize(-1),
		nats.RetryOnFailedConnect(false),
		nats.SetCustomDialer(&rawReadDialer{d: net.Dialer{Timeout: nats.DefaultTimeout}}), // the timeout nats.go dials with by default
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("nats disconnected", "err", err)
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("nats reconnected", "url", c.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subj := ""
			if s != nil {
				subj = s.Subject
			}
			log.Warn("nats async error", "subject", subj, "err", err)
		}),
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if o.User != "" {
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	if o.TLSCA != "" {
		opts = append(opts, nats.RootCAs(o.TLSCA))
	}
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", o.URL, err)
	}
	return nc, nil
}

// Embedded is an in-process NATS server with JetStream, for laptops and tests.
type Embedded struct{ srv *server.Server }

// StartEmbedded starts a NATS server on addr ("127.0.0.1:4222"; port 0 picks one)
// keeping JetStream data in dir.
func StartEmbedded(addr, dir string) (*Embedded, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS address %q: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS port %q: %w", port, err)
	}
	if p == 0 {
		p = server.RANDOM_PORT
	} else if ln, err := net.Listen("tcp", addr); err != nil {
		// The server only logs why it cannot listen; say it here.
		return nil, fmt.Errorf("embedded NATS: %w", err)
	} else {
		ln.Close()
	}
	srv, err := server.NewServer(&server.Options{
		Host: host, Port: p, JetStream: true, StoreDir: dir,
		MaxPayload: 8 << 20, NoSigs: true, NoLog: true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded NATS on %s did not start", addr)
	}
	return &Embedded{srv: srv}, nil
}

// StartInProcess starts a NATS server that listens on no socket, for tests that
// want the real server's semantics without the network: connect with Connect.
// maxPayload <= 0 means 8 MiB, as the chart sets. A non-empty jetStreamDir turns
// JetStream on (for the JetStream KV registry), keeping its data there.
func StartInProcess(maxPayload int32, jetStreamDir string) (*Embedded, error) {
	if maxPayload <= 0 {
		maxPayload = 8 << 20
	}
	srv, err := server.NewServer(&server.Options{DontListen: true, MaxPayload: maxPayload, NoSigs: true, NoLog: true,
		JetStream: jetStreamDir != "", StoreDir: jetStreamDir})
	if err != nil {
		return nil, fmt.Errorf("in-process NATS: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("in-process NATS did not start")
	}
	return &Embedded{srv: srv}, nil
}

// Connect opens a client connection to the embedded server in process.
func (e *Embedded) Connect(name string) (*nats.Conn, error) {
	nc, err := nats.Connect("", nats.Name(name), nats.InProcessServer(e.srv))
	if err != nil {
		return nil, fmt.Errorf("connect in process: %w", err)
	}
	return nc, nil
}

// URL is the client URL of the embedded server.
func (e *Embedded) URL() string { return e.srv.ClientURL() }

// Shutdown stops the server.
func (e *Embedded) Shutdown() { e.srv.Shutdown(); e.srv.WaitForShutdown() }
