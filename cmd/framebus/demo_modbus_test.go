package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDemoModbus runs the demo's Modbus part with a framebus-modbus built
// for the test and found in PATH: tail shows the PLC's values, the write
// completes, the PLC logs it, the pump speed moves towards the new
// setpoint, the read-only write is rejected.
func TestDemoModbus(t *testing.T) {
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(bin, modbusBinary), "../framebus-modbus")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building framebus-modbus: %v\n%s", err, out)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	var out, errb bytes.Buffer
	code := run([]string{"demo", "--modbus", "on", "--throughput=false", "--dir", t.TempDir(), "--shm-dir", t.TempDir()}, &out, &errb)
	s := out.String()
	if code != 0 {
		t.Fatalf("demo exited %d\nstdout:\n%s\nstderr:\n%s", code, s, errb.String())
	}
	for _, want := range []string{
		"$ framebus tail --producer modbus --follow --limit 2",
		"data modbus/plc1: temperature=",
		`COMPLETED id=`, `"wrote 1 tag": speed_setpoint=1800 GOOD`,
		"the PLC logged: holding register written: address=0 name=speed_setpoint old=600 new=1800",
		`REJECTED id=`, `tag \"firmware\" is read-only`,
		"WAL ",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	// After the write, the pump speed leaves 600 for 1800.
	after := s[strings.Index(s, "the pump speed follows"):]
	speeds := regexp.MustCompile(`pump_speed=(\d+) GOOD`).FindAllStringSubmatch(after, -1)
	if len(speeds) != 4 {
		t.Fatalf("%d pump speeds after the write, want 4:\n%s", len(speeds), s)
	}
	last, _ := strconv.Atoi(speeds[3][1])
	if last <= 600 || last > 1800 {
		t.Errorf("pump speed %d after the write, want on its way from 600 to 1800:\n%s", last, s)
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", s)
	}
}

func TestDemoModbusMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	var out, errb bytes.Buffer
	code := run([]string{"demo", "--modbus", "on", "--throughput=false", "--dir", t.TempDir(), "--shm-dir", t.TempDir()}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "framebus-modbus not found next to") || !strings.Contains(errb.String(), "make demo") {
		t.Errorf("--modbus on without the binary: exit %d, stderr %q", code, errb.String())
	}
	if code := run([]string{"demo", "--modbus", "maybe"}, &out, &errb); code != 2 {
		t.Errorf("--modbus maybe: exit %d, want 2", code)
	}
}
