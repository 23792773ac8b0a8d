package shm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"sort"
)

// RingKind says what a ring is for.
type RingKind uint32

// Ring kinds.
const (
	KindIngressSPSC RingKind = 1 // one driver publishes frames, the sidecar consumes
	KindIngressMPMC RingKind = 2 // several producers share one ring
	KindCommand     RingKind = 3 // the sidecar sends commands to a driver (SPSC)
	KindEgress      RingKind = 4 // the sidecar feeds a subscriber (SPSC)
)

func (k RingKind) String() string {
	switch k {
	case KindIngressSPSC:
		return "ingress-spsc"
	case KindIngressMPMC:
		return "ingress-mpmc"
	case KindCommand:
		return "command"
	case KindEgress:
		return "egress"
	}
	return fmt.Sprintf("kind(%d)", uint32(k))
}

// MultiProducer reports whether producers of this kind claim with a CAS.
func (k RingKind) MultiProducer() bool { return k == KindIngressMPMC }

func (k RingKind) valid() bool { return k >= KindIngressSPSC && k <= KindEgress }

// SlotState is the state of a ring directory slot.
type SlotState uint32

// Slot states.
const (
	SlotFree    SlotState = 0 // unused
	SlotActive  SlotState = 1 // producer attached
	SlotRetired SlotState = 2 // producer gone; the sidecar drains what it committed
)

// Notify says which event a producer signals when it commits.
type Notify uint32

// Notify targets.
const (
	// NotifyDoorbell signals the segment's doorbell: one consumer (the
	// sidecar) sleeps for many rings.
	NotifyDoorbell Notify = 0
	// NotifyRing signals the ring's own data event: a consumer dedicated to
	// that ring (a subscriber, a driver's command loop) sleeps on it.
	NotifyRing Notify = 1
)

// Owner identifies the process a ring belongs to.
type Owner struct {
	Pid   int    // process id
	UID   uint32 // user id (from SO_PEERCRED)
	Start uint64 // process start time, see ProcessStart
	Name  string // producer name, at most 64 bytes (longer is cut)
}

// RingSpec asks for a ring.
type RingSpec struct {
	Kind RingKind
	// Capacity of the data area in bytes: a power of two between
	// MinRingCapacity and MaxRingCapacity.
	Capacity   int
	Notify     Notify
	Owner      Owner
	Generation uint64 // attach generation, echoed to the client
}

// RingInfo describes a directory slot as read from the segment.
type RingInfo struct {
	Slot       int
	State      SlotState
	Kind       RingKind
	Offset     uint64
	Capacity   uint64
	Generation uint64
	Notify     Notify
	Owner      Owner
	Flags      uint64
}

func (s *Segment) slotOff(slot int) int { return int(s.dirOff) + slot*dirSlotSize }

// Info reads directory slot slot. Its fields come from shared memory and are
// not validated; Ring validates before it uses them.
func (s *Segment) Info(slot int) (RingInfo, error) {
	if slot < 0 || slot >= s.slots {
		return RingInfo{}, fmt.Errorf("%w: %d is outside 0..%d", ErrBadSlot, slot, s.slots-1)
	}
	le := binary.LittleEndian
	o := s.slotOff(slot)
	d := s.mem[o : o+dirSlotSize]
	state, flags := SlotState(u32At(s.mem, o+dsState).Load()), u64At(s.mem, o+dsFlags).Load()
	if s.shadow != nil {
		// The sidecar reads its own copy: what another process wrote
		// into the directory does not count (shadow.go).
		d = s.shadow.slot(slot)
		state, flags = SlotState(le.Uint32(d[dsState:])), le.Uint64(d[dsFlags:])
	}
	name := d[dsName : dsName+dsNameLen]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	return RingInfo{
		Slot:       slot,
		State:      state,
		Kind:       RingKind(le.Uint32(d[dsKind:])),
		Offset:     le.Uint64(d[dsOffset:]),
		Capacity:   le.Uint64(d[dsCapacity:]),
		Generation: le.Uint64(d[dsGen:]),
		Notify:     Notify(le.Uint32(d[dsNotify:])),
		Owner: Owner{
			Pid:   int(le.Uint32(d[dsOwnerPid:])),
			UID:   le.Uint32(d[dsOwnerUID:]),
			Start: le.Uint64(d[dsOwnerTime:]),
			Name:  string(name),
		},
		Flags: flags,
	}, nil
}

// Rings lists every slot that is not free.
func (s *Segment) Rings() []RingInfo {
	var out []RingInfo
	for i := 0; i < s.slots; i++ {
		if info, err := s.Info(i); err == nil && info.State != SlotFree {
			out = append(out, info)
		}
	}
	return out
}

// AllocRing reserves a directory slot and a region of the data area, zeroes
// the region, fills in the slot and marks it active (sidecar only). The
// region placement is first fit over the regions of the slots in use, read
// back from the directory, so a sidecar that adopted a segment allocates
// around the rings it found.
func (s *Segment) AllocRing(spec RingSpec) (int, error) {
	c := uint64(spec.Capacity)
	if !isPow2(c) || c < MinRingCapacity || c > MaxRingCapacity {
		return -1, fmt.Errorf("%w: ring capacity %d must be a power of two in %d..%d", ErrConfig, spec.Capacity, MinRingCapacity, MaxRingCapacity)
	}
	if !spec.Kind.valid() {
		return -1, fmt.Errorf("%w: ring kind %d", ErrConfig, spec.Kind)
	}
	if spec.Notify != NotifyDoorbell && spec.Notify != NotifyRing {
		return -1, fmt.Errorf("%w: notify %d", ErrConfig, spec.Notify)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return -1, ErrClosed
	}
	slot := -1
	type region struct{ off, end uint64 }
	var used []region
	for i := 0; i < s.slots; i++ {
		info, _ := s.Info(i)
		if info.State == SlotFree {
			if slot < 0 {
				slot = i
			}
			continue
		}
		used = append(used, region{info.Offset, info.Offset + alignPage(RingControlSize+info.Capacity)})
	}
	if slot < 0 {
		return -1, fmt.Errorf("%w: all %d in use", ErrNoSlot, s.slots)
	}
	need := alignPage(RingControlSize + c)
	sort.Slice(used, func(i, j int) bool { return used[i].off < used[j].off })
	at := s.dataOff
	for _, r := range used {
		if r.off >= at+need {
			break
		}
		at = max(at, r.end)
	}
	if at+need > s.size {
		return -1, fmt.Errorf("%w: %d bytes wanted, segment is %d bytes with %d rings in use", ErrNoRoom, need, s.size, len(used))
	}
	clear(s.mem[at : at+need])

	// The whole slot is built here and written at once, state last (and
	// into the owner's shadow): nothing of an earlier use of the slot, nor
	// what another process wrote into it, stays.
	le := binary.LittleEndian
	d := make([]byte, dirSlotSize)
	le.PutUint32(d[dsKind:], uint32(spec.Kind))
	le.PutUint64(d[dsOffset:], at)
	le.PutUint64(d[dsCapacity:], c)
	le.PutUint64(d[dsGen:], spec.Generation)
	le.PutUint32(d[dsOwnerPid:], uint32(spec.Owner.Pid))
	le.PutUint32(d[dsOwnerUID:], spec.Owner.UID)
	le.PutUint64(d[dsOwnerTime:], spec.Owner.Start)
	le.PutUint32(d[dsNotify:], uint32(spec.Notify))
	copy(d[dsName:dsName+dsNameLen], spec.Owner.Name)
	le.PutUint32(d[dsState:], uint32(SlotActive))
	s.writeSlot(slot, d)
	return slot, nil
}

// SetSlotState changes a slot's state (sidecar only): SlotRetired when the
// producer is gone, SlotFree once its ring is drained.
func (s *Segment) SetSlotState(slot int, st SlotState) error {
	if slot < 0 || slot >= s.slots {
		return fmt.Errorf("%w: %d is outside 0..%d", ErrBadSlot, slot, s.slots-1)
	}
	s.updateSlotWord(slot, dsState, func(uint64) uint64 { return uint64(st) })
	return nil
}

// FreeRing marks a slot free (sidecar only). Its region is zeroed when it is
// allocated again.
func (s *Segment) FreeRing(slot int) error { return s.SetSlotState(slot, SlotFree) }

// RingFlags returns the per-ring flag word of a slot: in the sidecar's
// segment the one it set (its shadow), whatever another process wrote.
func (s *Segment) RingFlags(slot int) uint64 {
	if slot < 0 || slot >= s.slots {
		return 0
	}
	if sh := s.shadow; sh != nil {
		sh.mu.Lock()
		defer sh.mu.Unlock()
		return binary.LittleEndian.Uint64(sh.dir[slot*dirSlotSize+dsFlags:])
	}
	return u64At(s.mem, s.slotOff(slot)+dsFlags).Load()
}

// SetRingFlags sets bits in a slot's flag word (sidecar only).
func (s *Segment) SetRingFlags(slot int, bits uint64) {
	if slot >= 0 && slot < s.slots {
		s.updateSlotWord(slot, dsFlags, func(f uint64) uint64 { return f | bits })
	}
}

// ClearRingFlags clears bits in a slot's flag word (sidecar only).
func (s *Segment) ClearRingFlags(slot int, bits uint64) {
	if slot >= 0 && slot < s.slots {
		s.updateSlotWord(slot, dsFlags, func(f uint64) uint64 { return f &^ bits })
	}
}

// Ring returns the ring of a directory slot after checking the slot against
// the segment's geometry (kind known, capacity a power of two, region inside
// the data area). The checks use this process's copy of the geometry, so a
// corrupt directory cannot make the ring reach outside the mapping.
func (s *Segment) Ring(slot int) (*Ring, error) {
	info, err := s.Info(slot)
	if err != nil {
		return nil, err
	}
	bad := func(why string) (*Ring, error) {
		return nil, fmt.Errorf("%w: slot %d: %s", ErrBadSlot, slot, why)
	}
	switch {
	case info.State == SlotFree:
		return bad("slot is free")
	case info.State != SlotActive && info.State != SlotRetired:
		return bad(fmt.Sprintf("unknown state %d", info.State))
	case !info.Kind.valid():
		return bad(fmt.Sprintf("unknown kind %d", info.Kind))
	case !isPow2(info.Capacity) || info.Capacity < MinRingCapacity || info.Capacity > MaxRingCapacity:
		return bad(fmt.Sprintf("capacity %d", info.Capacity))
	case info.Offset < s.dataOff || info.Offset%pageSize != 0 ||
		info.Offset > s.size || s.size-info.Offset < RingControlSize+info.Capacity:
		return bad(fmt.Sprintf("region %d+%d outside the data area", info.Offset, info.Capacity))
	case info.Notify != NotifyDoorbell && info.Notify != NotifyRing:
		return bad(fmt.Sprintf("notify %d", info.Notify))
	}
	ctl := s.mem[info.Offset : info.Offset+RingControlSize : info.Offset+RingControlSize]
	data := s.mem[info.Offset+RingControlSize : info.Offset+RingControlSize+info.Capacity : info.Offset+RingControlSize+info.Capacity]
	// The ring's span rounded out to the OS page size (which may exceed
	// the layout's 4 KiB): madvise wants aligned addresses. A neighbour's
	// page it takes in is only mapped, never written.
	ps := uint64(os.Getpagesize())
	start := info.Offset &^ (ps - 1)
	end := min((info.Offset+RingControlSize+info.Capacity+ps-1)&^(ps-1), s.size)
	notify := s.Doorbell()
	if info.Notify == NotifyRing {
		notify = newEvent(ctl, rcDataEv)
	}
	return &Ring{
		seg:    s,
		slot:   slot,
		name:   info.Owner.Name,
		kind:   info.Kind,
		ctl:    ctl,
		data:   data,
		region: s.mem[start:end:end],
		cap:    info.Capacity,
		mask:   info.Capacity - 1,
		notify: notify,
		space:  newEvent(ctl, rcSpaceEv),
		gen:    info.Generation,
		owner:  info.Owner,
	}, nil
}

// Counter is a 64-bit counter slot in the segment header, readable by any
// process without locks (metrics, `framebus stat`).
type Counter struct {
	mem []byte
	off int
}

// Add adds d.
func (c Counter) Add(d uint64) { u64At(c.mem, c.off+cntValue).Add(d) }

// Load returns the value.
func (c Counter) Load() uint64 { return u64At(c.mem, c.off+cntValue).Load() }

// Store sets the value.
func (c Counter) Store(v uint64) { u64At(c.mem, c.off+cntValue).Store(v) }

// AllocCounter claims a free counter slot with a label (sidecar only). A label
// longer than 48 bytes is cut.
func (s *Segment) AllocCounter(label string) (Counter, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < counterSlots; i++ {
		o := counterOffset + i*counterSlotSize
		st := u32At(s.mem, o+cntState)
		if st.Load() != 0 {
			continue
		}
		u64At(s.mem, o+cntValue).Store(0)
		l := s.mem[o+cntLabel : o+cntLabel+counterLabelLen]
		clear(l)
		copy(l, label)
		st.Store(1)
		return Counter{mem: s.mem, off: o}, nil
	}
	return Counter{}, fmt.Errorf("%w: all %d in use", ErrNoCounter, counterSlots)
}

// CounterValue is one counter as read by Counters.
type CounterValue struct {
	Label string
	Value uint64
}

// Counters reads every counter slot in use.
func (s *Segment) Counters() []CounterValue {
	var out []CounterValue
	for i := 0; i < counterSlots; i++ {
		o := counterOffset + i*counterSlotSize
		if u32At(s.mem, o+cntState).Load() == 0 {
			continue
		}
		l := s.mem[o+cntLabel : o+cntLabel+counterLabelLen]
		if j := bytes.IndexByte(l, 0); j >= 0 {
			l = l[:j]
		}
		out = append(out, CounterValue{Label: string(l), Value: u64At(s.mem, o+cntValue).Load()})
	}
	return out
}
