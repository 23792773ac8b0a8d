package wal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/s2"
	bolt "go.etcd.io/bbolt"
)

// metaLost is the meta key where Recover records the frame ranges it could
// not keep: pairs of (first, last) sequence numbers, uint64 big-endian,
// sorted. It was added within format version 1 (older builds ignore it):
// Open never assigns a sequence number at or below the last range's end,
// and Verify accepts a gap between segments that a range covers.
var metaLost = []byte("lost")

// seqRange is a closed range of sequence numbers.
type seqRange struct{ first, last uint64 }

// parseLost decodes a metaLost value; ok is false if it is malformed.
func parseLost(v []byte) (rs []seqRange, ok bool) {
	if len(v)%16 != 0 {
		return nil, false
	}
	for i := 0; i < len(v); i += 16 {
		r := seqRange{binary.BigEndian.Uint64(v[i:]), binary.BigEndian.Uint64(v[i+8:])}
		if r.first == 0 || r.first > r.last || (len(rs) > 0 && r.first <= rs[len(rs)-1].last) {
			return nil, false
		}
		rs = append(rs, r)
	}
	return rs, true
}

// putLost encodes sorted, disjoint ranges as a metaLost value.
func putLost(rs []seqRange) []byte {
	v := make([]byte, 0, 16*len(rs))
	for _, r := range rs {
		v = binary.BigEndian.AppendUint64(v, r.first)
		v = binary.BigEndian.AppendUint64(v, r.last)
	}
	return v
}

// mergeRanges sorts rs and merges the ranges that overlap or touch.
func mergeRanges(rs []seqRange) []seqRange {
	slices.SortFunc(rs, func(a, b seqRange) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	var out []seqRange
	for _, r := range rs {
		if n := len(out); n > 0 && r.first <= out[n-1].last+1 {
			out[n-1].last = max(out[n-1].last, r.last)
			continue
		}
		out = append(out, r)
	}
	return out
}

// covered reports whether every sequence number of [first, last] is in rs
// (sorted and merged).
func covered(rs []seqRange, first, last uint64) bool {
	i := sort.Search(len(rs), func(i int) bool { return rs[i].last >= first })
	return i < len(rs) && rs[i].first <= first && rs[i].last >= last
}

// RecoverOptions configure Recover. The zero value is usable.
type RecoverOptions struct {
	// MinLastSeq is a sequence number known to have been committed, if the
	// caller knows one (the sidecar passes the durable watermark left in
	// the shared-memory segment by the sidecar that last ran this WAL).
	// Frames up to it that the damaged file's tree no longer reaches may
	// be rescued from copies found elsewhere in the file, and no sequence
	// number up to it is ever assigned again. Zero means none is known.
	MinLastSeq uint64
	// LockTimeout is how long Recover waits for the file's lock. Zero
	// means 1 s.
	LockTimeout time.Duration
}

// RecoveryReport says what Recover found and did.
type RecoveryReport struct {
	// Damaged is false if the WAL was sound: Recover then changed nothing.
	Damaged bool
	// Problems are the damage found, in Verify's words (at most 100 and a
	// count of the others).
	Problems []string
	// MovedTo is where the damaged file now is (in the same directory; it
	// is never deleted), "" if nothing was damaged.
	MovedTo string
	// Meta says which bbolt transaction the recovery read: "transaction 41
	// (meta page 1)".
	Meta string

	// The new WAL: its segments and frames, and the range of their
	// sequence numbers.
	KeptSegments int64
	KeptFrames   uint64
	FirstSeq     uint64
	LastSeq      uint64
	// Rescued counts the kept segments that the damaged file's tree no
	// longer reached, found intact elsewhere in the file (under a damaged
	// page, or an identical copy in a free page) and proven committed.
	Rescued int64
	// DroppedSegments counts damaged segment values found and dropped.
	DroppedSegments int64
	// Dropped lists the frames the damaged WAL had (or may have had) that
	// the new one does not, as ranges of sequence numbers with the reason.
	Dropped []DroppedRange
	// NextSeq is the first sequence number the new WAL will assign: never
	// one the damaged WAL may have assigned (see NewIdentity).
	NextSeq uint64

	// Positions and cursors copied into the new WAL, and those dropped
	// (malformed, or in a damaged page). A ring without a position is
	// drained from the start of what it still holds: frames the WAL had
	// committed but the ring had not yet released may then be stored
	// twice. A lost cursor starts again as new.
	Positions, PositionsDropped int
	Cursors, CursorsDropped     int

	// NewIdentity is true when Recover could not bound the sequence
	// numbers the damaged WAL had assigned (its newest pages or its newest
	// transaction are lost): the new WAL then gets a new creation time
	// (WAL.Created), so that frames numbered anew are not taken for the
	// old frames with the same numbers (the uplink's message ids include
	// it). Otherwise the new WAL keeps the old creation time, and every
	// kept frame its sequence number.
	NewIdentity bool
}

// DroppedRange is a range of sequence numbers the recovery dropped.
type DroppedRange struct {
	// First and Last bound the range; First 0 means that the range starts
	// at an unknown sequence number, Last 0 that it ends at one.
	First, Last uint64
	Reason      string
}

func (d DroppedRange) String() string {
	f, l := "?", "?"
	if d.First > 0 {
		f = fmt.Sprint(d.First)
	}
	if d.Last > 0 {
		l = fmt.Sprint(d.Last)
	}
	return fmt.Sprintf("frames %s to %s: %s", f, l, d.Reason)
}

// segLoc is an intact segment: where its value is in the damaged file.
type segLoc struct {
	key   uint64
	count uint32
	crc   uint32 // the header's CRC32C: tells copies apart
	off   int64
	vlen  int
}

func (s segLoc) end() uint64 { return s.key + uint64(s.count) - 1 }

// badRange is a stretch of the segments bucket that could not be read: a
// damaged segment value (from its key) or a subtree under a damaged page
// (between its parent's keys).
type badRange struct {
	first, last         uint64 // 0: unknown
	firstSeg, lastBound bool   // first is a stored segment's key (committed); last is only a bound
	why                 string
}

// walScan is what the recovery read from a WAL file.
type walScan struct {
	bf   *boltFile
	d    damage
	tree bool // a valid meta page was found and its tree walked

	segs      []segLoc // intact segments reachable from the meta in use, in key order
	dataBytes int64    // their frames' data bytes
	bad       []badRange

	positions        map[string]uint64
	positionsDropped int
	cursors          map[string]CursorInfo
	cursorsDropped   int
	created          int64
	lost             []seqRange
	version          uint32 // format version read from the meta bucket; 0 if unreadable
	staleMeta        bool   // a meta page is damaged and may have been the newer one
	scratch          []byte
}

// scanWAL reads the WAL file f through its tree, checking everything
// (every segment's CRC32C and frames included). The caller closes sc.bf.
func scanWAL(f *os.File) (*walScan, error) {
	bf, err := openBoltFile(f)
	if err != nil {
		return nil, err
	}
	defer faultsAsPanics()()
	sc := &walScan{bf: bf, positions: map[string]uint64{}, cursors: map[string]CursorInfo{}}
	if !bf.checkMetas(&sc.d) {
		return sc, nil
	}
	sc.tree = true
	if other := bf.metas[1-bf.cur]; other.bad != "" {
		// The damaged one was the older one only if it was written by the
		// transaction before: it cannot be known from its damaged bytes.
		sc.staleMeta = true
	}
	t := newTreeWalk(bf)
	seen := map[string]bool{}
	t.buckets(func(name string, v []byte) {
		seen[name] = true
		broken := func(lo, hi []byte, why string) {
			sc.d.add("bucket %q%s: %s", name, keyRange(name, lo, hi), why)
			switch name {
			case string(bucketSegments):
				b := badRange{why: why}
				b.first, _ = keySeq(lo)
				if h, ok := keySeq(hi); ok && h > 0 {
					b.last = h - 1
				}
				sc.bad = append(sc.bad, b)
			case string(bucketPositions):
				sc.positionsDropped++
			case string(bucketCursors):
				sc.cursorsDropped++
			}
		}
		switch name {
		case string(bucketSegments):
			t.bucket(name, v, sc.segment, broken)
		case string(bucketPositions):
			t.bucket(name, v, sc.position, broken)
		case string(bucketCursors):
			t.bucket(name, v, sc.cursor, broken)
		case string(bucketMeta):
			t.bucket(name, v, sc.meta, broken)
		}
	}, func(lo, hi []byte, why string) {
		sc.d.add("root bucket: %s", why)
		sc.bad = append(sc.bad, badRange{why: "the root bucket is damaged: " + why})
	})
	for _, name := range [][]byte{bucketMeta, bucketSegments, bucketPositions} {
		if !seen[string(name)] {
			sc.d.add("no %s bucket", name)
		}
	}
	if sc.version == 0 && seen[string(bucketMeta)] {
		sc.d.add("the meta bucket has no readable format version")
	}
	// A damaged segment's frames end before whatever follows it.
	for i := range sc.bad {
		b := &sc.bad[i]
		if !b.lastBound {
			continue
		}
		next := uint64(0)
		for _, s := range sc.segs {
			if s.key > b.first && (next == 0 || s.key < next) {
				next = s.key
			}
		}
		for _, o := range sc.bad {
			if o.first > b.first && (next == 0 || o.first < next) {
				next = o.first
			}
		}
		if next > 0 {
			b.last = min(b.last, next-1)
		}
	}
	// Sequence continuity between the intact segments, as Verify checks it.
	for i := 1; i < len(sc.segs); i++ {
		prev, s := sc.segs[i-1], sc.segs[i]
		switch next := prev.end() + 1; {
		case s.key > next && !covered(sc.lost, next, s.key-1) && !sc.badBetween(next, s.key-1):
			sc.d.add("segment %d: sequence gap, frames %d to %d are missing", s.key, next, s.key-1)
			sc.bad = append(sc.bad, badRange{first: next, last: s.key - 1, why: "missing from the file (a sequence gap)"})
		case s.key < next:
			sc.d.add("segment %d: overlaps the previous segment, which ends at %d", s.key, next-1)
		}
	}
	return sc, nil
}

// badBetween reports whether a bad range touches [first, last].
func (sc *walScan) badBetween(first, last uint64) bool {
	for _, b := range sc.bad {
		if (b.first == 0 || b.first <= last) && (b.last == 0 || b.last >= first) {
			return true
		}
	}
	return false
}

func (sc *walScan) segment(e *leafEntry) {
	key, ok := keySeq(e.key)
	if !ok || key == 0 {
		sc.d.add("segment key %x: want 8 bytes, a sequence number from 1", e.key)
		return
	}
	if e.flags&boltBucketFlag != 0 {
		sc.d.add("segment %d: a nested bucket, which the WAL never writes", key)
		sc.bad = append(sc.bad, badRange{first: key, firstSeg: true, why: "not a segment"})
		return
	}
	count, data, err := checkSegmentBuf(key, e.val, &sc.scratch)
	if err != nil {
		sc.d.add("%s", strings.TrimPrefix(err.Error(), "wal: "))
		sc.bad = append(sc.bad, badRange{first: key, last: key + frameBound(e.val) - 1, firstSeg: true, lastBound: true,
			why: fmt.Sprintf("segment %d is damaged (%s)", key, strings.TrimPrefix(err.Error(), "wal: corrupt: "))})
		return
	}
	if n := len(sc.segs); n > 0 && key <= sc.segs[n-1].end() {
		sc.d.add("segment %d: overlaps the previous segment, which ends at %d", key, sc.segs[n-1].end())
		sc.bad = append(sc.bad, badRange{first: key, firstSeg: true, why: "overlaps the segment before it"})
		return
	}
	sc.segs = append(sc.segs, segLoc{key: key, count: count, crc: le.Uint32(e.val[offCRC:]), off: e.voff, vlen: len(e.val)})
	sc.dataBytes += data
}

func (sc *walScan) position(e *leafEntry) {
	if len(e.key) == 0 || len(e.key) > maxSourceLen || len(e.val) != 8 || e.flags != 0 {
		sc.d.add("position %q: value of %d bytes, want 8", e.key, len(e.val))
		sc.positionsDropped++
		return
	}
	sc.positions[string(e.key)] = binary.BigEndian.Uint64(e.val)
}

func (sc *walScan) cursor(e *leafEntry) {
	ci, ok := parseCursor(e.val)
	if err := checkCursorName(string(e.key)); err != nil || !ok || e.flags != 0 {
		sc.d.add("cursor %q: malformed (value of %d bytes)", e.key, len(e.val))
		sc.cursorsDropped++
		return
	}
	sc.cursors[string(e.key)] = ci
}

func (sc *walScan) meta(e *leafEntry) {
	switch string(e.key) {
	case string(metaFormat):
		if len(e.val) == 4 {
			sc.version = binary.BigEndian.Uint32(e.val)
		}
	case string(metaCreated):
		if len(e.val) == 8 {
			sc.created = int64(binary.BigEndian.Uint64(e.val))
		}
	case string(metaLost):
		rs, ok := parseLost(e.val)
		if !ok {
			sc.d.add("meta %q: malformed (%d bytes)", metaLost, len(e.val))
		}
		sc.lost = rs
	}
}

// frameBound returns the most frames a damaged segment value v can hold,
// from its length (or its compressed frame area's declared length): the
// recovery skips that many sequence numbers rather than reuse one.
func frameBound(v []byte) uint64 {
	if len(v) < segHeaderSize {
		return 1
	}
	n := uint64(len(v)-segHeaderSize) / entryHeaderSize
	if d, err := s2.DecodedLen(v[segHeaderSize:]); err == nil && d <= maxDecodedLen {
		n = max(n, uint64(d)/entryHeaderSize)
	}
	return max(n, 1)
}

// gap is a range of sequence numbers that the readable tree does not
// hold but the WAL had: the recovery looks for intact copies of its
// segments elsewhere in the file.
type gap struct {
	first, last uint64 // first 0: unknown
	why         string
	found       []segLoc // copies found, then the ones kept
}

// Recover rebuilds the WAL in dir from every intact segment of its file,
// for a file that Open refuses or Verify finds damaged. It takes the
// file's lock (ErrLocked while a sidecar holds it), reads the whole file
// with its own checks (it never lets bbolt walk a damaged file), and, if
// nothing is damaged, changes nothing and returns a report with Damaged
// false. Otherwise it writes a new file beside the old one, moves the
// damaged file aside to framebus.wal.damaged-<UTC time> in dir (it never
// deletes it) and puts the new one in its place, so that a crash at any
// point leaves either the damaged file or the new one as framebus.wal.
//
// What it keeps: every segment whose value passes its checks and that the
// tree of the newest valid bbolt transaction reaches, with its sequence
// numbers; the segments a damaged page no longer reaches (or a damaged
// value's identical copy) found intact elsewhere in the file, when they
// are proven committed (below a segment the tree reaches, or at most
// opts.MinLastSeq, and not in conflict with another copy); every
// well-formed position and cursor; and the creation time (see
// RecoveryReport.NewIdentity). The frames it drops are recorded in the new
// file (meta "lost"), so that Verify accepts the gap and Open never
// assigns their sequence numbers again. RecoveryReport lists what was kept
// and dropped, and why.
//
// It needs free space for the new file (about the kept segments' size) in
// dir; on any error the damaged file stays in place, untouched.
func Recover(dir string, opts RecoverOptions) (RecoveryReport, error) {
	var rep RecoveryReport
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	path := filepath.Join(dir, FileName)
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return rep, fmt.Errorf("%w: %s does not exist (is --wal-dir right?)", ErrNotFound, path)
		}
		return rep, fmt.Errorf("wal: recover: %w", err)
	}
	defer f.Close()
	if err := lockFile(f, true, opts.LockTimeout); err != nil {
		return rep, err
	}
	if fi, err := f.Stat(); err == nil && fi.Size() == 0 {
		return rep, nil // a file bbolt has yet to initialise
	}
	sc, err := scanWAL(f)
	if err != nil {
		return rep, err
	}
	defer sc.bf.close()
	if sc.version != 0 && sc.version != formatVersion {
		return rep, fmt.Errorf("%w: file format %d, this build reads %d: recover it with the framebus release that wrote it", ErrVersion, sc.version, formatVersion)
	}
	rep.Problems = sc.d.lines()
	if sc.bf.cur >= 0 {
		rep.Meta = fmt.Sprintf("transaction %d (meta page %d)", sc.bf.metas[sc.bf.cur].txid, sc.bf.cur)
	}
	if sc.d.count() == 0 {
		return rep, nil
	}
	rep.Damaged = true

	kept, lost := sc.plan(opts.MinLastSeq, &rep)
	created := sc.created
	if rep.NewIdentity || created == 0 {
		rep.NewIdentity = true
		created = time.Now().UnixNano()
	}
	tmp := path + ".recovering"
	os.Remove(tmp)
	if err := sc.write(tmp, kept, lost, created); err != nil {
		os.Remove(tmp)
		return rep, fmt.Errorf("wal: recover %s: write the new WAL: %w", path, err)
	}
	aside, err := moveAside(path, tmp)
	if err != nil {
		os.Remove(tmp)
		return rep, fmt.Errorf("wal: recover %s: %w", path, err)
	}
	rep.MovedTo = aside
	return rep, nil
}

// plan chooses the segments to keep and the ranges to record as lost, and
// fills in rep.
func (sc *walScan) plan(minLast uint64, rep *RecoveryReport) (kept []segLoc, lost []seqRange) {
	// proven: the highest sequence number known to have been committed;
	// floor: the highest that may have been assigned.
	var proven, floor uint64
	if n := len(sc.segs); n > 0 {
		proven = sc.segs[n-1].end()
	}
	proven = max(proven, minLast)
	for _, ci := range sc.cursors {
		proven = max(proven, ci.Acked)
	}
	if n := len(sc.lost); n > 0 {
		proven = max(proven, sc.lost[n-1].last)
	}
	unbounded := sc.staleMeta || !sc.tree
	for _, b := range sc.bad {
		if b.firstSeg {
			proven = max(proven, b.first)
		}
		floor = max(floor, b.first, b.last)
		if b.last == 0 && (len(sc.segs) == 0 || b.first == 0 || b.first > sc.segs[len(sc.segs)-1].key) {
			unbounded = true // the damage reaches past the last readable segment
		}
	}
	floor = max(floor, proven)

	// The gaps: between intact segments, before the first (if damage lies
	// there), and after the last up to proven.
	var gaps []*gap
	reason := func(first, last uint64) string {
		var rs []string
		for _, b := range sc.bad {
			if (b.first == 0 || last == 0 || b.first <= last) && (b.last == 0 || b.last >= first) && !slices.Contains(rs, b.why) {
				rs = append(rs, b.why)
			}
		}
		if sc.staleMeta && first > 0 && len(sc.segs) > 0 && first > sc.segs[len(sc.segs)-1].end() {
			rs = append(rs, "the newest transaction may be lost with its damaged meta page")
		}
		if len(rs) == 0 {
			rs = append(rs, "not in the file")
		}
		if len(rs) > 2 {
			rs = append(rs[:2], fmt.Sprintf("and %d more", len(rs)-2))
		}
		if first == 0 {
			rs = append(rs, "or deleted by retention before the damage")
		}
		return strings.Join(rs, "; ")
	}
	if len(sc.segs) == 0 {
		if proven > 0 {
			gaps = append(gaps, &gap{first: 0, last: proven})
		}
	} else {
		first := sc.segs[0]
		lo, before := uint64(0), false
		for _, b := range sc.bad {
			if b.first == 0 || b.first < first.key {
				before = true
				if b.first != 0 && (lo == 0 || b.first < lo) {
					lo = b.first
				}
			}
		}
		if before && first.key > 1 {
			gaps = append(gaps, &gap{first: lo, last: first.key - 1})
		}
		for i := 1; i < len(sc.segs); i++ {
			if next := sc.segs[i-1].end() + 1; sc.segs[i].key > next && !covered(sc.lost, next, sc.segs[i].key-1) {
				gaps = append(gaps, &gap{first: next, last: sc.segs[i].key - 1})
			}
		}
		if last := sc.segs[len(sc.segs)-1].end(); proven > last {
			gaps = append(gaps, &gap{first: last + 1, last: proven})
		}
	}
	if len(gaps) > 0 {
		sc.rescue(gaps)
	}

	kept = append(kept, sc.segs...)
	for _, g := range gaps {
		kept = append(kept, g.found...)
		rep.Rescued += int64(len(g.found))
		// What of the gap the copies do not cover is dropped.
		at := g.first
		for _, s := range g.found {
			if s.key > at && at > 0 {
				rep.Dropped = append(rep.Dropped, DroppedRange{First: at, Last: s.key - 1, Reason: reason(at, s.key-1)})
			} else if at == 0 && s.key > 1 {
				rep.Dropped = append(rep.Dropped, DroppedRange{Last: s.key - 1, Reason: reason(0, s.key-1)})
			}
			at = s.end() + 1
		}
		if at <= g.last {
			rep.Dropped = append(rep.Dropped, DroppedRange{First: at, Last: g.last, Reason: reason(at, g.last)})
		}
	}
	slices.SortFunc(kept, func(a, b segLoc) int {
		switch {
		case a.key < b.key:
			return -1
		case a.key > b.key:
			return 1
		}
		return 0
	})
	for _, b := range sc.bad {
		if b.firstSeg && b.lastBound {
			rep.DroppedSegments++
		}
	}
	var lastKept uint64
	if n := len(kept); n > 0 {
		lastKept = kept[n-1].end()
	}
	if floor > max(proven, lastKept) {
		rep.Dropped = append(rep.Dropped, DroppedRange{First: max(proven, lastKept) + 1, Last: floor,
			Reason: reason(max(proven, lastKept)+1, floor) + " (sequence numbers up to the most the damaged segments could hold are skipped)"})
	}
	if unbounded {
		rep.NewIdentity = true
		from := max(floor, lastKept) + 1
		rep.Dropped = append(rep.Dropped, DroppedRange{First: from, Reason: reason(from, 0) + " (how far the damaged WAL went is unknown)"})
	}

	// Lost ranges: the old ones and every dropped range with known ends;
	// the top one carries the highest sequence number ever assigned.
	lost = append(lost, sc.lost...)
	for _, d := range rep.Dropped {
		if d.First > 0 && d.Last >= d.First {
			lost = append(lost, seqRange{d.First, d.Last})
		}
	}
	lost = mergeRanges(lost)
	for _, s := range kept {
		rep.KeptSegments++
		rep.KeptFrames += uint64(s.count)
	}
	if len(kept) > 0 {
		rep.FirstSeq, rep.LastSeq = kept[0].key, lastKept
	}
	rep.NextSeq = max(lastKept, floor) + 1
	rep.Positions, rep.PositionsDropped = len(sc.positions), sc.positionsDropped
	rep.Cursors, rep.CursorsDropped = len(sc.cursors), sc.cursorsDropped
	return kept, lost
}

// rescue looks through every leaf page of the file, reachable or not, for
// intact segments in the gaps, and keeps those proven committed: every
// gap lies between committed sequence numbers (an intact segment the tree
// reaches, a damaged one's first frame, opts.MinLastSeq, a cursor's
// acknowledgement), and a copy is taken only if all its frames lie within
// one. Copies that disagree are dropped (see chooseCopies): a free page
// may hold an older, shorter copy of a segment, which must be a prefix of
// the newer one, and a commit that failed before a crash may have left a
// copy whose frames were then committed differently.
func (sc *walScan) rescue(gaps []*gap) {
	slices.SortFunc(gaps, func(a, b *gap) int {
		switch {
		case a.last < b.last:
			return -1
		case a.last > b.last:
			return 1
		}
		return 0
	})
	var scratch []byte
	sc.bf.scanLeaves(func(k, v []byte, voff int64) {
		key, ok := keySeq(k)
		if !ok || key == 0 {
			return
		}
		i := sort.Search(len(gaps), func(i int) bool { return gaps[i].last >= key })
		if i == len(gaps) || key < gaps[i].first {
			return
		}
		g := gaps[i]
		count, _, err := checkSegmentBuf(key, v, &scratch)
		if err != nil || key+uint64(count)-1 > g.last {
			return
		}
		s := segLoc{key: key, count: count, crc: le.Uint32(v[offCRC:]), off: voff, vlen: len(v)}
		for _, c := range g.found {
			if c.key == s.key && c.count == s.count && c.crc == s.crc {
				return // the same copy again
			}
		}
		g.found = append(g.found, s)
	})
	for _, g := range gaps {
		g.found = sc.chooseCopies(g.found)
	}
}

// chooseCopies picks, from the copies found in a gap, one per first
// sequence number and none that overlap, in key order. Of several copies
// with the same key, the longest is kept if every other is a prefix of it
// (the same frames); otherwise none. Where two kept copies overlap, the
// first one's longest copy that ends before the second starts replaces it
// (a copy that a failed commit made longer); without one both are dropped.
func (sc *walScan) chooseCopies(found []segLoc) []segLoc {
	slices.SortFunc(found, func(a, b segLoc) int {
		switch {
		case a.key != b.key:
			return cmpU64(a.key, b.key)
		default:
			return -cmpU64(uint64(a.count), uint64(b.count)) // longest first
		}
	})
	var keys [][]segLoc // per key, its consistent copies, longest first
	for i := 0; i < len(found); {
		j := i + 1
		for j < len(found) && found[j].key == found[i].key {
			j++
		}
		if sc.consistent(found[i:j]) {
			keys = append(keys, found[i:j])
		}
		i = j
	}
	var out []segLoc
	for i := 0; i < len(keys); i++ {
		c := keys[i][0]
		if i+1 < len(keys) && c.end() >= keys[i+1][0].key {
			next := keys[i+1][0].key
			fits := slices.IndexFunc(keys[i], func(s segLoc) bool { return s.end() < next })
			if fits < 0 {
				i++ // neither can be trusted
				continue
			}
			c = keys[i][fits]
		}
		if n := len(out); n > 0 && c.key <= out[n-1].end() {
			continue
		}
		out = append(out, c)
	}
	return out
}

// consistent reports whether every copy of vs (the same key, longest
// first) holds a prefix of the frames of the first.
func (sc *walScan) consistent(vs []segLoc) bool {
	if len(vs) == 1 {
		return true
	}
	frames := func(s segLoc) ([]byte, bool) {
		v := make([]byte, s.vlen)
		if _, err := sc.bf.f.ReadAt(v, s.off); err != nil {
			return nil, false
		}
		var scratch []byte
		h, err := parseSegment(s.key, v)
		if err != nil {
			return nil, false
		}
		if v, err = decodeSegment(s.key, v, h, &scratch); err != nil {
			return nil, false
		}
		return bytes.Clone(v[segHeaderSize:]), true
	}
	long, ok := frames(vs[0])
	if !ok {
		return false
	}
	for _, s := range vs[1:] {
		short, ok := frames(s)
		if !ok || !bytes.HasPrefix(long, short) {
			return false
		}
	}
	return true
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// write builds the new WAL file at path: the kept segments, read again
// from the damaged file and checked again, in transactions of at most 32
// MiB; the positions, cursors, format, creation time and lost ranges.
func (sc *walScan) write(path string, kept []segLoc, lost []seqRange, created int64) error {
	db, err := bolt.Open(path, 0o640, &bolt.Options{
		Timeout:         DefaultLockTimeout,
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
		PageSize:        pageSize,
		InitialMmapSize: initialMmapSize(sc.bf.size),
		NoSync:          true, // one sync at the end
	})
	if err != nil {
		return err
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		if err := meta.Put(metaFormat, binary.BigEndian.AppendUint32(nil, formatVersion)); err != nil {
			return err
		}
		if err := meta.Put(metaCreated, binary.BigEndian.AppendUint64(nil, uint64(created))); err != nil {
			return err
		}
		if len(lost) > 0 {
			if err := meta.Put(metaLost, putLost(lost)); err != nil {
				return err
			}
		}
		if _, err := tx.CreateBucket(bucketSegments); err != nil {
			return err
		}
		pb, err := tx.CreateBucket(bucketPositions)
		if err != nil {
			return err
		}
		for src, pos := range sc.positions {
			if err := pb.Put([]byte(src), binary.BigEndian.AppendUint64(nil, pos)); err != nil {
				return err
			}
		}
		cb, err := tx.CreateBucket(bucketCursors)
		if err != nil {
			return err
		}
		for name, ci := range sc.cursors {
			if err := cb.Put([]byte(name), putCursor(ci)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	const txBytes = 32 << 20
	for len(kept) > 0 {
		err := db.Update(func(tx *bolt.Tx) error {
			sb := tx.Bucket(bucketSegments)
			sb.FillPercent = 1.0
			// bbolt keeps every value put until the transaction ends.
			arena := make([]byte, 0, txBytes)
			for len(kept) > 0 && (len(arena) == 0 || len(arena)+kept[0].vlen <= txBytes) {
				s := kept[0]
				var v []byte
				if len(arena)+s.vlen <= cap(arena) {
					v = arena[len(arena) : len(arena)+s.vlen]
					arena = arena[:len(arena)+s.vlen]
				} else {
					v = make([]byte, s.vlen)
				}
				if _, err := sc.bf.f.ReadAt(v, s.off); err != nil {
					return fmt.Errorf("read segment %d: %w", s.key, err)
				}
				if _, _, err := checkSegmentBuf(s.key, v, &sc.scratch); err != nil {
					return fmt.Errorf("segment %d changed while recovering: %w", s.key, err)
				}
				var k [8]byte
				putKey(k[:], s.key)
				if err := sb.Put(k[:], v); err != nil {
					return err
				}
				kept = kept[1:]
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if err := db.Sync(); err != nil {
		return err
	}
	return db.Close()
}

// moveAside moves the damaged file at path aside, to a name of its own in
// the same directory, and the new file tmp to path: first a hard link of
// the damaged file, then a rename of the new one over it (atomic), then
// the directory is synced. A crash leaves framebus.wal either damaged (the
// next recovery starts again) or new. Where hard links are not supported
// it renames twice, with a short window where framebus.wal is missing.
func moveAside(path, tmp string) (string, error) {
	base := path + ".damaged-" + time.Now().UTC().Format("20060102T150405Z")
	aside := base
	for i := 2; ; i++ {
		if _, err := os.Lstat(aside); errors.Is(err, fs.ErrNotExist) {
			break
		}
		aside = fmt.Sprintf("%s-%d", base, i)
	}
	if err := os.Link(path, aside); err != nil {
		if err := os.Rename(path, aside); err != nil {
			return "", fmt.Errorf("move the damaged file aside to %s: %w", aside, err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return aside, fmt.Errorf("put the new WAL in place (the damaged file is at %s): %w", aside, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return aside, fmt.Errorf("sync %s: %w", filepath.Dir(path), err)
		}
	}
	return aside, nil
}
