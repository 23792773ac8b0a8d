package wal

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// wantCursors fails the test unless w's cursors are exactly want.
func wantCursors(tb testing.TB, w *WAL, want map[string]CursorInfo) {
	tb.Helper()
	if got := w.Cursors(); !maps.Equal(got, want) {
		tb.Fatalf("Cursors() = %v, want %v", got, want)
	}
	for name, ci := range want {
		if got, ok := w.Cursor(name); !ok || got != ci {
			tb.Fatalf("Cursor(%q) = %+v, %v; want %+v, true", name, got, ok, ci)
		}
	}
}

// setCursor calls SetCursor and fails the test on error.
func setCursor(tb testing.TB, w *WAL, name string, acked uint64) {
	tb.Helper()
	if err := w.SetCursor(name, acked); err != nil {
		tb.Fatalf("SetCursor(%q, %d): %v", name, acked, err)
	}
}

func TestCursorRoundTrip(t *testing.T) {
	w := openTest(t, Options{SegmentBytes: 1024, FlushInterval: time.Millisecond, NoSync: true})
	if _, ok := w.Cursor("a"); ok {
		t.Fatal("Cursor of an empty WAL found a cursor")
	}
	wantCursors(t, w, map[string]CursorInfo{})
	// Acked 0 (nothing processed) is valid even in an empty WAL.
	setCursor(t, w, "zero", 0)
	appendRange(t, w, 1, 100)
	flush(t, w)

	commits := w.Stats().Commits
	setCursor(t, w, "a", 10)
	setCursor(t, w, "b", 100)
	wantCursors(t, w, map[string]CursorInfo{"zero": {}, "a": {Acked: 10}, "b": {Acked: 100}})
	// SetCursor alone makes the WAL dirty: a commit follows within
	// FlushInterval without a Flush.
	waitFor(t, "a commit of the cursors", func() bool { return w.Stats().Commits > commits })

	// Cursors returns a copy.
	m := w.Cursors()
	m["a"] = CursorInfo{Acked: 99}
	delete(m, "b")
	wantCursors(t, w, map[string]CursorInfo{"zero": {}, "a": {Acked: 10}, "b": {Acked: 100}})

	w.DeleteCursor("a")
	w.DeleteCursor("unknown")  // nothing to do
	w.DeleteCursor("bad/name") // no cursor can have it
	if _, ok := w.Cursor("a"); ok {
		t.Fatal("Cursor found a deleted cursor")
	}
	wantCursors(t, w, map[string]CursorInfo{"zero": {}, "b": {Acked: 100}})
	flush(t, w)
	wantCursors(t, w, map[string]CursorInfo{"zero": {}, "b": {Acked: 100}})

	// A deleted name can be used again: a new cursor, which may start lower.
	setCursor(t, w, "b", 100)
	w.DeleteCursor("b")
	setCursor(t, w, "b", 5)
	wantCursors(t, w, map[string]CursorInfo{"zero": {}, "b": {Acked: 5}})
	flush(t, w)
	wantCursors(t, w, map[string]CursorInfo{"zero": {}, "b": {Acked: 5}})
}

func TestCursorPersistence(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 1024, FlushInterval: time.Hour, NoSync: true}
	w := openTest(t, opts)
	appendRange(t, w, 1, 100)
	setCursor(t, w, "a", 5)
	setCursor(t, w, "b", 50)
	setCursor(t, w, "c", 100)
	// Flush commits the cursor changes: they survive a crash after it.
	flush(t, w)
	w.crash()

	w = openTest(t, opts)
	wantCursors(t, w, map[string]CursorInfo{"a": {Acked: 5}, "b": {Acked: 50}, "c": {Acked: 100}})
	w.DeleteCursor("a")
	setCursor(t, w, "b", 60)
	if err := w.Close(); err != nil { // Close commits them
		t.Fatal(err)
	}

	w = openTest(t, opts)
	wantCursors(t, w, map[string]CursorInfo{"b": {Acked: 60}, "c": {Acked: 100}})
	// Changes not committed are lost in a crash, as frames are.
	setCursor(t, w, "b", 70)
	w.DeleteCursor("c")
	w.crash()

	w = openTest(t, opts)
	wantCursors(t, w, map[string]CursorInfo{"b": {Acked: 60}, "c": {Acked: 100}})
	setCursor(t, w, "b", 80)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.SetCursor("b", 90); !errors.Is(err, ErrClosed) {
		t.Fatalf("SetCursor after Close = %v, want ErrClosed", err)
	}
	w.DeleteCursor("b") // ignored after Close
	w = openTest(t, opts)
	wantCursors(t, w, map[string]CursorInfo{"b": {Acked: 80}, "c": {Acked: 100}})
}

func TestCursorValidation(t *testing.T) {
	w := openTest(t, Options{FlushInterval: time.Hour, NoSync: true})
	appendRange(t, w, 1, 10)
	for _, name := range []string{
		"",
		strings.Repeat("x", 129),
		"a/b",
		"/",
		"tab\there",
		"nl\n",
		"del\x7f",
		"nul\x00",
		"é",
	} {
		if err := w.SetCursor(name, 1); !errors.Is(err, ErrCursor) {
			t.Errorf("SetCursor(%q) = %v, want ErrCursor", name, err)
		}
	}
	for _, name := range []string{
		"a",
		strings.Repeat("x", 128),
		"replica east-1",
		`~!"#$%&'()*+,-.:;<=>?@[\]^_{|}`,
	} {
		if err := w.SetCursor(name, 1); err != nil {
			t.Errorf("SetCursor(%q) = %v, want nil", name, err)
		}
	}
	// Acked may be LastSeq (appended, maybe not yet durable), not beyond.
	if err := w.SetCursor("a", 10); err != nil {
		t.Fatalf("SetCursor at LastSeq = %v", err)
	}
	if err := w.SetCursor("a", 11); !errors.Is(err, ErrCursor) {
		t.Fatalf("SetCursor beyond LastSeq = %v, want ErrCursor", err)
	}
	if err := w.SetCursor("new", 11); !errors.Is(err, ErrCursor) {
		t.Fatalf("SetCursor of a new cursor beyond LastSeq = %v, want ErrCursor", err)
	}
	// Nothing was recorded by the failed calls.
	if ci, _ := w.Cursor("a"); ci.Acked != 10 {
		t.Fatalf("Cursor a = %+v after a rejected SetCursor, want Acked 10", ci)
	}
	if got := len(w.Cursors()); got != 4 {
		t.Fatalf("%d cursors after the rejected calls, want the 4 valid ones: %v", got, w.Cursors())
	}

	o := Options{Dir: t.TempDir(), CursorPolicy: "keep"}
	if err := o.Validate(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "CursorPolicy") {
		t.Fatalf("Validate with CursorPolicy %q = %v, want ErrConfig naming it", o.CursorPolicy, err)
	}
	if _, err := Open(o); !errors.Is(err, ErrConfig) {
		t.Fatalf("Open with CursorPolicy %q = %v, want ErrConfig", o.CursorPolicy, err)
	}
	for _, p := range []string{"", CursorRetain, CursorDrop} {
		o := Options{Dir: "d", CursorPolicy: p}
		if err := o.Validate(); err != nil {
			t.Fatalf("Validate with CursorPolicy %q = %v", p, err)
		}
		if o.EnsureDefaults(); o.CursorPolicy == "" {
			t.Fatal("EnsureDefaults left CursorPolicy empty")
		}
	}
}

func TestCursorNeverMovesBack(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, FlushInterval: time.Hour, NoSync: true}
	w := openTest(t, opts)
	appendRange(t, w, 1, 100)
	setCursor(t, w, "a", 50)
	setCursor(t, w, "a", 20) // ignored, not an error
	wantCursors(t, w, map[string]CursorInfo{"a": {Acked: 50}})
	flush(t, w)
	setCursor(t, w, "a", 49)
	setCursor(t, w, "a", 50)
	wantCursors(t, w, map[string]CursorInfo{"a": {Acked: 50}})
	// An ignored (or unchanged) SetCursor leaves nothing to commit.
	commits := w.Stats().Commits
	flush(t, w)
	if c := w.Stats().Commits; c != commits {
		t.Fatalf("Flush after an ignored SetCursor committed (%d commits, was %d)", c, commits)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w = openTest(t, opts)
	setCursor(t, w, "a", 30)
	wantCursors(t, w, map[string]CursorInfo{"a": {Acked: 50}})
	setCursor(t, w, "a", 51)
	wantCursors(t, w, map[string]CursorInfo{"a": {Acked: 51}})
}

// fillPastRetention appends frames from..to with a flush every 200, so
// that retention runs many times.
func fillPastRetention(tb testing.TB, w *WAL, from, to uint64) {
	tb.Helper()
	for seq := from; seq <= to; seq += 200 {
		appendRange(tb, w, seq, min(seq+199, to))
		flush(tb, w)
	}
}

// A small WAL, retention bound 4 segments of 1 KiB: 3000 frames of
// frameFor (about 500 KiB) are far past it.
const (
	cursorTestSegment  = 1024
	cursorTestMaxBytes = 4 * cursorTestSegment
	cursorTestLast     = 3000
)

func TestCursorRetain(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: cursorTestSegment, MaxBytes: cursorTestMaxBytes, FlushInterval: time.Hour, NoSync: true}
	w := openTest(t, opts)
	// Commits run while frames are appended (one holds at most
	// MaxBytes/64 = 64 bytes of frames here): the cursor must exist first.
	setCursor(t, w, "slow", 0)
	appendRange(t, w, 1, 100)
	setCursor(t, w, "slow", 50)
	setCursor(t, w, "fast", 100)
	flush(t, w)
	fillPastRetention(t, w, 101, cursorTestLast)

	st := w.Stats()
	if !st.RetentionHeld || st.FootprintBytes <= cursorTestMaxBytes {
		t.Fatalf("with a cursor at 50: %+v; want RetentionHeld and the footprint past MaxBytes %d", st, cursorTestMaxBytes)
	}
	// Everything the slow cursor has not acked is kept; what it acked is
	// deleted up to the segment holding its next frame.
	if st.FirstSeq > 51 || st.FirstSeq <= 1 || st.RetainedFrames != st.FirstSeq-1 {
		t.Fatalf("FirstSeq %d, %d frames deleted: want frames deleted before 51 only", st.FirstSeq, st.RetainedFrames)
	}
	checkSeqs(t, seqs(t, w, 51), 51, cursorTestLast)
	wantCursors(t, w, map[string]CursorInfo{"slow": {Acked: 50}, "fast": {Acked: 100}})

	// Held across a restart too.
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w = openTest(t, opts)
	appendRange(t, w, cursorTestLast+1, cursorTestLast+10)
	flush(t, w)
	if st := w.Stats(); !st.RetentionHeld || st.FirstSeq > 51 {
		t.Fatalf("reopened: %+v; want retention still held at 51", st)
	}
	last := uint64(cursorTestLast + 10)

	// The lowest cursor holds: the slow one moves past the fast one.
	setCursor(t, w, "slow", last)
	setCursor(t, w, "fast", 2000)
	flush(t, w)
	if st := w.Stats(); !st.RetentionHeld || st.FirstSeq > 2001 || st.FirstSeq <= 51 {
		t.Fatalf("cursors at %d and 2000: %+v; want retention held at 2001", last, st)
	}
	checkSeqs(t, seqs(t, w, 2001), 2001, last)

	// Once no cursor holds, retention catches up in the next commit,
	// even one without frames.
	w.DeleteCursor("fast")
	flush(t, w)
	st = w.Stats()
	if st.RetentionHeld || st.FootprintBytes > cursorTestMaxBytes || st.FirstSeq <= 2001 {
		t.Fatalf("after the holding cursor went: %+v; want retention within MaxBytes %d, not held", st, cursorTestMaxBytes)
	}
	checkSeqs(t, seqs(t, w, 1), st.FirstSeq, last)
	wantCursors(t, w, map[string]CursorInfo{"slow": {Acked: last}})
}

func TestCursorRetainMaxAge(t *testing.T) {
	const age = 100 * time.Millisecond
	w := openTest(t, Options{SegmentBytes: 1024, MaxAge: age, FlushInterval: time.Hour, NoSync: true})
	setCursor(t, w, "c", 0)
	appendRange(t, w, 1, 100)
	setCursor(t, w, "c", 10)
	flush(t, w)
	time.Sleep(age + 50*time.Millisecond)
	appendRange(t, w, 101, 110)
	flush(t, w)
	st := w.Stats()
	if !st.RetentionHeld || st.FirstSeq > 11 {
		t.Fatalf("aged frames with a cursor at 10: %+v; want retention held at 11", st)
	}
	checkSeqs(t, seqs(t, w, 11), 11, 110)
	setCursor(t, w, "c", 110)
	flush(t, w)
	if st := w.Stats(); st.RetentionHeld || st.FirstSeq < 90 {
		t.Fatalf("cursor acked everything: %+v; want the aged segments deleted", st)
	}
}

func TestCursorDrop(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	lost := map[string]uint64{}
	calls := 0
	opts := Options{
		Dir: dir, SegmentBytes: cursorTestSegment, MaxBytes: cursorTestMaxBytes,
		FlushInterval: time.Hour, NoSync: true, CursorPolicy: CursorDrop,
		OnCursorLost: func(name string, n uint64) {
			mu.Lock()
			defer mu.Unlock()
			if n == 0 {
				t.Errorf("OnCursorLost(%q, 0)", name)
			}
			lost[name] += n
			calls++
		},
	}
	w := openTest(t, opts)
	appendRange(t, w, 1, 100)
	setCursor(t, w, "slow", 50)
	setCursor(t, w, "fast", 100)
	flush(t, w)
	// "fast" acks each batch once appended; commits happen in between (one
	// holds at most MaxBytes/64 = 64 bytes of frames here) and retention,
	// keeping about 25 frames, overtakes it: it loses part of each batch.
	for seq := uint64(101); seq <= cursorTestLast; seq += 200 {
		appendRange(t, w, seq, min(seq+199, cursorTestLast))
		setCursor(t, w, "fast", min(seq+199, cursorTestLast))
		flush(t, w)
	}

	st := w.Stats()
	first := st.FirstSeq
	if st.RetentionHeld || st.FootprintBytes > cursorTestMaxBytes || first <= 51 {
		t.Fatalf("drop policy: %+v; want retention within MaxBytes %d past the cursor", st, cursorTestMaxBytes)
	}
	if st.RetainedFrames != first-1 {
		t.Fatalf("%d frames deleted, FirstSeq %d", st.RetainedFrames, first)
	}
	wantSlow := CursorInfo{Acked: first - 1, Lost: first - 1 - 50} // deleted past its ack
	mu.Lock()
	wantFast := CursorInfo{Acked: cursorTestLast, Lost: lost["fast"]}
	if lost["slow"] != wantSlow.Lost || calls < 2 {
		t.Fatalf("OnCursorLost totals %v in %d calls; want slow %d over several commits", lost, calls, wantSlow.Lost)
	}
	mu.Unlock()
	wantCursors(t, w, map[string]CursorInfo{"slow": wantSlow, "fast": wantFast})
	// Resuming after the cursor reads from the first stored frame on.
	checkSeqs(t, seqs(t, w, wantSlow.Acked+1), first, cursorTestLast)

	// The cursor never moves back behind what drop moved it to.
	setCursor(t, w, "slow", 60)
	wantCursors(t, w, map[string]CursorInfo{"slow": wantSlow, "fast": wantFast})

	// Lost is persisted, and keeps counting after a restart.
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w = openTest(t, opts)
	wantCursors(t, w, map[string]CursorInfo{"slow": wantSlow, "fast": wantFast})
	fillPastRetention(t, w, cursorTestLast+1, cursorTestLast+1000)
	first = w.FirstSeq()
	wantSlow = CursorInfo{Acked: first - 1, Lost: first - 1 - 50}
	if ci, _ := w.Cursor("slow"); ci != wantSlow {
		t.Fatalf("after a restart: slow = %+v, want %+v", ci, wantSlow)
	}
	// fast stopped acking at cursorTestLast: it lost what was deleted
	// after that.
	wantFast = CursorInfo{Acked: first - 1, Lost: wantFast.Lost + first - 1 - cursorTestLast}
	if ci, _ := w.Cursor("fast"); first <= cursorTestLast+1 || ci != wantFast {
		t.Fatalf("after a restart: fast = %+v, want %+v", ci, wantFast)
	}
	mu.Lock()
	if lost["slow"] != wantSlow.Lost || lost["fast"] != wantFast.Lost {
		t.Fatalf("OnCursorLost totals %v; want slow %d, fast %d", lost, wantSlow.Lost, wantFast.Lost)
	}
	mu.Unlock()

	// A new cursor below FirstSeq − 1 is moved up by the next commit, and
	// counts the frames already gone as lost.
	setCursor(t, w, "late", 10)
	flush(t, w)
	first = w.FirstSeq()
	if ci, _ := w.Cursor("late"); ci != (CursorInfo{Acked: first - 1, Lost: first - 11}) {
		t.Fatalf("late cursor = %+v, want Acked %d Lost %d", ci, first-1, first-11)
	}
}

// A cursor change whose commit fails stays pending and is committed by the
// retry.
func TestCursorCommitFailure(t *testing.T) {
	dir := t.TempDir()
	var failing atomic.Bool
	opts := Options{Dir: dir, FlushInterval: time.Millisecond, NoSync: true,
		Hooks: &Hooks{BeforeCommit: func() error {
			if failing.Load() {
				return errors.New("injected")
			}
			return nil
		}},
	}
	w := openTest(t, opts)
	appendRange(t, w, 1, 10)
	setCursor(t, w, "doomed", 1)
	flush(t, w)
	failing.Store(true)
	setCursor(t, w, "a", 7)
	w.DeleteCursor("doomed")
	waitFor(t, "a failed commit", func() bool { return w.Stats().CommitErrors >= 2 })
	wantCursors(t, w, map[string]CursorInfo{"a": {Acked: 7}})
	failing.Store(false)
	flush(t, w)
	w.crash()
	w = openTest(t, Options{Dir: dir, NoSync: true})
	wantCursors(t, w, map[string]CursorInfo{"a": {Acked: 7}})
}

// Cursors set, deleted and moved by drop concurrently with appends and
// commits: the in-memory view ends equal to the committed state, every
// cursor is at or after FirstSeq − 1, and OnCursorLost adds up to Lost.
func TestCursorConcurrent(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	lost := map[string]uint64{}
	opts := Options{
		Dir: dir, SegmentBytes: cursorTestSegment, MaxBytes: cursorTestMaxBytes,
		FlushInterval: time.Millisecond, NoSync: true, CursorPolicy: CursorDrop,
		OnCursorLost: func(name string, n uint64) {
			mu.Lock()
			lost[name] += n
			mu.Unlock()
		},
	}
	w := openTest(t, opts)
	const total = 5000
	var wg sync.WaitGroup
	var appended atomic.Bool
	wg.Go(func() {
		defer appended.Store(true)
		fs := make([]Frame, 0, 20)
		for seq := uint64(1); seq <= total; seq += 20 {
			fs = fs[:0]
			for s := seq; s < seq+20; s++ {
				fs = append(fs, frameFor(s))
			}
			if _, err := w.Append(fs...); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for i := range 3 {
		name := fmt.Sprintf("c%d", i)
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			for !appended.Load() {
				if last := w.LastSeq(); last > 0 {
					if err := w.SetCursor(name, last-min(last, rng.Uint64N(400))); err != nil {
						t.Error(err)
						return
					}
				}
				time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
			}
			// Once more after the appends: a fast appender may finish
			// before this goroutine first ran.
			last := w.LastSeq()
			if err := w.SetCursor(name, last-min(last, rng.Uint64N(400))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(9, 9))
		for !appended.Load() {
			if rng.IntN(2) == 0 {
				w.DeleteCursor("churn")
			} else if err := w.SetCursor("churn", w.LastSeq()/2); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Duration(rng.IntN(300)) * time.Microsecond)
		}
	})
	wg.Wait()
	w.DeleteCursor("churn")
	flush(t, w)

	mem := w.Cursors()
	first := w.FirstSeq()
	mu.Lock()
	for name, ci := range mem {
		if ci.Acked < first-1 {
			t.Errorf("cursor %q = %+v, behind FirstSeq %d − 1", name, ci, first)
		}
		if ci.Lost != lost[name] {
			t.Errorf("cursor %q lost %d, OnCursorLost reported %d", name, ci.Lost, lost[name])
		}
	}
	mu.Unlock()
	if len(mem) != 3 || w.Stats().RetainedFrames == 0 {
		t.Fatalf("cursors %v, %+v: want c0…c2 and retention at work", mem, w.Stats())
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w = openTest(t, opts)
	wantCursors(t, w, mem)
}

func TestCursorReadStatsAndVerify(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir, SegmentBytes: 1024, FlushInterval: time.Hour, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	appendRange(t, w, 1, 100)
	setCursor(t, w, "a", 40)
	setCursor(t, w, "b", 100)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	st, err := ReadStats(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]CursorInfo{"a": {Acked: 40}, "b": {Acked: 100}}
	if !maps.Equal(st.Cursors, want) {
		t.Fatalf("ReadStats cursors %v, want %v", st.Cursors, want)
	}
	js, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(js), `"cursors":{"a":{"acked":40,"lost":0},"b":{"acked":100,"lost":0}}`) {
		t.Fatalf("JSON cursors: %s", js)
	}
	rep, err := Verify(dir)
	if err != nil || rep.Cursors != 2 {
		t.Fatalf("Verify of a WAL with cursors: %+v, %v; want 2 cursors, no problem", rep, err)
	}

	// A malformed cursor value, and a name SetCursor would refuse.
	tamper(t, dir, func(tx *bolt.Tx) error {
		cb := tx.Bucket(bucketCursors)
		if err := cb.Put([]byte("a"), []byte{0, 0, 40}); err != nil {
			return err
		}
		return cb.Put([]byte("bad/name"), putCursor(CursorInfo{Acked: 1}))
	})
	wantProblem(t, dir, `cursor "a"`, "3 bytes, want 16")
	rep = wantProblem(t, dir, `cursor "bad/name"`, "'/'")
	if rep.Cursors != 3 {
		t.Fatalf("Verify counted %d cursors, want 3", rep.Cursors)
	}
	if _, err := ReadStats(dir); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ReadStats with a corrupt cursor = %v, want ErrCorrupt", err)
	}
	if _, err := Open(Options{Dir: dir}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "cursor") {
		t.Fatalf("Open with a corrupt cursor = %v, want ErrCorrupt naming the cursor", err)
	}
}

// A file written before cursors existed (no cursors bucket) reads as one
// without cursors, and Open adds the bucket; a file of another format
// version is left untouched.
func TestCursorBucketMissing(t *testing.T) {
	dir := writeWAL(t, 100)
	tamper(t, dir, func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketCursors) })
	rep, err := Verify(dir)
	if err != nil || rep.Cursors != 0 || rep.LastSeq != 100 {
		t.Fatalf("Verify of a file without a cursors bucket: %+v, %v", rep, err)
	}
	st, err := ReadStats(dir)
	if err != nil || st.Cursors == nil || len(st.Cursors) != 0 {
		t.Fatalf("ReadStats of a file without a cursors bucket: %+v, %v; want an empty map", st.Cursors, err)
	}
	opts := Options{Dir: dir, NoSync: true}
	w := openTest(t, opts)
	wantCursors(t, w, map[string]CursorInfo{})
	setCursor(t, w, "a", 100)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w = openTest(t, opts)
	wantCursors(t, w, map[string]CursorInfo{"a": {Acked: 100}})
	w.Close()

	dir = writeWAL(t, 10)
	tamper(t, dir, func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketCursors); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(metaFormat, []byte{0, 0, 0, 2})
	})
	if _, err := Open(Options{Dir: dir}); !errors.Is(err, ErrVersion) {
		t.Fatalf("Open of a format 2 file = %v, want ErrVersion", err)
	}
	tamper(t, dir, func(tx *bolt.Tx) error {
		if tx.Bucket(bucketCursors) != nil {
			t.Error("Open added a cursors bucket to a file of another format version")
		}
		return nil
	})
}

// Cursor changes made while a commit is in flight (between its snapshot
// and its success) are kept for the next commit without undoing what the
// commit did: a cursor created before the snapshot and moved after it
// keeps the Lost the commit counted; one deleted and created anew after
// it starts afresh; an ack below what drop moved the cursor to is ignored.
func TestCursorChangesDuringCommit(t *testing.T) {
	var block atomic.Bool
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	var mu sync.Mutex
	lost := map[string]uint64{}
	w := openTest(t, Options{
		SegmentBytes: cursorTestSegment, MaxBytes: cursorTestMaxBytes,
		FlushInterval: time.Millisecond, NoSync: true, CursorPolicy: CursorDrop,
		Hooks: &Hooks{BeforeCommit: func() error {
			// Called after the snapshot: the commit is in flight.
			if block.Load() {
				entered <- struct{}{}
				<-release
			}
			return nil
		}},
		OnCursorLost: func(name string, n uint64) {
			mu.Lock()
			lost[name] += n
			mu.Unlock()
		},
	})
	t.Cleanup(func() {
		if block.Swap(false) {
			close(release)
		}
	})
	appendRange(t, w, 1, 100)
	flush(t, w)
	floor := w.FirstSeq() - 1
	if floor <= 20 {
		t.Fatalf("FirstSeq %d: want retention past frame 21", floor+1)
	}
	setCursor(t, w, "z", floor)
	flush(t, w)

	block.Store(true)
	setCursor(t, w, "x", 10)
	setCursor(t, w, "y", 10)
	<-entered // the commit creating x and y is in flight
	setCursor(t, w, "x", 20)
	w.DeleteCursor("y")
	setCursor(t, w, "y", 5)
	release <- struct{}{}
	<-entered // it succeeded; the next one, with the changes since, waits
	if ci, _ := w.Cursor("x"); ci != (CursorInfo{Acked: floor, Lost: floor - 10}) {
		t.Fatalf("between the commits: x = %+v, want Acked %d Lost %d", ci, floor, floor-10)
	}
	if ci, _ := w.Cursor("y"); ci != (CursorInfo{Acked: 5}) {
		t.Fatalf("between the commits: y = %+v, want the new cursor at 5, nothing lost", ci)
	}
	block.Store(false)
	release <- struct{}{}
	flush(t, w)
	wantCursors(t, w, map[string]CursorInfo{
		"x": {Acked: floor, Lost: floor - 10},
		"y": {Acked: floor, Lost: floor - 5},
		"z": {Acked: floor},
	})

	// A commit moves z up (its frames push retention on) while an ack
	// between the old and the new floor waits: the ack is overtaken.
	block.Store(true)
	fs := make([]Frame, 0, 50)
	for seq := uint64(101); seq <= 150; seq++ {
		fs = append(fs, frameFor(seq))
	}
	if _, err := w.Append(fs...); err != nil {
		t.Fatal(err)
	}
	<-entered
	setCursor(t, w, "z", floor+1)
	block.Store(false)
	release <- struct{}{}
	flush(t, w)
	newFloor := w.FirstSeq() - 1
	if newFloor <= floor+1 {
		t.Fatalf("FirstSeq %d: want retention past %d", newFloor+1, floor+2)
	}
	wantCursors(t, w, map[string]CursorInfo{
		"x": {Acked: newFloor, Lost: newFloor - 10},
		"y": {Acked: newFloor, Lost: newFloor - 5},
		"z": {Acked: newFloor, Lost: newFloor - floor},
	})
	mu.Lock()
	defer mu.Unlock()
	if want := map[string]uint64{"x": newFloor - 10, "y": floor - 10 + newFloor - 5, "z": newFloor - floor}; !maps.Equal(lost, want) {
		t.Fatalf("OnCursorLost totals %v, want %v", lost, want)
	}
}
