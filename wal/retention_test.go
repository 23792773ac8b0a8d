package wal

import (
	"errors"
	"os"
	"sync"
	"testing"
	"time"
)

// Retention keeps the stored segments within MaxBytes and the file within
// 1.1 × MaxBytes under continuous load.
//
// The file holds, besides the stored segments' leaf pages (which their
// footprint, bounded by MaxBytes, accounts for exactly):
//   - the pages of the last two commits: pages freed by a transaction
//     (retention, and the leaf and branch pages it rewrote) can only be
//     reused once no transaction can still see them, so the new segments
//     of one commit (≤ batchBytes = MaxBytes/64, plus one segment) and
//     about 5 rewritten pages live beside those it replaces;
//   - bbolt's growth step (allocSize: MaxBytes/64, at least 64 KiB): the
//     file is extended that far beyond the highest page in use;
//   - 2 meta pages, the bucket roots, the branch pages, the positions and
//     meta leaves: a few pages.
//
// So file ≤ MaxBytes + 2 × (batchBytes + SegmentBytes) + allocSize +
// 16 pages = MaxBytes + 464 KiB here. The test asserts that model and the
// issue's figure, 1.1 × MaxBytes (MaxBytes + 419 KiB), whichever is lower.
// (At the default 8 GiB the same overhead is about 33 MiB, 0.4 %.)
func TestRetentionBytes(t *testing.T) { testRetentionBytes(t, false) }

// TestRetentionBytesCompress is TestRetentionBytes with Compress on: the
// same bounds hold, counted on the stored (compressed) values.
func TestRetentionBytesCompress(t *testing.T) { testRetentionBytes(t, true) }

func testRetentionBytes(t *testing.T, compress bool) {
	const (
		maxBytes = 4 << 20
		total    = 40 << 20 // ten times the bound
	)
	overhead := int64(2*(maxBytes/64+DefaultSegmentBytes) + allocSize(maxBytes) + 16*pageSize)
	modelLimit := maxBytes + overhead
	fileLimit := min(int64(maxBytes*11/10), modelLimit)

	dir := t.TempDir()
	var mu sync.Mutex
	var maxFile, maxStored, maxFootprint int64
	var w *WAL
	opts := Options{
		Dir:           dir,
		MaxBytes:      maxBytes,
		FlushInterval: time.Millisecond,
		NoSync:        true,
		Compress:      compress,
		OnCommit: func(c Commit) {
			st := w.Stats()
			mu.Lock()
			maxFile = max(maxFile, st.FileBytes)
			maxStored = max(maxStored, st.StoredBytes)
			maxFootprint = max(maxFootprint, st.FootprintBytes)
			mu.Unlock()
		},
	}
	w = openTest(t, opts)

	var written int64
	seq := uint64(1)
	fs := make([]Frame, 0, 64)
	for written < total {
		fs = fs[:0]
		var n int64
		for range 64 {
			f := frameFor(seq + uint64(len(fs)))
			fs = append(fs, f)
			n += int64(len(f.Data))
		}
		if _, err := w.Append(fs...); errors.Is(err, ErrQueueFull) {
			flush(t, w)
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		seq += uint64(len(fs))
		written += n
	}
	flush(t, w)
	last := seq - 1

	st := w.Stats()
	mu.Lock()
	t.Logf("wrote %d MiB in %d commits: stored ≤ %d, footprint ≤ %d (MaxBytes %d), file ≤ %d = %.3f × MaxBytes (limit %d), %d segments deleted",
		written>>20, st.Commits, maxStored, maxFootprint, maxBytes, maxFile, float64(maxFile)/maxBytes, fileLimit, st.RetainedSegments)
	if maxStored > maxBytes || maxFootprint > maxBytes {
		t.Errorf("stored bytes reached %d, footprint %d: over MaxBytes %d", maxStored, maxFootprint, maxBytes)
	}
	if maxFile > fileLimit {
		t.Errorf("file reached %d bytes, over min(1.1 × MaxBytes, MaxBytes + %d) = %d", maxFile, overhead, fileLimit)
	}
	mu.Unlock()
	if fi, err := os.Stat(w.Path()); err != nil || fi.Size() > fileLimit {
		t.Fatalf("final file size %d (%v), limit %d", fi.Size(), err, fileLimit)
	}

	first := w.FirstSeq()
	if first <= 1 || st.RetainedSegments == 0 || st.RetainedFrames != first-1 {
		t.Fatalf("FirstSeq %d after %d retained segments (%d frames): want it moved past every deleted frame", first, st.RetainedSegments, st.RetainedFrames)
	}
	// Iterating from a deleted sequence number starts at FirstSeq.
	checkSeqs(t, seqs(t, w, 1), first, last)
	checkSeqs(t, seqs(t, w, first-1), first, last)

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(dir)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.FirstSeq != first || rep.LastSeq != last || rep.StoredBytes != st.StoredBytes {
		t.Fatalf("Verify report %+v; want FirstSeq %d LastSeq %d StoredBytes %d", rep, first, last, st.StoredBytes)
	}
	w = openTest(t, opts)
	if s := w.Stats(); s.StoredBytes != st.StoredBytes || s.Segments != st.Segments || s.FirstSeq != first || s.LastSeq != last {
		t.Fatalf("reopened: %+v; want stored %d in %d segments, %d to %d", s, st.StoredBytes, st.Segments, first, last)
	}
}

func TestRetentionMaxAge(t *testing.T) {
	const age = 100 * time.Millisecond
	w := openTest(t, Options{SegmentBytes: 1024, MaxAge: age, FlushInterval: time.Hour, NoSync: true})
	appendRange(t, w, 1, 100) // about 15 KiB: many segments
	flush(t, w)
	if w.FirstSeq() != 1 {
		t.Fatalf("FirstSeq %d before anything aged", w.FirstSeq())
	}
	time.Sleep(age + 50*time.Millisecond)
	appendRange(t, w, 101, 110)
	flush(t, w)
	st := w.Stats()
	// Every segment committed only in the first commit is gone; the one the
	// second commit extended (if any) and the new ones stay.
	if st.FirstSeq < 90 || st.RetainedSegments == 0 {
		t.Fatalf("after MaxAge: %+v; want the first commit's segments deleted", st)
	}
	checkSeqs(t, seqs(t, w, 1), st.FirstSeq, 110)

	// The newest segment is kept however old.
	time.Sleep(age + 50*time.Millisecond)
	w.SetPosition("x", 1)
	flush(t, w)
	if st := w.Stats(); st.Segments != 1 || w.LastSeq() != 110 {
		t.Fatalf("after everything aged: %+v; want the newest segment kept", st)
	}
	checkSeqs(t, seqs(t, w, 1), w.FirstSeq(), 110)
}
