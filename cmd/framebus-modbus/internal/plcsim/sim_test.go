package plcsim

import (
	"errors"
	"math"
	"net"
	"testing"
	"time"

	"github.com/simonvetter/modbus"

	"github.com/framebus/framebus/cmd/framebus-modbus/internal/tagmap"
)

// startSim starts a simulator on a free 127.0.0.1 port and stops it when
// the test ends.
func startSim(t testing.TB, cfg Config) *Sim {
	t.Helper()
	var err error
	for range 10 { // another process may take the port between Close and Start
		ln, lerr := net.Listen("tcp", "127.0.0.1:0")
		if lerr != nil {
			t.Fatal(lerr)
		}
		cfg.Listen = ln.Addr().String()
		ln.Close()
		var s *Sim
		if s, err = New(cfg); err != nil {
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

func dialSim(t testing.TB, addr string) *modbus.ModbusClient {
	t.Helper()
	c, err := modbus.NewClient(&modbus.ClientConfiguration{URL: "tcp://" + addr, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

func TestSimRegisters(t *testing.T) {
	s := startSim(t, Config{Tau: 50 * time.Millisecond})
	c := dialSim(t, s.Addr())

	in, err := c.ReadRegisters(0, 6, modbus.INPUT_REGISTER)
	if err != nil {
		t.Fatal(err)
	}
	if temp := int16(in[IRTemperature]); temp < 180 || temp > 250 {
		t.Errorf("temperature %d (0.1 °C), want 18.0..25.0 °C", temp)
	}
	if in[IRPumpSpeed] != InitialSetpoint {
		t.Errorf("pump speed %d, want the initial setpoint %d", in[IRPumpSpeed], InitialSetpoint)
	}
	if f := math.Float32frombits(uint32(in[IRFlow])<<16 | uint32(in[IRFlow+1])); f != InitialSetpoint*FlowPerRPM {
		t.Errorf("flow %v, want %v", f, InitialSetpoint*FlowPerRPM)
	}
	c1 := uint32(in[IRCounter])<<16 | uint32(in[IRCounter+1])
	time.Sleep(3 * CounterPeriod)
	in, _ = c.ReadRegisters(0, 6, modbus.INPUT_REGISTER)
	if c2 := uint32(in[IRCounter])<<16 | uint32(in[IRCounter+1]); c2 < c1+2 {
		t.Errorf("counter went from %d to %d in 3 periods", c1, c2)
	}

	hr, err := c.ReadRegisters(0, 4, modbus.HOLDING_REGISTER)
	if err != nil {
		t.Fatal(err)
	}
	if hr[HRSpeedSetpoint] != InitialSetpoint || hr[HRTempLimit] != InitialTempLimit || uint32(hr[HRBatchSize+1])<<16|uint32(hr[HRBatchSize]) != InitialBatchSize {
		t.Errorf("holding 0..3 = %v", hr)
	}
	if fw, err := c.ReadRegister(HRFirmware, modbus.HOLDING_REGISTER); err != nil || fw != FirmwareVersion {
		t.Errorf("firmware %#x, %v", fw, err)
	}

	// The pump follows a new setpoint.
	if err := c.WriteRegister(HRSpeedSetpoint, 1500); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Holding(HRSpeedSetpoint); v != 1500 {
		t.Fatalf("setpoint %d after the write", v)
	}
	waitFor(t, "the pump speed to reach 1500", 5*time.Second, func() bool {
		v, err := c.ReadRegister(IRPumpSpeed, modbus.INPUT_REGISTER)
		return err == nil && v == 1500
	})

	// Refusals: an exception, and nothing changes.
	writes := s.Writes()
	if err := c.WriteRegister(HRSpeedSetpoint, MaxSetpoint+1); !errors.Is(err, modbus.ErrIllegalDataValue) {
		t.Errorf("setpoint above the maximum: %v, want illegal data value", err)
	}
	if err := c.WriteRegister(HRFirmware, 1); !errors.Is(err, modbus.ErrIllegalDataAddress) {
		t.Errorf("write to the firmware register: %v, want illegal data address", err)
	}
	if err := c.WriteRegisters(HRBatchSize+1, []uint16{1, 2}); !errors.Is(err, modbus.ErrIllegalDataAddress) {
		t.Errorf("write across a missing register: %v, want illegal data address", err)
	}
	if _, err := c.ReadRegisters(0, 5, modbus.HOLDING_REGISTER); !errors.Is(err, modbus.ErrIllegalDataAddress) {
		t.Errorf("read of holding 0..4 (4 missing): %v, want illegal data address", err)
	}
	if _, err := c.ReadRegisters(6, 1, modbus.INPUT_REGISTER); !errors.Is(err, modbus.ErrIllegalDataAddress) {
		t.Errorf("read of input 6: %v, want illegal data address", err)
	}
	if _, err := c.ReadDiscreteInputs(0, 3); !errors.Is(err, modbus.ErrIllegalDataAddress) {
		t.Errorf("read of discrete 0..2: %v, want illegal data address", err)
	}
	if v, _ := s.Holding(HRSpeedSetpoint); v != 1500 || s.Writes() != writes {
		t.Errorf("after refused writes: setpoint %d, writes %d → %d", v, writes, s.Writes())
	}

	// The alarm follows the limit; pump_on off spins the pump down.
	if err := c.WriteRegister(HRTempLimit, uint16(0xfc18)); err != nil { // -100.0 °C
		t.Fatal(err)
	}
	if err := c.WriteCoil(CoilPumpOn, false); err != nil {
		t.Fatal(err)
	}
	if on, _ := s.Coil(CoilPumpOn); on {
		t.Fatal("pump_on still set after the write")
	}
	waitFor(t, "running to clear", 5*time.Second, func() bool {
		di, err := c.ReadDiscreteInputs(0, 2)
		return err == nil && di[DIHighTemp] && !di[DIRunning]
	})
	if s.Writes() != writes+2 {
		t.Errorf("writes %d, want %d", s.Writes(), writes+2)
	}

	// Offline and back, with the same state.
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReadRegister(HRSpeedSetpoint, modbus.HOLDING_REGISTER); err == nil {
		t.Fatal("a read worked with the simulator stopped")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	c2 := dialSim(t, s.Addr())
	if v, err := c2.ReadRegister(HRSpeedSetpoint, modbus.HOLDING_REGISTER); err != nil || v != 1500 {
		t.Fatalf("after the restart: setpoint %d, %v", v, err)
	}
}

func TestSimExtraRegisters(t *testing.T) {
	m, err := tagmap.Parse("", `
[[device]]
name = "d"
address = "127.0.0.1:1"
[[tag]]
device = "d"
name = "spare"
kind = "holding"
address = 100
type = "u32"
writable = true
[[tag]]
device = "d"
name = "fixed"
kind = "holding"
address = 200
type = "u16"
[[tag]]
device = "d"
name = "firmware"
kind = "holding"
address = 10
type = "u16"
writable = true
[[tag]]
device = "d"
name = "level"
kind = "input"
address = 50
type = "u16"
[[tag]]
device = "d"
name = "valve"
kind = "coil"
address = 5
writable = true
[[tag]]
device = "d"
name = "door"
kind = "discrete"
address = 9
`)
	if err != nil {
		t.Fatal(err)
	}
	s := startSim(t, Config{Extra: m})
	c := dialSim(t, s.Addr())
	if err := c.WriteRegisters(100, []uint16{7, 8}); err != nil {
		t.Fatalf("write to an extra writable register: %v", err)
	}
	if v, err := c.ReadRegisters(100, 2, modbus.HOLDING_REGISTER); err != nil || v[0] != 7 || v[1] != 8 {
		t.Errorf("read back %v, %v", v, err)
	}
	if err := c.WriteRegister(200, 1); !errors.Is(err, modbus.ErrIllegalDataAddress) {
		t.Errorf("write to an extra read-only register: %v", err)
	}
	if err := c.WriteRegister(HRFirmware, 1); !errors.Is(err, modbus.ErrIllegalDataAddress) {
		t.Errorf("a map cannot make the PLC's firmware register writable: %v", err)
	}
	if v, err := c.ReadRegister(50, modbus.INPUT_REGISTER); err != nil || v != 0 {
		t.Errorf("extra input register: %v, %v", v, err)
	}
	if err := c.WriteCoil(5, true); err != nil {
		t.Errorf("extra coil: %v", err)
	}
	if on, ok := s.Coil(5); !on || !ok {
		t.Errorf("extra coil after the write: %v %v", on, ok)
	}
	if v, err := c.ReadDiscreteInputs(9, 1); err != nil || v[0] {
		t.Errorf("extra discrete input: %v, %v", v, err)
	}
	if _, err := c.ReadRegister(101+1, modbus.HOLDING_REGISTER); !errors.Is(err, modbus.ErrIllegalDataAddress) {
		t.Errorf("register beyond the extra ones: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{Listen: "5020"}, {Listen: "localhost"}, {Tau: -time.Second}} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
}
