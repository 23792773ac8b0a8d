package shm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

var bothKinds = []RingKind{KindIngressSPSC, KindIngressMPMC}

// TestRingEverySize writes records of every payload size from 0 to the
// maximum through a small ring, so that every size meets the wrap point at
// many offsets, and checks each payload byte for byte.
func TestRingEverySize(t *testing.T) {
	for _, kind := range bothKinds {
		t.Run(kind.String(), func(t *testing.T) {
			s := newSegment(t, 1<<20)
			r := newRing(t, s, kind, 4096)
			p := mustProducer(t, r, 1)
			c := mustConsumer(t, r)
			var seq, got uint64
			for n := 0; n <= r.MaxPayload(); n++ {
				for k := 0; k < 3; k++ { // three per size: offsets move
					cl, err := p.Claim(7, n)
					if errors.Is(err, ErrFull) {
						drain(t, c, &got)
						cl, err = p.Claim(7, n)
					}
					if err != nil {
						t.Fatalf("size %d: %v", n, err)
					}
					if len(cl.Buf) != n {
						t.Fatalf("claim of %d gave %d bytes", n, len(cl.Buf))
					}
					binaryPut(cl.Buf, seq)
					p.Commit(cl)
					seq++
				}
			}
			drain(t, c, &got)
			if got != seq {
				t.Fatalf("consumed %d records, produced %d", got, seq)
			}
			if _, err := p.Claim(7, r.MaxPayload()+1); !errors.Is(err, ErrTooLarge) {
				t.Fatalf("oversized claim: %v, want ErrTooLarge", err)
			}
		})
	}
}

// binaryPut stores seq in the first 8 bytes (if room) and a pattern after.
func binaryPut(b []byte, seq uint64) {
	fill(b, seq)
	if len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, seq)
	}
}

// drain consumes everything and checks sequence and pattern; got counts the
// records seen so far and is the sequence expected next.
func drain(t *testing.T, c *Consumer, got *uint64) {
	t.Helper()
	for {
		n, err := c.Poll(0, func(rec Record) {
			b := rec.Payload
			if rec.Type != 7 {
				t.Fatalf("record %d has type %d", *got, rec.Type)
			}
			if len(b) >= 8 && binary.LittleEndian.Uint64(b) != *got {
				t.Fatalf("record %d carries sequence %d", *got, binary.LittleEndian.Uint64(b))
			}
			want := make([]byte, len(b))
			binaryPut(want, *got)
			if string(want) != string(b) {
				t.Fatalf("record %d (%d bytes): payload differs", *got, len(b))
			}
			*got++
		})
		if err != nil {
			t.Fatalf("Poll: %v", err)
		}
		if err := c.Release(c.ReadPos()); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if n == 0 {
			return
		}
	}
}

func TestRingFullAndAbort(t *testing.T) {
	for _, kind := range bothKinds {
		t.Run(kind.String(), func(t *testing.T) {
			s := newSegment(t, 1<<20)
			r := newRing(t, s, kind, 4096)
			p := mustProducer(t, r, 1)
			c := mustConsumer(t, r)
			// 120-byte payload = 128-byte record: exactly 32 fit.
			for i := 0; i < 32; i++ {
				cl, err := p.Claim(7, 120)
				if err != nil {
					t.Fatalf("claim %d: %v", i, err)
				}
				binaryPut(cl.Buf, uint64(i))
				if i%2 == 1 {
					p.Abort(cl)
				} else {
					p.Commit(cl)
				}
			}
			if _, err := p.Claim(7, 0); !errors.Is(err, ErrFull) {
				t.Fatalf("claim on a full ring: %v, want ErrFull", err)
			}
			if r.Used() != 4096 {
				t.Fatalf("Used = %d, want 4096", r.Used())
			}
			var seqs []uint64
			if _, err := c.Poll(0, func(rec Record) { seqs = append(seqs, binary.LittleEndian.Uint64(rec.Payload)) }); err != nil {
				t.Fatal(err)
			}
			if len(seqs) != 16 {
				t.Fatalf("got %d records, want the 16 committed ones", len(seqs))
			}
			for i, s := range seqs {
				if s != uint64(2*i) {
					t.Fatalf("record %d has seq %d; aborted records must be skipped", i, s)
				}
			}
			// Not released yet: still full.
			if _, err := p.Claim(7, 0); !errors.Is(err, ErrFull) {
				t.Fatalf("claim before release: %v, want ErrFull", err)
			}
			c.Release(c.ReadPos())
			for i, b := range r.data {
				if b != 0 {
					t.Fatalf("byte %d of the data area is %d after release; the consumer must zero it", i, b)
				}
			}
			if _, err := p.Claim(7, 120); err != nil {
				t.Fatalf("claim after release: %v", err)
			}
		})
	}
}

// TestRingBatchAcrossWrap claims batches whose size does not divide the
// capacity, so that batches keep landing on the wrap point, and checks that
// a batch is delivered whole, in order, or not at all.
func TestRingBatchAcrossWrap(t *testing.T) {
	for _, kind := range bothKinds {
		t.Run(kind.String(), func(t *testing.T) {
			s := newSegment(t, 1<<20)
			r := newRing(t, s, kind, 4096)
			p := mustProducer(t, r, 1)
			c := mustConsumer(t, r)
			var seq, got uint64
			wraps := 0
			for round := 0; round < 200; round++ {
				sizes := []int{1 + round%50, 100, 7, 300 + round%17, 0}
				if round%3 == 0 {
					drain(t, c, &got)
				}
				b, err := p.ClaimBatch(7, sizes)
				if errors.Is(err, ErrFull) {
					drain(t, c, &got)
					b, err = p.ClaimBatch(7, sizes)
				}
				if err != nil {
					t.Fatal(err)
				}
				if b.pos&r.mask == 0 && b.pos != 0 {
					wraps++
				}
				for i := range sizes {
					buf := p.Next(&b)
					if len(buf) != sizes[i] {
						t.Fatalf("record %d of batch has %d bytes, want %d", i, len(buf), sizes[i])
					}
					binaryPut(buf, seq)
					seq++
				}
				if p.Next(&b) != nil {
					t.Fatal("Next after the last record must return nil")
				}
				// Before commit the consumer sees nothing of the batch.
				drain(t, c, &got)
				if got != seq-uint64(len(sizes)) {
					t.Fatalf("consumer saw %d records of an uncommitted batch", got-(seq-uint64(len(sizes))))
				}
				p.CommitBatch(&b)
			}
			drain(t, c, &got)
			if got != seq {
				t.Fatalf("consumed %d, produced %d", got, seq)
			}
			if wraps == 0 {
				t.Fatal("no batch started at the wrap point; the test does not test the wrap")
			}
		})
	}
}

func TestRingAbortBatch(t *testing.T) {
	s := newSegment(t, 1<<20)
	r := newRing(t, s, KindIngressMPMC, 4096)
	p := mustProducer(t, r, 1)
	c := mustConsumer(t, r)
	b, err := p.ClaimBatch(7, []int{10, 20, 30})
	if err != nil {
		t.Fatal(err)
	}
	p.Next(&b)
	p.Next(&b)
	p.AbortBatch(&b)
	cl, _ := p.Claim(7, 8)
	binaryPut(cl.Buf, 0)
	p.Commit(cl)
	var got uint64
	drain(t, c, &got)
	if got != 1 {
		t.Fatalf("got %d records, want only the one after the aborted batch", got)
	}
}

// TestMPMCConcurrent runs producers and consumers as goroutines on one MPMC
// ring; every record arrives exactly once and per-producer order holds
// within each consumer.
func TestMPMCConcurrent(t *testing.T) {
	s := newSegment(t, 1<<20)
	r := newRing(t, s, KindIngressMPMC, 1<<14)
	const producers, consumers, per = 4, 3, 20000
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for id := 1; id <= producers; id++ {
		p := mustProducer(t, r, uint16(id))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(0); i < per; i++ {
				n := int(i % 97)
				if n < 8 {
					n = 8
				}
				for {
					cl, err := p.Claim(7, n)
					if errors.Is(err, ErrFull) {
						p.WaitSpace(ctx, n, DefaultSpin)
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					binaryPut(cl.Buf, i)
					p.Commit(cl)
					break
				}
			}
		}()
	}
	var mu sync.Mutex
	seen := make([]map[uint64]bool, producers+1)
	for i := range seen {
		seen[i] = map[uint64]bool{}
	}
	total := 0
	done := make(chan struct{})
	var cwg sync.WaitGroup
	for k := 0; k < consumers; k++ {
		c, err := r.SharedConsumer()
		if err != nil {
			t.Fatal(err)
		}
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			last := make([]int64, producers+1)
			for i := range last {
				last[i] = -1
			}
			for {
				n, err := c.Poll(64, func(rec Record) {
					seq := binary.LittleEndian.Uint64(rec.Payload)
					want := make([]byte, len(rec.Payload))
					binaryPut(want, seq)
					if string(want) != string(rec.Payload) {
						t.Errorf("producer %d seq %d: payload differs", rec.Flags, seq)
					}
					if int64(seq) <= last[rec.Flags] {
						t.Errorf("consumer saw producer %d seq %d after %d", rec.Flags, seq, last[rec.Flags])
					}
					last[rec.Flags] = int64(seq)
					mu.Lock()
					if seen[rec.Flags][seq] {
						t.Errorf("producer %d seq %d delivered twice", rec.Flags, seq)
					}
					seen[rec.Flags][seq] = true
					total++
					mu.Unlock()
				})
				if err != nil {
					t.Error(err)
					return
				}
				if err := c.Release(^uint64(0)); err != nil {
					t.Error(err)
					return
				}
				if n == 0 {
					select {
					case <-done:
						return
					default:
					}
					wctx, wcancel := context.WithTimeout(ctx, 5*time.Millisecond)
					c.Wait(wctx, DefaultSpin)
					wcancel()
				}
			}
		}()
	}
	wg.Wait()
	// Let the consumers drain, then stop them.
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := total
		mu.Unlock()
		if n == producers*per || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(done)
	cwg.Wait()
	if total != producers*per {
		t.Fatalf("delivered %d records, want %d", total, producers*per)
	}
}

func TestUnblockDeadClaim(t *testing.T) {
	s := newSegment(t, 1<<20)
	r := newRing(t, s, KindIngressMPMC, 4096)
	live := mustProducer(t, r, 1)
	deadP := mustProducer(t, r, 2)
	c := mustConsumer(t, r)
	put := func(p *Producer, seq uint64) {
		cl, err := p.Claim(7, 16)
		if err != nil {
			t.Fatal(err)
		}
		binaryPut(cl.Buf, seq)
		p.Commit(cl)
	}
	put(live, 0)
	if _, err := deadP.Claim(7, 40); err != nil { // never committed
		t.Fatal(err)
	}
	put(live, 1)
	var got uint64
	drain(t, c, &got)
	if got != 1 {
		t.Fatalf("before unblock got %d records, want 1 (the ring is blocked)", got)
	}
	ok, err := c.Unblock(func(id uint16) bool { return id == 3 })
	if ok || err != nil {
		t.Fatalf("Unblock with a live owner: %v %v, want false", ok, err)
	}
	ok, err = c.Unblock(func(id uint16) bool { return id == 2 })
	if !ok || err != nil {
		t.Fatalf("Unblock: %v %v", ok, err)
	}
	drain(t, c, &got)
	if got != 2 {
		t.Fatalf("after unblock got %d records, want 2", got)
	}
}

// TestUnblockUnmarkedClaim simulates a producer that died after its CAS on
// the tail but before it marked the claim: the header is zero.
func TestUnblockUnmarkedClaim(t *testing.T) {
	s := newSegment(t, 1<<20)
	r := newRing(t, s, KindIngressMPMC, 4096)
	p := mustProducer(t, r, 1)
	c := mustConsumer(t, r)
	cl, _ := p.Claim(7, 16)
	binaryPut(cl.Buf, 0)
	p.Commit(cl)
	// The dying producer's CAS: 64 bytes reserved, header never written.
	tail := u64At(r.ctl, rcTail)
	tail.Add(64)
	cl, _ = p.Claim(7, 16)
	binaryPut(cl.Buf, 1)
	p.Commit(cl)
	var got uint64
	drain(t, c, &got)
	if got != 1 {
		t.Fatalf("got %d, want 1 before unblock", got)
	}
	if ok, _ := c.Unblock(func(id uint16) bool { return false }); ok {
		t.Fatal("Unblock must ask before padding an unmarked claim")
	}
	ok, err := c.Unblock(func(id uint16) bool { return id == NoOwner })
	if !ok || err != nil {
		t.Fatalf("Unblock: %v %v", ok, err)
	}
	drain(t, c, &got)
	if got != 2 {
		t.Fatalf("got %d, want 2 after unblock", got)
	}
}

func TestConsumerReleaseLater(t *testing.T) {
	s := newSegment(t, 1<<20)
	r := newRing(t, s, KindIngressSPSC, 4096)
	p := mustProducer(t, r, 1)
	c := mustConsumer(t, r)
	var ends []uint64
	for i := 0; i < 4; i++ {
		cl, _ := p.Claim(7, 100)
		p.Commit(cl)
	}
	c.Poll(0, func(rec Record) { ends = append(ends, rec.End) })
	if len(ends) != 4 {
		t.Fatalf("got %d records", len(ends))
	}
	c.Release(ends[1])
	if c.Head() != ends[1] {
		t.Fatalf("head %d, want %d", c.Head(), ends[1])
	}
	// A restarted consumer re-reads what was read but not released.
	c2 := mustConsumer(t, r)
	n, _ := c2.Poll(0, func(Record) {})
	if n != 2 {
		t.Fatalf("restarted consumer read %d records, want the 2 unreleased", n)
	}
}

func TestWaitWakes(t *testing.T) {
	s := newSegment(t, 1<<20)
	r := newRing(t, s, KindIngressSPSC, 4096)
	p := mustProducer(t, r, 1)
	c := mustConsumer(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	woke := make(chan bool)
	go func() { woke <- c.Wait(ctx, 0) }()
	// Wait until the consumer sleeps in the kernel.
	for s.Doorbell().Waiters() == 0 {
		time.Sleep(time.Millisecond)
	}
	cl, _ := p.Claim(7, 1)
	p.Commit(cl)
	if !<-woke {
		t.Fatal("Wait returned false after a commit")
	}
	if s.Doorbell().Waiters() != 0 {
		t.Fatalf("waiter count %d after wake", s.Doorbell().Waiters())
	}
	// Cancellation ends a sleep.
	c.Poll(0, func(Record) {})
	c.Release(c.ReadPos())
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { woke <- c.Wait(ctx2, 0) }()
	for s.Doorbell().Waiters() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel2()
	select {
	case ok := <-woke:
		if ok {
			t.Fatal("Wait reported data after cancellation with an empty ring")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return after its context was cancelled")
	}
}

// TestRingAllocs checks that the hot paths allocate nothing: claim, commit,
// batch claim and commit, poll and release.
func TestRingAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates")
	}
	for _, kind := range bothKinds {
		s := newSegment(t, 1<<20)
		r := newRing(t, s, kind, 1<<16)
		p := mustProducer(t, r, 1)
		c := mustConsumer(t, r)
		sizes := []int{100, 20, 300}
		var sink int
		fn := func(rec Record) { sink += len(rec.Payload) }
		allocs := testing.AllocsPerRun(1000, func() {
			cl, err := p.Claim(7, 120)
			if err != nil {
				t.Fatal(err)
			}
			p.Commit(cl)
			b, err := p.ClaimBatch(7, sizes)
			if err != nil {
				t.Fatal(err)
			}
			p.CommitBatch(&b)
			if _, err := c.Poll(0, fn); err != nil {
				t.Fatal(err)
			}
			if err := c.Release(c.ReadPos()); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Fatalf("%v: %v allocations per claim/commit/poll/release round", kind, allocs)
		}
	}
}

// A consumer that reads ahead of what it releases (the sidecar, before its
// WAL commits) must stop at head+capacity: in a ring filled to the last
// byte, the position after the tail is the first record read but not
// released, and reading it again delivered it twice and released past the
// tail (the producer then saw a corrupt ring).
func TestConsumerFullRingReadAhead(t *testing.T) {
	for _, kind := range []RingKind{KindIngressSPSC, KindIngressMPMC} {
		t.Run(kind.String(), func(t *testing.T) {
			s := newSegment(t, 1<<20)
			r := newRing(t, s, kind, 4096)
			p := mustProducer(t, r, 1)
			c := consumerOf(t, r, kind)
			// 64-byte records (56 payload + 8 header) fill 4096 exactly.
			read := 0
			for i := 0; ; i++ {
				cl, err := p.Claim(7, 56)
				if errors.Is(err, ErrFull) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				binaryPut(cl.Buf, uint64(i))
				p.Commit(cl)
				n, err := c.Poll(0, func(Record) {})
				if err != nil {
					t.Fatal(err)
				}
				read += n
			}
			if read != 4096/64 {
				t.Fatalf("read %d records from a full ring of %d, none released", read, 4096/64)
			}
			if err := c.Release(c.ReadPos()); err != nil {
				t.Fatal(err)
			}
			if h := c.Head(); h != 4096 {
				t.Fatalf("released up to %d, want 4096 (the tail)", h)
			}
			if _, err := p.Claim(7, 56); err != nil {
				t.Fatalf("claim after release: %v", err)
			}
		})
	}
}

// TestLocalEventWaitFor: a Signal ends WaitFor at once once its condition
// holds; without one WaitFor returns false after its timeout.
func TestLocalEventWaitFor(t *testing.T) {
	ev := NewLocalEvent()
	var flag atomic.Bool
	start := time.Now()
	if ev.WaitFor(30*time.Millisecond, flag.Load) {
		t.Fatal("WaitFor returned true with its condition false")
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Fatalf("WaitFor returned after %v, before its 30 ms timeout", d)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		flag.Store(true)
		ev.Signal()
	}()
	start = time.Now()
	if !ev.WaitFor(10*time.Second, flag.Load) {
		t.Fatal("WaitFor returned false after a Signal")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a Signal after 20 ms ended WaitFor only after %v", d)
	}
	if n := ev.Waiters(); n != 0 {
		t.Fatalf("%d waiters left", n)
	}
}

// TestPollBytesBudget: PollBytes stops before the record that would take
// its span past the byte budget, always delivers at least one record (one
// larger than the budget is not stuck), and the next poll goes on where it
// stopped; on SPSC and on shared MPMC consumers alike.
func TestPollBytesBudget(t *testing.T) {
	for _, kind := range []RingKind{KindIngressSPSC, KindIngressMPMC} {
		t.Run(kind.String(), func(t *testing.T) {
			s := newSegment(t, 1<<20)
			r := newRing(t, s, kind, 1<<16)
			p := mustProducer(t, r, 1)
			c := consumerOf(t, r, kind)
			// Payload sizes: 3 × 100 B, one of 2000 B, 2 × 100 B.
			sizes := []int{100, 100, 100, 2000, 100, 100}
			for i, n := range sizes {
				cl, err := p.Claim(7, n)
				if err != nil {
					t.Fatal(err)
				}
				binaryPut(cl.Buf, uint64(i))
				p.Commit(cl)
			}
			recLen := func(n int) int { return int(align8(uint64(RecordHeaderSize + n))) }
			budget := 3 * recLen(100) // three small records exactly
			var got [][]int
			for range 4 {
				var batch []int
				n, err := c.PollBytes(0, budget, func(rec Record) { batch = append(batch, len(rec.Payload)) })
				if err != nil {
					t.Fatal(err)
				}
				if n != len(batch) {
					t.Fatalf("PollBytes returned %d, delivered %d", n, len(batch))
				}
				if n > 0 {
					got = append(got, batch)
				}
			}
			want := [][]int{{100, 100, 100}, {2000}, {100, 100}}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("batches %v, want %v (budget %d bytes)", got, want, budget)
			}
		})
	}
}

// TestPollBytesPaddingFirst: padding at the wrap does not count as the one
// record PollBytes always delivers: a record after padding that together
// pass the budget is delivered (before, the poll returned none).
func TestPollBytesPaddingFirst(t *testing.T) {
	s := newSegment(t, 1<<20)
	r := newRing(t, s, KindIngressSPSC, 4096)
	p := mustProducer(t, r, 1)
	c := mustConsumer(t, r)
	for i := range 7 { // 7 × 504 B records: 3528 of 4096 bytes
		cl, err := p.Claim(7, 504-RecordHeaderSize)
		if err != nil {
			t.Fatal(err)
		}
		binaryPut(cl.Buf, uint64(i))
		p.Commit(cl)
	}
	if n, err := c.Poll(0, func(Record) {}); n != 7 || err != nil {
		t.Fatalf("Poll: %d, %v", n, err)
	}
	if err := c.Release(c.ReadPos()); err != nil {
		t.Fatal(err)
	}
	// 568 bytes are left before the end: this record wraps, after padding.
	cl, err := p.Claim(7, 1000)
	if err != nil {
		t.Fatal(err)
	}
	binaryPut(cl.Buf, 7)
	p.Commit(cl)
	var got []int
	n, err := c.PollBytes(0, 1100, func(rec Record) { got = append(got, len(rec.Payload)) })
	if err != nil || n != 1 || len(got) != 1 || got[0] != 1000 {
		t.Fatalf("PollBytes after padding: %d records %v, %v; want the 1000-byte record", n, got, err)
	}
}

// consumerOf returns a shared consumer of an MPMC ring, the exclusive one
// of an SPSC ring.
func consumerOf(tb testing.TB, r *Ring, kind RingKind) *Consumer {
	tb.Helper()
	if kind != KindIngressMPMC {
		return mustConsumer(tb, r)
	}
	c, err := r.SharedConsumer()
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// TestPrefaultMapsTheRing: after Prefault, writing every page of the ring
// through a fresh mapping (a driver's) takes no page faults, where without it
// each page takes one; and Prefault changes no byte.
func TestPrefaultMapsTheRing(t *testing.T) {
	if e := os.Getenv(testExecEnv); e != "" {
		// make test-arm64: qemu-user takes madvise advice it does not
		// emulate as a hint and returns success without mapping anything.
		t.Skipf("under %s: madvise MADV_POPULATE_WRITE is not emulated", e)
	}
	const capacity = 1 << 20
	dir := t.TempDir()
	name := uniqueName(t)
	s, err := Create(Config{Name: name, Dir: dir, Size: 8 << 20, MaxRings: 4}, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); s.Remove() })
	// faults writes one byte of every page of slot's ring (the value it
	// already has) through a new mapping and returns the minor faults this
	// thread took, prefaulting first if asked.
	faults := func(slot int, prefault bool) int64 {
		m, err := Open(dir, name)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		r, err := m.Ring(slot)
		if err != nil {
			t.Fatal(err)
		}
		if prefault {
			if err := r.Prefault(); errors.Is(err, unix.EINVAL) && !kernelAtLeast(5, 14) {
				t.Skip("madvise MADV_POPULATE_WRITE needs Linux 5.14")
			} else if err != nil {
				t.Fatalf("Prefault: %v", err)
			}
		}
		// The ring's bytes, from the directory, not from the region
		// Prefault advises: a region cut short must show as faults.
		info, err := m.Info(slot)
		if err != nil {
			t.Fatal(err)
		}
		span := m.mem[info.Offset : info.Offset+RingControlSize+info.Capacity]
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var before, after unix.Rusage
		unix.Getrusage(unix.RUSAGE_THREAD, &before)
		for i := 0; i < len(span); i += 4096 {
			// A write access that changes nothing (and that the
			// compiler cannot drop).
			(*atomic.Uint32)(unsafe.Pointer(&span[i])).Add(0)
		}
		unix.Getrusage(unix.RUSAGE_THREAD, &after)
		return after.Minflt - before.Minflt
	}
	pages := int64(alignPage(RingControlSize+capacity)) / int64(os.Getpagesize())

	plain := newRing(t, s, KindIngressSPSC, capacity)
	if n := faults(plain.Slot(), false); n < pages/2 {
		t.Fatalf("writing %d pages of a fresh mapping took %d faults: expected about one per page (the check would not see a difference)", pages, n)
	}
	pre := newRing(t, s, KindIngressSPSC, capacity)
	want := []byte("frame bytes that Prefault must leave alone")
	p := mustProducer(t, pre, 1)
	c, err := p.Claim(1, len(want))
	if err != nil {
		t.Fatal(err)
	}
	copy(c.Buf, want)
	p.Commit(c)
	if n := faults(pre.Slot(), true); n > 2 {
		t.Fatalf("after Prefault, writing %d pages took %d faults: want none (2 at most)", pages, n)
	}
	var got []byte
	mustConsumer(t, pre).Poll(1, func(rec Record) { got = append(got, rec.Payload...) })
	if string(got) != string(want) {
		t.Fatalf("after Prefault the ring holds %q, want %q", got, want)
	}
}

// kernelAtLeast reports whether the running Linux kernel is at least
// major.minor.
func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var ma, mi int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &ma, &mi)
	return ma > major || ma == major && mi >= minor
}
