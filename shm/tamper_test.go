package shm

import (
	"encoding/binary"
	"slices"
	"testing"
)

// What another process that maps the segment can write, and what the owner
// (the sidecar) makes of it: regression tests for docs/security.md.

// TestOwnerIgnoresForgedWords: the owner answers Flags, Durable, RingFlags,
// Info and Rings from its own copy, whatever another process wrote, and
// Repair puts every overwritten word back and says which.
func TestOwnerIgnoresForgedWords(t *testing.T) {
	s := newSegment(t, 1<<20)
	r := newRing(t, s, KindIngressSPSC, 4096)
	s.SetFlags(FlagDegraded)
	s.PublishDurable(42)
	want, _ := s.Info(r.Slot())
	le := binary.LittleEndian

	// Another process's writes.
	copy(s.mem[offMagic:], "HOSTILE!")
	u32At(s.mem, offReady).Store(0)
	u64At(s.mem, offFlags).Store(FlagPause | FlagShuttingDown)
	u64At(s.mem, offDurable).Store(1 << 60)
	o := s.slotOff(r.Slot())
	u64At(s.mem, o+dsFlags).Store(FlagPause)
	le.PutUint64(s.mem[o+dsOffset:], 12345)
	u32At(s.mem, o+dsState).Store(uint32(SlotFree))
	forged := s.slotOff(5)
	le.PutUint64(s.mem[forged+dsOffset:], s.dataOff)
	le.PutUint64(s.mem[forged+dsCapacity:], MinRingCapacity)
	le.PutUint32(s.mem[forged+dsKind:], uint32(KindIngressSPSC))
	u32At(s.mem, forged+dsState).Store(uint32(SlotActive))

	if f := s.Flags(); f != FlagDegraded {
		t.Errorf("owner's Flags() = %b, want its own %b", f, FlagDegraded)
	}
	if d := s.Durable(); d != 42 {
		t.Errorf("owner's Durable() = %d, want 42", d)
	}
	if f := s.RingFlags(r.Slot()); f != 0 {
		t.Errorf("owner's RingFlags = %b, want 0", f)
	}
	if got, _ := s.Info(r.Slot()); got != want {
		t.Errorf("owner's Info = %+v, want %+v", got, want)
	}
	if rings := s.Rings(); len(rings) != 1 || rings[0].Slot != r.Slot() {
		t.Errorf("owner's Rings() = %+v, want only slot %d", rings, r.Slot())
	}
	if !s.FlagsForged() {
		t.Error("FlagsForged() = false with forged flag words")
	}

	what := s.Repair()
	for _, w := range []string{"header", "ready", "flags", "durable", "slot 0", "slot 5"} {
		if !slices.Contains(what, w) {
			t.Errorf("Repair() = %v, want it to name %q", what, w)
		}
	}
	if _, err := ValidateHeader(s.mem); err != nil {
		t.Errorf("header after Repair: %v", err)
	}
	if f, d := u64At(s.mem, offFlags).Load(), u64At(s.mem, offDurable).Load(); f != FlagDegraded || d != 42 {
		t.Errorf("published flags %b, durable %d after Repair", f, d)
	}
	client, err := segmentOver(s.mem, s.path)
	if err != nil {
		t.Fatalf("a client's view after Repair: %v", err)
	}
	if got, _ := client.Info(r.Slot()); got != want {
		t.Errorf("client's Info after Repair = %+v, want %+v", got, want)
	}
	if got, _ := client.Info(5); got.State != SlotFree {
		t.Errorf("forged slot 5 is %v after Repair, want free", got.State)
	}
	if s.FlagsForged() {
		t.Error("FlagsForged() after Repair")
	}
	if what := s.Repair(); what != nil {
		t.Errorf("second Repair() = %v, want nil", what)
	}
}

// TestAllocRingIgnoresForgedDirectory: a slot marked free and geometry
// rewritten by another process do not make the owner place a new ring over
// one in use (which would zero it) or reuse its slot.
func TestAllocRingIgnoresForgedDirectory(t *testing.T) {
	s := newSegment(t, 1<<20)
	r := newRing(t, s, KindIngressSPSC, 4096)
	p := mustProducer(t, r, 1)
	cl, err := p.Claim(1, 16)
	if err != nil {
		t.Fatal(err)
	}
	fill(cl.Buf, 7)
	p.Commit(cl)
	o := s.slotOff(r.Slot())
	u32At(s.mem, o+dsState).Store(uint32(SlotFree))
	binary.LittleEndian.PutUint64(s.mem[o+dsOffset:], 1<<40)

	slot, err := s.AllocRing(RingSpec{Kind: KindIngressSPSC, Capacity: 4096, Owner: Owner{Name: "next"}})
	if err != nil {
		t.Fatal(err)
	}
	if slot == r.Slot() {
		t.Fatalf("the new ring took slot %d, which is in use", slot)
	}
	info, _ := s.Info(slot)
	if old, _ := s.Info(r.Slot()); info.Offset < old.Offset+alignPage(RingControlSize+old.Capacity) && old.Offset < info.Offset+alignPage(RingControlSize+info.Capacity) {
		t.Fatalf("the new ring %+v overlaps the one in use %+v", info, old)
	}
	c := mustConsumer(t, r)
	n, err := c.Poll(0, func(rec Record) {
		want := make([]byte, 16)
		fill(want, 7)
		if string(rec.Payload) != string(want) {
			t.Errorf("the record in use was overwritten: %x", rec.Payload)
		}
	})
	if n != 1 || err != nil {
		t.Errorf("Poll = %d, %v; want the one record", n, err)
	}
}

// TestConsumerHeadIsItsOwn: an exclusive consumer's Head is the position it
// released, not the shared word another process can overwrite.
func TestConsumerHeadIsItsOwn(t *testing.T) {
	s := newSegment(t, 1<<20)
	r := newRing(t, s, KindIngressSPSC, 4096)
	p := mustProducer(t, r, 1)
	cl, _ := p.Claim(1, 16)
	p.Commit(cl)
	c := mustConsumer(t, r)
	c.Poll(0, func(Record) {})
	c.Release(c.ReadPos())
	u64At(r.ctl, rcHead).Store(1 << 50)
	if h := c.Head(); h != cl.End() {
		t.Errorf("Head() = %d after the shared word was overwritten, want %d", h, cl.End())
	}
}

// TestConsumerStalled: a committed header that another process overwrote
// with zero or a negative length, behind the producer's tail, is Stalled; a
// record not yet committed (tail not past it) is not.
func TestConsumerStalled(t *testing.T) {
	s := newSegment(t, 1<<20)
	r := newRing(t, s, KindIngressSPSC, 4096)
	p := mustProducer(t, r, 1)
	c := mustConsumer(t, r)
	if c.Stalled() {
		t.Fatal("an empty ring is Stalled")
	}
	cl, _ := p.Claim(1, 16)
	if c.Stalled() {
		t.Fatal("a claimed, uncommitted record is Stalled")
	}
	p.Commit(cl)
	if c.Stalled() {
		t.Fatal("a committed record is Stalled")
	}
	u64At(r.data, 0).Store(header(-24, 1, 1))
	if !c.Stalled() {
		t.Fatal("a committed header overwritten with a claim is not Stalled")
	}
	u64At(r.data, 0).Store(0)
	if !c.Stalled() {
		t.Fatal("a committed header overwritten with zero is not Stalled")
	}
}

// TestRepairDoorbell: the doorbell's waiter count, which only the owner's
// drain loop raises, is put back to zero between its waits.
func TestRepairDoorbell(t *testing.T) {
	s := newSegment(t, 1<<20)
	if s.RepairDoorbell() {
		t.Fatal("RepairDoorbell on a clean doorbell")
	}
	u32At(s.mem, offDoorbell+evWaiters).Store(^uint32(0))
	if !s.RepairDoorbell() || s.Doorbell().Waiters() != 0 {
		t.Fatalf("RepairDoorbell left %d waiters", s.Doorbell().Waiters())
	}
}
