// Package wal is framebus's write-ahead log: the frames the sidecar drains
// from the shared-memory rings, committed in groups to one bbolt file, with
// the drain position of every ring in the same transaction, so that a
// restarted sidecar resumes exactly where the last commit ended.
//
// # File
//
// The WAL is one bbolt file, Options.Dir/framebus.wal, with four buckets:
//
//	segments   key: first sequence number, uint64 big-endian → a segment
//	positions  key: source name (a ring, "slot3/gen7") → uint64 big-endian
//	cursors    key: cursor name → acked, lost: 2 × uint64 big-endian (cursor.go)
//	meta       "format" → uint32 big-endian (1); "created" → Unix ns, int64 big-endian;
//	           "lost" (only after a recovery) → (first, last) seq pairs, uint64 big-endian
//
// Every frame gets a WAL sequence number: consecutive, starting at 1,
// never reused. Frames are not stored one per key but packed into segments
// of about SegmentBytes (8 KiB), each one bbolt value:
//
//	key:   first seq, uint64 big-endian (8 bytes)
//	value:
//	  0        4       5       6          8            12           16             24
//	  +--------+-------+-------+----------+------------+------------+--------------+
//	  | "FBWS" | vers  | flags | hdr size | count      | crc32c     | newest ns    |
//	  | magic  | u8 =1 | u8 0/1| u16 = 24 | u32 frames | u32        | i64 commit   |
//	  +--------+-------+-------+----------+------------+------------+--------------+
//	  | frame 0: len u32 | kind u16 | data [len]byte                               |
//	  | frame 1: len u32 | kind u16 | data [len]byte                               |
//	  | …  (count frames, back to back, no padding, filling the value exactly)     |
//	  +----------------------------------------------------------------------------+
//
// Value integers are little-endian; frame i has sequence number key+i;
// "newest ns" is when the segment's newest frame was committed. The CRC32C
// (Castagnoli) covers the stored bytes after the header, the header without
// the CRC field, and the key. flags is 0, or 0x01 when the frame area is
// stored S2-compressed (s2.Encode, the S2 block format: see Compression);
// the other bits are reserved and must be zero. A frame larger than a
// segment gets a segment of its own. segment.go defines the constants.
//
// A segment is sized so that two of them and bbolt's per-value overhead
// (16-byte element, 8-byte key, half the page header: 32 bytes) fill a
// 16 KiB page exactly: a value holds at most SegmentBytes − 32 bytes.
// bbolt puts at least two keys in a node, so half-page segments waste
// nothing, where 8 KiB values would take a page each.
//
// # Compression
//
// With Options.Compress, the writer stores a segment's frame area as
// s2.Encode of it and sets flags 0x01, when that is smaller (a frame area
// that does not shrink, or is over 64 MiB, is stored as it is, flags 0).
// The CRC32C then covers the compressed bytes, so a check needs no
// decompression. The open segment, re-put by every commit, is compressed
// whole each time (it is at most a segment). Readers accept both forms in
// any mix whatever Options.Compress says, decompressing into a reused
// buffer; a compressed value whose declared decoded length is over 64 MiB,
// or too short for its frame count, is corrupt. Stored bytes, footprint
// and retention count the stored (compressed) value lengths; a compressed
// segment still counts SegmentBytes of footprint (see Retention), so
// compression reduces the bytes written, not the number of segments the
// retention bound keeps.
//
// # Writing: one writer, one transaction per group commit
//
// Append copies frames into the open segment's buffer (one memcpy a frame
// under a mutex; buffers are recycled) and returns their sequence numbers.
// One writer goroutine, started by Open and stopped by Close, commits:
// when the oldest change is FlushInterval old, when MaxBatchBytes are
// pending, when Flush asks. Each commit is exactly one bbolt Update (not
// db.Batch, not a key per frame) that puts the sealed segments and the
// open one (rewritten under the same key each commit until it is full: the
// last leaf page is rewritten by every commit anyway), deletes the
// segments retention drops, and writes the positions. A commit always
// ends at the end of an Append call, never inside one (a segment may be
// stored up to that point and completed by the next commit), and holds at
// most MaxBatchBytes of frames unless a single call is larger, so a queue
// grown while commits failed drains in bounded transactions. When Update returns nil the
// frames are durable: Durable() moves, OnCommit runs (the sidecar
// publishes the watermark into the segment header there), Flush returns.
//
// The segments bucket uses FillPercent 1.0 (keys only grow, so pages are
// filled completely), 16 KiB pages, NoFreelistSync with the hashmap
// freelist (no freelist written per commit), and a large InitialMmapSize
// (MaxBytes + 25 %, at least 1 GiB, at most 64 GiB: address space, not
// memory) so that remapping, which waits for every reader, is rare.
//
// # Positions: exactly once across crashes
//
// AppendFrom(source, pos, frames...) appends the frames drained from a ring
// and records, atomically with them, that the ring has been drained up to
// pos. Since no commit splits a call, the frames and the position are
// committed in the same transaction. After a crash the committed positions
// and the committed frames correspond exactly: the sidecar re-drains each
// ring from its committed position, and nothing is lost or stored twice.
// When a backlog is committed in several transactions, each one writes,
// per source, the last position whose frames it completes.
//
// SetPosition(source, pos) records a position alone (a batch whose every
// record was rejected still moves the ring): it is committed with every
// frame appended before it that is not yet committed, never before any of
// them. Append followed by SetPosition is not atomic: a commit may fall
// between the two calls and make the frames durable without the position,
// and a crash then would have them drained again; hence AppendFrom.
// DeletePosition forgets a freed ring in the next commit. Positions()
// returns the committed ones.
//
// # Cursors: durable consumers
//
// A consumer of the WAL (a forwarder, a replicator) names a durable cursor
// and calls SetCursor(name, acked) once it has processed every frame up to
// acked; after a restart it resumes with Iterate(Cursor(name).Acked+1).
// Cursor changes go into the next commit's transaction, like positions,
// but unordered with frames (a cursor acks only durable frames), so the
// commit writes the latest value of each changed cursor. Cursors never
// move back; DeleteCursor removes one. On a failed commit the changes stay
// pending for the retry. Cursor and Cursors show the pending changes.
//
// Options.CursorPolicy says what retention does with frames a cursor has
// not acked. CursorRetain (the default) holds retention at the first
// segment whose last frame is after the lowest Acked: MaxBytes and MaxAge
// then yield, the file grows (Stats.RetentionHeld, Stats.FootprintBytes),
// and the sidecar raises PAUSE at a hard cap of its own. CursorDrop
// deletes as if there were no cursor and, in the same transaction, moves
// every cursor below the new FirstSeq − 1 up to it, adding the frames it
// skipped to the cursor's persisted Lost counter; OnCursorLost reports
// them after the commit. Under CursorDrop a cursor therefore never points
// before FirstSeq − 1 after a commit (one created below it is moved, and
// counts the frames as lost, at the next commit).
//
// The cursors bucket was added within format version 1: Open creates it
// in a file written before, which then has no cursor; an older build
// reading a newer file ignores the bucket (its retention does not wait for
// cursors, and under CursorDrop the frames it deleted are counted as lost
// at the first commit after an upgrade).
//
// # Retention and file size
//
// Inside every commit's transaction, the oldest segments are deleted while
// the stored segments' footprint exceeds MaxBytes, or while the oldest one
// is older than MaxAge. The footprint counts SegmentBytes per segment
// (a large one: its size rounded up to pages), which is what its leaf pages
// take, so it bounds the file whatever the frame sizes. The newest segment
// is always kept: it carries the last sequence number across a restart.
// Durable cursors may hold it (see Cursors).
// The running totals are recomputed at Open by a cursor walk over keys and
// value lengths (no value is decoded), which reads the leaf pages once.
//
// bbolt reuses freed pages, one transaction late. The file therefore holds
// MaxBytes of segments plus the pages of about two commits, bbolt's growth
// step (set to MaxBytes/64, 64 KiB to 16 MiB), the branch pages (0.2 %) and
// a few fixed pages; to keep that small, a commit writes at most
// MaxBytes/64 of frames (when that is less than MaxBatchBytes). The test measures the file at 1.06 × MaxBytes for
// MaxBytes = 4 MiB; at 8 GiB the overhead is under 1 %. A read transaction
// pins the pages freed after it began, so Iterate renews its read
// transaction every 256 segments or 10 ms.
//
// # Failure and degrade mode
//
// When a commit fails (bbolt or the disk returns an error, or
// Hooks.BeforeCommit injects one), the frames and positions stay queued,
// OnError receives the error (wrapping ErrCommit) and the writer retries
// after a backoff doubling from 10 ms to 1 s; the next success commits
// everything queued, once, in order, and calls OnCommit as usual. Append
// keeps accepting until the queue would exceed MaxMemoryBytes and then
// fails with ErrQueueFull, queuing nothing: the sidecar raises DEGRADED on
// OnError and PAUSE before that bound (Pending reports the queue). The WAL
// drops nothing by itself. Close makes one last attempt and returns its
// error; what it could not commit is lost as in a crash, and the committed
// positions make the sidecar re-drain it after a restart.
//
// # Recovery
//
// bbolt commits atomically (data pages, fsync, meta page, fsync), so a
// crash leaves the last committed transaction, never a torn segment. Open
// first checks the file's structure itself, because bbolt trusts its pages
// and crashes on a damaged or truncated file (a bus error, or a panic in a
// goroutine of its own): both meta pages, the file's length against the
// last transaction's high-water mark, and every page of the B+tree (its
// place, type, element bounds and key order; boltfile.go). Damage fails
// Open with ErrCorrupt listing it. The walk counts the stored segments on
// the way (the totals). Open then checks the format version, decodes and
// checks the last segment to find LastSeq (never below the "lost" ranges),
// and loads the positions and cursors; appends continue at LastSeq+1.
// Open is linear in the file size: the structural check, then bbolt's
// freelist rebuild (NoFreelistSync) walk every page. Measured on a 1 GiB
// WAL with a warm page cache on the 2-core test VM: 1.0 to 1.1 s (0.5 s
// check, 0.5 s bbolt; bbolt alone with the old totals walk took 0.5 s);
// a cold cache adds the reads.
//
// Open reads no segment but the last: a damaged older segment value is
// found when Iterate reaches it (ErrCorrupt; the sidecar's subscribers and
// uplink stop there and log it) or by Verify, which checks a whole file
// offline (the structure, every CRC and frame length, sequence
// continuity, positions, cursors), reading a structurally damaged file
// the same way as Recover, never through bbolt.
//
// Recover (recover.go) rebuilds a damaged WAL: it keeps every segment that
// passes its checks (the tree's, and intact copies that a damaged page no
// longer reaches, when they are proven committed), every sound position
// and cursor, moves the damaged file aside (framebus.wal.damaged-<time>,
// never deleted) and records the frames it dropped in meta "lost": Verify
// accepts the gap they make, and their sequence numbers are never assigned
// again. docs/wal-recovery.md is the operator's side.
//
// # Reading
//
// Iterate(from, fn) seeks to the segment holding from (cursor Seek, then
// Prev), checks each segment's CRC32C, and calls fn for every committed
// frame from there to the durable watermark of the call, in order. The
// frame's bytes point into bbolt's memory map and are valid only during fn.
// Frames deleted by retention are skipped: iteration starts at FirstSeq.
//
// # Concurrency contract
//
// Every method is safe for concurrent use. The writer goroutine is the
// only one that writes the file; OnCommit, OnCursorLost and OnError run on
// it, in order, and must not call Flush or Close (they would wait for
// themselves). Close
// is idempotent: it stops Append (ErrClosed), commits what is queued,
// stops the writer, and closes bbolt after running Iterate calls finish
// their current read transaction. SetPosition and DeleteCursor after
// Close are ignored; SetCursor returns ErrClosed.
// Verify and ReadStats open the file read-only and fail with ErrLocked
// while a sidecar holds it.
//
// # Caveats
//
//   - Commits are serialised on the disk: at saturation a commit holds up
//     to MaxBatchBytes and takes as long as writing it (8 MiB ≈ 40 ms at
//     200 MB/s), which is the durable latency then.
//   - Compression is off by default (Options.Compress); it costs the
//     writer goroutine an S2 encode of every put (the open segment's
//     whole frame area on every commit), and Iterate a decode per segment.
//   - A position's source name is 1 to 1024 bytes (SetPosition panics
//     otherwise: the names are the sidecar's own).
//   - Under CursorRetain a stalled cursor makes the file grow without
//     bound: the WAL does not stop it, the sidecar's hard cap must. A
//     cursor acked past frames that a crash then lost (a contract breach:
//     ack only durable frames) keeps that Acked; it is not checked.
package wal
