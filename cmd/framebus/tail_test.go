package main

import (
	"bytes"
	"flag"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
)

func TestParseFrom(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"earliest", "earliest"},
		{"latest", "latest"},
		{"42", "seq:42"},
		{"seq:7", "seq:7"},
		{"18446744073709551615", "seq:18446744073709551615"},
		{"cursor:historian", "cursor:historian"},
		{"cursor:a:b", "cursor:a:b"},
	} {
		f, err := parseFrom(tc.in)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if f.String() != tc.want {
			t.Errorf("%q: %s, want %s", tc.in, f, tc.want)
		}
	}
	for _, in := range []string{"", "first", "-1", "1.5", "seq:", "cursor:", "18446744073709551616"} {
		if f, err := parseFrom(in); err == nil {
			t.Errorf("%q accepted as %s", in, f)
		}
	}
}

func TestKindsFlag(t *testing.T) {
	var k kindsFlag
	for _, s := range []string{"data", "ack, command", "data"} {
		if err := k.Set(s); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
	}
	want := []schema.Kind{schema.KindData, schema.KindAck, schema.KindCommand}
	if len(k) != len(want) || k[0] != want[0] || k[1] != want[1] || k[2] != want[2] {
		t.Fatalf("kinds %v, want %v", k, want)
	}
	if k.String() != "data,ack,command" {
		t.Fatalf("String() = %q", k.String())
	}
	for _, s := range []string{"", "cmd", "data,,ack", "DATA"} {
		var k kindsFlag
		if err := k.Set(s); err == nil {
			t.Errorf("%q accepted as %v", s, k)
		}
	}
}

func TestTailConfigCheck(t *testing.T) {
	cursor, _ := parseFrom("cursor:c")
	for _, tc := range []struct {
		name string
		c    tailConfig
		set  []string
		args []string
		want string // "" for valid
	}{
		{"defaults", tailConfig{from: client.Latest(), ackEvery: 1000, idle: time.Second}, nil, nil, ""},
		{"cursor", tailConfig{from: cursor, ackEvery: 5, idle: time.Second}, []string{"ack-every"}, nil, ""},
		{"argument", tailConfig{from: client.Latest(), idle: time.Second}, nil, []string{"plc-17"}, `unexpected argument "plc-17"`},
		{"live-earliest", tailConfig{from: client.Earliest(), idle: time.Second, opts: client.SubscribeOptions{Live: true}}, nil, nil, "--live starts at latest"},
		{"live-cursor", tailConfig{from: cursor, ackEvery: 1, idle: time.Second, opts: client.SubscribeOptions{Live: true}}, nil, nil, "--from cursor:c"},
		{"ack-every-no-cursor", tailConfig{from: client.Earliest(), idle: time.Second}, []string{"ack-every"}, nil, "--ack-every needs --from cursor:NAME"},
		{"ack-every-0", tailConfig{from: cursor, idle: time.Second}, []string{"ack-every"}, nil, "--ack-every must be at least 1"},
		{"idle", tailConfig{from: client.Latest()}, nil, nil, "--idle must be positive"},
	} {
		set := map[string]bool{}
		for _, s := range tc.set {
			set[s] = true
		}
		err := tc.c.check(set, tc.args)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestTailUsageErrors runs `framebus tail` with bad flags: exit status 2
// and a message, before anything connects.
func TestTailUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--kind", "event"}, `"event" is not a frame kind`},
		{[]string{"--from", "yesterday"}, `--from "yesterday"`},
		{[]string{"--live", "--from", "earliest"}, "--live starts at latest"},
		{[]string{"--ack-every", "10"}, "--ack-every needs --from cursor:NAME"},
		{[]string{"--limit", "-1"}, "invalid value"},
		{[]string{"--nope"}, "flag provided but not defined"},
		{[]string{"extra"}, "unexpected argument"},
	} {
		var out, errb bytes.Buffer
		if code := run(append([]string{"tail"}, tc.args...), &out, &errb); code != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"tail", "-h"}, &out, &errb); code != 0 || !strings.Contains(errb.String(), "Usage: framebus tail") {
		t.Errorf("tail -h: exit %d, %q", code, errb.String())
	}
}

// TestTailNoSidecar: without a sidecar, tail says how to start one.
func TestTailNoSidecar(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"tail", "--name", "nobus", "--run-dir", t.TempDir()}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "framebus run --name nobus") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}

func TestTailLineHuman(t *testing.T) {
	var e schema.Encoder
	var f lineFormatter
	for _, tc := range []struct {
		kind schema.Kind
		buf  []byte
		want string
	}{
		{schema.KindData, e.AppendData(nil, &schema.DataFrame{Producer: "modbus-1", Device: "plc-17", Seq: 3, Points: []schema.Point{
			{Tag: "line2/speed", Value: schema.F64(1450.25)},
			{Tag: "count", Value: schema.U64(math.MaxUint64), Quality: schema.QualityUncertain},
			{Tag: "delta", Value: schema.I64(-3)},
			{Tag: "run", Value: schema.Bool(true)},
			{Tag: "mode", Value: schema.String("auto, fast"), Quality: schema.QualityStale},
			{Tag: "raw", Value: schema.Bytes([]byte{0, 1, 0xfe})},
			{Tag: "temp", Quality: schema.QualityBad, ErrCode: 17},
			{Tag: "nan", Value: schema.F64(math.NaN())},
		}}), `1042 data modbus-1/plc-17: line2/speed=1450.25 GOOD, count=18446744073709551615 UNCERTAIN, delta=-3 GOOD, ` +
			`run=true GOOD, mode="auto, fast" STALE, raw=0x0001fe GOOD, temp=none BAD err=17, nan=NaN GOOD`},
		{schema.KindData, e.AppendData(nil, &schema.DataFrame{Device: "a/b", Points: []schema.Point{{Tag: "x=y", Value: schema.Bytes(make([]byte, 40))}}}),
			`1042 data ""/"a/b": "x=y"=0x` + strings.Repeat("00", 32) + `…(40 bytes) GOOD`},
		{schema.KindData, e.AppendData(nil, &schema.DataFrame{Producer: "p", Device: "d"}), `1042 data p/d`},
		{schema.KindCommand, e.AppendCommand(nil, &schema.Command{ID: 7, Target: "modbus-1", Device: "plc-17", Kind: schema.CommandWrite,
			Points: []schema.Point{{Tag: "setpoint", Value: schema.F64(2)}}}), `1042 command modbus-1/plc-17 id=7 WRITE: setpoint=2 GOOD`},
		{schema.KindCommand, e.AppendCommand(nil, &schema.Command{ID: 8, Target: "t", Device: "d", Kind: schema.CommandRead,
			Points: []schema.Point{{Tag: "é"}}}), `1042 command t/d id=8 READ: é=none GOOD`},
		{schema.KindAck, e.AppendCommandAck(nil, &schema.CommandAck{ID: 7, Stage: schema.AckCompleted, Message: "ok",
			Readback: []schema.Point{{Tag: "setpoint", Value: schema.F64(2)}}}), `1042 ack id=7 COMPLETED code=0 "ok": setpoint=2 GOOD`},
		{schema.KindAck, e.AppendCommandAck(nil, &schema.CommandAck{ID: 9, Stage: schema.AckFailed, Code: 503, Message: "device \"busy\""}),
			`1042 ack id=9 FAILED code=503 "device \"busy\""`},
	} {
		got, err := f.appendFrame([]byte("keep|"), 1042, tc.kind, tc.buf, false)
		if err != nil {
			t.Fatalf("%s: %v", tc.want, err)
		}
		if string(got) != "keep|"+tc.want {
			t.Errorf("got  %s\nwant keep|%s", got, tc.want)
		}
	}
}

func TestTailLineJSON(t *testing.T) {
	var e schema.Encoder
	var f lineFormatter
	buf := e.AppendCommandAck(nil, &schema.CommandAck{ID: 7, Stage: schema.AckCompleted, Message: "ok"})
	got, err := f.appendFrame(nil, 5, schema.KindAck, buf, true)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := schema.AppendDeliveredJSON(nil, 5, schema.KindAck, buf)
	if string(got) != string(want) || !strings.HasPrefix(string(got), `{"wal_seq":5,"kind":"ack","id":7,"stage":"COMPLETED"`) {
		t.Fatalf("got %s, want %s", got, want)
	}
	// The line parses back to the same frame.
	kind, frame, err := schema.ParseJSON(got)
	if err != nil || kind != schema.KindAck || string(frame) != string(buf) {
		t.Fatalf("ParseJSON: %v %v %x, want %x", kind, err, frame, buf)
	}
}

func TestTailLineRejects(t *testing.T) {
	var e schema.Encoder
	var f lineFormatter
	buf := e.AppendData(nil, &schema.DataFrame{Producer: "p"})
	for _, asJSON := range []bool{false, true} {
		for _, tc := range []struct {
			kind schema.Kind
			buf  []byte
		}{{schema.KindAck, buf}, {schema.Kind(9), buf}, {schema.KindData, buf[:6]}} {
			got, err := f.appendFrame([]byte("keep"), 1, tc.kind, tc.buf, asJSON)
			if err == nil || string(got) != "keep" {
				t.Errorf("json %v kind %v: %q, %v", asJSON, tc.kind, got, err)
			}
		}
	}
}

func TestResumeFrom(t *testing.T) {
	cursor, _ := parseFrom("cursor:c")
	for _, tc := range []struct {
		from client.From
		last uint64
		want string
	}{
		{client.Earliest(), 0, "earliest"},
		{client.Earliest(), 41, "42"},
		{client.Seq(3), 9, "10"},
		{cursor, 9, "cursor:c"},
	} {
		if got := resumeFrom(tc.from, tc.last); got != tc.want {
			t.Errorf("%s after %d: %q, want %q", tc.from, tc.last, got, tc.want)
		}
	}
}

// The flag sets must not panic on the zero value (flag.PrintDefaults calls
// String on a zero Value).
func TestFlagValuesZero(t *testing.T) {
	for _, v := range []flag.Value{new(kindsFlag), new(setFlag)} {
		_ = v.String()
	}
}
