package wal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 1024, FlushInterval: time.Hour, NoSync: true}
	w := openTest(t, opts)
	if w.LastSeq() != 0 || w.Durable() != 0 || w.FirstSeq() != 0 {
		t.Fatalf("empty WAL: LastSeq %d Durable %d FirstSeq %d, want 0 0 0", w.LastSeq(), w.Durable(), w.FirstSeq())
	}
	checkSeqs(t, seqs(t, w, 1), 1, 0)

	const n = 1000
	appendRange(t, w, 1, n)
	if w.LastSeq() != n || w.Durable() != 0 {
		t.Fatalf("before Flush: LastSeq %d Durable %d, want %d 0", w.LastSeq(), w.Durable(), n)
	}
	if f, _ := w.Pending(); f != n {
		t.Fatalf("Pending frames %d, want %d", f, n)
	}
	flush(t, w)
	if w.Durable() != n || w.FirstSeq() != 1 {
		t.Fatalf("after Flush: Durable %d FirstSeq %d, want %d 1", w.Durable(), w.FirstSeq(), n)
	}
	if f, b := w.Pending(); f != 0 || b != 0 {
		t.Fatalf("Pending after Flush: %d frames %d bytes, want 0 0", f, b)
	}
	check := func(w *WAL, last uint64) {
		t.Helper()
		checkSeqs(t, seqs(t, w, 0), 1, last)
		checkSeqs(t, seqs(t, w, 1), 1, last)
		checkSeqs(t, seqs(t, w, 500), 500, last)
		checkSeqs(t, seqs(t, w, 97), 97, last) // a frame in a segment of its own
		checkSeqs(t, seqs(t, w, last), last, last)
		checkSeqs(t, seqs(t, w, last+1), last+1, last)
		checkSeqs(t, seqs(t, w, last+1000), last+1, last)
	}
	check(w, n)
	st := w.Stats()
	if st.Segments < 100 || st.Commits != 1 || st.StoredBytes <= 0 || st.FileBytes <= 0 {
		t.Fatalf("Stats %+v: want ≥ 100 segments, 1 commit, stored and file bytes", st)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	w2 := openTest(t, opts)
	if w2.LastSeq() != n || w2.Durable() != n || w2.FirstSeq() != 1 {
		t.Fatalf("reopened: LastSeq %d Durable %d FirstSeq %d, want %d %d 1", w2.LastSeq(), w2.Durable(), w2.FirstSeq(), n, n)
	}
	if st2 := w2.Stats(); st2.StoredBytes != st.StoredBytes || st2.Segments != st.Segments {
		t.Fatalf("reopened: %d stored bytes in %d segments, before close %d in %d", st2.StoredBytes, st2.Segments, st.StoredBytes, st.Segments)
	}
	check(w2, n)
	last, err := w2.Append(frameFor(n + 1))
	if err != nil || last != n+1 {
		t.Fatalf("Append after reopen = %d, %v; want %d", last, err, n+1)
	}
	appendRange(t, w2, n+2, n+300)
	flush(t, w2)
	check(w2, n+300)
	if err := w2.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(dir)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.FirstSeq != 1 || rep.LastSeq != n+300 || rep.Frames != n+300 {
		t.Fatalf("Verify report %+v, want frames 1 to %d", rep, n+300)
	}
}

// A partly committed segment is rewritten by later commits until it is
// full; every intermediate state must read back exactly.
func TestOpenSegmentAcrossCommits(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, FlushInterval: time.Hour, NoSync: true}
	w := openTest(t, opts)
	for seq := uint64(1); seq <= 200; seq++ {
		appendRange(t, w, seq, seq)
		if seq%7 == 0 {
			flush(t, w)
			checkSeqs(t, seqs(t, w, 1), 1, seq)
		}
	}
	flush(t, w)
	checkSeqs(t, seqs(t, w, 150), 150, 200)
	w.Close()
	if _, err := Verify(dir); err != nil {
		t.Fatal(err)
	}
	w = openTest(t, opts)
	checkSeqs(t, seqs(t, w, 1), 1, 200)
}

func TestPositionsCommittedWithFrames(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var commits []Commit
	opts := Options{Dir: dir, FlushInterval: time.Hour, NoSync: true, OnCommit: func(c Commit) {
		mu.Lock()
		c.Positions = maps.Clone(c.Positions)
		commits = append(commits, c)
		mu.Unlock()
	}}
	w := openTest(t, opts)
	appendRange(t, w, 1, 10)
	w.SetPosition("slot1/gen1", 100)
	w.SetPosition("slot2/gen1", 50)
	w.SetPosition("slot3/gen1", 7)
	flush(t, w)
	want := map[string]uint64{"slot1/gen1": 100, "slot2/gen1": 50, "slot3/gen1": 7}
	if got := w.Positions(); !maps.Equal(got, want) {
		t.Fatalf("Positions %v, want %v", got, want)
	}

	// Not committed: more frames, a moved position, a deleted one.
	appendRange(t, w, 11, 15)
	w.SetPosition("slot1/gen1", 150)
	w.DeletePosition("slot2/gen1")
	if got := w.Positions(); !maps.Equal(got, want) {
		t.Fatalf("Positions before commit %v, want %v", got, want)
	}
	w.crash()

	w = openTest(t, opts)
	if w.LastSeq() != 10 || w.Durable() != 10 {
		t.Fatalf("after crash: LastSeq %d Durable %d, want 10 10", w.LastSeq(), w.Durable())
	}
	if got := w.Positions(); !maps.Equal(got, want) {
		t.Fatalf("after crash: Positions %v, want %v", got, want)
	}
	checkSeqs(t, seqs(t, w, 1), 1, 10)

	// Resume: the driver re-drains from the committed position.
	appendRange(t, w, 11, 15)
	w.SetPosition("slot1/gen1", 150)
	w.DeletePosition("slot2/gen1")
	flush(t, w)
	// A commit of positions only.
	w.SetPosition("slot3/gen1", 8)
	flush(t, w)
	w.Close()

	mu.Lock()
	defer mu.Unlock()
	if len(commits) != 3 {
		t.Fatalf("%d commits, want 3: %+v", len(commits), commits)
	}
	c := commits[1]
	if c.FirstSeq != 11 || c.LastSeq != 15 || c.Frames != 5 || !maps.Equal(c.Positions, map[string]uint64{"slot1/gen1": 150}) {
		t.Fatalf("commit after restart %+v, want frames 11 to 15 with slot1/gen1 at 150", c)
	}
	c = commits[2]
	if c.FirstSeq != 16 || c.LastSeq != 15 || c.Frames != 0 || !maps.Equal(c.Positions, map[string]uint64{"slot3/gen1": 8}) {
		t.Fatalf("positions-only commit %+v, want FirstSeq 16 > LastSeq 15 and slot3/gen1 at 8", c)
	}

	w = openTest(t, opts)
	want = map[string]uint64{"slot1/gen1": 150, "slot3/gen1": 8}
	if got := w.Positions(); !maps.Equal(got, want) {
		t.Fatalf("reopened: Positions %v, want %v", got, want)
	}
	checkSeqs(t, seqs(t, w, 1), 1, 15)
}

func TestGroupCommit(t *testing.T) {
	const interval = 5 * time.Millisecond
	w := openTest(t, Options{FlushInterval: interval, NoSync: true})
	f := Frame{Kind: 1, Data: make([]byte, 100)}
	// Append one frame at a time for 100 ms.
	start := time.Now()
	n := 0
	for time.Since(start) < 100*time.Millisecond {
		for range 100 {
			_, err := w.Append(f)
			for errors.Is(err, ErrQueueFull) { // commits fell behind
				time.Sleep(time.Millisecond)
				_, err = w.Append(f)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		n += 100
	}
	flush(t, w)
	elapsed := time.Since(start)
	st := w.Stats()
	// Timer commits start at least FlushInterval after the first frame they
	// hold, so they are at least FlushInterval apart; Flush adds one.
	limit := uint64(elapsed/interval) + 2
	t.Logf("%d Appends in %v: %d commits (limit %d), %.0f frames a commit", n, elapsed, st.Commits, limit, float64(n)/float64(st.Commits))
	if st.Commits < 2 || st.Commits > limit {
		t.Fatalf("%d commits in %v, want 2 to %d", st.Commits, elapsed, limit)
	}
	if st.Durable != uint64(n) {
		t.Fatalf("Durable %d, want %d", st.Durable, n)
	}
}

func TestFlushIntervalCommits(t *testing.T) {
	var commits atomic.Int32
	w := openTest(t, Options{FlushInterval: 20 * time.Millisecond, NoSync: true, OnCommit: func(Commit) { commits.Add(1) }})
	start := time.Now()
	appendRange(t, w, 1, 3)
	waitFor(t, "the timed commit", func() bool { return w.Durable() == 3 })
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("committed after %v, before FlushInterval", d)
	}
	time.Sleep(50 * time.Millisecond)
	if c := commits.Load(); c != 1 {
		t.Fatalf("%d commits, want 1 (an idle WAL must not commit)", c)
	}
}

func TestByteCapCommitsEarly(t *testing.T) {
	const capBytes = 64 << 10
	w := openTest(t, Options{FlushInterval: time.Hour, MaxBatchBytes: capBytes, NoSync: true})
	f := Frame{Kind: 1, Data: make([]byte, 1024)}
	const n = 1000 // ~1 MiB: ~16 batches' worth
	for i := 0; i < n; i++ {
		if _, err := w.Append(f); err != nil {
			t.Fatal(err)
		}
	}
	// Without Flush and with a 1 h interval, only the byte cap commits:
	// everything but less than one batch becomes durable.
	waitFor(t, "the byte cap to commit", func() bool {
		_, b := w.Pending()
		return b < capBytes
	})
	st := w.Stats()
	if st.Commits < 2 || st.Durable < n-capBytes/1030 {
		t.Fatalf("Stats %+v: want ≥ 2 commits and Durable ≥ %d", st, n-capBytes/1030)
	}
	t.Logf("%d commits, %d of %d durable", st.Commits, st.Durable, n)
}

func TestCommitFailureDegrade(t *testing.T) {
	errDisk := errors.New("disk on fire")
	var failing atomic.Bool
	var onErr atomic.Int32
	var mu sync.Mutex
	var commits []Commit
	w := openTest(t, Options{
		FlushInterval:  2 * time.Millisecond,
		MaxMemoryBytes: 64 << 10,
		NoSync:         true,
		Hooks: &Hooks{BeforeCommit: func() error {
			if failing.Load() {
				return errDisk
			}
			return nil
		}},
		OnError: func(err error) {
			if !errors.Is(err, ErrCommit) || !errors.Is(err, errDisk) {
				t.Errorf("OnError(%v): want ErrCommit wrapping the hook's error", err)
			}
			onErr.Add(1)
		},
		OnCommit: func(c Commit) {
			mu.Lock()
			commits = append(commits, c)
			mu.Unlock()
		},
	})
	appendRange(t, w, 1, 100)
	flush(t, w)

	failing.Store(true)
	seq := uint64(101)
	for {
		_, err := w.Append(frameFor(seq))
		if errors.Is(err, ErrQueueFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seq++
	}
	last := seq - 1
	frames, bytes := w.Pending()
	if frames != int(last-100) || bytes > 64<<10 || bytes+int64(len(frameFor(seq).Data))+entryHeaderSize <= 64<<10 {
		t.Fatalf("queue full with %d frames, %d bytes; want %d frames and the next frame not fitting in 64 KiB", frames, bytes, last-100)
	}
	// A refused Append queues nothing.
	if f2, b2 := w.Pending(); f2 != frames || b2 != bytes || w.LastSeq() != last {
		t.Fatalf("after ErrQueueFull: %d frames %d bytes, LastSeq %d; want %d %d %d", f2, b2, w.LastSeq(), frames, bytes, last)
	}
	waitFor(t, "two failed commits", func() bool { return onErr.Load() >= 2 })
	if st := w.Stats(); !st.Failing || st.CommitErrors < 2 || st.Durable != 100 {
		t.Fatalf("degraded Stats %+v: want Failing, ≥ 2 commit errors, Durable 100", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	err := w.Flush(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errDisk) {
		t.Fatalf("Flush while failing = %v, want the deadline joined with the commit error", err)
	}

	failing.Store(false)
	flush(t, w)
	if st := w.Stats(); st.Failing || st.Durable != last {
		t.Fatalf("recovered Stats %+v: want not Failing and Durable %d", st, last)
	}
	// Every frame committed exactly once, in order.
	checkSeqs(t, seqs(t, w, 1), 1, last)
	mu.Lock()
	defer mu.Unlock()
	next := uint64(1)
	for _, c := range commits {
		if c.FirstSeq != next || c.LastSeq < c.FirstSeq-1 {
			t.Fatalf("commit %d–%d, want it to start at %d", c.FirstSeq, c.LastSeq, next)
		}
		next = c.LastSeq + 1
	}
	if next != last+1 {
		t.Fatalf("commits end at %d, want %d", next-1, last)
	}
}

func TestCloseIdempotent(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir, FlushInterval: time.Hour, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	appendRange(t, w, 1, 10)
	w.SetPosition("a", 1)
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := w.Append(frameFor(11)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close = %v, want ErrClosed", err)
	}
	if err := w.Flush(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Flush after Close = %v, want ErrClosed", err)
	}
	if err := w.Iterate(1, func(uint64, Frame) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Iterate after Close = %v, want ErrClosed", err)
	}
	w.SetPosition("b", 2) // ignored, no panic
	// Close committed what was queued.
	w = openTest(t, Options{Dir: dir, NoSync: true})
	if w.LastSeq() != 10 || !maps.Equal(w.Positions(), map[string]uint64{"a": 1}) {
		t.Fatalf("after Close and reopen: LastSeq %d, Positions %v; want 10, a=1", w.LastSeq(), w.Positions())
	}
}

func TestCloseReturnsFinalCommitError(t *testing.T) {
	errDisk := errors.New("disk gone")
	w, err := Open(Options{Dir: t.TempDir(), FlushInterval: time.Hour, NoSync: true,
		Hooks: &Hooks{BeforeCommit: func() error { return errDisk }}})
	if err != nil {
		t.Fatal(err)
	}
	appendRange(t, w, 1, 3)
	if err := w.Close(); !errors.Is(err, ErrCommit) || !errors.Is(err, errDisk) {
		t.Fatalf("Close = %v, want ErrCommit wrapping the hook's error", err)
	}
}

func TestIterateStopsOnError(t *testing.T) {
	w := openTest(t, Options{SegmentBytes: 1024, NoSync: true})
	appendRange(t, w, 1, 500)
	flush(t, w)
	stop := errors.New("stop")
	var n int
	err := w.Iterate(1, func(seq uint64, f Frame) error {
		if n++; seq == 321 {
			return stop
		}
		return nil
	})
	if err != stop || n != 321 {
		t.Fatalf("Iterate = %v after %d frames, want the callback's error after 321", err, n)
	}
}

func TestLargeFrames(t *testing.T) {
	w := openTest(t, Options{SegmentBytes: 1024, MaxMemoryBytes: 1 << 20, NoSync: true})
	big := Frame{Kind: 2, Data: make([]byte, 300<<10)}
	for i := range big.Data {
		big.Data[i] = byte(i * 7)
	}
	if _, err := w.Append(Frame{Data: make([]byte, 1<<20)}); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("Append of a frame over MaxMemoryBytes = %v, want ErrFrameTooLarge", err)
	}
	if _, err := w.Append(Frame{Kind: 1, Data: []byte("a")}, big, Frame{Kind: 3}, big); err != nil {
		t.Fatal(err)
	}
	flush(t, w)
	var got []Frame
	err := w.Iterate(1, func(seq uint64, f Frame) error {
		got = append(got, Frame{Kind: f.Kind, Data: append([]byte(nil), f.Data...)})
		return nil
	})
	if err != nil || len(got) != 4 {
		t.Fatalf("Iterate: %d frames, %v; want 4", len(got), err)
	}
	if string(got[0].Data) != "a" || got[2].Kind != 3 || len(got[2].Data) != 0 || string(got[1].Data) != string(big.Data) || string(got[3].Data) != string(big.Data) {
		t.Fatal("frames read back differ")
	}
}

func TestOpenLocked(t *testing.T) {
	dir := t.TempDir()
	openTest(t, Options{Dir: dir, NoSync: true})
	start := time.Now()
	_, err := Open(Options{Dir: dir, LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("second Open took %v", d)
	}
}

func TestOptionsValidate(t *testing.T) {
	var o Options
	o.Dir = "x"
	if err := o.Validate(); err != nil {
		t.Fatalf("zero Options with Dir: %v", err)
	}
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if o.FlushInterval != 10*time.Millisecond || o.MaxBatchBytes != 8<<20 || o.SegmentBytes != 8<<10 ||
		o.MaxBytes != 8<<30 || o.MaxMemoryBytes != 64<<20 || o.MaxAge != 0 {
		t.Fatalf("defaults %+v", o)
	}
	bad := Options{FlushInterval: -1, MaxBatchBytes: -1, SegmentBytes: 100, MaxBytes: 1000, MaxAge: -time.Second, MaxMemoryBytes: -5, LockTimeout: -1}
	err := bad.Validate()
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("Validate = %v, want ErrConfig", err)
	}
	for _, field := range []string{"Dir", "FlushInterval", "MaxBatchBytes", "SegmentBytes", "MaxBytes", "MaxAge", "MaxMemoryBytes", "LockTimeout"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("Validate error does not name %s: %v", field, err)
		}
	}
	if _, err := Open(bad); !errors.Is(err, ErrConfig) {
		t.Fatalf("Open with bad options = %v, want ErrConfig", err)
	}
}

func TestSetPositionRejectsBadSource(t *testing.T) {
	w := openTest(t, Options{NoSync: true})
	defer func() {
		if recover() == nil {
			t.Fatal("SetPosition with an empty source did not panic")
		}
	}()
	w.SetPosition("", 1)
}

// Appenders, position setters, flushers and readers at once, for -race.
func TestConcurrentUse(t *testing.T) {
	w := openTest(t, Options{FlushInterval: time.Millisecond, SegmentBytes: 2048, NoSync: true})
	const producers, per = 4, 500
	var wg sync.WaitGroup
	var appended sync.Map // seq → producer<<32 | index
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				d := []byte{byte(p), byte(i), byte(i >> 8)}
				seq, err := w.Append(Frame{Kind: 1, Data: d})
				if err != nil {
					t.Error(err)
					return
				}
				appended.Store(seq, d)
				w.SetPosition("p"+string(rune('0'+p)), uint64(i))
				if i%100 == 0 {
					if err := w.Flush(context.Background()); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			prev := uint64(0)
			err := w.Iterate(1, func(seq uint64, f Frame) error {
				if seq != prev+1 {
					t.Errorf("Iterate: seq %d after %d", seq, prev)
				}
				prev = seq
				return nil
			})
			if err != nil {
				t.Error(err)
			}
			_ = w.Stats()
			_ = w.Positions()
		}
	}()
	wg.Wait()
	flush(t, w)
	close(stop)
	readers.Wait()
	n := 0
	err := w.Iterate(1, func(seq uint64, f Frame) error {
		n++
		d, ok := appended.Load(seq)
		if !ok || string(d.([]byte)) != string(f.Data) {
			t.Fatalf("frame %d differs from what was appended", seq)
		}
		return nil
	})
	if err != nil || n != producers*per {
		t.Fatalf("Iterate: %d frames, %v; want %d", n, err, producers*per)
	}
	for p := range producers {
		if pos := w.Positions()["p"+string(rune('0'+p))]; pos != per-1 {
			t.Fatalf("position of producer %d = %d, want %d", p, pos, per-1)
		}
	}
}

func TestAppendAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	w := openTest(t, Options{FlushInterval: time.Hour, NoSync: true})
	fs := make([]Frame, 64)
	for i := range fs {
		fs[i] = Frame{Kind: 1, Data: make([]byte, 100)}
	}
	// Warm up: fill and commit enough segments to stock the free list.
	for range 200 {
		if _, err := w.Append(fs...); err != nil {
			t.Fatal(err)
		}
	}
	flush(t, w)
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := w.Append(fs...); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Append of 64 frames: %.1f allocations, want 0", allocs)
	}
}

// TestAppendAllocsFromOpen: a WAL's free list is stocked at Open
// (fillFree), so even its first appends allocate no segment buffer, whose
// fresh pages would each take a page fault on the drain loop's path.
func TestAppendAllocsFromOpen(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	w := openTest(t, Options{FlushInterval: time.Hour, MaxBatchBytes: 1 << 20, NoSync: true})
	if want := w.fillCount(); len(w.mu.free) != want || want < 128 {
		t.Fatalf("free list after Open: %d buffers, want %d (at least 128)", len(w.mu.free), want)
	}
	fs := make([]Frame, 64)
	for i := range fs {
		fs[i] = Frame{Kind: 1, Data: make([]byte, 100)}
	}
	// 100 appends of 64 frames, from the first, need about 85 segments,
	// fewer than the free list holds; nothing is committed meanwhile. A
	// new segment costs 2 allocations (about 185 in all with the list
	// empty); what remains is the list of full segments growing (about 13).
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 100 {
		if _, err := w.Append(fs...); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if n := after.Mallocs - before.Mallocs; n > 40 {
		t.Fatalf("100 appends of 64 frames into a fresh WAL: %d allocations, want at most 40 (no new segment buffers)", n)
	}
}

// When a backlog is committed in several bounded transactions, each
// position is committed with (or after) the frames appended before it was
// set, never ahead of them.
func TestPositionsNeverAheadOfFrames(t *testing.T) {
	const capBytes = 16 << 10
	var failing atomic.Bool
	failing.Store(true)
	var mu sync.Mutex
	var commits []Commit
	w := openTest(t, Options{
		FlushInterval: time.Millisecond,
		MaxBatchBytes: capBytes,
		NoSync:        true,
		Hooks: &Hooks{BeforeCommit: func() error {
			if failing.Load() {
				return errors.New("injected")
			}
			return nil
		}},
		OnCommit: func(c Commit) {
			mu.Lock()
			c.Positions = maps.Clone(c.Positions)
			commits = append(commits, c)
			mu.Unlock()
		},
	})
	// Each position's value is the LastSeq when it was set.
	for seq := uint64(1); seq <= 1000; seq += 10 {
		appendRange(t, w, seq, seq+9)
		w.SetPosition("ring"+string(rune('a'+seq%3)), seq+9)
	}
	waitFor(t, "a failed commit", func() bool { return w.Stats().CommitErrors > 0 })
	failing.Store(false)
	flush(t, w)

	mu.Lock()
	defer mu.Unlock()
	if len(commits) < 5 {
		t.Fatalf("%d commits for ~160 KiB with MaxBatchBytes 16 KiB, want several", len(commits))
	}
	next := uint64(1)
	for _, c := range commits {
		if c.FirstSeq != next {
			t.Fatalf("commit starts at %d, want %d", c.FirstSeq, next)
		}
		if c.Bytes > capBytes+DefaultSegmentBytes+3006 {
			t.Fatalf("commit of %d bytes, over MaxBatchBytes %d plus a segment", c.Bytes, capBytes)
		}
		for src, pos := range c.Positions {
			if pos > c.LastSeq {
				t.Fatalf("commit %d–%d holds position %s = %d, ahead of its frames", c.FirstSeq, c.LastSeq, src, pos)
			}
		}
		next = c.LastSeq + 1
	}
	want := map[string]uint64{"ringa": 990, "ringb": 1000, "ringc": 980}
	if got := w.Positions(); next != 1001 || !maps.Equal(got, want) {
		t.Fatalf("after recovery: committed up to %d, positions %v; want 1000, %v", next-1, got, want)
	}
	checkSeqs(t, seqs(t, w, 1), 1, 1000)
}

// A crash at any moment leaves, for every source, exactly the frames up to
// its committed position: AppendFrom commits frames and position together,
// and no commit (timed, byte-capped or backlogged) splits a call.
func TestCrashConsistencyAppendFrom(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, FlushInterval: time.Millisecond, MaxBatchBytes: 8 << 10, NoSync: true}
	const sources = 3
	next := make([]uint64, sources) // per-source frames appended so far, as committed
	for round := range 5 {
		w := openTest(t, opts)
		// The committed state: every source's frames 0 … pos-1, once each.
		pos := w.Positions()
		counts := make([]uint64, sources)
		err := w.Iterate(1, func(seq uint64, f Frame) error {
			src, idx := int(f.Data[0]), binary.LittleEndian.Uint64(f.Data[1:])
			if idx != counts[src] {
				return fmt.Errorf("round %d: source %d frame %d at seq %d, want frame %d", round, src, idx, seq, counts[src])
			}
			counts[src]++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for src := range sources {
			if p := pos[sourceName(src)]; p != counts[src] {
				t.Fatalf("round %d: source %d has position %d and %d frames committed", round, src, p, counts[src])
			}
			next[src] = counts[src]
		}
		// Append from all sources for a while, then crash.
		rng := rand.New(rand.NewPCG(uint64(round), 7))
		deadline := time.Now().Add(30 * time.Millisecond)
		for time.Now().Before(deadline) {
			src := rng.IntN(sources)
			n := 1 + rng.IntN(200)
			fs := make([]Frame, n)
			for i := range fs {
				d := make([]byte, 9+rng.IntN(150))
				d[0] = byte(src)
				binary.LittleEndian.PutUint64(d[1:], next[src]+uint64(i))
				fs[i] = Frame{Kind: 1, Data: d}
			}
			_, err := w.AppendFrom(sourceName(src), next[src]+uint64(n), fs...)
			if errors.Is(err, ErrQueueFull) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			next[src] += uint64(n)
		}
		st := w.Stats()
		w.crash()
		t.Logf("round %d: %d commits, crashed with %d frames pending", round, st.Commits, st.PendingFrames)
	}
}

func sourceName(src int) string { return "slot" + strconv.Itoa(src) + "/gen1" }

// TestAppendFromSinceCountsFromSince: frames that waited before the append
// are committed FlushInterval after since, not after the append; frames
// appended without it wait the whole interval; a since in the future
// counts as now. The commit must also be timely: within 100 ms of due.
func TestAppendFromSinceCountsFromSince(t *testing.T) {
	const interval = 600 * time.Millisecond
	w := openTest(t, Options{FlushInterval: interval, NoSync: true})
	f := Frame{Kind: 1, Data: []byte("frame")}

	start := time.Now()
	if _, err := w.AppendFromSince("src", 8, start.Add(-interval+50*time.Millisecond), f); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the commit of the frame that had waited", func() bool { return w.Durable() == 1 })
	if d := time.Since(start); d < 40*time.Millisecond || d > 150*time.Millisecond {
		t.Fatalf("frame that waited %v before the append committed %v after it, want about 50 ms", interval-50*time.Millisecond, d)
	}
	if got := w.Positions()["src"]; got != 8 {
		t.Fatalf("position %d, want 8", got)
	}

	start = time.Now()
	if _, err := w.AppendFromSince("src", 16, start.Add(time.Hour), f); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the commit of the frame with a future since", func() bool { return w.Durable() == 2 })
	if d := time.Since(start); d < interval-10*time.Millisecond || d > interval+100*time.Millisecond {
		t.Fatalf("frame with a since in the future committed %v after its append, want %v", d, interval)
	}

	// An older since than the pending oldest moves the commit earlier.
	start = time.Now()
	if _, err := w.AppendFrom("src", 24, f); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if _, err := w.AppendFromSince("src", 32, time.Now().Add(-interval+50*time.Millisecond), f); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the commit moved earlier", func() bool { return w.Durable() == 4 })
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Fatalf("commit %v after the first append, want about 70 ms: the older since did not move it", d)
	}
}

// TestCommitStartsOnTime: a timed commit starts when it is due: over many
// commits, the median from append to durable is within 1 ms of
// FlushInterval plus the commit itself. (The writer sleeps the last stretch
// with nanosleep because Go timers can fire a millisecond late when the
// runtime is idle; on an idle test machine they are rarely that late, so
// this bound catches a commit that waits for the wrong thing, not the
// timers' tail: the sidecar latency benchmark in docs/benchmarks.md does.)
func TestCommitStartsOnTime(t *testing.T) {
	const interval = 3 * time.Millisecond
	done := make(chan time.Duration, 1)
	w := openTest(t, Options{FlushInterval: interval, NoSync: true, OnCommit: func(c Commit) { done <- c.Duration }})
	f := Frame{Kind: 1, Data: []byte("frame")}
	var late []time.Duration
	for range 60 {
		start := time.Now()
		if _, err := w.Append(f); err != nil {
			t.Fatal(err)
		}
		commit := <-done
		late = append(late, time.Since(start)-interval-commit)
	}
	slices.Sort(late)
	t.Logf("durable after FlushInterval + commit: median %v late, max %v", late[len(late)/2], late[len(late)-1])
	if m := late[len(late)/2]; m > time.Millisecond {
		t.Fatalf("median commit %v later than due", m)
	}
}

// TestOpenAfterReplaceWhileWaiting: a WAL file replaced while Open waited
// for its lock (framebus wal compact renames the new file over the old one
// before it lets go of the old one's lock) is opened again, so that the
// sidecar's writes go into the file at the path, not into the replaced one.
func TestOpenAfterReplaceWhileWaiting(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, FlushInterval: time.Hour, NoSync: true, LockTimeout: 10 * time.Second}
	w := openTest(t, opts)
	appendRange(t, w, 1, 10)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, FileName)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".new", data, 0o640); err != nil {
		t.Fatal(err)
	}
	old, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := lockFile(old, true, time.Second); err != nil {
		t.Fatal(err)
	}
	opened := make(chan *WAL, 1)
	go func() {
		w, err := Open(opts)
		if err != nil {
			t.Error(err)
		}
		opened <- w
	}()
	time.Sleep(100 * time.Millisecond) // Open waits for the lock
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	old.Close() // lets go of the lock on the replaced file
	w = <-opened
	if w == nil {
		t.FailNow()
	}
	appendRange(t, w, 11, 20)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w = openTest(t, opts)
	checkSeqs(t, seqs(t, w, 1), 1, 20)
}
