package wal

import (
	"fmt"
	"strings"
	"time"
)

// FileName is the name of the WAL file inside Options.Dir.
const FileName = "framebus.wal"

// Defaults of the Options fields whose zero value stands for a default.
const (
	DefaultFlushInterval  = 10 * time.Millisecond
	DefaultMaxBatchBytes  = 8 << 20
	DefaultSegmentBytes   = 8 << 10
	DefaultMaxBytes       = 8 << 30
	DefaultMaxMemoryBytes = 64 << 20
	DefaultLockTimeout    = time.Second
)

// Cursor policies: the values of Options.CursorPolicy.
const (
	// CursorRetain makes retention wait for durable cursors: it never
	// deletes a segment holding a frame some cursor has not acked, and
	// the file grows past MaxBytes (and keeps frames past MaxAge) until
	// the slowest cursor acks them. The default.
	CursorRetain = "retain"
	// CursorDrop makes retention ignore cursors: it deletes as without
	// them, and moves every cursor it overtakes to just before the new
	// first frame, counting the frames it never acked in its Lost.
	CursorDrop = "drop"
)

// Limits checked by Validate.
const (
	minSegmentBytes = 1 << 10
	maxSegmentBytes = 1 << 20
	// maxFrameBytes bounds one frame: its length is stored in a uint32 and
	// a frame must be storable as one bbolt value.
	maxFrameBytes = 1 << 30
)

// Options configure a WAL. The zero value of every field but Dir is usable:
// each field's comment says what zero means.
type Options struct {
	// Dir is the directory of the WAL; the file is Dir/framebus.wal. It is
	// created (mode 0750) if missing. Required.
	Dir string

	// FlushInterval: a group commit starts when the oldest frame (or
	// position) not yet committed is this old (the seed's wal_flush_ms).
	// Zero means 10 ms.
	FlushInterval time.Duration

	// MaxBatchBytes: a commit also starts as soon as this many bytes are
	// pending, without waiting for FlushInterval; and one commit writes at
	// most this many bytes of frames (rounded up to whole segments), so
	// that a queue grown while commits failed drains in bounded
	// transactions. It is lowered to MaxBytes/64 if that is smaller, so
	// that the pages of the commits in flight stay a small part of the
	// retention bound. Zero means 8 MiB.
	MaxBatchBytes int

	// SegmentBytes is the target size of one stored segment, counting
	// bbolt's 32-byte per-value overhead, so that segments of the default
	// 8 KiB fill 16 KiB pages exactly two at a time. Frames larger than a
	// segment get a segment of their own. Zero means 8 KiB; allowed: powers
	// of two from 1 KiB to 1 MiB (so that segments tile 16 KiB pages).
	SegmentBytes int

	// MaxBytes is the retention bound (wal_max_bytes): every commit deletes
	// whole oldest segments while the space the stored segments take in
	// the file's pages (Stats.FootprintBytes: SegmentBytes per segment)
	// exceeds it. The newest segment is always kept. The file stays within
	// about MaxBytes plus 2 commits, bbolt's growth step (MaxBytes/64, at
	// most 16 MiB) and its branch pages (0.2 %). Zero means 8 GiB.
	MaxBytes int64

	// MaxAge, if positive, also deletes segments whose newest frame was
	// committed longer ago than this (wal_max_age). Zero means no age
	// limit.
	MaxAge time.Duration

	// MaxMemoryBytes bounds the queue of frames appended but not yet
	// committed (counted as stored: data plus 6 bytes per frame). It only
	// fills while commits fail or fall behind; Append then returns
	// ErrQueueFull. Zero means 64 MiB.
	MaxMemoryBytes int64

	// LockTimeout is how long Open waits for the file lock held by another
	// process before it fails with ErrLocked. Zero means 1 s.
	LockTimeout time.Duration

	// NoSync skips fsync: a commit is then not durable across a power
	// failure or kernel crash. For tests and benchmarks that say so only.
	NoSync bool

	// Compress stores each segment's frame area S2-compressed (flags 0x01
	// in the segment header; see segment.go) when that makes it smaller,
	// trading writer CPU for fewer bytes written to the file. Values that
	// do not shrink, and frame areas over 64 MiB, are stored as they are.
	// Readers (Open, Iterate, Verify, ReadStats) accept both forms
	// whatever this says, so it may be switched between runs. Stats and
	// retention count stored (compressed) value lengths. Zero (false)
	// means off.
	Compress bool

	// CursorPolicy says what retention (MaxBytes, MaxAge) does with frames
	// that a durable cursor (SetCursor) has not acked yet: CursorRetain
	// keeps them, holding deletion at the first segment holding a frame
	// after the lowest cursor's Acked (Stats.RetentionHeld is true while it
	// does), so that the file may grow past MaxBytes: the sidecar raises
	// PAUSE at a hard cap it computes from Stats.FootprintBytes.
	// CursorDrop deletes as if there were no cursors and, in the same
	// transaction, advances every cursor whose Acked is below the new
	// FirstSeq − 1 to FirstSeq − 1, adding the frames it skipped to the
	// cursor's Lost (see OnCursorLost). Zero ("") means CursorRetain.
	CursorPolicy string

	// OnCommit, if set, is called by the writer goroutine after each
	// successful commit (the durability point), in commit order. It runs
	// on the writer's time: keep it short (publish the watermark, wake
	// waiters) and do not call Flush or Close from it.
	OnCommit func(Commit)

	// OnError, if set, is called by the writer goroutine with every failed
	// commit (wrapping ErrCommit). The frames stay queued and the writer
	// retries with exponential backoff from 10 ms to 1 s; once a commit
	// succeeds, OnCommit is called as usual. Do not call Flush or Close
	// from it.
	OnError func(error)

	// OnCursorLost, if set, is called by the writer goroutine after a
	// successful commit, after OnCommit, once for every cursor that lost
	// frames in that commit (CursorDrop only), with the number of frames
	// it lost in that commit. Do not call Flush or Close from it.
	OnCursorLost func(name string, lost uint64)

	// Hooks inject faults in tests. Nil in production.
	Hooks *Hooks
}

// Hooks are fault-injection points for tests.
type Hooks struct {
	// BeforeCommit is called by the writer before each commit; a non-nil
	// error makes that commit fail as if the disk had failed: nothing is
	// written, OnError is called and the writer retries with backoff.
	BeforeCommit func() error
}

// EnsureDefaults replaces zero fields by their defaults.
func (o *Options) EnsureDefaults() {
	if o.FlushInterval == 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.MaxBatchBytes == 0 {
		o.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if o.SegmentBytes == 0 {
		o.SegmentBytes = DefaultSegmentBytes
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxMemoryBytes == 0 {
		o.MaxMemoryBytes = DefaultMaxMemoryBytes
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.CursorPolicy == "" {
		o.CursorPolicy = CursorRetain
	}
}

// Validate reports every invalid field at once, in one error wrapping
// ErrConfig. Zero fields are valid (they stand for defaults), so Validate
// may be called before or after EnsureDefaults.
func (o *Options) Validate() error {
	var p []string
	if o.Dir == "" {
		p = append(p, "Dir is required (the directory of the WAL file)")
	}
	if o.FlushInterval < 0 {
		p = append(p, fmt.Sprintf("FlushInterval %v: want 0 (default %v) or positive", o.FlushInterval, DefaultFlushInterval))
	}
	if o.MaxBatchBytes < 0 {
		p = append(p, fmt.Sprintf("MaxBatchBytes %d: want 0 (default %d) or positive", o.MaxBatchBytes, DefaultMaxBatchBytes))
	}
	if o.SegmentBytes != 0 && (o.SegmentBytes < minSegmentBytes || o.SegmentBytes > maxSegmentBytes || o.SegmentBytes&(o.SegmentBytes-1) != 0) {
		p = append(p, fmt.Sprintf("SegmentBytes %d: want 0 (default %d) or a power of two from %d to %d", o.SegmentBytes, DefaultSegmentBytes, minSegmentBytes, maxSegmentBytes))
	}
	seg := int64(o.SegmentBytes)
	if seg < minSegmentBytes || seg > maxSegmentBytes || seg&(seg-1) != 0 {
		seg = DefaultSegmentBytes
	}
	if o.MaxBytes < 0 || (o.MaxBytes > 0 && o.MaxBytes < 4*seg) {
		p = append(p, fmt.Sprintf("MaxBytes %d: want 0 (default %d) or at least 4 segments (%d)", o.MaxBytes, int64(DefaultMaxBytes), 4*seg))
	}
	if o.MaxAge < 0 {
		p = append(p, fmt.Sprintf("MaxAge %v: want 0 (no age limit) or positive", o.MaxAge))
	}
	if o.MaxMemoryBytes < 0 || (o.MaxMemoryBytes > 0 && o.MaxMemoryBytes < seg) {
		p = append(p, fmt.Sprintf("MaxMemoryBytes %d: want 0 (default %d) or at least one segment (%d)", o.MaxMemoryBytes, int64(DefaultMaxMemoryBytes), seg))
	}
	if o.LockTimeout < 0 {
		p = append(p, fmt.Sprintf("LockTimeout %v: want 0 (default %v) or positive", o.LockTimeout, DefaultLockTimeout))
	}
	switch o.CursorPolicy {
	case "", CursorRetain, CursorDrop:
	default:
		p = append(p, fmt.Sprintf("CursorPolicy %q: want %q (the default when empty) or %q", o.CursorPolicy, CursorRetain, CursorDrop))
	}
	if len(p) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrConfig, strings.Join(p, "; "))
}

// MaxFrameBytes is the largest frame the WAL takes (ErrFrameTooLarge beyond).
const MaxFrameBytes = maxFrameBytes

// EntryHeaderSize is what a frame takes in the WAL's memory queue (and in a
// segment) besides its bytes: a frame of n bytes needs n + EntryHeaderSize
// of Options.MaxMemoryBytes (ErrFrameTooLarge beyond it).
const EntryHeaderSize = entryHeaderSize
