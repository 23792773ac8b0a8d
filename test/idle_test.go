package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	plainOnce   sync.Once
	plainBinary string
	plainErr    error
)

// plain returns a framebus binary built without the race detector, whose
// CPU and memory use are the product's (the race runtime multiplies both).
func plain(t *testing.T) string {
	plainOnce.Do(func() {
		if !raceEnabled {
			plainBinary = binary
			return
		}
		plainBinary = filepath.Join(filepath.Dir(binary), "framebus-plain")
		out, err := exec.Command("go", "build", "-o", plainBinary, "../cmd/framebus").CombinedOutput()
		if err != nil {
			plainErr = err
			plainBinary = string(out)
		}
	})
	if plainErr != nil {
		t.Fatalf("building framebus without -race: %v\n%s", plainErr, plainBinary)
	}
	return plainBinary
}

// procTicks returns user+system CPU ticks of pid (clock ticks of 10 ms).
func procTicks(t testing.TB, pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	u, _ := strconv.Atoi(f[11]) // field 14
	s, _ := strconv.Atoi(f[12]) // field 15
	return u + s
}

// procRSS returns the resident memory of pid that is not the shared segment
// (RssAnon + RssFile), in bytes.
func procRSS(t *testing.T, pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, line := range strings.Split(string(b), "\n") {
		for _, k := range []string{"RssAnon:", "RssFile:"} {
			if rest, ok := strings.CutPrefix(line, k); ok {
				kb, _ := strconv.Atoi(strings.Fields(rest)[0])
				total += kb << 10
			}
		}
	}
	return total
}

// TestIdleSidecar: with drivers attached but silent, the sidecar uses less
// than 1 % of a CPU over 10 s, and less than 64 MiB of memory besides the
// segment.
func TestIdleSidecar(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 12 s")
	}
	bin := plain(t)
	b := newBus(t)
	saved := binary
	binary = bin
	sc := b.startSidecar()
	d1 := b.publish("silent-1", 0, "--rate", "0.001")
	d2 := b.publish("silent-2", 0, "--rate", "0.001")
	binary = saved
	time.Sleep(2 * time.Second) // attached, first frame committed, settled
	pid := sc.cmd.Process.Pid
	t0 := procTicks(t, pid)
	time.Sleep(10 * time.Second)
	used := procTicks(t, pid) - t0
	rss := procRSS(t, pid)
	t.Logf("idle sidecar: %d ms of CPU in 10 s, %d MiB resident besides the segment", used*10, rss>>20)
	if used >= 10 { // 10 ticks = 100 ms = 1 % of 10 s
		t.Errorf("idle sidecar used %d ms of CPU in 10 s (limit 100 ms)", used*10)
	}
	if rss >= 64<<20 {
		t.Errorf("idle sidecar has %d MiB resident besides the segment (limit 64 MiB)", rss>>20)
	}
	for _, d := range []*proc{d1, d2} {
		if d.exited() {
			t.Fatalf("a silent driver exited: %s", d.out.String())
		}
	}
}
