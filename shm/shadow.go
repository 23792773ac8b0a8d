package shm

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"sync"
	"sync/atomic"
)

// The owner's shadow. Every process that maps the segment can write all of
// it, so the sidecar does not read back what it published: it keeps its own
// copy of every word that only it writes (the static header line, the ready
// word, the global flags, the durable watermark and the whole ring
// directory), answers its own questions (Flags, Durable, Info, Rings,
// RingFlags, and AllocRing's placement) from that copy, and Repair puts the
// published words back when another process has overwritten them. Clients
// have no shadow: they read the segment.
//
// Not shadowed: the events (their sequence and waiter words are written by
// every waiter and signaller), the counter slots, and the rings themselves,
// whose positions and records their producers and consumers write.

// shadow is the owner's copy. mu orders every owner write of the directory,
// flags and watermark with Repair, so that Repair never mistakes a write in
// progress for tampering.
type shadow struct {
	mu      sync.Mutex
	static  [lineSize]byte // header line 0 as the owner wrote it
	flags   atomic.Uint64
	durable atomic.Uint64
	dir     []byte // MaxRings × dirSlotSize, as the owner wrote them
}

// newShadow snapshots the segment as it is now: call it once the owner has
// published the header (Create) or taken the segment over (Adopt; the
// directory it finds is the previous sidecar's).
func newShadow(s *Segment) *shadow {
	sh := &shadow{dir: make([]byte, s.slots*dirSlotSize)}
	copy(sh.static[:], s.mem[:lineSize])
	sh.flags.Store(u64At(s.mem, offFlags).Load())
	sh.durable.Store(u64At(s.mem, offDurable).Load())
	copy(sh.dir, s.mem[s.dirOff:s.dirOff+uint64(len(sh.dir))])
	return sh
}

// slot returns a copy of a directory slot as the owner wrote it.
func (sh *shadow) slot(slot int) []byte {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return bytes.Clone(sh.dir[slot*dirSlotSize : (slot+1)*dirSlotSize])
}

// writeSlot stores a whole slot image (sidecar only): into the shadow, and
// into the segment with the state word stored last.
func (s *Segment) writeSlot(slot int, img []byte) {
	o := s.slotOff(slot)
	if sh := s.shadow; sh != nil {
		sh.mu.Lock()
		defer sh.mu.Unlock()
		copy(sh.dir[slot*dirSlotSize:], img)
	}
	u32At(s.mem, o+dsState).Store(uint32(SlotFree))
	s.restoreSlot(o, img)
}

// restoreSlot writes a slot image into the segment: the plain fields, then
// the flag word and the state word with atomic stores, state last.
func (s *Segment) restoreSlot(o int, img []byte) {
	le := binary.LittleEndian
	d := s.mem[o : o+dirSlotSize]
	copy(d[dsState+4:dsFlags], img[dsState+4:dsFlags])
	copy(d[dsFlags+8:], img[dsFlags+8:])
	u64At(s.mem, o+dsFlags).Store(le.Uint64(img[dsFlags:]))
	u32At(s.mem, o+dsState).Store(le.Uint32(img[dsState:]))
}

// updateSlotWord changes one 32- or 64-bit word of a slot (sidecar only), in
// the shadow and the segment, and returns its new value.
func (s *Segment) updateSlotWord(slot, field int, f func(uint64) uint64) uint64 {
	le := binary.LittleEndian
	o := s.slotOff(slot) + field
	sh := s.shadow
	if sh == nil {
		if field == dsState {
			w := u32At(s.mem, o)
			v := uint32(f(uint64(w.Load())))
			w.Store(v)
			return uint64(v)
		}
		w := u64At(s.mem, o)
		v := f(w.Load())
		w.Store(v)
		return v
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	at := slot*dirSlotSize + field
	if field == dsState {
		v := uint32(f(uint64(le.Uint32(sh.dir[at:]))))
		le.PutUint32(sh.dir[at:], v)
		u32At(s.mem, o).Store(v)
		return uint64(v)
	}
	v := f(le.Uint64(sh.dir[at:]))
	le.PutUint64(sh.dir[at:], v)
	u64At(s.mem, o).Store(v)
	return v
}

// updateFlags changes the global flag word (sidecar only).
func (s *Segment) updateFlags(f func(uint64) uint64) {
	sh := s.shadow
	if sh == nil {
		w := u64At(s.mem, offFlags)
		w.Store(f(w.Load()))
		return
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	v := f(sh.flags.Load())
	sh.flags.Store(v)
	u64At(s.mem, offFlags).Store(v)
}

// Repair puts back, in a segment this process owns (Create, Adopt), every
// word of the header and of the ring directory that only the owner writes
// and another process has overwritten: the static header line, the ready
// word, the global flags, the durable watermark and every directory slot
// (state, geometry, owner, per-ring flags). It returns what it restored, for
// the log and the metrics, or nil if nothing was changed. A client's
// segment has nothing to repair. The sidecar calls it from its housekeeping.
//
// It cannot undo what a process does in between (a driver that opened the
// segment while the header was broken was refused, one that read a forged
// PAUSE held back) nor anything in the rings, the events or the counters.
func (s *Segment) Repair() []string {
	sh := s.shadow
	if sh == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	var what []string
	if !bytes.Equal(s.mem[:lineSize], sh.static[:]) {
		copy(s.mem[:lineSize], sh.static[:])
		what = append(what, "header")
	}
	if w := u32At(s.mem, offReady); w.Load() != readyValue {
		w.Store(readyValue)
		what = append(what, "ready")
	}
	if w := u64At(s.mem, offFlags); w.Load() != sh.flags.Load() {
		w.Store(sh.flags.Load())
		what = append(what, "flags")
	}
	if w := u64At(s.mem, offDurable); w.Load() != sh.durable.Load() {
		w.Store(sh.durable.Load())
		what = append(what, "durable")
	}
	for slot := 0; slot < s.slots; slot++ {
		o := s.slotOff(slot)
		want := sh.dir[slot*dirSlotSize : (slot+1)*dirSlotSize]
		if !bytes.Equal(s.mem[o:o+dirSlotSize], want) {
			s.restoreSlot(o, want)
			what = append(what, "slot "+strconv.Itoa(slot))
		}
	}
	return what
}

// RepairDoorbell zeroes the doorbell's waiter count if it is not zero and
// reports whether it did (sidecar only). The sidecar's drain loop is the
// doorbell's only sleeper, so the count must be zero whenever that loop is
// not waiting: call it from the loop, between waits. A process that zeroes
// the count while the loop sleeps makes producers skip their wake-ups (and
// the loop's own decrement then leaves it at -1, so every later sleep would
// last its whole timeout); one that raises it makes every commit pay for a
// futex wake. This bounds either to one sleep.
func (s *Segment) RepairDoorbell() bool {
	if s.shadow == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return false
	}
	w := u32At(s.mem, offDoorbell+evWaiters)
	if w.Load() == 0 {
		return false
	}
	w.Store(0)
	return true
}

// FlagsForged reports whether the global flag word or the flag word of a
// directory slot in the segment differs from what the owner set (sidecar
// only; false in a client). It is cheap enough for the drain loop's wake-up
// condition: a producer that finds PAUSE raised rings the doorbell, and a
// forged PAUSE is then put right (Repair) at once rather than at the loop's
// next timeout.
func (s *Segment) FlagsForged() bool {
	sh := s.shadow
	if sh == nil {
		return false
	}
	if u64At(s.mem, offFlags).Load() != sh.flags.Load() {
		return true
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	for slot := 0; slot < s.slots; slot++ {
		if u64At(s.mem, s.slotOff(slot)+dsFlags).Load() != binary.LittleEndian.Uint64(sh.dir[slot*dirSlotSize+dsFlags:]) {
			return true
		}
	}
	return false
}
