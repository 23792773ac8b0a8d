package wal

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"golang.org/x/sys/unix"
)

// Offline tools that read or rewrite the whole file: IterateFile (what
// `framebus wal dump` reads) and Compact (`framebus wal compact`).
//
// # Why compact
//
// bbolt never gives pages back to the filesystem: when retention deletes
// segments, their pages go to bbolt's freelist and are reused by later
// commits, but the file keeps its high-water size. A WAL that once held
// more than it does now (MaxBytes was lowered, MaxAge deleted a backlog, a
// stalled cursor under CursorRetain let it grow and then acked) stays that
// large. Compact writes the live contents into a new file with bbolt's own
// bolt.Compact, which copies every bucket generically (segments,
// positions, cursors, meta and whatever a later format adds), so nothing
// can be forgotten, and puts it in place of the old one.
//
// # Safety
//
// Compact works offline and never changes the old file: it refuses a file
// that Verify finds damaged (Recover is for that), and one that a sidecar
// holds open. It keeps the file's exclusive lock from before it reads the
// live contents until the new file has replaced the old one, so that no
// sidecar can commit into the old file meanwhile; the transaction id that
// Verify saw must still be the file's when the lock is taken. The new
// file is written with fsync at the end, checked against the old one
// (every bucket, key and value equal) and with Verify (its report equal to
// the old file's), then renamed over the old one (atomic) and the
// directory synced: a crash at any point leaves the old file or the new
// one as framebus.wal, never a mix. A sidecar that tried to open the old
// file while Compact held its lock fails with ErrLocked after its
// LockTimeout.

// Progress phases of Compact (CompactProgress.Phase).
const (
	// CompactVerify: Verify reads the old file. No byte count.
	CompactVerify = "verify"
	// CompactCopy: bolt.Compact writes the new file. Done is the new
	// file's size, Total the expected one (the old file's pages in use).
	CompactCopy = "copy"
	// CompactCheck: the new file is compared with the old one (Done and
	// Total in bytes of the old file's pages in use, approximately),
	// then verified (Done and Total 0: no byte count).
	CompactCheck = "check"
)

// compactTxBytes is the default of CompactOptions.TxMaxBytes.
const compactTxBytes = 8 << 20

// ErrNoSpace means the filesystem of the WAL's directory has less free
// space than the new file needs (Compact says how much): free some space,
// or compact elsewhere.
var ErrNoSpace = errors.New("wal: not enough free disk space")

// CompactOptions configure Compact. The zero value is usable.
type CompactOptions struct {
	// KeepBackup keeps the old file as framebus.wal.bak-<UTC time> in the
	// same directory (a hard link made before the new file replaces it).
	// Zero (false): the old file is gone once the new one is in place.
	KeepBackup bool

	// LockTimeout is how long Compact waits for the file's lock (held by
	// a running sidecar, or another offline tool) before it fails with
	// ErrLocked. Zero means 1 s.
	LockTimeout time.Duration

	// TxMaxBytes bounds the key and value bytes bolt.Compact copies per
	// transaction of the new file, and so the memory it takes (bbolt keeps
	// a transaction's pages in memory until it commits). Zero means 8 MiB.
	TxMaxBytes int64

	// Progress, if set, is called at the start of each phase (Done 0) and
	// then every 100 ms or so while it runs, never concurrently (during
	// the copy it is called from a goroutine that Compact starts and waits
	// for). Zero (nil): no progress reports.
	Progress func(CompactProgress)
}

// CompactProgress is a progress report of Compact.
type CompactProgress struct {
	Phase       string // CompactVerify, CompactCopy or CompactCheck
	Done, Total int64  // bytes; Total 0 when unknown
}

// CompactReport says what Compact did.
type CompactReport struct {
	// BeforeBytes and AfterBytes are the sizes of the file before and
	// after compaction.
	BeforeBytes, AfterBytes int64
	// Backup is where the old file is kept (KeepBackup), "" otherwise.
	Backup string
	// Verify is Verify's report of the old file, equal to the new one's.
	Verify Report
}

// compactAfterVerify, if set (by the tests), runs between Compact's
// Verify of the old file and its taking the file's lock.
var compactAfterVerify func()

// freeSpace returns the bytes available to an unprivileged user on the
// filesystem of dir (statfs: f_bavail × f_bsize); a variable for the
// tests.
var freeSpace = func(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// Compact rewrites the WAL file in dir offline with only its live
// contents, so that the file shrinks to what it holds; see the comment at
// the top of this file. It fails with ErrLocked while a sidecar (or
// another tool) holds the file, with an error wrapping ErrCorrupt if
// Verify finds the file damaged (run Recover), with ErrNoSpace if the
// filesystem lacks room for the new file, and with ErrNotFound if dir has
// no WAL file. On any error the old file is left as it was.
func Compact(dir string, opts CompactOptions) (CompactReport, error) {
	var rep CompactReport
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	if opts.TxMaxBytes <= 0 {
		opts.TxMaxBytes = compactTxBytes
	}
	progress := func(phase string, done, total int64) {
		if opts.Progress != nil {
			opts.Progress(CompactProgress{Phase: phase, Done: done, Total: total})
		}
	}
	path := filepath.Join(dir, FileName)

	// The transaction Verify is about to read: the file must still be at
	// it once Compact holds the lock.
	txid, err := lastTxid(path, opts.LockTimeout)
	if err != nil {
		return rep, err
	}
	progress(CompactVerify, 0, 0)
	before, err := Verify(dir)
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			return rep, fmt.Errorf("%w; compact copies only a sound WAL: run `framebus wal recover` first (docs/wal-recovery.md)", err)
		}
		return rep, err
	}
	rep.Verify = before
	if compactAfterVerify != nil {
		compactAfterVerify()
	}

	src, err := bolt.Open(path, 0, &bolt.Options{
		Timeout:         opts.LockTimeout,
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
		PreLoadFreelist: true, // to count the pages in use
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			return openChecked(name, flag, perm, true, opts.LockTimeout, nil)
		},
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) || errors.Is(err, ErrLocked) {
			return rep, lockedErr(path, opts.LockTimeout)
		}
		return rep, fmt.Errorf("wal: compact: open %s: %w", path, err)
	}
	defer src.Close() // after the rename: the lock is held until then
	var live int64    // bytes of the pages in use
	err = src.View(func(tx *bolt.Tx) error {
		if uint64(tx.ID()) != txid {
			return fmt.Errorf("%w: %s was written (transaction %d, verified %d) while compact started: a sidecar ran on it; stop it and run compact again",
				ErrLocked, path, tx.ID(), txid)
		}
		live = tx.Size() - int64(src.Stats().FreePageN)*int64(src.Info().PageSize)
		return nil
	})
	if err != nil {
		return rep, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return rep, fmt.Errorf("wal: compact: %w", err)
	}
	rep.BeforeBytes = fi.Size()

	// The new file takes at most the pages in use, bbolt's growth step
	// and a few pages of its own.
	need := live + int64(allocSize(live)) + 8*int64(src.Info().PageSize)
	if avail, err := freeSpace(dir); err != nil {
		return rep, fmt.Errorf("wal: compact: free space in %s: %w", dir, err)
	} else if avail < need {
		return rep, fmt.Errorf("%w in %s: compact needs about %s for the new file (the WAL's %s in use), the filesystem has %s available: free %s there, or copy the WAL elsewhere and compact it there",
			ErrNoSpace, dir, sizeString(need), sizeString(live), sizeString(avail), sizeString(need-avail))
	}

	// The new file goes into a directory of its own next to the old file
	// (the same filesystem, so that the rename is atomic), named
	// framebus.wal there so that Verify can check it.
	tmpDir, err := os.MkdirTemp(dir, ".compact-")
	if err != nil {
		return rep, fmt.Errorf("wal: compact: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, FileName)
	if err := writeCompacted(src, tmp, live, fi, opts.TxMaxBytes, progress); err != nil {
		return rep, fmt.Errorf("wal: compact %s: %w; the WAL is unchanged", path, err)
	}
	progress(CompactCheck, 0, 0)
	after, err := Verify(tmpDir)
	if err != nil {
		return rep, fmt.Errorf("wal: compact %s: the new file fails verification: %w; the WAL is unchanged", path, err)
	}
	if diff := reportDiff(before, after); diff != "" {
		return rep, fmt.Errorf("wal: compact %s: the new file's report differs (%s); the WAL is unchanged", path, diff)
	}
	if fi, err := os.Stat(tmp); err == nil {
		rep.AfterBytes = fi.Size()
	}

	// Put it in place, under the lock.
	if opts.KeepBackup {
		bak, err := linkBackup(path)
		if err != nil {
			return rep, fmt.Errorf("wal: compact %s: keep a backup: %w; the WAL is unchanged", path, err)
		}
		rep.Backup = bak
	}
	if err := os.Rename(tmp, path); err != nil {
		if rep.Backup != "" {
			os.Remove(rep.Backup)
		}
		rep.Backup = ""
		return rep, fmt.Errorf("wal: compact %s: put the new file in place: %w; the WAL is unchanged", path, err)
	}
	if err := syncDir(dir); err != nil {
		return rep, fmt.Errorf("wal: compact %s: the new file is in place, but syncing the directory failed: %w", path, err)
	}
	return rep, nil
}

// writeCompacted writes the live contents of src into a new file at path
// with bolt.Compact, fsyncs it, gives it the mode and owner of the old
// file (old), and compares it with src.
func writeCompacted(src *bolt.DB, path string, live int64, old fs.FileInfo, txMax int64, progress func(string, int64, int64)) error {
	dst, err := bolt.Open(path, old.Mode().Perm(), &bolt.Options{
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
		PageSize:        src.Info().PageSize,
		InitialMmapSize: initialMmapSize(live),
		NoSync:          true, // one fsync at the end
	})
	if err != nil {
		return err
	}
	defer dst.Close()
	dst.AllocSize = allocSize(live)

	progress(CompactCopy, 0, live)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if fi, err := os.Stat(path); err == nil {
					progress(CompactCopy, min(fi.Size(), live), live)
				}
			}
		}
	})
	err = bolt.Compact(dst, src, txMax)
	close(stop)
	wg.Wait()
	if err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	progress(CompactCopy, live, live)
	if err := dst.Sync(); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	progress(CompactCheck, 0, live)
	if err := compareDBs(src, dst, live, progress); err != nil {
		return err
	}
	if err := dst.Close(); err != nil {
		return err
	}
	if err := os.Chmod(path, old.Mode().Perm()); err != nil { // bolt.Open's mode went through the umask
		return err
	}
	if st, ok := old.Sys().(*syscall.Stat_t); ok {
		if err := os.Lchown(path, int(st.Uid), int(st.Gid)); err != nil && (int(st.Uid) != os.Getuid() || !errors.Is(err, fs.ErrPermission)) {
			return fmt.Errorf("give the new file the old one's owner (uid %d, gid %d): %w: run compact as that user", st.Uid, st.Gid, err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync() // the mode and owner
	f.Close()
	return err
}

// compareDBs checks that b holds exactly what a holds: the same buckets,
// each with the same sequence and the same keys and values in the same
// order, nested buckets included. live is for the progress reports.
func compareDBs(a, b *bolt.DB, live int64, progress func(string, int64, int64)) error {
	return a.View(func(ta *bolt.Tx) error {
		return b.View(func(tb *bolt.Tx) error {
			var done int64
			last := time.Now()
			tick := func(n int) {
				done += int64(n)
				if time.Since(last) >= 100*time.Millisecond {
					last = time.Now()
					progress(CompactCheck, min(done, live), live)
				}
			}
			ca, cb := ta.Cursor(), tb.Cursor()
			ka, _ := ca.First()
			kb, _ := cb.First()
			for ; ka != nil || kb != nil; ka, kb = nextKey(ca), nextKey(cb) {
				if !bytes.Equal(ka, kb) {
					return fmt.Errorf("the new file has bucket %q where the old one has %q", kb, ka)
				}
				if err := compareBuckets(string(ka), ta.Bucket(ka), tb.Bucket(kb), tick); err != nil {
					return err
				}
			}
			return nil
		})
	})
}

func nextKey(c *bolt.Cursor) []byte { k, _ := c.Next(); return k }

// compareBuckets is compareDBs for one bucket, named name in messages.
func compareBuckets(name string, a, b *bolt.Bucket, tick func(int)) error {
	if a == nil || b == nil {
		return fmt.Errorf("bucket %q: not a bucket in one of the files", name)
	}
	if a.Sequence() != b.Sequence() {
		return fmt.Errorf("bucket %q: sequence %d, the old file has %d", name, b.Sequence(), a.Sequence())
	}
	ca, cb := a.Cursor(), b.Cursor()
	ka, va := ca.First()
	kb, vb := cb.First()
	for ka != nil || kb != nil {
		switch {
		case !bytes.Equal(ka, kb):
			return fmt.Errorf("bucket %q: the new file has key %x where the old one has %x", name, kb, ka)
		case (va == nil) != (vb == nil):
			return fmt.Errorf("bucket %q: key %x is a bucket in one file only", name, ka)
		case va == nil:
			if err := compareBuckets(name+"/"+string(ka), a.Bucket(ka), b.Bucket(kb), tick); err != nil {
				return err
			}
		case !bytes.Equal(va, vb):
			return fmt.Errorf("bucket %q: key %x: the value differs", name, ka)
		}
		tick(len(ka) + len(va))
		ka, va = ca.Next()
		kb, vb = cb.Next()
	}
	return nil
}

// reportDiff compares two Verify reports of the same contents; "" if they
// agree.
func reportDiff(a, b Report) string {
	type counts struct {
		Segments, StoredBytes, Bytes int64
		Frames, FirstSeq, LastSeq    uint64
		Positions, Cursors           int
		Lost                         uint64
	}
	ca := counts{a.Segments, a.StoredBytes, a.Bytes, a.Frames, a.FirstSeq, a.LastSeq, a.Positions, a.Cursors, a.Lost}
	cb := counts{b.Segments, b.StoredBytes, b.Bytes, b.Frames, b.FirstSeq, b.LastSeq, b.Positions, b.Cursors, b.Lost}
	if ca == cb {
		return ""
	}
	return fmt.Sprintf("old %+v, new %+v", ca, cb)
}

// lastTxid returns the id of the last transaction committed to the WAL
// file at path (the one bbolt would read), from its meta pages, under a
// shared lock. A file whose meta pages are both damaged gives 0: Verify
// then reports the damage.
func lastTxid(path string, timeout time.Duration) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, fmt.Errorf("%w: %s does not exist (is --wal-dir right?)", ErrNotFound, path)
		}
		return 0, fmt.Errorf("wal: %w", err)
	}
	defer f.Close()
	if err := lockFile(f, false, timeout); err != nil {
		if errors.Is(err, ErrLocked) {
			return 0, lockedErr(path, timeout)
		}
		return 0, err
	}
	defer faultsAsPanics()()
	bf, err := openBoltFile(f)
	if err != nil {
		return 0, err
	}
	defer bf.close()
	if bf.cur < 0 {
		return 0, nil
	}
	return bf.metas[bf.cur].txid, nil
}

// lockedErr is the error of an offline tool that found the WAL at path
// locked.
func lockedErr(path string, waited time.Duration) error {
	return fmt.Errorf("%w: %s is open in a running sidecar (waited %v); stop it first", ErrLocked, path, waited)
}

// linkBackup links the file at path to a new name beside it,
// framebus.wal.bak-<UTC time>, and returns that name.
func linkBackup(path string) (string, error) {
	base := path + ".bak-" + time.Now().UTC().Format("20060102T150405Z")
	bak := base
	for i := 2; ; i++ {
		err := os.Link(path, bak)
		if err == nil {
			return bak, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", err
		}
		bak = fmt.Sprintf("%s-%d", base, i)
	}
}

// syncDir fsyncs the directory dir, making a rename in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// sizeString formats n bytes for a message: "12.3 MiB (12897484 bytes)".
func sizeString(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB (%d bytes)", float64(n)/float64(div), "KMGTP"[exp], n)
}

// IterateOptions configure IterateFile. The zero value reads every frame.
type IterateOptions struct {
	// From and To bound the sequence numbers read, both included. Zero
	// From means the first frame stored, zero To the last one.
	From, To uint64
	// Progress, if set, is called every 256 segments or 10 ms of reading
	// and once at the end, on the goroutine of IterateFile, with how many
	// sequence numbers of the range have been passed and how many it
	// holds (the range clamped to the frames stored). Zero (nil): none.
	Progress func(done, total uint64)
}

// IterateFile calls fn for every frame of the WAL file in dir whose
// sequence number is in [opts.From, opts.To], in order, offline: it opens
// the file read-only and fails with ErrLocked while a sidecar has it open
// (a running WAL is read with WAL.Iterate, or a subscription). f.Data
// points into the file's memory map and is valid only during the call.
// fn's error stops the iteration and is returned as it is; a segment that
// fails its CRC32C or framing stops it with an error wrapping ErrCorrupt,
// after every frame before it. It holds one segment decoded at a time,
// whatever the file's size.
func IterateFile(dir string, opts IterateOptions, fn func(seq uint64, f Frame) error) error {
	db, err := openReadOnly(dir)
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		sb := tx.Bucket(bucketSegments)
		if sb == nil {
			return fmt.Errorf("%w: no segments bucket", ErrCorrupt)
		}
		c := sb.Cursor()
		fk, _ := c.First()
		lk, lv := c.Last()
		if fk == nil {
			return nil // empty
		}
		first, ok := keySeq(fk)
		if !ok {
			return fmt.Errorf("%w: segment key of %d bytes, want 8", ErrCorrupt, len(fk))
		}
		last, ok := keySeq(lk)
		if !ok {
			return fmt.Errorf("%w: segment key of %d bytes, want 8", ErrCorrupt, len(lk))
		}
		h, err := parseSegment(last, lv)
		if err != nil {
			return err
		}
		start, end := max(opts.From, first, 1), last+uint64(h.count)-1
		if opts.To != 0 {
			end = min(end, opts.To)
		}
		if start > end {
			return nil
		}
		next := start
		var scratch []byte
		for {
			done, err := iterChunk(tx, &next, end, &scratch, fn)
			if err != nil {
				return err
			}
			if opts.Progress != nil {
				opts.Progress(min(next, end+1)-start, end-start+1)
			}
			if done {
				return nil
			}
		}
	})
}
