// Command flvprobe checks a live HTTP-FLV or WebSocket-FLV stream the way players experience it: it
// opens N connections for a duration, runs every byte through pkg/probe, and reports
// per connection the time to headers and to the first keyframe, tags, bitrate, fps,
// keyframe interval, the longest stall, the media-time rate against the wall clock
// and the audio-video drift.
//
//	flvprobe -url URL [-n N] [-dur D] [-max-stall D] [-json]
//
// Exit status: 0 when every connection conforms, 1 when one does not (the first
// violation of each is printed), 2 on a usage error.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flvcdn/flvcdn/pkg/probe"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// config is the command line.
type config struct {
	url      string
	n        int
	dur      time.Duration
	maxStall time.Duration
	json     bool
	strict   bool
}

func parse(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("flvprobe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.url, "url", "", "live FLV URL to check (http://, https://, ws:// or wss://)")
	fs.IntVar(&c.n, "n", 1, "concurrent connections")
	fs.DurationVar(&c.dur, "dur", 10*time.Second, "how long each connection reads (rate is judged over 5 s windows after a 1 s warmup)")
	fs.DurationVar(&c.maxStall, "max-stall", probe.DefaultMaxStall, "longest acceptable wait for the next tag")
	fs.BoolVar(&c.json, "json", false, "print the report as JSON")
	fs.BoolVar(&c.strict, "strict", false, "also require flvcdn's join order: onMetaData first, no audio before the first keyframe")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: flvprobe -url URL [-n N] [-dur D] [-max-stall D] [-json] [-strict]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	case c.url == "":
		return c, errors.New("-url is required")
	case c.n < 1:
		return c, fmt.Errorf("-n %d: want at least 1", c.n)
	case c.dur <= 0:
		return c, fmt.Errorf("-dur %v: want a positive duration", c.dur)
	case c.maxStall <= 0:
		return c, fmt.Errorf("-max-stall %v: want a positive duration", c.maxStall)
	}
	u, err := url.Parse(c.url)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return c, fmt.Errorf("-url %q: want an http://, https://, ws:// or wss:// URL", c.url)
	}
	return c, nil
}

// connReport is one connection's result in the -json report.
type connReport struct {
	Conn int  `json:"conn"`
	OK   bool `json:"ok"`
	// Error is the first violation, or why the connection failed or ended early.
	Error string `json:"error,omitempty"`
	probe.Report
}

// report is the whole -json report.
type report struct {
	URL         string       `json:"url"`
	Connections int          `json:"connections"`
	DurationMS  float64      `json:"duration_ms"`
	MaxStallMS  float64      `json:"max_stall_ms"`
	OK          bool         `json:"ok"`
	Results     []connReport `json:"results"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "flvprobe:", err)
		return 2
	}
	rep := report{URL: c.url, Connections: c.n, DurationMS: ms(c.dur), MaxStallMS: ms(c.maxStall), OK: true,
		Results: make([]connReport, c.n)}
	var wg sync.WaitGroup
	for i := range c.n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep.Results[i] = check(ctx, c, i)
		}()
	}
	wg.Wait()
	for _, r := range rep.Results {
		rep.OK = rep.OK && r.OK
	}
	if c.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintln(stderr, "flvprobe:", err)
			return 1
		}
	} else {
		printText(stdout, rep)
	}
	if !rep.OK {
		return 1
	}
	return 0
}

// check reads one connection for c.dur. A stream that ends before that is a failure:
// a live stream does not end while it is being probed.
func check(ctx context.Context, c config, i int) connReport {
	o := probe.Options{MaxStall: c.maxStall, Strict: c.strict}
	ck := probe.New(o, time.Now())
	ctx, cancel := context.WithTimeout(ctx, c.dur)
	defer cancel()
	body, err := probe.Dial(ctx, c.url, ck, nil)
	if err == nil {
		err = probe.Watch(ctx, body, ck)
	}
	out := connReport{Conn: i, Report: ck.Report()}
	if err != nil {
		out.Error = err.Error()
		return out
	}
	out.OK = true
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func printText(w io.Writer, rep report) {
	for _, r := range rep.Results {
		verdict := "ok"
		if !r.OK {
			verdict = "FAIL: " + r.Error
		}
		fmt.Fprintf(w, "conn %d: %s\n", r.Conn, verdict)
		fmt.Fprintf(w, "  headers %v, first keyframe %v; %d tags (%d video, %d audio, %d keyframes), %d bytes, %.0f kbit/s\n",
			r.TimeToHeaders, r.TimeToFirstKeyframe, r.Tags, r.Video, r.Audio, r.Keyframes, r.Bytes, r.BitrateKbps)
		fmt.Fprintf(w, "  codecs %s/%s, %.2f fps, keyframe every %v, longest stall %v\n",
			orNone(r.VideoCodec), orNone(r.AudioCodec), r.FPS, r.KeyframeInterval, r.LongestStall)
		rate := "not measured (a window needs 1 s warmup + 5 s)"
		if r.RateWindows > 0 {
			rate = fmt.Sprintf("video %.2f audio %.2f (windows %.2f..%.2f)", r.VideoRate, r.AudioRate, r.RateMin, r.RateMax)
		}
		fmt.Fprintf(w, "  media time / wall clock: %s; A/V drift max %v\n", rate, r.AVDriftMax)
	}
	if rep.OK {
		fmt.Fprintf(w, "%s: %d connection(s) conform\n", rep.URL, rep.Connections)
	} else {
		fmt.Fprintf(w, "%s: NOT conforming\n", rep.URL)
	}
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
