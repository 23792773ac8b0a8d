package test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// newBenchBus is newBus for a benchmark. The WAL and socket directories
// are under tb.TempDir() (the real disk); the segment is in a private
// directory under /dev/shm, where a sidecar puts it by default, so that
// the kernel does not write the rings back to the disk the WAL uses.
func newBenchBus(tb testing.TB, extra ...string) *bus {
	base := tb.TempDir()
	shmDir, err := os.MkdirTemp("/dev/shm", "framebus-bench-")
	if err != nil {
		tb.Fatalf("a segment directory in /dev/shm: %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(shmDir) })
	b := &bus{t: tb, name: fmt.Sprintf("bench-%d-%d", os.Getpid(), busCounter.Add(1)),
		shmDir: shmDir, runDir: filepath.Join(base, "run"), walDir: filepath.Join(base, "wal"), extra: extra}
	for _, d := range []string{b.runDir, b.walDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	return b
}
