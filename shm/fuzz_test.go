package shm

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// imageSegment returns a valid segment image (header, 4 directory slots, one
// active ring of 4 KiB) in ordinary memory, for fuzzing.
func imageSegment(tb testing.TB) []byte {
	tb.Helper()
	s := newSegment(tb, int64(minSegmentSize(4))+2*pageSize)
	img := make([]byte, len(s.mem))
	slot, err := s.AllocRing(RingSpec{Kind: KindIngressMPMC, Capacity: 4096, Owner: Owner{Pid: 1, Name: "fuzz"}})
	if err != nil || slot != 0 {
		tb.Fatalf("AllocRing: %d %v", slot, err)
	}
	copy(img, s.mem)
	return img
}

// exerciseSegment runs everything a process does with a segment it opened:
// validation, directory reads, and a consumer and producer on every ring the
// directory describes. On arbitrary bytes none of it may panic or reach
// outside the image.
func exerciseSegment(t *testing.T, img []byte) {
	s, err := segmentOver(img, "fuzz")
	if err != nil {
		return
	}
	_ = s.Epoch()
	_, _ = s.SidecarPid()
	_ = s.Counters()
	for i := 0; i < s.MaxRings(); i++ {
		r, err := s.Ring(i)
		if err != nil {
			continue
		}
		exerciseRing(t, r)
	}
}

// exerciseRing consumes whatever the data area holds, with Unblock allowed to
// pad anything, and checks that every record handed out lies inside the data
// area and that the walk ends.
func exerciseRing(t *testing.T, r *Ring) {
	c, err := r.Consumer()
	if err != nil {
		return
	}
	for round := 0; round < 8; round++ {
		total := uint64(0)
		_, err := c.Poll(0, func(rec Record) {
			if i := rec.Pos&r.mask + RecordHeaderSize; len(rec.Payload) > 0 &&
				(i+uint64(len(rec.Payload)) > r.cap || &r.data[i] != &rec.Payload[0]) {
				t.Fatalf("record at %d: payload is not the %d bytes after its header inside the data area", rec.Pos, len(rec.Payload))
			}
			if rec.End <= rec.Pos || rec.End-rec.Pos > r.cap {
				t.Fatalf("record spans %d..%d", rec.Pos, rec.End)
			}
			total += rec.End - rec.Pos
		})
		if total > r.cap {
			t.Fatalf("one poll delivered %d bytes from a %d-byte ring", total, r.cap)
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Poll: unexpected error %v", err)
		}
		if err := c.Release(c.ReadPos()); err != nil {
			t.Fatalf("exclusive Release: %v", err)
		}
		if _, err := c.Unblock(func(uint16) bool { return true }); err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Unblock: unexpected error %v", err)
		}
	}
	if p, err := r.Producer(1); err == nil {
		if cl, err := p.Claim(3, 24); err == nil {
			p.Commit(cl)
		}
	}
	_ = r.Used()
}

// FuzzSegmentHeader overlays arbitrary bytes on a valid segment image at a
// chosen offset (the header, the directory or a ring) and truncates it to a
// chosen length, then runs everything Open and a consumer would.
func FuzzSegmentHeader(f *testing.F) {
	img := imageSegment(f)
	f.Add(uint16(0), uint32(len(img)), []byte("FRAMEBUS"))
	f.Add(uint16(offEpoch), uint32(len(img)), []byte{1, 2, 3, 4})
	f.Add(uint16(HeaderSize), uint32(len(img)), []byte{2, 0, 0, 0, 9, 0, 0, 0})
	f.Fuzz(func(t *testing.T, at uint16, length uint32, patch []byte) {
		b := make([]byte, len(img))
		copy(b, img)
		copy(b[min(int(at), len(b)):], patch)
		b = b[:min(int(length), len(b))]
		// A patch that leaves the checksum valid is rare; also try the
		// image with its checksum recomputed, so the fuzzer reaches the
		// checks behind it.
		exerciseSegment(t, b)
		if len(b) >= lineSize {
			binary.LittleEndian.PutUint32(b[offCRC:], crc32Header(b))
			exerciseSegment(t, b)
		}
	})
}

// FuzzRingConsumer fills a ring's data area and positions with arbitrary
// bytes and consumes it.
func FuzzRingConsumer(f *testing.F) {
	f.Add(uint64(0), uint64(0), []byte{})
	f.Add(uint64(8), uint64(4000), []byte{16, 0, 0, 0, 7, 0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Add(uint64(0), uint64(64), []byte{0xf8, 0xff, 0xff, 0xff, 7, 0, 1, 0})
	f.Fuzz(func(t *testing.T, head, tail uint64, data []byte) {
		s := fuzzSegment(t)
		r, err := s.Ring(0)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(r.data); i += max(len(data), 1) {
			copy(r.data[i:], data)
		}
		binary.LittleEndian.PutUint64(r.ctl[rcHead:], head)
		binary.LittleEndian.PutUint64(r.ctl[rcRead:], head)
		binary.LittleEndian.PutUint64(r.ctl[rcTail:], tail)
		exerciseRing(t, r)
	})
}

var fuzzImage []byte

// fuzzSegment returns a fresh in-memory copy of a segment with one MPMC ring.
func fuzzSegment(t *testing.T) *Segment {
	if fuzzImage == nil {
		dir, err := os.MkdirTemp("", "framebus-fuzz")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		s, err := Create(Config{Name: uniqueName(t), Dir: dir, Size: int64(minSegmentSize(4)) + 2*pageSize, MaxRings: 4}, 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.AllocRing(RingSpec{Kind: KindIngressMPMC, Capacity: 4096}); err != nil {
			t.Fatal(err)
		}
		fuzzImage = append([]byte(nil), s.mem...)
		s.Close()
		os.Remove(filepath.Join(dir, filepath.Base(s.path)))
	}
	s, err := segmentOver(append([]byte(nil), fuzzImage...), "fuzz")
	if err != nil {
		t.Fatal(err)
	}
	return s
}
