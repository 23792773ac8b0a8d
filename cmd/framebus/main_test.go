package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
)

// The demo starts the sidecar and drivers by re-executing its own binary,
// which in a test is the test binary: dispatch their commands to run like
// main would.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (os.Args[1] == "run" || os.Args[1] == "publish" || os.Args[1] == "tail" || os.Args[1] == "cmd") {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func TestDemo(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"demo", "--duration", "3s", "--drivers", "2", "--rate", "2000", "--dir", t.TempDir(), "--shm-dir", t.TempDir()}, &out, &errb)
	if code != 0 {
		t.Fatalf("demo exited %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	s := out.String()
	for _, want := range []string{"durable frames/s", "driver 1: published", "driver 2: published", "WAL ", "framebus wal stats", " stat --name demo-", "/v1/status"} {
		if !strings.Contains(s, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, ": 0 frames") {
		t.Fatalf("demo moved no frames:\n%s", s)
	}
}

func TestUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "Usage") {
		t.Fatalf("no arguments: exit %d, stderr %q", code, errb.String())
	}
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "unknown command") {
		t.Fatalf("unknown command: exit %d", code)
	}
	out.Reset()
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "framebus ") {
		t.Fatalf("version: exit %d, %q", code, out.String())
	}
}
