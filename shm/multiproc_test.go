package shm

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
)

func init() {
	roles["producer"] = roleProducer
	roles["holder"] = roleHolder
}

// payloadFor builds record seq of producer id: seq, id, then a pattern.
func payloadFor(b []byte, id uint16, seq uint64) {
	fill(b, seq^uint64(id)<<40)
	if len(b) >= 10 {
		binary.LittleEndian.PutUint64(b, seq)
		binary.LittleEndian.PutUint16(b[8:], id)
	}
}

// checkPayload verifies a record built by payloadFor and returns its seq.
func checkPayload(b []byte, id uint16) (uint64, error) {
	if len(b) < 10 {
		return 0, fmt.Errorf("record of %d bytes is shorter than the 10-byte preamble", len(b))
	}
	seq := binary.LittleEndian.Uint64(b)
	if got := binary.LittleEndian.Uint16(b[8:]); got != id {
		return seq, fmt.Errorf("record tagged producer %d carries id %d", id, got)
	}
	want := make([]byte, len(b))
	payloadFor(want, id, seq)
	if string(want) != string(b) {
		return seq, fmt.Errorf("producer %d seq %d: payload bytes differ", id, seq)
	}
	return seq, nil
}

// roleProducer writes COUNT records of random sizes (10..MAXSIZE bytes) with
// producer id ID into ring SLOT, single claims or batches of BATCH records. It
// prints "ready", waits for a line on stdin, produces, prints "done".
func roleProducer() error {
	s, r, err := openRingEnv()
	if err != nil {
		return err
	}
	defer s.Close()
	id := uint16(envInt("ID"))
	count := envU64("COUNT")
	maxSize := envInt("MAXSIZE")
	batch := envInt("BATCH")
	rng := rand.New(rand.NewPCG(envU64("SEED"), uint64(id)))
	p, err := r.Producer(id)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for go: %w", err)
	}
	ctx := context.Background()
	sizes := make([]int, max(batch, 1))
	for seq := uint64(0); seq < count; {
		if batch <= 1 {
			n := 10 + rng.IntN(maxSize-9)
			cl, err := p.Claim(7, n)
			if errors.Is(err, ErrFull) {
				p.WaitSpace(ctx, n, DefaultSpin)
				continue
			}
			if err != nil {
				return err
			}
			payloadFor(cl.Buf, id, seq)
			p.Commit(cl)
			seq++
			continue
		}
		k := min(uint64(batch), count-seq)
		sz := sizes[:k]
		for i := range sz {
			sz[i] = 10 + rng.IntN(maxSize-9)
		}
		for {
			b, err := p.ClaimBatch(7, sz)
			if errors.Is(err, ErrFull) {
				p.WaitSpace(ctx, r.MaxPayload()/2, DefaultSpin)
				continue
			}
			if err != nil {
				return err
			}
			for i := range sz {
				payloadFor(p.Next(&b), id, seq+uint64(i))
			}
			p.CommitBatch(&b)
			break
		}
		seq += k
	}
	fmt.Println("done")
	return nil
}

// roleHolder commits PRE records, then claims one more and never commits it:
// it prints "claimed" and blocks until it is killed.
func roleHolder() error {
	s, r, err := openRingEnv()
	if err != nil {
		return err
	}
	defer s.Close()
	id := uint16(envInt("ID"))
	p, err := r.Producer(id)
	if err != nil {
		return err
	}
	pre := envU64("PRE")
	for seq := uint64(0); seq < pre; seq++ {
		cl, err := p.Claim(7, 32)
		if err != nil {
			return err
		}
		payloadFor(cl.Buf, id, seq)
		p.Commit(cl)
	}
	cl, err := p.Claim(7, 32)
	if err != nil {
		return err
	}
	payloadFor(cl.Buf, id, pre) // written, never committed
	fmt.Println("claimed")
	// Hold the claim until SIGKILL. Not select {}: built without cgo
	// (CGO_ENABLED=0, as for make test-arm64) the runtime sees every
	// goroutine blocked forever and exits with "all goroutines are asleep".
	for {
		time.Sleep(time.Hour)
	}
}

// collector consumes several rings and checks, per producer id, that records
// arrive exactly once, in order, with exact bytes.
type collector struct {
	tb        testing.TB
	seg       *Segment
	cons      []*Consumer
	next      map[uint16]uint64
	total     uint64
	onStalled func(c *Consumer) // called when a ring made no progress for a while
}

func newCollector(tb testing.TB, s *Segment, rings []*Ring) *collector {
	col := &collector{tb: tb, seg: s, next: map[uint16]uint64{}}
	for _, r := range rings {
		col.cons = append(col.cons, mustConsumer(tb, r))
	}
	return col
}

func (col *collector) anyReady() bool {
	for _, c := range col.cons {
		if c.Ready() {
			return true
		}
	}
	return false
}

// run consumes until want records arrived, or fails the test after timeout.
func (col *collector) run(want uint64, timeout time.Duration) {
	tb := col.tb
	deadline := time.Now().Add(timeout)
	lastProgress := time.Now()
	for col.total < want {
		if time.Now().After(deadline) {
			tb.Fatalf("received %d of %d records within %v; per producer next seq: %v", col.total, want, timeout, col.next)
		}
		got := 0
		for _, c := range col.cons {
			n, err := c.Poll(4096, func(rec Record) {
				seq, err := checkPayload(rec.Payload, rec.Flags)
				if err != nil {
					tb.Fatal(err)
				}
				if exp := col.next[rec.Flags]; seq != exp {
					tb.Fatalf("producer %d: got seq %d, want %d (lost, duplicated or reordered)", rec.Flags, seq, exp)
				}
				col.next[rec.Flags]++
				col.total++
			})
			if err != nil {
				tb.Fatalf("Poll: %v", err)
			}
			if err := c.Release(c.ReadPos()); err != nil {
				tb.Fatalf("Release: %v", err)
			}
			got += n
		}
		if got > 0 {
			lastProgress = time.Now()
			continue
		}
		if col.onStalled != nil && time.Since(lastProgress) > 20*time.Millisecond {
			for _, c := range col.cons {
				col.onStalled(c)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		col.seg.Doorbell().Wait(ctx, DefaultSpin, col.anyReady)
		cancel()
	}
}

func TestMultiprocess(t *testing.T) {
	count := uint64(100000)
	if testing.Short() {
		count = 10000
	}
	for _, shared := range []bool{false, true} {
		for _, n := range []int{1, 2, 4} {
			for _, batch := range []int{1, 16} {
				name := fmt.Sprintf("spsc/producers=%d/batch=%d", n, batch)
				if shared {
					name = fmt.Sprintf("mpmc/producers=%d/batch=%d", n, batch)
				}
				t.Run(name, func(t *testing.T) {
					s := newSegment(t, 16<<20)
					var rings []*Ring
					var kids []*child
					var mpmc *Ring
					if shared {
						mpmc = newRing(t, s, KindIngressMPMC, 1<<18)
						rings = append(rings, mpmc)
					}
					for id := 1; id <= n; id++ {
						r := mpmc
						if !shared {
							r = newRing(t, s, KindIngressSPSC, 1<<16)
							rings = append(rings, r)
						}
						kids = append(kids, startChild(t, "producer", append(segEnv(s, r.Slot()),
							"ID="+strconv.Itoa(id), "COUNT="+strconv.FormatUint(count, 10),
							"SEED=42", "MAXSIZE=600", "BATCH="+strconv.Itoa(batch))...))
					}
					for _, k := range kids {
						if l := k.line(t, 30*time.Second); l != "ready" {
							t.Fatalf("child said %q", l)
						}
					}
					for _, k := range kids {
						fmt.Fprintln(k.in, "go")
					}
					col := newCollector(t, s, rings)
					col.run(count*uint64(n), 2*time.Minute)
					for _, k := range kids {
						if err := k.wait(); err != nil {
							t.Fatalf("producer: %v", err)
						}
					}
					for id := 1; id <= n; id++ {
						if col.next[uint16(id)] != count {
							t.Fatalf("producer %d: %d records, want %d", id, col.next[uint16(id)], count)
						}
					}
					for _, r := range rings {
						if r.Used() != 0 {
							t.Fatalf("ring %d holds %d bytes after the run", r.Slot(), r.Used())
						}
					}
				})
			}
		}
	}
}

// TestKillMidCommit kills a producer that holds an uncommitted claim in a
// shared ring. Until it dies the ring is blocked at its claim (a live claim is
// never unblocked); once its death is detected the claim becomes padding and
// every other producer's records arrive.
func TestKillMidCommit(t *testing.T) {
	s := newSegment(t, 4<<20)
	r := newRing(t, s, KindIngressMPMC, 1<<16)
	const pre, count = 100, 20000
	holder := startChild(t, "holder", append(segEnv(s, r.Slot()), "ID=9", "PRE="+strconv.Itoa(pre))...)
	if l := holder.line(t, 30*time.Second); l != "claimed" {
		t.Fatalf("holder said %q", l)
	}
	pid := holder.cmd.Process.Pid
	start, err := ProcessStart(pid)
	if err != nil {
		t.Fatal(err)
	}
	var kids []*child
	for id := 1; id <= 2; id++ {
		k := startChild(t, "producer", append(segEnv(s, r.Slot()), "ID="+strconv.Itoa(id),
			"COUNT="+strconv.Itoa(count), "SEED=7", "MAXSIZE=100", "BATCH=1")...)
		if l := k.line(t, 30*time.Second); l != "ready" {
			t.Fatalf("child said %q", l)
		}
		fmt.Fprintln(k.in, "go")
		kids = append(kids, k)
	}
	col := newCollector(t, s, []*Ring{r})
	unblocked := 0
	col.onStalled = func(c *Consumer) {
		ok, err := c.Unblock(func(id uint16) bool { return id == 9 && !ProcessAlive(pid, start) })
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			unblocked++
		}
	}
	// Phase 1: the holder is alive. Its committed records arrive, then the
	// ring blocks at its claim; nothing else gets through.
	col.run(pre, 30*time.Second)
	time.Sleep(300 * time.Millisecond)
	deadline := time.Now().Add(200 * time.Millisecond)
	for time.Now().Before(deadline) {
		for _, c := range col.cons {
			c.Poll(0, func(Record) { t.Fatal("a record passed a live producer's uncommitted claim") })
			col.onStalled(c)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if unblocked != 0 {
		t.Fatal("Unblock padded the claim of a live producer")
	}
	// Phase 2: SIGKILL the holder between claim and commit.
	holder.kill()
	col.run(pre+2*count, time.Minute)
	if unblocked != 1 {
		t.Fatalf("unblocked %d claims, want 1", unblocked)
	}
	if col.next[9] != pre {
		t.Fatalf("holder: %d records, want its %d committed ones", col.next[9], pre)
	}
	for _, k := range kids {
		if err := k.wait(); err != nil {
			t.Fatal(err)
		}
	}
}

func init() { roles["idle"] = roleIdle }

// roleIdle waits on an empty ring for WAIT_MS, then prints the CPU time the
// process used while it waited, in microseconds, and whether it saw a
// record. The start-up before the wait is not counted: under the race
// detector or an emulator (make test-arm64) it alone can cost more than a
// spinning wait would.
func roleIdle() error {
	s, r, err := openRingEnv()
	if err != nil {
		return err
	}
	defer s.Close()
	c, err := r.Consumer()
	if err != nil {
		return err
	}
	cpu := func() int64 {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return ru.Utime.Nano()/1000 + ru.Stime.Nano()/1000
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(envInt("WAIT_MS"))*time.Millisecond)
	defer cancel()
	before := cpu()
	got := c.Wait(ctx, DefaultSpin)
	fmt.Println(cpu()-before, got)
	return nil
}

// TestIdleConsumerSleeps checks that a consumer waiting on an empty ring
// sleeps in the kernel instead of spinning: over a second of waiting the
// process uses a small fraction of a CPU.
func TestIdleConsumerSleeps(t *testing.T) {
	s := newSegment(t, 1<<20)
	r := newRing(t, s, KindIngressSPSC, 4096)
	k := startChild(t, "idle", append(segEnv(s, r.Slot()), "WAIT_MS=1000")...)
	line := k.line(t, 30*time.Second)
	var cpuUs int64
	var got bool
	if _, err := fmt.Sscan(line, &cpuUs, &got); err != nil {
		t.Fatalf("child printed %q: %v", line, err)
	}
	if got {
		t.Fatal("the idle consumer saw a record in an empty ring")
	}
	// Spinning for the whole second would cost ~1,000,000 µs; sleeping
	// costs the spin phase, a few wake-ups and the runtime's background
	// work (slower under the race detector or an emulator), hence the
	// generous bound.
	if cpuUs > 150000 {
		t.Fatalf("idle consumer used %d µs of CPU in 1 s of waiting: it does not sleep", cpuUs)
	}
	t.Logf("idle consumer: %d µs of CPU in 1 s", cpuUs)
	if err := k.wait(); err != nil {
		t.Fatal(err)
	}
}
