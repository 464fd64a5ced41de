// Command flvcdn-origin accepts RTMP publishers and publishes their FLV tags on NATS,
// claiming each stream in the registry. See README.md for the configuration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/cluster"
	"github.com/flvcdn/flvcdn/pkg/conf"
	"github.com/flvcdn/flvcdn/pkg/health"
	"github.com/flvcdn/flvcdn/pkg/k8s"
	"github.com/flvcdn/flvcdn/pkg/origin"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/rtmp"
	"github.com/flvcdn/flvcdn/pkg/stream"
)

// Config is every setting of the origin; each flag is also FLVCDN_<NAME>.
type Config struct {
	conf.Common
	HTTPAddr      string
	RTMPAddr      string
	PublishSecret string
	Sources       conf.Multi
	EmbeddedNATS  string
	TTL           time.Duration
	MaxPublishers int
	DrainGrace    time.Duration
	ReadTimeout   time.Duration
	Handshake     time.Duration
	Janitor       bool
	Kubeconfig    string
	JanitorNS     string
	JanitorLease  string
	JanitorSel    string
	Hook          conf.Hook
	Relay         RelayConfig
}

// parse reads the settings and validates them, naming the setting that is wrong.
func parse(args []string) (*Config, error) {
	c := &Config{}
	fs := flag.NewFlagSet("flvcdn-origin", flag.ContinueOnError)
	c.Register(fs, "origin")
	fs.StringVar(&c.HTTPAddr, "http-addr", ":8081", "address of /healthz, /readyz and /metrics")
	fs.StringVar(&c.RTMPAddr, "rtmp-addr", ":1935", "RTMP listen address")
	fs.StringVar(&c.PublishSecret, "publish-secret", "", "when set, publishers need ?key=hex(HMAC-SHA256(secret, \"app/stream\"))")
	fs.Var(&c.Sources, "source", "loop a recorded file as a live stream: app/stream=file.flv (repeatable)")
	fs.StringVar(&c.EmbeddedNATS, "embedded-nats", "", "start an in-process NATS server (with JetStream) on this address and use it")
	fs.DurationVar(&c.TTL, "ttl", 3*time.Second, "TTL of stream claims and of this origin's liveness record; bounds failover without Kubernetes")
	fs.IntVar(&c.MaxPublishers, "max-publishers", 0, "most concurrent publishers (0 = unlimited)")
	fs.DurationVar(&c.DrainGrace, "drain-grace", 25*time.Second, "on SIGTERM, how long current publishers may keep streaming")
	fs.DurationVar(&c.ReadTimeout, "rtmp-read-timeout", 15*time.Second, "close an RTMP connection silent for this long")
	fs.DurationVar(&c.Handshake, "rtmp-handshake-timeout", 10*time.Second, "time allowed from connect to publish")
	fs.BoolVar(&c.Janitor, "janitor", false, "run the Lease-elected Kubernetes janitor (in-cluster)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig for the janitor outside a cluster (implies --janitor)")
	fs.StringVar(&c.JanitorNS, "janitor-namespace", os.Getenv("POD_NAMESPACE"), "namespace of the origin pods and of the janitor's Lease (default: POD_NAMESPACE)")
	fs.StringVar(&c.JanitorLease, "janitor-lease", k8s.DefaultLeaseName, "name of the janitor's Lease")
	fs.StringVar(&c.JanitorSel, "janitor-selector", k8s.DefaultOriginSelector, "label selector of the origin pods")
	c.Hook.Register(fs, "publish (waits for the answer) and unpublish")
	c.Relay.register(fs)
	if err := conf.Parse(fs, args); err != nil {
		return nil, err
	}
	switch {
	case c.TTL < 300*time.Millisecond:
		return nil, fmt.Errorf("--ttl %s: must be at least 300ms", c.TTL)
	case c.ID == "":
		return nil, errors.New("--id: must not be empty")
	case len(c.ID) > 255:
		return nil, errors.New("--id: at most 255 bytes")
	case c.MaxPublishers < 0:
		return nil, errors.New("--max-publishers: must not be negative")
	case (c.Janitor || c.Kubeconfig != "") && c.JanitorNS == "":
		return nil, errors.New("--janitor-namespace: required with --janitor (set POD_NAMESPACE from the downward API)")
	}
	if _, err := c.Hook.Client(c.ID, slog.Default()); err != nil {
		return nil, err
	}
	if err := c.Relay.check(); err != nil {
		return nil, err
	}
	for _, a := range []struct{ name, v string }{{"--http-addr", c.HTTPAddr}, {"--rtmp-addr", c.RTMPAddr}} {
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			return nil, fmt.Errorf("%s %q: %w", a.name, a.v, err)
		}
	}
	return c, nil
}

func main() { conf.Main("flvcdn-origin", parse, run) }

func run(c *Config, log *slog.Logger) error {
	sigs, stopSigs := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stopSigs()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	if c.EmbeddedNATS != "" {
		dir, err := os.MkdirTemp("", "flvcdn-nats-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		srv, err := bus.StartEmbedded(c.EmbeddedNATS, dir)
		if err != nil {
			return err
		}
		defer srv.Shutdown()
		c.NATS.URL = srv.URL()
		log.Info("embedded NATS server started", "url", c.NATS.URL)
	}
	c.NATS.Name = "flvcdn-origin " + c.ID
	nc, err := bus.Connect(c.NATS, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	store, err := registry.Open(ctx, c.RedisURL, nc, c.Namespace)
	if err != nil {
		return err
	}
	defer store.Close()
	if c.PublishSecret == "" {
		log.Warn("publishing is open to anyone: set --publish-secret to require keys")
	}

	pub, err := bus.NewPublisher(nc, c.ID, log)
	if err != nil {
		return err
	}
	hooks, err := c.Hook.Client(c.ID, log)
	if err != nil {
		return err
	}
	if hooks != nil {
		// Unpublish notifications are sent until every session has closed (below).
		defer hooks.Start()()
		log.Info("publish callbacks on", "url", hooks.URL(), "timeout", c.Hook.Timeout, "fail_open", c.Hook.FailOpen, "signed", c.Hook.Secret != "")
	}
	rec, err := c.Relay.recorder(c.ID, hooks, log, false)
	if err != nil {
		return err
	}
	push, err := c.Relay.pusher(ctx, log)
	if err != nil {
		return err
	}
	o, err := origin.New(ctx, origin.Config{ID: c.ID, Addr: c.RTMPAddr, TTL: c.TTL, PublishSecret: c.PublishSecret, MaxPublishers: c.MaxPublishers, Hook: hooks,
		Taps: taps(rec, push)}, pub, store, log)
	if err != nil {
		return err
	}
	var sources []*origin.FileSource
	for _, v := range c.Sources {
		src, err := origin.ParseSource(v)
		if err != nil {
			return fmt.Errorf("--source: %w", err)
		}
		sources = append(sources, src)
	}

	rtmpLn, err := net.Listen("tcp", c.RTMPAddr)
	if err != nil {
		return fmt.Errorf("--rtmp-addr: %w", err)
	}
	httpLn, err := net.Listen("tcp", c.HTTPAddr)
	if err != nil {
		return fmt.Errorf("--http-addr: %w", err)
	}
	mux := http.NewServeMux()
	health.Register(mux, map[string]health.Check{
		"nats":     conf.NATSCheck(nc.IsConnected),
		"registry": store.Ping,
		"draining": func(context.Context) error {
			if o.Draining() {
				return errors.New("draining")
			}
			return nil
		},
	})
	cl := bus.NewCluster(nc)
	view := cluster.NewView()
	(&cluster.API{View: view, Kick: cl.Kick, Token: c.APIToken, Log: log}).Register(mux)
	stopKicks, err := cl.HandleKicks(func(name string) bool {
		n, err := stream.ParseName(name)
		return err == nil && o.Kick(n)
	})
	if err != nil {
		return err
	}
	defer stopKicks()
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	goRun := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errc <- err
			}
		}()
	}
	goRun(func() error { return o.Run(ctx) })
	goRun(func() error { return cluster.Run(ctx, cl, view, report(cluster.OriginReport(c.ID, o), push), log) })
	srv := &rtmp.Server{Ingest: ingest{o}, Log: log, ReadTimeout: c.ReadTimeout, HandshakeTimeout: c.Handshake}
	goRun(func() error { return srv.Serve(ctx, rtmpLn) })
	goRun(func() error {
		if err := hs.Serve(httpLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	for _, src := range sources {
		goRun(func() error { return src.Run(ctx, o) })
	}
	puller, err := c.Relay.puller(o, store, view, log)
	if err != nil {
		return err
	}
	if puller != nil {
		goRun(func() error { return puller.Run(ctx, cl.HandlePulls) })
	}
	if c.Janitor || c.Kubeconfig != "" {
		goRun(func() error { return runJanitor(ctx, c, store, log) })
	}
	log.Info("origin ready", "id", c.ID, "rtmp", rtmpLn.Addr().String(), "http", httpLn.Addr().String(),
		"registry", c.RegistryKind(), "nats", nc.ConnectedUrlRedacted())
	for _, src := range sources {
		log.Info("looping file as live stream", "stream", src.Name, "file", src.Path)
	}

	select {
	case <-sigs.Done():
		stopSigs() // a second signal ends the process at once
		log.Info("draining: refusing new publishes", "grace", c.DrainGrace)
		o.Drain(ctx)
		waitPublishers(o, c.DrainGrace, sources)
	case err = <-errc:
	}
	cancel()
	shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	_ = hs.Shutdown(shutdown)
	wg.Wait()
	o.Wait()
	if rec != nil {
		rec.Wait() // segments closed and their durations written
	}
	if push != nil {
		push.Wait()
	}
	return err
}

// waitPublishers returns when only file sources remain or the grace period ends.
func waitPublishers(o *origin.Origin, grace time.Duration, sources []*origin.FileSource) {
	deadline := time.Now().Add(grace)
	for o.Streams() > len(sources) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond) // a poll with a deadline, not a guess
	}
}

// ingest adapts *origin.Origin to rtmp.Ingest.
type ingest struct{ o *origin.Origin }

func (i ingest) Publish(ctx context.Context, req rtmp.PublishRequest) (rtmp.Publication, error) {
	s, err := i.o.Accept(ctx, origin.PublishRequest{Name: req.Name, Key: req.Key, ClientIP: req.ClientIP, Query: req.Query})
	if errors.Is(err, origin.ErrUnauthorized) || errors.Is(err, origin.ErrDenied) {
		return nil, rtmp.Unauthorized(err)
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}
