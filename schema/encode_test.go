package schema

import (
	"bytes"
	"math"
	"testing"

	"github.com/framebus/framebus/schema/fb"
)

func TestRoundTripData(t *testing.T) {
	for _, f := range []*DataFrame{
		{},
		sampleData(1),
		sampleData(10),
		{Producer: "opcua-2", Device: "boiler", Epoch: math.MaxUint64, Seq: 1 << 40, Points: everyValue()},
	} {
		var e Encoder
		buf := e.EncodeData(f)
		if err := VerifyDataFrame(buf); err != nil {
			t.Fatalf("Verify: %v", err)
		}
		var got DataFrame
		mustNil(t, DecodeDataFrame(buf, &got))
		mustEqual(t, got, *f)
		checkAccepted(t, KindData, buf)
	}
}

func TestRoundTripCommand(t *testing.T) {
	for _, c := range []*Command{{}, sampleCommand(), {Kind: CommandRead, Points: samplePoints(3)}} {
		var e Encoder
		buf := e.EncodeCommand(c)
		if err := VerifyCommand(buf); err != nil {
			t.Fatalf("Verify: %v", err)
		}
		var got Command
		mustNil(t, DecodeCommand(buf, &got))
		mustEqual(t, got, *c)
		checkAccepted(t, KindCommand, buf)
	}
}

func TestRoundTripCommandAck(t *testing.T) {
	for _, a := range []*CommandAck{{}, sampleAck(), {Stage: AckExpired, Message: "deadline passed"}} {
		var e Encoder
		buf := e.EncodeCommandAck(a)
		if err := VerifyCommandAck(buf); err != nil {
			t.Fatalf("Verify: %v", err)
		}
		var got CommandAck
		mustNil(t, DecodeCommandAck(buf, &got))
		mustEqual(t, got, *a)
		checkAccepted(t, KindAck, buf)
	}
}

// TestGeneratedAccessorsReadEncoding reads an encoded point back through the
// generated accessors, field by field, so that a slot constant that has
// drifted from the schema shows up as a wrong value.
func TestGeneratedAccessorsReadEncoding(t *testing.T) {
	var e Encoder
	p := Point{
		Tag: "t", Alias: 1, Value: I64(-2), Quality: QualityStale,
		ErrCode: 3, TsNs: 4, Flags: FlagTransient,
	}
	v, err := ViewDataFrame(e.EncodeData(&DataFrame{Producer: "p", Device: "d", Epoch: 5, Seq: 6, Points: []Point{p}}))
	mustNil(t, err)
	var fp fb.Point
	if !v.Points(&fp, 0) {
		t.Fatal("no point")
	}
	got := []any{
		string(v.Producer()), string(v.Device()), v.Epoch(), v.Seq(), v.PointsLength(),
		string(fp.Tag()), fp.Alias(), fp.Vtype(), int64(fp.Num()), fp.Quality(), fp.ErrCode(), fp.TsNs(), fp.Flags(),
	}
	want := []any{
		"p", "d", uint64(5), uint64(6), 1,
		"t", uint64(1), fb.ValueTypeI64, int64(-2), fb.QualitySTALE, uint32(3), int64(4), fb.PointFlagstransient,
	}
	mustEqual(t, got, want)
}

func TestEncoderIgnoresUnselectedValueFields(t *testing.T) {
	var e Encoder
	f := &DataFrame{Points: []Point{
		{Tag: "a", Value: Value{Type: TypeF64, Num: 1, Str: "ignored", Bytes: []byte("ignored")}},
		{Tag: "b", Value: Value{Type: TypeString, Num: 99, Str: "s"}},
		{Tag: "c", Value: Value{Type: TypeBool, Num: 5}}, // any non-zero Num is true: stored as 1
	}}
	var got DataFrame
	mustNil(t, DecodeDataFrame(e.EncodeData(f), &got))
	mustEqual(t, got.Points, []Point{
		{Tag: "a", Value: Value{Type: TypeF64, Num: 1}},
		{Tag: "b", Value: String("s")},
		{Tag: "c", Value: Bool(true)},
	})
}

func TestEncoderReuseAndAppend(t *testing.T) {
	var e Encoder
	big := e.AppendData(nil, sampleData(10))
	small := e.AppendData(nil, sampleData(1))
	// A later, smaller encode must not leave traces of the earlier one.
	if got := e.EncodeData(sampleData(1)); !bytes.Equal(got, small) {
		t.Fatal("encoding depends on the previous frame")
	}
	if got := e.EncodeData(sampleData(10)); !bytes.Equal(got, big) {
		t.Fatal("encoding depends on the previous frame")
	}
	// Append output survives the next encode; Encode output is overwritten.
	prefix := []byte("record-header")
	out := e.AppendCommand(prefix, sampleCommand())
	cmd := append([]byte(nil), out[len(prefix):]...)
	e.EncodeCommandAck(sampleAck())
	if !bytes.Equal(out[len(prefix):], cmd) || !bytes.HasPrefix(out, prefix) {
		t.Fatal("AppendCommand output changed by a later encode")
	}
	mustNil(t, VerifyCommand(out[len(prefix):]))
	mustNil(t, VerifyCommandAck(e.AppendCommandAck(nil, sampleAck())))
}

func TestNewEncoder(t *testing.T) {
	for _, size := range []int{0, 1, 4096} {
		e := NewEncoder(size)
		var zero Encoder
		if got, want := e.EncodeData(sampleData(3)), zero.EncodeData(sampleData(3)); !bytes.Equal(got, want) {
			t.Fatalf("NewEncoder(%d) encodes differently from the zero Encoder", size)
		}
	}
}

// TestEncodeAllocs proves that the builder path allocates nothing once
// warmed up.
func TestEncodeAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates")
	}
	cmd, ack := sampleCommand(), sampleAck()
	for _, n := range []int{1, 10} {
		f := sampleData(n)
		var e Encoder
		e.EncodeData(f)
		if a := testing.AllocsPerRun(100, func() { e.EncodeData(f) }); a != 0 {
			t.Errorf("EncodeData with %d points: %v allocs/op, want 0", n, a)
		}
	}
	var e Encoder
	e.EncodeCommand(cmd)
	e.EncodeCommandAck(ack)
	if a := testing.AllocsPerRun(100, func() { e.EncodeCommand(cmd) }); a != 0 {
		t.Errorf("EncodeCommand: %v allocs/op, want 0", a)
	}
	if a := testing.AllocsPerRun(100, func() { e.EncodeCommandAck(ack) }); a != 0 {
		t.Errorf("EncodeCommandAck: %v allocs/op, want 0", a)
	}
	// Alternating kinds and sizes on one encoder stays allocation-free.
	small, large := sampleData(1), sampleData(10)
	if a := testing.AllocsPerRun(100, func() {
		e.EncodeData(large)
		e.EncodeCommand(cmd)
		e.EncodeData(small)
	}); a != 0 {
		t.Errorf("mixed encodes: %v allocs/op, want 0", a)
	}
}

func TestValue(t *testing.T) {
	if v := F64(-2.5); v.Type != TypeF64 || v.F64() != -2.5 {
		t.Errorf("F64: %+v", v)
	}
	if v := I64(-3); v.Type != TypeI64 || v.I64() != -3 || v.Num != math.MaxUint64-2 {
		t.Errorf("I64: %+v", v)
	}
	if v := U64(4); v.Type != TypeU64 || v.U64() != 4 {
		t.Errorf("U64: %+v", v)
	}
	if v := Bool(true); v.Type != TypeBool || !v.Bool() || v.Num != 1 {
		t.Errorf("Bool(true): %+v", v)
	}
	if v := Bool(false); v.Bool() || v.Num != 0 {
		t.Errorf("Bool(false): %+v", v)
	}
	if v := String("s"); v.Type != TypeString || v.Str != "s" {
		t.Errorf("String: %+v", v)
	}
	if v := Bytes([]byte("b")); v.Type != TypeBytes || string(v.Bytes) != "b" {
		t.Errorf("Bytes: %+v", v)
	}
	for _, tc := range []struct {
		v    Value
		want string
	}{
		{Value{}, "none"},
		{F64(1.5), "f64:1.5"},
		{I64(-1), "i64:-1"},
		{U64(2), "u64:2"},
		{Bool(true), "bool:true"},
		{String("a\"b"), `string:"a\"b"`},
		{Bytes([]byte{0, 'x'}), `bytes:"\x00x"`},
	} {
		if got := tc.v.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.v, got, tc.want)
		}
	}
}
