package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
	"github.com/framebus/framebus/wal"
)

var testBus atomic.Uint64

// testConfig is a configuration private to one test: its own directories,
// a unique name, no metrics listener.
func testConfig(t testing.TB, extra ...string) Config {
	t.Helper()
	base := t.TempDir()
	args := append([]string{"--name", fmt.Sprintf("unit-%d", testBus.Add(1)), "--shm-dir", base, "--run-dir", filepath.Join(base, "run"),
		"--wal-dir", filepath.Join(base, "wal"), "--metrics-addr", "off", "--http-addr", "off", "--ring-bytes", "1048576", "--max-rings", "8"}, extra...)
	cfg, _, err := LoadConfig(args, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func quietLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

// TestWALFailureDegradeAndRecover injects failing WAL commits under load:
// the sidecar raises DEGRADED, keeps frames in memory, raises PAUSE before
// its memory queue overflows (the driver then waits, frames stay in its
// ring), and when commits work again it clears both and every frame is in
// the WAL exactly once.
func TestWALFailureDegradeAndRecover(t *testing.T) {
	cfg := testConfig(t, "--max-memory-bytes", "262144", "--wal-flush-ms", "2")
	var failing atomic.Bool
	var failures atomic.Int64
	hooks := &wal.Hooks{BeforeCommit: func() error {
		if failing.Load() {
			failures.Add(1)
			return errors.New("injected I/O error")
		}
		return nil
	}}
	s, err := newSidecar(cfg, quietLogger(t), hooks)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pub, err := client.Dial(ctx, client.Config{Name: cfg.Name, RunDir: cfg.RunDir, Producer: "degrade"})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	failing.Store(true)
	var published atomic.Uint64
	done := make(chan error, 1)
	const total = 20000
	go func() {
		var e schema.Encoder
		for i := uint64(0); i < total; i++ {
			if err := pub.Publish(ctx, e.EncodeData(&schema.DataFrame{Producer: "degrade", Device: "d", Seq: i,
				Points: []schema.Point{{Tag: "t", Value: schema.F64(float64(i))}}})); err != nil {
				done <- err
				return
			}
			published.Add(1)
		}
		done <- nil
	}()
	seg := s.Segment()
	waitFor(t, "DEGRADED", 30*time.Second, func() bool { return seg.Flags()&shm.FlagDegraded != 0 })
	waitFor(t, "PAUSE", 30*time.Second, func() bool { return seg.Flags()&shm.FlagPause != 0 })
	// Paused, the driver stops making progress (it blocks per its policy).
	time.Sleep(200 * time.Millisecond)
	before := published.Load()
	time.Sleep(300 * time.Millisecond)
	if after := published.Load(); after-before > uint64(cfg.RingBytes/64) {
		t.Fatalf("the driver published %d frames while paused", after-before)
	}
	if before >= total {
		t.Fatal("the driver finished before the queue filled; the test did not exercise PAUSE")
	}
	if _, pend := s.wal.Pending(); pend > cfg.MaxMemoryBytes {
		t.Fatalf("memory queue holds %d bytes, over its %d-byte bound", pend, cfg.MaxMemoryBytes)
	}
	if failures.Load() == 0 {
		t.Fatal("no commit failed")
	}

	failing.Store(false)
	if err := <-done; err != nil {
		t.Fatalf("publish: %v", err)
	}
	if err := pub.WaitDurable(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "DEGRADED and PAUSE cleared", 30*time.Second, func() bool { return seg.Flags()&(shm.FlagDegraded|shm.FlagPause) == 0 })
	pub.Close()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	w, err := wal.Open(wal.Options{Dir: cfg.WALPath()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	next := uint64(0)
	err = w.Iterate(1, func(seq uint64, f wal.Frame) error {
		df, err := schema.ViewDataFrame(f.Data)
		if err != nil {
			return err
		}
		if df.Seq() != next {
			return fmt.Errorf("WAL seq %d holds frame %d, want %d", seq, df.Seq(), next)
		}
		next++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if next != total {
		t.Fatalf("WAL holds %d frames, want %d", next, total)
	}
}

// TestMetricsLint checks the exposition against Prometheus' naming rules
// after some traffic.
func TestMetricsLint(t *testing.T) {
	cfg := testConfig(t)
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pub, err := client.Dial(ctx, client.Config{Name: cfg.Name, RunDir: cfg.RunDir, Producer: "lint"})
	if err != nil {
		t.Fatal(err)
	}
	var e schema.Encoder
	for i := 0; i < 100; i++ {
		if err := pub.Publish(ctx, e.EncodeData(&schema.DataFrame{Producer: "lint", Seq: uint64(i)})); err != nil {
			t.Fatal(err)
		}
	}
	pub.Publish(ctx, []byte("garbage frame"))
	if err := pub.WaitDurable(ctx); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(s.m.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
	n, err := testutil.GatherAndCount(s.m.reg, "framebus_frames_rejected_total", "framebus_frames_published_total", "framebus_ring_used_bytes",
		"framebus_frames_dropped_total", "framebus_durable_lag_frames", "framebus_durable_lag_seconds", "framebus_batch_flush_duration_seconds")
	if err != nil || n < 7 {
		t.Fatalf("expected metrics missing: %d series, %v", n, err)
	}
	if got := testutil.ToFloat64(s.m.rejected); got != 1 {
		t.Fatalf("framebus_frames_rejected_total = %v, want 1", got)
	}
	pub.Close()
}
