// Package hook owns the HTTP callbacks to the operator's platform: it posts one JSON
// event per publish, unpublish, play and stop to a configured URL, signs it, bounds
// the wait, and turns the answer into allow or deny. Waiting calls (publish, play)
// return a Decision; ended sessions (unpublish, stop) are queued and delivered by the
// Client's own workers, retried briefly.
//
// It never follows redirects, never reads more than MaxAnswer bytes of an answer,
// never retries a waiting call, never blocks the caller of Notify, and never lets a
// panic in a callback escape to the session that asked.
package hook

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Actions, the values of Event.Action (contract: scripts rely on them).
const (
	Publish   = "publish"
	Unpublish = "unpublish"
	Play      = "play"
	Stop      = "stop"
	// Pull asks (and waits) like Publish, for a stream an origin pulls from an upstream.
	Pull = "pull"
	// Record announces a finished recording segment (Path, DurationS, Bytes); it does not wait.
	Record = "record"
)

// SignatureHeader carries "sha256=" + hex HMAC-SHA256(secret, body) when a secret is set.
const SignatureHeader = "X-Flvcdn-Signature"

// MaxAnswer is how much of an answer's body is read (the reason is its first line).
const MaxAnswer = 4 << 10

// maxReason bounds the reason passed on to a publisher or viewer.
const maxReason = 200

// Event is the JSON body of a callback. DurationS and Bytes are sent on unpublish
// and stop only (see Ended).
type Event struct {
	Action    string   `json:"action"`
	App       string   `json:"app"`
	Stream    string   `json:"stream"`
	Node      string   `json:"node"`
	ClientIP  string   `json:"client_ip"`
	Query     string   `json:"query"`
	Session   string   `json:"session"`
	DurationS *float64 `json:"duration_s,omitempty"`
	Bytes     *uint64  `json:"bytes,omitempty"`
	// Path is the file of a finished recording segment (action "record").
	Path string `json:"path,omitempty"`
}

// Ended returns the closing event of a session that began with e: action
// (Unpublish or Stop), how long it lasted, and how many bytes it carried.
func (e Event) Ended(action string, d time.Duration, bytes uint64) Event {
	e.Action = action
	s := d.Seconds()
	e.DurationS, e.Bytes = &s, &bytes
	return e
}

// Decision is the outcome of a waiting call.
type Decision struct {
	Allow bool
	// Status is the HTTP status of the answer (0 when there was none).
	Status int
	// Reason is the first line of a denying answer's body (printable, at most 200
	// bytes), or a short text of ours when the body had none or there was no answer.
	Reason string
}

// Failure kinds, the label values of flvcdn_hook_failures_total.
const (
	KindTimeout     = "timeout"     // no answer within the timeout
	KindUnreachable = "unreachable" // no connection, or the request failed
	KindDenied      = "denied"      // an answer other than 2xx
	KindDropped     = "dropped"     // a notification lost: queue full, or retries exhausted
)

var (
	roundTrip = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "flvcdn_hook_duration_seconds",
		Help:    "Callback round-trip time (request sent to answer read), by action; failed attempts included.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"action"})
	failures = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "flvcdn_hook_failures_total",
		Help: "Callbacks that did not allow, by action and kind (timeout, unreachable, denied, dropped).",
	}, []string{"action", "kind"})
)

// Config of a Client. Zero values take the documented defaults.
type Config struct {
	// URL receives every event as a POST.
	URL string
	// Node is put in every event (the --id).
	Node string
	// Timeout bounds one call, from sending the request to reading the answer. Default 2s.
	Timeout time.Duration
	// FailOpen allows when the hook times out or cannot be reached (an answer other
	// than 2xx still denies).
	FailOpen bool
	// Secret, when set, signs each body: SignatureHeader.
	Secret string
	// Queue bounds the notifications waiting for delivery. Default 4096.
	Queue int
	// Workers deliver notifications concurrently. Default 4.
	Workers int
	// Retries after a failed notification (timeout, unreachable, 5xx). Default 2.
	Retries int
	// RetryDelay before the first retry, doubled for each next one. Default 250ms.
	RetryDelay time.Duration
}

// Client calls one hook URL. Its methods are safe for concurrent use; Run delivers
// notifications and must be running for Notify to have an effect.
type Client struct {
	cfg      Config
	redacted string
	http     *http.Client
	log      *slog.Logger
	queue    chan Event

	dropMu   sync.Mutex
	dropLogs time.Time // last "notification dropped" log, to log at a limited rate
}

// New checks cfg and returns a Client. The URL must be absolute http or https.
func New(cfg Config, log *slog.Logger) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("--hook-url %q: %w", cfg.URL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--hook-url %q: want an absolute http:// or https:// URL", cfg.URL)
	}
	if cfg.Timeout < 0 || cfg.Timeout > time.Minute {
		return nil, fmt.Errorf("--hook-timeout %s: must be between 0 (default 2s) and 1m", cfg.Timeout)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 4096
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.Retries < 0 {
		cfg.Retries = 0
	} else if cfg.Retries == 0 {
		cfg.Retries = 2
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = 250 * time.Millisecond
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64 // a burst of plays reuses connections instead of dialling each
	return &Client{
		cfg:      cfg,
		redacted: u.Redacted(),
		log:      log.With("hook", u.Redacted()),
		http: &http.Client{
			Transport: tr,
			// A redirect is an answer like any other non-2xx: it denies. Following it
			// would send a signed event to a URL nobody configured.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		queue: make(chan Event, cfg.Queue),
	}, nil
}

// Sign returns the SignatureHeader value of body under secret:
// "sha256=" + lowercase hex HMAC-SHA256(secret, body). The same hex comes from
//
//	openssl dgst -sha256 -hmac "$SECRET" < body.json
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Call posts ev and waits, at most the timeout, for the answer. A 2xx allows and
// anything else denies. When the hook cannot answer (timeout, unreachable) the error
// says why and the Decision allows only with FailOpen. A caller whose ctx ends gets
// a denying Decision and ctx's error.
func (c *Client) Call(ctx context.Context, ev Event) (d Decision, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("hook: panic: %v", p)
			d = Decision{Allow: c.cfg.FailOpen, Reason: "callback failed"}
			c.log.Error("hook call panicked", "action", ev.Action, "stream", ev.App+"/"+ev.Stream, "panic", p)
		}
	}()
	ev.Node = c.node(ev.Node)
	start := time.Now()
	d, kind, err := c.post(ctx, ev)
	log := c.log.With("action", ev.Action, "stream", ev.App+"/"+ev.Stream, "session", ev.Session,
		"client_ip", ev.ClientIP, "took", time.Since(start))
	switch {
	case ctx.Err() != nil:
		return Decision{Reason: "request cancelled"}, ctx.Err()
	case err != nil:
		failures.WithLabelValues(ev.Action, kind).Inc()
		d.Allow = c.cfg.FailOpen
		log.Warn("hook failed", "kind", kind, "fail_open", c.cfg.FailOpen, "err", err)
		return d, err
	case !d.Allow:
		failures.WithLabelValues(ev.Action, KindDenied).Inc()
		log.Info("hook denied", "status", d.Status, "reason", d.Reason)
	default:
		log.Debug("hook allowed", "status", d.Status)
	}
	return d, nil
}

// Notify queues ev for delivery by Run's workers and returns at once. When the
// queue is full the event is dropped: counted (kind "dropped") and logged at most
// once a second, because an ended session must never wait for the platform.
func (c *Client) Notify(ev Event) {
	ev.Node = c.node(ev.Node)
	select {
	case c.queue <- ev:
	default:
		c.dropped(ev, "queue full")
	}
}

// Start runs the notification workers (Run) until the returned stop is called;
// stop waits for them, so what was queued has been sent (or given up) when it returns.
func (c *Client) Start() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	return func() { cancel(); <-done }
}

// Run delivers queued notifications with Workers workers until ctx ends. Then it
// spends at most one Timeout on what is still queued (one attempt each) and returns.
func (c *Client) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for range c.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case ev := <-c.queue:
					c.deliver(ctx, ev, c.cfg.Retries)
				}
			}
		}()
	}
	wg.Wait()
	flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.Timeout)
	defer cancel()
	for flush.Err() == nil {
		select {
		case ev := <-c.queue:
			c.deliver(flush, ev, 0)
		default:
			return
		}
	}
	for n := len(c.queue); n > 0; n-- {
		c.dropped(<-c.queue, "shutting down")
	}
}

// deliver posts one notification, retrying after timeouts, connection failures and
// 5xx answers. A panic is contained here: the worker goes on with the next event.
func (c *Client) deliver(ctx context.Context, ev Event, retries int) {
	defer func() {
		if p := recover(); p != nil {
			failures.WithLabelValues(ev.Action, KindDropped).Inc()
			c.log.Error("hook notification panicked", "action", ev.Action, "stream", ev.App+"/"+ev.Stream, "panic", p)
		}
	}()
	delay := c.cfg.RetryDelay
	for attempt := 0; ; attempt++ {
		// An attempt under way finishes (bounded by the timeout) even when ctx ends.
		d, kind, err := c.post(context.WithoutCancel(ctx), ev)
		if err == nil && (d.Allow || d.Status < 500) {
			if !d.Allow {
				failures.WithLabelValues(ev.Action, KindDenied).Inc()
				c.log.Info("hook refused a notification", "action", ev.Action, "stream", ev.App+"/"+ev.Stream, "status", d.Status, "reason", d.Reason)
			}
			return
		}
		if err == nil {
			kind = KindDenied
			err = fmt.Errorf("status %d: %s", d.Status, d.Reason)
		}
		failures.WithLabelValues(ev.Action, kind).Inc()
		if attempt >= retries || ctx.Err() != nil {
			c.dropped(ev, err.Error())
			return
		}
		select {
		case <-ctx.Done():
			c.dropped(ev, "shutting down")
			return
		case <-time.After(delay):
		}
		delay *= 2
	}
}

func (c *Client) dropped(ev Event, why string) {
	failures.WithLabelValues(ev.Action, KindDropped).Inc()
	c.dropMu.Lock()
	quiet := time.Since(c.dropLogs) < time.Second
	if !quiet {
		c.dropLogs = time.Now()
	}
	c.dropMu.Unlock()
	if !quiet {
		c.log.Warn("hook notification dropped", "action", ev.Action, "stream", ev.App+"/"+ev.Stream, "session", ev.Session, "why", why)
	}
}

// URL is the hook's URL with any password redacted, for logs.
func (c *Client) URL() string { return c.redacted }

func (c *Client) node(n string) string {
	if n == "" {
		return c.cfg.Node
	}
	return n
}

// post sends ev once, bounded by the timeout. Without an error, the Decision is the
// answer's; with one, kind says what went wrong.
func (c *Client) post(ctx context.Context, ev Event) (Decision, string, error) {
	body, err := json.Marshal(ev)
	if err != nil {
		return Decision{Reason: "callback failed"}, KindUnreachable, fmt.Errorf("hook: encode: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return Decision{Reason: "callback failed"}, KindUnreachable, fmt.Errorf("hook: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "flvcdn-hook/1")
	if c.cfg.Secret != "" {
		req.Header.Set(SignatureHeader, Sign(c.cfg.Secret, body))
	}
	start := time.Now()
	resp, err := c.http.Do(req)
	var answer []byte
	if err == nil {
		answer, err = io.ReadAll(io.LimitReader(resp.Body, MaxAnswer))
		resp.Body.Close() // the rest of a huge body is not read: the connection is dropped
		if err != nil && resp.StatusCode/100 != 2 {
			err = nil // a denial whose body broke off still denies, with what was read
		}
	}
	roundTrip.WithLabelValues(ev.Action).Observe(time.Since(start).Seconds())
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return Decision{Reason: "callback timed out"}, KindTimeout, fmt.Errorf("hook: no answer in %s: %w", c.cfg.Timeout, err)
		}
		return Decision{Reason: "callback unreachable"}, KindUnreachable, fmt.Errorf("hook: %w", err)
	}
	d := Decision{Status: resp.StatusCode, Allow: resp.StatusCode/100 == 2}
	if !d.Allow {
		d.Reason = firstLine(answer)
		if d.Reason == "" {
			d.Reason = fmt.Sprintf("denied by callback (HTTP %d)", resp.StatusCode)
		}
	}
	return d, "", nil
}

// firstLine is the first line of b, made printable (invalid UTF-8 and control
// characters become '?') and cut to maxReason bytes.
func firstLine(b []byte) string {
	line, _ := bufio.NewReader(bytes.NewReader(b)).ReadString('\n')
	line = strings.TrimSpace(line)
	var out strings.Builder
	for i := 0; i < len(line); {
		r, n := utf8.DecodeRuneInString(line[i:])
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			r = '?'
		}
		if out.Len()+utf8.RuneLen(r) > maxReason {
			break
		}
		out.WriteRune(r)
		i += n
	}
	return out.String()
}
