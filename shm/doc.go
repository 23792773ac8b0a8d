// Package shm is framebus's shared-memory segment: one mmap'd file per bus
// that the sidecar creates and driver processes map, holding a header, a
// directory of rings, and the rings themselves. Drivers write records into
// rings without system calls or copies beyond their own encoding; the sidecar
// drains them.
//
// # Segment
//
// The segment file is Dir/framebus-<name> (default /dev/shm). The sidecar
// creates it with Create (mode 0660, optional group; SetAccess, which the
// sidecar applies to the segment and its socket, also admits further uids by
// a POSIX ACL), allocates every page up front with fallocate (a page that
// tmpfs cannot supply later would kill the writer with SIGBUS), fills in the
// header and stores the ready word last.
// Drivers Open it; Open validates magic, layout version, checksum, sizes and
// the ready word (ValidateHeader) and keeps its own copy of the geometry, so
// nothing written into the header later changes how a process reads the file.
// A sidecar restarting after a crash Adopts the segment: the rings and their
// committed records stay, the epoch and owner fields are rewritten.
//
//	offset 0 ─┬──────────────────────────────────────────────────────────────┐
//	 line 0   │ "FRAMEBUS" │ version u32 │ header size u32 │ segment size u64 │
//	 (static, │ dir offset u64 │ dir slots u32 │ dir slot size u32           │
//	 written  │ data offset u64 │ counter offset u32 │ counter slots u32      │
//	 once per │ created ns i64 │ sidecar pid u32 │ page size u32            │
//	 sidecar  │ sidecar start ticks u64 │ epoch u64 │ reserved … │ crc32c u32 │
//	 start)   ├──────────────────────────────────────────────────────────────┤ 128
//	 line 1   │ ready u32  (= "REDY", release-stored after everything else)   │
//	          ├──────────────────────────────────────────────────────────────┤ 256
//	 line 2   │ flags u64  (PAUSE | DEGRADED | SHUTTING_DOWN)  sidecar writes │
//	          ├──────────────────────────────────────────────────────────────┤ 384
//	 line 3   │ durable watermark u64 (highest committed WAL sequence)        │
//	          ├──────────────────────────────────────────────────────────────┤ 512
//	 line 4   │ durable event: seq u32 (futex word) │ waiters u32             │
//	          ├──────────────────────────────────────────────────────────────┤ 640
//	 line 5   │ doorbell event: seq u32 (futex word) │ waiters u32            │
//	          ├──────────────────────────────────────────────────────────────┤ 768
//	          │ reserved (zero)                                               │
//	     4096 ├──────────────────────────────────────────────────────────────┤
//	 counters │ 64 slots × 64 B: value u64 │ state u32 │ … │ label [48]byte  │
//	     8192 ├──────────────────────────────────────────────────────────────┤
//	directory │ MaxRings slots × 256 B (see below), padded to a page         │
//	          ├──────────────────────────────────────────────────────────────┤
//	     data │ ring regions, each page aligned: control block + data area    │
//	          └──────────────────────────────────────────────────────────────┘
//
// Every word that one process writes and another reads has a 128-byte line of
// its own (two 64-byte lines: x86 prefetches lines in pairs), so a producer
// never stalls on a line that a consumer keeps writing.
//
// # Ring directory
//
// A slot describes one ring. The sidecar fills it and release-stores the
// state word last; a process reading it checks every field against its own
// copy of the geometry before it touches the ring (Segment.Ring).
//
//	 0 ┌───────────┬──────────┬──────────────┬──────────────┬──────────────┐
//	   │ state u32 │ kind u32 │ offset u64   │ capacity u64 │ attach gen u64│
//	32 ├───────────┴┬─────────┴──────┬───────┴──────┬───────┴──────────────┤
//	   │ owner pid  │ owner uid u32  │ owner start  │ notify u32 │ pad      │
//	   │ u32        │                │ ticks u64    │            │          │
//	56 ├────────────┴────────────────┴──────────────┴────────────┴──────────┤
//	   │ owner name [64]byte, NUL padded                     │ reserved     │
//	128├─────────────────────────────────────────────────────────────────────┤
//	   │ ring flags u64 (per-ring PAUSE …), its own line     │ reserved     │
//	256└─────────────────────────────────────────────────────────────────────┘
//
// # Rings
//
// A ring region is a control block of 128-byte lines followed by a data area
// whose capacity is a power of two. Positions are monotonic 64-bit byte
// counts; a position's index in the data area is pos & (capacity-1).
//
//	control block (1024 B)                         data area (capacity B)
//	┌──────────────────────────────┐               ┌──────────────────────────┐
//	│ tail u64      producers      │ line 0        │ record │ record │ … │ pad │
//	│ head u64      consumer       │ line 1        └──────────────────────────┘
//	│ read u64      MPMC consumers │ line 2
//	│ space event   seq │ waiters  │ line 3
//	│ data event    seq │ waiters  │ line 4
//	│ dropped u64 ×2 (full, paused)│ line 5   producer counts its drops
//	│ reserved                     │ lines 6-7
//	└──────────────────────────────┘
//
// Records are 8-byte aligned and start with an 8-byte header that is loaded
// and stored as one 64-bit word:
//
//	 0           4          6          8
//	 ┌───────────┬──────────┬──────────┬───────────────────────────┬─────────┐
//	 │ length    │ type     │ flags    │ payload (length-8 bytes)  │ pad to 8│
//	 │ int32     │ uint16   │ uint16   │                           │         │
//	 └───────────┴──────────┴──────────┴───────────────────────────┴─────────┘
//
//	length > 0   committed: the record's size including the header
//	length == 0  free, or claimed but not yet marked (the data area is zero
//	             wherever nothing is committed: the consumer zeroes what it
//	             releases)
//	length < 0   claimed (MPMC): -length bytes reserved by the producer whose
//	             id is in flags; not yet readable
//	type 0xFFFF  padding: skipped by consumers (wrap point, aborted claims,
//	             claims of dead producers)
//	flags        the id of the producer that wrote the record
//
// # Commit protocol
//
// A producer claims space, writes the payload, then publishes the record by
// storing its positive length with a release store; a consumer acquires the
// header word and may then read the payload. A record never straddles the end
// of the data area: if it does not fit before the end, the rest of the area
// becomes a padding record and the record starts at index 0. An SPSC producer
// owns the tail and needs no atomic read-modify-write; MPMC producers claim
// with a compare-and-swap on the tail that also checks the space against the
// head, and then mark their claim with its negative length and their id.
// Batches claim once and commit once: the headers after the first are written
// first, the first header last, so a batch becomes visible whole.
//
// The consumer reads ahead of what it releases: Poll walks committed records
// from the read position; Release zeroes everything before a position and
// then release-stores the head, which is when producers may reuse the space.
// The sidecar releases only what its WAL has committed, so a crash of the
// sidecar loses nothing: its successor re-reads from the head.
//
// With several consumers of an MPMC ring, each claims a span of records with a
// compare-and-swap on the read position, and spans are released in ring order.
//
// # Unblock
//
// A producer that dies between claim and commit leaves a claim that would
// block its ring forever. Consumer.Unblock turns it into padding once the
// caller confirms the owner is dead (the id in the claim's header maps to a
// process the sidecar knows; ProcessAlive checks pid and start time, so a
// recycled pid is not mistaken for the owner). A claim whose header was never
// marked (the producer died between its compare-and-swap and its next store)
// is padded up to the next marked header, only when the caller says the ring
// has been stuck for a while. SPSC rings need no unblock: they die with their
// producer, and everything it committed is drained first.
//
// # Waiting
//
// Event is an eventcount on a futex word shared between processes: a waiter
// spins for a few microseconds, then registers in the waiter count and sleeps
// in FUTEX_WAIT; a signaller calls FUTEX_WAKE only when the count is not zero,
// so a busy producer pays one load per commit and an idle consumer uses no
// CPU. Commits use release stores, not sequentially consistent ones (that
// fence was most of a producer's cost), so on x86-64 a commit may still sit in
// the producer's store buffer when it reads a zero waiter count; a waiter
// therefore first sleeps for at most a millisecond, re-checks, and only then
// sleeps without a timeout. Stores leave a store buffer in far less than that.
//
// # Untrusted input
//
// Every process that maps the segment can write all of it. The sidecar reads
// nothing from shared memory without checking it: ring geometry comes from its
// own records, never re-read; every record length, type and position is
// checked against the ring's bounds before use, and a record that no correct
// producer writes is reported as a *CorruptError naming the ring, with the
// consumer stopped before it (the caller detaches that producer). Payloads are
// handed out in place: a hostile producer can still change a payload after the
// consumer has checked it, so a consumer that verifies a payload (the sidecar
// verifies FlatBuffers) must copy it first. What one producer writes into its
// own ring can only break its own records.
//
// The owner (the sidecar) never reads back the header and directory words
// it alone writes: it keeps a shadow of them in its own memory (shadow.go),
// answers Flags, Durable, RingFlags, Info, Rings and AllocRing from it, and
// Repair puts the published words back when another process overwrote them.
// An exclusive consumer's Head is the position it released itself, and
// Stalled tells a single-producer ring whose committed header was
// overwritten. What no check can prevent (a process writing another's ring,
// or a head word a producer reads as its durable acknowledgement) is listed
// in docs/security.md.
//
// # Concurrency
//
// A Segment may be used by many goroutines. An SPSC Producer and any Consumer
// of an SPSC ring belong to one goroutine at a time; MPMC Producers and
// Consumers are safe for concurrent use. Close unmaps the segment: nothing of
// it may be used afterwards.
//
// # Platform
//
// Linux only (futex, /proc, fallocate). Little-endian 64-bit CPUs; amd64 and
// arm64 have assembly release stores and write prefetches, others fall back
// to sequentially consistent stores. All unsafe code is in unsafe_linux.go.
package shm
