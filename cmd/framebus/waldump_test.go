package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/wal"
)

// walFrame is a frame the tests put into a WAL, with what a filter looks
// at, so that the expected output does not depend on the code tested.
type walFrame struct {
	seq      uint64
	kind     schema.Kind
	buf      []byte
	producer string // data: producer; command: target; ack: ""
	device   string
	tags     []string
}

// json is the line `framebus tail --json` prints for f.
func (f walFrame) json(tb testing.TB) string {
	tb.Helper()
	b, err := schema.AppendDeliveredJSON(nil, f.seq, f.kind, f.buf)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// testFrames returns n frames: data from three producers and devices with
// several tags (every 13th without points), commands to two targets and
// their acks.
func testFrames(n int) []walFrame {
	var e schema.Encoder
	producers := []struct{ name, device string }{{"modbus-1", "plc-1"}, {"modbus-1", "plc-2"}, {"opcua-1", "press"}}
	fs := make([]walFrame, 0, n)
	for i := range n {
		f := walFrame{seq: uint64(i + 1)}
		switch {
		case i%10 == 7:
			target := []string{"modbus-1", "opcua-1"}[i/10%2]
			f.kind, f.producer, f.device, f.tags = schema.KindCommand, target, "plc-1", []string{"line1/setpoint"}
			f.buf = e.AppendCommand(nil, &schema.Command{ID: uint64(i), Target: target, Device: "plc-1", Kind: schema.CommandWrite,
				Points: []schema.Point{{Tag: "line1/setpoint", Value: schema.F64(float64(i))}}})
		case i%10 == 8:
			f.kind, f.tags = schema.KindAck, []string{"line1/setpoint"}
			f.buf = e.AppendCommandAck(nil, &schema.CommandAck{ID: uint64(i - 1), Stage: schema.AckCompleted, Message: "ok",
				Readback: []schema.Point{{Tag: "line1/setpoint", Value: schema.F64(float64(i - 1))}}})
		default:
			p := producers[i%3]
			f.kind, f.producer, f.device = schema.KindData, p.name, p.device
			df := &schema.DataFrame{Producer: p.name, Device: p.device, Epoch: 1, Seq: uint64(i)}
			if i%13 != 0 {
				line := fmt.Sprintf("line%d", 1+i%2)
				f.tags = []string{line + "/speed", line + "/mode"}
				df.Points = []schema.Point{
					{Tag: f.tags[0], Value: schema.F64(float64(i) * 1.5), TsNs: int64(i) * 1e6},
					{Tag: f.tags[1], Value: schema.String("auto"), Quality: schema.QualityUncertain},
				}
			}
			f.buf = e.AppendData(nil, df)
		}
		fs = append(fs, f)
	}
	return fs
}

// writeTestWAL writes frames into a new WAL in dir (created) with the
// wal package's writer, and returns dir.
func writeTestWAL(tb testing.TB, dir string, frames []walFrame, o wal.Options) string {
	tb.Helper()
	o.Dir, o.NoSync = dir, true
	w, err := wal.Open(o)
	if err != nil {
		tb.Fatal(err)
	}
	for i := 0; i < len(frames); i += 50 {
		var batch []wal.Frame
		for _, f := range frames[i:min(i+50, len(frames))] {
			batch = append(batch, wal.Frame{Kind: uint16(f.kind), Data: f.buf})
		}
		last, err := w.Append(batch...)
		if err != nil || last != frames[min(i+50, len(frames))-1].seq {
			tb.Fatalf("Append: last seq %d, %v", last, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Flush(ctx); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// runWAL runs `framebus wal ARGS…` and returns its exit status, stdout and
// stderr.
func runWAL(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(append([]string{"wal"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func lines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

func TestWalDumpFilters(t *testing.T) {
	t.Setenv("FRAMEBUS_WAL_DIR", "")
	frames := testFrames(400)
	dir := writeTestWAL(t, t.TempDir(), frames, wal.Options{SegmentBytes: 1024})
	type sel func(f walFrame) bool
	tagMatches := func(glob string) sel {
		return func(f walFrame) bool {
			return slices.ContainsFunc(f.tags, func(tag string) bool { ok, _ := path.Match(glob, tag); return ok })
		}
	}
	for _, tc := range []struct {
		args []string
		want sel
	}{
		{nil, func(walFrame) bool { return true }},
		{[]string{"--producer", "modbus-1"}, func(f walFrame) bool { return f.producer == "modbus-1" }},
		{[]string{"--producer", "opcua-1"}, func(f walFrame) bool { return f.producer == "opcua-1" }},
		{[]string{"--producer", "nobody"}, func(walFrame) bool { return false }},
		{[]string{"--device", "plc-2"}, func(f walFrame) bool { return f.device == "plc-2" }},
		{[]string{"--tag", "line2/*"}, tagMatches("line2/*")},
		{[]string{"--tag", "*/setpoint"}, tagMatches("*/setpoint")},
		{[]string{"--tag", "line?/mode"}, tagMatches("line?/mode")},
		{[]string{"--kind", "ack"}, func(f walFrame) bool { return f.kind == schema.KindAck }},
		{[]string{"--kind", "command", "--kind", "ack"}, func(f walFrame) bool { return f.kind != schema.KindData }},
		{[]string{"--kind", "data,command"}, func(f walFrame) bool { return f.kind != schema.KindAck }},
		{[]string{"--from", "100", "--to", "150"}, func(f walFrame) bool { return f.seq >= 100 && f.seq <= 150 }},
		{[]string{"--from", "390"}, func(f walFrame) bool { return f.seq >= 390 }},
		{[]string{"--to", "5"}, func(f walFrame) bool { return f.seq <= 5 }},
		{[]string{"--from", "77", "--to", "77"}, func(f walFrame) bool { return f.seq == 77 }},
		{[]string{"--from", "401"}, func(walFrame) bool { return false }},
		{[]string{"--producer", "modbus-1", "--device", "plc-1", "--kind", "data", "--tag", "line2/*", "--from", "20", "--to", "300"},
			func(f walFrame) bool {
				return f.producer == "modbus-1" && f.device == "plc-1" && f.kind == schema.KindData && tagMatches("line2/*")(f) && f.seq >= 20 && f.seq <= 300
			}},
	} {
		var want []string
		for _, f := range frames {
			if tc.want(f) {
				want = append(want, f.json(t))
			}
		}
		code, out, errs := runWAL(append([]string{"dump", "--wal-dir", dir}, tc.args...)...)
		if code != 0 || errs != "" {
			t.Errorf("dump %q: exit %d, stderr %q", tc.args, code, errs)
			continue
		}
		if got := lines(out); !slices.Equal(got, want) {
			t.Errorf("dump %q: %d lines, want %d\n got %.300q\nwant %.300q", tc.args, len(got), len(want), got, want)
		}
	}
}

// The lines are tail's, and parse back into the frames.
func TestWalDumpJSONIsTails(t *testing.T) {
	frames := testFrames(30)
	dir := writeTestWAL(t, t.TempDir(), frames, wal.Options{})
	code, out, errs := runWAL("dump", "--wal-dir", dir)
	if code != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	got := lines(out)
	if len(got) != len(frames) {
		t.Fatalf("%d lines, want %d", len(got), len(frames))
	}
	var lf lineFormatter
	for i, f := range frames {
		tail, err := lf.appendFrame(nil, f.seq, f.kind, f.buf, true)
		if err != nil || got[i] != string(tail) {
			t.Fatalf("line %d: %s\ntail --json prints %s (%v)", i, got[i], tail, err)
		}
		if !strings.HasPrefix(got[i], fmt.Sprintf(`{"wal_seq":%d,"kind":"%s"`, f.seq, f.kind)) {
			t.Fatalf("line %d lacks its WAL sequence number: %s", i, got[i])
		}
		kind, buf, err := schema.ParseJSON([]byte(got[i]))
		if err != nil || kind != f.kind || !bytes.Equal(buf, f.buf) {
			t.Fatalf("line %d does not parse back: %v %v", i, kind, err)
		}
	}
}

func TestWalDumpLimit(t *testing.T) {
	frames := testFrames(200)
	dir := writeTestWAL(t, t.TempDir(), frames, wal.Options{SegmentBytes: 1024})
	for _, tc := range []struct {
		args []string
		want []uint64
	}{
		{[]string{"--limit", "3"}, []uint64{1, 2, 3}},
		{[]string{"--limit", "1", "--from", "50"}, []uint64{50}},
		{[]string{"--limit", "2", "--kind", "ack"}, []uint64{9, 19}},
		{[]string{"--limit", "4", "--producer", "opcua-1", "--from", "100"}, []uint64{102, 105, 111, 114}},
		{[]string{"--limit", "1000", "--from", "198"}, []uint64{198, 199, 200}},
		{[]string{"--limit", "0", "--from", "199"}, []uint64{199, 200}},
	} {
		var want []string
		for _, seq := range tc.want {
			want = append(want, frames[seq-1].json(t))
		}
		code, out, errs := runWAL(append([]string{"dump", "--wal-dir", dir}, tc.args...)...)
		if got := lines(out); code != 0 || errs != "" || !slices.Equal(got, want) {
			t.Errorf("dump %q: exit %d, stderr %q, %d lines\n got %.200q\nwant %.200q", tc.args, code, errs, len(got), got, want)
		}
	}
}

// The sidecar's layout: --wal-dir is its wal_dir, the WAL is in DIR/NAME.
func TestWalDumpName(t *testing.T) {
	frames := testFrames(5)
	parent := t.TempDir()
	writeTestWAL(t, filepath.Join(parent, "line1"), frames, wal.Options{})
	code, out, errs := runWAL("dump", "--wal-dir", parent, "--name", "line1", "--from", "5")
	if code != 0 || errs != "" || out != frames[4].json(t)+"\n" {
		t.Fatalf("exit %d, stderr %q, out %q", code, errs, out)
	}
	t.Setenv("FRAMEBUS_WAL_DIR", parent)
	if code, _, errs := runWAL("dump", "--name", "nope"); code != 1 || !strings.Contains(errs, "does not exist") {
		t.Fatalf("unknown bus: exit %d, stderr %q", code, errs)
	}
}

func TestWalDumpUsageErrors(t *testing.T) {
	t.Setenv("FRAMEBUS_WAL_DIR", "")
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--wal-dir is required"},
		{[]string{"--wal-dir", dir, "--from", "9", "--to", "3"}, "--from 9 is after --to 3"},
		{[]string{"--wal-dir", dir, "--tag", "line[1"}, "syntax error in pattern"},
		{[]string{"--wal-dir", dir, "--kind", "event"}, `"event" is not a frame kind`},
		{[]string{"--wal-dir", dir, "--from", "-1"}, "invalid value"},
		{[]string{"--wal-dir", dir, "extra"}, `unexpected argument "extra"`},
	} {
		code, out, errs := runWAL(append([]string{"dump"}, tc.args...)...)
		if code != 2 || out != "" || !strings.Contains(errs, tc.want) {
			t.Errorf("dump %q: exit %d, stdout %q, stderr %q; want 2 and %q", tc.args, code, out, errs, tc.want)
		}
	}
	if code, _, errs := runWAL("dump", "-h"); code != 0 || !strings.Contains(errs, "framebus wal dump") || !strings.Contains(errs, "-producer") {
		t.Errorf("dump -h: exit %d, %q", code, errs)
	}
}

// While a sidecar holds the WAL, dump says to stop it or to use tail.
func TestWalDumpLocked(t *testing.T) {
	dir := writeTestWAL(t, t.TempDir(), testFrames(10), wal.Options{})
	w, err := wal.Open(wal.Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	code, out, errs := runWAL("dump", "--wal-dir", dir)
	if code != 1 || out != "" || !strings.Contains(errs, "stop the sidecar") || !strings.Contains(errs, "framebus tail --json --from SEQ") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

// flipSegmentByte damages the value of the i-th stored segment, as a bad
// disk block would (it then fails its CRC32C).
func flipSegmentByte(tb testing.TB, dir string, i int) (key uint64) {
	tb.Helper()
	db, err := bolt.Open(filepath.Join(dir, wal.FileName), 0o640, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("segments"))
		c := b.Cursor()
		k, v := c.First()
		for range i {
			k, v = c.Next()
		}
		key = binary.BigEndian.Uint64(k)
		v = bytes.Clone(v)
		v[len(v)/2] ^= 0x20
		return b.Put(bytes.Clone(k), v)
	})
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

// A damaged segment: every frame before it, then exit status 1 and how to
// see and repair the damage.
func TestWalDumpDamaged(t *testing.T) {
	frames := testFrames(300)
	dir := writeTestWAL(t, t.TempDir(), frames, wal.Options{SegmentBytes: 1024})
	key := flipSegmentByte(t, dir, 4)
	code, out, errs := runWAL("dump", "--wal-dir", dir)
	if code != 1 || !strings.Contains(errs, fmt.Sprintf("segment %d", key)) || !strings.Contains(errs, "framebus wal verify") || !strings.Contains(errs, "framebus wal recover") {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	var want []string
	for _, f := range frames[:key-1] {
		want = append(want, f.json(t))
	}
	if got := lines(out); !slices.Equal(got, want) {
		t.Fatalf("%d lines before the damage, want %d", len(got), len(want))
	}
}

// A reader that goes away (| head) ends the dump with exit status 0 and
// nothing on stderr.
func TestWalDumpClosedStdout(t *testing.T) {
	frames := testFrames(5000) // several pipe buffers of JSON
	dir := writeTestWAL(t, t.TempDir(), frames, wal.Options{})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	type result struct {
		code int
		errs string
	}
	done := make(chan result, 1)
	go func() {
		var errb bytes.Buffer
		code := run([]string{"wal", "dump", "--wal-dir", dir}, w, &errb)
		done <- result{code, errb.String()}
	}()
	first, err := bufio.NewReader(r).ReadString('\n')
	if err != nil || first != frames[0].json(t)+"\n" {
		t.Fatalf("first line %q, %v", first, err)
	}
	r.Close()
	select {
	case res := <-done:
		if res.code != 0 || res.errs != "" {
			t.Fatalf("after the reader left: exit %d, stderr %q; want 0 and nothing", res.code, res.errs)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("dump did not stop after its reader left")
	}
}

// matchFilter follows the sidecar's rules on the cases its own test
// (sidecar/filter_test.go) does not need a WAL for.
func TestWalDumpMatchFilterNoPoints(t *testing.T) {
	var e schema.Encoder
	buf := e.AppendData(nil, &schema.DataFrame{Producer: "p", Device: "d"})
	dir := writeTestWAL(t, t.TempDir(), []walFrame{{seq: 1, kind: schema.KindData, buf: buf}}, wal.Options{})
	for _, tc := range []struct {
		args []string
		n    int
	}{
		{[]string{"--producer", "p"}, 1},
		{[]string{"--device", "d", "--kind", "data"}, 1},
		{[]string{"--tag", "*"}, 0}, // a frame without points matches only an empty tag glob
		{[]string{"--kind", "command"}, 0},
	} {
		code, out, errs := runWAL(append([]string{"dump", "--wal-dir", dir}, tc.args...)...)
		if code != 0 || errs != "" || len(lines(out)) != tc.n {
			t.Errorf("dump %q: exit %d, stderr %q, %d lines, want %d", tc.args, code, errs, len(lines(out)), tc.n)
		}
	}
}
