package shm

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
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

var updateFuzzSeeds = flag.Bool("update-fuzz-seeds", false, "rewrite testdata/fuzz/*/seed-*")

// hdr builds one record header as bytes.
func hdr(length int32, typ, flags uint16) []byte {
	return binary.LittleEndian.AppendUint64(nil, header(length, typ, flags))
}

// ringSeeds are the seed inputs of FuzzRingConsumer: head, tail and the
// bytes repeated over the data area.
func ringSeeds() map[string]string {
	rec := func(n int, typ uint16) []byte {
		b := hdr(int32(RecordHeaderSize+n), typ, 1)
		b = append(b, make([]byte, int(align8(uint64(RecordHeaderSize+n)))-RecordHeaderSize)...)
		return b
	}
	cat := func(parts ...[]byte) []byte {
		var out []byte
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	seed := func(head, tail uint64, data []byte) string {
		return fmt.Sprintf("go test fuzz v1\nuint64(%d)\nuint64(%d)\n[]byte(%q)\n", head, tail, data)
	}
	return map[string]string{
		"empty":             seed(0, 0, nil),
		"records":           seed(0, 4096, cat(rec(16, 7), rec(3, 7), rec(0, 2), rec(100, 7))),
		"padding":           seed(0, 4096, cat(rec(24, TypePadding), rec(8, 7))),
		"claimed":           seed(0, 4096, cat(hdr(-32, 7, 2), make([]byte, 24), rec(8, 7))),
		"unmarked-claim":    seed(0, 4096, cat(make([]byte, 32), rec(8, 7))),
		"too-short":         seed(0, 4096, hdr(4, 7, 1)),
		"past-end":          seed(4088, 8184, cat(rec(8, 7), hdr(64, 7, 1))),
		"huge":              seed(0, 4096, hdr(0x7fffffff, 7, 1)),
		"odd-padding":       seed(0, 4096, hdr(13, TypePadding, 1)),
		"tail-behind-head":  seed(4096, 8, rec(8, 7)),
		"tail-far-ahead":    seed(0, 1<<40, rec(8, 7)),
		"misaligned-head":   seed(3, 4096, rec(8, 7)),
		"wrapped-positions": seed(1<<63, 1<<63+4096, cat(rec(200, 7), rec(1, 7))),
	}
}

// headerSeeds are the seed inputs of FuzzSegmentHeader: where to patch the
// image, how long the file is, and the patch.
func headerSeeds(img []byte) map[string]string {
	seed := func(at uint16, length uint32, patch []byte) string {
		return fmt.Sprintf("go test fuzz v1\nuint16(%d)\nuint32(%d)\n[]byte(%q)\n", at, length, patch)
	}
	le := binary.LittleEndian
	n := uint32(len(img))
	ring := le.Uint64(img[HeaderSize+dsOffset:])
	return map[string]string{
		"valid":           seed(0, n, nil),
		"bad-magic":       seed(0, n, []byte("FRAMEBUZ")),
		"bad-version":     seed(offVersion, n, le.AppendUint32(nil, 99)),
		"not-ready":       seed(offReady, n, []byte{0, 0, 0, 0}),
		"truncated":       seed(0, n/2, nil),
		"tiny":            seed(0, 100, nil),
		"size-mismatch":   seed(offSegmentSize, n, le.AppendUint64(nil, uint64(n)*2)),
		"many-slots":      seed(offDirSlots, n, le.AppendUint32(nil, 4096)),
		"data-offset":     seed(offDataOffset, n, le.AppendUint64(nil, 1<<40)),
		"slot-offset":     seed(HeaderSize+dsOffset, n, le.AppendUint64(nil, uint64(n)-4096)),
		"slot-capacity":   seed(HeaderSize+dsCapacity, n, le.AppendUint64(nil, 6000)),
		"slot-kind":       seed(HeaderSize+dsKind, n, le.AppendUint32(nil, 77)),
		"slot-notify":     seed(HeaderSize+dsNotify, n, le.AppendUint32(nil, 5)),
		"ring-records":    seed(uint16(ring+RingControlSize), n, append(hdr(24, 7, 1), make([]byte, 16)...)),
		"ring-bad-record": seed(uint16(ring+RingControlSize), n, hdr(9000, 7, 1)),
		"ring-positions":  seed(uint16(ring+rcTail), n, le.AppendUint64(nil, 1<<62)),
	}
}

// TestFuzzSeeds checks that the committed seed corpora are what ringSeeds
// and headerSeeds produce (rewrite them with -update-fuzz-seeds) and runs
// every seed through its target's checks.
func TestFuzzSeeds(t *testing.T) {
	img := imageSegment(t)
	for target, seeds := range map[string]map[string]string{
		"FuzzRingConsumer":  ringSeeds(),
		"FuzzSegmentHeader": headerSeeds(img),
	} {
		dir := filepath.Join("testdata", "fuzz", target)
		if *updateFuzzSeeds {
			old, _ := filepath.Glob(filepath.Join(dir, "seed-*"))
			for _, p := range old {
				os.Remove(p)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for name, body := range seeds {
				if err := os.WriteFile(filepath.Join(dir, "seed-"+name), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		for name, body := range seeds {
			got, err := os.ReadFile(filepath.Join(dir, "seed-"+name))
			if err != nil {
				t.Fatalf("%s seed %s: %v (run go test ./shm -run TestFuzzSeeds -update-fuzz-seeds)", target, name, err)
			}
			if string(got) != body {
				t.Fatalf("%s seed %s is stale (run go test ./shm -run TestFuzzSeeds -update-fuzz-seeds)", target, name)
			}
		}
	}
}
