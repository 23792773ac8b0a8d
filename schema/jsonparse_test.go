package schema

import (
	"errors"
	"math"
	"strings"
	"testing"
)

// roundTripFrames returns a frame of every kind in several shapes, and
// frames holding every value type with its edge values.
func roundTripFrames() []struct {
	name string
	kind Kind
	buf  []byte
} {
	frames := sampleFrames()
	var e Encoder
	edge := []Value{
		F64(0), F64(math.Copysign(0, -1)), F64(1e21), F64(1e-7), F64(5e-324), F64(math.MaxFloat64),
		F64(-math.MaxFloat64), F64(math.Inf(1)), F64(0.1), F64(123456789.123456789),
		I64(0), I64(math.MaxInt64), U64(0), U64(1 << 63),
		String("é \u2028 \t\n \\ / <&>"), String("\ufffd"), Bytes([]byte("\x00")), Bytes(make([]byte, 1000)),
	}
	for _, v := range edge {
		frames = append(frames, struct {
			name string
			kind Kind
			buf  []byte
		}{"value-" + v.String(), KindData, e.AppendData(nil, &DataFrame{Points: []Point{{Tag: "x", Value: v}}})})
	}
	for _, k := range []CommandKind{CommandWrite, CommandRead} {
		c := sampleCommand()
		c.Kind = k
		frames = append(frames, struct {
			name string
			kind Kind
			buf  []byte
		}{"command-" + k.String(), KindCommand, e.AppendCommand(nil, c)})
	}
	for s := AckAccepted; s <= AckFailed; s++ {
		frames = append(frames, struct {
			name string
			kind Kind
			buf  []byte
		}{"ack-" + s.String(), KindAck, e.AppendCommandAck(nil, &CommandAck{ID: 1, Stage: s, Readback: samplePoints(2)})})
	}
	return frames
}

// TestParseJSONRoundTrip: AppendJSON → ParseJSON → AppendJSON gives the
// same JSON, for every kind and every value type, with and without wal_seq.
func TestParseJSONRoundTrip(t *testing.T) {
	for _, f := range roundTripFrames() {
		js, err := AppendJSON(nil, f.kind, f.buf)
		mustNil(t, err)
		delivered, err := AppendDeliveredJSON(nil, 1<<40, f.kind, f.buf)
		mustNil(t, err)
		for _, in := range [][]byte{js, delivered, append(append([]byte(" \t"), js...), "\r\n"...)} {
			kind, buf, err := ParseJSON(in)
			if err != nil {
				t.Fatalf("%s: ParseJSON(%s): %v", f.name, in, err)
			}
			if kind != f.kind {
				t.Fatalf("%s: kind %v, want %v", f.name, kind, f.kind)
			}
			again, err := AppendJSON(nil, kind, buf)
			if err != nil {
				t.Fatalf("%s: the parsed frame does not verify: %v", f.name, err)
			}
			if string(again) != string(js) {
				t.Fatalf("%s: round trip changed the JSON\nin  %s\nout %s", f.name, js, again)
			}
		}
	}
}

// TestParseJSONInvalidUTF8: invalid UTF-8, which the rendering replaces by
// U+FFFD (written as the escape \ufffd), does not survive the round trip;
// the frame parsed holds U+FFFD itself, whose rendering is then a fixed
// point.
func TestParseJSONInvalidUTF8(t *testing.T) {
	var e Encoder
	js, err := AppendJSON(nil, KindData, e.EncodeData(&DataFrame{Producer: "\xff", Points: []Point{{Tag: "t", Value: String("a\xffb")}}}))
	mustNil(t, err)
	_, buf, err := ParseJSON(js)
	mustNil(t, err)
	var f DataFrame
	mustNil(t, DecodeDataFrame(buf, &f))
	if f.Producer != "\ufffd" || f.Points[0].Value.Str != "a\ufffdb" {
		t.Fatalf("decoded %+v", f)
	}
	js2, err := AppendJSON(nil, KindData, buf)
	mustNil(t, err)
	_, buf, err = ParseJSON(js2)
	mustNil(t, err)
	js3, err := AppendJSON(nil, KindData, buf)
	mustNil(t, err)
	if string(js3) != string(js2) {
		t.Fatalf("not a fixed point:\n%s\n%s", js2, js3)
	}
}

// TestParseJSONLenient checks the documented defaults: omitted members are
// zero and an omitted type is inferred from the value.
func TestParseJSONLenient(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{}`, `{"kind":"data","producer":"","device":"","epoch":0,"seq":0,"points":[]}`},
		{`{"producer":"p","points":[{"tag":"a","value":1},{"tag":"b","value":-2},{"tag":"c","value":1.5},` +
			`{"tag":"d","value":1e3},{"tag":"e","value":18446744073709551615},{"tag":"f","value":true},` +
			`{"tag":"g","value":"on"},{"tag":"h","value":null},{"tag":"i"}]}`,
			`{"kind":"data","producer":"p","device":"","epoch":0,"seq":0,"points":[` +
				`{"tag":"a","alias":0,"type":"i64","value":1,"quality":"GOOD","err_code":0,"ts_ns":0,"flags":[]},` +
				`{"tag":"b","alias":0,"type":"i64","value":-2,"quality":"GOOD","err_code":0,"ts_ns":0,"flags":[]},` +
				`{"tag":"c","alias":0,"type":"f64","value":1.5,"quality":"GOOD","err_code":0,"ts_ns":0,"flags":[]},` +
				`{"tag":"d","alias":0,"type":"f64","value":1000,"quality":"GOOD","err_code":0,"ts_ns":0,"flags":[]},` +
				`{"tag":"e","alias":0,"type":"u64","value":18446744073709551615,"quality":"GOOD","err_code":0,"ts_ns":0,"flags":[]},` +
				`{"tag":"f","alias":0,"type":"bool","value":true,"quality":"GOOD","err_code":0,"ts_ns":0,"flags":[]},` +
				`{"tag":"g","alias":0,"type":"string","value":"on","quality":"GOOD","err_code":0,"ts_ns":0,"flags":[]},` +
				`{"tag":"h","alias":0,"type":"none","value":null,"quality":"GOOD","err_code":0,"ts_ns":0,"flags":[]},` +
				`{"tag":"i","alias":0,"type":"none","value":null,"quality":"GOOD","err_code":0,"ts_ns":0,"flags":[]}]}`},
		{`{"kind":"command","target":"drv","points":[{"tag":"sp","type":"f64","value":2}]}`,
			`{"kind":"command","id":0,"target":"drv","device":"","command_kind":"WRITE","deadline_ns":0,"reply_to":"","points":[` +
				`{"tag":"sp","alias":0,"type":"f64","value":2,"quality":"GOOD","err_code":0,"ts_ns":0,"flags":[]}]}`},
		{`{"kind":"ack","id":9}`, `{"kind":"ack","id":9,"stage":"ACCEPTED","code":0,"message":"","readback":[]}`},
		{`{"wal_seq":"ignored","kind":"ack","id":9,"stage":"COMPLETED"}`, `{"kind":"ack","id":9,"stage":"COMPLETED","code":0,"message":"","readback":[]}`},
	} {
		kind, buf, err := ParseJSON([]byte(tc.in))
		if err != nil {
			t.Fatalf("%s: %v", tc.in, err)
		}
		got, err := AppendJSON(nil, kind, buf)
		mustNil(t, err)
		if string(got) != tc.want {
			t.Errorf("%s:\ngot  %s\nwant %s", tc.in, got, tc.want)
		}
	}
}

func TestParseJSONErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{``, "empty input"},
		{"  \n", "empty input"},
		{`null`, "not a JSON object"},
		{`[1]`, "not a JSON object"},
		{`{"kind":"data"`, "unexpected end of JSON input"},
		{`{"kind":"data"} {}`, "after top-level value"},
		{`{"kind":"data",}`, "at byte"},
		{`{"kind":"event"}`, `kind: "event" is not one of data, command, ack`},
		{`{"kind":3}`, "kind: number does not fit a string"},
		{`{"kind":"data","stage":"COMPLETED"}`, `unknown field "stage"`},
		{`{"poinst":[]}`, `unknown field "poinst"`},
		{`{"epoch":-1}`, "epoch: number -1 does not fit a uint64"},
		{`{"seq":1.5}`, "seq: number 1.5 does not fit a uint64"},
		{`{"points":{}}`, "points: object does not fit a []schema.jsonPoint"},
		{`{"points":[{"tag":1}]}`, "points.tag: number does not fit a string"},
		{`{"points":[{"err_code":4294967296}]}`, "points.err_code: number 4294967296 does not fit a uint32"},
		{`{"points":[{"tag":"a","quality":"good"}]}`, `points[0].quality: "good" is not one of GOOD, UNCERTAIN, BAD, STALE`},
		{`{"points":[{},{"flags":["historical","sticky"]}]}`, `points[1].flags: "sticky" is not one of historical, transient`},
		{`{"points":[{"type":"float","value":1}]}`, `points[0].type: "float" is not one of none, f64`},
		{`{"points":[{"type":"f64"}]}`, "points[0].value: null (or missing) for type f64"},
		{`{"points":[{"type":"none","value":0}]}`, "points[0].value: 0 is not null (type none)"},
		{`{"points":[{"type":"f64","value":"1.5"}]}`, `points[0].value: "1.5" is not an f64`},
		{`{"points":[{"type":"f64","value":"Infinity"}]}`, `points[0].value: "Infinity" is not an f64`},
		{`{"points":[{"type":"f64","value":1e400}]}`, "points[0].value: 1e400 is not an f64 (out of the float64 range)"},
		{`{"points":[{"type":"i64","value":1.0}]}`, "points[0].value: 1.0 is not an i64"},
		{`{"points":[{"type":"i64","value":9223372036854775808}]}`, "is not an i64"},
		{`{"points":[{"value":-9223372036854775809}]}`, "is not an i64"},
		{`{"points":[{"type":"u64","value":-1}]}`, "points[0].value: -1 is not a u64"},
		{`{"points":[{"type":"u64","value":"1"}]}`, `points[0].value: "1" is not a u64`},
		{`{"points":[{"type":"bool","value":1}]}`, "points[0].value: 1 is not a bool (true or false)"},
		{`{"points":[{"type":"string","value":1}]}`, "points[0].value: 1 is not a string"},
		{`{"points":[{"type":"bytes","value":"AAE"}]}`, "is not bytes in standard base64 with padding"},
		{`{"points":[{"type":"bytes","value":"-_8="}]}`, "is not bytes in standard base64 with padding"},
		{`{"points":[{"type":"bytes","value":[0,1]}]}`, "is not bytes (a string in standard base64"},
		{`{"points":[{"type":"bool","value":"` + strings.Repeat("x", 100) + `"}]}`, "xxxxx…"},
		{`{"kind":"command","command_kind":"write"}`, `command_kind: "write" is not one of WRITE, READ, CONTROL`},
		{`{"kind":"command","producer":"p"}`, `unknown field "producer"`},
		{`{"kind":"command","points":[{"type":"i64","value":"x"}]}`, `points[0].value: "x" is not an i64`},
		{`{"kind":"ack","stage":"DONE"}`, `stage: "DONE" is not one of ACCEPTED, COMPLETED`},
		{`{"kind":"ack","code":-3}`, "code: number -3 does not fit a uint32"},
		{`{"kind":"ack","points":[]}`, `unknown field "points"`},
		{`{"kind":"ack","readback":[{"quality":"BAD","type":"u64","value":true}]}`, "readback[0].value: true is not a u64"},
	} {
		kind, buf, err := ParseJSON([]byte(tc.in))
		if err == nil {
			t.Errorf("%s: accepted as %v %x", tc.in, kind, buf)
			continue
		}
		if !errors.Is(err, ErrJSON) {
			t.Errorf("%s: error %q does not wrap ErrJSON", tc.in, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q lacks %q", tc.in, err, tc.want)
		}
		if kind != 0 || buf != nil {
			t.Errorf("%s: returned %v %x with an error", tc.in, kind, buf)
		}
	}
}

// TestParseJSONOwnsResult checks that the returned frame does not alias
// the pooled encoder.
func TestParseJSONOwnsResult(t *testing.T) {
	_, a, err := ParseJSON([]byte(`{"producer":"first"}`))
	mustNil(t, err)
	want := string(a)
	for range 10 {
		_, _, err := ParseJSON([]byte(`{"producer":"second, and longer"}`))
		mustNil(t, err)
	}
	if string(a) != want {
		t.Fatal("a later ParseJSON changed an earlier result")
	}
}

// FuzzParseJSON holds ParseJSON to its contract on arbitrary input: it
// never panics, what it accepts verifies, and rendering it and parsing the
// rendering again is a fixed point.
func FuzzParseJSON(f *testing.F) {
	for _, fr := range roundTripFrames() {
		js, err := AppendDeliveredJSON(nil, 7, fr.kind, fr.buf)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(js)
	}
	f.Add([]byte(`{"points":[{"value":1},{"value":1.5},{"value":"s"},{"value":true}]}`))
	f.Add([]byte(`{"kind":"ack","stage":"DONE"}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		kind, buf, err := ParseJSON(in)
		if err != nil {
			if !errors.Is(err, ErrJSON) {
				t.Fatalf("error %q does not wrap ErrJSON", err)
			}
			return
		}
		js, err := AppendJSON(nil, kind, buf)
		if err != nil {
			t.Fatalf("accepted %q but the frame does not verify: %v", in, err)
		}
		kind2, buf2, err := ParseJSON(js)
		if err != nil || kind2 != kind {
			t.Fatalf("ParseJSON of the rendering %s: %v %v", js, kind2, err)
		}
		js2, err := AppendJSON(nil, kind2, buf2)
		if err != nil || string(js2) != string(js) {
			t.Fatalf("not a fixed point:\n%s\n%s (%v)", js, js2, err)
		}
	})
}
