package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/schema/fb"
	"github.com/framebus/framebus/sidecar"
)

// The sizes of a full run (--quick and FRAMEBUS_BENCH_SCALE scale the
// counts). They are chosen so that a full run of every scenario with the
// default 3 runs takes a few minutes on a 2-core machine, each measurement
// about a second or more.
const (
	benchIngestFrames = 2_000_000 // framebus frames per ingest run, at most…
	benchIngestBytes  = 320e6     // …and this many frame bytes
	benchSocketFrames = 300_000   // Unix socket peer: frames per run, at most…
	benchSocketBytes  = 1e9       // …and bytes
	benchJSFrames     = 200_000   // JetStream peer: messages per run, at most…
	benchJSBytes      = 200e6     // …and bytes
	benchJSPending    = 4096      // outstanding PublishAsync (test/bench_test.go: the best of 256…65536)
	benchDiskBytes    = 256 << 20 // disk peer: bytes per run
	benchPacedSeconds = 3         // latency scenario: seconds per run
	benchLiveRate     = 100_000   // live scenario: frames/s…
	benchLiveSeconds  = 2         // …for this long
	benchCmdRounds    = 3000      // command round trips per run
	benchPingRounds   = 5000      // Unix socket ping-pongs per run
)

// benchPoints are the frame sizes of the ingest scenario, in points per
// frame.
var benchPoints = []int{1, 8, 32, 128}

// benchRates and benchLatencyPresets shape the latency scenario.
var (
	benchRates          = []int{100_000, 1_000_000}
	benchLatencyPresets = []string{sidecar.PresetDefault, sidecar.PresetHighThroughput}
)

// benchSteps is the number of measured runs, for the progress bar.
func benchSteps(o benchOpts, jetStream bool) int {
	n := 0
	if o.has(benchIngest) {
		per := 2
		if jetStream {
			per = 3
		}
		n += o.runs * (1 + len(benchPoints)*per)
	}
	if o.has(benchLatency) {
		n += o.runs * len(benchLatencyPresets) * len(benchRates)
	}
	if o.has(benchLive) {
		n += o.runs * 2
	}
	return n
}

// benchTemplate is the frame `framebus publish --producer bench --points
// K` publishes (device "sim", K f64 points sim/tag0…): the peers send the
// same bytes.
func benchTemplate(points int) *schema.DataTemplate {
	tags := make([]schema.TemplateTag, points)
	for i := range tags {
		tags[i] = schema.TemplateTag{Tag: fmt.Sprintf("sim/tag%d", i), Type: schema.TypeF64}
	}
	tpl, err := schema.NewDataTemplate("bench", "sim", tags)
	if err != nil {
		panic(err) // constant input
	}
	return tpl
}

// benchFrameBytes is the encoded size of a frame of points points.
func benchFrameBytes(points int) int { return benchTemplate(points).Len() }

// runIngest is the ingest scenario: runs × (the disk, then for each frame
// size framebus, the Unix socket and JetStream), interleaved so that a
// noisy minute of the machine spreads over every figure.
func (e *benchEnv) runIngest(ctx context.Context) (*benchIngestResult, error) {
	r := &benchIngestResult{preset: sidecar.PresetHighThroughput}
	for _, k := range benchPoints {
		r.rows = append(r.rows, &benchIngestRow{points: k, frameBytes: benchFrameBytes(k)})
	}
	var js *benchJetStream
	if e.natsServer != "" {
		var err error
		if js, err = e.startJetStream(ctx); err != nil {
			return nil, fmt.Errorf("ingest: the JetStream peer: %w", err)
		}
		defer js.close()
		r.jetStreamVersion = js.version
	}
	for run := 1; run <= e.opts.runs; run++ {
		of := fmt.Sprintf("run %d/%d", run, e.opts.runs)
		diskBytes := e.count(benchDiskBytes, 4<<20)
		if err := e.step(ctx, "ingest: disk, fsync'd 1 MiB writes, "+of, func() (string, error) {
			mbps, err := benchDisk(e.base, diskBytes)
			r.disk = append(r.disk, orNaN(mbps, err))
			return fmt.Sprintf("%.0f MB/s", mbps), err
		}); err != nil {
			return nil, err
		}
		for _, row := range r.rows {
			size := fmt.Sprintf("%d points (%d B)", row.points, row.frameBytes)
			frames := e.count(min(benchIngestFrames, int(benchIngestBytes)/row.frameBytes), 100)
			if err := e.step(ctx, "ingest: framebus, "+size+", "+of, func() (string, error) {
				fps, err := e.ingestFramebus(ctx, r.preset, row.points, frames)
				row.framebus = append(row.framebus, orNaN(fps, err))
				return benchRate(fps, row.frameBytes), err
			}); err != nil {
				return nil, err
			}
			n := e.count(min(benchSocketFrames, int(benchSocketBytes)/row.frameBytes), 100)
			if err := e.step(ctx, "ingest: Unix socket, "+size+", "+of, func() (string, error) {
				fps, err := e.socketThroughput(ctx, row.points, n)
				row.socket = append(row.socket, orNaN(fps, err))
				return benchRate(fps, row.frameBytes), err
			}); err != nil {
				return nil, err
			}
			if js == nil {
				continue
			}
			n = e.count(min(benchJSFrames, int(benchJSBytes)/row.frameBytes), 100)
			if err := e.step(ctx, "ingest: JetStream, "+size+", "+of, func() (string, error) {
				fps, err := js.run(ctx, row.points, n)
				row.jetStream = append(row.jetStream, orNaN(fps, err))
				return benchRate(fps, row.frameBytes), err
			}); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

// orNaN is v, or NaN (no figure) for a failed measurement.
func orNaN(v float64, err error) float64 {
	if err != nil {
		return math.NaN()
	}
	return v
}

func benchRate(fps float64, frameBytes int) string {
	return fmt.Sprintf("%s frames/s, %.1f MB/s", compactNum(fps), fps*float64(frameBytes)/1e6)
}

// ingestFramebus runs one framebus ingest measurement on a fresh sidecar:
// one driver process publishes frames frames as fast as it can and waits
// until they are durable. The result is durable frames/s.
func (e *benchEnv) ingestFramebus(ctx context.Context, preset string, points, frames int) (float64, error) {
	b, err := e.startBus(ctx, preset)
	if err != nil {
		return 0, err
	}
	settle()
	rep, err := b.publish(ctx, points, frames, 0)
	if err != nil {
		b.sc.kill()
		b.remove()
		return 0, err
	}
	if err := b.stop(); err != nil {
		return 0, err
	}
	return rep.durableFPS(), nil
}

// runLatency is the latency scenario: for every preset and rate, a fresh
// sidecar and one driver paced at that rate for benchPacedSeconds.
func (e *benchEnv) runLatency(ctx context.Context) ([]*benchLatencyRow, error) {
	var rows []*benchLatencyRow
	for _, p := range benchLatencyPresets {
		cfg, err := sidecar.Preset(p)
		if err != nil {
			return nil, err
		}
		for _, rate := range benchRates {
			rows = append(rows, &benchLatencyRow{preset: p, walFlush: cfg.WALFlush.Duration, rate: rate})
		}
	}
	for run := 1; run <= e.opts.runs; run++ {
		for _, row := range rows {
			desc := fmt.Sprintf("latency: %s preset at %s frames/s, run %d/%d", row.preset, compactNum(float64(row.rate)), run, e.opts.runs)
			if err := e.step(ctx, desc, func() (string, error) {
				fail := func(err error) (string, error) {
					row.fps, row.p50, row.p99 = append(row.fps, math.NaN()), append(row.p50, math.NaN()), append(row.p99, math.NaN())
					return "", err
				}
				b, err := e.startBus(ctx, row.preset)
				if err != nil {
					return fail(err)
				}
				settle()
				rep, err := b.publish(ctx, 1, e.count(row.rate*benchPacedSeconds, row.rate/10), row.rate)
				if err == nil && !rep.hasLatency {
					err = fmt.Errorf("framebus publish reported no latency percentiles:\n%s", indent(rep.line))
				}
				if err != nil {
					b.sc.kill()
					b.remove()
					return fail(err)
				}
				if err := b.stop(); err != nil {
					return fail(err)
				}
				row.fps = append(row.fps, rep.publishFPS())
				row.p50 = append(row.p50, rep.p50Ms)
				row.p99 = append(row.p99, rep.p99Ms)
				return fmt.Sprintf("p50 %.1f ms, p99 %.1f ms", rep.p50Ms, rep.p99Ms), nil
			}); err != nil {
				return nil, err
			}
		}
	}
	return rows, nil
}

// runLive is the live scenario: per run, a fresh default-preset sidecar
// with a live subscriber and a command server in this process, then the
// Unix socket ping-pong peer.
func (e *benchEnv) runLive(ctx context.Context) (*benchLiveResult, error) {
	r := &benchLiveResult{rate: benchLiveRate, frames: e.count(benchLiveRate*benchLiveSeconds, 1000),
		rounds: e.count(benchCmdRounds, 100), pings: e.count(benchPingRounds, 100), size: benchFrameBytes(1)}
	for run := 1; run <= e.opts.runs; run++ {
		of := fmt.Sprintf("run %d/%d", run, e.opts.runs)
		if err := e.step(ctx, "live: framebus subscriber and commands, "+of, func() (string, error) {
			live, cmd, err := e.liveFramebus(ctx, r.frames, r.rounds)
			if err != nil {
				live, cmd = [2]float64{math.NaN(), math.NaN()}, [2]float64{math.NaN(), math.NaN()}
			}
			r.live50, r.live99 = append(r.live50, live[0]), append(r.live99, live[1])
			r.cmd50, r.cmd99 = append(r.cmd50, cmd[0]), append(r.cmd99, cmd[1])
			return fmt.Sprintf("live p50 %.0f µs p99 %.0f µs; command p50 %.0f µs p99 %.0f µs", live[0], live[1], cmd[0], cmd[1]), err
		}); err != nil {
			return nil, err
		}
		if err := e.step(ctx, "live: Unix socket ping-pong, "+of, func() (string, error) {
			p, err := e.pingPong(ctx, r.size, r.pings)
			if err != nil {
				p = [2]float64{math.NaN(), math.NaN()}
			}
			r.ping50, r.ping99 = append(r.ping50, p[0]), append(r.ping99, p[1])
			return fmt.Sprintf("round trip p50 %.0f µs p99 %.0f µs", p[0], p[1]), err
		}); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// liveFramebus measures, on one sidecar, live publish→subscriber latency
// (frames paced at benchLiveRate; the subscriber, futex-woken, takes
// receive time − the frame's timestamp) and command round trips (a
// Requester and a driver answering COMPLETED at once, both in this
// process). It returns p50 and p99 of each in µs.
func (e *benchEnv) liveFramebus(ctx context.Context, frames, rounds int) (live, cmd [2]float64, err error) {
	b, err := e.startBus(ctx, sidecar.PresetDefault)
	if err != nil {
		return live, cmd, err
	}
	ok := false
	defer func() {
		if !ok {
			b.sc.kill()
			b.remove()
		}
	}()
	fail := func(format string, args ...any) error {
		return fmt.Errorf(format+"; the sidecar's output ends:\n%s", append(args, indent(lastLines(b.sc.out.String(), 20)))...)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sub, err := client.Subscribe(cctx, client.Filter{}, client.Latest(), client.SubscribeOptions{Name: b.name, RunDir: b.runDir, Live: true, Spin: -1})
	if err != nil {
		return live, cmd, fail("subscribing: %v", err)
	}
	defer sub.Close()
	pub, err := client.Dial(cctx, client.Config{Name: b.name, RunDir: b.runDir, Producer: "bench"})
	if err != nil {
		return live, cmd, fail("attaching a publisher: %v", err)
	}
	defer pub.Close()
	got := make(chan []time.Duration, 1)
	recvErr := make(chan error, 1)
	go func() {
		l := make([]time.Duration, 0, frames)
		rctx, rcancel := context.WithTimeout(cctx, time.Minute)
		defer rcancel()
		for len(l) < frames {
			f, err := sub.Next(rctx)
			if err != nil {
				recvErr <- fmt.Errorf("the subscriber's Next after %d of %d frames: %w", len(l), frames, err)
				return
			}
			l = append(l, time.Duration(time.Now().UnixNano()-benchPointTs(f.Data)))
		}
		got <- l
	}()
	tpl := benchTemplate(1)
	var pubErr error
	benchPaced(benchLiveRate, frames, func(i int) bool {
		tpl.SetSeq(uint64(i))
		tpl.SetTs(0, time.Now().UnixNano())
		pubErr = pub.Publish(cctx, tpl.Bytes())
		return pubErr == nil
	})
	if pubErr != nil {
		return live, cmd, fail("publishing: %v", pubErr)
	}
	var lats []time.Duration
	select {
	case lats = <-got:
	case err := <-recvErr:
		return live, cmd, fail("%v", err)
	}
	if n := sub.Lost(); n > 0 {
		return live, cmd, fail("the live subscription lost %d frames", n)
	}
	if st := pub.Stats(); st.Dropped > 0 || st.Rejected > 0 {
		return live, cmd, fail("the publisher had %d frames dropped and %d rejected", st.Dropped, st.Rejected)
	}
	live = benchPercentiles(lats)

	drv, err := client.Dial(cctx, client.Config{Name: b.name, RunDir: b.runDir, Producer: "drv"})
	if err != nil {
		return live, cmd, fail("attaching the command server: %v", err)
	}
	defer drv.Close()
	go drv.ServeCommands(cctx, []string{"pump"}, func(_ context.Context, c *schema.Command) schema.CommandAck {
		return schema.CommandAck{Stage: schema.AckCompleted, Readback: c.Points}
	})
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(b.sc.out.String(), "driver serves commands"); {
		if time.Now().After(deadline) {
			return live, cmd, fail("the command server did not register within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	req, err := client.DialRequester(cctx, client.CommandOptions{Name: b.name, RunDir: b.runDir})
	if err != nil {
		return live, cmd, fail("connecting a requester: %v", err)
	}
	defer req.Close()
	c := &schema.Command{Target: "pump", Device: "p1", Points: []schema.Point{{Tag: "sim/tag0", Value: schema.F64(1)}}}
	lats = lats[:0]
	for i := 0; i < rounds; i++ {
		c.DeadlineNs = time.Now().Add(5 * time.Second).UnixNano()
		start := time.Now()
		ack, err := req.Send(cctx, c, nil)
		if err != nil {
			return live, cmd, fail("command %d: %v", i, err)
		}
		if ack.Stage != schema.AckCompleted {
			return live, cmd, fail("command %d: final stage %v (%s), want COMPLETED", i, ack.Stage, ack.Message)
		}
		lats = append(lats, time.Since(start))
	}
	cmd = benchPercentiles(lats)
	req.Close()
	drv.Close()
	pub.Close()
	sub.Close()
	cancel()
	ok = true
	return live, cmd, b.stop()
}

// benchPaced calls fn(i) for i in [0, n) at rate calls a second, until fn
// returns false. It sleeps between calls with nanosleep on a thread whose
// timer slack is 1 µs (Go's timers batch by the millisecond; a busy wait
// would take a core from the processes measured), as test/bench_sub_test.go
// does.
func benchPaced(rate, n int, fn func(i int) bool) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	for i := 0; i < n; i++ {
		if d := time.Duration(i)*interval - time.Since(start); d > 0 {
			ts := unix.NsecToTimespec(d.Nanoseconds())
			unix.Nanosleep(&ts, nil)
		}
		if !fn(i) {
			return
		}
	}
}

// benchPointTs returns the ts_ns of a data frame's first point.
func benchPointTs(buf []byte) int64 {
	d := schema.RootDataFrame(buf)
	var p fb.Point
	d.Points(&p, 0)
	return p.TsNs()
}

// benchPercentiles returns p50 and p99 of lats in µs (lats is sorted).
func benchPercentiles(lats []time.Duration) [2]float64 {
	if len(lats) == 0 {
		return [2]float64{}
	}
	slices.Sort(lats)
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	return [2]float64{us(lats[len(lats)/2]), us(lats[min(len(lats)-1, len(lats)*99/100)])}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// publish runs one driver process, `framebus publish --producer bench
// --points points --count count [--rate rate]`, and returns its summary.
// Frames dropped or rejected, or fewer published than asked, fail the run.
func (b *benchBus) publish(ctx context.Context, points, count, rate int) (benchPublishReport, error) {
	args := []string{"publish", "--name", b.name, "--run-dir", b.runDir, "--producer", "bench",
		"--points", strconv.Itoa(points), "--count", strconv.Itoa(count)}
	if rate > 0 {
		args = append(args, "--rate", strconv.Itoa(rate))
	}
	c, err := b.e.start("framebus publish", b.e.exe, append(args, "--report-durable", "250ms")...)
	if err != nil {
		return benchPublishReport{}, err
	}
	withSidecar := func(err error) error {
		return fmt.Errorf("%w\nthe sidecar's output ends:\n%s", err, indent(lastLines(b.sc.out.String(), 20)))
	}
	if err := b.watch(ctx, c); err != nil {
		if ctx.Err() != nil {
			return benchPublishReport{}, err
		}
		return benchPublishReport{}, withSidecar(err)
	}
	r, err := parseBenchPublish(c.out.String())
	if err != nil {
		return r, withSidecar(err)
	}
	if r.published != uint64(count) || r.dropped != 0 || r.rejected != 0 {
		return r, withSidecar(fmt.Errorf("framebus publish: %d published, %d dropped, %d rejected; want %d, 0, 0 (the run does not count):\n%s",
			r.published, r.dropped, r.rejected, count, indent(r.line)))
	}
	return r, nil
}

// benchStall is how long a driver may go without a frame becoming
// durable before the run fails as stalled.
const benchStall = 15 * time.Second

var benchDurableLine = regexp.MustCompile(`(?m)^durable (\d+)$`)

// watch waits for a `framebus publish --report-durable` child to exit. It
// fails the run if no further frame becomes durable for benchStall (the
// bus is stuck: waiting longer only delays the report), or after 10
// minutes.
func (b *benchBus) watch(ctx context.Context, c *benchChild) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	last, lastAt := "", start
	for {
		select {
		case <-c.done:
			return c.result()
		case <-ctx.Done():
			c.kill()
			return ctx.Err()
		case now := <-tick.C:
			if m := benchDurableLine.FindAllStringSubmatch(c.out.String(), -1); len(m) > 0 && m[len(m)-1][1] != last {
				last, lastAt = m[len(m)-1][1], now
			}
			if now.Sub(lastAt) > benchStall || now.Sub(start) > 10*time.Minute {
				c.kill()
				n := last
				if n == "" {
					n = "none"
				}
				reason := fmt.Sprintf("framebus publish stalled: no further frame became durable for %v (durable so far: %s)", benchStall, n)
				if w := lastWarning(b.sc.out.String()); w != "" {
					reason += "; the sidecar's last warning: " + w
				}
				return errors.New(reason)
			}
		}
	}
}

// lastWarning is the last WARN or ERROR line of a sidecar's log, shortened
// to its msg and err.
func lastWarning(log string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if !strings.Contains(l, "level=WARN") && !strings.Contains(l, "level=ERROR") {
			continue
		}
		if j := strings.Index(l, "msg="); j >= 0 {
			return l[j:]
		}
		return l
	}
	return ""
}

var (
	benchPublishLine = regexp.MustCompile(`published (\d+) frames \((\d+) dropped, (\d+) rejected\) in ([0-9.]+)s: ([0-9.]+) frames/s; durable ([0-9.]+) ms after the last publish`)
	benchLatencyPart = regexp.MustCompile(`durable latency p50 ([0-9.]+) ms p99 ([0-9.]+) ms`)
)

// benchPublishReport is the summary line of `framebus publish`.
type benchPublishReport struct {
	line                         string
	published, dropped, rejected uint64
	publishSec                   float64 // the publish loop
	lastDurableMs                float64 // last publish → WaitDurable returned
	p50Ms, p99Ms                 float64 // publish→durable percentiles, when reported
	hasLatency                   bool
}

// durableFPS is durable ingest: the frames over the publish loop and the
// wait until the last one was durable.
func (r benchPublishReport) durableFPS() float64 {
	return float64(r.published) / (r.publishSec + r.lastDurableMs/1000)
}

// publishFPS is the publish loop's rate.
func (r benchPublishReport) publishFPS() float64 { return float64(r.published) / r.publishSec }

func parseBenchPublish(out string) (benchPublishReport, error) {
	var r benchPublishReport
	loc := benchPublishLine.FindStringSubmatchIndex(out)
	if loc == nil {
		return r, fmt.Errorf("no summary line in the output of framebus publish:\n%s", indent(out))
	}
	m := benchPublishLine.FindStringSubmatch(out)
	end := strings.IndexByte(out[loc[0]:], '\n')
	if end < 0 {
		end = len(out) - loc[0]
	}
	r.line = out[loc[0] : loc[0]+end]
	r.published, _ = strconv.ParseUint(m[1], 10, 64)
	r.dropped, _ = strconv.ParseUint(m[2], 10, 64)
	r.rejected, _ = strconv.ParseUint(m[3], 10, 64)
	r.publishSec, _ = strconv.ParseFloat(m[4], 64)
	if rate, _ := strconv.ParseFloat(m[5], 64); rate > 0 { // frames/s has more digits than the seconds
		r.publishSec = float64(r.published) / rate
	}
	r.lastDurableMs, _ = strconv.ParseFloat(m[6], 64)
	if r.publishSec <= 0 {
		return r, fmt.Errorf("framebus publish reported no time:\n%s", indent(r.line))
	}
	if l := benchLatencyPart.FindStringSubmatch(r.line); l != nil {
		r.p50Ms, _ = strconv.ParseFloat(l[1], 64)
		r.p99Ms, _ = strconv.ParseFloat(l[2], 64)
		r.hasLatency = true
	}
	return r, nil
}
