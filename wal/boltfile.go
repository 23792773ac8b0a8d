package wal

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"os"
	"runtime/debug"
	"strings"
)

// Reading the bbolt file without bbolt. bbolt trusts its pages: it walks
// them through its memory map, so a damaged or truncated file makes it
// crash rather than fail (a bus error past the end of a truncated file, an
// index out of range or a failed assertion in a goroutine of its own that
// nobody can recover). Before bbolt maps a file, Open and the offline tools
// check it here (checkStructure), checking every offset against the page
// and the file's length before reading it; Recover reads the damaged file
// here too. The file is mapped read-only and read with the goroutine's
// faults turned into panics (debug.SetPanicOnFault): a page the disk
// cannot read (EIO, a bus error in a mapped page) is reported as damage,
// not a crash.
//
// The layout is bbolt's file format version 2 (go.etcd.io/bbolt v1), in
// the host's byte order, as bbolt writes it (little-endian on every
// platform framebus runs on). Every page starts with a header:
//
//	0            8           10          12             16
//	+------------+-----------+-----------+--------------+
//	| id u64     | flags u16 | count u16 | overflow u32 |
//	| page index | 1 branch  | elements  | pages after  |
//	|            | 2 leaf    |           | this one in  |
//	|            | 4 meta    |           | the same page|
//	|            | 16 free   |           |              |
//	+------------+-----------+-----------+--------------+
//
// Pages 0 and 1 hold the two meta pages, written alternately (transaction
// id modulo 2); bbolt uses the valid one with the higher transaction id.
// After the header:
//
//	16      20        24         28      32          40          48
//	+-------+---------+----------+-------+-----------+-----------+
//	| magic | version | pagesize | flags | root pgid | root seq  |
//	| u32   | u32 = 2 | u32      | u32   | u64       | u64       |
//	+-------+---------+----------+-------+-----------+-----------+
//	48          56          64          72          80
//	+-----------+-----------+-----------+-----------+
//	| freelist  | pgid: the | txid      | checksum  |
//	| pgid u64  | high-water| u64       | u64       |
//	+-----------+-----------+-----------+-----------+
//
// The checksum is FNV-1a 64 of the 56 meta bytes before it; pgid is the
// high-water mark: the pages below it are in use (reachable or free). A
// branch page holds count elements of (pos u32, ksize u32, pgid u64), a
// leaf page count elements of (flags u32, pos u32, ksize u32, vsize u32),
// 16 bytes each, right after the header; an element's key is at the
// element's own offset plus pos, a leaf value right after its key. A
// bucket is a leaf value with flags 1: (root pgid u64, sequence u64), and,
// when root is 0, an inline leaf page right after it.
const (
	boltMagic      = 0xED0CDAED
	boltVersion    = 2
	boltHeaderSize = 16
	boltElemSize   = 16
	boltBucketSize = 16
	boltMetaSize   = 64
	boltMetaSum    = 56 // meta bytes the checksum covers

	boltBranch   = 0x01
	boltLeaf     = 0x02
	boltFreelist = 0x10

	boltBucketFlag = 0x01
	boltNoFreelist = ^uint64(0)

	// boltMaxDepth bounds the tree walk (a damaged page could make a loop
	// that the seen set would catch anyway; this bounds the recursion).
	boltMaxDepth = 64
)

var ne = binary.NativeEndian

// damage collects the problems a check finds: at most maxProblems, and a
// count of the others.
type damage struct {
	list []string
	more int
}

func (d *damage) add(format string, args ...any) {
	if len(d.list) < maxProblems {
		d.list = append(d.list, fmt.Sprintf(format, args...))
		return
	}
	d.more++
}

func (d *damage) count() int { return len(d.list) + d.more }

// lines returns the problems, with a last line counting those not listed.
func (d *damage) lines() []string {
	if d.more == 0 {
		return d.list
	}
	return append(d.list[:len(d.list):len(d.list)], fmt.Sprintf("%d more problems", d.more))
}

// damageError is the error of a failed structural check: it wraps
// ErrCorrupt and keeps every problem found (Verify reports them).
type damageError struct {
	problems []string
	n        int
}

func (e *damageError) Error() string {
	return fmt.Sprintf("%v: %d problems in the file's pages, first: %s", ErrCorrupt, e.n, e.problems[0])
}

func (e *damageError) Unwrap() error { return ErrCorrupt }

// boltMeta is one decoded meta page.
type boltMeta struct {
	bad      string // why it is not a valid meta page; "" if it is
	pageSize uint32
	root     uint64 // root bucket's page
	freelist uint64
	hwm      uint64 // bbolt's pgid: the pages in use
	txid     uint64
}

// boltFile is a bbolt file mapped read-only for the checks. close unmaps
// it; nothing read from data may be kept past that.
type boltFile struct {
	f        *os.File
	data     []byte // the whole file; nil if it is empty
	size     int64
	pageSize int
	metas    [2]boltMeta
	cur      int // the meta bbolt would use (the valid one with the higher txid); -1 if none
}

// parseBoltMeta decodes the meta page whose first bytes are b.
func parseBoltMeta(b []byte) boltMeta {
	if len(b) < boltHeaderSize+boltMetaSize {
		return boltMeta{bad: "past the end of the file"}
	}
	m := b[boltHeaderSize:]
	bm := boltMeta{pageSize: ne.Uint32(m[8:]), root: ne.Uint64(m[16:]), freelist: ne.Uint64(m[32:]),
		hwm: ne.Uint64(m[40:]), txid: ne.Uint64(m[48:])}
	h := fnv.New64a()
	h.Write(m[:boltMetaSum])
	switch {
	case ne.Uint32(m) != boltMagic:
		bm.bad = fmt.Sprintf("magic %#08x, want %#08x", ne.Uint32(m), uint32(boltMagic))
	case ne.Uint32(m[4:]) != boltVersion:
		bm.bad = fmt.Sprintf("version %d, want %d", ne.Uint32(m[4:]), boltVersion)
	case h.Sum64() != ne.Uint64(m[boltMetaSum:]):
		bm.bad = fmt.Sprintf("checksum %#016x, the page says %#016x", h.Sum64(), ne.Uint64(m[boltMetaSum:]))
	}
	return bm
}

// openBoltFile maps f and reads its meta pages. Damage is in the metas'
// bad fields and cur; an error means the file could not be mapped.
func openBoltFile(f *os.File) (*boltFile, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	bf := &boltFile{f: f, size: fi.Size(), cur: -1}
	if bf.size > 0 {
		if bf.data, err = mapFile(f, bf.size); err != nil {
			return nil, err
		}
	}
	read := func(off int64) (m boltMeta) {
		if off >= bf.size {
			return boltMeta{bad: "past the end of the file"}
		}
		defer onFault(func(err error) { m = boltMeta{bad: err.Error()} })
		return parseBoltMeta(bf.data[off:min(bf.size, off+4096)])
	}
	bf.metas[0] = read(0)
	ps := 0
	if m := bf.metas[0]; m.bad == "" && validBoltPageSize(m.pageSize) {
		ps = int(m.pageSize)
		bf.metas[1] = read(int64(ps))
	} else {
		// Page 0 is unusable: look for page 1 as bbolt does, trying the
		// page sizes, framebus's own first.
		for _, try := range []int{pageSize, 4 << 10, 8 << 10, 32 << 10, 64 << 10, 1 << 10, 2 << 10} {
			if m := read(int64(try)); m.bad == "" && int(m.pageSize) == try {
				ps, bf.metas[1] = try, m
				break
			}
		}
		if ps == 0 {
			ps = pageSize
			bf.metas[1] = read(int64(ps))
		}
	}
	bf.pageSize = ps
	for i := range bf.metas {
		m := &bf.metas[i]
		switch {
		case m.bad != "":
		case int(m.pageSize) != ps:
			m.bad = fmt.Sprintf("page size %d, the other meta page says %d", m.pageSize, ps)
		case m.hwm < 3 || m.root < 2 || m.root >= m.hwm:
			m.bad = fmt.Sprintf("root page %d outside the %d pages in use", m.root, m.hwm)
		case m.freelist != boltNoFreelist && (m.freelist < 2 || m.freelist >= m.hwm):
			m.bad = fmt.Sprintf("freelist page %d outside the %d pages in use", m.freelist, m.hwm)
		}
		if m.bad == "" && (bf.cur < 0 || m.txid > bf.metas[bf.cur].txid) {
			bf.cur = i
		}
	}
	return bf, nil
}

// close unmaps the file.
func (bf *boltFile) close() {
	if bf.data != nil {
		unmapFile(bf.data)
		bf.data = nil
	}
}

// onFault, deferred, turns a memory fault of the goroutine (a mapped page
// the disk could not read; see debug.SetPanicOnFault) into a call of fn
// with an error naming it, and lets any other panic go on.
func onFault(fn func(error)) {
	r := recover()
	if r == nil {
		return
	}
	if f, ok := r.(interface{ Addr() uintptr }); ok {
		fn(fmt.Errorf("read error in the mapped file (fault at %#x): %v", f.Addr(), r))
		return
	}
	panic(r)
}

// faultsAsPanics makes the goroutine's memory faults panics (that onFault
// recovers) until the returned function is called.
func faultsAsPanics() (restore func()) {
	old := debug.SetPanicOnFault(true)
	return func() { debug.SetPanicOnFault(old) }
}

func validBoltPageSize(n uint32) bool { return n >= 1<<10 && n <= 1<<20 && n&(n-1) == 0 }

// checkMetas adds the problems of the meta pages and of the file's length
// to d and reports whether the tree of the meta in use may be walked.
func (bf *boltFile) checkMetas(d *damage) bool {
	if bf.size < 2*int64(bf.pageSize) {
		d.add("the file has %d bytes, less than its two meta pages (%d bytes): it is truncated", bf.size, 2*bf.pageSize)
	}
	for i, m := range bf.metas {
		if m.bad == "" {
			continue
		}
		other := 1 - i
		if bf.metas[other].bad == "" {
			d.add("meta page %d is damaged (%s): bbolt would use meta page %d (transaction %d) and lose any commit after it",
				i, m.bad, other, bf.metas[other].txid)
		} else {
			d.add("meta page %d is damaged (%s)", i, m.bad)
		}
	}
	if bf.cur < 0 {
		d.add("neither meta page is valid: the file cannot be read as a bbolt database")
		return false
	}
	m := bf.metas[bf.cur]
	if need := int64(m.hwm) * int64(bf.pageSize); bf.size < need {
		d.add("the file is truncated: it has %d bytes, its last transaction (%d) uses %d pages (%d bytes)", bf.size, m.txid, m.hwm, need)
	}
	return true
}

// pageRef is a page (or an inline bucket page) being read: b is its span,
// (overflow+1) pages, or the inline value.
type pageRef struct {
	off   int64 // file offset of the page; -1 for an inline page
	b     []byte
	flags uint16
	count int
}

// elem is one element of a branch or leaf page, its bounds checked.
type elem struct {
	flags uint32 // leaf only
	key   []byte
	pgid  uint64 // branch only
	voff  int    // leaf: offset of the value in the page
	vlen  int
}

// elems decodes the element table of p, checking that every key and value
// lies within the page and that the keys are in order, the first at least
// lo and all below hi (nil bounds are open), as bbolt's own check requires.
// The keys point into the page.
func (p *pageRef) elems(lo, hi []byte) ([]elem, string) {
	span := uint64(len(p.b))
	if uint64(boltHeaderSize+p.count*boltElemSize) > span {
		return nil, fmt.Sprintf("%d elements do not fit in its %d bytes", p.count, span)
	}
	leaf := p.flags == boltLeaf
	es := make([]elem, p.count)
	var prev []byte
	for i := range es {
		at := uint64(boltHeaderSize + i*boltElemSize)
		e := p.b[at:]
		var pos, ksize, vsize uint64
		if leaf {
			es[i].flags = ne.Uint32(e)
			pos, ksize, vsize = uint64(ne.Uint32(e[4:])), uint64(ne.Uint32(e[8:])), uint64(ne.Uint32(e[12:]))
			if es[i].flags&^boltBucketFlag != 0 {
				return nil, fmt.Sprintf("element %d has unknown flags %#x", i, es[i].flags)
			}
		} else {
			pos, ksize = uint64(ne.Uint32(e)), uint64(ne.Uint32(e[4:]))
			es[i].pgid = ne.Uint64(e[8:])
		}
		if ksize == 0 || at+pos+ksize+vsize > span {
			return nil, fmt.Sprintf("element %d (key of %d bytes, value of %d at %d) runs past its %d bytes", i, ksize, vsize, at+pos, span)
		}
		k := p.b[at+pos : at+pos+ksize : at+pos+ksize]
		switch {
		case i == 0 && lo != nil && bytes.Compare(k, lo) < 0:
			return nil, fmt.Sprintf("key %x of element 0 is below %x, where its parent puts it", k, lo)
		case i > 0 && bytes.Compare(k, prev) <= 0:
			return nil, fmt.Sprintf("key %x of element %d does not follow %x", k, i, prev)
		case hi != nil && bytes.Compare(k, hi) >= 0:
			return nil, fmt.Sprintf("key %x of element %d is not below %x, where its parent puts it", k, i, hi)
		}
		es[i].key, prev = k, k
		es[i].voff, es[i].vlen = int(at+pos+ksize), int(vsize)
	}
	return es, ""
}

// leafEntry is what a tree walk hands out for every leaf element.
type leafEntry struct {
	flags uint32
	key   []byte
	val   []byte // points into the mapped file
	voff  int64  // file offset of the value; -1 in an inline page
}

// treeWalk walks B+trees of a boltFile from the meta in use.
type treeWalk struct {
	bf   *boltFile
	hwm  uint64
	seen []uint64 // bitset of the pages reached (overflow pages included)
}

func newTreeWalk(bf *boltFile) *treeWalk {
	m := bf.metas[bf.cur]
	return &treeWalk{bf: bf, hwm: m.hwm, seen: make([]uint64, (m.hwm+63)/64)}
}

// readPage returns the page at pgid, checking its place and type; want is
// boltBranch|boltLeaf or boltFreelist.
func (t *treeWalk) readPage(pgid uint64, want uint16) (*pageRef, string) {
	bf := t.bf
	if pgid < 2 || pgid >= t.hwm {
		return nil, fmt.Sprintf("page %d is outside the %d pages in use", pgid, t.hwm)
	}
	off := int64(pgid) * int64(bf.pageSize)
	if off+boltHeaderSize > bf.size {
		return nil, fmt.Sprintf("page %d is past the end of the file (%d bytes): truncated", pgid, bf.size)
	}
	h := bf.data[off:]
	p := &pageRef{off: off, flags: ne.Uint16(h[8:]), count: int(ne.Uint16(h[10:]))}
	overflow := uint64(ne.Uint32(h[12:]))
	span := int64(overflow+1) * int64(bf.pageSize)
	switch id := ne.Uint64(h); {
	case id != pgid:
		return nil, fmt.Sprintf("page %d says it is page %d", pgid, id)
	case p.flags&want == 0 || (p.flags != boltBranch && p.flags != boltLeaf && p.flags != boltFreelist):
		return nil, fmt.Sprintf("page %d has flags %#x, want a %s page", pgid, p.flags, pageKind(want))
	case pgid+overflow >= t.hwm:
		return nil, fmt.Sprintf("page %d and its %d overflow pages run past the %d pages in use", pgid, overflow, t.hwm)
	case off+span > bf.size:
		return nil, fmt.Sprintf("page %d and its %d overflow pages run past the end of the file (%d bytes): truncated", pgid, overflow, bf.size)
	case p.flags == boltBranch && p.count == 0:
		return nil, fmt.Sprintf("branch page %d has no element", pgid)
	}
	for i := pgid; i <= pgid+overflow; i++ {
		if t.seen[i/64]&(1<<(i%64)) != 0 {
			return nil, fmt.Sprintf("page %d is reached twice", i)
		}
		t.seen[i/64] |= 1 << (i % 64)
	}
	p.b = bf.data[off : off+span : off+span]
	return p, ""
}

func pageKind(want uint16) string {
	if want == boltFreelist {
		return "freelist"
	}
	return "branch or leaf"
}

// walk walks the subtree at pgid, whose keys lie in [lo, hi), calling
// entry for every leaf element in key order and broken for every subtree
// it cannot read, with that subtree's key bounds and the reason. A page's
// damage loses the page's whole subtree. Run it with faultsAsPanics.
//
// via names the branch element that points at pgid ("" for a root), for
// the messages: the damage may be in the pointer rather than the page.
func (t *treeWalk) walk(pgid uint64, lo, hi []byte, depth int, via string, entry func(*leafEntry), broken func(lo, hi []byte, why string)) {
	if via != "" {
		inner := broken
		broken = func(lo, hi []byte, why string) { inner(lo, hi, why+" (reached from "+via+")") }
	}
	if depth > boltMaxDepth {
		broken(lo, hi, fmt.Sprintf("page %d is more than %d levels deep", pgid, boltMaxDepth))
		return
	}
	var p *pageRef
	var es []elem
	why := func() (why string) {
		defer onFault(func(err error) { why = fmt.Sprintf("page %d: %v", pgid, err) })
		if p, why = t.readPage(pgid, boltBranch|boltLeaf); why != "" {
			return why
		}
		if es, why = p.elems(lo, hi); why != "" {
			return fmt.Sprintf("page %d: %s", pgid, why)
		}
		if p.flags == boltLeaf {
			t.leaves(p, es, entry)
		}
		return ""
	}()
	if why != "" {
		broken(lo, hi, why)
		return
	}
	if p.flags == boltBranch {
		for i, e := range es {
			chi := hi
			if i+1 < len(es) {
				chi = es[i+1].key
			}
			t.walk(e.pgid, e.key, chi, depth+1, fmt.Sprintf("branch page %d, element %d", pgid, i), entry, broken)
		}
	}
}

// leaves hands out the elements of a leaf page.
func (t *treeWalk) leaves(p *pageRef, es []elem, entry func(*leafEntry)) {
	for _, e := range es {
		le := leafEntry{flags: e.flags, key: e.key, val: p.b[e.voff : e.voff+e.vlen : e.voff+e.vlen], voff: -1}
		if p.off >= 0 {
			le.voff = p.off + int64(e.voff)
		}
		entry(&le)
	}
}

// bucket walks the bucket whose value (a leaf entry with the bucket flag) is
// v, as walk does.
func (t *treeWalk) bucket(name string, v []byte, entry func(*leafEntry), broken func(lo, hi []byte, why string)) {
	if len(v) < boltBucketSize {
		broken(nil, nil, fmt.Sprintf("bucket %q: value of %d bytes, shorter than a bucket header", name, len(v)))
		return
	}
	root := ne.Uint64(v)
	if root != 0 {
		t.walk(root, nil, nil, 1, "", entry, broken)
		return
	}
	page := v[boltBucketSize:]
	if len(page) < boltHeaderSize {
		broken(nil, nil, fmt.Sprintf("bucket %q: inline page of %d bytes", name, len(page)))
		return
	}
	p := &pageRef{off: -1, b: page, flags: ne.Uint16(page[8:]), count: int(ne.Uint16(page[10:]))}
	if p.flags != boltLeaf {
		broken(nil, nil, fmt.Sprintf("bucket %q: inline page has flags %#x, want a leaf", name, p.flags))
		return
	}
	es, why := p.elems(nil, nil)
	if why != "" {
		broken(nil, nil, fmt.Sprintf("bucket %q: inline page: %s", name, why))
		return
	}
	t.leaves(p, es, entry)
}

// buckets walks the root bucket and calls fn for each bucket in it; the
// root's own damage goes to broken. Elements of the root bucket that are
// not buckets are reported as damage.
func (t *treeWalk) buckets(fn func(name string, v []byte), broken func(lo, hi []byte, why string)) {
	m := t.bf.metas[t.bf.cur]
	t.walk(m.root, nil, nil, 0, "", func(e *leafEntry) {
		if e.flags&boltBucketFlag == 0 {
			broken(e.key, nil, fmt.Sprintf("root bucket: key %q is not a bucket", e.key))
			return
		}
		fn(string(e.key), e.val)
	}, broken)
	if m.freelist != boltNoFreelist {
		// A file written with the freelist synced (not by framebus):
		// bbolt reads this page at open.
		p, why := t.readPage(m.freelist, boltFreelist)
		if why == "" {
			n := uint64(p.count)
			if n == 0xFFFF && len(p.b) >= boltHeaderSize+8 {
				n = ne.Uint64(p.b[boltHeaderSize:]) + 1
			}
			if boltHeaderSize+n*8 > uint64(len(p.b)) {
				why = fmt.Sprintf("freelist page %d: %d ids do not fit in it", m.freelist, n)
			}
		}
		if why != "" {
			broken(nil, nil, why)
		}
	}
}

// checkStructure checks what bbolt trusts before it maps the file: both
// meta pages, the file's length against the high-water mark, and every
// page of every B+tree reachable from the meta in use (in range, not
// reached twice, of the right type, its elements and keys inside it and in
// order, nested buckets well-formed). It reads element tables and keys,
// not segment values: about what bbolt itself reads at Open (measured: 0.2
// s for a 1 GiB WAL in the page cache). It returns the problems found and
// their number; none means bbolt can open the file safely.
//
// totals, if not nil, receives the count and sizes of the segments (WAL
// Open's usage totals), and ok when the check ran to the end.
func checkStructure(f *os.File, totals *segTotals) ([]string, int, error) {
	bf, err := openBoltFile(f)
	if err != nil {
		return nil, 0, err
	}
	defer bf.close()
	defer faultsAsPanics()()
	var d damage
	if bf.checkMetas(&d) && bf.size >= int64(bf.metas[bf.cur].hwm)*int64(bf.pageSize) {
		t := newTreeWalk(bf)
		t.buckets(func(name string, v []byte) {
			// Segment values are not read here: Open checks the last one,
			// Iterate and Verify every one they read.
			segs := name == string(bucketSegments) && totals != nil
			t.bucket(name, v, func(e *leafEntry) {
				if e.flags&boltBucketFlag != 0 {
					d.add("bucket %q: key %q is a nested bucket, which the WAL never writes", name, e.key)
				} else if segs {
					totals.u.segments++
					totals.u.stored += int64(len(e.val))
					totals.u.footprint += footprintOf(len(e.val), totals.segmentBytes)
				}
			}, func(lo, hi []byte, why string) {
				d.add("bucket %q%s: %s", name, keyRange(name, lo, hi), why)
			})
		}, func(lo, hi []byte, why string) { d.add("root bucket: %s", why) })
		if totals != nil {
			totals.ok = d.count() == 0
		}
	}
	return d.lines(), d.count(), nil
}

// segTotals is what checkStructure counts of the segments for Open.
type segTotals struct {
	segmentBytes int   // Options.SegmentBytes, for the footprint
	ok           bool  // the check ran and found nothing wrong
	u            usage // the segments bucket's totals
}

// keyRange describes the keys [lo, hi) of a damaged subtree: for segments
// as the sequence numbers they start.
func keyRange(bucket string, lo, hi []byte) string {
	if lo == nil && hi == nil {
		return ""
	}
	if bucket == string(bucketSegments) {
		var b strings.Builder
		b.WriteString(" (segments")
		if s, ok := keySeq(lo); ok {
			fmt.Fprintf(&b, " from %d", s)
		}
		if s, ok := keySeq(hi); ok {
			fmt.Fprintf(&b, " before %d", s)
		}
		b.WriteString(")")
		return b.String()
	}
	return fmt.Sprintf(" (keys from %q before %q)", lo, hi)
}

// scanLeaves calls fn for every element of every page of the file that is
// a well-formed leaf page where it lies, reachable or not (a page that a
// damaged page no longer reaches, or a free page holding an older copy),
// and for the elements before the end of a page the file's end cuts: the
// recovery's search for segments. val points into the mapped file. A page
// the disk cannot read is skipped.
func (bf *boltFile) scanLeaves(fn func(key, val []byte, voff int64)) {
	defer faultsAsPanics()()
	ps := int64(bf.pageSize)
	for off := 2 * ps; off+boltHeaderSize <= bf.size; off += ps {
		func() {
			defer onFault(func(error) {})
			h := bf.data[off:]
			if ne.Uint64(h) != uint64(off/ps) || ne.Uint16(h[8:]) != boltLeaf || ne.Uint16(h[10:]) == 0 {
				return
			}
			// A page cut by a truncation still holds the elements before
			// the cut.
			end := min(off+(int64(ne.Uint32(h[12:]))+1)*ps, bf.size)
			scanPage(&pageRef{off: off, b: bf.data[off:end:end], flags: boltLeaf, count: int(ne.Uint16(h[10:]))}, fn)
		}()
	}
}

// scanPage hands out the well-formed plain elements of a leaf page, each
// on its own (a damaged element does not hide the others).
func scanPage(p *pageRef, fn func(key, val []byte, voff int64)) {
	span := uint64(len(p.b))
	if uint64(boltHeaderSize+p.count*boltElemSize) > span {
		return
	}
	for i := 0; i < p.count; i++ {
		at := uint64(boltHeaderSize + i*boltElemSize)
		e := p.b[at:]
		flags, pos, ksize, vsize := ne.Uint32(e), uint64(ne.Uint32(e[4:])), uint64(ne.Uint32(e[8:])), uint64(ne.Uint32(e[12:]))
		if flags != 0 || ksize == 0 || at+pos+ksize+vsize > span {
			continue
		}
		fn(p.b[at+pos:at+pos+ksize], p.b[at+pos+ksize:at+pos+ksize+vsize], p.off+int64(at+pos+ksize))
	}
}
