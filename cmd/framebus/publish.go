package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
)

// publishMain is `framebus publish`: a synthetic driver that publishes
// sequence-numbered frames through the client library and waits until they
// are durable.
func publishMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("framebus publish", flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "bus name (default $FRAMEBUS_NAME or \"default\")")
	runDir := fs.String("run-dir", "", "sidecar socket directory (default: as the sidecar's)")
	count := fs.Uint64("count", 100000, "frames to publish (0: until interrupted)")
	producer := fs.String("producer", "", "producer name (default publish-<pid>)")
	points := fs.Int("points", 1, "points per frame")
	rate := fs.Float64("rate", 0, "frames per second (0: as fast as possible)")
	policy := fs.String("policy", "block", "backpressure policy: block, drop-newest or error")
	device := fs.String("device", "sim", "device name in every frame")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: framebus publish [flags]

Attaches to the sidecar as a driver and publishes synthetic DataFrames whose
seq counts 0, 1, 2 ... (one template frame, values rewritten in place), then
waits until the WAL has committed all of them and prints the rate and the
publish-to-durable latency of the last frame.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	pol := map[string]client.Policy{"block": client.PolicyBlock, "drop-newest": client.PolicyDropNewest, "error": client.PolicyError}
	p, ok := pol[*policy]
	if !ok || *points < 1 || *points > 1000 {
		fmt.Fprintln(stderr, "framebus publish: --policy must be block, drop-newest or error, and --points 1..1000")
		return 2
	}
	if *producer == "" {
		*producer = fmt.Sprintf("publish-%d", os.Getpid())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := publish(ctx, stdout, client.Config{Name: *name, RunDir: *runDir, Producer: *producer, Policy: p}, *device, *count, *points, *rate); err != nil {
		fmt.Fprintln(stderr, "framebus publish:", err)
		return 1
	}
	return 0
}

func publish(ctx context.Context, out io.Writer, cfg client.Config, device string, count uint64, points int, rate float64) error {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	pub, err := client.Dial(dctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer pub.Close()
	tags := make([]schema.TemplateTag, points)
	for i := range tags {
		tags[i] = schema.TemplateTag{Tag: fmt.Sprintf("%s/tag%d", device, i), Type: schema.TypeF64}
	}
	tpl, err := schema.NewDataTemplate(cfg.Producer, device, tags)
	if err != nil {
		return err
	}
	lat := startLatencySampler(pub)
	start := time.Now()
	var interval time.Duration
	if rate > 0 {
		interval = time.Duration(float64(time.Second) / rate)
	}
	next := start
	var seq uint64
	for ; count == 0 || seq < count; seq++ {
		if ctx.Err() != nil {
			break
		}
		if interval > 0 {
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(interval)
		}
		tpl.SetSeq(seq)
		now := time.Now().UnixNano()
		for i := 0; i < points; i++ {
			tpl.SetF64(i, math.Sin(float64(seq+uint64(i))/100))
			tpl.SetTs(i, now)
		}
		if err := pub.Publish(ctx, tpl.Bytes()); err != nil {
			if ctx.Err() != nil {
				break
			}
			return fmt.Errorf("publish frame %d: %w", seq, err)
		}
	}
	published := time.Now()
	wctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pub.WaitDurable(wctx); err != nil {
		return fmt.Errorf("waiting for durability of %d frames: %w", seq, err)
	}
	durable := time.Now()
	p50, p99, n := lat.stop()
	el := published.Sub(start).Seconds()
	st := pub.Stats()
	fmt.Fprintf(out, "published %d frames (%d dropped, %d rejected) in %.2fs: %.0f frames/s; durable %.1f ms after the last publish; durable latency p50 %.1f ms p99 %.1f ms (%d samples)\n",
		st.Published, st.Dropped, st.Rejected, el, float64(st.Published)/el, float64(durable.Sub(published).Microseconds())/1000,
		ms(p50), ms(p99), n)
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// latencySampler measures publish-to-durable latency: every millisecond it
// marks the stream, and it notes when each mark becomes durable (checked
// every 100 µs, so a sample is at most that late).
type latencySampler struct {
	pub  *client.Publisher
	done chan struct{}
	out  chan []time.Duration
}

func startLatencySampler(pub *client.Publisher) *latencySampler {
	l := &latencySampler{pub: pub, done: make(chan struct{}), out: make(chan []time.Duration, 1)}
	go l.run()
	return l
}

func (l *latencySampler) run() {
	type sample struct {
		m client.Mark
		t time.Time
	}
	var pending []sample
	var lats []time.Duration
	var last client.Mark
	lastMark := time.Now()
	tick := time.NewTicker(100 * time.Microsecond)
	defer tick.Stop()
	for {
		select {
		case <-l.done:
			l.out <- lats
			return
		case now := <-tick.C:
			if now.Sub(lastMark) >= time.Millisecond {
				if m := l.pub.Mark(); m != last {
					pending = append(pending, sample{m, now})
					last = m
				}
				lastMark = now
			}
			i := 0
			for ; i < len(pending) && l.pub.Durable(pending[i].m); i++ {
				lats = append(lats, now.Sub(pending[i].t))
			}
			pending = pending[i:]
		}
	}
}

// stop ends sampling and returns the median, the 99th percentile and the
// number of samples.
func (l *latencySampler) stop() (p50, p99 time.Duration, n int) {
	close(l.done)
	lats := <-l.out
	if len(lats) == 0 {
		return 0, 0, 0
	}
	slices.Sort(lats)
	return lats[len(lats)/2], lats[min(len(lats)-1, len(lats)*99/100)], len(lats)
}
