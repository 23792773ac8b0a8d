package wal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/klauspost/compress/s2"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// batch is the writer's snapshot of what one commit writes, and the
// tentative results of the transaction, applied only if it succeeds.
// It is reused from commit to commit.
type batch struct {
	refs     []segRef
	scan     []*segment
	firstSeq uint64
	lastSeq  uint64
	gen      uint64
	bytes    int  // bytes of frames this commit makes durable
	complete bool // the snapshot took everything pending
	oldest   time.Time
	pos      map[string]posOp
	commit   Commit

	// Cursors (see cursor.go): the changes taken, the cursors written
	// (tentative), the frames each lost, and whether retention was held.
	cur    map[string]cursorOp
	curSet map[string]CursorInfo
	lost   map[string]uint64
	held   bool

	use           usage
	first         uint64
	retSegs, retN uint64

	// cbufs[i] holds the compressed value of refs[i] with Compress: bbolt
	// keeps a Put value until the transaction ends, so each ref has its own.
	cbufs [][]byte
}

// segRef is a segment as seen at the snapshot: buf is its bytes then.
type segRef struct {
	s         *segment
	buf       []byte
	count     uint32
	crc       uint32 // tentative bodyCRC of buf[segHeaderSize:crcLen]
	crcLen    int
	storedLen int  // length of the value put
	put       bool // written by this commit
}

// preciseWait is how much of the wait for a commit the writer sleeps with
// nanosleep instead of a Go timer.
const preciseWait = 1500 * time.Microsecond

// precompressEvery is how often the writer wakes up while a commit is
// pending to compress the segments sealed meanwhile (precompress): often
// enough that little is left for the commit, rarely enough to cost nothing
// measurable.
const precompressEvery = time.Millisecond

// sealedRef is a sealed segment and its bytes, as precompress saw them
// under the lock.
type sealedRef struct {
	s   *segment
	buf []byte
}

// precompress S2-compresses the sealed segments that have no compressed
// value yet (the writer's own fields; sealed segments no longer change),
// so that the commit, which every pending frame waits for, does not spend
// its time compressing. A commit uses a segment's value if it covers the
// bytes the commit stores (compressed). It stops once due (the commit's
// deadline by its age when the pass began) has passed, looking every 8
// segments: the commit then compresses what is left itself, at once,
// rather than after this pass. (A commit that the byte cap or Flush makes
// due meanwhile waits for the pass; it finds its sealed segments
// compressed.)
func (w *WAL) precompress(due time.Time) {
	if !w.opts.Compress {
		return
	}
	refs := w.wr.sealed[:0]
	w.mu.Lock()
	for _, s := range w.mu.full {
		if s.preLen != len(s.buf) && s.doneLen != len(s.buf) {
			refs = append(refs, sealedRef{s, s.buf})
		}
	}
	w.mu.Unlock()
	for i, t := range refs {
		if i%8 == 7 && !time.Now().Before(due) {
			break
		}
		area := t.buf[segHeaderSize:]
		if len(area) > maxDecodedLen {
			continue
		}
		s := t.s
		var smaller bool
		s.pre, s.preCRC, smaller = encodeValue(s.pre, area)
		s.preLen, s.preRaw = len(t.buf), !smaller
		w.precompressed.Add(1)
	}
	clear(refs)
	w.wr.sealed = refs[:0]
}

// run is the writer goroutine: it commits when the oldest change is
// FlushInterval old, when MaxBatchBytes are pending or Flush asks, retries
// failed commits with backoff, and exits when stopc is closed.
func (w *WAL) run() {
	defer close(w.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-w.stopc:
			for w.commitOnStop && w.dirty() {
				if w.stopErr = w.commit(); w.stopErr != nil {
					break
				}
			}
			return
		default:
		}
		now := time.Now()
		due, dirty := w.due(now)
		if dirty && !now.Before(due) {
			if err := w.commit(); err != nil {
				w.wr.backoff = min(max(2*w.wr.backoff, backoffMin), backoffMax)
				w.wr.retryAt = time.Now().Add(w.wr.backoff)
			} else {
				w.wr.backoff, w.wr.retryAt = 0, time.Time{}
			}
			continue
		}
		var tc <-chan time.Time
		if dirty {
			// Compress what the commit will write while waiting for it,
			// then look again: the commit only has the open segment
			// left to compress.
			w.precompress(due)
			now = time.Now()
			wait := due.Sub(now)
			if wait <= preciseWait {
				// Go's timers can fire a millisecond late (an idle
				// runtime polls in whole milliseconds), and every
				// frame of the commit would wait that long too: the
				// last stretch is slept in the kernel, to the
				// microsecond. A kick meanwhile waits at most this.
				ts := unix.NsecToTimespec(int64(wait))
				unix.Nanosleep(&ts, nil)
				continue
			}
			timer.Reset(min(wait-preciseWait, precompressEvery))
			tc = timer.C
		}
		select {
		case <-w.kick:
		case <-tc:
		case <-w.stopc:
		}
		timer.Stop()
	}
}

// dirty reports whether anything changed since the last commit.
func (w *WAL) dirty() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dirtyLocked()
}

// due returns when the next commit is due, and whether there is anything
// to commit.
func (w *WAL) due(now time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.dirtyLocked() {
		return time.Time{}, false
	}
	switch {
	case !w.wr.retryAt.IsZero():
		return w.wr.retryAt, true
	case w.mu.flushReq, w.mu.appended-w.mu.committed >= int64(w.batchBytes), w.mu.oldest.IsZero():
		return now, true
	}
	return w.mu.oldest.Add(w.opts.FlushInterval), true
}

// commit runs one group commit of what is queued (see snapshot): the
// snapshot, the bbolt update, then the bookkeeping and callbacks.
func (w *WAL) commit() error {
	b := &w.wr.b
	w.snapshot(b)
	now := time.Now()
	var err error
	if h := w.opts.Hooks; h != nil && h.BeforeCommit != nil {
		err = h.BeforeCommit()
	}
	var dur time.Duration
	if err == nil {
		err = w.db.Update(func(tx *bolt.Tx) error { return w.write(tx, b, now) })
		dur = time.Since(now)
	}
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrCommit, err)
		w.failed(b, err)
		return err
	}
	w.succeeded(b, dur)
	return nil
}

// snapshot takes what the commit writes, under the lock: the frames not
// yet committed, in order, up to the end of an Append call (never part of
// one), and at most MaxBatchBytes of them unless one call alone is larger;
// and every position change whose frames are all among those committed by
// then; and every cursor change (cursors are not ordered with frames).
func (w *WAL) snapshot(b *batch) {
	w.mu.Lock()
	defer w.mu.Unlock()
	clear(b.refs)
	b.refs = b.refs[:0]
	clear(b.scan)
	b.scan = append(b.scan[:0], w.mu.full...)
	if w.mu.open != nil {
		b.scan = append(b.scan, w.mu.open)
	}
	// Choose where the commit ends: the last call end within the limit,
	// or the first call end if even that is beyond it. doneLen is the
	// writer's own; buf, count and the cut fields are read under mu.
	limit := w.batchBytes
	cutAt, cutLen, cutBytes := -1, 0, 0
	var cutCount uint32
	acc := 0 // new bytes in the segments before s
	for i, s := range b.scan {
		start := max(s.doneLen, segHeaderSize)
		if len(s.buf) <= start {
			continue
		}
		if s.cutLen > start {
			n := acc + s.cutLen - start
			if cutAt >= 0 && n > limit {
				break
			}
			cutAt, cutLen, cutCount, cutBytes = i, s.cutLen, s.cutCount, n
		}
		acc += len(s.buf) - start
		if cutAt >= 0 && acc >= limit {
			break
		}
	}
	for i := 0; i <= cutAt; i++ {
		s := b.scan[i]
		if len(s.buf) <= max(s.doneLen, segHeaderSize) {
			continue
		}
		r := segRef{s: s, buf: s.buf, count: s.count}
		if i == cutAt {
			r.buf, r.count = s.buf[:cutLen], cutCount
		}
		b.refs = append(b.refs, r)
	}
	b.bytes = max(cutBytes, 0)
	b.firstSeq = w.durable.Load() + 1
	b.lastSeq = b.firstSeq - 1
	if cutAt >= 0 {
		b.lastSeq = b.scan[cutAt].first + uint64(cutCount) - 1
	}
	b.complete = b.lastSeq == w.lastSeq.Load()
	b.gen = w.mu.gen
	clear(b.pos)
	for src, ops := range w.mu.posOps {
		for _, op := range ops {
			if op.seq > b.lastSeq {
				b.complete = false
				break
			}
			b.pos[src] = op // the last one covered wins
		}
	}
	w.snapshotCursors(b)
	b.oldest = w.mu.oldest
	if b.complete {
		w.mu.oldest = time.Time{}
		w.mu.flushReq = false
	}
}

// write is the body of the commit's bbolt transaction: the segments, the
// retention deletions, the positions and the cursors.
func (w *WAL) write(tx *bolt.Tx, b *batch, now time.Time) error {
	sb := tx.Bucket(bucketSegments)
	sb.FillPercent = 1.0 // keys only ever grow: fill pages completely
	nowNs := now.UnixNano()
	b.use, b.first = w.wr.use, w.wr.first
	b.retSegs, b.retN = 0, 0
	for i := range b.refs {
		r := &b.refs[i]
		s := r.s
		r.put = false
		if len(r.buf) == s.doneLen {
			continue // the open segment had nothing new
		}
		r.crc, r.crcLen = s.bodyCRC, s.crcLen
		v := w.compressed(b, i, r, nowNs)
		if v == nil {
			// Stored as it is: the CRC of the frame area is extended
			// over what was appended since the last put.
			if from := max(s.crcLen, segHeaderSize); from < len(r.buf) {
				r.crc = crc32.Update(r.crc, castagnoli, r.buf[from:])
			}
			r.crcLen = len(r.buf)
			writeHeader(r.buf, s.first, r.count, nowNs, r.crc)
			v = r.buf
		}
		if err := sb.Put(s.key[:], v); err != nil {
			return fmt.Errorf("put segment %d: %w", s.first, err)
		}
		r.put, r.storedLen = true, len(v)
		b.use.stored += int64(len(v) - s.storedLen)
		b.use.footprint += w.footprint(len(v))
		if s.doneLen == 0 {
			b.use.segments++
		} else {
			b.use.footprint -= w.footprint(s.storedLen)
		}
	}

	// Retention: delete whole oldest segments, always keeping the newest
	// (which holds the last sequence number for the next Open). Under
	// CursorRetain, stop at the first segment holding a frame after the
	// lowest cursor's Acked.
	b.applyCursorOps(w.wr.cursors)
	retain := w.opts.CursorPolicy != CursorDrop
	low, hasCursors := b.minAcked(w.wr.cursors)
	c := sb.Cursor()
	minNs := int64(0)
	if w.opts.MaxAge > 0 {
		minNs = nowNs - int64(w.opts.MaxAge)
	}
	k, v := c.First()
	for b.use.segments > 1 && k != nil && (b.use.footprint > w.opts.MaxBytes || headerNewest(v) < minNs) {
		if retain && hasCursors {
			// The segment's last frame is key + count − 1 (a damaged
			// count of 0 makes it key − 1: it is deleted like any).
			if key, _ := keySeq(k); key+uint64(headerCount(v)) > low+1 {
				b.held = true
				break
			}
		}
		b.use.stored -= int64(len(v))
		b.use.footprint -= w.footprint(len(v))
		b.use.segments--
		b.retSegs++
		b.retN += uint64(headerCount(v))
		if err := c.Delete(); err != nil {
			return fmt.Errorf("retention: %w", err)
		}
		k, v = c.First()
	}
	b.first = 0
	if k != nil {
		b.first, _ = keySeq(k)
	}
	if !retain && b.first > 0 {
		b.dropCursors(w.wr.cursors, b.first-1)
	}
	if err := b.writeCursors(tx); err != nil {
		return err
	}

	if len(b.pos) > 0 {
		pb := tx.Bucket(bucketPositions)
		for src, op := range b.pos {
			var err error
			if op.del {
				err = pb.Delete([]byte(src))
			} else {
				err = pb.Put([]byte(src), binary.BigEndian.AppendUint64(make([]byte, 0, 8), op.pos))
			}
			if err != nil {
				return fmt.Errorf("position %q: %w", src, err)
			}
		}
	}
	return nil
}

// compressed returns the value to store for refs[i] S2-compressed, header
// included, in b.cbufs[i]; or nil if Compress is off or compression would
// not make the value smaller (or its frame area is over maxDecodedLen).
// The whole frame area is compressed on every put: an open segment is
// re-put by every commit, and it is at most a segment long.
func (w *WAL) compressed(b *batch, i int, r *segRef, nowNs int64) []byte {
	area := r.buf[segHeaderSize:]
	if !w.opts.Compress || len(area) > maxDecodedLen {
		return nil
	}
	if s := r.s; s.preLen == len(r.buf) && s.preLen > 0 {
		// Compressed ahead (precompress): only the header is new.
		if s.preRaw {
			return nil
		}
		writeHeaderFlags(s.pre, s.first, r.count, nowNs, s.preCRC, flagS2)
		return s.pre
	}
	for len(b.cbufs) <= i {
		b.cbufs = append(b.cbufs, nil)
	}
	v, crc, ok := encodeValue(b.cbufs[i], area)
	// Keep standard-sized buffers for the next commits; a large
	// segment's buffer is dropped after this commit.
	if len(area) <= w.segLimit {
		b.cbufs[i] = v
	}
	if !ok {
		return nil
	}
	writeHeaderFlags(v, r.s.first, r.count, nowNs, crc, flagS2)
	return v
}

// encodeValue S2-compresses a segment's frame area into buf (grown if it
// is too small) after room for the header: the value without its header,
// the CRC32C of the compressed area, and whether compression made it
// smaller (if not, the segment is stored as it is).
func encodeValue(buf, area []byte) (v []byte, crc uint32, smaller bool) {
	need := segHeaderSize + s2.MaxEncodedLen(len(area))
	if cap(buf) < need {
		buf = make([]byte, need)
	}
	enc := s2.Encode(buf[segHeaderSize:need], area)
	return buf[:segHeaderSize+len(enc)], crc32.Checksum(enc, castagnoli), len(enc) < len(area)
}

// succeeded applies a committed batch: releases the segments stored whole,
// publishes the watermark and positions, calls OnCommit, wakes Flush.
func (w *WAL) succeeded(b *batch, dur time.Duration) {
	for i := range b.refs {
		if r := &b.refs[i]; r.put {
			r.s.doneLen, r.s.storedLen = len(r.buf), r.storedLen
			r.s.bodyCRC, r.s.crcLen = r.crc, r.crcLen
		}
	}
	w.wr.use, w.wr.first = b.use, b.first
	clear(b.commit.Positions)

	w.mu.Lock()
	// Sealed segments now stored whole are done with.
	done := 0
	for done < len(w.mu.full) && w.mu.full[done].doneLen == len(w.mu.full[done].buf) {
		w.releaseLocked(w.mu.full[done])
		done++
	}
	n := copy(w.mu.full, w.mu.full[done:])
	clear(w.mu.full[n:])
	w.mu.full = w.mu.full[:n]
	w.mu.committed += int64(b.bytes)
	w.mu.committedGen = b.gen
	w.durable.Store(b.lastSeq)
	w.firstSeq.Store(b.first)
	for src, op := range b.pos {
		ops := w.mu.posOps[src]
		i := 0
		for i < len(ops) && ops[i].gen <= op.gen {
			i++
		}
		if i == len(ops) {
			delete(w.mu.posOps, src)
		} else {
			w.mu.posOps[src] = ops[i:]
		}
		if op.del {
			delete(w.mu.positions, src)
		} else {
			w.mu.positions[src] = op.pos
			b.commit.Positions[src] = op.pos
		}
	}
	w.cursorsCommitted(b)
	w.mu.use = b.use
	w.mu.commits++
	w.mu.retainedSegs += b.retSegs
	w.mu.retainedN += b.retN
	w.mu.lastDur = dur
	w.mu.lastErr = nil
	ch := w.mu.commitCh
	w.mu.commitCh = make(chan struct{})
	w.mu.Unlock()

	if w.opts.OnCommit != nil {
		b.commit.FirstSeq, b.commit.LastSeq = b.firstSeq, b.lastSeq
		b.commit.Frames = int(b.lastSeq + 1 - b.firstSeq)
		b.commit.Bytes = b.bytes
		b.commit.Duration = dur
		w.opts.OnCommit(b.commit)
	}
	if w.opts.OnCursorLost != nil {
		for name, n := range b.lost {
			w.opts.OnCursorLost(name, n)
		}
	}
	close(ch)
}

// failed keeps everything queued after a failed commit and reports err.
func (w *WAL) failed(b *batch, err error) {
	w.mu.Lock()
	if b.complete && !b.oldest.IsZero() && (w.mu.oldest.IsZero() || b.oldest.Before(w.mu.oldest)) {
		w.mu.oldest = b.oldest
	}
	w.mu.commitErrors++
	w.mu.lastErr = err
	w.mu.Unlock()
	if w.opts.OnError != nil {
		w.opts.OnError(err)
	}
}
