package wal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Bucket names and meta keys: part of the on-disk format.
var (
	bucketSegments  = []byte("segments")
	bucketPositions = []byte("positions")
	bucketMeta      = []byte("meta")
	bucketCursors   = []byte("cursors") // see cursor.go

	metaFormat  = []byte("format")  // uint32 big-endian: formatVersion
	metaCreated = []byte("created") // int64 big-endian: Unix ns of creation
)

// formatVersion is the version of the file layout (buckets, keys, segment
// format) recorded in the meta bucket. A change that a build of the
// previous layout would misread bumps it. The cursors bucket was added
// within version 1: Open creates it when missing, readers take an absent
// one for no cursor, and older builds, which do not look at it, read the
// rest of the file as before (see doc.go, Cursors).
const formatVersion = 1

// bbolt tuning; see doc.go.
const (
	pageSize = 16 << 10
	// maxSourceLen bounds a position's source name (a bbolt key).
	maxSourceLen = 1024
	// Backoff of the writer after a failed commit.
	backoffMin = 10 * time.Millisecond
	backoffMax = time.Second
)

// Frame is one frame as stored in the WAL.
type Frame struct {
	Kind uint16 // schema.Kind of the frame (1 data, 2 command, 3 ack)
	Data []byte // the frame bytes; Append copies them
}

// Commit describes one successful group commit, passed to Options.OnCommit.
type Commit struct {
	// FirstSeq and LastSeq are the sequence numbers the commit made
	// durable; LastSeq is the new durable watermark. FirstSeq > LastSeq
	// (FirstSeq = LastSeq + 1) means the commit held only positions.
	FirstSeq, LastSeq uint64
	// Positions are the source positions written by this commit (those set
	// since the previous commit). The map is reused by the next commit:
	// copy it if kept.
	Positions map[string]uint64
	// Frames and Bytes count what the commit made durable; Bytes counts
	// each frame as stored (data plus 6 bytes).
	Frames int
	Bytes  int
	// Duration is the time of the bbolt update including its fsyncs.
	Duration time.Duration
}

// Stats are cheap counters of a WAL; see WAL.Stats.
type Stats struct {
	FirstSeq      uint64 // lowest stored sequence number; 0 if none is stored
	LastSeq       uint64 // highest sequence number assigned
	Durable       uint64 // highest sequence number committed
	PendingFrames int    // frames appended, not yet committed
	PendingBytes  int64  // their size as stored (data plus 6 bytes a frame)
	StoredBytes   int64  // total size of the stored segment values
	// FootprintBytes is what retention counts against MaxBytes: the
	// space the stored segments take in the file's pages (see footprint).
	FootprintBytes int64
	Segments       int64  // stored segments
	FileBytes      int64  // size of the bbolt file
	Commits        uint64 // successful commits since Open
	CommitErrors   uint64 // failed commits since Open
	// RetainedSegments and RetainedFrames count what retention deleted
	// since Open.
	RetainedSegments uint64
	RetainedFrames   uint64
	LastCommit       time.Duration // Duration of the last successful commit
	Failing          bool          // the last commit attempt failed (degrade mode)
	// RetentionHeld is true after a commit in which retention wanted to
	// delete a segment (MaxBytes or MaxAge) but a cursor that had not
	// acked its frames held it (CursorRetain): FootprintBytes may then
	// exceed MaxBytes. False after a commit where nothing was held.
	RetentionHeld bool
}

// WAL is an open write-ahead log. Its methods are safe for concurrent use.
type WAL struct {
	opts     Options
	db       *bolt.DB
	path     string
	segLimit int   // capacity of a standard segment buffer (value bytes)
	created  int64 // Unix ns the file was created (meta "created"); see Created
	// batchBytes caps the new frame bytes of one commit and triggers a
	// commit: MaxBatchBytes, at most MaxBytes/64.
	batchBytes int
	maxFree    int // segment buffers kept for reuse

	kick  chan struct{} // wakes the writer; capacity 1
	stopc chan struct{} // closed by close to stop the writer
	done  chan struct{} // closed by the writer when it exits

	// commitOnStop is set by close before it closes stopc and read by the
	// writer after stopc is closed.
	commitOnStop bool
	// stopErr is set by the writer before it closes done.
	stopErr error

	lastSeq  atomic.Uint64 // highest sequence assigned; written under mu
	durable  atomic.Uint64 // highest sequence committed; written by the writer
	firstSeq atomic.Uint64 // lowest stored sequence; written by the writer

	closeOnce sync.Once

	// wr is owned by the writer goroutine (and by Open before it starts).
	wr struct {
		b       batch
		use     usage  // what the stored segments take
		first   uint64 // first stored key, 0 if none
		backoff time.Duration
		retryAt time.Time
		cursors map[string]CursorInfo // cursors as of the last commit
		sealed  []sealedRef           // precompress's scratch
	}
	precompressed atomic.Uint64 // segments precompress compressed (tests)

	mu struct {
		sync.Mutex
		closed bool
		open   *segment   // segment Append writes into; nil if none
		full   []*segment // sealed segments not yet fully committed, in order
		free   []*segment // reusable segments with standard buffers

		gen          uint64             // bumped by every Append, SetPosition, DeletePosition, cursor change
		committedGen uint64             // gen of the last successful commit's snapshot
		appended     int64              // bytes appended since Open
		committed    int64              // bytes committed since Open
		oldest       time.Time          // first change since the last complete snapshot; zero if none
		flushReq     bool               // Flush waits: commit now
		posOps       map[string][]posOp // per source, changes not yet committed, in order
		positions    map[string]uint64  // positions as of the last commit
		commitCh     chan struct{}      // closed (and replaced) after every commit
		lastErr      error              // error of the last commit attempt, nil after a success

		curOps  map[string]cursorOp   // per cursor, the latest change not yet committed
		cursors map[string]CursorInfo // cursors with the pending changes applied (Cursor)

		use                     usage
		commits, commitErrors   uint64
		retainedSegs, retainedN uint64
		retentionHeld           bool
		lastDur                 time.Duration
	}
}

// usage is what the stored segments take.
type usage struct {
	stored    int64 // value bytes
	footprint int64 // see footprint
	segments  int64
}

// footprint is the file space that retention counts for a segment value
// of n bytes. SegmentBytes is a power of two and a segment of at most
// segLimit bytes takes at most SegmentBytes with its bbolt overhead, so
// pageSize/SegmentBytes of them always fit in a page (or, above 8 KiB, two
// of them in a node of 2×SegmentBytes/pageSize pages: bbolt puts at least
// two keys in a node). Such a segment therefore counts as SegmentBytes
// whatever its length, and the leaf pages never take more than the
// footprint, even when segments are sealed short. A larger segment counts as its value and overhead
// rounded up to whole pages, plus a standard segment for the page it may
// share with a neighbour.
func (w *WAL) footprint(n int) int64 { return footprintOf(n, w.opts.SegmentBytes) }

// footprintOf is WAL.footprint for a segment size.
func footprintOf(n, segmentBytes int) int64 {
	if n <= segmentBytes-bboltValueOverhead {
		return int64(segmentBytes)
	}
	return int64((n+bboltValueOverhead+pageSize-1)/pageSize*pageSize + segmentBytes)
}

// posOp is a pending position change. It may be committed once the
// frames up to seq (LastSeq when it was made) are.
type posOp struct {
	pos uint64
	del bool
	seq uint64
	gen uint64
	seg *segment // the open segment when it was made
}

// segment is a segment being filled by Append or waiting to be committed.
type segment struct {
	key   [8]byte // big-endian first
	first uint64  // sequence number of the first frame

	// Under WAL.mu: Append appends frames at len(buf) and never writes the
	// header or any byte below len(buf), so the writer may read and write
	// buf[:n] without the lock for an n it saw under the lock.
	buf   []byte
	count uint32
	// cutLen and cutCount mark the end of the last Append call that ended
	// in this segment (0 if none): where a commit may end in it.
	cutLen   int
	cutCount uint32

	// Owned by the writer.
	doneLen   int    // len(buf) as last stored; 0 if never stored
	storedLen int    // length of the value last stored (compressed or not); 0 if never
	bodyCRC   uint32 // CRC32C of buf[segHeaderSize:crcLen]
	crcLen    int
	// pre is the value of the sealed segment S2-compressed ahead of its
	// commit (precompress), header space included, covering buf[:preLen];
	// preLen is 0 if there is none. preRaw: compression would not have
	// made it smaller. preCRC is the CRC32C of the compressed area.
	pre    []byte
	preLen int
	preRaw bool
	preCRC uint32
}

// Open opens the WAL in opts.Dir, creating the directory and the file if
// needed. It checks the file's format version and the last segment, counts
// what is stored, loads the positions and the cursors, and starts the
// writer goroutine, which Close stops.
func Open(opts Options) (*WAL, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.EnsureDefaults()
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("wal: create directory: %w", err)
	}
	path := filepath.Join(opts.Dir, FileName)
	// The structural check walks every segment's leaf element: it counts
	// what is stored on the way, which load would otherwise walk again.
	totals := &segTotals{segmentBytes: opts.SegmentBytes}
	db, err := bolt.Open(path, 0o640, &bolt.Options{
		Timeout:         opts.LockTimeout,
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
		PageSize:        pageSize,
		InitialMmapSize: initialMmapSize(opts.MaxBytes),
		NoSync:          opts.NoSync,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			return openChecked(name, flag, perm, true, opts.LockTimeout, totals)
		},
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s (waited %v)", ErrLocked, path, opts.LockTimeout)
		}
		if errors.Is(err, ErrLocked) {
			return nil, err
		}
		return nil, fmt.Errorf("wal: open %s: %w", path, err)
	}
	db.AllocSize = allocSize(opts.MaxBytes)

	w := &WAL{
		opts:     opts,
		db:       db,
		path:     path,
		segLimit: opts.SegmentBytes - bboltValueOverhead,
		kick:     make(chan struct{}, 1),
		stopc:    make(chan struct{}),
		done:     make(chan struct{}),
	}
	w.batchBytes = int(min(int64(opts.MaxBatchBytes), opts.MaxBytes/64))
	// Keep buffers for a commit in flight and the next one filling.
	w.maxFree = max(2*w.batchBytes/w.segLimit, 16)
	w.fillFree()
	w.mu.posOps = make(map[string][]posOp)
	w.mu.positions = make(map[string]uint64)
	w.mu.curOps = make(map[string]cursorOp)
	w.mu.cursors = make(map[string]CursorInfo)
	w.wr.cursors = make(map[string]CursorInfo)
	w.mu.commitCh = make(chan struct{})
	w.wr.b.pos = make(map[string]posOp)
	w.wr.b.commit.Positions = make(map[string]uint64)
	w.wr.b.cur = make(map[string]cursorOp)
	w.wr.b.curSet = make(map[string]CursorInfo)
	w.wr.b.lost = make(map[string]uint64)

	if err := w.load(totals); err != nil {
		db.Close()
		return nil, fmt.Errorf("wal: open %s: %w", path, err)
	}
	go w.run()
	return w, nil
}

// openChecked opens the WAL file for bbolt (bolt.Options.OpenFile): it
// takes bbolt's lock itself (exclusive for a writer, waiting up to
// timeout) and, under it, checks the file's structure (checkStructure), so
// that bbolt never maps a damaged file; bbolt then takes the lock it
// already holds. A damaged file fails with an error wrapping ErrCorrupt.
// totals, if not nil, receives what the check counted.
func openChecked(name string, flag int, perm os.FileMode, exclusive bool, timeout time.Duration, totals *segTotals) (*os.File, error) {
	f, err := openLocked(name, flag, perm, exclusive, timeout)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && fi.Size() == 0 {
		return f, nil // a new file: bbolt initialises it
	}
	var problems []string
	var n int
	if err == nil {
		problems, n, err = checkStructure(f, totals)
	}
	if err == nil && n > 0 {
		err = &damageError{problems: problems, n: n}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// openLocked opens name and takes its lock, waiting up to timeout. A file
// that was replaced while this waited (framebus wal compact and recover
// rename a new file over the old one before they let go of its lock) is
// opened again: writing into the replaced file would lose the writes.
func openLocked(name string, flag int, perm os.FileMode, exclusive bool, timeout time.Duration) (*os.File, error) {
	deadline := time.Now().Add(timeout)
	for {
		f, err := os.OpenFile(name, flag, perm)
		if err != nil {
			return nil, err
		}
		if err := lockFile(f, exclusive, max(time.Until(deadline), 0)); err != nil {
			f.Close()
			return nil, err
		}
		held, err1 := f.Stat()
		now, err2 := os.Stat(name)
		if err1 == nil && err2 == nil && os.SameFile(held, now) {
			return f, nil
		}
		f.Close()
		if errors.Is(err2, fs.ErrNotExist) {
			// Removed, not replaced, while this waited: opening it again
			// would create an empty WAL in its place.
			return nil, fmt.Errorf("wal: %s was removed while this waited for its lock (by a framebus wal compact or recover that failed?): see what is in %s", name, filepath.Dir(name))
		}
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: %s was replaced while this waited for its lock, again and again", ErrLocked, name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// initialMmapSize maps the whole retained size (plus slack) up front, at
// least 1 GiB, so that the writer rarely has to remap (which waits for
// every read transaction). It is address space, not memory.
func initialMmapSize(maxBytes int64) int {
	if strconv.IntSize == 32 {
		return 256 << 20
	}
	const gib = 1 << 30
	sz := maxBytes + maxBytes/4 + 64<<20
	sz = (sz + gib - 1) / gib * gib
	return int(min(max(sz, gib), 64*gib))
}

// allocSize is the step by which bbolt grows the file: 1/64 of MaxBytes,
// 64 KiB to 16 MiB (bbolt's default), so that growth stays a small part of
// the retention bound.
func allocSize(maxBytes int64) int {
	return int(min(max(maxBytes/64, 64<<10), 16<<20))
}

// load prepares the buckets and reads the state of the file; totals are
// the structural check's counts, if it ran.
func (w *WAL) load(totals *segTotals) error {
	var fresh bool
	err := w.db.View(func(tx *bolt.Tx) error {
		fresh = tx.Bucket(bucketMeta) == nil || tx.Bucket(bucketSegments) == nil ||
			tx.Bucket(bucketPositions) == nil || tx.Bucket(bucketCursors) == nil
		return nil
	})
	if err != nil {
		return err
	}
	if fresh {
		err := w.db.Update(func(tx *bolt.Tx) error {
			meta, err := tx.CreateBucketIfNotExists(bucketMeta)
			if err != nil {
				return err
			}
			if meta.Get(metaFormat) != nil {
				// Add nothing to a file of another version.
				if err := checkFormat(meta); err != nil {
					return err
				}
			} else {
				if err := meta.Put(metaFormat, binary.BigEndian.AppendUint32(nil, formatVersion)); err != nil {
					return err
				}
				if err := meta.Put(metaCreated, binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))); err != nil {
					return err
				}
			}
			for _, name := range [][]byte{bucketSegments, bucketPositions, bucketCursors} {
				if _, err := tx.CreateBucketIfNotExists(name); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return w.db.View(func(tx *bolt.Tx) error {
		if err := checkFormat(tx.Bucket(bucketMeta)); err != nil {
			return err
		}
		if v := tx.Bucket(bucketMeta).Get(metaCreated); len(v) == 8 {
			w.created = int64(binary.BigEndian.Uint64(v))
		}
		// Count what is stored from the keys and value lengths alone: a
		// cursor walk over the leaf pages, no value is decoded, unless the
		// structural check counted it (an existing file).
		c := tx.Bucket(bucketSegments).Cursor()
		u := totals.u
		if !totals.ok || fresh {
			u = usage{}
			for k, v := c.First(); k != nil; k, v = c.Next() {
				u.segments++
				u.stored += int64(len(v))
				u.footprint += w.footprint(len(v))
			}
		}
		w.wr.use, w.mu.use = u, u
		if u.segments > 0 {
			fk, _ := c.First()
			first, ok := keySeq(fk)
			lk, lv := c.Last()
			last, ok2 := keySeq(lk)
			if !ok || !ok2 {
				return fmt.Errorf("%w: segment key of %d bytes, want 8", ErrCorrupt, len(lk))
			}
			count, _, err := checkSegment(last, lv)
			if err != nil {
				return fmt.Errorf("last segment: %w", err)
			}
			w.wr.first = first
			w.firstSeq.Store(first)
			w.lastSeq.Store(last + uint64(count) - 1)
			w.durable.Store(last + uint64(count) - 1)
		}
		// Frames a recovery dropped: their sequence numbers are never
		// assigned again (see Recover).
		if v := tx.Bucket(bucketMeta).Get(metaLost); v != nil {
			rs, ok := parseLost(v)
			if !ok {
				return fmt.Errorf("%w: meta %q of %d bytes is malformed", ErrCorrupt, metaLost, len(v))
			}
			if n := len(rs); n > 0 && rs[n-1].last > w.lastSeq.Load() {
				w.lastSeq.Store(rs[n-1].last)
				w.durable.Store(rs[n-1].last)
			}
		}
		err := tx.Bucket(bucketPositions).ForEach(func(k, v []byte) error {
			if len(v) != 8 {
				return fmt.Errorf("%w: position of %q has %d bytes, want 8", ErrCorrupt, k, len(v))
			}
			w.mu.positions[string(k)] = binary.BigEndian.Uint64(v)
			return nil
		})
		if err != nil {
			return err
		}
		return readCursors(tx.Bucket(bucketCursors), func(name string, ci CursorInfo) {
			w.wr.cursors[name] = ci
			w.mu.cursors[name] = ci
		})
	})
}

// checkFormat checks the meta bucket's format version.
func checkFormat(meta *bolt.Bucket) error {
	if meta == nil {
		return fmt.Errorf("%w: no meta bucket", ErrCorrupt)
	}
	v := meta.Get(metaFormat)
	if len(v) != 4 {
		return fmt.Errorf("%w: format version of %d bytes, want 4", ErrCorrupt, len(v))
	}
	if f := binary.BigEndian.Uint32(v); f != formatVersion {
		return fmt.Errorf("%w: file format %d, this build reads %d", ErrVersion, f, formatVersion)
	}
	return nil
}

// Append queues frames for the next group commit, assigning them
// consecutive sequence numbers starting at LastSeq()+1 (1 in an empty
// WAL), and returns the last one. It copies every frame's data into the
// queue. The frames of one call are committed in one transaction: a commit
// never splits a call. If queuing them would take the queue past
// MaxMemoryBytes it queues none and returns ErrQueueFull; a frame that can
// never fit fails with ErrFrameTooLarge; after Close it returns ErrClosed.
//
// Frames drained from a ring should be appended with AppendFrom, which
// commits them together with the ring's position.
func (w *WAL) Append(fs ...Frame) (lastSeq uint64, err error) {
	return w.append(fs, "", 0, false, time.Time{})
}

// AppendFrom appends frames like Append and, atomically with them, records
// that source has been drained up to pos (see SetPosition): the frames and
// the position are committed in the same transaction, so that after a
// crash the committed position and the committed frames correspond
// exactly, and a sidecar that resumes draining at the position neither
// loses nor duplicates a frame. With no frames it is SetPosition. On any
// error nothing is queued and the position is not recorded.
func (w *WAL) AppendFrom(source string, pos uint64, fs ...Frame) (lastSeq uint64, err error) {
	checkSource(source)
	return w.append(fs, source, pos, true, time.Time{})
}

// AppendFromSince is AppendFrom for frames that have been waiting since
// (at the earliest) since, for example in a ring between two polls: the
// commit interval (FlushInterval) then counts from since rather than from
// this call, so the time the frames waited before it does not add to their
// way to durable. A zero since, or one in the future, means now.
func (w *WAL) AppendFromSince(source string, pos uint64, since time.Time, fs ...Frame) (lastSeq uint64, err error) {
	checkSource(source)
	return w.append(fs, source, pos, true, since)
}

func (w *WAL) append(fs []Frame, source string, pos uint64, withPos bool, since time.Time) (uint64, error) {
	var need int64
	for i := range fs {
		n := len(fs[i].Data)
		if n > maxFrameBytes || int64(n+entryHeaderSize) > w.opts.MaxMemoryBytes {
			return 0, fmt.Errorf("%w: %d bytes (MaxMemoryBytes %d)", ErrFrameTooLarge, n, w.opts.MaxMemoryBytes)
		}
		need += int64(n + entryHeaderSize)
	}
	w.mu.Lock()
	if w.mu.closed {
		w.mu.Unlock()
		return 0, ErrClosed
	}
	seq := w.lastSeq.Load()
	pending := w.mu.appended - w.mu.committed
	if pending+need > w.opts.MaxMemoryBytes {
		w.mu.Unlock()
		return 0, fmt.Errorf("%w: %d bytes pending, %d more would pass MaxMemoryBytes %d", ErrQueueFull, pending, need, w.opts.MaxMemoryBytes)
	}
	if len(fs) == 0 && !withPos {
		w.mu.Unlock()
		return seq, nil
	}
	if len(fs) > 0 {
		for i := range fs {
			seq++
			w.appendLocked(seq, &fs[i])
		}
		// The end of a call is where a commit may end.
		o := w.mu.open
		o.cutLen, o.cutCount = len(o.buf), o.count
		w.lastSeq.Store(seq)
		w.mu.appended += need
		w.mu.gen++
	}
	if withPos {
		w.setPosLocked(source, posOp{pos: pos})
	}
	kick := false
	if now := time.Now(); since.IsZero() || since.After(now) {
		since = now
	}
	if w.mu.oldest.IsZero() || since.Before(w.mu.oldest) {
		// The first change since the last commit, or older than it:
		// the writer recomputes when the next commit is due.
		w.mu.oldest = since
		kick = true
	}
	if batch := int64(w.batchBytes); pending < batch && pending+need >= batch {
		kick = true
	}
	w.mu.Unlock()
	if kick {
		w.signal()
	}
	return seq, nil
}

// appendLocked copies f into the open segment as frame seq.
func (w *WAL) appendLocked(seq uint64, f *Frame) {
	n := entryHeaderSize + len(f.Data)
	s := w.mu.open
	if s != nil && len(s.buf)+n > cap(s.buf) {
		w.mu.full = append(w.mu.full, s)
		s = nil
	}
	if s == nil {
		s = w.newSegmentLocked(seq, n)
		w.mu.open = s
	}
	off := len(s.buf)
	b := s.buf[:off+n]
	le.PutUint32(b[off:], uint32(len(f.Data)))
	le.PutUint16(b[off+4:], f.Kind)
	copy(b[off+entryHeaderSize:], f.Data)
	s.buf = b
	s.count++
}

// newSegmentLocked returns an empty segment starting at seq with room for
// at least one entry of n bytes.
func (w *WAL) newSegmentLocked(seq uint64, n int) *segment {
	var s *segment
	if segHeaderSize+n > w.segLimit {
		// A frame larger than a segment gets a segment of its own.
		s = &segment{buf: make([]byte, segHeaderSize, segHeaderSize+n)}
	} else if k := len(w.mu.free); k > 0 {
		s = w.mu.free[k-1]
		w.mu.free[k-1] = nil
		w.mu.free = w.mu.free[:k-1]
	} else {
		s = &segment{buf: make([]byte, segHeaderSize, w.segLimit)}
	}
	s.first = seq
	putKey(s.key[:], seq)
	return s
}

// fillBytes bounds what fillFree stocks: 4 MiB, what a 5 ms commit
// interval holds at 800 MB/s of frames, and the whole free list of a
// sidecar at its default max_memory_bytes.
const fillBytes = 4 << 20

// fillCount is how many buffers fillFree stocks.
func (w *WAL) fillCount() int { return min(w.maxFree, fillBytes/w.segLimit) }

// fillFree stocks the free list with fillCount segment buffers at Open
// and writes to every page of them. Without it, a WAL that starts taking
// frames takes a page fault every 4 KiB of new buffers in the drain loop's
// appends until the free list has filled through commits. Measured on a
// 2-core VM, where a fault costs several microseconds, the first drain pass
// after a driver started took 8 ms for 2,000 frames. Frames published in
// the first milliseconds then waited 16–32 ms to be durable, against 5–10 ms
// with the list stocked. The list may hold up to maxFree buffers
// (2 × MaxBatchBytes: a commit in flight and the next one), so this is
// memory a busy WAL holds anyway.
func (w *WAL) fillFree() {
	page := os.Getpagesize()
	for range w.fillCount() {
		b := make([]byte, w.segLimit)
		for i := 0; i < len(b); i += page {
			b[i] = 0 // a store: the page is mapped now, not on first use
		}
		w.mu.free = append(w.mu.free, &segment{buf: b[:segHeaderSize]})
	}
}

// releaseLocked returns a fully committed segment's buffer for reuse.
func (w *WAL) releaseLocked(s *segment) {
	if cap(s.buf) != w.segLimit || len(w.mu.free) >= w.maxFree {
		return
	}
	*s = segment{buf: s.buf[:segHeaderSize], pre: s.pre[:0]}
	w.mu.free = append(w.mu.free, s)
}

// SetPosition records that source (an ingress ring, e.g. "slot3/gen7") has
// been drained up to pos. The position is committed with every frame
// appended before the call: in the same transaction as those not yet
// committed, never before any of them. A commit may however happen between
// an Append and the SetPosition that follows it, committing frames whose
// position is not yet recorded; a ring drain must therefore use AppendFrom,
// and SetPosition alone is for positions that move without frames (every
// record of a batch was rejected). source must be 1 to 1024 bytes long (it
// panics otherwise: the names are the sidecar's own). After Close it does
// nothing.
func (w *WAL) SetPosition(source string, pos uint64) {
	w.setPos(source, posOp{pos: pos})
}

// DeletePosition forgets source (its ring was freed); the deletion is
// committed with the next transaction.
func (w *WAL) DeletePosition(source string) {
	w.setPos(source, posOp{del: true})
}

// checkSource panics if source cannot be a position's key.
func checkSource(source string) {
	if len(source) == 0 || len(source) > maxSourceLen {
		panic(fmt.Sprintf("wal: position source must be 1 to %d bytes, got %d", maxSourceLen, len(source)))
	}
}

func (w *WAL) setPos(source string, op posOp) {
	checkSource(source)
	w.mu.Lock()
	if w.mu.closed {
		w.mu.Unlock()
		return
	}
	w.setPosLocked(source, op)
	kick := w.touchLocked()
	w.mu.Unlock()
	if kick {
		w.signal()
	}
}

// setPosLocked queues a position change, to be committed with the frames
// up to LastSeq. A commit that ends in the middle of the queue must write
// the last change it covers, so changes are kept in order; but a commit
// ends at the last call end of a segment (see snapshot), so of the changes
// made while the same segment was open only the last can matter.
func (w *WAL) setPosLocked(source string, op posOp) {
	w.mu.gen++
	op.gen = w.mu.gen
	op.seq = w.lastSeq.Load()
	op.seg = w.mu.open
	ops := w.mu.posOps[source]
	if n := len(ops); n > 0 && ops[n-1].seg == op.seg {
		ops[n-1] = op
	} else {
		w.mu.posOps[source] = append(ops, op)
	}
}

// Positions returns a copy of the positions as of the last commit.
func (w *WAL) Positions() map[string]uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.mu.positions)
}

// Flush commits everything appended (and every position and cursor set) so far
// without waiting for FlushInterval, in one commit or, beyond
// MaxBatchBytes, several, and waits until it is durable or ctx is done. While commits fail it keeps waiting for the writer's retries;
// on ctx's end it returns ctx's error joined with the last commit error.
func (w *WAL) Flush(ctx context.Context) error {
	w.mu.Lock()
	if w.mu.closed {
		w.mu.Unlock()
		return ErrClosed
	}
	if !w.dirtyLocked() {
		w.mu.Unlock()
		return nil
	}
	// Done once a commit whose snapshot was taken after this call has
	// covered every frame appended before it: that commit also held every
	// position change made before it (see snapshot).
	targetSeq, targetGen := w.lastSeq.Load(), w.mu.gen
	w.mu.flushReq = true
	w.mu.Unlock()
	w.signal()
	flushed := func() bool { return w.durable.Load() >= targetSeq && w.mu.committedGen >= targetGen }
	for {
		w.mu.Lock()
		ok := flushed()
		ch, lastErr := w.mu.commitCh, w.mu.lastErr
		w.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-w.done:
			w.mu.Lock()
			ok := flushed()
			w.mu.Unlock()
			if ok {
				return nil
			}
			return ErrClosed
		case <-ctx.Done():
			return errors.Join(ctx.Err(), lastErr)
		}
	}
}

// Created returns when the WAL file was created, in Unix nanoseconds: with
// the sequence numbers it identifies a frame for good (a WAL made anew
// restarts them at 1, with another creation time). 0 for a file that did
// not record it.
func (w *WAL) Created() int64 { return w.created }

// LastSeq returns the highest sequence number assigned by Append (maybe
// not yet durable).
func (w *WAL) LastSeq() uint64 { return w.lastSeq.Load() }

// Durable returns the highest sequence number committed: the durable
// watermark.
func (w *WAL) Durable() uint64 { return w.durable.Load() }

// FirstSeq returns the lowest sequence number still stored (retention
// moves it forward), or 0 if nothing is stored.
func (w *WAL) FirstSeq() uint64 { return w.firstSeq.Load() }

// Pending returns the frames appended but not yet committed, and their
// size as stored (data plus 6 bytes a frame), the quantity that
// MaxMemoryBytes bounds.
func (w *WAL) Pending() (frames int, bytes int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return int(w.lastSeq.Load() - w.durable.Load()), w.mu.appended - w.mu.committed
}

// Stats returns the WAL's counters. It takes the WAL's lock briefly and
// stats the file.
func (w *WAL) Stats() Stats {
	w.mu.Lock()
	s := Stats{
		FirstSeq:         w.firstSeq.Load(),
		LastSeq:          w.lastSeq.Load(),
		Durable:          w.durable.Load(),
		PendingBytes:     w.mu.appended - w.mu.committed,
		StoredBytes:      w.mu.use.stored,
		FootprintBytes:   w.mu.use.footprint,
		Segments:         w.mu.use.segments,
		Commits:          w.mu.commits,
		CommitErrors:     w.mu.commitErrors,
		RetainedSegments: w.mu.retainedSegs,
		RetainedFrames:   w.mu.retainedN,
		RetentionHeld:    w.mu.retentionHeld,
		LastCommit:       w.mu.lastDur,
		Failing:          w.mu.lastErr != nil,
	}
	w.mu.Unlock()
	s.PendingFrames = int(s.LastSeq - s.Durable)
	if fi, err := os.Stat(w.path); err == nil {
		s.FileBytes = fi.Size()
	}
	return s
}

// Path returns the path of the WAL file.
func (w *WAL) Path() string { return w.path }

// Close stops accepting frames, commits what is queued (without retrying:
// a failed commit's error is returned and what it held is lost, as in a
// crash), stops the writer and closes the file. It waits
// for running Iterate calls to finish their current read transaction.
// Calls after the first return nil.
func (w *WAL) Close() error { return w.close(true) }

// close stops the WAL; with commit false it abandons the queue, as a crash
// would (tests use it through crash).
func (w *WAL) close(commit bool) error {
	err, first := error(nil), false
	w.closeOnce.Do(func() {
		first = true
		w.mu.Lock()
		w.mu.closed = true
		w.mu.Unlock()
		w.commitOnStop = commit
		close(w.stopc)
		<-w.done
		err = w.stopErr
		if cerr := w.db.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("wal: close: %w", cerr)
		}
	})
	if !first {
		return nil
	}
	return err
}

// signal wakes the writer without blocking.
func (w *WAL) signal() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// dirtyLocked reports whether anything waits to be committed.
func (w *WAL) dirtyLocked() bool {
	return w.lastSeq.Load() != w.durable.Load() || len(w.mu.posOps) > 0 || len(w.mu.curOps) > 0
}

// isClosed reports whether Close was called.
func (w *WAL) isClosed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.mu.closed
}
