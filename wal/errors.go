package wal

import "errors"

// Errors returned by package wal. They are wrapped with detail (the
// segment key, the option, the underlying bbolt or OS error), so test
// them with errors.Is.
var (
	// ErrClosed means the WAL was closed: Append, Flush and Iterate fail
	// with it once Close has been called.
	ErrClosed = errors.New("wal: closed")

	// ErrQueueFull means that queuing the frames would take the memory
	// queue of frames not yet committed past Options.MaxMemoryBytes. None
	// of the frames of that Append were queued. It happens when commits
	// fail (degrade mode, see OnError) or cannot keep up with the input:
	// stop draining (raise PAUSE) and retry later.
	ErrQueueFull = errors.New("wal: memory queue full")

	// ErrFrameTooLarge means a frame is larger than Options.MaxMemoryBytes
	// (or than 1 GiB): it could never be queued. Nothing was queued.
	ErrFrameTooLarge = errors.New("wal: frame too large")

	// ErrCommit wraps the error of a failed group commit (the bbolt update,
	// its fsync, or a Hooks.BeforeCommit error). The frames it held stay
	// queued and the writer retries with backoff; OnError receives it, and
	// Close returns it if the final commit fails.
	ErrCommit = errors.New("wal: commit failed")

	// ErrCorrupt means stored data failed a check: a bbolt meta page, the
	// file's length, a page of the B+tree, a segment's magic, version,
	// CRC32C or frame lengths, the sequence continuity between segments,
	// or a malformed position. With bbolt's atomic commits it means the
	// disk or something outside framebus damaged the file: run `framebus
	// wal verify`, then Recover (`framebus run --wal-recover`) to keep
	// every intact segment and move the damaged file aside.
	ErrCorrupt = errors.New("wal: corrupt")

	// ErrVersion means the file was written with a WAL format version this
	// build does not know: run the framebus release that wrote it.
	ErrVersion = errors.New("wal: unsupported format version")

	// ErrConfig means an Options field is invalid; the message lists every
	// invalid field.
	ErrConfig = errors.New("wal: invalid options")

	// ErrLocked means another process (or another open WAL in this one)
	// holds the file's lock: a second sidecar on the same WAL directory, or
	// an offline tool run against a WAL whose sidecar is running. Stop the
	// other one, or use another directory.
	ErrLocked = errors.New("wal: file locked by another process")

	// ErrCursor means SetCursor was given an invalid cursor name (it must
	// be 1 to 128 bytes of printable ASCII without '/') or an acked
	// sequence number beyond LastSeq. Nothing was recorded: fix the call.
	ErrCursor = errors.New("wal: invalid cursor")

	// ErrNotFound means Verify or ReadStats found no WAL file in the
	// directory.
	ErrNotFound = errors.New("wal: no WAL file in directory")
)
