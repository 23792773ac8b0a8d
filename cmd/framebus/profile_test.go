package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestProfiledWritesProfileAndTrace: FRAMEBUS_CPUPROFILE and FRAMEBUS_TRACE
// each write PREFIX.COMMAND.PID, non-empty; an unwritable prefix is an
// error naming the variable, with exit status 1.
func TestProfiledWritesProfileAndTrace(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("FRAMEBUS_CPUPROFILE", filepath.Join(dir, "cpu"))
	t.Setenv("FRAMEBUS_TRACE", filepath.Join(dir, "trace"))
	var out, errb bytes.Buffer
	if code := profiled([]string{"version"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, p := range []string{"cpu", "trace"} {
		name := filepath.Join(dir, fmt.Sprintf("%s.version.%d", p, os.Getpid()))
		fi, err := os.Stat(name)
		if err != nil || fi.Size() == 0 {
			t.Fatalf("%s: %v (size %v)", name, err, fi)
		}
	}
	t.Setenv("FRAMEBUS_TRACE", filepath.Join(dir, "missing", "trace"))
	errb.Reset()
	if code := profiled([]string{"version"}, &out, &errb); code != 1 || !bytes.Contains(errb.Bytes(), []byte("FRAMEBUS_TRACE")) {
		t.Fatalf("unwritable trace prefix: exit %d, %q; want 1 and a message naming FRAMEBUS_TRACE", code, errb.String())
	}
}
