package wal

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/framebus/framebus/schema"
)

// writeWAL creates a closed WAL in a new directory with frames 1…n of
// frameFor, in 1 KiB segments, and one position.
func writeWAL(tb testing.TB, n uint64) string {
	tb.Helper()
	dir := tb.TempDir()
	w, err := Open(Options{Dir: dir, SegmentBytes: 1024, FlushInterval: time.Hour, NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	appendRange(tb, w, 1, n)
	w.SetPosition("slot0/gen1", n)
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// segmentKeys returns the keys of the stored segments.
func segmentKeys(tb testing.TB, dir string) []uint64 {
	tb.Helper()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0, &bolt.Options{ReadOnly: true})
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	var keys []uint64
	_ = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSegments).ForEach(func(k, _ []byte) error {
			keys = append(keys, binary.BigEndian.Uint64(k))
			return nil
		})
	})
	return keys
}

// tamper runs fn in a bbolt update of the WAL file in dir.
func tamper(tb testing.TB, dir string, fn func(tx *bolt.Tx) error) {
	tb.Helper()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0o640, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		tb.Fatal(err)
	}
}

// flipSegmentByte flips a bit in the middle of the stored value of the
// segment whose key is key.
func flipSegmentByte(tb testing.TB, dir string, key uint64) {
	tb.Helper()
	tamper(tb, dir, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSegments)
		var k [8]byte
		putKey(k[:], key)
		v := bytes.Clone(b.Get(k[:]))
		v[len(v)/2] ^= 0x10
		return b.Put(k[:], v)
	})
}

// wantProblem checks that Verify fails with ErrCorrupt and reports a
// problem containing every one of parts.
func wantProblem(tb testing.TB, dir string, parts ...string) Report {
	tb.Helper()
	rep, err := Verify(dir)
	if !errors.Is(err, ErrCorrupt) {
		tb.Fatalf("Verify = %v, want ErrCorrupt", err)
	}
	for _, p := range rep.Problems {
		ok := true
		for _, part := range parts {
			ok = ok && strings.Contains(p, part)
		}
		if ok {
			return rep
		}
	}
	tb.Fatalf("Verify problems %q: none contains %q", rep.Problems, parts)
	return rep
}

func TestVerifyClean(t *testing.T) {
	dir := writeWAL(t, 500)
	rep, err := Verify(dir)
	if err != nil {
		t.Fatalf("Verify: %v (%q)", err, rep.Problems)
	}
	var data int64
	for seq := uint64(1); seq <= 500; seq++ {
		data += int64(len(frameFor(seq).Data))
	}
	if rep.FirstSeq != 1 || rep.LastSeq != 500 || rep.Frames != 500 || rep.Bytes != data ||
		rep.Positions != 1 || rep.Segments != int64(len(segmentKeys(t, dir))) || len(rep.Problems) != 0 {
		t.Fatalf("report %+v, want 500 frames of %d bytes", rep, data)
	}
}

func TestVerifyDetectsFlippedValueByte(t *testing.T) {
	dir := writeWAL(t, 500)
	key := segmentKeys(t, dir)[3]
	flipSegmentByte(t, dir, key)
	wantProblem(t, dir, fmt.Sprintf("segment %d:", key), "crc32c")

	// The running WAL refuses to hand out the damaged frames.
	w := openTest(t, Options{Dir: dir, NoSync: true})
	err := w.Iterate(1, func(uint64, Frame) error { return nil })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprint(key)) {
		t.Fatalf("Iterate over the damaged segment = %v, want ErrCorrupt naming segment %d", err, key)
	}
}

// Flip a byte of the file itself, where a known frame is stored.
func TestVerifyDetectsFlippedFileByte(t *testing.T) {
	dir := t.TempDir()
	w, err := Open(Options{Dir: dir, SegmentBytes: 1024, FlushInterval: time.Hour, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	appendRange(t, w, 1, 100)
	marker := []byte("\x00MARKER-FRAME-1234567890\x00")
	seq, err := w.Append(Frame{Kind: 1, Data: marker})
	if err != nil {
		t.Fatal(err)
	}
	appendRange(t, w, seq+1, seq+100)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var key uint64 // the segment holding the marker
	for _, k := range segmentKeys(t, dir) {
		if k <= seq {
			key = k
		}
	}

	path := filepath.Join(dir, FileName)
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Every copy: a page freed by a later commit may hold an older one.
	n := 0
	for i := bytes.Index(file, marker); i >= 0; {
		file[i+5] ^= 0x01
		n++
		j := bytes.Index(file[i+1:], marker)
		if j < 0 {
			break
		}
		i += 1 + j
	}
	if n == 0 {
		t.Fatal("marker not found in the file")
	}
	if err := os.WriteFile(path, file, 0o640); err != nil {
		t.Fatal(err)
	}
	wantProblem(t, dir, fmt.Sprintf("segment %d:", key), "crc32c")
}

func TestVerifyDetectsGapAndBadPosition(t *testing.T) {
	dir := writeWAL(t, 500)
	keys := segmentKeys(t, dir)
	tamper(t, dir, func(tx *bolt.Tx) error {
		var k [8]byte
		putKey(k[:], keys[5])
		if err := tx.Bucket(bucketSegments).Delete(k[:]); err != nil {
			return err
		}
		return tx.Bucket(bucketPositions).Put([]byte("slot9/gen1"), []byte{1, 2, 3})
	})
	wantProblem(t, dir, fmt.Sprintf("segment %d: sequence gap, frames %d to %d are missing", keys[6], keys[5], keys[6]-1))
	wantProblem(t, dir, `position "slot9/gen1"`, "3 bytes")

	// Deleting from the front is what retention does: no problem.
	dir = writeWAL(t, 500)
	keys = segmentKeys(t, dir)
	tamper(t, dir, func(tx *bolt.Tx) error {
		var k [8]byte
		for _, key := range keys[:4] {
			putKey(k[:], key)
			if err := tx.Bucket(bucketSegments).Delete(k[:]); err != nil {
				return err
			}
		}
		return nil
	})
	rep, err := Verify(dir)
	if err != nil || rep.FirstSeq != keys[4] || rep.LastSeq != 500 {
		t.Fatalf("Verify after front deletion: %+v, %v; want frames %d to 500", rep, err, keys[4])
	}
}

func TestOpenRejectsCorruptLastSegment(t *testing.T) {
	dir := writeWAL(t, 100)
	keys := segmentKeys(t, dir)
	last := keys[len(keys)-1]
	tamper(t, dir, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSegments)
		var k [8]byte
		putKey(k[:], last)
		v := bytes.Clone(b.Get(k[:]))
		v[len(v)-1] ^= 0xff
		return b.Put(k[:], v)
	})
	_, err := Open(Options{Dir: dir})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprint(last)) {
		t.Fatalf("Open = %v, want ErrCorrupt naming segment %d", err, last)
	}
}

func TestVerifyErrors(t *testing.T) {
	if _, err := Verify(t.TempDir()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Verify of an empty directory = %v, want ErrNotFound", err)
	}
	if _, err := ReadStats(t.TempDir()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadStats of an empty directory = %v, want ErrNotFound", err)
	}
	dir := t.TempDir()
	openTest(t, Options{Dir: dir, NoSync: true})
	if _, err := Verify(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("Verify of an open WAL = %v, want ErrLocked", err)
	}
}

func TestReadStats(t *testing.T) {
	dir := t.TempDir()
	w := openTest(t, Options{Dir: dir, NoSync: true})
	var e schema.Encoder
	data := func(producer string, seq uint64) Frame {
		buf := e.EncodeData(&schema.DataFrame{Producer: producer, Device: "d", Seq: seq,
			Points: []schema.Point{{Tag: "t", Value: schema.F64(1.5)}}})
		return Frame{Kind: uint16(schema.KindData), Data: bytes.Clone(buf)}
	}
	var frames []Frame
	for i := range 3 {
		frames = append(frames, data("p1", uint64(i)))
	}
	frames = append(frames, data("p2", 1), data("p2", 2))
	frames = append(frames,
		Frame{Kind: uint16(schema.KindCommand), Data: bytes.Clone(e.EncodeCommand(&schema.Command{ID: 1, Target: "p1"}))},
		Frame{Kind: uint16(schema.KindAck), Data: bytes.Clone(e.EncodeCommandAck(&schema.CommandAck{ID: 1}))},
		Frame{Kind: uint16(schema.KindData), Data: []byte("not a flatbuffer")},
	)
	var bytesTotal int64
	for _, f := range frames {
		bytesTotal += int64(len(f.Data))
	}
	if _, err := w.Append(frames...); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	st, err := ReadStats(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := FileStats{
		Frames: 8, Bytes: bytesTotal, FirstSeq: 1, LastSeq: 8,
		Producers: map[string]ProducerStats{"p1": {Frames: 3}, "p2": {Frames: 2}},
		Kinds:     map[string]uint64{"data": 6, "command": 1, "ack": 1},
		Invalid:   1,
		Cursors:   map[string]CursorInfo{},
	}
	if !reflect.DeepEqual(st, want) {
		t.Fatalf("ReadStats = %+v\nwant %+v", st, want)
	}
	js, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(js, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"frames", "bytes", "first_seq", "last_seq", "producers"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON %s lacks %q", js, k)
		}
	}
	if !strings.Contains(string(js), `"producers":{"p1":{"frames":3},"p2":{"frames":2}}`) {
		t.Errorf("JSON producers: %s", js)
	}

	// An empty WAL has empty maps, not nulls.
	empty := t.TempDir()
	ew := openTest(t, Options{Dir: empty, NoSync: true})
	ew.Close()
	st, err = ReadStats(empty)
	js, _ = json.Marshal(st)
	if err != nil || !strings.Contains(string(js), `"producers":{}`) {
		t.Fatalf("empty WAL: %s, %v", js, err)
	}
}

// Damaged segment values are rejected with ErrCorrupt, never a panic or a
// frame read out of bounds.
func TestSegmentDecodeDamaged(t *testing.T) {
	// A valid segment of a few frames.
	const key = 42
	v := make([]byte, segHeaderSize)
	var count uint32
	for i := range 5 {
		d := bytes.Repeat([]byte{byte(i)}, i*10)
		v = le.AppendUint32(v, uint32(len(d)))
		v = le.AppendUint16(v, uint16(i))
		v = append(v, d...)
		count++
	}
	body := func(v []byte) uint32 { return crc32.Checksum(v[segHeaderSize:], castagnoli) }
	writeHeader(v, key, count, 1, body(v))
	if n, _, err := checkSegment(key, v); err != nil || n != 5 {
		t.Fatalf("valid segment: %d frames, %v", n, err)
	}
	if _, _, err := checkSegment(key+1, v); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("segment under another key = %v, want ErrCorrupt", err)
	}

	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		d := bytes.Clone(v)
		switch i % 4 {
		case 0: // flip a bit
			d[rng.IntN(len(d))] ^= 1 << rng.IntN(8)
		case 1: // truncate
			d = d[:rng.IntN(len(d))]
		case 2: // garbage with a valid header and CRC: exercises the framing checks
			for j := segHeaderSize; j < len(d); j++ {
				if rng.IntN(8) == 0 {
					d[j] = byte(rng.Uint32())
				}
			}
			writeHeader(d, key, uint32(rng.IntN(8)), 1, body(d))
		case 3: // extra bytes with a valid CRC
			d = append(d, make([]byte, 1+rng.IntN(10))...)
			writeHeader(d, key, count, 1, body(d))
		}
		if bytes.Equal(d, v) {
			continue
		}
		n, _, err := checkSegment(key, d)
		if i%4 == 2 && err == nil {
			continue // random framing can happen to be valid
		}
		if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
			t.Fatalf("case %d: damaged segment accepted (%d frames, %v)", i, n, err)
		}
	}
}

func TestSegmentPacking(t *testing.T) {
	// Two default segments and their bbolt overhead fill a page exactly.
	limit := DefaultSegmentBytes - bboltValueOverhead
	if got := 16 + 2*(16+8+limit); got != pageSize {
		t.Fatalf("two full segments take %d bytes of a %d-byte page", got, pageSize)
	}
	// And the writer fills them: every sealed segment is within one frame
	// of the limit.
	dir := t.TempDir()
	w := openTest(t, Options{Dir: dir, FlushInterval: time.Hour, NoSync: true})
	appendRange(t, w, 1, 3000)
	w.Close()
	db, err := bolt.Open(filepath.Join(dir, FileName), 0, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var sizes []int
	_ = db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSegments).ForEach(func(k, v []byte) error {
			sizes = append(sizes, len(v))
			return nil
		})
	})
	var sum int
	for i, n := range sizes[:len(sizes)-1] {
		if n > limit {
			t.Fatalf("segment %d of %d has %d bytes, over the limit %d", i, len(sizes), n, limit)
		}
		sum += n
	}
	if avg := sum / (len(sizes) - 1); avg < limit*95/100 {
		t.Fatalf("sealed segments average %d bytes, want at least 95%% of %d", avg, limit)
	}
}

// TestVerifyProgress: VerifyProgress reports the same as Verify, and its
// progress rises to the span of the sequence numbers stored.
func TestVerifyProgress(t *testing.T) {
	dir := writeWAL(t, 3000)
	want, err := Verify(dir)
	if err != nil {
		t.Fatal(err)
	}
	var calls int
	var last, lastTotal uint64
	got, err := VerifyProgress(dir, func(done, total uint64) {
		if done < last || done > total {
			t.Errorf("progress %d of %d after %d", done, total, last)
		}
		calls++
		last, lastTotal = done, total
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("VerifyProgress %+v, Verify %+v", got, want)
	}
	if span := want.LastSeq - want.FirstSeq + 1; calls < 2 || last != span || lastTotal != span {
		t.Fatalf("%d progress calls, the last %d of %d; want at least 2, ending at %d of %d", calls, last, lastTotal, span, span)
	}
}
