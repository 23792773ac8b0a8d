package wal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	bolt "go.etcd.io/bbolt"

	"github.com/framebus/framebus/schema"
)

// compressFrames returns n frames starting at seq 1 that mix what the
// tests' frameFor gives (repetitive), template DataFrames (very
// repetitive, kind data) and runs of random bytes (incompressible: every
// 5th block of 20 frames, so that whole segments of them occur).
func compressFrames(tb testing.TB, n int) []Frame {
	tb.Helper()
	tmpl, err := schema.NewDataTemplate("modbus-1", "plc-17", []schema.TemplateTag{{Tag: "temp", Type: schema.TypeF64}})
	if err != nil {
		tb.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	fs := make([]Frame, n)
	for i := range fs {
		seq := uint64(i + 1)
		switch {
		case (i/20)%5 == 4:
			d := make([]byte, 50+rng.IntN(2000))
			for j := range d {
				d[j] = byte(rng.Uint32())
			}
			fs[i] = Frame{Kind: 2, Data: d}
		case i%3 == 0:
			tmpl.SetSeq(seq)
			tmpl.SetF64(0, float64(i)*0.5)
			tmpl.SetTs(0, int64(i)*1000)
			fs[i] = Frame{Kind: uint16(schema.KindData), Data: bytes.Clone(tmpl.Bytes())}
		default:
			fs[i] = frameFor(seq)
		}
	}
	return fs
}

// appendFrames appends fs[from-1:to] (sequence numbers from..to) in calls
// of up to 50 frames.
func appendFrames(tb testing.TB, w *WAL, fs []Frame, from, to int) {
	tb.Helper()
	for i := from; i <= to; i += 50 {
		j := min(i+50, to+1)
		if _, err := w.Append(fs[i-1 : j-1]...); err != nil {
			tb.Fatal(err)
		}
	}
}

// checkAll iterates w from 1 and compares every frame with fs.
func checkAll(tb testing.TB, w *WAL, fs []Frame, last int) {
	tb.Helper()
	next := uint64(1)
	err := w.Iterate(1, func(seq uint64, f Frame) error {
		if seq != next {
			tb.Fatalf("seq %d, want %d", seq, next)
		}
		next++
		want := fs[seq-1]
		if f.Kind != want.Kind || !bytes.Equal(f.Data, want.Data) {
			tb.Fatalf("frame %d: kind %d, %d bytes; want kind %d, %d bytes", seq, f.Kind, len(f.Data), want.Kind, len(want.Data))
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	if next != uint64(last)+1 {
		tb.Fatalf("iterated to %d, want %d", next-1, last)
	}
}

// flagCounts opens the closed WAL in dir and counts its segments by flags.
func flagCounts(tb testing.TB, dir string) (raw, comp int, stored int64) {
	tb.Helper()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0, &bolt.Options{ReadOnly: true})
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSegments).ForEach(func(_, v []byte) error {
			stored += int64(len(v))
			switch v[offFlags] {
			case 0:
				raw++
			case flagS2:
				comp++
			default:
				tb.Errorf("flags %#x", v[offFlags])
			}
			return nil
		})
	})
	return raw, comp, stored
}

func TestCompressRoundTrip(t *testing.T) {
	const n = 3000
	fs := compressFrames(t, n)
	dir := t.TempDir()
	opts := Options{Dir: dir, Compress: true, NoSync: true, FlushInterval: time.Millisecond}
	w := openTest(t, opts)
	// Small commits, so that open segments are re-put compressed many times.
	for i := 1; i <= 1000; i += 7 {
		appendFrames(t, w, fs, i, min(i+6, 1000))
		if i%70 == 1 {
			flush(t, w)
		}
	}
	flush(t, w)
	checkAll(t, w, fs, 1000)
	st := w.Stats()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	raw, comp, stored := flagCounts(t, dir)
	t.Logf("compress on: %d compressed and %d raw segments, %d bytes stored", comp, raw, stored)
	if comp == 0 || raw == 0 {
		t.Fatalf("%d compressed and %d raw segments: want both (incompressible runs stay raw)", comp, raw)
	}
	if st.StoredBytes != stored {
		t.Fatalf("Stats.StoredBytes %d, stored values total %d", st.StoredBytes, stored)
	}

	// Reopen with compression off: reads the compressed segments, appends raw ones.
	opts.Compress = false
	w = openTest(t, opts)
	if s := w.Stats(); s.LastSeq != 1000 || s.StoredBytes != stored {
		t.Fatalf("reopened: %+v; want LastSeq 1000, StoredBytes %d", s, stored)
	}
	checkAll(t, w, fs, 1000)
	appendFrames(t, w, fs, 1001, 2000)
	flush(t, w)
	checkAll(t, w, fs, 2000)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	raw2, comp2, _ := flagCounts(t, dir)
	if comp2 != comp || raw2 <= raw {
		t.Fatalf("after compress off: %d compressed, %d raw; want %d compressed and more raw than %d", comp2, raw2, comp, raw)
	}

	// And on again, over a mixed file; Verify and ReadStats read it all.
	opts.Compress = true
	w = openTest(t, opts)
	checkAll(t, w, fs, 2000)
	appendFrames(t, w, fs, 2001, n)
	flush(t, w)
	checkAll(t, w, fs, n)
	st = w.Stats()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(dir)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	var dataBytes int64
	kinds := map[string]uint64{}
	for _, f := range fs {
		dataBytes += int64(len(f.Data))
		kinds[schema.Kind(f.Kind).String()]++
	}
	if rep.Frames != n || rep.Bytes != dataBytes || rep.StoredBytes != st.StoredBytes || rep.FirstSeq != 1 || rep.LastSeq != n {
		t.Fatalf("Verify report %+v; want %d frames, %d bytes, %d stored", rep, n, dataBytes, st.StoredBytes)
	}
	fst, err := ReadStats(dir)
	if err != nil {
		t.Fatalf("ReadStats: %v", err)
	}
	if fst.Frames != n || fst.Bytes != dataBytes || fst.FirstSeq != 1 || fst.LastSeq != n {
		t.Fatalf("ReadStats %+v; want %d frames, %d bytes", fst, n, dataBytes)
	}
	for k, c := range kinds {
		if fst.Kinds[k] != c {
			t.Fatalf("ReadStats kinds %v, want %v", fst.Kinds, kinds)
		}
	}
	if p := fst.Producers["modbus-1"]; p.Frames < n/4 {
		t.Fatalf("ReadStats producers %v: want the template frames under modbus-1", fst.Producers)
	}
}

// TestCompressSmaller checks that compression shrinks repetitive frames
// (the point of it) and that the accounting follows the stored lengths.
func TestCompressSmaller(t *testing.T) {
	tmpl, err := schema.NewDataTemplate("modbus-1", "plc-17", []schema.TemplateTag{{Tag: "temp", Type: schema.TypeF64}})
	if err != nil {
		t.Fatal(err)
	}
	stored := map[bool]int64{}
	for _, c := range []bool{false, true} {
		w := openTest(t, Options{Compress: c, NoSync: true})
		for i := range 5000 {
			tmpl.SetSeq(uint64(i))
			tmpl.SetF64(0, float64(i))
			tmpl.SetTs(0, int64(i))
			if _, err := w.Append(Frame{Kind: 1, Data: tmpl.Bytes()}); err != nil {
				t.Fatal(err)
			}
		}
		flush(t, w)
		stored[c] = w.Stats().StoredBytes
	}
	t.Logf("stored: %d raw, %d compressed (%.1fx)", stored[false], stored[true], float64(stored[false])/float64(stored[true]))
	if stored[true]*2 > stored[false] {
		t.Fatalf("compressed %d bytes, raw %d: want at least 2x smaller", stored[true], stored[false])
	}
}

// corruptSegment rewrites the value of the first segment (after skip of
// them) whose flags are flags, with mod applied to a copy.
func corruptSegment(tb testing.TB, dir string, flags byte, skip int, mod func(key uint64, v []byte) []byte) uint64 {
	tb.Helper()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	var key uint64
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSegments)
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if v[offFlags] != flags {
				continue
			}
			if skip > 0 {
				skip--
				continue
			}
			key, _ = keySeq(k)
			return b.Put(bytes.Clone(k), mod(key, bytes.Clone(v)))
		}
		return errors.New("no such segment")
	})
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

func TestCompressVerifyDetectsFlip(t *testing.T) {
	fs := compressFrames(t, 600)
	dir := t.TempDir()
	w := openTest(t, Options{Dir: dir, Compress: true, NoSync: true})
	appendFrames(t, w, fs, 1, 600)
	flush(t, w)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(dir); err != nil {
		t.Fatalf("Verify before damage: %v", err)
	}
	key := corruptSegment(t, dir, flagS2, 1, func(_ uint64, v []byte) []byte {
		v[segHeaderSize+(len(v)-segHeaderSize)/2] ^= 0x10
		return v
	})
	rep, err := Verify(dir)
	if !errors.Is(err, ErrCorrupt) || len(rep.Problems) != 1 {
		t.Fatalf("Verify after a flipped byte in compressed segment %d: %v, %q", key, err, rep.Problems)
	}
	if _, err := ReadStats(dir); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ReadStats: %v, want ErrCorrupt", err)
	}
	w = openTest(t, Options{Dir: dir, NoSync: true})
	if err := w.Iterate(1, func(uint64, Frame) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Iterate: %v, want ErrCorrupt", err)
	}
}

// A compressed value with a valid CRC but a bad body (forged, or written
// by a buggy build) is rejected, not decoded blindly.
func TestCompressBadBody(t *testing.T) {
	body := func(frames []byte) []byte { return s2.Encode(nil, frames) }
	entry := func(data string) []byte {
		e := make([]byte, entryHeaderSize, entryHeaderSize+len(data))
		le.PutUint32(e, uint32(len(data)))
		le.PutUint16(e[4:], 1)
		return append(e, data...)
	}
	huge := binary.AppendUvarint(nil, maxDecodedLen+1)
	huge = append(huge, 0, 0, 0, 0)
	cases := map[string]struct {
		count uint32
		body  []byte
	}{
		"ok":             {2, body(append(entry("hello"), entry("world")...))},
		"declared huge":  {1, huge},
		"declared short": {3, body(entry("x"))},
		"garbage":        {1, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
		"truncated":      {1, body(bytes.Repeat(entry("abcdefgh"), 10))[:12]},
		"count mismatch": {3, body(append(entry("hello"), entry("world")...))},
	}
	for name, c := range cases {
		v := append(make([]byte, segHeaderSize), c.body...)
		writeHeaderFlags(v, 7, c.count, 1, crc32c(v[segHeaderSize:]), flagS2)
		var scratch []byte
		n, data, err := checkSegmentBuf(7, v, &scratch)
		if name == "ok" {
			if err != nil || n != 2 || data != 10 {
				t.Fatalf("%s: %d frames, %d bytes, %v", name, n, data, err)
			}
			continue
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: %v, want ErrCorrupt", name, err)
		}
		if cap(scratch) > 1<<20 {
			t.Fatalf("%s: scratch grew to %d bytes", name, cap(scratch))
		}
	}
	// Unknown flag bits stay reserved.
	v := append(make([]byte, segHeaderSize), entry("x")...)
	writeHeaderFlags(v, 7, 1, 1, crc32c(v[segHeaderSize:]), 0x02)
	if _, _, err := checkSegment(7, v); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("flags 0x02: %v, want ErrCorrupt", err)
	}
}

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// TestPrecompress: while a commit is pending the writer compresses the
// sealed segments ahead of it (precompress), and the commit stores those
// values: every frame reads back, Verify passes, and the stored bytes are
// those of the compressed values. Incompressible segments stay raw.
func TestPrecompress(t *testing.T) {
	const n = 3000
	fs := compressFrames(t, n)
	dir := t.TempDir()
	w := openTest(t, Options{Dir: dir, Compress: true, NoSync: true, FlushInterval: time.Hour})
	appendFrames(t, w, fs, 1, n)
	// The commit is an hour away: the writer precompresses meanwhile.
	w.mu.Lock()
	sealed := uint64(len(w.mu.full))
	w.mu.Unlock()
	waitFor(t, "precompressed sealed segments", func() bool { return w.precompressed.Load() == sealed })
	pre := int(sealed)
	flush(t, w)
	checkAll(t, w, fs, n)
	st := w.Stats()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	raw, comp, stored := flagCounts(t, dir)
	t.Logf("%d sealed segments compressed ahead (some stay raw); stored %d compressed and %d raw segments, %d bytes", pre, comp, raw, stored)
	if pre < 3 || comp == 0 || raw == 0 {
		t.Fatalf("%d compressed ahead, %d compressed and %d raw stored: want compressed values from precompress, and raw ones", pre, comp, raw)
	}
	if st.StoredBytes != stored {
		t.Fatalf("Stats.StoredBytes %d, stored values total %d", st.StoredBytes, stored)
	}
	if rep, err := Verify(dir); err != nil || rep.Frames != n {
		t.Fatalf("Verify: %+v, %v", rep, err)
	}
}
