package shm

import (
	"context"
	"encoding/binary"
	"fmt"
	"golang.org/x/sys/unix"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// TypePadding is the record type of padding: at the wrap point, for aborted
// claims and for claims of dead producers. Consumers skip it. Producers may
// use any other type.
const TypePadding uint16 = 0xFFFF

// NoOwner is the producer id that Unblock passes to its dead function for a
// claim whose header was never written, so its owner is unknown.
const NoOwner uint16 = 0

// header packs a record header word: [length int32][type uint16][flags uint16]
// little endian, which is the low, middle and high part of a uint64.
func header(length int32, typ, flags uint16) uint64 {
	return uint64(uint32(length)) | uint64(typ)<<32 | uint64(flags)<<48
}

func splitHeader(h uint64) (length int32, typ, flags uint16) {
	return int32(uint32(h)), uint16(h >> 32), uint16(h >> 48)
}

// Ring is one ring of a segment, as described by its directory slot. Get it
// from Segment.Ring, then make a Producer or a Consumer of it.
type Ring struct {
	seg    *Segment
	slot   int
	name   string
	kind   RingKind
	ctl    []byte // control block: positions and events
	data   []byte // data area, len == cap
	region []byte // control block and data area, rounded out to whole OS pages
	cap    uint64
	mask   uint64
	notify Event // signalled on commit
	space  Event // signalled on release
	gen    uint64
	owner  Owner
}

// Slot returns the ring's directory slot.
func (r *Ring) Slot() int { return r.slot }

// Kind returns the ring's kind.
func (r *Ring) Kind() RingKind { return r.kind }

// Capacity returns the data area size in bytes.
func (r *Ring) Capacity() int { return int(r.cap) }

// MaxPayload is the largest payload a single record (or a whole batch, less
// its record headers) may have: half the capacity less one header, so that a
// record always fits into an empty ring wherever the wrap point is.
func (r *Ring) MaxPayload() int { return int(r.cap/2) - RecordHeaderSize }

// Used returns the bytes between the consumer's released position and the
// producers' claim position, clamped to the capacity: the fill level that
// backpressure compares with its thresholds.
func (r *Ring) Used() uint64 {
	h := u64At(r.ctl, rcHead).Load()
	t := u64At(r.ctl, rcTail).Load()
	if t < h {
		return 0
	}
	return min(t-h, r.cap)
}

// Prefault maps every page of the ring into this process now, writable
// (madvise MADV_POPULATE_WRITE, Linux 5.14 and later), so that a producer's
// first pass over a fresh ring does not take a page fault every 4 KiB on its
// publish path: measured on a 32 MiB ring at 1 M frames/s, those faults
// doubled the driver's CPU for the first 100 ms, which the sidecar then
// lacked on 2 cores. The pages exist already (the sidecar zeroes a ring when
// it allocates it); this only maps them. It changes no byte. A kernel
// without it returns an error, which a caller may ignore.
func (r *Ring) Prefault() error { return unix.Madvise(r.region, unix.MADV_POPULATE_WRITE) }

// Flags returns the ring's flag word from the directory.
func (r *Ring) Flags() uint64 { return r.seg.RingFlags(r.slot) }

// SpaceEvent is signalled whenever a consumer releases space.
func (r *Ring) SpaceEvent() Event { return r.space }

// DataEvent is the event producers signal on commit: the ring's own event for
// NotifyRing, else the segment's doorbell.
func (r *Ring) DataEvent() Event { return r.notify }

func (r *Ring) corrupt(pos uint64, format string, args ...any) error {
	return &CorruptError{Slot: r.slot, Name: r.name, Pos: pos, Reason: fmt.Sprintf(format, args...)}
}

// Producer writes records into a ring. For an SPSC kind exactly one Producer
// may exist for the ring, in one process, used by one goroutine at a time.
// For KindIngressMPMC any number of Producers in any processes may write
// concurrently, and one Producer is safe for concurrent use.
type Producer struct {
	r     *Ring
	id    uint16
	multi bool
	tail  *atomic.Uint64 // shared claim position
	head  *atomic.Uint64 // shared released position
	// spsc: the producer owns tail, and caches head to touch the consumer's
	// line only when the cached view says the ring is full.
	ltail uint64
	lhead uint64
	pfEnd uint64 // lines before it have been prefetched
	// tailWord is the shared tail as a plain word, for storeRelease64x2.
	tailWord *uint64
	// Copies of the ring's geometry for the fast path.
	data       []byte
	mask, cap  uint64
	maxPayload uint
	// mpmc: cached head shared by the goroutines of this process.
	mhead atomic.Uint64
}

// Producer returns a producer for the ring. id tags every record it writes
// (the record's flags field), so that a consumer of a shared ring knows who
// wrote a record and Unblock knows who owns a claim; it must not be NoOwner.
// An SPSC producer resumes at the ring's current tail, so a driver that
// re-opens its ring after a sidecar restart carries on where it stopped.
func (r *Ring) Producer(id uint16) (*Producer, error) {
	if id == NoOwner {
		return nil, fmt.Errorf("%w: producer id 0 is reserved", ErrConfig)
	}
	p := &Producer{r: r, id: id, multi: r.kind.MultiProducer(), tail: u64At(r.ctl, rcTail), head: u64At(r.ctl, rcHead), tailWord: rawU64At(r.ctl, rcTail),
		data: r.data, mask: r.mask, cap: r.cap, maxPayload: uint(r.MaxPayload())}
	p.ltail = p.tail.Load()
	p.lhead = p.head.Load()
	if p.ltail < p.lhead || p.ltail-p.lhead > r.cap || p.ltail%recordAlign != 0 {
		return nil, r.corrupt(p.ltail, "tail %d and head %d are inconsistent", p.ltail, p.lhead)
	}
	p.mhead.Store(p.lhead)
	return p, nil
}

// Ring returns the producer's ring.
func (p *Producer) Ring() *Ring { return p.r }

// Claim is space reserved for one record. Fill Buf, then Commit or Abort it.
// A claim that is neither blocks the consumer until Unblock.
type Claim struct {
	Buf []byte // the payload, exactly the size claimed
	pos uint64 // ring position of the record header
	hdr uint64 // header to store on commit
}

// Batch is space reserved for several records at once (one claim, one
// commit): fill each record's payload with Next, then CommitBatch.
type Batch struct {
	sizes []int
	typ   uint16
	i     int
	pos   uint64 // position of the first record header
	next  uint64 // data index of the next record header
	first uint64 // header of the first record, stored last on commit
	total uint64
}

// Len returns the number of records in the batch.
func (b *Batch) Len() int { return len(b.sizes) }

// Claim reserves a record with an n-byte payload of type typ. It returns
// ErrFull if the ring has no room now and ErrTooLarge if it never will.
func (p *Producer) Claim(typ uint16, n int) (Claim, error) {
	// Fast path of an SPSC producer: the record fits before the end of
	// the data area, the cached head says there is room, and the lines
	// ahead are prefetched. Everything else takes claimSlow.
	if !p.multi && uint(n) <= p.maxPayload {
		rl := uint64(RecordHeaderSize + n)
		t := p.ltail
		i := t & p.mask
		end := t + align8(rl)
		if i+align8(rl) <= p.cap && end-p.lhead <= p.cap && end+prefetchAhead <= p.pfEnd {
			p.ltail = end
			return Claim{Buf: p.data[i+RecordHeaderSize : i+rl : i+rl], pos: t, hdr: header(int32(rl), typ, p.id)}, nil
		}
	}
	return p.claimSlow(typ, n)
}

func (p *Producer) claimSlow(typ uint16, n int) (Claim, error) {
	if n < 0 || n > p.r.MaxPayload() {
		return Claim{}, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, n, p.r.MaxPayload())
	}
	rl := uint64(RecordHeaderSize + n)
	pos, err := p.claim(align8(rl), typ)
	if err != nil {
		return Claim{}, err
	}
	i := pos & p.r.mask
	return Claim{
		Buf: p.r.data[i+RecordHeaderSize : i+rl : i+rl],
		pos: pos,
		hdr: header(int32(rl), typ, p.id),
	}, nil
}

// Commit publishes the record and wakes a sleeping consumer.
func (p *Producer) Commit(c Claim) { p.publish(c.pos, c.hdr) }

// CommitQuiet publishes the record without waking the consumer: a producer
// that commits several records in a row calls Signal once after the last.
func (p *Producer) CommitQuiet(c Claim) { p.store(c.pos, c.hdr) }

// Signal wakes the consumer if it sleeps (after CommitQuiet).
func (p *Producer) Signal() { p.r.notify.Signal() }

// Abort turns the claim into padding that the consumer skips.
func (p *Producer) Abort(c Claim) {
	al := align8(uint64(int32(uint32(c.hdr))))
	p.publish(c.pos, header(int32(al), TypePadding, p.id))
}

// publish release-stores the header at pos (an SPSC producer also its
// tail, after the header) and signals the consumer.
func (p *Producer) publish(pos, hdr uint64) {
	p.store(pos, hdr)
	p.r.notify.Signal()
}

// store release-stores the header at pos (and an SPSC producer's tail).
func (p *Producer) store(pos, hdr uint64) {
	h := rawU64At(p.r.data, int(pos&p.r.mask))
	if p.multi {
		storeRelease64(h, hdr)
	} else {
		storeRelease64x2(h, hdr, p.tailWord, p.ltail)
	}
}

// ClaimBatch reserves len(sizes) records of type typ in one contiguous claim.
// Their payloads together (plus 8 bytes of header each) may not exceed
// MaxPayload.
func (p *Producer) ClaimBatch(typ uint16, sizes []int) (Batch, error) {
	if len(sizes) == 0 {
		return Batch{}, fmt.Errorf("%w: empty batch", ErrConfig)
	}
	var total uint64
	for _, n := range sizes {
		if n < 0 || n > p.r.MaxPayload() {
			return Batch{}, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, n, p.r.MaxPayload())
		}
		total += align8(uint64(RecordHeaderSize + n))
	}
	if total > p.r.cap/2 {
		return Batch{}, fmt.Errorf("%w: batch of %d bytes, at most %d", ErrTooLarge, total, p.r.cap/2)
	}
	pos, err := p.claim(total, typ)
	if err != nil {
		return Batch{}, err
	}
	return Batch{sizes: sizes, typ: typ, pos: pos, next: pos & p.r.mask, total: total}, nil
}

// Next returns the payload of the batch's next record, or nil after the last.
func (p *Producer) Next(b *Batch) []byte {
	if b.i >= len(b.sizes) {
		return nil
	}
	rl := uint64(RecordHeaderSize + b.sizes[b.i])
	h := header(int32(rl), b.typ, p.id)
	i := b.next
	if b.i == 0 {
		b.first = h
	} else {
		// The consumer cannot pass the first record before CommitBatch, so
		// the other headers need no ordering of their own.
		binary.LittleEndian.PutUint64(p.r.data[i:], h)
	}
	b.i++
	b.next += align8(rl)
	return p.r.data[i+RecordHeaderSize : i+rl : i+rl]
}

// CommitBatch publishes every record of the batch at once: the first header
// is stored last, after the others.
func (p *Producer) CommitBatch(b *Batch) {
	for b.i < len(b.sizes) {
		p.Next(b)
	}
	p.publish(b.pos, b.first)
}

// AbortBatch turns the whole batch into padding.
func (p *Producer) AbortBatch(b *Batch) {
	p.publish(b.pos, header(int32(b.total), TypePadding, p.id))
}

// claim reserves al bytes (a multiple of 8, at most cap/2) contiguous in the
// data area and returns the position of its first byte. If the space left
// before the end of the data area is too small, it is turned into padding.
func (p *Producer) claim(al uint64, typ uint16) (uint64, error) {
	r := p.r
	if !p.multi {
		t := p.ltail
		i := t & r.mask
		pad := uint64(0)
		if i+al > r.cap {
			pad = r.cap - i
		}
		if t+pad+al-p.lhead > r.cap {
			h := p.head.Load()
			if h > t || t-h > r.cap {
				return 0, r.corrupt(h, "head %d is not within capacity behind tail %d", h, t)
			}
			p.lhead = h
			if t+pad+al-h > r.cap {
				return 0, ErrFull
			}
		}
		// The tail is published by Commit, with the header, in one store
		// pair: nothing reads an SPSC tail for ordering.
		p.ltail = t + pad + al
		if p.ltail+prefetchAhead > p.pfEnd {
			p.prefetch()
		}
		if pad != 0 {
			release(r.data, int(i), header(int32(pad), TypePadding, p.id))
		}
		return t + pad, nil
	}
	for {
		t := p.tail.Load()
		i := t & r.mask
		pad := uint64(0)
		if i+al > r.cap {
			pad = r.cap - i
		}
		h := p.mhead.Load()
		if t+pad+al-h > r.cap {
			h = p.head.Load()
			if h > t {
				// Another producer claimed and the consumer released
				// since we loaded t; look again.
				continue
			}
			p.mhead.Store(h)
			if t+pad+al-h > r.cap {
				return 0, ErrFull
			}
		}
		if !p.tail.CompareAndSwap(t, t+pad+al) {
			continue
		}
		if pad != 0 {
			release(r.data, int(i), header(int32(pad), TypePadding, p.id))
		}
		// Mark the claim with its size and owner at once, so that Unblock
		// can turn it into padding if this process dies before it commits.
		release(r.data, int((t+pad)&r.mask), header(-int32(al), typ, p.id))
		return t + pad, nil
	}
}

// Free returns how many bytes could be claimed now, as this producer sees it.
func (p *Producer) Free() uint64 {
	h := p.head.Load()
	t := p.tail.Load()
	if t < h || t-h > p.r.cap {
		return 0
	}
	return p.r.cap - (t - h)
}

// WaitSpace sleeps until n payload bytes could be claimed, ctx is done
// (false), or the ring's flags report that nobody will consume (never for
// now). It spins for spin first.
func (p *Producer) WaitSpace(ctx context.Context, n int, spin time.Duration) bool {
	need := 2 * align8(uint64(RecordHeaderSize+n)) // the worst case includes a wrap pad
	need = min(need, p.r.cap)
	return p.r.SpaceEvent().Wait(ctx, spin, func() bool { return p.Free() >= need })
}

// Record is one record as a consumer sees it, in place in the ring. Payload
// is valid until the space is released.
type Record struct {
	Type    uint16
	Flags   uint16 // the producer id that wrote it
	Payload []byte
	Pos     uint64 // position of the record header
	End     uint64 // position after the record: Release(End) frees it
}

// Consumer reads records from a ring. Records are read in place and freed in
// order by Release; reading may run ahead of releasing (the sidecar releases
// only what its WAL has committed).
//
// An exclusive consumer (Ring.Consumer) is the only reader of its ring and is
// used by one goroutine at a time. Shared consumers (Ring.SharedConsumer) of
// an MPMC ring claim spans of records; Release waits until every earlier span
// is released, so space is freed in ring order. A shared Consumer is safe for
// concurrent use.
type Consumer struct {
	r     *Ring
	multi bool
	head  *atomic.Uint64
	tail  *atomic.Uint64
	rd    *atomic.Uint64 // shared read claim position (MPMC)
	lread uint64         // read position (SPSC)
	lhead uint64         // released position as this consumer last stored it (SPSC)

	mu struct {
		sync.Mutex
		claims []span // MPMC: this consumer's unreleased claims, in order
	}
}

type span struct{ start, end uint64 }

// Consumer returns the ring's exclusive consumer, which starts at the
// released position (everything not released is read again: a restarted
// sidecar re-reads what its predecessor read but did not release). It keeps
// its read position in process memory and trusts no position in shared
// memory but the head, which it alone writes: this is what the sidecar uses.
func (r *Ring) Consumer() (*Consumer, error) { return r.consumer(false) }

// SharedConsumer returns one of several cooperating consumers of an MPMC ring
// (in one or more processes): each claims spans of records through the
// ring's shared read position. The read position and head are then written by
// every member, so a member that dies holding a span, or any process writing
// garbage into them, stalls the others' Release (which gives up after
// releaseWait); use it only among trusted consumers.
func (r *Ring) SharedConsumer() (*Consumer, error) {
	if !r.kind.MultiProducer() {
		return nil, fmt.Errorf("%w: ring %d is %v; only MPMC rings have shared consumers", ErrConfig, r.slot, r.kind)
	}
	return r.consumer(true)
}

func (r *Ring) consumer(shared bool) (*Consumer, error) {
	c := &Consumer{r: r, multi: shared, head: u64At(r.ctl, rcHead), tail: u64At(r.ctl, rcTail), rd: u64At(r.ctl, rcRead)}
	h := c.head.Load()
	if h%recordAlign != 0 {
		return nil, r.corrupt(h, "head %d is not 8-byte aligned", h)
	}
	c.lread, c.lhead = h, h
	return c, nil
}

// ResetRead moves the read position (for a shared consumer, the ring's shared
// read position) back to the released position, for consumers that start
// over after their group died. No other consumer may be running.
func (c *Consumer) ResetRead() {
	c.rd.Store(c.head.Load())
	c.lread = c.head.Load()
}

// Ring returns the consumer's ring.
func (c *Consumer) Ring() *Ring { return c.r }

// Head returns the released position. An exclusive consumer returns the
// one it stored itself: the shared word can be overwritten by any process
// that maps the segment, and a consumer that believed it could never free
// its ring (or free it too early). A shared consumer returns the ring's.
func (c *Consumer) Head() uint64 {
	if !c.multi {
		return c.lhead
	}
	return c.head.Load()
}

// ReadPos returns the position of the next record this consumer reads, or,
// for a shared consumer, the ring's shared read position.
func (c *Consumer) ReadPos() uint64 {
	if c.multi {
		return c.rd.Load()
	}
	return c.lread
}

// Seek sets the read position to pos, which must lie
// between the released position and the tail and be a record boundary (the
// sidecar seeks past what its WAL already holds after a restart).
func (c *Consumer) Seek(pos uint64) error {
	h, t := c.head.Load(), c.tail.Load()
	if pos < h || pos > t || pos%recordAlign != 0 {
		return fmt.Errorf("%w: seek to %d outside %d..%d", ErrConfig, pos, h, t)
	}
	if c.multi {
		c.rd.Store(pos)
	}
	c.lread = pos
	return nil
}

// Stalled reports, for the exclusive consumer of a single-producer ring,
// whether the producer's published tail is past the read position although
// the record there is not committed. An SPSC producer publishes its tail
// together with the header of its last record (Commit), so it never leaves
// its ring like that: another process has overwritten a committed header
// (or the tail), and the ring will not move again by itself. Always false
// for shared consumers and MPMC rings, whose tail counts claims.
func (c *Consumer) Stalled() bool {
	if c.multi || c.r.kind.MultiProducer() {
		return false
	}
	if c.tail.Load() <= c.lread {
		return false
	}
	l, _, _ := splitHeader(u64At(c.r.data, int(c.lread&c.r.mask)).Load())
	return l <= 0
}

// Ready reports whether a committed record waits at the read position.
func (c *Consumer) Ready() bool {
	pos := c.ReadPos()
	l, _, _ := splitHeader(u64At(c.r.data, int(pos&c.r.mask)).Load())
	return l > 0
}

// Wait sleeps on the ring's data event until a record is ready or ctx is
// done (false).
func (c *Consumer) Wait(ctx context.Context, spin time.Duration) bool {
	return c.r.notify.Wait(ctx, spin, c.Ready)
}

// Poll calls fn for up to max committed records (max <= 0: no limit but
// the ring's capacity) from the read position, in order, advancing the read
// position past them; padding is skipped. fn sees each record in place and
// must not keep its Payload after the space is released. It returns the number
// of records passed to fn.
//
// Every length and position read from shared memory is checked; a record that
// no correct producer writes stops the poll with a *CorruptError naming the
// ring, and the read position stays at that record. Records before it were
// delivered.
func (c *Consumer) Poll(max int, fn func(Record)) (int, error) {
	return c.PollBytes(max, 0, fn)
}

// PollBytes is Poll with a byte budget as well: it stops before a record
// that would take the span it delivers (records with their headers and
// alignment) past maxBytes, but always delivers at least one record, so a
// record larger than the budget is not stuck. maxBytes <= 0: no budget.
func (c *Consumer) PollBytes(max, maxBytes int, fn func(Record)) (int, error) {
	if max <= 0 {
		max = int(^uint(0) >> 1)
	}
	budget := uint64(0)
	if maxBytes > 0 {
		budget = uint64(maxBytes)
	}
	if c.multi {
		return c.pollMulti(max, budget, fn)
	}
	start := c.lread
	// Nothing at or past head+capacity is this lap's: in a full ring the
	// position after the tail holds the first record read but not yet
	// released.
	end, n, err := c.scanSpan(start, c.lhead+c.r.cap, max, budget, fn)
	c.lread = end
	return n, err
}

func (c *Consumer) pollMulti(max int, budget uint64, fn func(Record)) (int, error) {
	for {
		// A consistent snapshot: the read position as it was while the
		// head stood still (other members move both all the time).
		h := c.head.Load()
		start := c.rd.Load()
		if c.head.Load() != h {
			continue
		}
		if start < h || start-h > c.r.cap || start%recordAlign != 0 {
			return 0, c.r.corrupt(start, "read position %d is not within capacity ahead of head %d", start, h)
		}
		// Scan without delivering first: the records are ours only once
		// the claim succeeds. Never past head+capacity (see Poll).
		end, _, err := c.scanSpan(start, h+c.r.cap, max, budget, nil)
		if c.rd.Load() != start {
			// Another member claimed from start meanwhile; what we
			// scanned may already be released and rewritten.
			continue
		}
		if end == start {
			return 0, err
		}
		if !c.rd.CompareAndSwap(start, end) {
			continue
		}
		c.mu.Lock()
		c.mu.claims = append(c.mu.claims, span{start, end})
		c.mu.Unlock()
		// Deliver from the claimed span. The headers were validated by
		// scan; a producer cannot change a committed record of a correct
		// ring, and a hostile one only breaks its own frames: scan
		// re-validates as it goes and stops at the span's end.
		_, n, _ := c.scanSpan(start, end, max, 0, fn)
		return n, err
	}
}

// scanSpan walks committed records from start, calling fn (if not nil) for
// up to max non-padding records, and returns the position after the last
// record walked; no record may end past limit. With budget > 0 it stops
// before a record that would end more than budget bytes after start,
// unless no record was delivered yet (padding does not count).
func (c *Consumer) scanSpan(start, limit uint64, max int, budget uint64, fn func(Record)) (uint64, int, error) {
	r := c.r
	pos := start
	n := 0
	for n < max && pos < limit {
		i := pos & r.mask
		hw := u64At(r.data, int(i)).Load()
		l, typ, flags := splitHeader(hw)
		if l <= 0 {
			break // not committed yet
		}
		rl := uint64(l)
		al := align8(rl)
		switch {
		case rl < RecordHeaderSize:
			return pos, n, r.corrupt(pos, "record length %d is shorter than its header", l)
		case i+al > r.cap:
			return pos, n, r.corrupt(pos, "record of %d bytes at offset %d runs past the end of the %d-byte data area", l, i, r.cap)
		case typ == TypePadding && rl != al:
			return pos, n, r.corrupt(pos, "padding length %d is not a multiple of 8", l)
		}
		if pos+al > limit {
			return pos, n, r.corrupt(pos, "record of %d bytes ends at %d, past its claim %d", l, pos+al, limit)
		}
		if budget > 0 && n > 0 && pos+al-start > budget {
			break // the byte budget (PollBytes); at least one record went
		}
		if typ != TypePadding {
			if fn != nil {
				fn(Record{Type: typ, Flags: flags, Payload: r.data[i+RecordHeaderSize : i+rl : i+rl], Pos: pos, End: pos + al})
			}
			n++
		}
		pos += al
	}
	return pos, n, nil
}

// releaseWait bounds how long a shared consumer's Release waits for the
// members that claimed earlier spans to release them.
const releaseWait = 10 * time.Second

// Release zeroes the records before upTo that this consumer has read, and
// frees their space for producers. upTo must be a record's End (or the read
// position); releasing less than everything read is how the sidecar keeps
// uncommitted frames in the ring until its WAL has them. An exclusive
// consumer's Release always succeeds; a shared consumer's fails with ErrTimeout
// if an earlier span is not released within releaseWait, and with a
// *CorruptError if the shared head moved where no member would move it.
func (c *Consumer) Release(upTo uint64) error {
	if !c.multi {
		if upTo > c.lread {
			upTo = c.lread
		}
		if upTo <= c.lhead {
			return nil
		}
		c.zero(c.lhead, upTo)
		c.lhead = upTo
		storeRelease64(rawU64At(c.r.ctl, rcHead), upTo)
		c.r.space.Signal()
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	defer c.r.space.Signal()
	for len(c.mu.claims) > 0 {
		s := &c.mu.claims[0]
		if s.start >= upTo {
			break
		}
		end := min(s.end, upTo)
		c.zero(s.start, end)
		// Space is freed in ring order: wait for every earlier claim.
		var since time.Time
		for spins := 0; ; spins++ {
			h := c.head.Load()
			if h == s.start {
				break
			}
			if h > s.start || s.start-h > c.r.cap {
				return c.r.corrupt(h, "shared head %d is not behind this consumer's span at %d", h, s.start)
			}
			if spins > 100 {
				if since.IsZero() {
					since = time.Now()
				} else if time.Since(since) > releaseWait {
					return fmt.Errorf("%w: ring %d: an earlier span at %d is still held after %v", ErrTimeout, c.r.slot, h, releaseWait)
				}
				runtime.Gosched()
			}
		}
		storeRelease64(rawU64At(c.r.ctl, rcHead), end)
		if end == s.end {
			c.mu.claims = c.mu.claims[1:]
		} else {
			s.start = end
		}
	}
	return nil
}

// zero clears [from, to) of the data area, in at most two pieces at the wrap.
func (c *Consumer) zero(from, to uint64) {
	r := c.r
	for from < to {
		i := from & r.mask
		n := min(to-from, r.cap-i)
		clear(r.data[i : i+n])
		from += n
	}
}

// Unblock turns a claim that blocks the ring at the read position into
// padding when its owner is dead, so the ring moves on ("unblock", as in
// Agrona). dead is asked about the producer id in the claim's header; when the
// claim's header was never written (the producer died between reserving and
// marking it) it is asked about NoOwner, and should say yes only if the ring
// has been stuck at the same position for a while (a live producer marks its
// claim within nanoseconds). It returns whether it unblocked anything.
//
// Only an MPMC ring needs this: an SPSC ring dies with its producer.
func (c *Consumer) Unblock(dead func(id uint16) bool) (bool, error) {
	r := c.r
	pos := c.ReadPos()
	tail := c.tail.Load()
	if tail <= pos {
		return false, nil
	}
	if tail-pos > r.cap {
		return false, r.corrupt(pos, "tail %d is not within capacity ahead of %d", tail, pos)
	}
	i := pos & r.mask
	w := u64At(r.data, int(i))
	l, _, owner := splitHeader(w.Load())
	switch {
	case l > 0:
		return false, nil // committed: nothing blocks
	case l < 0:
		al := uint64(-int64(l))
		if al%recordAlign != 0 || i+al > r.cap || pos+al > tail {
			return false, r.corrupt(pos, "claim of %d bytes does not fit", al)
		}
		if !dead(owner) {
			return false, nil
		}
		w.Store(header(int32(al), TypePadding, owner))
		return true, nil
	default:
		// Header never written: pad up to the next header that was,
		// within the data area's end and the tail.
		limit := min(tail, pos+(r.cap-i))
		next := pos + recordAlign
		for ; next < limit; next += recordAlign {
			if u64At(r.data, int(next&r.mask)).Load() != 0 {
				break
			}
		}
		if !dead(NoOwner) {
			return false, nil
		}
		w.Store(header(int32(next-pos), TypePadding, NoOwner))
		return true, nil
	}
}

// prefetchAhead is how far ahead of its tail an SPSC producer asks for cache
// lines in a writable state. The lines it writes were last written by the
// consumer, which zeroed them; without the prefetch each of them stalls the
// producer on a cross-core transfer, with it the transfers overlap its work.
const prefetchAhead = 1024

// prefetchChunk is how much prefetch asks for at once.
const prefetchChunk = 512

// prefetch requests the lines up to ltail+prefetchAhead that it has not
// requested yet.
func (p *Producer) prefetch() {
	end := p.ltail + prefetchAhead + prefetchChunk
	pos := max(p.pfEnd, p.ltail) &^ 63
	for ; pos < end; pos += 64 {
		prefetchWrite(&p.r.data[pos&p.r.mask])
	}
	p.pfEnd = pos
}

// release stores a record header word with release semantics.
func release(data []byte, off int, h uint64) { storeRelease64(rawU64At(data, off), h) }

// End returns the ring position just after the claimed record: once the
// ring's head (Ring.Head) reaches it, the consumer has released the record.
func (c Claim) End() uint64 { return c.pos + align8(uint64(int32(uint32(c.hdr)))) }

// End returns the ring position just after the batch.
func (b *Batch) End() uint64 { return b.pos + b.total }

// Head returns the consumer's released position. The sidecar releases a
// record only after its WAL has committed it, so for an ingress ring this
// is the durable position.
func (r *Ring) Head() uint64 { return u64At(r.ctl, rcHead).Load() }

// Generation returns the attach generation of the ring's directory slot as
// it was when the Ring was opened.
func (r *Ring) Generation() uint64 { return r.gen }

// Owner returns the owner recorded in the ring's directory slot when the
// Ring was opened.
func (r *Ring) Owner() Owner { return r.owner }

// DropReason says why a producer dropped a record instead of publishing it.
type DropReason int

// Drop reasons.
const (
	DropRingFull DropReason = iota // no room in the ring
	DropPaused                     // the sidecar raised PAUSE
	numDropReasons
)

func (d DropReason) String() string {
	switch d {
	case DropRingFull:
		return "ring_full"
	case DropPaused:
		return "paused"
	}
	return "unknown"
}

// AddDropped counts n records the producer dropped for reason, in the ring's
// control block, where the sidecar's metrics read it: a drop happens in the
// driver, but is counted where operators look.
func (r *Ring) AddDropped(reason DropReason, n uint64) {
	if reason >= 0 && reason < numDropReasons {
		u64At(r.ctl, rcDropped+8*int(reason)).Add(n)
	}
}

// Dropped returns the records the producer counted as dropped for reason.
func (r *Ring) Dropped(reason DropReason) uint64 {
	if reason < 0 || reason >= numDropReasons {
		return 0
	}
	return u64At(r.ctl, rcDropped+8*int(reason)).Load()
}
