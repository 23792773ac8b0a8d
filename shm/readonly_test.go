package shm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// observe opens an Observer on s and closes it when the test ends.
func observe(tb testing.TB, s *Segment) *Observer {
	tb.Helper()
	o, err := OpenObserver(filepath.Dir(s.Path()), strings.TrimPrefix(filepath.Base(s.Path()), "framebus-"))
	if err != nil {
		tb.Fatalf("OpenObserver: %v", err)
	}
	tb.Cleanup(func() { o.Close() })
	return o
}

// TestObserverSnapshot: a Snapshot shows what the sidecar and the producers
// wrote: header, flags, watermark, every ring with its owner, positions,
// fill and drop counters, and the counter slots.
func TestObserverSnapshot(t *testing.T) {
	s := newSegment(t, 1<<20)
	a := newRing(t, s, KindIngressSPSC, 4096)
	slotB, err := s.AllocRing(RingSpec{Kind: KindIngressMPMC, Capacity: 8192, Generation: 7,
		Owner: Owner{Pid: 4242, UID: 1000, Start: 99, Name: "modbus-line-2"}})
	if err != nil {
		t.Fatal(err)
	}
	p := mustProducer(t, a, 1)
	c := mustConsumer(t, a)
	for i := 0; i < 10; i++ {
		cl, err := p.Claim(7, 100) // 108 bytes, 112 aligned
		if err != nil {
			t.Fatal(err)
		}
		p.Commit(cl)
	}
	var released uint64
	if _, err := c.Poll(4, func(r Record) { released = r.End }); err != nil {
		t.Fatal(err)
	}
	if err := c.Release(released); err != nil {
		t.Fatal(err)
	}
	a.AddDropped(DropRingFull, 3)
	a.AddDropped(DropPaused, 5)
	s.SetFlags(FlagPause | FlagDegraded)
	s.SetRingFlags(slotB, FlagPause)
	s.PublishDurable(12345)
	cnt, err := s.AllocCounter("frames")
	if err != nil {
		t.Fatal(err)
	}
	cnt.Store(77)

	o := observe(t, s)
	snap, err := o.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	pid, start := s.SidecarPid()
	if snap.Epoch != 1 || snap.SidecarPid != pid || snap.SidecarStart != start || snap.Size != 1<<20 || snap.MaxRings != 16 ||
		!snap.Created.Equal(s.Created()) {
		t.Fatalf("header: %+v", snap)
	}
	if snap.Flags != FlagPause|FlagDegraded || snap.Durable != 12345 {
		t.Fatalf("flags %b durable %d, want %b 12345", snap.Flags, snap.Durable, FlagPause|FlagDegraded)
	}
	if len(snap.Rings) != 2 {
		t.Fatalf("%d rings, want 2: %+v", len(snap.Rings), snap.Rings)
	}
	ra, rb := snap.Rings[0], snap.Rings[1]
	if ra.Slot != a.Slot() || ra.Kind != KindIngressSPSC || ra.Owner.Name != "test" || ra.State != SlotActive || ra.Err != nil {
		t.Fatalf("ring a: %+v", ra)
	}
	if ra.Tail != 10*112 || ra.Head != 4*112 || ra.Used != 6*112 || ra.DroppedFull != 3 || ra.DroppedPaused != 5 {
		t.Fatalf("ring a positions: head %d tail %d used %d dropped %d/%d, want 448 1120 672 3/5",
			ra.Head, ra.Tail, ra.Used, ra.DroppedFull, ra.DroppedPaused)
	}
	if rb.Slot != slotB || rb.Kind != KindIngressMPMC || rb.Capacity != 8192 || rb.Generation != 7 || rb.Flags != FlagPause ||
		rb.Owner != (Owner{Pid: 4242, UID: 1000, Start: 99, Name: "modbus-line-2"}) || rb.Tail != 0 || rb.Used != 0 {
		t.Fatalf("ring b: %+v", rb)
	}
	if len(snap.Counters) != 1 || snap.Counters[0] != (CounterValue{Label: "frames", Value: 77}) {
		t.Fatalf("counters %+v", snap.Counters)
	}

	// A retired ring stays visible; a freed one does not.
	if err := s.SetSlotState(a.Slot(), SlotRetired); err != nil {
		t.Fatal(err)
	}
	if err := s.FreeRing(slotB); err != nil {
		t.Fatal(err)
	}
	if snap, err = o.Snapshot(); err != nil {
		t.Fatal(err)
	}
	if len(snap.Rings) != 1 || snap.Rings[0].State != SlotRetired || snap.Rings[0].Slot != a.Slot() {
		t.Fatalf("after retire and free: %+v", snap.Rings)
	}
}

// TestObserverIsReadOnly: the Observer's mapping of the segment is
// read-only and shared (r--s in /proc/self/maps), and Snapshot leaves the
// file's bytes as they were.
func TestObserverIsReadOnly(t *testing.T) {
	s := newSegment(t, 1<<20)
	r := newRing(t, s, KindIngressSPSC, 4096)
	p := mustProducer(t, r, 1)
	cl, err := p.Claim(7, 64)
	if err != nil {
		t.Fatal(err)
	}
	p.Commit(cl)
	before := mappings(t, s.Path())
	if len(before) != 1 || before[0] != "rw-s" {
		t.Fatalf("the creator's mappings of the segment: %v, want [rw-s]", before)
	}
	sum := fileSum(t, s.Path())

	o := observe(t, s)
	for i := 0; i < 3; i++ {
		if _, err := o.Snapshot(); err != nil {
			t.Fatal(err)
		}
	}
	after := mappings(t, s.Path())
	if len(after) != 2 || !slices.Contains(after, "rw-s") || !slices.Contains(after, "r--s") {
		t.Fatalf("mappings of the segment with an Observer open: %v, want one rw-s (the creator) and one r--s", after)
	}
	if fileSum(t, s.Path()) != sum {
		t.Fatal("the segment's bytes changed while only an Observer read it")
	}
	o.Close()
	if got := mappings(t, s.Path()); len(got) != 1 {
		t.Fatalf("after Close: mappings %v, want the creator's only", got)
	}
}

// mappings returns the permissions of every mapping of path in this process.
func mappings(tb testing.TB, path string) []string {
	tb.Helper()
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var perms []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 6 && fields[len(fields)-1] == path {
			perms = append(perms, fields[1])
		}
	}
	return perms
}

func fileSum(tb testing.TB, path string) [32]byte {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestObserverErrors: a missing segment, a bad name, a segment still being
// initialised, a truncated one and one replaced by a new sidecar.
func TestObserverErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenObserver(dir, "nobody"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing segment: %v, want fs.ErrNotExist", err)
	}
	if _, err := OpenObserver(dir, "../x"); !errors.Is(err, ErrConfig) {
		t.Fatalf("bad name: %v, want ErrConfig", err)
	}

	s := newSegment(t, 1<<20)
	img, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	notReady := bytes.Clone(img)
	clear(notReady[offReady : offReady+4])
	if err := os.WriteFile(Path(dir, "half"), notReady, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenObserver(dir, "half"); !errors.Is(err, ErrNotReady) {
		t.Fatalf("segment not ready: %v, want ErrNotReady", err)
	}
	if err := os.WriteFile(Path(dir, "short"), img[:HeaderSize], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenObserver(dir, "short"); !errors.Is(err, ErrTooSmall) {
		t.Fatalf("truncated segment: %v, want ErrTooSmall", err)
	}

	// A sidecar that stops removes its segment; the next one creates a
	// new file under the same path.
	o := observe(t, s)
	if o.Replaced() {
		t.Fatal("Replaced before anything happened")
	}
	if err := s.Remove(); err != nil {
		t.Fatal(err)
	}
	if !o.Replaced() {
		t.Fatal("not Replaced after the file was removed")
	}
	name := strings.TrimPrefix(filepath.Base(s.Path()), "framebus-")
	s2, err := Create(Config{Name: name, Dir: filepath.Dir(s.Path()), Size: 1 << 20, MaxRings: 16}, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s2.Close(); s2.Remove() }()
	if !o.Replaced() {
		t.Fatal("not Replaced after a new segment was created under the path")
	}
	if snap, err := o.Snapshot(); err != nil || snap.Epoch != 1 {
		t.Fatalf("the old mapping: epoch %d, %v; want epoch 1 (it still shows the removed file)", snap.Epoch, err)
	}
}
