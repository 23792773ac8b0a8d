package wal

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bloatedWAL returns the directory of a closed WAL whose file is far
// larger than what it holds: frames 1…n written with the default
// retention, then 100 more with MaxBytes 64 KiB, which deletes all but
// the newest 64 segments of 1 KiB. It has two positions and two cursors.
func bloatedWAL(tb testing.TB, n uint64) string {
	tb.Helper()
	dir := writeWAL(tb, n) // frames 1…n, position slot0/gen1
	w, err := Open(Options{Dir: dir, SegmentBytes: 1024, MaxBytes: 64 << 10, FlushInterval: time.Hour, NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	if err := w.SetCursor("historian", n); err != nil {
		tb.Fatal(err)
	}
	appendRange(tb, w, n+1, n+100)
	w.SetPosition("slot1/gen4", n+100)
	flush(tb, w)
	if err := w.SetCursor("uplink", n+60); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return dir
}

func fileSize(tb testing.TB, path string) int64 {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Size()
}

// dirNames lists dir.
func dirNames(tb testing.TB, dir string) []string {
	tb.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// walState is everything a reader sees of a closed WAL: Verify's report,
// ReadStats, and, through Open, the positions, the cursors and the
// creation time.
type walState struct {
	Verify    Report
	Stats     FileStats
	Positions map[string]uint64
	Cursors   map[string]CursorInfo
	Created   int64
}

func readState(tb testing.TB, dir string) walState {
	tb.Helper()
	var s walState
	var err error
	if s.Verify, err = Verify(dir); err != nil {
		tb.Fatalf("Verify: %v", err)
	}
	if s.Stats, err = ReadStats(dir); err != nil {
		tb.Fatalf("ReadStats: %v", err)
	}
	w, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	s.Positions, s.Cursors, s.Created = w.Positions(), w.Cursors(), w.Created()
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return s
}

func TestCompactShrinks(t *testing.T) {
	const n = 20000
	dir := bloatedWAL(t, n)
	path := filepath.Join(dir, FileName)
	before := readState(t, dir)
	if before.Verify.FirstSeq <= 1 || before.Verify.LastSeq != n+100 || len(before.Cursors) != 2 || len(before.Positions) != 2 {
		t.Fatalf("the test WAL is not what the test needs: %+v", before)
	}
	sizeBefore := fileSize(t, path)

	var phases []string
	rep, err := Compact(dir, CompactOptions{Progress: func(p CompactProgress) {
		if p.Done < 0 || p.Total < 0 || (p.Total > 0 && p.Done > p.Total) || (p.Total == 0 && p.Done != 0) {
			t.Errorf("progress %+v", p)
		}
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
	}})
	if err != nil {
		t.Fatalf("Compact: %v", err)
	}
	sizeAfter := fileSize(t, path)
	t.Logf("%d → %d bytes; %+v", sizeBefore, sizeAfter, rep)
	if rep.BeforeBytes != sizeBefore || rep.AfterBytes != sizeAfter || rep.Backup != "" {
		t.Errorf("report %+v; the file had %d bytes, has %d", rep, sizeBefore, sizeAfter)
	}
	if sizeAfter*4 > sizeBefore {
		t.Errorf("the file went from %d to %d bytes: want less than a quarter", sizeBefore, sizeAfter)
	}
	if want := []string{CompactVerify, CompactCopy, CompactCheck}; !slices.Equal(phases, want) {
		t.Errorf("progress phases %q, want %q", phases, want)
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{FileName}) {
		t.Errorf("the directory holds %q, want only %s", names, FileName)
	}

	after := readState(t, dir)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("state changed:\nbefore %+v\nafter  %+v", before, after)
	}
	if !reflect.DeepEqual(rep.Verify, before.Verify) {
		t.Errorf("CompactReport.Verify %+v, want %+v", rep.Verify, before.Verify)
	}

	// The compacted WAL reads every frame and continues the sequence.
	w := openTest(t, Options{Dir: dir, NoSync: true})
	checkSeqs(t, seqs(t, w, 0), before.Verify.FirstSeq, n+100)
	last, err := w.Append(frameFor(n + 101))
	if err != nil || last != n+101 {
		t.Fatalf("Append after compaction: seq %d, %v; want %d", last, err, n+101)
	}
}

func TestCompactKeepBackup(t *testing.T) {
	dir := bloatedWAL(t, 5000)
	path := filepath.Join(dir, FileName)
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Compact(dir, CompactOptions{KeepBackup: true})
	if err != nil {
		t.Fatalf("Compact: %v", err)
	}
	if filepath.Dir(rep.Backup) != dir || !strings.HasPrefix(filepath.Base(rep.Backup), FileName+".bak-") {
		t.Fatalf("backup %q, want %s/%s.bak-TIME", rep.Backup, dir, FileName)
	}
	bak, err := os.ReadFile(rep.Backup)
	if err != nil || !bytes.Equal(bak, old) {
		t.Fatalf("the backup (%v) is not the old file", err)
	}
	if names := dirNames(t, dir); len(names) != 2 {
		t.Errorf("the directory holds %q, want the WAL and its backup", names)
	}
	// A second run keeps a second backup.
	rep2, err := Compact(dir, CompactOptions{KeepBackup: true})
	if err != nil || rep2.Backup == rep.Backup || rep2.Backup == "" {
		t.Fatalf("second Compact: backup %q (first %q), %v", rep2.Backup, rep.Backup, err)
	}
	if _, err := Verify(dir); err != nil {
		t.Fatal(err)
	}
}

// unchanged fails the test unless dir holds only the WAL file, with the
// bytes old.
func unchanged(tb testing.TB, dir string, old []byte) {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil || !bytes.Equal(b, old) {
		tb.Fatalf("the WAL file changed (%v)", err)
	}
	if names := dirNames(tb, dir); !slices.Equal(names, []string{FileName}) {
		tb.Fatalf("the directory holds %q, want only %s", names, FileName)
	}
}

func TestCompactRefusesDamaged(t *testing.T) {
	dir := writeWAL(t, 500)
	key := segmentKeys(t, dir)[3]
	flipSegmentByte(t, dir, key)
	old := readFile(t, dir)
	_, err := Compact(dir, CompactOptions{})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "framebus wal recover") || !strings.Contains(err.Error(), fmt.Sprintf("segment %d", key)) {
		t.Fatalf("Compact of a damaged WAL = %v, want ErrCorrupt naming segment %d and pointing to framebus wal recover", err, key)
	}
	unchanged(t, dir, old)

	// A file whose structure is damaged: Verify reads it without bbolt.
	patch(t, dir, func(b []byte) []byte { return b[:len(b)/2] })
	old = readFile(t, dir)
	if _, err := Compact(dir, CompactOptions{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Compact of a truncated WAL = %v, want ErrCorrupt", err)
	}
	unchanged(t, dir, old)
}

func TestCompactRefusesLocked(t *testing.T) {
	dir := writeWAL(t, 100)
	old := readFile(t, dir)
	w := openTest(t, Options{Dir: dir, NoSync: true})
	_, err := Compact(dir, CompactOptions{LockTimeout: 50 * time.Millisecond})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("Compact of an open WAL = %v, want ErrLocked telling to stop the sidecar", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	unchanged(t, dir, old)
}

func TestCompactNoSpace(t *testing.T) {
	dir := bloatedWAL(t, 2000)
	old := readFile(t, dir)
	defer func(f func(string) (int64, error)) { freeSpace = f }(freeSpace)
	freeSpace = func(string) (int64, error) { return 10 << 10, nil }
	_, err := Compact(dir, CompactOptions{})
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "needs about") || !strings.Contains(err.Error(), "10.0 KiB (10240 bytes) available") {
		t.Fatalf("Compact without room = %v, want ErrNoSpace saying how much is needed", err)
	}
	unchanged(t, dir, old)
}

func TestCompactErrors(t *testing.T) {
	if _, err := Compact(t.TempDir(), CompactOptions{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Compact of an empty directory = %v, want ErrNotFound", err)
	}
}

func TestIterateFile(t *testing.T) {
	dir := writeWAL(t, 500)
	read := func(o IterateOptions) (got []uint64, done, total uint64) {
		t.Helper()
		o.Progress = func(d, n uint64) {
			if d > n || d < done {
				t.Errorf("progress %d of %d after %d", d, n, done)
			}
			done, total = d, n
		}
		err := IterateFile(dir, o, func(seq uint64, f Frame) error {
			checkFrame(t, seq, f)
			got = append(got, seq)
			return nil
		})
		if err != nil {
			t.Fatalf("IterateFile(%+v): %v", o, err)
		}
		return got, done, total
	}
	for _, tc := range []struct {
		from, to, first, last uint64
	}{
		{0, 0, 1, 500},
		{1, 500, 1, 500},
		{100, 200, 100, 200},
		{450, 0, 450, 500},
		{0, 7, 1, 7},
		{300, 300, 300, 300},
		{200, 100, 1, 0},
		{501, 0, 1, 0},
	} {
		got, done, total := read(IterateOptions{From: tc.from, To: tc.to})
		checkSeqs(t, got, tc.first, tc.last)
		if n := uint64(len(got)); done != n || total != n {
			t.Errorf("from %d to %d: progress %d of %d at the end, want %d of %d", tc.from, tc.to, done, total, n, n)
		}
	}

	// fn's error comes back as it is.
	stop := errors.New("stop")
	var n int
	err := IterateFile(dir, IterateOptions{}, func(uint64, Frame) error {
		if n++; n == 10 {
			return stop
		}
		return nil
	})
	if err != stop || n != 10 {
		t.Fatalf("IterateFile stopped by fn: %v after %d frames", err, n)
	}

	// Locked while a WAL has it open.
	w := openTest(t, Options{Dir: dir, NoSync: true})
	if err := IterateFile(dir, IterateOptions{}, func(uint64, Frame) error { return nil }); !errors.Is(err, ErrLocked) {
		t.Fatalf("IterateFile of an open WAL = %v, want ErrLocked", err)
	}
	w.Close()

	// A damaged segment: every frame before it, then ErrCorrupt.
	key := segmentKeys(t, dir)[5]
	tamper(t, dir, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSegments)
		var k [8]byte
		putKey(k[:], key)
		v := bytes.Clone(b.Get(k[:]))
		v[len(v)-1] ^= 0x01
		return b.Put(k[:], v)
	})
	var got []uint64
	err = IterateFile(dir, IterateOptions{}, func(seq uint64, f Frame) error {
		got = append(got, seq)
		return nil
	})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("IterateFile over a damaged segment = %v, want ErrCorrupt", err)
	}
	checkSeqs(t, got, 1, key-1)
}

// A sidecar that commits between Compact's Verify and its lock makes it
// stop: it would otherwise copy frames it had not verified.
func TestCompactRefusesChangedWAL(t *testing.T) {
	dir := writeWAL(t, 300)
	defer func() { compactAfterVerify = nil }()
	compactAfterVerify = func() {
		w, err := Open(Options{Dir: dir, NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		appendRange(t, w, 301, 310)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	_, err := Compact(dir, CompactOptions{})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "was written") {
		t.Fatalf("Compact of a WAL written meanwhile = %v, want ErrLocked saying it was written", err)
	}
	compactAfterVerify = nil
	st, err := ReadStats(dir)
	if err != nil || st.LastSeq != 310 {
		t.Fatalf("after the refusal: last seq %d, %v; want the sidecar's 310", st.LastSeq, err)
	}
	if names := dirNames(t, dir); !slices.Equal(names, []string{FileName}) {
		t.Fatalf("the directory holds %q, want only %s", names, FileName)
	}
}

// compareDBs finds a difference in any bucket, not only the segments.
func TestCompareDBs(t *testing.T) {
	open := func(path string, fill func(tx *bolt.Tx) error) *bolt.DB {
		db, err := bolt.Open(path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		if err := db.Update(fill); err != nil {
			t.Fatal(err)
		}
		return db
	}
	base := func(tx *bolt.Tx) error {
		for _, name := range []string{"cursors", "meta", "segments"} {
			b, err := tx.CreateBucket([]byte(name))
			if err != nil {
				return err
			}
			if err := b.Put([]byte("k1"), []byte("v1")); err != nil {
				return err
			}
		}
		return nil
	}
	dir := t.TempDir()
	a := open(filepath.Join(dir, "a"), base)
	noop := func(string, int64, int64) {}
	for i, tc := range []struct {
		change func(tx *bolt.Tx) error
		want   string
	}{
		{func(*bolt.Tx) error { return nil }, ""},
		{func(tx *bolt.Tx) error { return tx.Bucket([]byte("cursors")).Put([]byte("k1"), []byte("v2")) }, `bucket "cursors": key 6b31: the value differs`},
		{func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Put([]byte("k2"), nil) }, `bucket "meta"`},
		{func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Delete([]byte("k1")) }, `bucket "meta"`},
		{func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte("cursors")) }, `bucket "meta" where the old one has "cursors"`},
		{func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("zzz")); return err }, `bucket "zzz"`},
		{func(tx *bolt.Tx) error { return tx.Bucket([]byte("segments")).SetSequence(5) }, `bucket "segments": sequence 5`},
		{func(tx *bolt.Tx) error {
			_, err := tx.Bucket([]byte("segments")).CreateBucket([]byte("k0"))
			return err
		}, `bucket "segments"`},
	} {
		b := open(filepath.Join(dir, fmt.Sprint(i)), func(tx *bolt.Tx) error {
			if err := base(tx); err != nil {
				return err
			}
			return tc.change(tx)
		})
		err := compareDBs(a, b, 1<<20, noop)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("case %d: %v, want %q", i, err, tc.want)
		}
	}
}
