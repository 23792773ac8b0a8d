package wal

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/framebus/framebus/schema"
)

// maxProblems bounds Report.Problems; the rest are counted in a last line.
const maxProblems = 100

// Report is the result of Verify.
type Report struct {
	Segments    int64
	Frames      uint64
	Bytes       int64 // frame data bytes
	StoredBytes int64 // segment value bytes as stored (compressed or not)
	FirstSeq    uint64
	LastSeq     uint64
	Positions   int
	Cursors     int // durable cursors (see WAL.SetCursor)
	// Lost counts the frames a recovery dropped (Recover records their
	// ranges in the file): a sequence gap they cover is not a problem.
	Lost uint64
	// Problems lists every inconsistency found, at most 100 and then a
	// line with the count of the others; empty if the WAL is sound.
	Problems []string

	more int // problems beyond maxProblems
}

func (r *Report) problem(format string, args ...any) {
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
		return
	}
	r.more++
}

// Verify checks the whole WAL file in dir offline, opening it read-only
// (it fails with ErrLocked while a sidecar has it open): bbolt's own page
// consistency check, the format version, every segment's header, CRC32C
// and frame lengths, the continuity of sequence numbers across segments
// (retention only deletes from the front, so there may be no gap between
// two stored segments), the positions bucket (every value 8 bytes) and
// the cursors bucket, if any (every name valid, every value 16 bytes; a
// file written before cursors existed has none).
// It returns the report and, if there is any problem, an error wrapping
// ErrCorrupt that names the first one.
func Verify(dir string) (Report, error) { return VerifyProgress(dir, nil) }

// VerifyProgress is Verify that reports its progress through the segments
// (after bbolt's own page check, which it cannot follow): progress, if not
// nil, is called every 256 segments and at the end, on the goroutine of
// VerifyProgress, with the sequence numbers passed and the span of those
// stored. A damaged file (read as Recover reads it) reports none.
func VerifyProgress(dir string, progress func(done, total uint64)) (Report, error) {
	var r Report
	db, err := openReadOnly(dir)
	var de *damageError
	if errors.As(err, &de) {
		// bbolt cannot read the file safely: report it as the recovery
		// reads it.
		return verifyDamaged(dir)
	}
	if err != nil {
		return r, err
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) (err error) {
		defer func() {
			// bbolt trusts its pages: damage in a page header can make it
			// panic. Report that instead of crashing the tool.
			if p := recover(); p != nil {
				r.problem("bbolt failed reading the file: %v", p)
				err = nil
			}
		}()
		for cerr := range tx.Check() {
			r.problem("bbolt: %v", cerr)
		}
		if err := checkFormat(tx.Bucket(bucketMeta)); err != nil {
			r.problem("%v", err)
		}
		var lost []seqRange
		if mb := tx.Bucket(bucketMeta); mb != nil {
			if v := mb.Get(metaLost); v != nil {
				rs, ok := parseLost(v)
				if !ok {
					r.problem("meta %q: malformed (%d bytes)", metaLost, len(v))
				}
				lost = rs
				for _, x := range rs {
					r.Lost += x.last - x.first + 1
				}
			}
		}
		if pb := tx.Bucket(bucketPositions); pb == nil {
			r.problem("no positions bucket")
		} else {
			_ = pb.ForEach(func(k, v []byte) error {
				r.Positions++
				if len(k) == 0 || len(k) > maxSourceLen {
					r.problem("position source of %d bytes, want 1 to %d", len(k), maxSourceLen)
				}
				if len(v) != 8 {
					r.problem("position %q: value of %d bytes, want 8", k, len(v))
				}
				return nil
			})
		}
		if cb := tx.Bucket(bucketCursors); cb != nil {
			_ = cb.ForEach(func(k, v []byte) error {
				r.Cursors++
				if err := checkCursorName(string(k)); err != nil {
					r.problem("cursor %q: %v", k, strings.TrimPrefix(err.Error(), "wal: "))
				}
				if len(v) != cursorValueSize {
					r.problem("cursor %q: value of %d bytes, want %d", k, len(v), cursorValueSize)
				}
				return nil
			})
		}
		sb := tx.Bucket(bucketSegments)
		if sb == nil {
			r.problem("no segments bucket")
			return nil
		}
		var next uint64 // expected key of the next segment; 0 before the first
		var scratch []byte
		c := sb.Cursor()
		var span, base uint64 // for progress: the sequence numbers stored, the first
		if progress != nil {
			if lk, lv := c.Last(); lk != nil {
				last, _ := keySeq(lk)
				if len(lv) >= segHeaderSize {
					last += max(uint64(headerCount(lv)), 1) - 1 // the last frame's
				}
				fk, _ := c.First()
				base, _ = keySeq(fk)
				span = last - min(base, last) + 1
			}
			defer func() { progress(span, span) }()
		}
		for k, v := c.First(); k != nil; k, v = c.Next() {
			key, ok := keySeq(k)
			if !ok {
				r.problem("segment key %x: %d bytes, want 8", k, len(k))
				continue
			}
			r.Segments++
			if progress != nil && r.Segments%256 == 0 && key >= base {
				progress(min(key-base, span), span)
			}
			r.StoredBytes += int64(len(v))
			count, data, err := checkSegmentBuf(key, v, &scratch)
			if err != nil {
				r.problem("%v", strings.TrimPrefix(err.Error(), "wal: "))
				next = 0 // its count is unknown: resynchronise on the next key
				continue
			}
			switch {
			case key == 0:
				r.problem("segment 0: sequence numbers start at 1")
			case next != 0 && key > next && !covered(lost, next, key-1):
				r.problem("segment %d: sequence gap, frames %d to %d are missing", key, next, key-1)
			case next != 0 && key < next:
				r.problem("segment %d: overlaps the previous segment, which ends at %d", key, next-1)
			}
			if r.FirstSeq == 0 {
				r.FirstSeq = key
			}
			r.Frames += uint64(count)
			r.Bytes += data
			next = key + uint64(count)
			r.LastSeq = next - 1
		}
		return nil
	})
	if err != nil {
		r.problem("%v", err)
	}
	n := len(r.Problems) + r.more
	if r.more > 0 {
		r.Problems = append(r.Problems, fmt.Sprintf("%d more problems", r.more))
	}
	if n > 0 {
		return r, fmt.Errorf("%w: %s: %d problems, first: %s", ErrCorrupt, filepath.Join(dir, FileName), n, r.Problems[0])
	}
	return r, nil
}

// verifyDamaged is Verify for a file whose structure bbolt cannot read
// safely: it reads the file as Recover does (scanWAL), reporting every
// problem and counting what is still intact.
func verifyDamaged(dir string) (Report, error) {
	var r Report
	path := filepath.Join(dir, FileName)
	f, err := os.Open(path)
	if err != nil {
		return r, fmt.Errorf("wal: %w", err)
	}
	defer f.Close()
	if err := lockFile(f, false, DefaultLockTimeout); err != nil {
		return r, err
	}
	sc, err := scanWAL(f)
	if err != nil {
		return r, err
	}
	sc.bf.close()
	r.Problems = sc.d.lines()
	for _, s := range sc.segs {
		if r.FirstSeq == 0 {
			r.FirstSeq = s.key
		}
		r.Segments++
		r.Frames += uint64(s.count)
		r.StoredBytes += int64(s.vlen)
		r.LastSeq = s.end()
	}
	r.Bytes = sc.dataBytes
	r.Positions, r.Cursors = len(sc.positions), len(sc.cursors)
	for _, x := range sc.lost {
		r.Lost += x.last - x.first + 1
	}
	if len(r.Problems) == 0 { // cannot happen: the structural check failed
		r.Problems = []string{"the file's structure is damaged"}
	}
	return r, fmt.Errorf("%w: %s: %d problems, first: %s", ErrCorrupt, path, sc.d.count(), r.Problems[0])
}

// FileStats summarises a WAL's content; see ReadStats. The JSON form is
// what `framebus wal stats --json` prints.
type FileStats struct {
	Frames    uint64                   `json:"frames"`
	Bytes     int64                    `json:"bytes"` // frame data bytes
	FirstSeq  uint64                   `json:"first_seq"`
	LastSeq   uint64                   `json:"last_seq"`
	Producers map[string]ProducerStats `json:"producers"`
	// Kinds counts frames by kind name ("data", "command", "ack", or
	// "Kind(n)"); Invalid counts data frames that fail schema.Verify
	// (their producer is unknown).
	Kinds   map[string]uint64 `json:"kinds"`
	Invalid uint64            `json:"invalid"`
	// Cursors are the durable cursors (see WAL.SetCursor) by name; empty
	// if there is none.
	Cursors map[string]CursorInfo `json:"cursors"`
}

// ProducerStats counts one producer's frames in FileStats.
type ProducerStats struct {
	Frames uint64 `json:"frames"`
}

// ReadStats reads every frame of the WAL in dir offline (read-only; it
// fails with ErrLocked while a sidecar has the WAL open) and counts frames
// and bytes, per kind, and per producer for data frames, which it verifies
// with schema.Verify and reads with schema.RootDataFrame; and it reads the
// durable cursors. A segment or cursor that fails its check stops it with
// ErrCorrupt: run Verify.
func ReadStats(dir string) (FileStats, error) {
	st := FileStats{Producers: map[string]ProducerStats{}, Kinds: map[string]uint64{}, Cursors: map[string]CursorInfo{}}
	db, err := openReadOnly(dir)
	if err != nil {
		return st, err
	}
	defer db.Close()
	producers := map[string]*ProducerStats{}
	kinds := map[uint16]uint64{}
	err = db.View(func(tx *bolt.Tx) error {
		err := readCursors(tx.Bucket(bucketCursors), func(name string, ci CursorInfo) {
			st.Cursors[name] = ci
		})
		if err != nil {
			return err
		}
		sb := tx.Bucket(bucketSegments)
		if sb == nil {
			return fmt.Errorf("%w: no segments bucket", ErrCorrupt)
		}
		var scratch []byte
		c := sb.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			key, ok := keySeq(k)
			if !ok {
				return fmt.Errorf("%w: segment key of %d bytes, want 8", ErrCorrupt, len(k))
			}
			h, err := parseSegment(key, v)
			if err != nil {
				return err
			}
			if v, err = decodeSegment(key, v, h, &scratch); err != nil {
				return err
			}
			err = walkSegment(key, v, h, func(seq uint64, kind uint16, data []byte) error {
				if st.FirstSeq == 0 {
					st.FirstSeq = seq
				}
				st.LastSeq = seq
				st.Frames++
				st.Bytes += int64(len(data))
				kinds[kind]++
				if schema.Kind(kind) != schema.KindData {
					return nil
				}
				if schema.Verify(schema.KindData, data) != nil {
					st.Invalid++
					return nil
				}
				df := schema.RootDataFrame(data)
				name := df.Producer()
				p := producers[string(name)]
				if p == nil {
					p = new(ProducerStats)
					producers[string(name)] = p
				}
				p.Frames++
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	for name, p := range producers {
		st.Producers[name] = *p
	}
	for k, n := range kinds {
		st.Kinds[schema.Kind(k).String()] += n
	}
	return st, err
}

// openReadOnly opens the WAL file in dir for the offline tools.
func openReadOnly(dir string) (*bolt.DB, error) {
	path := filepath.Join(dir, FileName)
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s does not exist (is --wal-dir right?)", ErrNotFound, path)
		}
		return nil, fmt.Errorf("wal: %w", err)
	}
	db, err := bolt.Open(path, 0, &bolt.Options{ReadOnly: true, Timeout: DefaultLockTimeout,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			return openChecked(name, flag, perm, false, DefaultLockTimeout, nil)
		}})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) || errors.Is(err, ErrLocked) {
			return nil, fmt.Errorf("%w: %s is open in a running sidecar (waited %v); stop it first", ErrLocked, path, time.Duration(DefaultLockTimeout))
		}
		return nil, fmt.Errorf("wal: open %s: %w", path, err)
	}
	return db, nil
}
