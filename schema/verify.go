package schema

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// Verifier limits. See Verifier.
const (
	DefaultMaxDepth  = 64
	DefaultMaxTables = 1_000_000

	// maxBufferSize is the largest buffer FlatBuffers can address; it keeps
	// every sum of two offsets below 2^32, so the generated accessors'
	// uint32 arithmetic cannot wrap on a verified buffer.
	maxBufferSize = 1<<31 - 1
)

// Verifier checks that a buffer is a well-formed frame, so that the
// generated accessors in package fb can read it without panicking or
// reading outside it. The zero Verifier is ready to use and applies the
// defaults; a Verifier is immutable while in use and may be shared by any
// number of goroutines.
type Verifier struct {
	// MaxDepth is the deepest nesting of tables accepted, the root table
	// being at depth 1 (a DataFrame and its points need 2). Zero means
	// DefaultMaxDepth (64).
	MaxDepth int

	// MaxTables is the largest number of table visits accepted; a table
	// reached through several offsets counts once per offset, so a small
	// hostile buffer cannot make verification quadratic. Zero means
	// DefaultMaxTables (1,000,000).
	MaxTables int
}

// Verify checks buf as a frame of the given kind with the default limits.
// See the package documentation for what is checked; a nil error means
// every accessor of the matching fb root table (and of the tables it
// reaches) is safe to call on buf. Verify does not allocate unless it
// fails.
func Verify(kind Kind, buf []byte) error {
	return Verifier{}.Verify(kind, buf)
}

// VerifyDataFrame is Verify(KindData, buf).
func VerifyDataFrame(buf []byte) error { return Verify(KindData, buf) }

// VerifyCommand is Verify(KindCommand, buf).
func VerifyCommand(buf []byte) error { return Verify(KindCommand, buf) }

// VerifyCommandAck is Verify(KindAck, buf).
func VerifyCommandAck(buf []byte) error { return Verify(KindAck, buf) }

// Verify checks buf as a frame of the given kind with c's limits.
func (c Verifier) Verify(kind Kind, buf []byte) error {
	root, ident := rootTable(kind)
	if root == nil {
		return fmt.Errorf("%w: %d", ErrUnknownKind, uint16(kind))
	}
	if len(buf) < 8 {
		return fmt.Errorf("%w: %d bytes, need at least 8 for the root offset and file identifier", ErrTooShort, len(buf))
	}
	if len(buf) > maxBufferSize {
		return fmt.Errorf("%w: %d bytes", ErrTooLarge, len(buf))
	}
	if string(buf[4:8]) != ident {
		return fmt.Errorf("%w: identifier %q, want %q for a %s frame", ErrWrongType, buf[4:8], ident, kind)
	}
	v := verifier{
		buf:       buf,
		n:         uint64(len(buf)),
		maxDepth:  c.MaxDepth,
		maxTables: c.MaxTables,
	}
	if v.maxDepth <= 0 {
		v.maxDepth = DefaultMaxDepth
	}
	if v.maxTables <= 0 {
		v.maxTables = DefaultMaxTables
	}
	pos := uint64(le.Uint32(buf))
	if pos < 8 || pos+4 > v.n || pos%4 != 0 {
		return fmt.Errorf("%w: root table at offset %d in a %d-byte buffer", ErrBadRoot, pos, len(buf))
	}
	return v.table(pos, root)
}

var le = binary.LittleEndian

// pathLen is how many levels of nesting an error path names.
const pathLen = 8

// step is one level of the path from the root to the table being verified:
// element index of field of table.
type step struct {
	table *tableDesc
	field int
	index uint64
}

// verifier is the state of one Verify call. It lives on Verify's stack.
type verifier struct {
	buf       []byte
	n         uint64 // len(buf), < 2^31
	depth     int
	maxDepth  int
	tables    int
	maxTables int
	npath     int // levels in the path; only the first pathLen are kept
	path      [pathLen]step
}

// table verifies the table at pos, described by d, and everything it
// references.
func (v *verifier) table(pos uint64, d *tableDesc) error {
	v.depth++
	if v.depth > v.maxDepth {
		return v.fail(ErrDepth, d, -1, pos, "more than %d levels", v.maxDepth)
	}
	v.tables++
	if v.tables > v.maxTables {
		return v.fail(ErrTooManyTables, d, -1, pos, "more than %d", v.maxTables)
	}
	if pos%4 != 0 {
		return v.fail(ErrMisaligned, d, -1, pos, "table not 4-aligned")
	}
	if pos+4 > v.n {
		return v.fail(ErrOutOfBounds, d, -1, pos, "table outside the %d-byte buffer", v.n)
	}
	// The table starts with an soffset to its vtable: vtable = pos - soffset.
	vt := int64(pos) - int64(int32(le.Uint32(v.buf[pos:])))
	if vt < 0 || uint64(vt)+4 > v.n {
		return v.fail(ErrBadVTable, d, -1, pos, "vtable at %d outside the %d-byte buffer", vt, v.n)
	}
	if vt%2 != 0 {
		return v.fail(ErrMisaligned, d, -1, pos, "vtable at %d not 2-aligned", vt)
	}
	vtab := uint64(vt)
	vsize := uint64(le.Uint16(v.buf[vtab:]))
	tsize := uint64(le.Uint16(v.buf[vtab+2:]))
	if vsize < 4 || vsize%2 != 0 || vtab+vsize > v.n {
		return v.fail(ErrBadVTable, d, -1, pos, "vtable at %d has size %d (buffer %d bytes)", vtab, vsize, v.n)
	}
	if tsize < 4 || pos+tsize > v.n {
		return v.fail(ErrBadVTable, d, -1, pos, "table size %d overruns the %d-byte buffer", tsize, v.n)
	}
	// Vtable entries past the fields this schema knows (written by a newer
	// schema) are never read by the generated code, so they are not checked.
	nf := int((vsize - 4) / 2)
	if nf > len(d.fields) {
		nf = len(d.fields)
	}
	for i := 0; i < nf; i++ {
		fo := uint64(le.Uint16(v.buf[vtab+4+2*uint64(i):]))
		if fo == 0 {
			continue // absent: the accessor returns the default
		}
		f := &d.fields[i]
		if fo < 4 || fo+uint64(f.size) > tsize {
			return v.fail(ErrBadVTable, d, i, pos+fo, "field at table offset %d does not fit the %d-byte table", fo, tsize)
		}
		at := pos + fo
		if at%uint64(f.size) != 0 {
			return v.fail(ErrMisaligned, d, i, at, "%d-byte field not aligned", f.size)
		}
		var err error
		switch f.kind {
		case fieldScalar:
		case fieldEnum:
			if x := v.buf[at]; x > f.limit {
				err = v.fail(ErrBadEnum, d, i, at, "value %d, this schema defines 0..%d", x, f.limit)
			}
		case fieldFlags:
			if x := v.buf[at]; x&^f.limit != 0 {
				err = v.fail(ErrBadEnum, d, i, at, "flags %#02x, this schema defines %#02x", x, f.limit)
			}
		case fieldString:
			err = v.string(at, d, i)
		case fieldBytes:
			_, _, err = v.vector(at, 1, d, i)
		case fieldTables:
			err = v.tableVector(at, d, i)
		}
		if err != nil {
			return err
		}
	}
	v.depth--
	return nil
}

// target follows the uoffset stored at at (4-aligned, in bounds) and checks
// that what it points to is 4-aligned and has room for a 4-byte length.
func (v *verifier) target(at uint64, d *tableDesc, field int) (uint64, error) {
	off := uint64(le.Uint32(v.buf[at:]))
	t := at + off
	switch {
	case off == 0:
		return 0, v.fail(ErrOutOfBounds, d, field, at, "zero offset")
	case t+4 > v.n:
		return 0, v.fail(ErrOutOfBounds, d, field, at, "offset to %d outside the %d-byte buffer", t, v.n)
	case t%4 != 0:
		return 0, v.fail(ErrMisaligned, d, field, at, "offset to %d not 4-aligned", t)
	}
	return t, nil
}

// string verifies the string referenced from at: length, bytes and NUL
// terminator inside the buffer. The bytes need not be UTF-8.
func (v *verifier) string(at uint64, d *tableDesc, field int) error {
	s, err := v.target(at, d, field)
	if err != nil {
		return err
	}
	l := uint64(le.Uint32(v.buf[s:]))
	end := s + 4 + l // the NUL terminator
	if end >= v.n {
		return v.fail(ErrBadString, d, field, s, "%d bytes and NUL overrun the %d-byte buffer", l, v.n)
	}
	if v.buf[end] != 0 {
		return v.fail(ErrBadString, d, field, s, "no NUL terminator after %d bytes", l)
	}
	return nil
}

// vector verifies that the vector referenced from at, of elements of
// elemSize bytes, lies inside the buffer, and returns the offset of its
// first element and its length.
func (v *verifier) vector(at, elemSize uint64, d *tableDesc, field int) (start, n uint64, err error) {
	s, err := v.target(at, d, field)
	if err != nil {
		return 0, 0, err
	}
	n = uint64(le.Uint32(v.buf[s:]))
	// n < 2^32 and elemSize <= 4: no overflow in uint64.
	if s+4+n*elemSize > v.n {
		return 0, 0, v.fail(ErrBadVector, d, field, s, "%d elements of %d bytes overrun the %d-byte buffer", n, elemSize, v.n)
	}
	return s + 4, n, nil
}

// tableVector verifies the vector of tables referenced from at and every
// table in it.
func (v *verifier) tableVector(at uint64, d *tableDesc, field int) error {
	start, n, err := v.vector(at, 4, d, field)
	if err != nil {
		return err
	}
	elem := d.fields[field].elem
	if v.npath < pathLen {
		v.path[v.npath] = step{table: d, field: field}
	}
	v.npath++
	for i := uint64(0); i < n; i++ {
		if v.npath <= pathLen {
			v.path[v.npath-1].index = i
		}
		e := start + 4*i
		off := uint64(le.Uint32(v.buf[e:]))
		if off == 0 {
			return v.fail(ErrOutOfBounds, elem, -1, e, "zero offset")
		}
		if err := v.table(e+off, elem); err != nil {
			return err
		}
	}
	v.npath--
	return nil
}

// fail returns sentinel wrapped with the path to field (-1: the table
// itself) of table d and the byte offset at.
func (v *verifier) fail(sentinel error, d *tableDesc, field int, at uint64, format string, args ...any) error {
	var sb strings.Builder
	if v.npath == 0 {
		sb.WriteString(d.name)
	} else {
		sb.WriteString(v.path[0].table.name)
	}
	for i := 0; i < v.npath && i < pathLen; i++ {
		s := v.path[i]
		sb.WriteByte('.')
		sb.WriteString(s.table.fields[s.field].name)
		sb.WriteByte('[')
		sb.WriteString(strconv.FormatUint(s.index, 10))
		sb.WriteByte(']')
	}
	if v.npath > pathLen {
		sb.WriteString("...")
	}
	if field >= 0 {
		sb.WriteByte('.')
		sb.WriteString(d.fields[field].name)
	}
	return fmt.Errorf("%w: %s at offset %d: %s", sentinel, sb.String(), at, fmt.Sprintf(format, args...))
}
