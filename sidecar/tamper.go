package sidecar

import (
	"fmt"
	"strings"
	"time"
)

// Hostile or broken clients: what the sidecar does about input it cannot
// trust beyond checking it (docs/security.md). Everything here runs on the
// drain goroutine.

// repairLogEvery bounds how often restored segment words are logged.
const repairLogEvery = 10 * time.Second

// rejectLogEvery bounds how often one driver's rejected frames are logged:
// a driver that publishes nothing but malformed frames would otherwise get
// a line per drain pass.
const rejectLogEvery = time.Second

// repairSegment puts back the header and directory words of the segment
// that another process overwrote (shm.Segment.Repair) and the doorbell's
// waiter count (shm.Segment.RepairDoorbell), counts them, logs
// them at most every repairLogEvery, and wakes every driver that may be
// waiting on a PAUSE flag that was forged.
func (s *Sidecar) repairSegment(ps []*producer) {
	what := s.seg.Repair()
	// Housekeeping runs on the drain goroutine, the doorbell's only
	// sleeper, between its waits.
	if s.seg.RepairDoorbell() {
		what = append(what, "doorbell")
	}
	if len(what) == 0 {
		return
	}
	s.m.repairs.Add(float64(len(what)))
	s.repairLog.words += len(what)
	if time.Since(s.repairLog.at) >= repairLogEvery {
		// Which process wrote them cannot be known: every attached
		// process maps the segment writable.
		s.log.Warn("another process overwrote segment words that only the sidecar writes; restored them (any process that can open the segment file can do this: see docs/security.md; logged at most every 10 s)",
			"words", strings.Join(what, ","), "restored_since_last_line", s.repairLog.words)
		s.repairLog.at, s.repairLog.words = time.Now(), 0
	}
	for _, p := range ps {
		ev := p.ring.SpaceEvent()
		ev.Wake()
	}
}

// stallTimeout is how long a driver's ring may stay Stalled (a committed
// header overwritten by another process) before the driver is detached.
const stallTimeout = 2 * time.Second

// checkStalled detaches a driver whose ring has been stalled for
// stallTimeout: nothing it publishes can be read any more, and without
// this it would block (or drop) until it exits.
func (s *Sidecar) checkStalled(p *producer, now time.Time) {
	if p.corrupt || !p.cons.Stalled() {
		p.stalledSince = time.Time{}
		return
	}
	if p.stalledSince.IsZero() {
		p.stalledSince = now
		return
	}
	if now.Sub(p.stalledSince) >= stallTimeout {
		s.detach(p, fmt.Sprintf("the ring is stalled: its producer's tail is past read position %d, where no record is committed, since %v (another process overwrote it)",
			p.cons.ReadPos(), now.Sub(p.stalledSince).Round(time.Millisecond)))
	}
}

// logRejected logs a driver's rejected frames, at most every
// rejectLogEvery per driver, with the count since its last line.
func (s *Sidecar) logRejected(p *producer, n uint64, reason string) {
	p.rejectLog.frames += n
	p.rejectLog.reason = reason
	if time.Since(p.rejectLog.at) < rejectLogEvery {
		return
	}
	s.log.Warn("frames rejected (failed verification, or too large)", "producer", p.name, "slot", p.slot, "pid", p.pid,
		"count", p.rejectLog.frames, "last_reason", reason)
	p.rejectLog.at, p.rejectLog.frames = time.Now(), 0
}
