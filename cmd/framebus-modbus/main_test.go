package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/framebus/framebus/cmd/framebus-modbus/internal/tagmap"
)

func TestUsageErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("[[device]]\nname = \"d\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "Usage:"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"run"}, 2, "--map FILE is required"},
		{[]string{"--name", "x"}, 2, "--map FILE is required"},
		{[]string{"run", "--map", filepath.Join(t.TempDir(), "none.toml")}, 2, "no such file"},
		{[]string{"run", "--map", bad}, 2, `device "d": address is required`},
		{[]string{"run", "--map", bad, "--log-level", "loud"}, 2, "--log-level"},
		{[]string{"run", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"run", "--nope"}, 2, "flag provided but not defined"},
		{[]string{"check"}, 2, "--map FILE is required"},
		{[]string{"check", "--map", bad}, 1, "bad.toml:1: device \"d\": address is required"},
		{[]string{"sim", "--listen", "nowhere"}, 2, "want HOST:PORT"},
		{[]string{"run", "-h"}, 0, "Usage: framebus-modbus [run] --map FILE"},
		{[]string{"sim", "-h"}, 0, "Usage: framebus-modbus sim"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tc.args, code, errb.String(), tc.code, tc.want)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "framebus-modbus ") {
		t.Errorf("version: exit %d, %q", code, out.String())
	}
}

func TestCheck(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"check", "--map", filepath.Join("examples", "plc.toml")}, &out, &errb); code != 0 {
		t.Fatalf("check: exit %d: %s", code, errb.String())
	}
	for _, want := range []string{
		"device plc1 at 127.0.0.1:5020, unit 1, every 500ms: 11 tags in 5 read requests",
		"input 0..5 (4 tags)",
		"temperature, counter, pump_speed, flow",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestPrintMap checks that sim --print-map is the example map, for the
// address asked for.
func TestPrintMap(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"sim", "--print-map", "--listen", "127.0.0.1:6123"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	m, err := tagmap.Parse("printed", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if d := m.Device("plc1"); d == nil || d.Address != "127.0.0.1:6123" {
		t.Fatalf("printed map's device: %+v", d)
	}
	file, err := os.ReadFile(filepath.Join("examples", "plc.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.ReplaceAll(string(file), `"`+exampleAddress+`"`, `"127.0.0.1:6123"`) != out.String() {
		t.Error("the printed map differs from examples/plc.toml by more than the address")
	}
}
