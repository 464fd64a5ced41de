// Command publish sends media files to an RTMP server in real time, as Enhanced
// RTMP where the codec needs it (the test publisher of flvcdn; see package pub):
//
//	go run ./test/publish -i FILE [-i FILE ...] -url rtmp://HOST/app/stream [-loop]
//
// Inputs: a legacy or Enhanced FLV file (alone), or elementary streams: AV1 or
// VP9 in IVF, HEVC Annex B (.hevc/.h265, -fps), Opus in Ogg, AAC in ADTS. Two or
// more video inputs are sent as one Enhanced RTMP v2 multitrack stream (the first
// is track 0, the default).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/flvcdn/flvcdn/test/publish/pub"
)

type inputs []string

func (i *inputs) String() string     { return strings.Join(*i, ",") }
func (i *inputs) Set(v string) error { *i = append(*i, v); return nil }

func main() {
	var in inputs
	flag.Var(&in, "i", "input file (repeat for several tracks)")
	u := flag.String("url", "", "rtmp://HOST[:PORT]/app/stream[?key=...]")
	loop := flag.Bool("loop", false, "loop the input forever")
	fps := flag.Float64("fps", 25, "frame rate of Annex B HEVC input")
	separate := flag.Bool("separate", false, "multitrack: each track's frames in messages of their own (as OBS sends them)")
	flag.Parse()
	if len(in) == 0 || *u == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: publish -i FILE [-i FILE ...] -url rtmp://HOST/app/stream [-loop] [-fps N]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, in, *u, *loop, pub.Options{FPS: *fps, Separate: *separate}); err != nil {
		slog.Error("publish", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, files []string, url string, loop bool, o pub.Options) error {
	open := func() (pub.Input, error) { return pub.OpenAll(files, o) }
	if _, err := open(); err != nil { // fail before connecting
		return err
	}
	p, err := pub.Dial(url, 10*time.Second)
	if err != nil {
		return err
	}
	defer p.Close()
	slog.Info("publishing", "url", url, "inputs", files, "loop", loop)
	err = p.Run(ctx, open, loop)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
