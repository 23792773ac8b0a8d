package schema

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
)

func TestAppendJSONData(t *testing.T) {
	var e Encoder
	buf := e.EncodeData(&DataFrame{
		Producer: "plc1", Device: "d1", Epoch: 1, Seq: 5,
		Points: []Point{
			{Tag: "t", Value: F64(1.5), TsNs: 1700000000000000000, Flags: FlagHistorical},
			{Tag: "n", Alias: 9, Quality: QualityBad, ErrCode: 17},
		},
	})
	got, err := AppendJSON([]byte("prefix "), KindData, buf)
	mustNil(t, err)
	want := `prefix {"kind":"data","producer":"plc1","device":"d1","epoch":1,"seq":5,"points":[` +
		`{"tag":"t","alias":0,"type":"f64","value":1.5,"quality":"GOOD","err_code":0,"ts_ns":1700000000000000000,"flags":["historical"]},` +
		`{"tag":"n","alias":9,"type":"none","value":null,"quality":"BAD","err_code":17,"ts_ns":0,"flags":[]}]}`
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestAppendJSONCommandAndAck(t *testing.T) {
	var e Encoder
	got, err := AppendJSON(nil, KindCommand, e.EncodeCommand(&Command{
		ID: 7, Target: "drv", Device: "dev", Kind: CommandRead, DeadlineNs: -1, ReplyTo: "me",
		Points: []Point{{Tag: "x", Value: U64(math.MaxUint64)}},
	}))
	mustNil(t, err)
	want := `{"kind":"command","id":7,"target":"drv","device":"dev","command_kind":"READ","deadline_ns":-1,"reply_to":"me","points":[` +
		`{"tag":"x","alias":0,"type":"u64","value":18446744073709551615,"quality":"GOOD","err_code":0,"ts_ns":0,"flags":[]}]}`
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}

	got, err = AppendJSON(nil, KindAck, e.EncodeCommandAck(&CommandAck{
		ID: 7, Stage: AckCompleted, Code: 0, Message: "ok",
		Readback: []Point{{Tag: "x", Value: I64(-3), Flags: FlagHistorical | FlagTransient}},
	}))
	mustNil(t, err)
	want = `{"kind":"ack","id":7,"stage":"COMPLETED","code":0,"message":"ok","readback":[` +
		`{"tag":"x","alias":0,"type":"i64","value":-3,"quality":"GOOD","err_code":0,"ts_ns":0,"flags":["historical","transient"]}]}`
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	got, err = AppendJSON(nil, KindAck, e.EncodeCommandAck(&CommandAck{}))
	mustNil(t, err)
	if want := `{"kind":"ack","id":0,"stage":"ACCEPTED","code":0,"message":"","readback":[]}`; string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// TestAppendJSONValues checks the rendering of every value type by decoding
// the JSON with encoding/json.
func TestAppendJSONValues(t *testing.T) {
	for _, tc := range []struct {
		v    Value
		want any // as encoding/json decodes it with UseNumber
	}{
		{Value{}, nil},
		{F64(-0.1), json.Number("-0.1")},
		{F64(1e21), json.Number("1e+21")},
		{F64(1e-7), json.Number("1e-7")},
		{F64(123456789), json.Number("123456789")},
		{F64(math.NaN()), "NaN"},
		{F64(math.Inf(1)), "+Inf"},
		{F64(math.Inf(-1)), "-Inf"},
		{I64(math.MinInt64), json.Number("-9223372036854775808")},
		{U64(math.MaxUint64), json.Number("18446744073709551615")},
		{Bool(true), true},
		{Bool(false), false},
		{String(""), ""},
		{String("a \"b\" \\ <c> & é \u2028 \x01"), "a \"b\" \\ <c> & é \u2028 \x01"},
		{String("\xff"), "\ufffd"},
		{Bytes([]byte{0xfb, 0xff, 0x00}), "+/8A"},
		{Bytes(nil), ""},
	} {
		var e Encoder
		js, err := AppendJSON(nil, KindData, e.EncodeData(&DataFrame{Points: []Point{{Value: tc.v}}}))
		mustNil(t, err)
		var frame struct {
			Points []struct {
				Type  string
				Value any
			}
		}
		d := json.NewDecoder(bytes.NewReader(js))
		d.UseNumber()
		if err := d.Decode(&frame); err != nil {
			t.Fatalf("%v: invalid JSON %s: %v", tc.v, js, err)
		}
		if p := frame.Points[0]; p.Type != tc.v.Type.String() || p.Value != tc.want {
			t.Errorf("%v: type %q value %#v, want %q %#v (%s)", tc.v, p.Type, p.Value, tc.v.Type, tc.want, js)
		}
	}
}

// TestAppendJSONFloatMatchesEncodingJSON holds appendJSONFloat to
// encoding/json's formatting of finite float64s.
func TestAppendJSONFloatMatchesEncodingJSON(t *testing.T) {
	xs := []float64{0, math.Copysign(0, -1), 1, -1, 0.1, 1.5, 1e20, 1e21, 1.5e21, 1e-6, 9.99e-7, 1e-7, 5e-324,
		math.MaxFloat64, -math.MaxFloat64, math.SmallestNonzeroFloat64, 123456789.123456789, 1 << 53, 1e100, 1e-100}
	for _, x := range xs {
		want, err := json.Marshal(x)
		mustNil(t, err)
		if got := appendJSONFloat(nil, x); string(got) != string(want) {
			t.Errorf("%v: got %s, encoding/json %s", x, got, want)
		}
	}
}

// TestAppendJSONStringMatchesEncodingJSON holds appendJSONString (fast path
// included) to encoding/json without HTML escaping, for every byte value
// alone and inside printable text.
func TestAppendJSONStringMatchesEncodingJSON(t *testing.T) {
	var inputs []string
	for c := range 256 {
		inputs = append(inputs, string([]byte{byte(c)}), "ab"+string([]byte{byte(c)})+"cd")
	}
	inputs = append(inputs, "", "plain/tag.name-1", "é", "\u2028\u2029", "<>&", "\xed\xa0\x80", "a\x00b")
	for _, s := range inputs {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		mustNil(t, enc.Encode(s))
		got := appendJSONString([]byte("x"), []byte(s))
		if string(got) != "x"+strings.TrimSuffix(want.String(), "\n") {
			t.Errorf("%q: got %s, encoding/json %s", s, got[1:], want.String())
		}
	}
}

func TestAppendJSONRejects(t *testing.T) {
	var e Encoder
	buf := e.EncodeData(sampleData(1))
	dst := []byte("keep")
	for _, tc := range []struct {
		kind Kind
		buf  []byte
		want error
	}{
		{KindCommand, buf, ErrWrongType},
		{Kind(0), buf, ErrUnknownKind},
		{KindData, buf[:6], ErrTooShort},
	} {
		got, err := AppendJSON(dst, tc.kind, tc.buf)
		if !errors.Is(err, tc.want) {
			t.Errorf("kind %v: err = %v, want %v", tc.kind, err, tc.want)
		}
		if string(got) != "keep" {
			t.Errorf("kind %v: dst changed to %q on error", tc.kind, got)
		}
	}
}

func TestAppendDeliveredJSON(t *testing.T) {
	buf := NewEncoder(0).EncodeData(sampleData(1))
	plain, err := AppendJSON(nil, KindData, buf)
	if err != nil {
		t.Fatal(err)
	}
	got, err := AppendDeliveredJSON([]byte("x"), 42, KindData, buf)
	if err != nil {
		t.Fatal(err)
	}
	want := `x{"wal_seq":42,` + string(plain[1:])
	if string(got) != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	var m map[string]any
	if err := json.Unmarshal(got[1:], &m); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	if m["wal_seq"] != float64(42) || m["kind"] != "data" {
		t.Fatalf("wal_seq/kind: %v %v", m["wal_seq"], m["kind"])
	}
	if _, err := AppendDeliveredJSON(nil, 1, KindData, buf[:8]); err == nil {
		t.Fatal("a truncated frame was rendered")
	}
}
