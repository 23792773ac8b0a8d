package shm

// Byte layout of a segment. These constants are part of the on-memory format:
// changing any of them, or the meaning of a field, requires a new
// LayoutVersion. The pictures are in doc.go.

const (
	// Magic is the first eight bytes of every segment file.
	Magic = "FRAMEBUS"
	// LayoutVersion is bumped on every incompatible change of the layout.
	LayoutVersion = 1

	// lineSize is the distance between words written by different processes.
	// 128 bytes, not 64, because adjacent-line prefetch pairs lines on x86.
	lineSize = 128
	pageSize = 4096

	// HeaderSize is the size of the segment header: one page of control
	// lines and one page of counter slots.
	HeaderSize = 2 * pageSize
)

// Header page 0, line 0: written once by the sidecar while ready is zero,
// protected by a CRC32C (Castagnoli) of bytes [0, offCRC).
const (
	offMagic        = 0   // [8]byte "FRAMEBUS"
	offVersion      = 8   // uint32 LayoutVersion
	offHeaderSize   = 12  // uint32 HeaderSize
	offSegmentSize  = 16  // uint64 total bytes of the file
	offDirOffset    = 24  // uint64 offset of the ring directory
	offDirSlots     = 32  // uint32 number of directory slots
	offDirSlotSize  = 36  // uint32 dirSlotSize
	offDataOffset   = 40  // uint64 offset of the first ring region
	offCounterOff   = 48  // uint32 offset of the counter slots
	offCounterSlots = 52  // uint32 number of counter slots
	offCreatedNs    = 56  // int64 creation time, Unix nanoseconds
	offSidecarPid   = 64  // uint32 pid of the sidecar that owns the segment
	offPageSize     = 68  // uint32 page size the layout was computed with
	offSidecarStart = 72  // uint64 sidecar start time (clock ticks since boot)
	offEpoch        = 80  // uint64 bumped at every sidecar start
	offCRC          = 124 // uint32 CRC32C of bytes [0, 124)
)

// Header page 0, one line each for words that another process reads.
const (
	offReady     = 1 * lineSize // uint32: readyValue once the header is complete
	offFlags     = 2 * lineSize // uint64 global flag word (FlagPause, ...)
	offDurable   = 3 * lineSize // uint64 durable watermark (highest committed WAL sequence)
	offDurableEv = 4 * lineSize // Event for waiters on the durable watermark
	offDoorbell  = 5 * lineSize // Event: "a ring that notifies the doorbell has data"
	offEvictions = 6 * lineSize // reserved for later use; zero
)

// readyValue is stored into the ready word, with a release store, after every
// other header field has been written. Any other value means "not ready".
const readyValue = 0x59444552 // "REDY"

// Event layout: a 32-bit sequence that is the futex word, and a 32-bit count
// of sleepers, in the same 8-byte word pair.
const (
	evSeq     = 0
	evWaiters = 4
)

// Counter slots fill header page 1.
const (
	counterOffset   = pageSize
	counterSlotSize = 64
	counterSlots    = pageSize / counterSlotSize
	counterLabelLen = 48
	// Counter slot fields.
	cntValue = 0  // uint64 value
	cntState = 8  // uint32 counterFree / counterUsed
	cntLabel = 16 // [48]byte label, NUL padded
)

// Ring directory slot.
const (
	dirSlotSize = 256
	dsState     = 0   // uint32 SlotFree / SlotActive / SlotRetired; release-stored last
	dsKind      = 4   // uint32 RingKind
	dsOffset    = 8   // uint64 offset of the ring region in the segment
	dsCapacity  = 16  // uint64 data capacity in bytes, a power of two
	dsGen       = 24  // uint64 attach generation
	dsOwnerPid  = 32  // uint32 owner pid
	dsOwnerUID  = 36  // uint32 owner uid
	dsOwnerTime = 40  // uint64 owner process start time (clock ticks since boot)
	dsNotify    = 48  // uint32 NotifyDoorbell or NotifyRing
	dsName      = 56  // [64]byte owner name, NUL padded
	dsNameLen   = 64  //
	dsFlags     = 128 // uint64 per-ring flag word, its own line
)

// Ring region: a control block of lines, then the data area.
const (
	rcTail    = 0 * lineSize // uint64 producer position (SPSC: producer store; MPMC: CAS)
	rcHead    = 1 * lineSize // uint64 consumer position: space before it is free
	rcRead    = 2 * lineSize // uint64 MPMC consumer claim position
	rcSpaceEv = 3 * lineSize // Event: producers waiting for space
	rcDataEv  = 4 * lineSize // Event: consumers waiting for data (NotifyRing)
	rcDropped = 5 * lineSize // [2]uint64 frames the producer dropped: ring full, paused
	// RingControlSize is the size of a ring's control block; the data area
	// follows it.
	RingControlSize = 8 * lineSize
)

// Record header: [length int32][type uint16][flags uint16], little endian,
// loaded and stored as one 64-bit word. Records are 8-byte aligned.
const (
	RecordHeaderSize = 8
	recordAlign      = 8
)

// Ring capacity limits.
const (
	MinRingCapacity = 4096
	MaxRingCapacity = 1 << 30
)

func align8(n uint64) uint64 { return (n + recordAlign - 1) &^ (recordAlign - 1) }

func alignPage(n uint64) uint64 { return (n + pageSize - 1) &^ (pageSize - 1) }
