// Command flvcdn-edge serves live streams over HTTP-FLV to players, pulling each from
// NATS on its first viewer. See README.md for the configuration.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/flvcdn/flvcdn/pkg/bus"
	"github.com/flvcdn/flvcdn/pkg/cluster"
	"github.com/flvcdn/flvcdn/pkg/conf"
	"github.com/flvcdn/flvcdn/pkg/edge"
	"github.com/flvcdn/flvcdn/pkg/h2"
	"github.com/flvcdn/flvcdn/pkg/health"
	"github.com/flvcdn/flvcdn/pkg/httpflv"
	"github.com/flvcdn/flvcdn/pkg/registry"
	"github.com/flvcdn/flvcdn/pkg/relay"
	"github.com/flvcdn/flvcdn/pkg/web"
)

// Config is every setting of the edge; each flag is also FLVCDN_<NAME>.
type Config struct {
	conf.Common
	HTTPAddr     string
	HTTPSAddr    string
	TLSCert      string
	TLSKey       string
	H2C          bool
	CORSOrigin   string
	PlaySecret   string
	SendBuffer   int
	DrainGrace   time.Duration
	WriteTimeout time.Duration
	Hub          edge.Config
	Hook         conf.Hook
}

// parse reads the settings and validates them, naming the setting that is wrong.
func parse(args []string) (*Config, error) {
	c := &Config{}
	fs := flag.NewFlagSet("flvcdn-edge", flag.ContinueOnError)
	c.Register(fs, "edge")
	fs.StringVar(&c.HTTPAddr, "http-addr", ":8080", "playback, page, /healthz, /readyz and /metrics address")
	fs.StringVar(&c.HTTPSAddr, "https-addr", ":8443", "HTTPS address (HTTP/1.1 and HTTP/2 by ALPN, wss://), served when --tls-cert and --tls-key are set")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "PEM certificate (chain) for --https-addr; reloaded when the file changes")
	fs.StringVar(&c.TLSKey, "tls-key", "", "PEM private key for --tls-cert; reloaded with it")
	fs.BoolVar(&c.H2C, "h2c", false, "also accept unencrypted HTTP/2 (prior knowledge) on --http-addr, for load balancers that speak h2c")
	fs.StringVar(&c.CORSOrigin, "cors-origin", "*", "Access-Control-Allow-Origin for playback; empty disables CORS")
	fs.DurationVar(&c.DrainGrace, "drain-grace", 10*time.Second, "on SIGTERM, how long viewers keep playing before they are closed")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", 10*time.Second, "drop a viewer whose socket accepts nothing for this long")
	fs.IntVar(&c.SendBuffer, "send-buffer", 128<<10, "SO_SNDBUF of viewer sockets in bytes, so the lag policy sees a slow viewer's backlog (0 = kernel autotuning)")
	fs.DurationVar(&c.Hub.Linger, "linger", 10*time.Second, "keep pulling a stream this long after its last viewer left")
	fs.DurationVar(&c.Hub.Grace, "grace", 10*time.Second, "keep viewers connected this long after the publisher left")
	fs.DurationVar(&c.Hub.MergeWindow, "merge-window", 60*time.Millisecond, "ceiling of the merge window, which grows with viewers (32µs each, from 1ms): each viewer writes at most once per window")
	fs.BoolVar(&c.Hub.FixedWindow, "fixed-merge-window", false, "use --merge-window at every load instead of the adaptive window (experiments)")
	fs.IntVar(&c.Hub.MaxLagBytes, "max-lag-bytes", 4<<20, "a viewer this far behind skips to the next keyframe")
	fs.IntVar(&c.Hub.MaxSkips, "max-skips", 3, "drop a viewer after this many skips within 30s")
	fs.IntVar(&c.Hub.MaxViewers, "max-viewers", 0, "most viewers on this edge; more get 503 (0 = no limit)")
	fs.IntVar(&c.Hub.MaxViewersPerStream, "max-viewers-per-stream", 0, "most viewers of one stream on this edge; more get 503 (0 = no limit)")
	fs.StringVar(&c.PlaySecret, "play-secret", "", "when set, playback URLs must be signed: ?expires=UNIX&sig=hex(HMAC-SHA256(secret, path+\"?expires=\"+UNIX))")
	c.Hook.Register(fs, "play (waits for the answer) and stop")
	if err := conf.Parse(fs, args); err != nil {
		return nil, err
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		return nil, fmt.Errorf("--http-addr %q: %w", c.HTTPAddr, err)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return nil, errors.New("--tls-cert and --tls-key: set both or neither")
	}
	if c.TLSCert != "" {
		if _, _, err := net.SplitHostPort(c.HTTPSAddr); err != nil {
			return nil, fmt.Errorf("--https-addr %q: %w", c.HTTPSAddr, err)
		}
		if _, err := httpflv.NewCertReloader(c.TLSCert, c.TLSKey, slog.Default()); err != nil {
			return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
	}
	if c.Hub.MergeWindow < time.Millisecond || c.Hub.MergeWindow > time.Second {
		return nil, fmt.Errorf("--merge-window %s: must be between 1ms and 1s", c.Hub.MergeWindow)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--linger", c.Hub.Linger}, {"--grace", c.Hub.Grace}, {"--write-timeout", c.WriteTimeout}} {
		if d.v <= 0 {
			return nil, fmt.Errorf("%s %s: must be positive", d.name, d.v)
		}
	}
	if c.SendBuffer < 0 {
		return nil, fmt.Errorf("--send-buffer %d: must not be negative", c.SendBuffer)
	}
	if c.Hub.MaxViewers < 0 || c.Hub.MaxViewersPerStream < 0 {
		return nil, errors.New("--max-viewers and --max-viewers-per-stream must not be negative")
	}
	if _, err := c.Hook.Client(c.ID, slog.Default()); err != nil {
		return nil, err
	}
	if c.Hub.MaxLagBytes < 64<<10 {
		return nil, fmt.Errorf("--max-lag-bytes %d: must be at least 65536", c.Hub.MaxLagBytes)
	}
	return c, nil
}

func main() { conf.Main("flvcdn-edge", parse, run) }

func run(c *Config, log *slog.Logger) error {
	sigs, stopSigs := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stopSigs()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	c.NATS.Name = "flvcdn-edge " + c.ID
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

	// Lookups of streams nobody owns ask the origins to pull them (--pull, on demand).
	onDemand := &relay.OnDemand{EdgeRegistry: store, Request: bus.NewCluster(nc).RequestPull}
	hub, err := edge.NewHub(ctx, c.Hub, bus.NewSubscriber(nc), onDemand, log)
	if err != nil {
		return err
	}
	hooks, err := c.Hook.Client(c.ID, log)
	if err != nil {
		return err
	}
	if hooks != nil {
		// Stop notifications are sent until every viewer writer has finished (below).
		defer hooks.Start()()
		log.Info("play callbacks on", "url", hooks.URL(), "timeout", c.Hook.Timeout, "fail_open", c.Hook.FailOpen, "signed", c.Hook.Secret != "")
	}
	flv := &httpflv.Server{Hub: hub, Log: log, CORSOrigin: c.CORSOrigin, WriteTimeout: c.WriteTimeout, PlaySecret: c.PlaySecret, SendBuffer: c.SendBuffer, BaseContext: ctx, Hook: hooks}
	page := web.Handler()
	var draining atomic.Bool
	mux := http.NewServeMux()
	health.Register(mux, map[string]health.Check{
		"nats":     conf.NATSCheck(nc.IsConnected),
		"registry": store.Ping,
		"draining": func(context.Context) error {
			if draining.Load() {
				return errors.New("draining")
			}
			return nil
		},
	})
	cl := bus.NewCluster(nc)
	view := cluster.NewView()
	(&cluster.API{View: view, Kick: cl.Kick, Token: c.APIToken, Log: log}).Register(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".flv") {
			flv.ServeHTTP(w, r)
			return
		}
		page.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", c.HTTPAddr)
	if err != nil {
		return fmt.Errorf("--http-addr: %w", err)
	}
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		MaxHeaderBytes:    16 << 10,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		Protocols:         new(http.Protocols),
	}
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(c.H2C)
	// HTTP/2 (h2c here, h2 on the TLS port) is served by package h2, not net/http's
	// own server: its viewers get each window in one socket write (see pkg/h2).
	h2s := &h2.Server{WriteTimeout: c.WriteTimeout, Log: log}
	h2.Configure(hs, h2s)
	servers := []*http.Server{hs}
	var tlsLn net.Listener
	if c.TLSCert != "" {
		certs, err := httpflv.NewCertReloader(c.TLSCert, c.TLSKey, log)
		if err != nil {
			return fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		if tlsLn, err = net.Listen("tcp", c.HTTPSAddr); err != nil {
			ln.Close()
			return fmt.Errorf("--https-addr: %w", err)
		}
		servers = append(servers, &http.Server{
			Handler:           mux,
			TLSConfig:         certs.TLSConfig(),
			ReadHeaderTimeout: hs.ReadHeaderTimeout,
			MaxHeaderBytes:    hs.MaxHeaderBytes,
			IdleTimeout:       hs.IdleTimeout,
			ErrorLog:          hs.ErrorLog,
		})
		h2.Configure(servers[1], h2s)
	}
	reports := make(chan error, 1)
	go func() {
		reports <- cluster.Run(ctx, cl, view, cluster.EdgeReport(c.ID, hub, flv.BytesOut, draining.Load), log)
	}()
	errc := make(chan error, len(servers))
	go func() {
		if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()
	https := ""
	if tlsLn != nil {
		https = tlsLn.Addr().String()
		go func() {
			if err := servers[1].ServeTLS(tlsLn, "", ""); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("https: %w", err)
			}
		}()
	}
	log.Info("edge ready", "id", c.ID, "http", ln.Addr().String(), "https", https, "h2c", c.H2C, "registry", c.RegistryKind(), "nats", nc.ConnectedUrlRedacted())

	select {
	case <-sigs.Done():
		stopSigs() // a second signal ends the process at once
		// Fail readiness so the Service stops routing here, stop accepting, then give
		// viewers the grace period before closing them so players reconnect elsewhere.
		draining.Store(true)
		log.Info("draining", "grace", c.DrainGrace, "viewers", hub.Viewers())
		shutdown, done := context.WithTimeout(context.Background(), c.DrainGrace)
		// Shutdown returns at once for hijacked viewers (HTTP/1.1, WebSocket), which
		// are not tracked; HTTP/2 viewers are handlers and hold it until the grace ends.
		var sd sync.WaitGroup
		for _, srv := range servers {
			sd.Go(func() { _ = srv.Shutdown(shutdown) })
		}
		sd.Wait()
		tick := time.NewTicker(100 * time.Millisecond)
		for hub.Viewers() > 0 && shutdown.Err() == nil {
			select {
			case <-shutdown.Done():
			case <-tick.C:
			}
		}
		tick.Stop()
		done()
	case err = <-errc:
	}
	cancel()
	hub.Wait()
	flv.Wait() // viewers got their last bytes (and a clean end of stream)
	stopH2, stopped := context.WithTimeout(context.Background(), 5*time.Second)
	h2s.Stop(stopH2) // HTTP/2 viewers' handlers end with ctx and finish their streams
	stopped()
	if rerr := <-reports; err == nil {
		err = rerr
	}
	return err
}
