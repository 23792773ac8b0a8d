package test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sys/unix"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/sidecar"
)

// e2eFrames is how many frames one operation of the framebus and JetStream
// sub-benchmarks publishes: one op is a whole run of e2eFrames 1-point
// frames (ns/op is reported as 0; the metrics are per frame and per second).
// FRAMEBUS_BENCH_FRAMES overrides it for quick trials.
const e2eFrames = 2_000_000

// e2eMaxPending bounds the JetStream publisher's outstanding async publishes
// (FRAMEBUS_BENCH_JS_PENDING overrides it). On the reference machine 256
// gave ~104 k msgs/s, 1024 ~127 k, 4096 ~136 k, 16384 ~133 k, and 65536
// stalled (ErrTooManyStalledMsgs after 200 ms).
const e2eMaxPending = 4096

// e2ePresets are the presets measured, in order; the JetStream peer runs at
// each one's wal_flush_ms.
var e2ePresets = []string{sidecar.PresetDefault, sidecar.PresetHighThroughput}

// BenchmarkEndToEnd measures durable ingest from one driver process through
// shared memory, the sidecar and its fsync'd group commits into the WAL, and
// its two peers in the same run:
//
//   - peer=disk: the disk's fsync'd sequential write bandwidth in the
//     directory the WALs use, 1 MiB writes, fdatasync every 4 MiB (MB/s is
//     the limit for the WAL's MB/s);
//   - preset=P/sync=S: `framebus run --preset P` (wal_flush_ms = S), then one
//     `framebus publish --count N --points 1` process; frames/s is N over the
//     time from its first publish until WaitDurable returned (the publish
//     loop plus "durable D ms after the last publish", both from the
//     driver's own report), MB/s is frames/s × the encoded frame's bytes;
//     publish-frames/s is the publish loop alone (the ring absorbs the lead);
//     last-durable-ms is D, and p50-ms / p99-ms are the driver's
//     publish→durable latency percentiles when its report has them (the
//     worst value of the ops in this run);
//   - peer=jetstream/sync=S: an embedded nats-server with JetStream, file
//     storage, sync_interval = S, one stream; this process publishes N
//     messages of the same bytes with jetstream.PublishAsync (at most
//     e2eMaxPending outstanding) and waits for every ack. frames/s is N over
//     the first publish until the last ack. A JetStream ack means stored,
//     not synced: the store fsyncs every S, so this peer promises less than
//     framebus's WaitDurable.
//
// One op of the framebus and JetStream sub-benchmarks is a whole run of N
// frames (default e2eFrames); ns/op is reported as 0 for them.
// cmd/benchreport prints the ratios (framebus ÷ JetStream at the same sync
// interval, framebus MB/s ÷ disk MB/s) from the medians of the run.
func BenchmarkEndToEnd(b *testing.B) {
	frames := e2eFrames
	if s := os.Getenv("FRAMEBUS_BENCH_FRAMES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("FRAMEBUS_BENCH_FRAMES=%q: want a positive integer", s)
		}
		frames = n
	}
	pending := e2eMaxPending
	if s := os.Getenv("FRAMEBUS_BENCH_JS_PENDING"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("FRAMEBUS_BENCH_JS_PENDING=%q: want a positive integer", s)
		}
		pending = n
	}
	b.Run("peer=disk", benchE2EDisk)
	for _, preset := range e2ePresets {
		cfg, err := sidecar.Preset(preset)
		if err != nil {
			b.Fatal(err)
		}
		sync := cfg.WALFlush.Duration
		b.Run(fmt.Sprintf("preset=%s/sync=%s", preset, sync), func(b *testing.B) { benchE2EFramebus(b, preset, frames, 0) })
		b.Run(fmt.Sprintf("peer=jetstream/sync=%s", sync), func(b *testing.B) { benchE2EJetStream(b, sync, frames, pending) })
	}
	// Latency below saturation: the same driver paced at e2eRate, and the
	// disk's own latency for a commit of that run's shape.
	b.Run(fmt.Sprintf("peer=disk-commit/bytes=%d", e2eCommitBytes), benchE2EDiskCommit)
	for _, preset := range e2ePresets {
		cfg, _ := sidecar.Preset(preset)
		b.Run(fmt.Sprintf("preset=%s/sync=%s/rate=%d", preset, cfg.WALFlush.Duration, e2eRate), func(b *testing.B) {
			benchE2EFramebus(b, preset, e2eRate*e2ePacedSeconds, e2eRate)
		})
	}
}

// e2eRate and e2ePacedSeconds shape the paced runs: publish→durable latency
// at a steady e2eRate frames/s (about a third of the saturated rate on the
// reference machine) for e2ePacedSeconds.
const (
	e2eRate         = 1_000_000
	e2ePacedSeconds = 4
)

// e2eCommitBytes is the size of the peer=disk-commit writes: about what
// one commit of a paced high-throughput run stores (1 M frames/s of 160 B
// for 5 ms is 800 kB, which S2 shrinks about 6×).
const e2eCommitBytes = 128 << 10

// settle writes back every dirty page of the machine before a measured run,
// so that a run does not pay for the previous one's writes (JetStream's
// file store syncs in the background, after its acks). The timer is
// stopped meanwhile.
func settle(b *testing.B) {
	b.StopTimer()
	unix.Sync()
	b.StartTimer()
}

// benchTemplate is the frame `framebus publish --producer bench --points 1`
// encodes (device "sim", one f64 point).
func benchTemplate(tb testing.TB) *schema.DataTemplate {
	tpl, err := schema.NewDataTemplate("bench", "sim", []schema.TemplateTag{{Tag: "sim/tag0", Type: schema.TypeF64}})
	if err != nil {
		tb.Fatal(err)
	}
	return tpl
}

var (
	publishLine = regexp.MustCompile(`published (\d+) frames \((\d+) dropped, (\d+) rejected\) in ([0-9.]+)s: ([0-9.]+) frames/s; durable ([0-9.]+) ms after the last publish`)
	latencyPart = regexp.MustCompile(`durable latency p50 ([0-9.]+) ms p99 ([0-9.]+) ms`)
)

// publishReport is the parsed summary line of `framebus publish`.
type publishReport struct {
	published, dropped, rejected uint64
	publishSec                   float64 // the publish loop
	lastDurableMs                float64 // last publish → WaitDurable returned
	p50Ms, p99Ms                 float64 // publish→durable percentiles, when reported
	hasLatency                   bool
}

func parsePublishReport(out string) (publishReport, error) {
	var r publishReport
	m := publishLine.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no summary line in the output of framebus publish:\n%s", out)
	}
	r.published, _ = strconv.ParseUint(m[1], 10, 64)
	r.dropped, _ = strconv.ParseUint(m[2], 10, 64)
	r.rejected, _ = strconv.ParseUint(m[3], 10, 64)
	sec, _ := strconv.ParseFloat(m[4], 64)
	rate, _ := strconv.ParseFloat(m[5], 64)
	r.publishSec = sec
	if rate > 0 { // frames/s has more digits than the seconds
		r.publishSec = float64(r.published) / rate
	}
	r.lastDurableMs, _ = strconv.ParseFloat(m[6], 64)
	if l := latencyPart.FindStringSubmatch(out); l != nil {
		r.p50Ms, _ = strconv.ParseFloat(l[1], 64)
		r.p99Ms, _ = strconv.ParseFloat(l[2], 64)
		r.hasLatency = true
	}
	return r, nil
}

// benchE2EFramebus runs the real sidecar at preset, then per op one driver
// process that publishes frames 1-point frames (as fast as it can, or at
// rate frames/s if rate > 0) and waits for durability.
func benchE2EFramebus(b *testing.B, preset string, frames, rate int) {
	bus := newBenchBus(b, "--preset", preset)
	sc := bus.startSidecar()
	frameBytes := benchTemplate(b).Len()

	var total uint64
	var busySec, publishSec float64
	var worst publishReport
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		settle(b)
		args := []string{"publish", "--name", bus.name, "--run-dir", bus.runDir, "--producer", "bench",
			"--points", "1", "--count", strconv.Itoa(frames)}
		if rate > 0 {
			args = append(args, "--rate", strconv.Itoa(rate))
		}
		d := start(b, args...)
		if err := d.wait(b, 10*time.Minute); err != nil {
			b.Fatalf("framebus publish: %v\n%s\nsidecar:\n%s", err, d.out.String(), sc.out.String())
		}
		r, err := parsePublishReport(d.out.String())
		if err != nil {
			b.Fatal(err)
		}
		if r.published != uint64(frames) || r.dropped != 0 || r.rejected != 0 {
			b.Fatalf("framebus publish: %d published, %d dropped, %d rejected; want %d, 0, 0", r.published, r.dropped, r.rejected, frames)
		}
		total += r.published
		publishSec += r.publishSec
		busySec += r.publishSec + r.lastDurableMs/1000
		worst.lastDurableMs = max(worst.lastDurableMs, r.lastDurableMs)
		worst.p50Ms = max(worst.p50Ms, r.p50Ms)
		worst.p99Ms = max(worst.p99Ms, r.p99Ms)
		worst.hasLatency = worst.hasLatency || r.hasLatency
	}
	b.StopTimer()
	sc.stop(b)

	fps := float64(total) / busySec
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(fps, "frames/s")
	b.ReportMetric(fps*float64(frameBytes)/1e6, "MB/s")
	b.ReportMetric(float64(total)/publishSec, "publish-frames/s")
	b.ReportMetric(float64(frameBytes), "B/frame")
	b.ReportMetric(worst.lastDurableMs, "last-durable-ms")
	if worst.hasLatency {
		b.ReportMetric(worst.p50Ms, "p50-ms")
		b.ReportMetric(worst.p99Ms, "p99-ms")
	}
}

// benchE2EJetStream: an embedded JetStream server with file storage and
// the given sync interval; per op, this process publishes frames messages
// of the benchmark frame's bytes asynchronously and waits for every ack.
func benchE2EJetStream(b *testing.B, syncInterval time.Duration, frames, maxPending int) {
	srv, err := server.NewServer(&server.Options{
		Host:         "127.0.0.1",
		Port:         server.RANDOM_PORT,
		NoLog:        true,
		NoSigs:       true,
		JetStream:    true,
		StoreDir:     filepath.Join(b.TempDir(), "jetstream"),
		SyncInterval: syncInterval,
	})
	if err != nil {
		b.Fatal(err)
	}
	srv.Start()
	defer func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}()
	if !srv.ReadyForConnections(10 * time.Second) {
		b.Fatal("nats-server not ready after 10s")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	var failed atomic.Int64
	var firstErr atomic.Value
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(maxPending),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			if failed.Add(1) == 1 {
				firstErr.Store(err)
			}
		}))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:      "BENCH",
		Subjects:  []string{"bench.>"},
		Storage:   jetstream.FileStorage,
		Retention: jetstream.LimitsPolicy,
		Replicas:  1,
	}); err != nil {
		b.Fatal(err)
	}
	tpl := benchTemplate(b)
	frameBytes := tpl.Len()

	var total int
	var busy time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		settle(b)
		start := time.Now()
		for seq := 0; seq < frames; seq++ {
			// The same work per frame as `framebus publish`.
			tpl.SetSeq(uint64(seq))
			tpl.SetF64(0, math.Sin(float64(seq)/100))
			tpl.SetTs(0, time.Now().UnixNano())
			if _, err := js.PublishAsync("bench.data", tpl.Bytes()); err != nil {
				b.Fatalf("PublishAsync of message %d: %v", seq, err)
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(5 * time.Minute):
			b.Fatalf("%d acks outstanding after 5 minutes", js.PublishAsyncPending())
		}
		busy += time.Since(start)
		total += frames
		if n := failed.Load(); n > 0 {
			b.Fatalf("%d async publishes failed; the first: %v", n, firstErr.Load())
		}
	}
	b.StopTimer()
	info, err := js.Stream(ctx, "BENCH")
	if err != nil {
		b.Fatal(err)
	}
	if got := info.CachedInfo().State.Msgs; got != uint64(total) {
		b.Fatalf("stream holds %d messages, want %d", got, total)
	}
	fps := float64(total) / busy.Seconds()
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(fps, "frames/s")
	b.ReportMetric(fps*float64(frameBytes)/1e6, "MB/s")
	b.ReportMetric(float64(frameBytes), "B/frame")
}

// benchE2EDiskCommit is the disk's latency floor for a WAL commit, in
// the directory the WALs use: every 5 ms for e2ePacedSeconds, append
// e2eCommitBytes and fdatasync, then rewrite a 4 KiB page at the start of
// the file and fdatasync again (a bbolt commit's data pages, then its
// meta page). p50-ms / p99-ms are those pairs' durations; a paced run's
// publish→durable p99 is at least wal_flush_ms plus about this p99.
func benchE2EDiskCommit(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "commit.bin"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	data := make([]byte, e2eCommitBytes)
	for i := range data {
		data[i] = byte(i * 31)
	}
	meta := data[:4096]
	fd := int(f.Fd())
	var lats []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		settle(b)
		off := int64(4096)
		start := time.Now()
		for next := start; time.Since(start) < e2ePacedSeconds*time.Second; next = next.Add(5 * time.Millisecond) {
			time.Sleep(time.Until(next))
			t := time.Now()
			if _, err := unix.Pwrite(fd, data, off); err != nil {
				b.Fatal(err)
			}
			off += int64(len(data))
			if err := unix.Fdatasync(fd); err != nil {
				b.Fatal(err)
			}
			if _, err := unix.Pwrite(fd, meta, 0); err != nil {
				b.Fatal(err)
			}
			if err := unix.Fdatasync(fd); err != nil {
				b.Fatal(err)
			}
			lats = append(lats, time.Since(t))
		}
	}
	b.StopTimer()
	slices.Sort(lats)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(lats[len(lats)/2]), "p50-ms")
	b.ReportMetric(ms(lats[len(lats)*99/100]), "p99-ms")
}

// benchE2EDisk measures the disk's fsync'd sequential write bandwidth in
// the directory the WALs use (b.TempDir()), as wal's BenchmarkDurableIngest
// peer=disk does: one op is a 1 MiB write; fdatasync follows every 4 MiB
// and after the last write.
func benchE2EDisk(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "disk.bin"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i * 31)
	}
	b.SetBytes(int64(len(chunk)))
	unix.Sync()
	b.ResetTimer()
	unsynced := 0
	for i := 0; i < b.N; i++ {
		if _, err := f.Write(chunk); err != nil {
			b.Fatal(err)
		}
		unsynced += len(chunk)
		if unsynced >= 4<<20 || i == b.N-1 {
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				b.Fatal(err)
			}
			unsynced = 0
		}
	}
	b.StopTimer()
}
