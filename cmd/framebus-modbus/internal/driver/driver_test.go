package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/cmd/framebus-modbus/internal/plcsim"
	"github.com/framebus/framebus/cmd/framebus-modbus/internal/tagmap"
	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/sidecar"
)

// The tests run the driver against the simulated PLC (in process, on a free
// 127.0.0.1 port) and a real sidecar (in process, on a private bus), read
// its frames through a subscription and send it commands through the
// sidecar, as framebus tail and framebus cmd do.

const (
	testPoll      = 100 * time.Millisecond
	testProducer  = "modbus"
	testDevice    = "plc1"
	waitTimeout   = 10 * time.Second
	extraTestTags = `
# Not in the PLC: reads and writes get exception 2.
[[tag]]
device = "plc1"
name = "missing"
kind = "holding"
address = 500
type = "u16"
writable = true

# The PLC's read-only firmware register, wrongly marked writable: the PLC
# answers a write with exception 2.
[[tag]]
device = "plc1"
name = "firmware_rw"
kind = "holding"
address = 10
type = "u16"
writable = true
`
)

var busSeq atomic.Uint64

// bus is an in-process sidecar on a private bus.
type bus struct {
	name, runDir string
}

func startBus(t testing.TB) bus {
	t.Helper()
	base := t.TempDir()
	b := bus{name: fmt.Sprintf("mb-%d-%d", os.Getpid(), busSeq.Add(1)), runDir: filepath.Join(base, "run")}
	cfg, _, err := sidecar.LoadConfig([]string{"--name", b.name, "--shm-dir", base, "--run-dir", b.runDir,
		"--wal-dir", filepath.Join(base, "wal"), "--metrics-addr", "off", "--http-addr", "off",
		"--ring-bytes", "1048576", "--max-rings", "8", "--wal-flush-ms", "2"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sidecar.New(cfg, testLogger(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("sidecar shutdown: %v", err)
		}
	})
	return b
}

// startSim starts the simulated PLC on a free port; stopped at the end.
func startSim(t testing.TB) *plcsim.Sim {
	t.Helper()
	var err error
	for range 10 { // the port may be taken between Close and Start
		ln, lerr := net.Listen("tcp", "127.0.0.1:0")
		if lerr != nil {
			t.Fatal(lerr)
		}
		addr := ln.Addr().String()
		ln.Close()
		var s *plcsim.Sim
		if s, err = plcsim.New(plcsim.Config{Listen: addr, Tau: 100 * time.Millisecond, Logger: testLogger(t, nil)}); err != nil {
			t.Fatal(err)
		}
		if err = s.Start(); err == nil {
			t.Cleanup(func() { s.Stop() })
			return s
		}
	}
	t.Fatalf("no free port for the simulator: %v", err)
	return nil
}

// testMap is examples/plc.toml pointed at addr and polling every testPoll,
// plus extraTestTags.
func testMap(t testing.TB, addr string) *tagmap.Map {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "examples", "plc.toml"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, r := range [][2]string{
		{`"127.0.0.1:5020"`, fmt.Sprintf("%q", addr)},
		{`poll_interval = "500ms"`, fmt.Sprintf("poll_interval = %q", testPoll)},
		{`reconnect_max = "5s"`, `reconnect_max = "300ms"`},
	} {
		if !strings.Contains(text, r[0]) {
			t.Fatalf("examples/plc.toml lacks %s", r[0])
		}
		text = strings.ReplaceAll(text, r[0], r[1])
	}
	m, err := tagmap.Parse("test.toml", text+extraTestTags)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// syncBuffer collects log output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// testLogger logs into buf (if not nil) and, with -v, the test log.
func testLogger(t testing.TB, buf *syncBuffer) *slog.Logger {
	var ws []interface{ Write([]byte) (int, error) }
	if buf != nil {
		ws = append(ws, buf)
	}
	if testing.Verbose() {
		ws = append(ws, tlogWriter{t})
	}
	return slog.New(slog.NewTextHandler(multiWriter(ws), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type multiWriter []interface{ Write([]byte) (int, error) }

func (m multiWriter) Write(p []byte) (int, error) {
	for _, w := range m {
		w.Write(p)
	}
	return len(p), nil
}

// env is one test's bus, PLC and driver.
type env struct {
	t    testing.TB
	bus  bus
	sim  *plcsim.Sim
	drv  *Driver
	logs *syncBuffer
	sub  *client.Subscription
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, bus: startBus(t), logs: &syncBuffer{}}
	e.sim = startSim(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var err error
	// Subscribe first: every frame of the driver is seen.
	e.sub, err = client.Subscribe(ctx, client.Filter{Producer: testProducer, Kinds: []schema.Kind{schema.KindData}}, client.Latest(),
		client.SubscribeOptions{Name: e.bus.name, RunDir: e.bus.runDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.sub.Close() })
	pub, err := client.Dial(ctx, client.Config{Name: e.bus.name, RunDir: e.bus.runDir, Producer: testProducer})
	if err != nil {
		t.Fatal(err)
	}
	e.drv, err = New(Config{Map: testMap(t, e.sim.Addr()), Logger: testLogger(t, e.logs)})
	if err != nil {
		pub.Close()
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.drv.Run(rctx, pub) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		pub.Close()
	})
	e.waitServing()
	return e
}

// next returns the driver's next frame.
func (e *env) next() schema.DataFrame {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	fr, err := e.sub.Next(ctx)
	if err != nil {
		e.t.Fatalf("no frame from the driver: %v\nlogs:\n%s", err, e.logs.String())
	}
	var df schema.DataFrame
	if err := schema.DecodeDataFrame(fr.Data, &df); err != nil {
		e.t.Fatal(err)
	}
	return df
}

// nextWhere returns the first frame for which cond holds.
func (e *env) nextWhere(what string, cond func(*schema.DataFrame) bool) schema.DataFrame {
	e.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		df := e.next()
		if cond(&df) {
			return df
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no frame with %s within %v; the last: %+v\nlogs:\n%s", what, waitTimeout, df, e.logs.String())
		}
	}
}

// send sends a command through the sidecar and returns its final ack.
func (e *env) send(kind schema.CommandKind, device string, points ...schema.Point) schema.CommandAck {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var stages []schema.AckStage
	ack, err := client.SendCommand(ctx, &schema.Command{Target: testProducer, Device: device, Kind: kind, Points: points},
		client.CommandOptions{Name: e.bus.name, RunDir: e.bus.runDir, OnStage: func(a schema.CommandAck) { stages = append(stages, a.Stage) }})
	if err != nil {
		e.t.Fatalf("command: %v", err)
	}
	if len(stages) != 2 || stages[0] != schema.AckAccepted {
		e.t.Errorf("stages %v: want ACCEPTED then the final one", stages)
	}
	return ack
}

// waitServing waits until the driver takes commands (ServeCommands
// registers in the background).
func (e *env) waitServing() {
	e.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		ack, err := client.SendCommand(ctx, &schema.Command{Target: testProducer, Device: testDevice, Kind: schema.CommandRead,
			Points: []schema.Point{{Tag: "firmware"}}}, client.CommandOptions{Name: e.bus.name, RunDir: e.bus.runDir})
		cancel()
		if err == nil && ack.Stage == schema.AckCompleted {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("the driver does not serve commands: %v %+v\nlogs:\n%s", err, ack, e.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func point(df *schema.DataFrame, tag string) *schema.Point {
	for i := range df.Points {
		if df.Points[i].Tag == tag {
			return &df.Points[i]
		}
	}
	return nil
}

func write(tag string, v schema.Value) schema.Point { return schema.Point{Tag: tag, Value: v} }

// TestPollValues checks a polled frame: every tag of the example map, with
// the type and scaling the map gives it, GOOD; the tag the PLC lacks BAD
// with exception 2; seq counting up; timestamps of the poll.
func TestPollValues(t *testing.T) {
	e := newEnv(t)
	// A negative temperature limit exercises i16 with scale: raw -200.
	if !e.sim.SetHolding(plcsim.HRTempLimit, uint16(0xff38)) {
		t.Fatal("no temp_limit register")
	}
	df := e.nextWhere("temp_limit -20", func(df *schema.DataFrame) bool {
		p := point(df, "temp_limit")
		return p != nil && p.Value.Type == schema.TypeF64 && p.Value.F64() == -20
	})
	received := time.Now()
	if df.Producer != testProducer || df.Device != testDevice || len(df.Points) != 13 {
		t.Fatalf("frame %s/%s with %d points, want %s/%s with 13", df.Producer, df.Device, len(df.Points), testProducer, testDevice)
	}
	type want struct {
		typ   schema.ValueType
		check func(v schema.Value) bool
		what  string
	}
	for tag, w := range map[string]want{
		"temperature": {schema.TypeF64, func(v schema.Value) bool {
			return v.F64() >= 18 && v.F64() <= 25 && math.Abs(v.F64()*10-math.Round(v.F64()*10)) < 1e-9
		}, "18..25 °C in steps of 0.1"},
		"counter":        {schema.TypeU64, func(v schema.Value) bool { return v.U64() < 1000 }, "a small count"},
		"pump_speed":     {schema.TypeU64, func(v schema.Value) bool { return v.U64() == plcsim.InitialSetpoint }, "the initial setpoint"},
		"flow":           {schema.TypeF64, func(v schema.Value) bool { return v.F64() == plcsim.InitialSetpoint*plcsim.FlowPerRPM }, "30 l/min"},
		"speed_setpoint": {schema.TypeU64, func(v schema.Value) bool { return v.U64() == plcsim.InitialSetpoint }, "600"},
		"temp_limit":     {schema.TypeF64, func(v schema.Value) bool { return v.F64() == -20 }, "-20"},
		"batch_size":     {schema.TypeU64, func(v schema.Value) bool { return v.U64() == plcsim.InitialBatchSize }, "100000 (low word first)"},
		"firmware":       {schema.TypeU64, func(v schema.Value) bool { return v.U64() == plcsim.FirmwareVersion }, "0x0102"},
		"firmware_rw":    {schema.TypeU64, func(v schema.Value) bool { return v.U64() == plcsim.FirmwareVersion }, "0x0102"},
		"pump_on":        {schema.TypeBool, func(v schema.Value) bool { return v.Bool() }, "true"},
		"high_temp":      {schema.TypeBool, func(v schema.Value) bool { return v.Bool() }, "true (above -20 °C)"},
		"running":        {schema.TypeBool, func(v schema.Value) bool { return v.Bool() }, "true"},
	} {
		p := point(&df, tag)
		switch {
		case p == nil:
			t.Errorf("%s: missing", tag)
		case p.Quality != schema.QualityGood || p.ErrCode != 0:
			t.Errorf("%s: quality %v err %d", tag, p.Quality, p.ErrCode)
		case p.Value.Type != w.typ || !w.check(p.Value):
			t.Errorf("%s = %v, want %s %s", tag, p.Value, w.typ, w.what)
		case p.TsNs > received.UnixNano() || p.TsNs < received.Add(-5*time.Second).UnixNano():
			t.Errorf("%s: timestamp %v, received at %v", tag, time.Unix(0, p.TsNs), received)
		}
	}
	if p := point(&df, "missing"); p == nil || p.Quality != schema.QualityBad || p.ErrCode != 2 || p.Value.Type != schema.TypeNone {
		t.Errorf("missing: %+v, want BAD with exception 2 and no value", p)
	}
	next := e.next()
	if next.Seq != df.Seq+1 || next.Epoch != df.Epoch || next.Epoch == 0 {
		t.Errorf("seq %d → %d, epoch %d → %d: want consecutive seqs in one epoch", df.Seq, next.Seq, df.Epoch, next.Epoch)
	}
	if c0, c1 := point(&df, "counter").Value.U64(), point(&next, "counter").Value.U64(); c1 <= c0 {
		t.Errorf("counter %d then %d: not counting", c0, c1)
	}
	if n := strings.Count(e.logs.String(), "the device refuses a read"); n != 1 {
		t.Errorf("the refused read of 'missing' logged %d times, want once:\n%s", n, e.logs.String())
	}
}

// TestWriteCommand writes setpoints through the sidecar: COMPLETED with the
// readback, the PLC's registers changed, and the pump follows.
func TestWriteCommand(t *testing.T) {
	e := newEnv(t)
	ack := e.send(schema.CommandWrite, testDevice, write("speed_setpoint", schema.I64(1500)))
	if ack.Stage != schema.AckCompleted || len(ack.Readback) != 1 {
		t.Fatalf("ack %+v, want COMPLETED with one readback point", ack)
	}
	if rb := ack.Readback[0]; rb.Tag != "speed_setpoint" || rb.Value.Type != schema.TypeU64 || rb.Value.U64() != 1500 || rb.Quality != schema.QualityGood || rb.TsNs == 0 {
		t.Errorf("readback %+v, want speed_setpoint=1500 GOOD", rb)
	}
	if v, _ := e.sim.Holding(plcsim.HRSpeedSetpoint); v != 1500 {
		t.Fatalf("the PLC's setpoint is %d", v)
	}
	e.nextWhere("pump_speed 1500", func(df *schema.DataFrame) bool {
		p := point(df, "pump_speed")
		return p != nil && p.Quality == schema.QualityGood && p.Value.U64() == 1500
	})

	// Several points: scaled (rounded to the register's step), 32-bit low
	// word first, a coil.
	ack = e.send(schema.CommandWrite, testDevice,
		write("temp_limit", schema.F64(25.56)), write("batch_size", schema.U64(123456)), write("pump_on", schema.Bool(false)))
	if ack.Stage != schema.AckCompleted || len(ack.Readback) != 3 {
		t.Fatalf("ack %+v", ack)
	}
	for i, w := range []schema.Value{schema.F64(25.6), schema.U64(123456), schema.Bool(false)} {
		if rb := ack.Readback[i]; rb.Value.Type != w.Type || rb.Value.Num != w.Num {
			t.Errorf("readback %s = %v, want %v", rb.Tag, rb.Value, w)
		}
	}
	lim, _ := e.sim.Holding(plcsim.HRTempLimit)
	lo, _ := e.sim.Holding(plcsim.HRBatchSize)
	hi, _ := e.sim.Holding(plcsim.HRBatchSize + 1)
	on, _ := e.sim.Coil(plcsim.CoilPumpOn)
	if lim != 256 || uint32(hi)<<16|uint32(lo) != 123456 || on {
		t.Errorf("the PLC has temp_limit %d, batch_size %d, pump_on %v; want 256, 123456, false", lim, uint32(hi)<<16|uint32(lo), on)
	}
	e.nextWhere("the pump stopped", func(df *schema.DataFrame) bool {
		p, r := point(df, "pump_speed"), point(df, "running")
		return p.Value.U64() == 0 && r.Quality == schema.QualityGood && !r.Value.Bool()
	})
}

// TestWriteRejected sends writes the driver must refuse before writing
// anything.
func TestWriteRejected(t *testing.T) {
	e := newEnv(t)
	writes := e.sim.Writes()
	for _, tc := range []struct {
		name   string
		kind   schema.CommandKind
		device string
		points []schema.Point
		code   uint32
		want   []string
	}{
		{"read-only", schema.CommandWrite, testDevice, []schema.Point{write("firmware", schema.I64(3))}, CodeReadOnly, []string{`tag "firmware" is read-only`}},
		{"input register", schema.CommandWrite, testDevice, []schema.Point{write("temperature", schema.F64(1))}, CodeReadOnly, []string{`"temperature" is read-only`}},
		{"unknown tag, with a valid one", schema.CommandWrite, testDevice,
			[]schema.Point{write("speed_setpoint", schema.I64(100)), write("no_such_tag", schema.I64(1))}, CodeUnknownTag, []string{`unknown tag "no_such_tag"`}},
		{"out of range", schema.CommandWrite, testDevice, []schema.Point{write("speed_setpoint", schema.I64(70000))}, CodeBadValue, []string{`out of range for tag "speed_setpoint" (u16): 0..65535`}},
		{"every problem at once", schema.CommandWrite, testDevice,
			[]schema.Point{write("temp_limit", schema.F64(5000)), write("firmware", schema.I64(1)), write("pump_on", schema.I64(2))},
			CodeBadValue, []string{`(i16, scale 0.1): -3276.8..3276.7`, `"firmware" is read-only`, `"pump_on" is a coil`}},
		{"not an integer", schema.CommandWrite, testDevice, []schema.Point{write("speed_setpoint", schema.F64(1.5))}, CodeBadValue, []string{"takes an integer"}},
		{"unknown device", schema.CommandWrite, "plc9", []schema.Point{write("speed_setpoint", schema.I64(1))}, CodeUnknownTag, []string{`unknown device "plc9": this driver serves plc1`}},
		{"control", schema.CommandControl, testDevice, []schema.Point{write("speed_setpoint", schema.I64(1))}, CodeUnsupported, []string{"CONTROL is not supported"}},
	} {
		ack := e.send(tc.kind, tc.device, tc.points...)
		if ack.Stage != schema.AckRejected || ack.Code != tc.code {
			t.Errorf("%s: %v code %#x %q, want REJECTED code %#x", tc.name, ack.Stage, ack.Code, ack.Message, tc.code)
		}
		for _, w := range tc.want {
			if !strings.Contains(ack.Message, w) {
				t.Errorf("%s: message %q lacks %q", tc.name, ack.Message, w)
			}
		}
	}
	if n := e.sim.Writes(); n != writes {
		t.Errorf("the PLC saw %d writes for rejected commands", n-writes)
	}
	if v, _ := e.sim.Holding(plcsim.HRSpeedSetpoint); v != plcsim.InitialSetpoint {
		t.Errorf("setpoint %d: a rejected command wrote it", v)
	}
}

// TestWriteException gets the PLC to refuse writes: FAILED with the
// exception code, and what was written before is named.
func TestWriteException(t *testing.T) {
	e := newEnv(t)
	ack := e.send(schema.CommandWrite, testDevice, write("firmware_rw", schema.I64(1)))
	if ack.Stage != schema.AckFailed || ack.Code != 2 || !strings.Contains(ack.Message, "modbus exception 2 (illegal data address)") {
		t.Errorf("write to a read-only register: %v code %d %q, want FAILED code 2", ack.Stage, ack.Code, ack.Message)
	}
	ack = e.send(schema.CommandWrite, testDevice, write("missing", schema.I64(1)))
	if ack.Stage != schema.AckFailed || ack.Code != 2 {
		t.Errorf("write to a missing register: %v code %d %q, want FAILED code 2", ack.Stage, ack.Code, ack.Message)
	}
	ack = e.send(schema.CommandWrite, testDevice, write("temp_limit", schema.F64(35)), write("speed_setpoint", schema.I64(plcsim.MaxSetpoint+1)))
	if ack.Stage != schema.AckFailed || ack.Code != 3 || !strings.Contains(ack.Message, "illegal data value") || !strings.Contains(ack.Message, "written before it: temp_limit") {
		t.Errorf("setpoint above the PLC's maximum: %v code %d %q, want FAILED code 3 naming temp_limit as written", ack.Stage, ack.Code, ack.Message)
	}
	if lim, _ := e.sim.Holding(plcsim.HRTempLimit); lim != 350 {
		t.Errorf("temp_limit %d, want 350 (written before the failure)", lim)
	}
	if v, _ := e.sim.Holding(plcsim.HRSpeedSetpoint); v != plcsim.InitialSetpoint {
		t.Errorf("setpoint %d after a refused write", v)
	}
	// The device stays online: the next poll is GOOD.
	e.nextWhere("a GOOD setpoint", func(df *schema.DataFrame) bool { return point(df, "speed_setpoint").Quality == schema.QualityGood })
}

func TestReadCommand(t *testing.T) {
	e := newEnv(t)
	ack := e.send(schema.CommandRead, testDevice, schema.Point{Tag: "batch_size"}, schema.Point{Tag: "running"}, schema.Point{Tag: "temp_limit"})
	if ack.Stage != schema.AckCompleted || len(ack.Readback) != 3 {
		t.Fatalf("ack %+v", ack)
	}
	if rb := ack.Readback; rb[0].Value.U64() != plcsim.InitialBatchSize || !rb[1].Value.Bool() || rb[2].Value.F64() != 30 {
		t.Errorf("readback %+v", rb)
	}
	ack = e.send(schema.CommandRead, testDevice, schema.Point{Tag: "missing"})
	if ack.Stage != schema.AckFailed || ack.Code != 2 {
		t.Errorf("read of a missing register: %+v, want FAILED code 2", ack)
	}
}

// TestOfflineReconnect stops the PLC: frames with every point BAD, once per
// poll interval, commands FAILED; the PLC back on the same port: GOOD
// again. Each change of state is logged once.
func TestOfflineReconnect(t *testing.T) {
	e := newEnv(t)
	e.nextWhere("a GOOD frame", func(df *schema.DataFrame) bool { return point(df, "counter").Quality == schema.QualityGood })
	if err := e.sim.Stop(); err != nil {
		t.Fatal(err)
	}
	allBad := func(df *schema.DataFrame) bool {
		for _, p := range df.Points {
			if p.Quality != schema.QualityBad || p.Value.Type != schema.TypeNone || (p.ErrCode != CodeOffline && p.ErrCode != CodeTimeout) {
				return false
			}
		}
		return true
	}
	first := e.nextWhere("every point BAD", allBad)
	// While offline: one BAD frame per poll interval, neither a flood nor
	// silence. The frames' own timestamps say when they were made (their
	// delivery may bunch up on a loaded machine).
	const window = time.Second
	start, n := time.Now(), 0
	var firstTs, lastTs int64
	for time.Since(start) < window {
		df := e.next()
		if !allBad(&df) {
			t.Fatalf("a frame with a point not BAD while the PLC is down: %+v", df)
		}
		if df.Seq <= first.Seq {
			t.Fatalf("seq %d after %d", df.Seq, first.Seq)
		}
		if n == 0 {
			firstTs = df.Points[0].TsNs
		}
		lastTs = df.Points[0].TsNs
		n++
	}
	span := time.Duration(lastTs - firstTs)
	if max := int(span/testPoll) + 2; n < 3 || n > max {
		t.Errorf("%d BAD frames made within %v at a poll interval of %v, want 3..%d", n, span, testPoll, max)
	}
	ack := e.send(schema.CommandWrite, testDevice, write("speed_setpoint", schema.I64(100)))
	if ack.Stage != schema.AckFailed || ack.Code != CodeOffline || !strings.Contains(ack.Message, "offline") {
		t.Errorf("write while offline: %v code %#x %q, want FAILED code %#x", ack.Stage, ack.Code, ack.Message, CodeOffline)
	}
	if err := e.sim.Start(); err != nil {
		t.Fatal(err)
	}
	df := e.nextWhere("GOOD again", func(df *schema.DataFrame) bool {
		for _, p := range df.Points {
			if p.Quality != schema.QualityGood && p.Tag != "missing" {
				return false
			}
		}
		return true
	})
	if p := point(&df, "speed_setpoint"); p.Value.U64() != plcsim.InitialSetpoint {
		t.Errorf("setpoint %v after the reconnection", p.Value)
	}
	if ack := e.send(schema.CommandWrite, testDevice, write("speed_setpoint", schema.I64(900))); ack.Stage != schema.AckCompleted {
		t.Errorf("write after the reconnection: %+v", ack)
	}
	logs := e.logs.String()
	for _, msg := range []string{"device offline", "device online again"} {
		if c := strings.Count(logs, msg); c != 1 {
			t.Errorf("%q logged %d times, want once:\n%s", msg, c, logs)
		}
	}
	if st := e.drv.Stats(); st.Bad < uint64(n) || st.Frames <= st.Bad {
		t.Errorf("stats %+v after %d BAD frames", st, n)
	}
}

// TestCommandDeadline calls the handler with a deadline that has passed:
// nothing is written.
func TestCommandDeadline(t *testing.T) {
	e := newEnv(t)
	writes := e.sim.Writes()
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	ack := e.drv.HandleCommand(ctx, &schema.Command{Target: testProducer, Device: testDevice, Points: []schema.Point{write("speed_setpoint", schema.I64(100))}})
	if ack.Stage != schema.AckFailed || ack.Code != CodeDeadline {
		t.Errorf("ack %+v, want FAILED code %#x", ack, CodeDeadline)
	}
	if e.sim.Writes() != writes {
		t.Error("written after the deadline")
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{}); !errors.Is(err, ErrConfig) {
		t.Errorf("no map: %v", err)
	}
	if _, err := New(Config{Map: &tagmap.Map{}}); !errors.Is(err, ErrConfig) || !errors.Is(err, tagmap.ErrInvalid) {
		t.Errorf("empty map: %v", err)
	}
}

// TestSecondDriverRefused starts a second driver for the same target: its
// Run fails, saying what to do, while the first one keeps serving.
func TestSecondDriverRefused(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	pub, err := client.Dial(ctx, client.Config{Name: e.bus.name, RunDir: e.bus.runDir, Producer: testProducer})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	d2, err := New(Config{Map: testMap(t, e.sim.Addr()), Logger: testLogger(t, nil)})
	if err != nil {
		t.Fatal(err)
	}
	err = d2.Run(ctx, pub)
	if !errors.Is(err, client.ErrRefused) || !strings.Contains(err.Error(), "already served") || !strings.Contains(err.Error(), "--producer") {
		t.Fatalf("second driver's Run: %v, want ErrRefused saying the target is served and to use --producer", err)
	}
	if ack := e.send(schema.CommandWrite, testDevice, write("speed_setpoint", schema.I64(700))); ack.Stage != schema.AckCompleted {
		t.Errorf("the first driver after the refusal: %+v", ack)
	}
}

// TestBackoff checks the reconnection schedule: the next poll, then the
// poll interval doubling up to reconnect_max.
func TestBackoff(t *testing.T) {
	m, err := tagmap.Parse("", `
[[device]]
name = "d"
address = "127.0.0.1:1"
poll_interval = "100ms"
reconnect_max = "700ms"
[[tag]]
device = "d"
name = "t"
kind = "coil"
`)
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Map: m})
	if err != nil {
		t.Fatal(err)
	}
	dev := d.byName["d"]
	now := time.Unix(1000, 0)
	var got []time.Duration
	for range 6 {
		dev.fail(errors.New("connection refused"), now)
		got = append(got, dev.nextAttempt.Sub(now))
	}
	want := []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 700 * time.Millisecond, 700 * time.Millisecond}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("waits %v, want %v", got, want)
	}
	if dev.errCode != CodeOffline || dev.state != stateOffline {
		t.Errorf("code %#x state %d", dev.errCode, dev.state)
	}
	dev.fail(fmt.Errorf("read: %w", os.ErrDeadlineExceeded), now)
	if dev.errCode != CodeTimeout {
		t.Errorf("a timeout has code %#x, want %#x", dev.errCode, CodeTimeout)
	}
}

// TestConnectionDropped has the PLC drop the connection between two polls
// (as a device's idle timeout does): the driver reconnects at once, and no
// poll is BAD.
func TestConnectionDropped(t *testing.T) {
	e := newEnv(t)
	e.nextWhere("a GOOD frame", func(df *schema.DataFrame) bool { return point(df, "counter").Quality == schema.QualityGood })
	dev := e.drv.byName[testDevice]
	dev.sem <- struct{}{} // no poll while the PLC restarts
	if err := e.sim.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := e.sim.Start(); err != nil {
		t.Fatal(err)
	}
	<-dev.sem
	for range 5 {
		df := e.next()
		for _, p := range df.Points {
			if p.Quality != schema.QualityGood && p.Tag != "missing" {
				t.Fatalf("point %s %v err %d after a dropped connection", p.Tag, p.Quality, p.ErrCode)
			}
		}
	}
	if st := e.drv.Stats(); st.Bad != 0 {
		t.Errorf("%d BAD frames", st.Bad)
	}
	if strings.Contains(e.logs.String(), "device offline") || !strings.Contains(e.logs.String(), "reconnected") {
		t.Errorf("logs:\n%s", e.logs.String())
	}
}
