package schema

import (
	"bytes"
	"errors"
	"math"
	"testing"
)

func TestTemplate(t *testing.T) {
	tags := []TemplateTag{
		{Tag: "speed", Alias: 11, Type: TypeF64},
		{Tag: "count", Type: TypeU64, Flags: FlagHistorical},
		{Tag: "delta", Type: TypeI64},
		{Tag: "running", Type: TypeBool},
		{Tag: "unset"},
	}
	tmpl, err := NewDataTemplate("modbus-1", "plc-17", tags)
	mustNil(t, err)
	if tmpl.NumPoints() != len(tags) || tmpl.Len() != len(tmpl.Bytes()) {
		t.Fatalf("NumPoints %d, Len %d, len(Bytes) %d", tmpl.NumPoints(), tmpl.Len(), len(tmpl.Bytes()))
	}

	// Initially: zero values of the declared types, GOOD, declared flags.
	want := DataFrame{Producer: "modbus-1", Device: "plc-17", Points: []Point{
		{Tag: "speed", Alias: 11, Value: F64(0)},
		{Tag: "count", Value: U64(0), Flags: FlagHistorical},
		{Tag: "delta", Value: I64(0)},
		{Tag: "running", Value: Bool(false)},
		{Tag: "unset"},
	}}
	var got DataFrame
	mustNil(t, DecodeDataFrame(tmpl.Bytes(), &got))
	mustEqual(t, got, want)

	tmpl.SetEpoch(9)
	tmpl.SetSeq(1 << 50)
	tmpl.SetF64(0, math.Pi)
	tmpl.SetQuality(0, QualityUncertain)
	tmpl.SetTs(0, -5)
	tmpl.SetU64(1, math.MaxUint64)
	tmpl.SetFlags(1, FlagTransient)
	tmpl.SetI64(2, math.MinInt64)
	tmpl.SetErrCode(2, 0xffff_ffff)
	tmpl.SetBool(3, true)
	tmpl.SetF64(4, 1) // changes the type too
	want.Epoch, want.Seq = 9, 1<<50
	want.Points[0].Value, want.Points[0].Quality, want.Points[0].TsNs = F64(math.Pi), QualityUncertain, -5
	want.Points[1].Value, want.Points[1].Flags = U64(math.MaxUint64), FlagTransient
	want.Points[2].Value, want.Points[2].ErrCode = I64(math.MinInt64), 0xffff_ffff
	want.Points[3].Value = Bool(true)
	want.Points[4].Value = F64(1)
	mustNil(t, DecodeDataFrame(tmpl.Bytes(), &got))
	mustEqual(t, got, want)

	tmpl.SetNone(0)
	tmpl.SetQuality(0, QualityBad)
	want.Points[0].Value, want.Points[0].Quality = Value{}, QualityBad
	mustNil(t, DecodeDataFrame(tmpl.Bytes(), &got))
	mustEqual(t, got, want)
	checkAccepted(t, KindData, tmpl.Bytes())

	// The template's frame decodes like an Encoder's frame of the same values.
	var e Encoder
	var viaEncoder DataFrame
	mustNil(t, DecodeDataFrame(e.EncodeData(&want), &viaEncoder))
	mustEqual(t, got, viaEncoder)
}

func TestTemplateCopyTo(t *testing.T) {
	tmpl, err := NewDataTemplate("p", "d", []TemplateTag{{Tag: "x", Type: TypeF64}})
	mustNil(t, err)
	tmpl.SetF64(0, 2)
	slot := make([]byte, tmpl.Len()+8)
	n, err := tmpl.CopyTo(slot)
	mustNil(t, err)
	if n != tmpl.Len() || !bytes.Equal(slot[:n], tmpl.Bytes()) {
		t.Fatalf("CopyTo copied %d bytes, want the %d-byte frame", n, tmpl.Len())
	}
	mustNil(t, VerifyDataFrame(slot[:n]))

	// The copy is independent of later changes.
	tmpl.SetF64(0, 3)
	var f DataFrame
	mustNil(t, DecodeDataFrame(slot[:n], &f))
	if f.Points[0].Value.F64() != 2 {
		t.Fatalf("copied frame changed to %v", f.Points[0].Value)
	}

	short := make([]byte, tmpl.Len()-1)
	if n, err := tmpl.CopyTo(short); !errors.Is(err, ErrShortBuffer) || n != 0 || !bytes.Equal(short, make([]byte, len(short))) {
		t.Fatalf("CopyTo into a short buffer: n=%d err=%v", n, err)
	}
}

func TestTemplateRejectsNonNumeric(t *testing.T) {
	for _, typ := range []ValueType{TypeString, TypeBytes, 7} {
		_, err := NewDataTemplate("p", "d", []TemplateTag{{Tag: "ok", Type: TypeF64}, {Tag: "bad", Type: typ}})
		if !errors.Is(err, ErrTemplateType) {
			t.Errorf("type %s: err = %v, want ErrTemplateType", typ, err)
		}
	}
}

func TestTemplateNoPoints(t *testing.T) {
	tmpl, err := NewDataTemplate("heartbeat", "", nil)
	mustNil(t, err)
	tmpl.SetSeq(3)
	var f DataFrame
	mustNil(t, DecodeDataFrame(tmpl.Bytes(), &f))
	mustEqual(t, f, DataFrame{Producer: "heartbeat", Seq: 3})
}

func TestTemplateIndexOutOfRangePanics(t *testing.T) {
	tmpl, err := NewDataTemplate("p", "d", []TemplateTag{{Tag: "x"}})
	mustNil(t, err)
	defer func() {
		if recover() == nil {
			t.Fatal("SetF64(1, …) on a 1-point template did not panic")
		}
	}()
	tmpl.SetF64(1, 0)
}

func TestTemplateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates")
	}
	tmpl, err := NewDataTemplate("p", "d", []TemplateTag{{Tag: "x", Type: TypeF64}})
	mustNil(t, err)
	dst := make([]byte, tmpl.Len())
	if a := testing.AllocsPerRun(100, func() {
		tmpl.SetSeq(1)
		tmpl.SetF64(0, 1)
		tmpl.SetQuality(0, QualityGood)
		tmpl.SetTs(0, 1)
		if _, err := tmpl.CopyTo(dst); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Fatalf("template update and copy: %v allocs/op, want 0", a)
	}
}
