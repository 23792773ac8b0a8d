package tagmap

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/framebus/framebus/schema"
)

// tag returns a tag with defaults applied.
func tag(typ Type, order WordOrder, scale, offset float64) *Tag {
	m := Map{Tags: []Tag{{Name: "t", Kind: Holding, Type: typ, WordOrder: order, Scale: scale, Offset: offset}}}
	m.EnsureDefaults()
	return &m.Tags[0]
}

func TestDecode(t *testing.T) {
	f32 := func(f float32, order WordOrder) []uint16 {
		u := math.Float32bits(f)
		if order == LowFirst {
			return []uint16{uint16(u), uint16(u >> 16)}
		}
		return []uint16{uint16(u >> 16), uint16(u)}
	}
	for _, tc := range []struct {
		name string
		tag  *Tag
		regs []uint16
		want schema.Value
	}{
		{"u16", tag(U16, "", 0, 0), []uint16{65535}, schema.U64(65535)},
		{"i16 negative", tag(I16, "", 0, 0), []uint16{0xff38}, schema.I64(-200)},
		{"i16 scaled", tag(I16, "", 0.1, 0), []uint16{0xff38}, schema.F64(-20)},
		{"u16 scale 0.1 is exact", tag(U16, "", 0.1, 0), []uint16{215}, schema.F64(21.5)},
		{"u16 scale 0.1, 3", tag(U16, "", 0.1, 0), []uint16{3}, schema.F64(0.3)},
		{"u16 scale 0.01", tag(U16, "", 0.01, 0), []uint16{12345}, schema.F64(123.45)},
		{"u16 offset", tag(U16, "", 0, -40), []uint16{65}, schema.F64(25)},
		{"u16 scale 2.5 offset 1", tag(U16, "", 2.5, 1), []uint16{4}, schema.F64(11)},
		{"u32 high first", tag(U32, "", 0, 0), []uint16{0x0001, 0x86a0}, schema.U64(100000)},
		{"u32 low first", tag(U32, LowFirst, 0, 0), []uint16{0x86a0, 0x0001}, schema.U64(100000)},
		{"i32", tag(I32, "", 0, 0), []uint16{0xffff, 0xfffe}, schema.I64(-2)},
		{"i32 low first scaled", tag(I32, LowFirst, 0.001, 0), []uint16{0xfc18, 0xffff}, schema.F64(-1)},
		{"f32 shortest decimal", tag(F32, "", 0, 0), f32(0.1, HighFirst), schema.F64(0.1)},
		{"f32 low first", tag(F32, LowFirst, 0, 0), f32(-1234.5, LowFirst), schema.F64(-1234.5)},
		{"f32 scaled", tag(F32, "", 1000, 0), f32(1.5, HighFirst), schema.F64(1500)},
	} {
		got := tc.tag.Decode(tc.regs)
		if got.Type != tc.want.Type || got.Num != tc.want.Num {
			t.Errorf("%s: Decode(%#04x) = %v, want %v", tc.name, tc.regs, got, tc.want)
		}
		if got.Type != tc.tag.ValueType() {
			t.Errorf("%s: value type %v, ValueType() says %v", tc.name, got.Type, tc.tag.ValueType())
		}
	}
	bit := &Tag{Name: "b", Kind: Coil, Type: Bool}
	if v := bit.DecodeBit(true); v.Type != schema.TypeBool || !v.Bool() || bit.ValueType() != schema.TypeBool {
		t.Errorf("DecodeBit(true) = %v", v)
	}
}

func TestEncode(t *testing.T) {
	for _, tc := range []struct {
		name string
		tag  *Tag
		v    schema.Value
		want []uint16
	}{
		{"u16 from i64", tag(U16, "", 0, 0), schema.I64(1500), []uint16{1500}},
		{"u16 from u64", tag(U16, "", 0, 0), schema.U64(65535), []uint16{65535}},
		{"u16 from integral f64", tag(U16, "", 0, 0), schema.F64(7), []uint16{7}},
		{"i16 negative", tag(I16, "", 0, 0), schema.I64(-200), []uint16{0xff38}},
		{"i16 scaled", tag(I16, "", 0.1, 0), schema.F64(-20), []uint16{0xff38}},
		{"scaled exact decimal", tag(U16, "", 0.1, 0), schema.F64(21.5), []uint16{215}},
		{"scaled rounds to the nearest step", tag(U16, "", 0.1, 0), schema.F64(21.56), []uint16{216}},
		{"offset", tag(U16, "", 0, -40), schema.I64(25), []uint16{65}},
		{"u32 high first", tag(U32, "", 0, 0), schema.I64(100000), []uint16{0x0001, 0x86a0}},
		{"u32 low first", tag(U32, LowFirst, 0, 0), schema.I64(100000), []uint16{0x86a0, 0x0001}},
		{"u32 max", tag(U32, "", 0, 0), schema.U64(math.MaxUint32), []uint16{0xffff, 0xffff}},
		{"i32 min", tag(I32, "", 0, 0), schema.I64(math.MinInt32), []uint16{0x8000, 0x0000}},
		{"f32", tag(F32, "", 0, 0), schema.F64(-1234.5), []uint16{0xc49a, 0x5000}},
		{"f32 low first from i64", tag(F32, LowFirst, 0, 0), schema.I64(1), []uint16{0x0000, 0x3f80}},
	} {
		got, err := tc.tag.Encode(tc.v)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: Encode(%v) = %#04x, %v; want %#04x", tc.name, tc.v, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		name string
		tag  *Tag
		v    schema.Value
		want string
	}{
		{"u16 too large", tag(U16, "", 0, 0), schema.I64(65536), "out of range for tag \"t\" (u16): 0..65535"},
		{"u16 negative", tag(U16, "", 0, 0), schema.I64(-1), "out of range"},
		{"i16 too small", tag(I16, "", 0, 0), schema.I64(-32769), "(i16): -32768..32767"},
		{"scaled range in engineering units", tag(I16, "", 0.1, 0), schema.F64(3276.8), "(i16, scale 0.1): -3276.8..3276.7"},
		{"negative scale range ordered", tag(I16, "", -1, 0), schema.F64(40000), "(i16, scale -1): -32767..32768"},
		{"offset in the note", tag(U16, "", 0.5, 10), schema.F64(-1), "(u16, scale 0.5, offset 10): 10..32777.5"},
		{"u32 beyond", tag(U32, "", 0, 0), schema.U64(1 << 32), "(u32): 0..4294967295"},
		{"i64 beyond 2^53 is not rounded", tag(U32, "", 0, 0), schema.I64(1<<53 + 1), "out of range"},
		{"not an integer", tag(U16, "", 0, 0), schema.F64(1.5), "takes an integer"},
		{"NaN", tag(F32, "", 0, 0), schema.F64(math.NaN()), "finite number"},
		{"infinity", tag(U16, "", 0.1, 0), schema.F64(math.Inf(1)), "finite number"},
		{"f32 overflow", tag(F32, "", 0, 0), schema.F64(1e39), "out of range for tag \"t\" (f32)"},
		{"bool to a register", tag(U16, "", 0, 0), schema.Bool(true), "takes a number"},
		{"string", tag(U16, "", 0, 0), schema.String("12"), "takes a number"},
	} {
		got, err := tc.tag.Encode(tc.v)
		if !errors.Is(err, ErrValue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Encode(%v) = %v, %v; want ErrValue with %q", tc.name, tc.v, got, err, tc.want)
		}
	}
	coil := &Tag{Name: "c", Kind: Coil, Type: Bool}
	for _, tc := range []struct {
		v    schema.Value
		want bool
	}{{schema.Bool(true), true}, {schema.Bool(false), false}, {schema.I64(1), true}, {schema.U64(0), false}} {
		if got, err := coil.EncodeBit(tc.v); err != nil || got != tc.want {
			t.Errorf("EncodeBit(%v) = %v, %v", tc.v, got, err)
		}
	}
	for _, v := range []schema.Value{schema.I64(2), schema.F64(1), schema.String("on")} {
		if _, err := coil.EncodeBit(v); !errors.Is(err, ErrValue) {
			t.Errorf("EncodeBit(%v): %v, want ErrValue", v, err)
		}
	}
}

// TestEncodeDecodeRoundTrip writes what was read: every raw value of a
// sample comes back the same through Decode then Encode.
func TestEncodeDecodeRoundTrip(t *testing.T) {
	samples := []uint16{0, 1, 2, 99, 215, 0x7fff, 0x8000, 0xff38, 0xfffe, 0xffff}
	for _, tg := range []*Tag{
		tag(U16, "", 0, 0), tag(I16, "", 0, 0), tag(U16, "", 0.1, 0), tag(I16, "", 0.01, -5), tag(U16, "", 2.5, 0),
		tag(U32, "", 0, 0), tag(I32, LowFirst, 0, 0), tag(U32, "", 0.001, 0), tag(F32, "", 0, 0), tag(F32, LowFirst, 0.1, 0),
	} {
		for _, a := range samples {
			for _, b := range samples {
				regs := []uint16{a, b}[:tg.Words()]
				if tg.Type == F32 {
					if f := math.Float32frombits(tg.join(regs)); math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
						continue
					}
				}
				v := tg.Decode(regs)
				back, err := tg.Encode(v)
				if err != nil || !slices.Equal(back, regs) {
					t.Errorf("%s %s scale %v offset %v: %#04x → %v → %#04x, %v", tg.Type, tg.WordOrder, tg.Scale, tg.Offset, regs, v, back, err)
				}
				if tg.Words() == 1 {
					break
				}
			}
		}
	}
}

func TestGroups(t *testing.T) {
	mk := func(kind Kind, addr int, typ Type) *Tag { return &Tag{Name: "x", Kind: kind, Address: addr, Type: typ} }
	tags := []*Tag{
		mk(Input, 4, F32),    // 0: 4-5
		mk(Input, 0, I16),    // 1: 0
		mk(Input, 1, U32),    // 2: 1-2
		mk(Holding, 0, U16),  // 3
		mk(Input, 3, U16),    // 4: 3
		mk(Holding, 10, U16), // 5: gap of 9 after 0
		mk(Coil, 0, Bool),    // 6
		mk(Coil, 1, Bool),    // 7
		mk(Input, 5, U16),    // 8: overlaps 0's second register
		mk(Discrete, 7, Bool),
	}
	got := fmtGroups(Groups(tags, 0))
	want := "coil 0..1 [6 7]; discrete 7..7 [9]; holding 0..0 [3]; holding 10..10 [5]; input 0..5 [1 2 4 0 8]"
	if got != want {
		t.Errorf("max_gap 0:\n got %s\nwant %s", got, want)
	}
	got = fmtGroups(Groups(tags, 9))
	want = "coil 0..1 [6 7]; discrete 7..7 [9]; holding 0..10 [3 5]; input 0..5 [1 2 4 0 8]"
	if got != want {
		t.Errorf("max_gap 9:\n got %s\nwant %s", got, want)
	}
	// A request holds at most MaxReadRegisters registers.
	var many []*Tag
	for a := 0; a < 300; a += 2 {
		many = append(many, mk(Holding, a, U32))
	}
	gs := Groups(many, 0)
	total := 0
	for _, g := range gs {
		if g.Count > MaxReadRegisters {
			t.Errorf("group %v exceeds %d registers", g, MaxReadRegisters)
		}
		total += len(g.Tags)
	}
	if len(gs) != 3 || total != len(many) {
		t.Errorf("300 contiguous registers: %d groups with %d tags, want 3 with %d", len(gs), total, len(many))
	}
	var bits []*Tag
	for a := 0; a < 2500; a++ {
		bits = append(bits, mk(Coil, a, Bool))
	}
	if gs := Groups(bits, 0); len(gs) != 2 || gs[0].Count != MaxReadBits || gs[1].Count != 500 {
		t.Errorf("2500 coils: %s", fmtGroups(gs))
	}
}

func fmtGroups(gs []Group) string {
	parts := make([]string, len(gs))
	for i, g := range gs {
		parts[i] = fmt.Sprintf("%s %d..%d %v", g.Kind, g.Start, int(g.Start)+int(g.Count)-1, g.Tags)
	}
	return strings.Join(parts, "; ")
}
