package tagmap

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Kind is a Modbus data table.
type Kind string

// The four Modbus data tables.
const (
	Holding  Kind = "holding"  // holding registers: 16-bit, read/write (FC 3, 6, 16)
	Input    Kind = "input"    // input registers: 16-bit, read-only (FC 4)
	Coil     Kind = "coil"     // coils: 1 bit, read/write (FC 1, 5)
	Discrete Kind = "discrete" // discrete inputs: 1 bit, read-only (FC 2)
)

// IsBit reports whether k holds bits (coils, discrete inputs) rather than
// registers.
func (k Kind) IsBit() bool { return k == Coil || k == Discrete }

// Type is how a tag's registers are read.
type Type string

// Tag types.
const (
	U16  Type = "u16"
	I16  Type = "i16"
	U32  Type = "u32" // two registers
	I32  Type = "i32" // two registers
	F32  Type = "f32" // two registers, IEEE 754
	Bool Type = "bool"
)

// WordOrder is the order of the two registers of a 32-bit value.
type WordOrder string

// Word orders.
const (
	HighFirst WordOrder = "high_first" // the Modbus convention: the register at address holds bits 31..16
	LowFirst  WordOrder = "low_first"  // the register at address holds bits 15..0
)

// Defaults applied by EnsureDefaults.
const (
	DefaultUnitID       = 1
	DefaultPollInterval = time.Second
	DefaultTimeout      = time.Second
	DefaultReconnectMax = 10 * time.Second

	// MinPollInterval is the shortest poll_interval Validate accepts.
	MinPollInterval = 10 * time.Millisecond
	// MaxGapLimit is the largest max_gap Validate accepts.
	MaxGapLimit = 100
)

// Map is a decoded tag map. The zero value is an empty map (which Validate
// refuses: it polls nothing).
type Map struct {
	// Devices are the Modbus TCP devices, in file order.
	Devices []Device `toml:"device"`
	// Tags are the registers to publish, in file order; each names its
	// device.
	Tags []Tag `toml:"tag"`

	file      string // for messages; "" when parsed from a string without a name
	devLines  []int  // line of the n-th [[device]] header, if known
	tagLines  []int  // line of the n-th [[tag]] header, if known
	undecoded []string
}

// Device is one Modbus TCP device (a PLC, a gateway to a serial bus …).
type Device struct {
	// Name is the device name in every frame (DataFrame.device) and in
	// commands (Command.device). Required, unique.
	Name string `toml:"name"`
	// Address is HOST:PORT of the device's Modbus TCP server. Required.
	Address string `toml:"address"`
	// UnitID is the Modbus unit identifier, 0..255. Nil: 1.
	UnitID *int `toml:"unit_id"`
	// PollInterval is how often every tag is read. Zero: 1s; at least
	// 10ms.
	PollInterval time.Duration `toml:"poll_interval"`
	// Timeout bounds each request (and so each write of a command). Zero:
	// 1s.
	Timeout time.Duration `toml:"timeout"`
	// ReconnectMax caps the backoff between reconnection attempts, which
	// starts at PollInterval and doubles. Zero: 10s.
	ReconnectMax time.Duration `toml:"reconnect_max"`
	// MaxGap is how many unmapped registers (or bits) one read request may
	// span between two tags. Zero: only adjacent or overlapping tags share
	// a request.
	MaxGap int `toml:"max_gap"`
}

// Unit returns the unit id (after EnsureDefaults).
func (d *Device) Unit() uint8 {
	if d.UnitID == nil {
		return DefaultUnitID
	}
	return uint8(*d.UnitID)
}

// Tag is one value of a device.
type Tag struct {
	// Device names the Device. Required.
	Device string `toml:"device"`
	// Name is the point's tag. Required, unique within its device.
	Name string `toml:"name"`
	// Kind is the data table: holding, input, coil or discrete. Required.
	Kind Kind `toml:"kind"`
	// Address is the 0-based protocol address of the (first) register or
	// bit: holding register 40001 in the 1-based "Modicon" notation is
	// address 0.
	Address int `toml:"address"`
	// Type is u16, i16, u32, i32 or f32 for registers, bool for coils and
	// discrete inputs. Zero: bool for coils and discrete inputs; required
	// for registers.
	Type Type `toml:"type"`
	// WordOrder orders the two registers of u32, i32 and f32: high_first or
	// low_first. Zero: high_first. Not allowed for other types.
	WordOrder WordOrder `toml:"word_order"`
	// Scale multiplies the raw value: value = raw*scale + offset. Zero: 1.
	// Not allowed for bool.
	Scale float64 `toml:"scale"`
	// Offset is added after Scale. Not allowed for bool.
	Offset float64 `toml:"offset"`
	// Writable allows WRITE commands (holding registers and coils only).
	Writable bool `toml:"writable"`
}

// Words returns how many registers (or bits) the tag spans.
func (t *Tag) Words() int {
	switch t.Type {
	case U32, I32, F32:
		return 2
	}
	return 1
}

// Scaled reports whether the tag publishes raw*scale + offset (as f64)
// rather than the raw value.
func (t *Tag) Scaled() bool { return (t.Scale != 0 && t.Scale != 1) || t.Offset != 0 }

// Load reads, decodes, completes and validates the tag map in path.
func Load(path string) (*Map, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tag map: %w", err)
	}
	return Parse(path, string(b))
}

// Parse decodes, completes and validates a tag map; name labels messages
// (a file name, or "" for none).
func Parse(name, text string) (*Map, error) {
	var m Map
	md, err := toml.Decode(text, &m)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%w: %s:%d: %s", ErrInvalid, label(name), pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, label(name), err)
	}
	m.file = name
	m.devLines = headerLines(text, "device")
	m.tagLines = headerLines(text, "tag")
	for _, k := range md.Undecoded() {
		m.undecoded = append(m.undecoded, k.String())
	}
	m.EnsureDefaults()
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

func label(name string) string {
	if name == "" {
		return "tag map"
	}
	return name
}

// headerLines returns the 1-based lines of the [[table]] headers, in order.
func headerLines(text, table string) []int {
	var lines []int
	for i, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		if c := strings.IndexByte(l, '#'); c >= 0 {
			l = strings.TrimSpace(l[:c])
		}
		if l == "[["+table+"]]" {
			lines = append(lines, i+1)
		}
	}
	return lines
}

// EnsureDefaults fills in every zero field that has a default.
func (m *Map) EnsureDefaults() {
	for i := range m.Devices {
		d := &m.Devices[i]
		if d.UnitID == nil {
			u := DefaultUnitID
			d.UnitID = &u
		}
		setIfZero(&d.PollInterval, DefaultPollInterval)
		setIfZero(&d.Timeout, DefaultTimeout)
		setIfZero(&d.ReconnectMax, DefaultReconnectMax)
	}
	for i := range m.Tags {
		t := &m.Tags[i]
		if t.Type == "" && t.Kind.IsBit() {
			t.Type = Bool
		}
		if t.WordOrder == "" && t.Words() == 2 {
			t.WordOrder = HighFirst
		}
		if t.Scale == 0 && t.Type != Bool {
			t.Scale = 1
		}
	}
}

func setIfZero[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// where returns "FILE:LINE: " for the n-th table of the kind, as well as it
// is known.
func (m *Map) where(lines []int, count, n int) string {
	f := label(m.file)
	if len(lines) == count && n < len(lines) {
		return f + ":" + strconv.Itoa(lines[n]) + ": "
	}
	return f + ": "
}

func (m *Map) deviceLabel(i int) string {
	d := &m.Devices[i]
	if d.Name == "" {
		return fmt.Sprintf("%sdevice #%d", m.where(m.devLines, len(m.Devices), i), i+1)
	}
	return fmt.Sprintf("%sdevice %q", m.where(m.devLines, len(m.Devices), i), d.Name)
}

func (m *Map) tagLabel(i int) string {
	t := &m.Tags[i]
	if t.Name == "" {
		return fmt.Sprintf("%stag #%d", m.where(m.tagLines, len(m.Tags), i), i+1)
	}
	return fmt.Sprintf("%stag %q", m.where(m.tagLines, len(m.Tags), i), t.Name)
}

// Validate checks the map (after EnsureDefaults) and reports every problem
// at once, wrapped in ErrInvalid.
func (m *Map) Validate() error {
	var p []string
	add := func(who, format string, args ...any) { p = append(p, who+": "+fmt.Sprintf(format, args...)) }
	for _, k := range m.undecoded {
		p = append(p, fmt.Sprintf("%s: unknown key %q (see docs/modbus.md for the fields)", label(m.file), k))
	}
	if len(m.Devices) == 0 {
		p = append(p, label(m.file)+": no [[device]]: the driver would poll nothing")
	}
	devs := map[string]int{}
	for i := range m.Devices {
		d, who := &m.Devices[i], m.deviceLabel(i)
		switch {
		case d.Name == "":
			add(who, "name is required")
		case strings.ContainsFunc(d.Name, func(r rune) bool { return r <= ' ' || r == '/' || r == 0x7f }):
			add(who, "name may not contain spaces, control characters or '/'")
		default:
			if j, dup := devs[d.Name]; dup {
				add(who, "name already used by device #%d", j+1)
			} else {
				devs[d.Name] = i
			}
		}
		if d.Address == "" {
			add(who, "address is required (HOST:PORT of the Modbus TCP server, e.g. \"192.168.1.10:502\")")
		} else if host, port, err := net.SplitHostPort(d.Address); err != nil || host == "" {
			add(who, "address %q: want HOST:PORT, e.g. \"192.168.1.10:502\"", d.Address)
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			add(who, "address %q: port must be 1..65535", d.Address)
		}
		if d.UnitID != nil && (*d.UnitID < 0 || *d.UnitID > 255) {
			add(who, "unit_id %d: want 0..255", *d.UnitID)
		}
		if d.PollInterval < MinPollInterval {
			add(who, "poll_interval %v: at least %v (a string with a unit, \"500ms\"; a bare integer is nanoseconds)", d.PollInterval, MinPollInterval)
		}
		if d.Timeout <= 0 {
			add(who, "timeout %v must be positive (a string with a unit, \"1s\")", d.Timeout)
		}
		if d.ReconnectMax < 0 {
			add(who, "reconnect_max %v must not be negative", d.ReconnectMax)
		}
		if d.MaxGap < 0 || d.MaxGap > MaxGapLimit {
			add(who, "max_gap %d: want 0..%d", d.MaxGap, MaxGapLimit)
		}
	}
	type key struct{ dev, tag string }
	tags := map[key]int{}
	perDev := map[string]int{}
	for i := range m.Tags {
		t, who := &m.Tags[i], m.tagLabel(i)
		if t.Device == "" {
			add(who, "device is required")
		} else if _, ok := devs[t.Device]; !ok {
			add(who, "device %q is not a [[device]] of this map", t.Device)
		} else {
			perDev[t.Device]++
		}
		switch {
		case t.Name == "":
			add(who, "name is required")
		case strings.ContainsFunc(t.Name, func(r rune) bool { return r < ' ' || r == 0x7f }):
			add(who, "name may not contain control characters")
		default:
			if j, dup := tags[key{t.Device, t.Name}]; dup {
				add(who, "device %q already has a tag of this name (%s)", t.Device, m.tagLabel(j))
			} else {
				tags[key{t.Device, t.Name}] = i
			}
		}
		switch t.Kind {
		case Holding, Input:
			switch t.Type {
			case U16, I16, U32, I32, F32:
			case "":
				add(who, "type is required for %s registers: u16, i16, u32, i32 or f32", t.Kind)
			case Bool:
				add(who, "type bool is for coils and discrete inputs; a %s register is u16, i16, u32, i32 or f32", t.Kind)
			default:
				add(who, "type %q: want u16, i16, u32, i32 or f32", t.Type)
			}
		case Coil, Discrete:
			if t.Type != Bool {
				add(who, "type %q: a %s is a bit: type bool (or leave type out)", t.Type, t.Kind)
			}
		case "":
			add(who, "kind is required: holding, input, coil or discrete")
		default:
			add(who, "kind %q: want holding, input, coil or discrete", t.Kind)
		}
		if t.Address < 0 || t.Address+t.Words()-1 > 65535 {
			add(who, "address %d: the tag's %d register(s) must lie in 0..65535", t.Address, t.Words())
		}
		switch t.WordOrder {
		case HighFirst, LowFirst:
			if t.Words() != 2 {
				add(who, "word_order applies to u32, i32 and f32 only, not %s", t.Type)
			}
		case "":
		default:
			add(who, "word_order %q: want high_first or low_first", t.WordOrder)
		}
		if t.Type == Bool {
			if t.Scale != 0 || t.Offset != 0 {
				add(who, "scale and offset do not apply to bool")
			}
		} else {
			if math.IsNaN(t.Scale) || math.IsInf(t.Scale, 0) || t.Scale == 0 {
				add(who, "scale %v: want a finite, non-zero number", t.Scale)
			}
			if math.IsNaN(t.Offset) || math.IsInf(t.Offset, 0) {
				add(who, "offset %v: want a finite number", t.Offset)
			}
		}
		if t.Writable && (t.Kind == Input || t.Kind == Discrete) {
			add(who, "writable: %s are read-only in Modbus; only holding registers and coils can be written", plural(t.Kind))
		}
	}
	for i := range m.Devices {
		if d := &m.Devices[i]; d.Name != "" && perDev[d.Name] == 0 {
			if j := devs[d.Name]; j == i {
				add(m.deviceLabel(i), "no [[tag]] names this device: it would be polled for nothing")
			}
		}
	}
	if len(p) == 0 {
		return nil
	}
	return fmt.Errorf("%w (%d problem%s):\n  %s", ErrInvalid, len(p), plural1(len(p)), strings.Join(p, "\n  "))
}

func plural(k Kind) string {
	switch k {
	case Input:
		return "input registers"
	case Discrete:
		return "discrete inputs"
	case Holding:
		return "holding registers"
	}
	return "coils"
}

func plural1(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// Device returns the device named name, or nil.
func (m *Map) Device(name string) *Device {
	for i := range m.Devices {
		if m.Devices[i].Name == name {
			return &m.Devices[i]
		}
	}
	return nil
}

// TagsOf returns the tags of the device named dev, in file order.
func (m *Map) TagsOf(dev string) []*Tag {
	var ts []*Tag
	for i := range m.Tags {
		if m.Tags[i].Device == dev {
			ts = append(ts, &m.Tags[i])
		}
	}
	return ts
}

// DeviceNames returns the device names, sorted.
func (m *Map) DeviceNames() []string {
	n := make([]string, len(m.Devices))
	for i := range m.Devices {
		n[i] = m.Devices[i].Name
	}
	slices.Sort(n)
	return n
}
