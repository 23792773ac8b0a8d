package schema

import (
	"encoding/binary"
	"fmt"
	"math"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/framebus/framebus/schema/fb"
)

// TemplateTag describes one point of a DataTemplate.
type TemplateTag struct {
	Tag   string
	Alias uint64 // zero: no alias
	// Type is the point's initial value type: TypeNone (the zero value) or a
	// numeric type. The Set methods change it along with the value.
	Type  ValueType
	Flags PointFlags // initial flags
}

// DataTemplate is a DataFrame encoded once, whose numeric fields are then
// rewritten in place: each Set method is one little-endian store at an
// offset computed when the template was built, so a driver that republishes
// the same tags produces a frame in tens of nanoseconds.
//
// Strings (producer, device, tags) and the number of points are fixed at
// construction. Every scalar is physically present in the buffer, even when
// zero, so that it can be rewritten; the frame is a little larger than an
// Encoder's for the same values. The initial values are zero, TypeNone
// unless TemplateTag.Type says otherwise, QualityGood.
//
// Set methods panic if i is not in [0, NumPoints()), like a slice index.
// A DataTemplate is not safe for concurrent use.
type DataTemplate struct {
	buf   []byte
	epoch uint32 // offset of DataFrame.epoch
	seq   uint32 // offset of DataFrame.seq
	pts   []templatePoint
}

// templatePoint holds the offsets of one point's rewritable fields.
type templatePoint struct {
	vtype, num, quality, errCode, tsNs, flags uint32
}

// NewDataTemplate encodes a DataFrame with one point per tag and records
// where its scalars live. It fails with ErrTemplateType if a tag asks for a
// string or bytes value.
func NewDataTemplate(producer, device string, tags []TemplateTag) (*DataTemplate, error) {
	for i, t := range tags {
		if t.Type != TypeNone && !t.Type.IsNumeric() {
			return nil, fmt.Errorf("%w: tag %d (%q) has type %s", ErrTemplateType, i, t.Tag, t.Type)
		}
	}
	b := flatbuffers.NewBuilder(256 + 64*len(tags))
	offs := make([]flatbuffers.UOffsetT, len(tags))
	for i, t := range tags {
		tag := createString(b, t.Tag)
		b.StartObject(numPointFields)
		b.PrependUint64Slot(slotPointAlias, t.Alias, 0)
		forceUint64(b, slotPointNum, 0)
		forceUint64(b, slotPointTsNs, 0)
		b.PrependUOffsetTSlot(slotPointTag, tag, 0)
		forceUint32(b, slotPointErrCode, 0)
		forceByte(b, slotPointVtype, byte(t.Type))
		forceByte(b, slotPointQuality, byte(QualityGood))
		forceByte(b, slotPointFlags, byte(t.Flags))
		offs[i] = b.EndObject()
	}
	var points flatbuffers.UOffsetT
	if len(offs) > 0 {
		points = b.CreateVectorOfTables(offs)
	}
	prod := createString(b, producer)
	dev := createString(b, device)
	b.StartObject(numDataFields)
	forceUint64(b, slotDataEpoch, 0)
	forceUint64(b, slotDataSeq, 0)
	b.PrependUOffsetTSlot(slotDataProducer, prod, 0)
	b.PrependUOffsetTSlot(slotDataDevice, dev, 0)
	b.PrependUOffsetTSlot(slotDataPoints, points, 0)
	b.FinishWithFileIdentifier(b.EndObject(), identData)

	t := &DataTemplate{
		buf: append([]byte(nil), b.FinishedBytes()...),
		pts: make([]templatePoint, len(tags)),
	}
	// Find the fields through the generated code's own view of the vtables:
	// they were all written above, so none is absent.
	df := RootDataFrame(t.buf)
	tab := df.Table()
	t.epoch = fieldPos(&tab, slotDataEpoch)
	t.seq = fieldPos(&tab, slotDataSeq)
	var p fb.Point
	for i := range t.pts {
		df.Points(&p, i)
		pt := p.Table()
		t.pts[i] = templatePoint{
			vtype:   fieldPos(&pt, slotPointVtype),
			num:     fieldPos(&pt, slotPointNum),
			quality: fieldPos(&pt, slotPointQuality),
			errCode: fieldPos(&pt, slotPointErrCode),
			tsNs:    fieldPos(&pt, slotPointTsNs),
			flags:   fieldPos(&pt, slotPointFlags),
		}
	}
	return t, nil
}

// forceUint64 writes x into slot even if it is zero (the generated Add
// functions leave zero scalars out).
func forceUint64(b *flatbuffers.Builder, slot int, x uint64) {
	b.PrependUint64(x)
	b.Slot(slot)
}

// forceUint32 writes x into slot even if it is zero.
func forceUint32(b *flatbuffers.Builder, slot int, x uint32) {
	b.PrependUint32(x)
	b.Slot(slot)
}

// forceByte writes x into slot even if it is zero.
func forceByte(b *flatbuffers.Builder, slot int, x byte) {
	b.PrependByte(x)
	b.Slot(slot)
}

// fieldPos returns the absolute offset of the field in slot of table t,
// which must be present.
func fieldPos(t *flatbuffers.Table, slot int) uint32 {
	o := t.Offset(flatbuffers.VOffsetT(vtableOffset(slot)))
	if o == 0 {
		panic("schema: template field missing") // unreachable: every field was forced
	}
	return uint32(t.Pos) + uint32(o)
}

// NumPoints returns the number of points.
func (t *DataTemplate) NumPoints() int { return len(t.pts) }

// Len returns the size of the frame in bytes.
func (t *DataTemplate) Len() int { return len(t.buf) }

// Bytes returns the frame (KindData). It aliases the template: later Set
// calls change it.
func (t *DataTemplate) Bytes() []byte { return t.buf }

// CopyTo copies the frame into dst, typically a ring slot, and returns its
// length. It fails with ErrShortBuffer, copying nothing, if dst is shorter
// than Len().
func (t *DataTemplate) CopyTo(dst []byte) (int, error) {
	if len(dst) < len(t.buf) {
		return 0, fmt.Errorf("%w: %d bytes, the frame needs %d", ErrShortBuffer, len(dst), len(t.buf))
	}
	return copy(dst, t.buf), nil
}

// SetEpoch sets DataFrame.epoch.
func (t *DataTemplate) SetEpoch(epoch uint64) { binary.LittleEndian.PutUint64(t.buf[t.epoch:], epoch) }

// SetSeq sets DataFrame.seq.
func (t *DataTemplate) SetSeq(seq uint64) { binary.LittleEndian.PutUint64(t.buf[t.seq:], seq) }

// SetF64 sets point i's value to the float64 x (and its type to TypeF64).
func (t *DataTemplate) SetF64(i int, x float64) { t.setNum(i, TypeF64, math.Float64bits(x)) }

// SetI64 sets point i's value to the int64 x (and its type to TypeI64).
func (t *DataTemplate) SetI64(i int, x int64) { t.setNum(i, TypeI64, uint64(x)) }

// SetU64 sets point i's value to the uint64 x (and its type to TypeU64).
func (t *DataTemplate) SetU64(i int, x uint64) { t.setNum(i, TypeU64, x) }

// SetBool sets point i's value to the bool x (and its type to TypeBool).
func (t *DataTemplate) SetBool(i int, x bool) { t.setNum(i, TypeBool, boolNum(x)) }

// SetNone clears point i's value (type TypeNone), e.g. after a failed read;
// set the quality and error code to say why.
func (t *DataTemplate) SetNone(i int) { t.setNum(i, TypeNone, 0) }

func (t *DataTemplate) setNum(i int, typ ValueType, num uint64) {
	p := &t.pts[i]
	binary.LittleEndian.PutUint64(t.buf[p.num:], num)
	t.buf[p.vtype] = byte(typ)
}

// SetQuality sets point i's quality.
func (t *DataTemplate) SetQuality(i int, q Quality) { t.buf[t.pts[i].quality] = byte(q) }

// SetErrCode sets point i's error code.
func (t *DataTemplate) SetErrCode(i int, code uint32) {
	binary.LittleEndian.PutUint32(t.buf[t.pts[i].errCode:], code)
}

// SetTs sets point i's source timestamp, in Unix nanoseconds.
func (t *DataTemplate) SetTs(i int, ns int64) {
	binary.LittleEndian.PutUint64(t.buf[t.pts[i].tsNs:], uint64(ns))
}

// SetFlags sets point i's flags.
func (t *DataTemplate) SetFlags(i int, f PointFlags) { t.buf[t.pts[i].flags] = byte(f) }
