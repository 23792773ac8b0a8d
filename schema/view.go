package schema

import (
	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/framebus/framebus/schema/fb"
)

// ViewDataFrame verifies buf as a DataFrame and returns a zero-copy view of
// it: the accessors read buf in place (strings come back as []byte that
// alias it). The view is valid as long as buf is unchanged.
func ViewDataFrame(buf []byte) (fb.DataFrame, error) {
	if err := Verify(KindData, buf); err != nil {
		return fb.DataFrame{}, err
	}
	return RootDataFrame(buf), nil
}

// ViewCommand verifies buf as a Command and returns a zero-copy view of it;
// see ViewDataFrame.
func ViewCommand(buf []byte) (fb.Command, error) {
	if err := Verify(KindCommand, buf); err != nil {
		return fb.Command{}, err
	}
	return RootCommand(buf), nil
}

// ViewCommandAck verifies buf as a CommandAck and returns a zero-copy view
// of it; see ViewDataFrame.
func ViewCommandAck(buf []byte) (fb.CommandAck, error) {
	if err := Verify(KindAck, buf); err != nil {
		return fb.CommandAck{}, err
	}
	return RootCommandAck(buf), nil
}

// RootDataFrame returns a view of buf without verifying it, for buffers
// that have already passed Verify(KindData, buf) and have not changed since.
// On any other buffer its accessors may panic.
func RootDataFrame(buf []byte) fb.DataFrame {
	var v fb.DataFrame
	v.Init(buf, flatbuffers.GetUOffsetT(buf))
	return v
}

// RootCommand is RootDataFrame for KindCommand.
func RootCommand(buf []byte) fb.Command {
	var v fb.Command
	v.Init(buf, flatbuffers.GetUOffsetT(buf))
	return v
}

// RootCommandAck is RootDataFrame for KindAck.
func RootCommandAck(buf []byte) fb.CommandAck {
	var v fb.CommandAck
	v.Init(buf, flatbuffers.GetUOffsetT(buf))
	return v
}

// DecodeDataFrame verifies buf as a DataFrame and copies it into f, reusing
// f.Points' backing array. Nothing in f aliases buf.
func DecodeDataFrame(buf []byte, f *DataFrame) error {
	v, err := ViewDataFrame(buf)
	if err != nil {
		return err
	}
	*f = DataFrame{
		Producer: string(v.Producer()),
		Device:   string(v.Device()),
		Epoch:    v.Epoch(),
		Seq:      v.Seq(),
		Points:   decodePoints(f.Points[:0], v.PointsLength(), func(i int) (p fb.Point) { v.Points(&p, i); return p }),
	}
	return nil
}

// DecodeCommand verifies buf as a Command and copies it into c, reusing
// c.Points' backing array. Nothing in c aliases buf.
func DecodeCommand(buf []byte, c *Command) error {
	v, err := ViewCommand(buf)
	if err != nil {
		return err
	}
	*c = Command{
		ID:         v.Id(),
		Target:     string(v.Target()),
		Device:     string(v.Device()),
		Kind:       CommandKind(v.Kind()),
		Points:     decodePoints(c.Points[:0], v.PointsLength(), func(i int) (p fb.Point) { v.Points(&p, i); return p }),
		DeadlineNs: v.DeadlineNs(),
		ReplyTo:    string(v.ReplyTo()),
	}
	return nil
}

// DecodeCommandAck verifies buf as a CommandAck and copies it into a,
// reusing a.Readback's backing array. Nothing in a aliases buf.
func DecodeCommandAck(buf []byte, a *CommandAck) error {
	v, err := ViewCommandAck(buf)
	if err != nil {
		return err
	}
	*a = CommandAck{
		ID:       v.Id(),
		Stage:    AckStage(v.Stage()),
		Code:     v.Code(),
		Message:  string(v.Message()),
		Readback: decodePoints(a.Readback[:0], v.ReadbackLength(), func(i int) (p fb.Point) { v.Readback(&p, i); return p }),
	}
	return nil
}

// decodePoints appends the n points that at returns to dst; nil for none.
func decodePoints(dst []Point, n int, at func(int) fb.Point) []Point {
	if n == 0 {
		return nil
	}
	for i := 0; i < n; i++ {
		p := at(i)
		dst = append(dst, PointOf(&p))
	}
	return dst
}

// PointOf copies the point p views into a Point. Nothing in the result
// aliases p's buffer.
func PointOf(p *fb.Point) Point {
	return Point{
		Tag:     string(p.Tag()),
		Alias:   p.Alias(),
		Value:   ValueOf(p),
		Quality: Quality(p.Quality()),
		ErrCode: p.ErrCode(),
		TsNs:    p.TsNs(),
		Flags:   PointFlags(p.Flags()),
	}
}

// ValueOf returns the value of the point p views. Only the field that the
// value type selects is set; a bool's Num is 0 or 1 whatever non-zero value
// was stored; Str and Bytes are copies (Bytes is nil when empty).
func ValueOf(p *fb.Point) Value {
	v := Value{Type: ValueType(p.Vtype())}
	switch v.Type {
	case TypeF64, TypeI64, TypeU64:
		v.Num = p.Num()
	case TypeBool:
		v.Num = boolNum(p.Num() != 0)
	case TypeString:
		v.Str = string(p.Str())
	case TypeBytes:
		if b := p.BytesBytes(); len(b) > 0 {
			v.Bytes = append([]byte(nil), b...)
		}
	}
	return v
}
