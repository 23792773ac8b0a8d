package sidecar

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
	"github.com/framebus/framebus/wal"
)

// TestClientPolicies: while the bus pushes back (its WAL fails, so its
// queue fills, PAUSE goes up and the ring fills), PolicyError returns
// ErrBackpressure, PolicyDropNewest drops and counts, and PolicyBlock waits
// for its context. Afterwards exactly the frames accepted are in the WAL.
func TestClientPolicies(t *testing.T) {
	cfg := testConfig(t, "--max-memory-bytes", "131072", "--ring-bytes", "65536", "--wal-flush-ms", "2")
	var failing atomic.Bool
	s, err := newSidecar(cfg, quietLogger(t), &wal.Hooks{BeforeCommit: func() error {
		if failing.Load() {
			return errors.New("injected I/O error")
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dial := func(name string, pol client.Policy) *client.Publisher {
		p, err := client.Dial(ctx, client.Config{Name: cfg.Name, RunDir: cfg.RunDir, Producer: name, Policy: pol})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	perr, pdrop, pblock := dial("error", client.PolicyError), dial("drop", client.PolicyDropNewest), dial("block", client.PolicyBlock)
	failing.Store(true)
	var e schema.Encoder
	frame := func(name string, seq uint64) []byte {
		return e.EncodeData(&schema.DataFrame{Producer: name, Seq: seq, Points: []schema.Point{{Tag: "t", Value: schema.U64(seq)}}})
	}
	// Publish until each policy pushes back.
	var seqErr, seqDrop uint64
	for deadline := time.Now().Add(30 * time.Second); ; {
		if time.Now().After(deadline) {
			t.Fatal("the bus never pushed back")
		}
		err := perr.Publish(ctx, frame("error", seqErr))
		if errors.Is(err, client.ErrBackpressure) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seqErr++
	}
	for deadline := time.Now().Add(30 * time.Second); pdrop.Stats().Dropped == 0; {
		if time.Now().After(deadline) {
			t.Fatal("drop-newest never dropped")
		}
		before := pdrop.Stats().Dropped
		if err := pdrop.Publish(ctx, frame("drop", seqDrop)); err != nil {
			t.Fatal(err)
		}
		if pdrop.Stats().Dropped == before {
			seqDrop++
		}
	}
	if s.Segment().Flags()&shm.FlagPause == 0 && s.Segment().RingFlags(pdrop.Slot())&shm.FlagPause == 0 {
		t.Log("pushed back by a full ring without a PAUSE flag")
	}
	// The drops are visible in the sidecar's metrics, by reason.
	var dropped float64
	mfs, err := s.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "framebus_frames_dropped_total" {
			for _, m := range mf.GetMetric() {
				dropped += m.GetCounter().GetValue()
			}
		}
	}
	if uint64(dropped) != pdrop.Stats().Dropped {
		t.Fatalf("framebus_frames_dropped_total sums to %v, the driver dropped %d", dropped, pdrop.Stats().Dropped)
	}
	bctx, bcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err = pblock.Publish(bctx, frame("block", 0))
	bcancel()
	if !errors.Is(err, context.DeadlineExceeded) && err != nil {
		t.Fatalf("PolicyBlock while pushed back: %v, want the context's deadline (or success)", err)
	}
	blocked := uint64(0)
	if err == nil {
		blocked = 1
	}

	failing.Store(false)
	for _, p := range []*client.Publisher{perr, pdrop, pblock} {
		if err := p.WaitDurable(ctx); err != nil {
			t.Fatal(err)
		}
	}
	perr.Close()
	pdrop.Close()
	pblock.Close()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	w, err := wal.Open(wal.Options{Dir: cfg.WALPath()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	got := map[string]uint64{}
	err = w.Iterate(1, func(seq uint64, f wal.Frame) error {
		df, err := schema.ViewDataFrame(f.Data)
		if err != nil {
			return err
		}
		name := string(df.Producer())
		if df.Seq() != got[name] {
			return errors.New(name + ": frames out of order or missing")
		}
		got[name]++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got["error"] != seqErr || got["drop"] != seqDrop || got["block"] != blocked {
		t.Fatalf("WAL holds %v; accepted error=%d drop=%d block=%d", got, seqErr, seqDrop, blocked)
	}
	if st := pdrop.Stats(); st.Published != seqDrop || st.Dropped == 0 {
		t.Fatalf("drop-newest stats %+v, accepted %d", st, seqDrop)
	}
}
