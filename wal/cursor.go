package wal

import (
	"encoding/binary"
	"fmt"
	"maps"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Cursor format. A durable cursor is one key of the "cursors" bucket; the
// bucket is created by Open when missing (files written before cursors
// existed have none, and read as having no cursor). This layout is part
// of the on-disk format.
//
//	key:   cursor name, 1 to 128 bytes of printable ASCII (0x20–0x7e), no '/'
//	value:
//	  0                  8                  16
//	  +------------------+------------------+
//	  | acked            | lost             |
//	  | u64 big-endian   | u64 big-endian   |
//	  +------------------+------------------+
//
// acked is CursorInfo.Acked, lost CursorInfo.Lost.
const (
	cursorValueSize = 16
	maxCursorName   = 128
)

// CursorInfo is the state of a durable cursor; see WAL.SetCursor.
type CursorInfo struct {
	// Acked: every frame with seq <= Acked has been processed by the
	// cursor's owner. 0 means none has.
	Acked uint64 `json:"acked"`
	// Lost counts the frames retention deleted before the cursor acked
	// them (CursorDrop only), since the cursor was created; persisted.
	Lost uint64 `json:"lost"`
}

// cursorOp is a pending cursor change, to be written by the next commit.
// Cursors have no ordering constraint with frames (a cursor acks frames
// that are already durable), so only the latest change of a name is kept.
type cursorOp struct {
	acked uint64
	del   bool
	// create marks a cursor created since the last commit (it was unknown,
	// or deleted, when SetCursor was called): the commit writes it with
	// Lost 0 whatever is stored under the name. createGen is the gen of
	// that SetCursor: it tells the incarnations of a name apart.
	create    bool
	createGen uint64
	gen       uint64 // gen of the latest change
}

// checkCursorName returns an error wrapping ErrCursor if name cannot be a
// cursor's name.
func checkCursorName(name string) error {
	if len(name) == 0 || len(name) > maxCursorName {
		return fmt.Errorf("%w: name of %d bytes, want 1 to %d", ErrCursor, len(name), maxCursorName)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c > 0x7e || c == '/' {
			return fmt.Errorf("%w: name %q: byte %d is %#02x, want printable ASCII other than '/'", ErrCursor, name, i, c)
		}
	}
	return nil
}

// putCursor encodes ci as a cursor value.
func putCursor(ci CursorInfo) []byte {
	v := make([]byte, cursorValueSize)
	binary.BigEndian.PutUint64(v[0:], ci.Acked)
	binary.BigEndian.PutUint64(v[8:], ci.Lost)
	return v
}

// parseCursor decodes a cursor value; ok is false if it is not 16 bytes.
func parseCursor(v []byte) (ci CursorInfo, ok bool) {
	if len(v) != cursorValueSize {
		return CursorInfo{}, false
	}
	return CursorInfo{Acked: binary.BigEndian.Uint64(v[0:]), Lost: binary.BigEndian.Uint64(v[8:])}, true
}

// readCursors calls fn for every cursor of the bucket cb (which may be
// nil: a file written before cursors existed), and returns an error
// wrapping ErrCorrupt at the first malformed one.
func readCursors(cb *bolt.Bucket, fn func(name string, ci CursorInfo)) error {
	if cb == nil {
		return nil
	}
	return cb.ForEach(func(k, v []byte) error {
		if err := checkCursorName(string(k)); err != nil {
			return fmt.Errorf("%w: cursor %q: bad name", ErrCorrupt, k)
		}
		ci, ok := parseCursor(v)
		if !ok {
			return fmt.Errorf("%w: cursor %q has %d bytes, want %d", ErrCorrupt, k, len(v), cursorValueSize)
		}
		fn(string(k), ci)
		return nil
	})
}

// SetCursor records that the owner of cursor name (a consumer of the WAL)
// has processed every frame up to acked. The change is committed with the
// next group commit (it makes the WAL dirty, so that a commit happens
// within FlushInterval, and Flush waits for it) and survives restarts; it
// is not ordered with frames, so a cursor must only ack frames that are
// durable (Durable). A new name creates the cursor, with Lost 0. An acked
// lower than the cursor's Acked is ignored: cursors never move back.
//
// Under CursorRetain, retention keeps every frame after the lowest Acked
// of all cursors; under CursorDrop it deletes them anyway and counts them
// in Lost. A cursor created below FirstSeq − 1 cannot get back what is
// already deleted (under CursorDrop the next commit counts it as lost).
//
// It returns an error wrapping ErrCursor, recording nothing, if name is
// not 1 to 128 bytes of printable ASCII without '/', or if acked is
// greater than LastSeq; after Close it returns ErrClosed.
func (w *WAL) SetCursor(name string, acked uint64) error {
	if err := checkCursorName(name); err != nil {
		return err
	}
	w.mu.Lock()
	if w.mu.closed {
		w.mu.Unlock()
		return ErrClosed
	}
	if last := w.lastSeq.Load(); acked > last {
		w.mu.Unlock()
		return fmt.Errorf("%w: cursor %q: acked %d is beyond LastSeq %d", ErrCursor, name, acked, last)
	}
	ci, known := w.mu.cursors[name]
	if known && acked <= ci.Acked {
		w.mu.Unlock()
		return nil
	}
	w.mu.gen++
	op := w.mu.curOps[name]
	if !known {
		// A new cursor, or a deleted one's name reused: a new incarnation.
		ci = CursorInfo{}
		op = cursorOp{create: true, createGen: w.mu.gen}
	}
	op.acked, op.gen = acked, w.mu.gen
	ci.Acked = acked
	w.mu.cursors[name] = ci
	w.mu.curOps[name] = op
	kick := w.touchLocked()
	w.mu.Unlock()
	if kick {
		w.signal()
	}
	return nil
}

// Cursor returns the state of cursor name as it will be after the pending
// commit: Acked includes SetCursor calls not yet committed; Lost is as of
// the last commit. ok is false if there is no such cursor (or it was
// deleted).
func (w *WAL) Cursor(name string) (ci CursorInfo, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ci, ok = w.mu.cursors[name]
	return ci, ok
}

// DeleteCursor removes cursor name; the deletion is committed with the
// next commit, and retention no longer waits for it from then on. An
// unknown name (or an invalid one, which no cursor can have) does nothing,
// and so does a call after Close.
func (w *WAL) DeleteCursor(name string) {
	w.mu.Lock()
	if _, ok := w.mu.cursors[name]; !ok || w.mu.closed {
		w.mu.Unlock()
		return
	}
	delete(w.mu.cursors, name)
	w.mu.gen++
	w.mu.curOps[name] = cursorOp{del: true, gen: w.mu.gen}
	kick := w.touchLocked()
	w.mu.Unlock()
	if kick {
		w.signal()
	}
}

// Cursors returns a copy of every cursor, as Cursor returns them.
func (w *WAL) Cursors() map[string]CursorInfo {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.mu.cursors)
}

// The writer's side. The batch holds, from snapshot to succeeded:
//
//	cur     the pending cursor changes the snapshot took (all of them)
//	curSet  every cursor the commit writes, as it writes it: those cur
//	        sets, and those CursorDrop moved
//	lost    the frames each cursor lost in this commit (CursorDrop)
//
// w.wr.cursors is the committed state; it changes only in succeeded.

// snapshotCursors takes every pending cursor change; called under mu.
func (w *WAL) snapshotCursors(b *batch) {
	clear(b.cur)
	maps.Copy(b.cur, w.mu.curOps)
}

// applyCursorOps computes, in b.curSet, the cursors b.cur changes as the
// commit writes them. committed is the state as of the last commit.
func (b *batch) applyCursorOps(committed map[string]CursorInfo) {
	clear(b.curSet)
	clear(b.lost)
	b.held = false
	for name, op := range b.cur {
		if op.del {
			continue
		}
		ci, ok := committed[name]
		if op.create || !ok {
			ci = CursorInfo{}
		}
		ci.Acked = max(ci.Acked, op.acked)
		b.curSet[name] = ci
	}
}

// minAcked returns the lowest Acked of the cursors as this commit leaves
// them; ok is false if there is none.
func (b *batch) minAcked(committed map[string]CursorInfo) (low uint64, ok bool) {
	for name, ci := range committed {
		if _, changed := b.cur[name]; changed {
			continue
		}
		if !ok || ci.Acked < low {
			low, ok = ci.Acked, true
		}
	}
	for _, ci := range b.curSet {
		if !ok || ci.Acked < low {
			low, ok = ci.Acked, true
		}
	}
	return low, ok
}

// dropCursors moves every cursor below floor (the new FirstSeq − 1) up to
// it, counting the frames it skips as lost (CursorDrop).
func (b *batch) dropCursors(committed map[string]CursorInfo, floor uint64) {
	for name, ci := range b.curSet {
		if ci.Acked < floor {
			n := floor - ci.Acked
			ci.Acked, ci.Lost = floor, ci.Lost+n
			b.curSet[name] = ci
			b.lost[name] = n
		}
	}
	for name, ci := range committed {
		if _, changed := b.cur[name]; changed || ci.Acked >= floor {
			continue
		}
		n := floor - ci.Acked
		ci.Acked, ci.Lost = floor, ci.Lost+n
		b.curSet[name] = ci
		b.lost[name] = n
	}
}

// writeCursors writes the commit's cursor changes into tx.
func (b *batch) writeCursors(tx *bolt.Tx) error {
	if len(b.cur) == 0 && len(b.curSet) == 0 {
		return nil
	}
	cb := tx.Bucket(bucketCursors)
	for name, op := range b.cur {
		if op.del {
			if err := cb.Delete([]byte(name)); err != nil {
				return fmt.Errorf("cursor %q: %w", name, err)
			}
		}
	}
	for name, ci := range b.curSet {
		if err := cb.Put([]byte(name), putCursor(ci)); err != nil {
			return fmt.Errorf("cursor %q: %w", name, err)
		}
	}
	return nil
}

// cursorsCommitted applies a committed batch's cursor changes: to the
// committed state, to the pending changes (those the commit wrote are
// done with, unless changed since the snapshot) and to the in-memory view
// (what CursorDrop moved). Called under mu.
func (w *WAL) cursorsCommitted(b *batch) {
	for name, op := range b.cur {
		if op.del {
			delete(w.wr.cursors, name)
		}
		p, ok := w.mu.curOps[name]
		switch {
		case !ok:
		case p.gen == op.gen:
			delete(w.mu.curOps, name)
		case op.create && p.create && p.createGen == op.createGen:
			// Changed since the snapshot, but the cursor it changes is
			// now stored: the next commit must keep its Lost.
			p.create = false
			w.mu.curOps[name] = p
		}
	}
	for name, ci := range b.curSet {
		w.wr.cursors[name] = ci
	}
	for name := range b.lost {
		if p, ok := w.mu.curOps[name]; ok && (p.del || p.create) {
			continue // deleted or created anew since the snapshot
		}
		if m, ok := w.mu.cursors[name]; ok {
			ci := b.curSet[name]
			m.Acked, m.Lost = max(m.Acked, ci.Acked), ci.Lost
			w.mu.cursors[name] = m
		}
	}
	w.mu.retentionHeld = b.held
}

// touchLocked notes that something changed since the last commit, and
// reports whether the writer must be woken (its timer was not running).
func (w *WAL) touchLocked() bool {
	if w.mu.oldest.IsZero() {
		w.mu.oldest = time.Now()
		return true
	}
	return false
}
