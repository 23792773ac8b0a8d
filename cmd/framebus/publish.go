package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	fromStdin := fs.Bool("stdin", false, "publish the frames read from stdin as JSON lines instead of synthetic ones (see above)")
	serve := fs.String("serve-commands", "", "also serve commands for these targets (comma list), and keep serving after publishing until interrupted")
	cmdDelay := fs.Duration("command-delay", 0, "with --serve-commands: time each command takes")
	cmdReply := fs.String("command-reply", "completed", "with --serve-commands: final stage of every command: completed, failed, rejected, or none (answer only a second after the deadline: the sidecar expires it)")
	skipBad := fs.Bool("skip-bad", false, "with --stdin: skip lines that are not frames, and count them (default: stop at the first, exit status 1)")
	reportDurable := fs.Duration("report-durable", 0, "print \"durable N\" whenever the first N frames are known durable, checked this often (0: never); for crash tests")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: framebus publish [flags]

Attaches to the sidecar as a driver and publishes synthetic DataFrames whose
seq counts 0, 1, 2 ... (one template frame, values rewritten in place), then
waits until the WAL has committed all of them and prints the rate and the
publish-to-durable latency of the last frame.

With --stdin it publishes the frames read from stdin instead, one JSON object
per line in the mapping framebus tail --json prints (docs/json.md: "kind" is
data when absent, and may be command or ack; "wal_seq" is ignored; blank
lines are skipped), and prints the rate. A line that is not a frame stops it
with an error naming the line (the frames before it are published and waited
for); with --skip-bad such lines are reported, counted and skipped.
--count, --points and --device describe synthetic frames: not with --stdin.

With --serve-commands T1,T2 it is also a simulated command server for those
targets: every command gets ACCEPTED, then after --command-delay the
--command-reply stage, with the command's points as readback. After the
frames are published it keeps serving until SIGINT or SIGTERM (--count 0
with --rate publishes slowly meanwhile).

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
	if err := checkStdinFlags(fs, *fromStdin); err != nil {
		fmt.Fprintln(stderr, "framebus publish:", err)
		return 2
	}
	if *producer == "" {
		*producer = fmt.Sprintf("publish-%d", os.Getpid())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg := client.Config{Name: *name, RunDir: *runDir, Producer: *producer, Policy: p}
	if *fromStdin {
		if err := publishStdin(ctx, os.Stdin, stdout, stderr, cfg, *rate, *skipBad); err != nil {
			fmt.Fprintln(stderr, "framebus publish:", err)
			return 1
		}
		return 0
	}
	var srv *commandSim
	if *serve != "" {
		var err error
		if srv, err = newCommandSim(*serve, *cmdDelay, *cmdReply); err != nil {
			fmt.Fprintln(stderr, "framebus publish:", err)
			return 2
		}
	} else if *cmdDelay != 0 || *cmdReply != "completed" {
		fmt.Fprintln(stderr, "framebus publish: --command-delay and --command-reply need --serve-commands")
		return 2
	}
	if *reportDurable < 0 || (*reportDurable > 0 && *fromStdin) {
		fmt.Fprintln(stderr, "framebus publish: --report-durable must be positive, and not with --stdin")
		return 2
	}
	if err := publish(ctx, stdout, cfg, *device, *count, *points, *rate, srv, *reportDurable); err != nil {
		fmt.Fprintln(stderr, "framebus publish:", err)
		return 1
	}
	return 0
}

func publish(ctx context.Context, out io.Writer, cfg client.Config, device string, count uint64, points int, rate float64, srv *commandSim, reportEvery time.Duration) error {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	pub, err := client.Dial(dctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer pub.Close()
	serveErr := make(chan error, 1)
	if srv != nil {
		go func() { serveErr <- pub.ServeCommands(ctx, srv.targets, srv.handle) }()
	}
	tags := make([]schema.TemplateTag, points)
	for i := range tags {
		tags[i] = schema.TemplateTag{Tag: fmt.Sprintf("%s/tag%d", device, i), Type: schema.TypeF64}
	}
	tpl, err := schema.NewDataTemplate(cfg.Producer, device, tags)
	if err != nil {
		return err
	}
	lat := startLatencySampler(pub)
	// Before pub.Close (deferred earlier, run later): the sampler reads the
	// ring, which Close unmaps, also when publishing fails.
	defer lat.stop()
	var sent atomic.Uint64 // frames published so far
	if reportEvery > 0 {
		rep := startDurableReporter(pub, &sent, reportEvery, out)
		defer rep.stop()
	}
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
		fillSynthetic(tpl, seq, points)
		if err := pub.Publish(ctx, tpl.Bytes()); err != nil {
			if ctx.Err() != nil {
				break
			}
			return fmt.Errorf("publish frame %d: %w", seq, err)
		}
		sent.Store(seq + 1)
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
	latency := fmt.Sprintf("; durable latency p50 %.1f ms p99 %.1f ms (%d samples)", ms(p50), ms(p99), n)
	if n == 0 {
		latency = " (too short for latency samples: one is taken every millisecond)"
	}
	fmt.Fprintf(out, "published %d frames (%d dropped, %d rejected) in %.2fs: %.0f frames/s; durable %.1f ms after the last publish%s\n",
		st.Published, st.Dropped, st.Rejected, el, float64(st.Published)/el, float64(durable.Sub(published).Microseconds())/1000, latency)
	if srv == nil {
		return nil
	}
	fmt.Fprintf(out, "serving commands for %s until interrupted\n", strings.Join(srv.targets, ","))
	select {
	case <-ctx.Done():
		fmt.Fprintf(out, "served %d commands\n", srv.served.Load())
		return nil
	case err := <-serveErr:
		if ctx.Err() != nil { // interrupted: ServeCommands saw it first
			fmt.Fprintf(out, "served %d commands\n", srv.served.Load())
			return nil
		}
		return fmt.Errorf("serving commands: %w", err)
	}
}

// durableReporter prints "durable N" lines: every interval it notes how
// many frames were published and the stream's mark after them, and once that
// mark is durable it prints the count (a mark taken after N frames may
// include more, so the line never claims a frame that is not durable).
type durableReporter struct {
	done, exited chan struct{}
}

func startDurableReporter(pub *client.Publisher, sent *atomic.Uint64, every time.Duration, out io.Writer) *durableReporter {
	r := &durableReporter{done: make(chan struct{}), exited: make(chan struct{})}
	go func() {
		defer close(r.exited)
		type point struct {
			n uint64
			m client.Mark
		}
		var pending []point
		var printed uint64
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-r.done:
				return
			case <-tick.C:
			}
			if n := sent.Load(); n > printed && (len(pending) == 0 || pending[len(pending)-1].n < n) {
				pending = append(pending, point{n, pub.Mark()})
			}
			i := 0
			for ; i < len(pending) && pub.Durable(pending[i].m); i++ {
			}
			if i > 0 {
				printed = pending[i-1].n
				fmt.Fprintf(out, "durable %d\n", printed)
				pending = pending[i:]
			}
		}
	}()
	return r
}

func (r *durableReporter) stop() {
	close(r.done)
	<-r.exited
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// latencySampler measures publish-to-durable latency: every millisecond it
// marks the stream, and it notes when each mark becomes durable (checked
// every 100 µs, so a sample is at most that late).
type latencySampler struct {
	pub  *client.Publisher
	done chan struct{}
	out  chan []time.Duration
	once sync.Once
	lats []time.Duration // what run measured, once stopped
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
// number of samples. It is idempotent.
func (l *latencySampler) stop() (p50, p99 time.Duration, n int) {
	l.once.Do(func() {
		close(l.done)
		l.lats = <-l.out
	})
	lats := l.lats
	if len(lats) == 0 {
		return 0, 0, 0
	}
	slices.Sort(lats)
	return lats[len(lats)/2], lats[min(len(lats)-1, len(lats)*99/100)], len(lats)
}

// checkStdinFlags reports flags that do not go with --stdin, or need it.
func checkStdinFlags(fs *flag.FlagSet, fromStdin bool) error {
	var errs []error
	fs.Visit(func(f *flag.Flag) {
		switch {
		case fromStdin && (f.Name == "count" || f.Name == "points" || f.Name == "device"):
			errs = append(errs, fmt.Errorf("--%s describes synthetic frames: not with --stdin", f.Name))
		case !fromStdin && f.Name == "skip-bad":
			errs = append(errs, errors.New("--skip-bad needs --stdin"))
		}
	})
	if len(fs.Args()) > 0 {
		errs = append(errs, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	return errors.Join(errs...)
}

// publishStdin is `framebus publish --stdin`: it publishes the frames of the
// JSON lines read from in, waits until they are durable and prints the
// summary.
func publishStdin(ctx context.Context, in io.Reader, out, errOut io.Writer, cfg client.Config, rate float64, skipBad bool) error {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	pub, err := client.Dial(dctx, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer pub.Close()
	start := time.Now()
	var interval time.Duration
	if rate > 0 {
		interval = time.Duration(float64(time.Second) / rate)
	}
	next := start
	res, readErr := readJSONFrames(ctx, in, skipBad, errOut, func(kind schema.Kind, frame []byte) error {
		if interval > 0 {
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(interval)
		}
		return pub.PublishKind(ctx, kind, frame)
	})
	if ctx.Err() != nil {
		readErr = nil // interrupted: wait for what was published, as publish does
	}
	published := time.Now()
	wctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pub.WaitDurable(wctx); err != nil {
		return errors.Join(readErr, fmt.Errorf("waiting for durability of %d frames: %w", res.frames, err))
	}
	durable := time.Now()
	el := published.Sub(start).Seconds()
	st := pub.Stats()
	skipped := ""
	if skipBad {
		skipped = fmt.Sprintf("; %d bad lines skipped", res.bad)
	}
	fmt.Fprintf(out, "published %d frames (%d dropped, %d rejected%s) in %.2fs: %.0f frames/s; durable %.1f ms after the last publish\n",
		st.Published, st.Dropped, st.Rejected, skipped, el, float64(st.Published)/el, float64(durable.Sub(published).Microseconds())/1000)
	return readErr
}

// maxJSONLine bounds one input line of readJSONFrames (a variable for
// tests).
var maxJSONLine = 64 << 20

// maxBadShown is how many skipped lines readJSONFrames reports one by one.
const maxBadShown = 10

// jsonFramesResult counts what readJSONFrames did.
type jsonFramesResult struct {
	lines  int    // lines read
	frames uint64 // frames emit accepted
	bad    uint64 // lines skipped as not frames (skipBad)
}

// readJSONFrames reads JSON lines from in, parses each with
// schema.ParseJSON and calls emit with the frame, in order; blank lines are
// skipped. A line that is not a frame ends it with an error naming the line,
// unless skipBad: then the first maxBadShown such lines are reported to warn
// and all are counted. An error from emit ends it too, naming the line. It
// also returns when ctx is done.
//
// Lines are read and parsed by a goroutine, ahead of emit; if ctx ends while
// that goroutine waits for input (a terminal), it stays blocked in Read
// until the input ends: the process is about to exit.
func readJSONFrames(ctx context.Context, in io.Reader, skipBad bool, warn io.Writer, emit func(schema.Kind, []byte) error) (jsonFramesResult, error) {
	type parsed struct {
		n     int
		blank bool
		kind  schema.Kind
		frame []byte
		err   error
	}
	lines := make(chan parsed, 256)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer close(lines)
		send := func(p parsed) bool {
			select {
			case lines <- p:
				return true
			case <-stop:
				return false
			}
		}
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, min(64<<10, maxJSONLine)), maxJSONLine)
		n := 0
		for sc.Scan() {
			n++
			p := parsed{n: n}
			if b := bytes.TrimSpace(sc.Bytes()); len(b) == 0 {
				p.blank = true
			} else {
				p.kind, p.frame, p.err = schema.ParseJSON(b)
			}
			if !send(p) {
				return
			}
		}
		if err := sc.Err(); err != nil {
			if errors.Is(err, bufio.ErrTooLong) {
				err = fmt.Errorf("longer than %d bytes", maxJSONLine)
			}
			send(parsed{n: n + 1, err: fmt.Errorf("reading stdin: %w", err)})
		}
	}()
	var res jsonFramesResult
	for {
		var p parsed
		var ok bool
		select {
		case p, ok = <-lines:
		case <-ctx.Done():
			return res, ctx.Err()
		}
		if !ok {
			return res, nil
		}
		res.lines = p.n
		switch {
		case p.blank:
			continue
		case p.err != nil && errors.Is(p.err, schema.ErrJSON) && skipBad:
			res.bad++
			if res.bad <= maxBadShown {
				fmt.Fprintf(warn, "framebus publish: line %d skipped: %v\n", p.n, p.err)
			}
			if res.bad == maxBadShown {
				fmt.Fprintln(warn, "framebus publish: further bad lines are counted, not shown")
			}
			continue
		case p.err != nil && errors.Is(p.err, schema.ErrJSON):
			return res, fmt.Errorf("line %d: %w (the frames before it are published; --skip-bad skips such lines)", p.n, p.err)
		case p.err != nil:
			return res, fmt.Errorf("line %d: %w", p.n, p.err)
		}
		if err := emit(p.kind, p.frame); err != nil {
			return res, fmt.Errorf("line %d: publish: %w", p.n, err)
		}
		res.frames++
	}
}

// fillSynthetic makes tpl synthetic frame seq of framebus publish: the
// sequence number, and each of its points a sine of seq stamped now (the
// bench peers do the same work per frame).
func fillSynthetic(tpl *schema.DataTemplate, seq uint64, points int) {
	tpl.SetSeq(seq)
	now := time.Now().UnixNano()
	for i := 0; i < points; i++ {
		tpl.SetF64(i, math.Sin(float64(seq+uint64(i))/100))
		tpl.SetTs(i, now)
	}
}
