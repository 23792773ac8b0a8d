package main

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/framebus/framebus/schema"
)

func TestParseSetValue(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want schema.Value
	}{
		{"true", schema.Bool(true)},
		{"false", schema.Bool(false)},
		{"0", schema.I64(0)},
		{"-42", schema.I64(-42)},
		{"+7", schema.I64(7)},
		{"9223372036854775807", schema.I64(math.MaxInt64)},
		{"9223372036854775808", schema.U64(1 << 63)},
		{"1.5", schema.F64(1.5)},
		{"-2e3", schema.F64(-2000)},
		{".5", schema.F64(0.5)},
		{"1e400", schema.String("1e400")},
		{"NaN", schema.String("NaN")},
		{"Inf", schema.String("Inf")},
		{"0x10", schema.String("0x10")},
		{"1_000", schema.String("1_000")},
		{"True", schema.String("True")},
		{"", schema.String("")},
		{"auto", schema.String("auto")},
		{"a=b", schema.String("a=b")},
		{"http://plc:502", schema.String("http://plc:502")},
		{"12:30", schema.String("12:30")},
		{"f64:1.5", schema.F64(1.5)},
		{"f64:2", schema.F64(2)},
		{"f64:NaN", schema.F64(math.NaN())},
		{"f64:-Inf", schema.F64(math.Inf(-1))},
		{"i64:-3", schema.I64(-3)},
		{"u64:18446744073709551615", schema.U64(math.MaxUint64)},
		{"bool:true", schema.Bool(true)},
		{"bool:0", schema.Bool(false)},
		{"str:42", schema.String("42")},
		{"str:", schema.String("")},
		{"str:a:b", schema.String("a:b")},
		{"bytes:AAH+", schema.Bytes([]byte{0, 1, 0xfe})},
	} {
		got, err := parseValue(tc.in)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		// Compare the renderings: NaN is not equal to itself.
		if got.String() != tc.want.String() {
			t.Errorf("%q: %v, want %v", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"f64:fast", `"fast" is not a float64`},
		{"i64:1.5", `"1.5" is not an integer`},
		{"i64:9223372036854775808", "is not an integer from"},
		{"u64:-1", `"-1" is not an integer from 0`},
		{"bool:yes", `"yes" is not a bool`},
		{"bytes:!!", "is not standard base64"},
	} {
		if v, err := parseValue(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v %v, want error %q", tc.in, v, err, tc.want)
		}
	}
}

func TestParseSet(t *testing.T) {
	p, err := parseSet("line2/speed=f64:1450")
	if err != nil || p.Tag != "line2/speed" || p.Value.String() != "f64:1450" {
		t.Fatalf("got %+v %v", p, err)
	}
	p, err = parseSet("mode=a=b")
	if err != nil || p.Tag != "mode" || p.Value.Str != "a=b" {
		t.Fatalf("got %+v %v", p, err)
	}
	p, err = parseSet("temp")
	if err != nil || p.Tag != "temp" || p.Value.Type != schema.TypeNone {
		t.Fatalf("got %+v %v", p, err)
	}
	for _, in := range []string{"=1", "", "x=i64:z"} {
		if p, err := parseSet(in); err == nil {
			t.Errorf("%q accepted as %+v", in, p)
		}
	}
}

func TestBuildCommand(t *testing.T) {
	sp, _ := parseSet("sp=2")
	rd, _ := parseSet("temp")
	c, err := buildCommand("modbus-1", "plc-17", "write", []schema.Point{sp}, time.Second, nil)
	if err != nil || c.Target != "modbus-1" || c.Device != "plc-17" || c.Kind != schema.CommandWrite || len(c.Points) != 1 || c.ID != 0 || c.DeadlineNs != 0 {
		t.Fatalf("write: %+v %v", c, err)
	}
	c, err = buildCommand("t", "d", "read", []schema.Point{rd}, time.Second, nil)
	if err != nil || c.Kind != schema.CommandRead {
		t.Fatalf("read: %+v %v", c, err)
	}
	c, err = buildCommand("t", "d", "control", nil, time.Second, nil)
	if err != nil || c.Kind != schema.CommandControl {
		t.Fatalf("control: %+v %v", c, err)
	}
	_, err = buildCommand("", "", "erase", nil, 0, []string{"x"})
	for _, want := range []string{`unexpected argument "x"`, "--target is required", "--device is required", "--timeout must be positive", `--kind "erase"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	_, err = buildCommand("t", "d", "write", nil, time.Second, nil)
	if err == nil || !strings.Contains(err.Error(), "needs at least one --set") {
		t.Errorf("write without points: %v", err)
	}
	_, err = buildCommand("t", "d", "write", []schema.Point{rd}, time.Second, nil)
	if err == nil || !strings.Contains(err.Error(), "--set temp: a write needs a value") {
		t.Errorf("write without a value: %v", err)
	}
}

func TestAppendStage(t *testing.T) {
	a := schema.CommandAck{ID: 12, Stage: schema.AckCompleted, Message: "written",
		Readback: []schema.Point{{Tag: "sp", Value: schema.F64(2)}}}
	got, err := appendStage(nil, &a, false)
	if want := `COMPLETED id=12 code=0 "written": sp=2 GOOD`; err != nil || string(got) != want {
		t.Fatalf("got %s (%v), want %s", got, err, want)
	}
	got, err = appendStage(nil, &schema.CommandAck{ID: 12, Stage: schema.AckAccepted}, false)
	if want := `ACCEPTED id=12 code=0 ""`; err != nil || string(got) != want {
		t.Fatalf("got %s (%v), want %s", got, err, want)
	}
	got, err = appendStage(nil, &a, true)
	want := `{"kind":"ack","id":12,"stage":"COMPLETED","code":0,"message":"written","readback":[` +
		`{"tag":"sp","alias":0,"type":"f64","value":2,"quality":"GOOD","err_code":0,"ts_ns":0,"flags":[]}]}`
	if err != nil || string(got) != want {
		t.Fatalf("got %s (%v), want %s", got, err, want)
	}
}

func TestCmdUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--target is required"},
		{[]string{"--target", "t", "--device", "d"}, "needs at least one --set"},
		{[]string{"--target", "t", "--device", "d", "--set", "x=i64:abc"}, `invalid value "x=i64:abc" for flag -set`},
		{[]string{"--target", "t", "--device", "d", "--set", "x=1", "--kind", "reboot"}, `--kind "reboot"`},
	} {
		var out, errb bytes.Buffer
		if code := run(append([]string{"cmd"}, tc.args...), &out, &errb); code != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}

// TestCmdNoSidecar: without a sidecar, cmd says how to start one.
func TestCmdNoSidecar(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"cmd", "--name", "nobus", "--run-dir", t.TempDir(), "--target", "t", "--device", "d", "--set", "x=1"}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "framebus run --name nobus") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}
