package tagmap

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLoadExample(t *testing.T) {
	m, err := Load(filepath.Join("..", "..", "examples", "plc.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Devices) != 1 || len(m.Tags) != 11 {
		t.Fatalf("%d devices, %d tags; want 1 and 11", len(m.Devices), len(m.Tags))
	}
	d := m.Device("plc1")
	if d == nil || d.Unit() != 1 || d.PollInterval != 500*time.Millisecond || d.Timeout != time.Second || d.ReconnectMax != 5*time.Second {
		t.Fatalf("device plc1: %+v", d)
	}
	if n := len(m.TagsOf("plc1")); n != 11 {
		t.Fatalf("TagsOf(plc1): %d tags", n)
	}
	byName := map[string]*Tag{}
	for _, tg := range m.TagsOf("plc1") {
		byName[tg.Name] = tg
	}
	// Defaults: bool for bits, high_first for 32-bit, scale 1.
	if tg := byName["pump_on"]; tg.Type != Bool || tg.Scale != 0 || !tg.Writable {
		t.Errorf("pump_on: %+v", tg)
	}
	if tg := byName["counter"]; tg.WordOrder != HighFirst || tg.Scale != 1 || tg.Scaled() {
		t.Errorf("counter: %+v", tg)
	}
	if tg := byName["batch_size"]; tg.WordOrder != LowFirst {
		t.Errorf("batch_size: %+v", tg)
	}
	if tg := byName["temperature"]; !tg.Scaled() || tg.Writable {
		t.Errorf("temperature: %+v", tg)
	}
}

func TestDefaults(t *testing.T) {
	m, err := Parse("", `
[[device]]
name = "d"
address = "10.0.0.1:502"
[[device]]
name = "zero"
address = "10.0.0.2:502"
unit_id = 0
[[tag]]
device = "d"
name = "t"
kind = "coil"
[[tag]]
device = "zero"
name = "t"
kind = "holding"
type = "f32"
`)
	if err != nil {
		t.Fatal(err)
	}
	d := m.Device("d")
	if d.Unit() != DefaultUnitID || d.PollInterval != DefaultPollInterval || d.Timeout != DefaultTimeout || d.ReconnectMax != DefaultReconnectMax || d.MaxGap != 0 {
		t.Fatalf("defaults: %+v", d)
	}
	if u := m.Device("zero").Unit(); u != 0 {
		t.Fatalf("unit_id = 0 became %d", u)
	}
	if got := m.DeviceNames(); strings.Join(got, ",") != "d,zero" {
		t.Fatalf("DeviceNames: %v", got)
	}
}

// TestValidateListsEveryProblem checks that one run reports every problem
// of a map, each with its line and the tag or device it is about.
func TestValidateListsEveryProblem(t *testing.T) {
	const text = `# a map with a problem on nearly every line
[[device]]
name = "plc"
address = "nohost"
unit_id = 300
poll_interval = "1ms"

[[device]]
name = "plc"
address = "10.0.0.1:99999"

[[device]]
name = "idle"
address = "10.0.0.2:502"
max_gap = 500

[[tag]]
device = "plc"
name = "a"
kind = "holding"
address = 0
type = "u8"

[[tag]]
device = "nope"
name = "b"
kind = "register"
address = 1

[[tag]]
device = "plc"
name = "c"
kind = "input"
address = 2
type = "u16"
writable = true
word_order = "low_first"

[[tag]]
device = "plc"
name = "a"
kind = "coil"
address = 65536
scale = 2.0

[[tag]]
device = "plc"
kind = "holding"
address = 65535
type = "u32"
word_order = "middle"

[[tag]]
device = "plc"
name = "e"
kind = "holding"
address = 5
type = "bool"
scal = 0.1
`
	_, err := Parse("bad.toml", text)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("error %v, want ErrInvalid", err)
	}
	msg := err.Error()
	for _, want := range []string{
		`bad.toml: unknown key "tag.scal"`,
		`bad.toml:2: device "plc": address "nohost": want HOST:PORT`,
		`bad.toml:2: device "plc": unit_id 300: want 0..255`,
		`bad.toml:2: device "plc": poll_interval 1ms: at least 10ms`,
		`bad.toml:8: device "plc": name already used by device #1`,
		`bad.toml:8: device "plc": address "10.0.0.1:99999": port must be 1..65535`,
		`bad.toml:12: device "idle": max_gap 500: want 0..100`,
		`bad.toml:12: device "idle": no [[tag]] names this device`,
		`bad.toml:17: tag "a": type "u8": want u16, i16, u32, i32 or f32`,
		`bad.toml:24: tag "b": device "nope" is not a [[device]] of this map`,
		`bad.toml:24: tag "b": kind "register": want holding, input, coil or discrete`,
		`bad.toml:30: tag "c": word_order applies to u32, i32 and f32 only, not u16`,
		`bad.toml:30: tag "c": writable: input registers are read-only in Modbus`,
		`bad.toml:39: tag "a": device "plc" already has a tag of this name (bad.toml:17: tag "a")`,
		`bad.toml:39: tag "a": address 65536: the tag's 1 register(s) must lie in 0..65535`,
		`bad.toml:39: tag "a": scale and offset do not apply to bool`,
		`bad.toml:46: tag #5: name is required`,
		`bad.toml:46: tag #5: address 65535: the tag's 2 register(s) must lie in 0..65535`,
		`bad.toml:46: tag #5: word_order "middle": want high_first or low_first`,
		`bad.toml:53: tag "e": type bool is for coils and discrete inputs`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("error:\n%s", msg)
	}
	if !strings.Contains(msg, "(20 problems)") {
		t.Errorf("want 20 problems counted:\n%s", msg)
	}
}

func TestValidateEmptyAndMissing(t *testing.T) {
	_, err := Parse("", "")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "no [[device]]") {
		t.Fatalf("empty map: %v", err)
	}
	_, err = Parse("m.toml", "[[device]]\n[[tag]]\n")
	for _, want := range []string{
		`m.toml:1: device #1: name is required`,
		`m.toml:1: device #1: address is required`,
		`m.toml:2: tag #1: device is required`,
		`m.toml:2: tag #1: name is required`,
		`m.toml:2: tag #1: kind is required`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	// poll_interval given as an integer is nanoseconds: too short.
	_, err = Parse("", "[[device]]\nname=\"d\"\naddress=\"h:1\"\npoll_interval = 5\ntimeout = \"-1s\"\n[[tag]]\ndevice=\"d\"\nname=\"t\"\nkind=\"coil\"\n")
	if err == nil || !strings.Contains(err.Error(), "poll_interval 5ns") || !strings.Contains(err.Error(), "timeout -1s must be positive") {
		t.Errorf("durations: %v", err)
	}
}

func TestParseErrorNamesLine(t *testing.T) {
	_, err := Parse("broken.toml", "[[device]]\nname = \"d\"\naddress = \n")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "broken.toml:3:") {
		t.Fatalf("syntax error: %v", err)
	}
	_, err = Parse("typed.toml", "[[device]]\nname = 7\n")
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "typed.toml:") {
		t.Fatalf("type error: %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.toml")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}
