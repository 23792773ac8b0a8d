package sidecar

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
	"github.com/framebus/framebus/wal"
)

// idleWake bounds how long an idle drain loop sleeps.
const idleWake = time.Second

// drainLoop is the one goroutine that reads the rings. Per pass it releases
// what the WAL committed, polls every ring for a batch, copies and verifies
// each frame, appends the good ones to the WAL together with the ring's new
// read position, and runs the backpressure and lifecycle checks. With
// nothing to do it sleeps on the segment's doorbell.
func (s *Sidecar) drainLoop() {
	defer close(s.drained)
	d := &drainer{s: s, arena: make([]byte, 0, 1<<20), spin: idleSpin()}
	d.pause = batchPause(s.cfg)
	d.budget, d.maxFrame = drainBudget(s.cfg), maxWALFrame(s.cfg)
	if s.cfg.HighPerformanceMode {
		// Poll longer before sleeping: a producer that commits again
		// within this time costs no futex wake-up on either side.
		d.spin = highPerformanceSpin
	}
	lastHouse := time.Time{}
	for {
		s.applyReleases()
		s.runAfterPass()
		ver := s.ringsVersion.Load()
		ps := s.snapshot()
		total := 0
		d.queueFull = false
		durable := s.wal.Durable()
		for _, p := range ps {
			if !p.corrupt {
				total += d.drainRing(p)
			}
		}
		if d.queueFull {
			// The WAL's write queue is full: at saturation until its
			// next commit, when its disk fails until it works again. The
			// frames wait in their rings; look again after a commit (it
			// rings the doorbell) or 10 ms, not in a loop.
			s.housekeeping(ps, true)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			s.wake.Wait(ctx, 0, func() bool { return s.wal.Durable() != durable || s.stopRequested() })
			cancel()
			if s.stopRequested() {
				s.finalDrain()
				return
			}
			continue
		}
		if now := time.Now(); total == 0 || now.Sub(lastHouse) > 10*time.Millisecond {
			s.housekeeping(ps, false)
			lastHouse = now
		}
		select {
		case <-s.drainReq:
			if total == 0 {
				s.finalDrain()
				return
			}
			continue
		default:
		}
		if total > 0 && total < s.cfg.MaxBatchSize && !s.latencySensitive() {
			// A short pass: let the rings fill for a moment rather than
			// chase the producers record by record (every pass costs a
			// WAL append and its lock, and the cache lines it reads
			// bounce between the cores). The pause is batch_flush_ms,
			// at most a quarter of the commit interval.
			// A commit cuts it short: its ring space is released at
			// once, which is when drivers see their frames durable.
			s.committed.WaitFor(d.pause, s.releasesPending.Load)
		}
		if total == 0 {
			// Idle: sleep until a commit, a WAL commit or shutdown rings
			// the doorbell, or a second passes (housekeeping: drivers
			// that died without closing their socket). Every wake-up
			// costs CPU in the runtime too, so idle means few of them.
			ctx, cancel := context.WithTimeout(context.Background(), idleWake)
			s.wake.Wait(ctx, d.spin, func() bool { return s.ringsVersion.Load() != ver || s.workPending(ps) || s.seg.FlagsForged() })
			cancel()
		}
	}
}

// latencySensitive reports whether someone waits on the drain loop for
// each frame: a live-only subscriber, or a requester whose command is in
// flight (its acks come through the rings). The drain loop then does not
// pause to batch.
func (s *Sidecar) latencySensitive() bool {
	if lp := s.subs.live.Load(); lp != nil && len(*lp) > 0 {
		return true
	}
	return s.router.busy()
}

// stopRequested reports whether Shutdown asked the drain loop to finish.
func (s *Sidecar) stopRequested() bool {
	select {
	case <-s.drainReq:
		return true
	default:
		return false
	}
}

// finalDrain commits what was appended and releases it, at shutdown.
func (s *Sidecar) finalDrain() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.wal.Flush(ctx); err != nil {
		s.log.Error("final WAL commit failed; frames stay in their rings for the next sidecar", "err", err)
		return
	}
	s.applyReleases()
}

// workPending is the drain loop's wake-up condition.
func (s *Sidecar) workPending(ps []*producer) bool {
	for _, p := range ps {
		if !p.corrupt && p.cons.Ready() {
			return true
		}
	}
	s.mu.Lock()
	n := len(s.mu.releases) + len(s.mu.afterPass) + len(s.mu.liveAudit)
	s.mu.Unlock()
	select {
	case <-s.drainReq:
		return true
	default:
	}
	return n > 0
}

func (s *Sidecar) snapshot() []*producer {
	s.mu.Lock()
	defer s.mu.Unlock()
	ps := make([]*producer, 0, len(s.mu.producers))
	for _, p := range s.mu.producers {
		ps = append(ps, p)
	}
	return ps
}

// applyReleases frees ring space up to the positions the WAL committed and
// publishes the durable watermark.
func (s *Sidecar) applyReleases() {
	s.mu.Lock()
	if len(s.mu.releases) == 0 {
		s.mu.Unlock()
		return
	}
	rel := s.mu.releases
	s.mu.releases = map[string]uint64{}
	s.releasesPending.Store(false)
	durable := s.mu.durable
	byKey := make(map[string]*producer, len(s.mu.producers))
	for _, p := range s.mu.producers {
		byKey[p.key] = p
	}
	s.mu.Unlock()
	for k, pos := range rel {
		if p := byKey[k]; p != nil {
			// The position never exceeds what this consumer read.
			p.cons.Release(pos)
		}
	}
	s.seg.PublishDurable(durable)
}

// drainer holds the drain goroutine's scratch buffers.
type drainer struct {
	s         *Sidecar
	frames    []wal.Frame
	acks      []int // indexes of the acks in frames
	arena     []byte
	queueFull bool          // a ring's batch did not fit the WAL's memory queue this pass
	spin      time.Duration // how long an idle pass polls before it sleeps
	pause     time.Duration // the wait after a short pass (batchPause)
	budget    int           // bytes a pass takes from a ring at most (drainBudget)
	maxFrame  int           // the largest frame taken (maxWALFrame)
}

// batchPause is how long the drain loop lets the rings fill after a pass
// that found fewer than max_batch_size frames: batch_flush_ms, but at most
// a quarter of wal_flush_ms, so that batching adds little to the
// publish-to-durable latency.
func batchPause(c Config) time.Duration {
	return min(c.BatchFlush.Duration, c.WALFlush.Duration/4)
}

// drainBudget bounds the bytes one drain pass takes from a ring (besides
// max_batch_size frames): a quarter of max_memory_bytes, so that a pass of
// large frames fits the WAL's memory queue while it is up to three
// quarters full (a pass of max_batch_size frames of 4 KiB or more would
// not fit even an empty queue at the default 8 MiB, and would be retried
// forever).
func drainBudget(c Config) int { return int(min(c.MaxMemoryBytes/4, 1<<30)) }

// maxWALFrame is the largest frame the sidecar takes: what fits a drain
// pass's budget with its entry header. A frame the WAL's queue could take
// only when nearly empty would hold PAUSE over every driver until then,
// and never get in while other drivers keep the queue busy; it is
// rejected instead. Never more than the WAL's own frame limit.
func maxWALFrame(c Config) int {
	return min(drainBudget(c), wal.MaxFrameBytes) - wal.EntryHeaderSize
}

// idleSpin is how long an idle drain loop polls the rings before it sleeps
// on the doorbell: shm.DefaultSpin, or nothing on a machine of two cores
// or fewer, where the spinning thread takes the core that the drivers,
// subscribers and the WAL writer need. Measured on 2 cores (make
// bench-sub): command round trip p99 2.4 → 0.8 ms and live p50 158 → 108 µs
// without the spin, and durable ingest within the run-to-run noise.
func idleSpin() time.Duration {
	if runtime.GOMAXPROCS(0) <= 2 {
		return 0
	}
	return shm.DefaultSpin
}

// highPerformanceSpin is the idle poll of high_performance_mode.
const highPerformanceSpin = 200 * time.Microsecond

// drainRing moves one batch of ring p into the WAL and returns how many
// records it took.
func (d *drainer) drainRing(p *producer) int {
	s := d.s
	t0 := time.Now()
	d.frames = d.frames[:0]
	d.acks = d.acks[:0]
	d.arena = d.arena[:0]
	start := p.cons.ReadPos()
	var rejected uint64
	var reason string
	n, err := p.cons.PollBytes(s.cfg.MaxBatchSize, d.budget, func(rec shm.Record) {
		if len(rec.Payload) > d.maxFrame {
			// The WAL's memory queue could never take it: refused like
			// a frame that fails verification, or the ring would stall.
			rejected++
			reason = fmt.Sprintf("frame of %d bytes is larger than the %d bytes a quarter of max_memory_bytes (%d) allows", len(rec.Payload), d.maxFrame, s.cfg.MaxMemoryBytes)
			return
		}
		// Copy before verifying: the driver can still write the ring.
		off := len(d.arena)
		d.arena = append(d.arena, rec.Payload...)
		buf := d.arena[off:len(d.arena):len(d.arena)]
		if !kindValid(rec.Type) {
			rejected++
			reason = "unknown record type " + strconv.Itoa(int(rec.Type))
			return
		}
		if err := schema.Verify(schema.Kind(rec.Type), buf); err != nil {
			rejected++
			reason = err.Error()
			return
		}
		if schema.Kind(rec.Type) == schema.KindAck {
			d.acks = append(d.acks, len(d.frames))
		}
		d.frames = append(d.frames, wal.Frame{Kind: rec.Type, Data: buf})
	})
	var corrupt *shm.CorruptError
	if errors.As(err, &corrupt) && !p.corrupt {
		s.detach(p, corrupt.Error())
	}
	// Rejections count once their records' position is in the WAL's
	// queue: a failed append re-reads them from the ring.
	countRejected := func() {
		if rejected > 0 {
			p.rejected.Add(rejected)
			s.m.rejected.Add(float64(rejected))
			s.logRejected(p, rejected, reason)
		}
	}
	end := p.cons.ReadPos()
	// Everything this poll found was published after the last poll that
	// read the ring to its end started, but not much before the previous
	// pass (a ring that was idle for a while has new frames only): the
	// WAL's commit interval counts from then, not from now.
	since := t0
	if !p.caughtUp.IsZero() {
		since = p.caughtUp
		if floor := t0.Add(-2 * d.pause); since.Before(floor) {
			since = floor
		}
	}
	if n < s.cfg.MaxBatchSize {
		// (A failed append below seeks back and sets it again.)
		p.caughtUp = t0
	}
	if end == start {
		return n // nothing read, nothing rejected
	}
	if len(d.frames) > 0 {
		t1 := time.Now()
		// Frames and the ring's new read position go into the same WAL
		// transaction: a restarted sidecar resumes exactly after them.
		last, err := s.wal.AppendFromSince(p.key, end, since, d.frames...)
		if err != nil {
			// The WAL's memory queue is full (its disk is failing): leave
			// the frames in the ring, where they are safe, and push back.
			p.cons.Seek(start)
			p.caughtUp = since
			if !errors.Is(err, wal.ErrQueueFull) {
				s.log.Error("WAL append failed", "err", err)
			}
			if s.seg.Flags()&shm.FlagPause == 0 {
				s.log.Warn("WAL memory queue full: pausing producers; frames wait in their rings", "err", err)
			}
			s.seg.SetFlags(shm.FlagPause)
			d.queueFull = true
			return 0
		}
		countRejected()
		// Acks go to the router only once they are in the WAL's queue
		// (a failed append re-reads them from the ring).
		for _, i := range d.acks {
			s.router.onAck(p, d.frames[i].Data)
		}
		s.feedLive(d.frames, last)
		s.m.batchSend.Observe(time.Since(t1).Seconds())
		s.m.batchFlush.Observe(time.Since(t0).Seconds())
		s.m.batchSize.Observe(float64(len(d.frames)))
		p.published.Add(uint64(len(d.frames)))
		return n
	}
	// Only rejected records or padding: the position alone.
	countRejected()
	s.wal.SetPosition(p.key, end)
	return n
}

// housekeeping runs the backpressure controller, reports rejections to
// drivers, and retires and frees the rings of drivers that are gone.
//
// queueFull says that a batch did not fit the WAL's write queue in this
// pass: the queue counts as full whatever its fill (one batch can be most of
// it), so PAUSE stays up until the queue has really drained.
// pauseLogEvery bounds how often the WAL queue's PAUSE is logged.
const pauseLogEvery = 10 * time.Second

func (s *Sidecar) housekeeping(ps []*producer, queueFull bool) {
	c := s.cfg
	s.repairSegment(ps)
	// Global PAUSE on the WAL's write queue (it grows while commits fail
	// or the disk falls behind): its fill is the larger of its byte and
	// frame fills.
	frames, pend := s.wal.Pending()
	fill := max(float64(pend)/float64(c.MaxMemoryBytes), float64(frames)/float64(c.AsyncWriteQueueSize))
	if queueFull {
		fill = 1
	}
	// The retain policy's hard cap: unacked cursors hold more WAL than
	// cursor_max_bytes.
	held := c.CursorPolicy == "retain" && s.wal.Stats().FootprintBytes > c.CursorMaxBytes
	if held && !s.heldPause {
		var names []string
		for name, ci := range s.wal.Cursors() {
			names = append(names, fmt.Sprintf("%s (acked %d)", name, ci.Acked))
		}
		slices.Sort(names)
		s.log.Error("unacked durable cursors hold the WAL above cursor_max_bytes: pausing producers until they ack; delete an abandoned one with DELETE /v1/cursors/NAME, or use cursor_policy drop",
			"cursor_max_bytes", c.CursorMaxBytes, "cursors", strings.Join(names, ", "))
	}
	s.heldPause = held
	if fill >= c.BackpressureThreshold || held {
		if s.seg.Flags()&shm.FlagPause == 0 && !held {
			s.pauseLog.pauses++
			if time.Since(s.pauseLog.at) >= pauseLogEvery {
				s.log.Warn("WAL write queue above the backpressure threshold: pausing producers (the disk does not keep up; logged at most every 10 s)",
					"pending_bytes", pend, "pending_frames", frames, "pauses_since_last_line", s.pauseLog.pauses, "resumes_since_last_line", s.pauseLog.resumes)
				s.pauseLog.at, s.pauseLog.pauses, s.pauseLog.resumes = time.Now(), 0, 0
			}
		}
		s.seg.SetFlags(shm.FlagPause)
	} else if s.seg.Flags()&shm.FlagPause != 0 && fill < c.ResumeLo {
		s.seg.ClearFlags(shm.FlagPause)
		if s.pauseLog.resumes++; s.pauseLog.pauses == 0 && s.pauseLog.resumes == 1 {
			// The resume right after a logged pause.
			s.log.Info("WAL queue drained: producers resume")
		}
		for _, p := range ps {
			ev := p.ring.SpaceEvent()
			ev.Wake()
		}
	}
	for _, p := range ps {
		s.checkStalled(p, time.Now())
		// Per-ring PAUSE with hysteresis.
		fill := float64(p.ring.Used()) / float64(p.ring.Capacity())
		if !p.paused && fill >= c.PauseHi {
			p.paused = true
			s.seg.SetRingFlags(p.slot, shm.FlagPause)
		} else if p.paused && fill <= c.ResumeLo {
			p.paused = false
			s.seg.ClearRingFlags(p.slot, shm.FlagPause)
			ev := p.ring.SpaceEvent()
			ev.Wake()
		}
		// A notice that does not go out (the driver does not read its
		// socket) is not lost: the next one carries its count too.
		if r := p.rejected.Load(); r > p.notified &&
			s.notify(p, &shm.Message{Op: shm.OpRejected, Count: r - p.notified, Message: "frames rejected; the last: " + p.rejectLog.reason}) {
			p.notified = r
		}
		switch p.getState() {
		case stateOrphan:
			if !shm.ProcessAlive(p.pid, p.start) {
				p.setState(stateRetiring)
			}
		case stateRetiring:
			if (p.corrupt || !p.cons.Ready()) && p.cons.Head() == p.cons.ReadPos() {
				s.freeProducer(p)
			}
		}
	}
}

// freeProducer frees a drained ring of a driver that is gone.
func (s *Sidecar) freeProducer(p *producer) {
	s.mu.Lock()
	delete(s.mu.producers, p.slot)
	s.mu.Unlock()
	s.seg.FreeRing(p.slot)
	s.wal.DeletePosition(p.key)
	// After the drain: the acks it held have reached the router.
	s.router.unserve(p, "exited")
	s.m.detaches.Inc()
	s.log.Info("driver gone, ring drained and freed", "producer", p.name, "slot", p.slot, "frames", p.published.Load())
}

// detach cuts off a driver whose ring broke the record protocol: what it
// committed before the bad record is kept; the ring is freed.
func (s *Sidecar) detach(p *producer, why string) {
	s.log.Error("detaching driver: its ring is corrupt", "producer", p.name, "slot", p.slot, "pid", p.pid, "reason", why)
	// Nothing from the bad record on is read; the ring is freed once what
	// came before it is committed. Retiring before the driver is told and
	// its socket closes: its serve goroutine then does not take it for a
	// driver that closed its socket, and keep the ring until it exits.
	p.corrupt = true
	p.setState(stateRetiring)
	s.notify(p, &shm.Message{Op: shm.OpError, Code: shm.CodeCorrupted, Message: why})
	if c := p.conn.Load(); c != nil {
		c.Close()
	}
	s.m.corrupt.Inc()
}
