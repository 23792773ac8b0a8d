package shm

import (
	"fmt"
	"os"
	"time"
)

// Observer is a read-only view of a bus's segment for tools that watch it
// (framebus stat). OpenObserver opens the file O_RDONLY and maps it
// PROT_READ, so nothing this process does can change a byte of the segment:
// a store through the mapping would fault instead of disturbing the bus. It
// takes no lock, attaches to nothing and signals nothing; the sidecar and
// the drivers cannot tell it is there.
//
// Its only operation is Snapshot, which loads words with plain atomic loads
// (MOV on amd64, LDAR on arm64: neither writes its cache line, which a
// read-only mapping would not allow). Everything read is shared memory that
// any process mapping the segment can write, so a Snapshot is information
// for a human, checked only as far as Segment.Ring checks a directory slot.
//
// An Observer is safe for concurrent use. Close unmaps the file.
type Observer struct {
	seg *Segment
	fi  os.FileInfo // the file mapped, to notice a sidecar's new segment
}

// OpenObserver maps the segment of bus name in dir (zero values mean the
// defaults) read-only and validates its header as Open does: it returns an
// error wrapping fs.ErrNotExist when there is no segment, ErrNotReady while
// a sidecar is initialising it, and a validation sentinel if it is not a
// compatible segment.
func OpenObserver(dir, name string) (*Observer, error) {
	s, fi, err := mapFile(dir, name, false)
	if err != nil {
		return nil, err
	}
	return &Observer{seg: s, fi: fi}, nil
}

// Path returns the segment's file path.
func (o *Observer) Path() string { return o.seg.path }

// Replaced reports whether the segment's path no longer names the file this
// Observer mapped: the sidecar shut down cleanly (it removes the file) and
// perhaps a new one created another. A sidecar that adopts the segment after
// a crash keeps the file; Snapshot shows its new epoch.
func (o *Observer) Replaced() bool {
	fi, err := os.Stat(o.seg.path)
	return err != nil || !os.SameFile(fi, o.fi)
}

// Close unmaps the segment. It is idempotent.
func (o *Observer) Close() error { return o.seg.Close() }

// Snapshot is the segment's state as one Observer.Snapshot read it. The
// words are read one after another while the bus runs, so they are not one
// consistent instant: each is what it was when it was loaded.
type Snapshot struct {
	Taken        time.Time // when the reading started
	Epoch        uint64    // the epoch of the sidecar that (re)published the segment
	SidecarPid   int       // that sidecar's pid
	SidecarStart uint64    // its start time, clock ticks since boot (ProcessStart)
	Created      time.Time // when the segment file was created
	Size         uint64    // segment bytes
	MaxRings     int       // directory slots
	Flags        uint64    // global flag word (FlagPause, FlagDegraded, FlagShuttingDown)
	Durable      uint64    // durable watermark: the highest committed WAL sequence
	Rings        []RingSnapshot
	Counters     []CounterValue
}

// RingSnapshot is one directory slot that is not free, with its ring's
// positions and drop counters.
type RingSnapshot struct {
	RingInfo
	// Head is the consumer's released position, Tail the producers' claim
	// position (byte counts since the ring was allocated); Used is
	// Tail-Head clamped to the capacity, the fill level backpressure uses.
	Head, Tail, Used uint64
	// DroppedFull and DroppedPaused are the records the producer counted
	// as dropped because the ring was full or PAUSE was raised.
	DroppedFull, DroppedPaused uint64
	// Err is set when the slot's geometry fails Segment.Ring's checks; the
	// positions and counters are zero then.
	Err error
}

// Snapshot reads the header, the directory and every ring's positions and
// drop counters. It fails with a validation error (ErrNotReady while a
// sidecar adopts the segment) if the header does not validate now.
func (o *Observer) Snapshot() (Snapshot, error) {
	s := o.seg
	snap := Snapshot{Taken: time.Now()}
	if _, err := ValidateHeader(s.mem); err != nil {
		return snap, fmt.Errorf("%s: %w", s.path, err)
	}
	snap.Epoch = s.Epoch()
	snap.SidecarPid, snap.SidecarStart = s.SidecarPid()
	snap.Created = s.Created()
	snap.Size, snap.MaxRings = s.size, s.slots
	snap.Flags, snap.Durable = s.Flags(), s.Durable()
	for _, info := range s.Rings() {
		rs := RingSnapshot{RingInfo: info}
		if r, err := s.Ring(info.Slot); err != nil {
			rs.Err = err
		} else {
			rs.Head = r.Head()
			rs.Tail = u64At(r.ctl, rcTail).Load()
			rs.Used = r.Used()
			rs.DroppedFull, rs.DroppedPaused = r.Dropped(DropRingFull), r.Dropped(DropPaused)
		}
		snap.Rings = append(snap.Rings, rs)
	}
	snap.Counters = s.Counters()
	return snap, nil
}
