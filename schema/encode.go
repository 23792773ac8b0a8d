package schema

import (
	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/framebus/framebus/schema/fb"
)

// defaultEncoderSize is the initial size of an Encoder's buffer; it grows
// (by doubling) to fit the largest frame encoded and never shrinks.
const defaultEncoderSize = 1024

// Encoder encodes frames into one reusable FlatBuffers builder: after the
// first few frames have grown its buffers to the largest frame size, encoding
// allocates nothing.
//
// The zero Encoder is ready to use. An Encoder is not safe for concurrent
// use; give each goroutine its own.
//
// The slice returned by the Encode methods aliases the encoder's buffer: it
// is valid until the next call of any Encode or Append method, and must be
// copied (into a ring slot, say) before then. Fields equal to their zero
// value — scalars, empty strings, empty slices — are not written; the
// reader sees the same zero value. The encoder does not validate enum
// values: a frame carrying one the schema does not define is rejected by
// Verify.
type Encoder struct {
	b    *flatbuffers.Builder
	offs []flatbuffers.UOffsetT // scratch: offsets of the points being encoded
}

// NewEncoder returns an Encoder whose buffer starts with room for frames of
// size bytes (zero: a default); it grows as needed.
func NewEncoder(size int) *Encoder {
	if size <= 0 {
		size = defaultEncoderSize
	}
	return &Encoder{b: flatbuffers.NewBuilder(size)}
}

func (e *Encoder) reset() *flatbuffers.Builder {
	if e.b == nil {
		e.b = flatbuffers.NewBuilder(defaultEncoderSize)
	}
	e.b.Reset()
	return e.b
}

// EncodeData encodes f and returns the frame (KindData); see Encoder for
// how long the returned slice stays valid.
func (e *Encoder) EncodeData(f *DataFrame) []byte {
	b := e.reset()
	points := e.points(f.Points)
	producer := createString(b, f.Producer)
	device := createString(b, f.Device)
	fb.DataFrameStart(b)
	fb.DataFrameAddEpoch(b, f.Epoch)
	fb.DataFrameAddSeq(b, f.Seq)
	fb.DataFrameAddProducer(b, producer)
	fb.DataFrameAddDevice(b, device)
	fb.DataFrameAddPoints(b, points)
	b.FinishWithFileIdentifier(fb.DataFrameEnd(b), identData)
	return b.FinishedBytes()
}

// EncodeCommand encodes c and returns the frame (KindCommand); see Encoder
// for how long the returned slice stays valid.
func (e *Encoder) EncodeCommand(c *Command) []byte {
	b := e.reset()
	points := e.points(c.Points)
	target := createString(b, c.Target)
	device := createString(b, c.Device)
	replyTo := createString(b, c.ReplyTo)
	fb.CommandStart(b)
	fb.CommandAddId(b, c.ID)
	fb.CommandAddDeadlineNs(b, c.DeadlineNs)
	fb.CommandAddTarget(b, target)
	fb.CommandAddDevice(b, device)
	fb.CommandAddPoints(b, points)
	fb.CommandAddReplyTo(b, replyTo)
	fb.CommandAddKind(b, fb.CommandKind(c.Kind))
	b.FinishWithFileIdentifier(fb.CommandEnd(b), identCommand)
	return b.FinishedBytes()
}

// EncodeCommandAck encodes a and returns the frame (KindAck); see Encoder
// for how long the returned slice stays valid.
func (e *Encoder) EncodeCommandAck(a *CommandAck) []byte {
	b := e.reset()
	readback := e.points(a.Readback)
	message := createString(b, a.Message)
	fb.CommandAckStart(b)
	fb.CommandAckAddId(b, a.ID)
	fb.CommandAckAddCode(b, a.Code)
	fb.CommandAckAddMessage(b, message)
	fb.CommandAckAddReadback(b, readback)
	fb.CommandAckAddStage(b, fb.AckStage(a.Stage))
	b.FinishWithFileIdentifier(fb.CommandAckEnd(b), identAck)
	return b.FinishedBytes()
}

// AppendData appends the encoding of f to dst and returns the extended
// slice, which does not alias the encoder.
func (e *Encoder) AppendData(dst []byte, f *DataFrame) []byte {
	return append(dst, e.EncodeData(f)...)
}

// AppendCommand appends the encoding of c to dst and returns the extended
// slice, which does not alias the encoder.
func (e *Encoder) AppendCommand(dst []byte, c *Command) []byte {
	return append(dst, e.EncodeCommand(c)...)
}

// AppendCommandAck appends the encoding of a to dst and returns the extended
// slice, which does not alias the encoder.
func (e *Encoder) AppendCommandAck(dst []byte, a *CommandAck) []byte {
	return append(dst, e.EncodeCommandAck(a)...)
}

// points writes every point and the vector of their offsets, and returns the
// vector's offset (0, i.e. absent, for no points).
func (e *Encoder) points(ps []Point) flatbuffers.UOffsetT {
	if len(ps) == 0 {
		return 0
	}
	b := e.b
	e.offs = e.offs[:0]
	for i := range ps {
		e.offs = append(e.offs, encodePoint(b, &ps[i]))
	}
	return b.CreateVectorOfTables(e.offs)
}

// encodePoint writes p, children first, and returns its offset. Fields are
// added widest first so that the table needs no padding.
func encodePoint(b *flatbuffers.Builder, p *Point) flatbuffers.UOffsetT {
	tag := createString(b, p.Tag)
	var str, bytes flatbuffers.UOffsetT
	switch p.Value.Type {
	case TypeString:
		str = createString(b, p.Value.Str)
	case TypeBytes:
		if len(p.Value.Bytes) > 0 {
			bytes = b.CreateByteVector(p.Value.Bytes)
		}
	}
	var num uint64
	switch {
	case p.Value.Type == TypeBool && p.Value.Num != 0:
		num = 1
	case p.Value.Type.IsNumeric():
		num = p.Value.Num
	}
	fb.PointStart(b)
	fb.PointAddAlias(b, p.Alias)
	fb.PointAddNum(b, num)
	fb.PointAddTsNs(b, p.TsNs)
	fb.PointAddTag(b, tag)
	fb.PointAddStr(b, str)
	fb.PointAddBytes(b, bytes)
	fb.PointAddErrCode(b, p.ErrCode)
	fb.PointAddVtype(b, fb.ValueType(p.Value.Type))
	fb.PointAddQuality(b, fb.Quality(p.Quality))
	fb.PointAddFlags(b, fb.PointFlags(p.Flags))
	return fb.PointEnd(b)
}

// createString writes s and returns its offset, or 0 (absent) for "".
// Builder.CreateString copies s into the buffer without allocating.
func createString(b *flatbuffers.Builder, s string) flatbuffers.UOffsetT {
	if s == "" {
		return 0
	}
	return b.CreateString(s)
}
