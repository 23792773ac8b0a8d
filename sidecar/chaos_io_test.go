package sidecar

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
	"github.com/framebus/framebus/wal"
)

// chaosFull selects the full fault counts of `make chaos`, as in package
// test (test/chaos_summary_test.go), which runs this package's TestChaos*
// with the same flag.
var chaosFull = flag.Bool("chaos.full", false, "run the full fault counts (make chaos) instead of the quick ones (make test)")

func chaosCount(quick, full int) int {
	if *chaosFull {
		return full
	}
	return quick
}

// chaosOutcome and chaosReport are package test's Outcome and report
// (test/chaos_summary_test.go), for the faults this package injects: one
// "CHAOS fault=..." line on stdout, and a failure unless every count is 0.
type chaosOutcome struct {
	Fault                              string
	Injected, Lost, Duplicates, Panics int
	Stalls                             int
	Detail                             string
}

func chaosReport(t testing.TB, o chaosOutcome) {
	t.Helper()
	ok := o.Lost == 0 && o.Duplicates == 0 && o.Panics == 0 && o.Stalls == 0 && o.Injected > 0
	verdict := "ok"
	if !ok {
		verdict = "FAIL"
	}
	line := fmt.Sprintf("CHAOS fault=%q injected=%d lost=%d dup=%d panics=%d stalls=%d %s detail=%q\n",
		o.Fault, o.Injected, o.Lost, o.Duplicates, o.Panics, o.Stalls, verdict, strings.TrimSpace(o.Detail))
	fmt.Fprint(os.Stdout, line)
	if !ok {
		t.Errorf("%s", strings.TrimSpace(line))
	}
}

// ioFaults fail WAL commits with an I/O error (EIO, as the disk returns it
// for a write), through wal.Hooks: intermittently (a share of the commits)
// or all of them for a stretch.
type ioFaults struct {
	mode     atomic.Int32 // ioHealthy, ioFlaky, ioBroken
	injected atomic.Int64
	rng      *rand.Rand // the WAL writer's goroutine only
}

const (
	ioHealthy = iota
	ioFlaky   // 30 % of the commits fail
	ioBroken  // every commit fails
)

func (f *ioFaults) beforeCommit() error {
	switch f.mode.Load() {
	case ioFlaky:
		if f.rng.Float64() >= 0.3 {
			return nil
		}
	case ioBroken:
	default:
		return nil
	}
	f.injected.Add(1)
	return &fs.PathError{Op: "write", Path: wal.FileName, Err: syscall.EIO}
}

// lockedBuffer collects the sidecar's log.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// ioDriver publishes numbered frames until stopped, recording which it
// published (a drop-newest driver may drop some: Publish then succeeds
// but its Dropped count grows).
type ioDriver struct {
	name      string
	pub       *client.Publisher
	stop      atomic.Bool
	done      chan error
	published []uint64 // frame seqs published, in order; the driver's goroutine, then the test after done
	sent      atomic.Uint64
}

func startIODriver(t testing.TB, ctx context.Context, cfg Config, name string, policy client.Policy) *ioDriver {
	t.Helper()
	pub, err := client.Dial(ctx, client.Config{Name: cfg.Name, RunDir: cfg.RunDir, Producer: name, Policy: policy})
	if err != nil {
		t.Fatal(err)
	}
	d := &ioDriver{name: name, pub: pub, done: make(chan error, 1)}
	go func() {
		var e schema.Encoder
		for seq := uint64(0); !d.stop.Load(); seq++ {
			before := pub.Stats().Dropped
			err := pub.Publish(ctx, e.EncodeData(&schema.DataFrame{Producer: name, Device: "d", Seq: seq,
				Points: []schema.Point{{Tag: "t", Value: schema.F64(float64(seq))}, {Tag: "u", Value: schema.I64(int64(seq))}}}))
			if err != nil {
				d.done <- fmt.Errorf("%s: publish frame %d: %w", name, seq, err)
				return
			}
			if pub.Stats().Dropped == before {
				d.published = append(d.published, seq)
				d.sent.Add(1)
			}
			if seq%64 == 63 {
				time.Sleep(500 * time.Microsecond) // a driver polling its devices, not a benchmark
			}
		}
		d.done <- nil
	}()
	return d
}

// TestChaosIOErrors injects I/O errors into the WAL's commits of an
// in-process sidecar under load from two drivers with the block policy and
// one with drop-newest: first intermittently (30 % of the commits fail),
// then every commit for a stretch, then none, one or several times
// (-chaos.full). The sidecar must raise DEGRADED at each failure and clear
// it when a commit works again, retry without losing or repeating a frame,
// keep its memory queue within max_memory_bytes and raise PAUSE (the
// blocked drivers then stop, their frames wait in their rings), clear it
// once the queue drains; every frame a driver published is in the WAL once,
// in order, and every frame the drop-newest driver dropped is counted
// (framebus_frames_dropped_total).
func TestChaosIOErrors(t *testing.T) {
	const maxMem = 256 << 10
	cfg := testConfig(t, "--max-memory-bytes", fmt.Sprint(maxMem), "--wal-flush-ms", "2", "--ring-bytes", "262144")
	faults := &ioFaults{rng: rand.New(rand.NewPCG(1, 2))}
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	s, err := newSidecar(cfg, log, &wal.Hooks{BeforeCommit: faults.beforeCommit})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	defer func() {
		if t.Failed() {
			t.Logf("sidecar log:\n%s", logs.String())
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	seg := s.Segment()
	blockers := []*ioDriver{startIODriver(t, ctx, cfg, "io-block-0", client.PolicyBlock), startIODriver(t, ctx, cfg, "io-block-1", client.PolicyBlock)}
	dropper := startIODriver(t, ctx, cfg, "io-drop", client.PolicyDropNewest)
	drivers := append(blockers[:len(blockers):len(blockers)], dropper)

	// Sampled all along: the memory queue never passes its bound.
	var overflows, samples atomic.Int64
	sampleStop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-sampleStop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if _, pend := s.wal.Pending(); pend > maxMem {
				overflows.Add(1)
			}
			samples.Add(1)
		}
	}()

	stalls := 0
	wait := func(what string, d time.Duration, cond func() bool) bool {
		for deadline := time.Now().Add(d); !cond(); time.Sleep(2 * time.Millisecond) {
			if time.Now().After(deadline) {
				stalls++
				t.Errorf("timed out after %v waiting for %s", d, what)
				return false
			}
		}
		return true
	}
	cycles := chaosCount(1, 5)
	var pausedSeen int
	for c := 0; c < cycles; c++ {
		// Intermittent failures under load.
		errsBefore := s.wal.Stats().CommitErrors
		faults.mode.Store(ioFlaky)
		time.Sleep(time.Duration(chaosCount(1500, 4000)) * time.Millisecond)
		if s.wal.Stats().CommitErrors == errsBefore {
			t.Errorf("cycle %d: no commit failed while 30 %% of them should", c)
		}

		// A stretch of failures: DEGRADED, then PAUSE; the blocked
		// drivers stop.
		faults.mode.Store(ioBroken)
		wait(fmt.Sprintf("cycle %d: DEGRADED", c), 30*time.Second, func() bool { return seg.Flags()&shm.FlagDegraded != 0 })
		if wait(fmt.Sprintf("cycle %d: PAUSE", c), 30*time.Second, func() bool { return seg.Flags()&shm.FlagPause != 0 }) {
			pausedSeen++
		}
		time.Sleep(200 * time.Millisecond)
		before := []uint64{blockers[0].sent.Load(), blockers[1].sent.Load()}
		time.Sleep(400 * time.Millisecond)
		for i, d := range blockers {
			// At most what the ring still had room for when PAUSE rose.
			if n := d.sent.Load() - before[i]; n > uint64(cfg.RingBytes/64) {
				t.Errorf("cycle %d: %s published %d frames while PAUSE was up", c, d.name, n)
			}
		}
		if seg.Flags()&shm.FlagDegraded == 0 {
			t.Errorf("cycle %d: DEGRADED cleared while every commit fails", c)
		}

		// Healed: the held frames are committed, the flags clear.
		faults.mode.Store(ioHealthy)
		wait(fmt.Sprintf("cycle %d: DEGRADED and PAUSE cleared", c), 30*time.Second, func() bool {
			return seg.Flags()&(shm.FlagDegraded|shm.FlagPause) == 0
		})
	}
	for _, d := range drivers {
		d.stop.Store(true)
	}
	for _, d := range drivers {
		select {
		case err := <-d.done:
			if err != nil {
				stalls++
				t.Error(err)
			}
		case <-ctx.Done():
			stalls++
			t.Fatalf("%s did not stop", d.name)
		}
		if err := d.pub.WaitDurable(ctx); err != nil {
			stalls++
			t.Errorf("%s: WaitDurable: %v", d.name, err)
		}
	}
	// Every frame the drop-newest driver dropped is counted in the ring
	// (framebus_frames_dropped_total reads it), while it is attached.
	dropped := dropper.pub.Stats().Dropped
	counted := droppedMetric(t, s, dropper.name)
	for _, d := range drivers {
		d.pub.Close()
	}
	close(sampleStop)
	<-sampled
	st := s.wal.Stats()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	// Every published frame once, in order.
	w, err := wal.Open(wal.Options{Dir: cfg.WALPath()})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]uint64{}
	err = w.Iterate(1, func(seq uint64, f wal.Frame) error {
		df, err := schema.ViewDataFrame(f.Data)
		if err != nil {
			return err
		}
		got[string(df.Producer())] = append(got[string(df.Producer())], df.Seq())
		return nil
	})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	lost, dups := 0, 0
	for _, d := range drivers {
		l, du := ioCompare(d.published, got[d.name])
		if l+du > 0 {
			t.Errorf("%s: published %d frames, the WAL has %d: %d missing, %d extra or out of order", d.name, len(d.published), len(got[d.name]), l, du)
		}
		lost += l
		dups += du
	}
	if counted != float64(dropped) {
		lost += int(max(int64(dropped)-int64(counted), 0))
		t.Errorf("io-drop dropped %d frames, framebus_frames_dropped_total says %v", dropped, counted)
	}

	raises := strings.Count(logs.String(), "WAL commit failed; degraded")
	clears := strings.Count(logs.String(), "WAL writes work again; leaving degraded mode")
	if raises == 0 || raises != clears {
		t.Errorf("DEGRADED raised %d times, cleared %d times; want each raise cleared", raises, clears)
	}
	if !strings.Contains(logs.String(), "input/output error") {
		t.Errorf("the injected EIO does not reach the sidecar's log")
	}
	if pausedSeen < cycles {
		stalls++
	}
	if overflows.Load() > 0 {
		t.Errorf("the WAL memory queue passed max_memory_bytes in %d of %d samples", overflows.Load(), samples.Load())
	}
	chaosReport(t, chaosOutcome{Fault: "WAL commit I/O errors (EIO): 30% of commits, then all for a stretch", Injected: int(faults.injected.Load()),
		Lost: lost + int(overflows.Load()), Duplicates: dups, Stalls: stalls,
		Detail: fmt.Sprintf("%d cycles: DEGRADED raised %d and cleared %d times, PAUSE in each stretch, memory queue <= %d B in %d samples; %d commits, %d failed and retried; %d+%d block frames and %d drop-newest frames (%d dropped, all counted) in the WAL once, in order",
			cycles, raises, clears, maxMem, samples.Load(), st.Commits, st.CommitErrors, len(blockers[0].published), len(blockers[1].published), len(dropper.published), dropped)})
}

// ioCompare returns how many of published are missing from got, and how
// many frames of got are extra: a second copy, a frame never published
// (one the driver dropped), or one out of order.
func ioCompare(published, got []uint64) (lost, extra int) {
	pub := make(map[uint64]bool, len(published))
	for _, s := range published {
		pub[s] = true
	}
	in := make(map[uint64]bool, len(got))
	for i, s := range got {
		switch {
		case in[s] || !pub[s]:
			extra++
		case i > 0 && s <= got[i-1]:
			extra++
		}
		in[s] = true
	}
	for _, s := range published {
		if !in[s] {
			lost++
		}
	}
	return lost, extra
}

// droppedMetric sums framebus_frames_dropped_total for a producer.
func droppedMetric(t testing.TB, s *Sidecar, producer string) float64 {
	t.Helper()
	mfs, err := s.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != "framebus_frames_dropped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "producer" && l.GetValue() == producer {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}
