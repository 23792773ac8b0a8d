package plcsim

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
	"time"

	"github.com/simonvetter/modbus"

	"github.com/framebus/framebus/cmd/framebus-modbus/internal/tagmap"
)

// DefaultListen is the simulator's default address (502 needs root).
const DefaultListen = "127.0.0.1:5020"

// Register addresses of the simulated PLC (see the package doc).
const (
	IRTemperature = 0 // input, i16, 0.1 °C
	IRCounter     = 1 // input, u32 high word first (1-2)
	IRPumpSpeed   = 3 // input, u16 rpm
	IRFlow        = 4 // input, f32 high word first (4-5)

	HRSpeedSetpoint = 0  // holding, u16 rpm, 0..MaxSetpoint
	HRTempLimit     = 1  // holding, i16, 0.1 °C
	HRBatchSize     = 2  // holding, u32 low word first (2-3)
	HRFirmware      = 10 // holding, u16, read-only

	CoilPumpOn = 0 // coil

	DIHighTemp = 0 // discrete input: temperature > temp_limit
	DIRunning  = 1 // discrete input: pump_speed > 0
)

// Initial values and limits.
const (
	MaxSetpoint      = 3000   // rpm; a larger setpoint gets exception 3
	InitialSetpoint  = 600    // rpm
	InitialTempLimit = 300    // 30.0 °C
	InitialBatchSize = 100000 // u32 in holding 2-3, low word first
	FirmwareVersion  = 0x0102 // holding 10
	CounterPeriod    = 100 * time.Millisecond
	FlowPerRPM       = 0.05 // l/min per rpm
)

// Config describes a simulator. The zero value listens on DefaultListen.
type Config struct {
	// Listen is the HOST:PORT to serve Modbus TCP on. Zero: DefaultListen.
	Listen string
	// Extra, if set, adds the registers and coils of every tag of this
	// tag map that the PLC does not have, as plain memory (initially 0,
	// writable if the tag is), so that any tag map can be tried against the
	// simulator. Nil: only the PLC's own registers.
	Extra *tagmap.Map
	// Tau is the time constant of the pump speed's lag behind its
	// setpoint. Zero: 1s.
	Tau time.Duration
	// Logger receives one Info line per write, and the Modbus server's
	// notices at Debug. Zero: discard.
	Logger *slog.Logger
}

// EnsureDefaults fills in the zero fields.
func (c *Config) EnsureDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Tau == 0 {
		c.Tau = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// Validate reports every problem of c (after EnsureDefaults).
func (c *Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("plcsim: listen address %q: want HOST:PORT, e.g. %s", c.Listen, DefaultListen))
	}
	if c.Tau < 0 {
		errs = append(errs, fmt.Errorf("plcsim: tau %v must not be negative", c.Tau))
	}
	return errors.Join(errs...)
}

// reg is a holding register or an extra register.
type reg struct {
	name     string
	val      uint16
	writable bool
	extra    bool // from Config.Extra, not the PLC's own
}

// bit is a coil or an extra discrete input.
type bit struct {
	name     string
	val      bool
	writable bool
	extra    bool
}

// Sim is a simulated PLC. Create it with New, serve it with Start.
type Sim struct {
	cfg Config
	log *slog.Logger

	mu struct {
		sync.Mutex
		start    time.Time // counter and temperature origin
		last     time.Time // when speed was last advanced
		speed    float64   // rpm
		holding  map[uint16]*reg
		coils    map[uint16]*bit
		input    map[uint16]*reg // extra input registers (the PLC's own are computed)
		discrete map[uint16]*bit // extra discrete inputs
		writes   uint64
	}

	srvMu sync.Mutex
	srv   *modbus.ModbusServer
}

// New returns a simulator in its initial state, not yet serving.
func New(cfg Config) (*Sim, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Sim{cfg: cfg, log: cfg.Logger}
	now := time.Now()
	s.mu.start, s.mu.last = now, now
	s.mu.speed = InitialSetpoint
	s.mu.holding = map[uint16]*reg{
		HRSpeedSetpoint: {name: "speed_setpoint", val: InitialSetpoint, writable: true},
		HRTempLimit:     {name: "temp_limit", val: InitialTempLimit, writable: true},
		HRBatchSize:     {name: "batch_size (low word)", val: uint16(InitialBatchSize & 0xffff), writable: true},
		HRBatchSize + 1: {name: "batch_size (high word)", val: uint16(InitialBatchSize >> 16), writable: true},
		HRFirmware:      {name: "firmware", val: FirmwareVersion},
	}
	s.mu.coils = map[uint16]*bit{CoilPumpOn: {name: "pump_on", val: true, writable: true}}
	s.mu.input = map[uint16]*reg{}
	s.mu.discrete = map[uint16]*bit{}
	if cfg.Extra != nil {
		s.addExtra(cfg.Extra)
	}
	return s, nil
}

// builtinInput reports whether addr is one of the PLC's own input
// registers; builtinDiscrete the same for discrete inputs.
func builtinInput(addr uint16) bool    { return addr <= IRFlow+1 }
func builtinDiscrete(addr uint16) bool { return addr <= DIRunning }

func (s *Sim) addExtra(m *tagmap.Map) {
	for i := range m.Tags {
		t := &m.Tags[i]
		for w := 0; w < t.Words(); w++ {
			a := uint16(t.Address + w)
			name := t.Name
			if t.Words() > 1 {
				name = fmt.Sprintf("%s[%d]", t.Name, w)
			}
			switch t.Kind {
			case tagmap.Holding:
				if r, ok := s.mu.holding[a]; ok {
					r.writable = r.writable || (r.extra && t.Writable)
					continue
				}
				s.mu.holding[a] = &reg{name: name, writable: t.Writable, extra: true}
			case tagmap.Input:
				if !builtinInput(a) && s.mu.input[a] == nil {
					s.mu.input[a] = &reg{name: name, extra: true}
				}
			case tagmap.Coil:
				if b, ok := s.mu.coils[a]; ok {
					b.writable = b.writable || (b.extra && t.Writable)
					continue
				}
				s.mu.coils[a] = &bit{name: name, writable: t.Writable, extra: true}
			case tagmap.Discrete:
				if !builtinDiscrete(a) && s.mu.discrete[a] == nil {
					s.mu.discrete[a] = &bit{name: name, extra: true}
				}
			}
		}
	}
}

// Start serves Modbus TCP on Config.Listen. After Stop it serves again, on
// the same address, with the state it had.
func (s *Sim) Start() error {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	if s.srv != nil {
		return nil
	}
	srv, err := modbus.NewServer(&modbus.ServerConfiguration{
		URL:        "tcp://" + s.cfg.Listen,
		MaxClients: 32,
		Logger:     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}, handler{s})
	if err != nil {
		return fmt.Errorf("plcsim: %w", err)
	}
	if err := srv.Start(); err != nil {
		return fmt.Errorf("plcsim: listen on %s: %w", s.cfg.Listen, err)
	}
	s.srv = srv
	return nil
}

// Stop closes the listener and every client connection: to the driver, the
// device is gone. Idempotent.
func (s *Sim) Stop() error {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	if s.srv == nil {
		return nil
	}
	err := s.srv.Stop()
	s.srv = nil
	return err
}

// Addr returns the address the simulator serves on (Config.Listen).
func (s *Sim) Addr() string { return s.cfg.Listen }

// Holding returns holding register addr and whether it exists.
func (s *Sim) Holding(addr uint16) (uint16, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.mu.holding[addr]
	if !ok {
		return 0, false
	}
	return r.val, true
}

// SetHolding sets an existing holding register as the PLC's program would,
// writable or not (for tests); it reports whether the register exists.
func (s *Sim) SetHolding(addr, val uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.mu.holding[addr]
	if ok {
		s.advance(time.Now())
		r.val = val
	}
	return ok
}

// Coil returns coil addr and whether it exists.
func (s *Sim) Coil(addr uint16) (bool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.mu.coils[addr]
	if !ok {
		return false, false
	}
	return b.val, true
}

// Writes returns how many registers and coils clients have written.
func (s *Sim) Writes() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.writes
}

// advance integrates the pump speed up to now. s.mu is held.
func (s *Sim) advance(now time.Time) {
	dt := now.Sub(s.mu.last)
	if dt <= 0 {
		return
	}
	s.mu.last = now
	target := 0.0
	if s.mu.coils[CoilPumpOn].val {
		target = float64(s.mu.holding[HRSpeedSetpoint].val)
	}
	s.mu.speed += (target - s.mu.speed) * (1 - math.Exp(-dt.Seconds()/s.cfg.Tau.Seconds()))
	if math.Abs(target-s.mu.speed) < 0.5 {
		s.mu.speed = target
	}
}

// temperature returns the temperature at now in 0.1 °C. s.mu is held.
func (s *Sim) temperature(now time.Time) int16 {
	t := now.Sub(s.mu.start).Seconds()
	return int16(math.Round(10 * (21.5 + 3.5*math.Sin(2*math.Pi*t/60))))
}

// inputs returns the PLC's own input registers at now. s.mu is held.
func (s *Sim) inputs(now time.Time) [IRFlow + 2]uint16 {
	s.advance(now)
	var r [IRFlow + 2]uint16
	r[IRTemperature] = uint16(s.temperature(now))
	c := uint32(now.Sub(s.mu.start) / CounterPeriod)
	r[IRCounter], r[IRCounter+1] = uint16(c>>16), uint16(c)
	r[IRPumpSpeed] = uint16(math.Round(s.mu.speed))
	f := math.Float32bits(float32(s.mu.speed * FlowPerRPM))
	r[IRFlow], r[IRFlow+1] = uint16(f>>16), uint16(f)
	return r
}

// discretes returns the PLC's own discrete inputs at now. s.mu is held.
func (s *Sim) discretes(now time.Time) [DIRunning + 1]bool {
	s.advance(now)
	var d [DIRunning + 1]bool
	d[DIHighTemp] = s.temperature(now) > int16(s.mu.holding[HRTempLimit].val)
	d[DIRunning] = math.Round(s.mu.speed) > 0
	return d
}

// handler is the simulator's modbus.RequestHandler.
type handler struct{ s *Sim }

func (h handler) HandleCoils(req *modbus.CoilsRequest) ([]bool, error) {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.advance(now)
	bits := make([]*bit, req.Quantity)
	for i := range bits {
		b, ok := s.mu.coils[req.Addr+uint16(i)]
		if !ok || (req.IsWrite && !b.writable) {
			return nil, modbus.ErrIllegalDataAddress
		}
		bits[i] = b
	}
	if !req.IsWrite {
		res := make([]bool, len(bits))
		for i, b := range bits {
			res[i] = b.val
		}
		return res, nil
	}
	for i, b := range bits {
		s.log.Info("coil written", "address", int(req.Addr)+i, "name", b.name, "old", b.val, "new", req.Args[i], "client", req.ClientAddr)
		b.val = req.Args[i]
		s.mu.writes++
	}
	return nil, nil
}

func (h handler) HandleDiscreteInputs(req *modbus.DiscreteInputsRequest) ([]bool, error) {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	own := s.discretes(time.Now())
	res := make([]bool, req.Quantity)
	for i := range res {
		a := req.Addr + uint16(i)
		switch b := s.mu.discrete[a]; {
		case builtinDiscrete(a):
			res[i] = own[a]
		case b != nil:
			res[i] = b.val
		default:
			return nil, modbus.ErrIllegalDataAddress
		}
	}
	return res, nil
}

func (h handler) HandleHoldingRegisters(req *modbus.HoldingRegistersRequest) ([]uint16, error) {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.advance(now)
	regs := make([]*reg, req.Quantity)
	for i := range regs {
		r, ok := s.mu.holding[req.Addr+uint16(i)]
		if !ok || (req.IsWrite && !r.writable) {
			return nil, modbus.ErrIllegalDataAddress
		}
		regs[i] = r
	}
	if !req.IsWrite {
		res := make([]uint16, len(regs))
		for i, r := range regs {
			res[i] = r.val
		}
		return res, nil
	}
	for i := range regs {
		if req.Addr+uint16(i) == HRSpeedSetpoint && req.Args[i] > MaxSetpoint {
			s.log.Info("holding register write refused: setpoint above the maximum", "address", HRSpeedSetpoint, "value", req.Args[i], "max", MaxSetpoint)
			return nil, modbus.ErrIllegalDataValue
		}
	}
	for i, r := range regs {
		s.log.Info("holding register written", "address", int(req.Addr)+i, "name", r.name, "old", r.val, "new", req.Args[i], "client", req.ClientAddr)
		r.val = req.Args[i]
		s.mu.writes++
	}
	return nil, nil
}

func (h handler) HandleInputRegisters(req *modbus.InputRegistersRequest) ([]uint16, error) {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	own := s.inputs(time.Now())
	res := make([]uint16, req.Quantity)
	for i := range res {
		a := req.Addr + uint16(i)
		switch r := s.mu.input[a]; {
		case builtinInput(a):
			res[i] = own[a]
		case r != nil:
			res[i] = r.val
		default:
			return nil, modbus.ErrIllegalDataAddress
		}
	}
	return res, nil
}
