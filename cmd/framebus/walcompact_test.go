package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/framebus/framebus/wal"
)

// bloatedTestWAL writes the frames with the default retention, then the
// last 100 of them with MaxBytes 64 KiB, which deletes all but about 64
// segments of 1 KiB: the file stays at its largest size. It sets two
// cursors and two positions.
func bloatedTestWAL(tb testing.TB, dir string, frames []walFrame) string {
	tb.Helper()
	n := len(frames) - 100
	writeTestWAL(tb, dir, frames[:n], wal.Options{SegmentBytes: 1024})
	w, err := wal.Open(wal.Options{Dir: dir, NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	w.SetPosition("slot0/gen1", 12345)
	if err := w.SetCursor("historian", uint64(n)); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	writeTestWAL(tb, dir, frames[n:], wal.Options{SegmentBytes: 1024, MaxBytes: 64 << 10})
	w, err = wal.Open(wal.Options{Dir: dir, NoSync: true})
	if err != nil {
		tb.Fatal(err)
	}
	w.SetPosition("slot3/gen2", 99)
	if err := w.SetCursor("uplink", uint64(n+50)); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return dir
}

func walFileSize(tb testing.TB, dir string) int64 {
	tb.Helper()
	fi, err := os.Stat(filepath.Join(dir, wal.FileName))
	if err != nil {
		tb.Fatal(err)
	}
	return fi.Size()
}

// walOutputs is what the read-only tools print about a WAL.
func walOutputs(tb testing.TB, dir string) (stats, dump string) {
	tb.Helper()
	code, stats, errs := runWAL("stats", "--json", "--wal-dir", dir)
	if code != 0 {
		tb.Fatalf("stats: exit %d, %s", code, errs)
	}
	code, dump, errs = runWAL("dump", "--wal-dir", dir)
	if code != 0 {
		tb.Fatalf("dump: exit %d, %s", code, errs)
	}
	return stats, dump
}

func TestWalCompact(t *testing.T) {
	frames := testFrames(20000)
	dir := bloatedTestWAL(t, t.TempDir(), frames)
	statsBefore, dumpBefore := walOutputs(t, dir)
	if !strings.Contains(statsBefore, `"historian"`) || !strings.Contains(statsBefore, `"uplink"`) {
		t.Fatalf("the test WAL lacks its cursors: %s", statsBefore)
	}
	if n := len(lines(dumpBefore)); n < 100 || n > 1000 {
		t.Fatalf("retention left %d frames: the test needs it to have deleted most", n)
	}
	sizeBefore := walFileSize(t, dir)

	code, out, errs := runWAL("compact", "--wal-dir", dir)
	if code != 0 || errs != "" {
		t.Fatalf("compact: exit %d, stderr %q", code, errs)
	}
	sizeAfter := walFileSize(t, dir)
	t.Logf("%s", out)
	if sizeAfter*4 > sizeBefore {
		t.Errorf("the file went from %d to %d bytes: want less than a quarter", sizeBefore, sizeAfter)
	}
	want := regexp.MustCompile(`^WAL .+: [0-9.]+ MiB before, [0-9.]+ KiB after\nunchanged: \d+ segments, \d+ frames, sequence \d+\.\.20000, 2 positions, 2 cursors\n$`)
	if !want.MatchString(out) {
		t.Errorf("output %q does not match %s", out, want)
	}
	statsAfter, dumpAfter := walOutputs(t, dir)
	if statsAfter != statsBefore {
		t.Errorf("stats changed:\nbefore %s\nafter  %s", statsBefore, statsAfter)
	}
	if dumpAfter != dumpBefore {
		t.Errorf("the frames changed")
	}
	if code, out, _ := runWAL("verify", "--wal-dir", dir); code != 0 || !strings.HasSuffix(out, "ok\n") {
		t.Errorf("verify after compact: exit %d, %s", code, out)
	}
	if es, _ := os.ReadDir(dir); len(es) != 1 {
		t.Errorf("the directory holds %d entries, want only the WAL", len(es))
	}
}

func TestWalCompactKeepBackup(t *testing.T) {
	parent := t.TempDir()
	dir := writeTestWAL(t, filepath.Join(parent, "line1"), testFrames(300), wal.Options{})
	old, err := os.ReadFile(filepath.Join(dir, wal.FileName))
	if err != nil {
		t.Fatal(err)
	}
	code, out, errs := runWAL("compact", "--wal-dir", parent, "--name", "line1", "--keep-backup")
	if code != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	m := regexp.MustCompile(`the old file is kept as (\S+)\n`).FindStringSubmatch(out)
	if m == nil || !strings.HasPrefix(m[1], filepath.Join(dir, wal.FileName+".bak-")) {
		t.Fatalf("output %q names no backup beside the WAL", out)
	}
	if bak, err := os.ReadFile(m[1]); err != nil || !bytes.Equal(bak, old) {
		t.Fatalf("the backup is not the old file (%v)", err)
	}
}

func TestWalCompactRefusesDamaged(t *testing.T) {
	dir := writeTestWAL(t, t.TempDir(), testFrames(300), wal.Options{SegmentBytes: 1024})
	flipSegmentByte(t, dir, 2)
	old, _ := os.ReadFile(filepath.Join(dir, wal.FileName))
	code, out, errs := runWAL("compact", "--wal-dir", dir)
	if code != 1 || out != "" || !strings.Contains(errs, "wal: corrupt") || !strings.Contains(errs, "framebus wal recover") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if now, _ := os.ReadFile(filepath.Join(dir, wal.FileName)); !bytes.Equal(now, old) {
		t.Fatal("the damaged file changed")
	}
}

func TestWalCompactRefusesLocked(t *testing.T) {
	dir := writeTestWAL(t, t.TempDir(), testFrames(30), wal.Options{})
	w, err := wal.Open(wal.Options{Dir: dir, NoSync: true, LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	code, out, errs := runWAL("compact", "--wal-dir", dir)
	if code != 1 || out != "" || !strings.Contains(errs, "locked") || !strings.Contains(errs, "stop the sidecar") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

func TestWalUsage(t *testing.T) {
	t.Setenv("FRAMEBUS_WAL_DIR", "")
	code, out, _ := runWAL("help")
	for _, sub := range []string{"stats", "dump", "verify", "compact", "recover"} {
		if code != 0 || !strings.Contains(out, "framebus wal "+sub) {
			t.Errorf("wal help: exit %d, no %q in %q", code, sub, out)
		}
	}
	if code, _, errs := runWAL("frobnicate"); code != 2 || !strings.Contains(errs, "Usage") {
		t.Errorf("unknown subcommand: exit %d, %q", code, errs)
	}
	for _, args := range [][]string{{"compact"}, {"compact", "--wal-dir", t.TempDir(), "x"}, {"compact", "--keep"}} {
		if code, _, _ := runWAL(args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
}
