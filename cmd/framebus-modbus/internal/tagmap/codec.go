package tagmap

import (
	"fmt"
	"math"
	"strconv"

	"github.com/framebus/framebus/schema"
)

// ValueType returns the type of the values Decode returns for t.
func (t *Tag) ValueType() schema.ValueType {
	switch {
	case t.Type == Bool:
		return schema.TypeBool
	case t.Scaled(), t.Type == F32:
		return schema.TypeF64
	case t.Type == I16, t.Type == I32:
		return schema.TypeI64
	}
	return schema.TypeU64
}

// DecodeBit returns the value of a coil or discrete input.
func (t *Tag) DecodeBit(b bool) schema.Value { return schema.Bool(b) }

// Decode returns the value of t's registers; regs holds at least t.Words()
// registers starting at t.Address.
func (t *Tag) Decode(regs []uint16) schema.Value {
	var raw float64
	switch t.Type {
	case U16:
		if !t.Scaled() {
			return schema.U64(uint64(regs[0]))
		}
		raw = float64(regs[0])
	case I16:
		if !t.Scaled() {
			return schema.I64(int64(int16(regs[0])))
		}
		raw = float64(int16(regs[0]))
	case U32:
		u := t.join(regs)
		if !t.Scaled() {
			return schema.U64(uint64(u))
		}
		raw = float64(u)
	case I32:
		u := t.join(regs)
		if !t.Scaled() {
			return schema.I64(int64(int32(u)))
		}
		raw = float64(int32(u))
	case F32:
		raw = decimal32(math.Float32frombits(t.join(regs)))
		if !t.Scaled() {
			return schema.F64(raw)
		}
	default:
		return schema.Value{}
	}
	return schema.F64(t.scale(raw))
}

// join assembles a 32-bit value from two registers in t's word order.
func (t *Tag) join(regs []uint16) uint32 {
	if t.WordOrder == LowFirst {
		return uint32(regs[1])<<16 | uint32(regs[0])
	}
	return uint32(regs[0])<<16 | uint32(regs[1])
}

// split is join's inverse.
func (t *Tag) split(u uint32) []uint16 {
	hi, lo := uint16(u>>16), uint16(u)
	if t.WordOrder == LowFirst {
		return []uint16{lo, hi}
	}
	return []uint16{hi, lo}
}

// decimal32 returns the float64 nearest to the shortest decimal form of f,
// so that an f32 of 0.1 is published as 0.1 and not 0.10000000149011612.
func decimal32(f float32) float64 {
	if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
		return float64(f)
	}
	var buf [32]byte
	x, err := strconv.ParseFloat(string(strconv.AppendFloat(buf[:0], float64(f), 'g', -1, 32)), 64)
	if err != nil {
		return float64(f) // unreachable: AppendFloat's output parses
	}
	return x
}

// inverse returns 1/scale if it is an integer (scale 0.1 → 10), else 0.
func (t *Tag) inverse() float64 {
	if t.Scale == 0 || math.Abs(t.Scale) >= 1 {
		return 0
	}
	inv := 1 / t.Scale
	r := math.Round(inv)
	if math.Abs(inv-r) > 1e-9*math.Abs(r) {
		return 0
	}
	return r
}

// scale returns raw*scale + offset, dividing by 1/scale when that is an
// integer (exact for decimal scales).
func (t *Tag) scale(raw float64) float64 {
	s := t.Scale
	if s == 0 {
		s = 1
	}
	v := raw * s
	if inv := t.inverse(); inv != 0 {
		v = raw / inv
	}
	if t.Offset != 0 { // adding 0 would turn -0 into +0
		v += t.Offset
	}
	return v
}

// unscale returns (v - offset) / scale, multiplying by 1/scale when that is
// an integer.
func (t *Tag) unscale(v float64) float64 {
	s := t.Scale
	if s == 0 {
		s = 1
	}
	if inv := t.inverse(); inv != 0 {
		return (v - t.Offset) * inv
	}
	return (v - t.Offset) / s
}

// EncodeBit returns the state to write to a coil for v: a bool, or the
// integer 0 or 1.
func (t *Tag) EncodeBit(v schema.Value) (bool, error) {
	switch v.Type {
	case schema.TypeBool:
		return v.Bool(), nil
	case schema.TypeI64, schema.TypeU64:
		if v.Num == 0 || v.Num == 1 {
			return v.Num == 1, nil
		}
	}
	return false, fmt.Errorf("%w: %s: tag %q is a %s: want true or false (or 0, 1)", ErrValue, v, t.Name, t.Kind)
}

// Encode returns the registers to write to t for the engineering value v
// (f64, i64 or u64); see the package doc for scaling and rounding.
func (t *Tag) Encode(v schema.Value) ([]uint16, error) {
	var x float64
	exact := true // x is v exactly (false for i64/u64 beyond 2^53)
	switch v.Type {
	case schema.TypeF64:
		x = v.F64()
	case schema.TypeI64:
		x = float64(v.I64())
		exact = int64(x) == v.I64()
	case schema.TypeU64:
		x = float64(v.U64())
		exact = x < 1<<64 && uint64(x) == v.U64()
	default:
		return nil, fmt.Errorf("%w: %s: tag %q (%s) takes a number", ErrValue, v, t.Name, t.Type)
	}
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return nil, fmt.Errorf("%w: %s: tag %q takes a finite number", ErrValue, v, t.Name)
	}
	raw := t.unscale(x)
	if t.Type == F32 {
		if math.Abs(raw) > math.MaxFloat32 {
			return nil, fmt.Errorf("%w: %s is out of range for tag %q (f32%s)", ErrValue, v, t.Name, t.scaleNote())
		}
		return t.split(math.Float32bits(float32(raw))), nil
	}
	if t.Scaled() {
		raw = math.Round(raw)
	} else if raw != math.Trunc(raw) {
		return nil, fmt.Errorf("%w: %s: tag %q (%s) takes an integer", ErrValue, v, t.Name, t.Type)
	}
	lo, hi := t.rawRange()
	if !exact || raw < lo || raw > hi {
		a, b := t.scale(lo), t.scale(hi)
		if a > b { // a negative scale
			a, b = b, a
		}
		return nil, fmt.Errorf("%w: %s is out of range for tag %q (%s%s): %s..%s", ErrValue, v, t.Name, t.Type, t.scaleNote(),
			strconv.FormatFloat(a, 'f', -1, 64), strconv.FormatFloat(b, 'f', -1, 64))
	}
	switch t.Type {
	case U16:
		return []uint16{uint16(raw)}, nil
	case I16:
		return []uint16{uint16(int16(raw))}, nil
	case U32:
		return t.split(uint32(raw)), nil
	case I32:
		return t.split(uint32(int32(raw))), nil
	}
	return nil, fmt.Errorf("%w: tag %q has type %s, which takes no register value", ErrValue, t.Name, t.Type)
}

// rawRange returns the raw integer range of t's type.
func (t *Tag) rawRange() (lo, hi float64) {
	switch t.Type {
	case U16:
		return 0, math.MaxUint16
	case I16:
		return math.MinInt16, math.MaxInt16
	case U32:
		return 0, math.MaxUint32
	case I32:
		return math.MinInt32, math.MaxInt32
	}
	return 0, 0
}

func (t *Tag) scaleNote() string {
	if !t.Scaled() {
		return ""
	}
	s := ", scale " + strconv.FormatFloat(t.Scale, 'g', -1, 64)
	if t.Offset != 0 {
		s += ", offset " + strconv.FormatFloat(t.Offset, 'g', -1, 64)
	}
	return s
}
