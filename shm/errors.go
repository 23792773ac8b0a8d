package shm

import (
	"errors"
	"fmt"
)

// Segment validation errors. Validate returns exactly one of these, wrapped
// with the detail that failed.
var (
	// ErrBadMagic means the file does not start with "FRAMEBUS": it is not a
	// framebus segment, or the --shm-dir/--name points at the wrong file.
	ErrBadMagic = errors.New("shm: not a framebus segment (bad magic)")
	// ErrVersion means the segment was created with another layout version:
	// restart the sidecar and drivers with the same framebus release.
	ErrVersion = errors.New("shm: segment layout version mismatch")
	// ErrChecksum means the header's static fields do not match their CRC:
	// the segment is corrupt; stop the sidecar and remove the file.
	ErrChecksum = errors.New("shm: segment header checksum mismatch")
	// ErrBadHeader means a header field is out of range or inconsistent
	// with the file size.
	ErrBadHeader = errors.New("shm: segment header is inconsistent")
	// ErrNotReady means the sidecar has not finished initialising the
	// segment (its ready word is not set). Retry shortly.
	ErrNotReady = errors.New("shm: segment not ready")
	// ErrTooSmall means the file is smaller than a header, or than the size
	// its header declares.
	ErrTooSmall = errors.New("shm: segment file too small")
)

// Segment management errors.
var (
	// ErrExists means a segment of that name exists already.
	ErrExists = errors.New("shm: segment already exists")
	// ErrNoSpace means the file system holding the segment (usually
	// /dev/shm) has too little free space: enlarge it or choose a smaller
	// preset.
	ErrNoSpace = errors.New("shm: not enough space for the segment")
	// ErrConfig means a Config field is invalid.
	ErrConfig = errors.New("shm: invalid config")
	// ErrNoSlot means every ring directory slot is in use.
	ErrNoSlot = errors.New("shm: no free ring directory slot")
	// ErrNoRoom means no gap in the segment's data area is large enough for
	// the requested ring.
	ErrNoRoom = errors.New("shm: no room in the segment for a ring of that size")
	// ErrBadSlot means a directory slot index is out of range, free, or
	// describes a ring outside the segment.
	ErrBadSlot = errors.New("shm: bad ring directory slot")
	// ErrClosed means the segment was closed.
	ErrClosed = errors.New("shm: segment closed")
	// ErrNoCounter means every counter slot is in use.
	ErrNoCounter = errors.New("shm: no free counter slot")
	// ErrNoACL means SetAccess was given uids to admit but the file system
	// does not support POSIX ACLs: put those users in the file's group.
	ErrNoACL = errors.New("shm: the file system does not support POSIX ACLs")
)

// Ring errors.
var (
	// ErrFull means the ring has no room for the claim right now. The
	// caller applies its backpressure policy (wait, drop, or fail).
	ErrFull = errors.New("shm: ring full")
	// ErrTooLarge means a record is larger than the ring's MaxPayload.
	ErrTooLarge = errors.New("shm: record larger than the ring allows")
	// ErrCorrupt is wrapped by every *CorruptError.
	ErrCorrupt = errors.New("shm: corrupt ring")
	// ErrTimeout means a wait ended at its deadline.
	ErrTimeout = errors.New("shm: wait timed out")
)

// CorruptError reports a ring whose shared state breaks the protocol: a
// record length, type or position that no correct producer writes. The
// consumer stops at the bad record and does not advance; the caller decides
// what to do with the producer (the sidecar detaches it).
type CorruptError struct {
	Slot   int    // directory slot of the ring
	Name   string // owner name from the directory
	Pos    uint64 // ring position of the bad record or word
	Reason string // what is wrong
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("shm: corrupt ring %d (%q) at position %d: %s", e.Slot, e.Name, e.Pos, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }
