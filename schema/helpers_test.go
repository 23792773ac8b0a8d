package schema

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/framebus/framebus/schema/fb"
)

// everyValue holds one point per value type, with the edge values of each.
func everyValue() []Point {
	return []Point{
		{Tag: "none", Quality: QualityBad, ErrCode: 0x8007_0005},
		{Tag: "f64", Value: F64(21.5), TsNs: 1_700_000_000_123_456_789},
		{Tag: "f64.nan", Value: F64(math.NaN()), Quality: QualityUncertain},
		{Tag: "f64.-inf", Value: F64(math.Inf(-1))},
		{Tag: "f64.tiny", Value: F64(-1e-300)},
		{Tag: "i64", Alias: 7, Value: I64(math.MinInt64), TsNs: -1},
		{Tag: "u64", Alias: math.MaxUint64, Value: U64(math.MaxUint64), Flags: FlagHistorical},
		{Tag: "bool.true", Value: Bool(true), Flags: FlagHistorical | FlagTransient},
		{Tag: "bool.false", Value: Bool(false), Quality: QualityStale},
		{Tag: "string", Value: String("état \"quoted\" <tag> \x00 end")},
		{Tag: "string.empty", Value: String("")},
		{Tag: "bytes", Value: Bytes([]byte{0, 1, 2, 0xfe, 0xff})},
		{Tag: "", Value: Bytes(nil), Flags: FlagTransient}, // empty tag, empty bytes
	}
}

// samplePoints returns n numeric points as a typical driver publishes them.
func samplePoints(n int) []Point {
	ps := make([]Point, n)
	for i := range ps {
		ps[i] = Point{
			Tag:   "plant1/line2/motor" + string(rune('A'+i%26)) + "/speed",
			Alias: uint64(100 + i),
			Value: F64(1450.25 + float64(i)),
			TsNs:  1_700_000_000_000_000_000 + int64(i),
		}
	}
	return ps
}

func sampleData(n int) *DataFrame {
	return &DataFrame{Producer: "modbus-1", Device: "plc-17", Epoch: 3, Seq: 42, Points: samplePoints(n)}
}

func sampleCommand() *Command {
	return &Command{
		ID:         0xdead_beef_0001,
		Target:     "modbus-1",
		Device:     "plc-17",
		Kind:       CommandControl,
		Points:     everyValue(),
		DeadlineNs: 1_700_000_005_000_000_000,
		ReplyTo:    "app/hmi-3",
	}
}

func sampleAck() *CommandAck {
	return &CommandAck{
		ID:       0xdead_beef_0001,
		Stage:    AckFailed,
		Code:     503,
		Message:  "device busy: retry later",
		Readback: everyValue(),
	}
}

// sampleFrames returns a valid frame of every kind in several shapes,
// each an independent copy.
func sampleFrames() []struct {
	name string
	kind Kind
	buf  []byte
} {
	var e Encoder
	type frame = struct {
		name string
		kind Kind
		buf  []byte
	}
	tmpl, err := NewDataTemplate("modbus-1", "plc-17", []TemplateTag{
		{Tag: "speed", Type: TypeF64}, {Tag: "count", Alias: 9, Type: TypeU64, Flags: FlagTransient},
	})
	if err != nil {
		panic(err)
	}
	tmpl.SetSeq(7)
	tmpl.SetF64(0, 3.25)
	return []frame{
		{"data-empty", KindData, e.AppendData(nil, &DataFrame{})},
		{"data-1", KindData, e.AppendData(nil, sampleData(1))},
		{"data-10", KindData, e.AppendData(nil, sampleData(10))},
		{"data-every-value", KindData, e.AppendData(nil, &DataFrame{Producer: "p", Device: "d", Seq: 1, Points: everyValue()})},
		{"data-template", KindData, append([]byte(nil), tmpl.Bytes()...)},
		{"command-empty", KindCommand, e.AppendCommand(nil, &Command{})},
		{"command", KindCommand, e.AppendCommand(nil, sampleCommand())},
		{"ack-empty", KindAck, e.AppendCommandAck(nil, &CommandAck{})},
		{"ack", KindAck, e.AppendCommandAck(nil, sampleAck())},
	}
}

// walkAll calls every exported function and method that the generated code
// offers for reading the root table of kind in buf, and recursively for
// every table it reaches: vector accessors for every index below the
// vector's length, Mutate methods with the value already stored (so buf is
// unchanged). It fails the test if the generated code has grown a method it
// does not know how to call, so that "every accessor" stays true. It does
// not recover: a panic is a failure.
func walkAll(tb testing.TB, kind Kind, buf []byte) {
	tb.Helper()
	var root reflect.Value
	switch kind {
	case KindData:
		root = reflect.ValueOf(fb.GetRootAsDataFrame(buf, 0))
	case KindCommand:
		root = reflect.ValueOf(fb.GetRootAsCommand(buf, 0))
	case KindAck:
		root = reflect.ValueOf(fb.GetRootAsCommandAck(buf, 0))
	default:
		tb.Fatalf("walkAll: unknown kind %d", kind)
	}
	walkTable(tb, root)
}

var intType = reflect.TypeFor[int]()

func walkTable(tb testing.TB, tab reflect.Value) {
	tb.Helper()
	typ := tab.Type()
	length := func(name string) int {
		m := tab.MethodByName(name + "Length")
		if !m.IsValid() {
			tb.Fatalf("walkAll: %s.%s has no %sLength", typ, name, name)
		}
		return int(m.Call(nil)[0].Int())
	}
	for i := 0; i < typ.NumMethod(); i++ {
		name := typ.Method(i).Name
		m := tab.Method(i)
		mt := m.Type()
		switch {
		case name == "Init":
			t := tab.MethodByName("Table").Call(nil)[0].Interface().(flatbuffers.Table)
			m.Call([]reflect.Value{reflect.ValueOf(t.Bytes), reflect.ValueOf(t.Pos)})
		case strings.HasPrefix(name, "Mutate"):
			get := tab.MethodByName(strings.TrimPrefix(name, "Mutate"))
			switch mt.NumIn() {
			case 1:
				m.Call(get.Call(nil))
			case 2:
				for j := range length(strings.TrimPrefix(name, "Mutate")) {
					jv := reflect.ValueOf(j)
					m.Call([]reflect.Value{jv, get.Call([]reflect.Value{jv})[0]})
				}
			default:
				tb.Fatalf("walkAll: cannot call %s.%s%s", typ, name, mt)
			}
		case mt.NumIn() == 0:
			m.Call(nil)
		case mt.NumIn() == 1 && mt.In(0) == intType:
			for j := range length(name) {
				m.Call([]reflect.Value{reflect.ValueOf(j)})
			}
		case mt.NumIn() == 2 && mt.In(0).Kind() == reflect.Pointer && mt.In(1) == intType:
			for j := range length(name) {
				obj := reflect.New(mt.In(0).Elem())
				if ok := m.Call([]reflect.Value{obj, reflect.ValueOf(j)})[0].Bool(); !ok {
					tb.Fatalf("walkAll: %s.%s(%d) = false below its length", typ, name, j)
				}
				walkTable(tb, obj)
			}
		default:
			tb.Fatalf("walkAll: cannot call %s.%s%s", typ, name, mt)
		}
	}
}

// sentinels lists every error Verify may wrap.
var sentinels = []error{
	ErrUnknownKind, ErrTooShort, ErrTooLarge, ErrWrongType, ErrBadRoot, ErrBadVTable,
	ErrOutOfBounds, ErrMisaligned, ErrBadString, ErrBadVector, ErrBadEnum, ErrDepth,
	ErrTooManyTables,
}

// checkRejected fails unless err wraps exactly one of the sentinels.
func checkRejected(tb testing.TB, err error) {
	tb.Helper()
	n := 0
	for _, s := range sentinels {
		if errors.Is(err, s) {
			n++
		}
	}
	if n != 1 {
		tb.Fatalf("error %q wraps %d sentinels, want 1", err, n)
	}
}

// checkAccepted exercises everything a consumer may do with a buffer that
// Verify accepted: every generated accessor, decoding, the JSON rendering,
// and re-encoding the decoded frame, which must decode to the same thing.
func checkAccepted(tb testing.TB, kind Kind, buf []byte) {
	tb.Helper()
	walkAll(tb, kind, buf)

	js, err := AppendJSON(nil, kind, buf)
	if err != nil {
		tb.Fatalf("AppendJSON of a verified frame: %v", err)
	}
	var obj map[string]any
	if err := json.Unmarshal(js, &obj); err != nil {
		tb.Fatalf("AppendJSON produced invalid JSON %s: %v", js, err)
	}
	if obj["kind"] != kind.String() {
		tb.Fatalf("JSON kind = %v, want %q", obj["kind"], kind)
	}

	var e Encoder
	switch kind {
	case KindData:
		var a, b DataFrame
		mustNil(tb, DecodeDataFrame(buf, &a))
		mustNil(tb, DecodeDataFrame(e.EncodeData(&a), &b))
		mustEqual(tb, b, a)
	case KindCommand:
		var a, b Command
		mustNil(tb, DecodeCommand(buf, &a))
		mustNil(tb, DecodeCommand(e.EncodeCommand(&a), &b))
		mustEqual(tb, b, a)
	case KindAck:
		var a, b CommandAck
		mustNil(tb, DecodeCommandAck(buf, &a))
		mustNil(tb, DecodeCommandAck(e.EncodeCommandAck(&a), &b))
		mustEqual(tb, b, a)
	}
}

func mustNil(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

func mustEqual[T any](tb testing.TB, got, want T) {
	tb.Helper()
	if !reflect.DeepEqual(got, want) {
		tb.Fatalf("got  %+v\nwant %+v", got, want)
	}
}
