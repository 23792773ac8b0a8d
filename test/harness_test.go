package test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/wal"
)

var binary string // the framebus binary built for this test run

func TestMain(m *testing.M) {
	// A re-executed test binary plays a role (hostile_role_test.go).
	if code, ok := runRole(); ok {
		os.Exit(code)
	}
	dir, err := os.MkdirTemp("", "framebus-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "framebus")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/framebus")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building framebus:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var busCounter atomic.Uint64

// bus is one bus instance's directories and name, all private to a test.
type bus struct {
	t      testing.TB
	name   string
	shmDir string
	runDir string
	walDir string
	extra  []string // more `framebus run` flags
}

func newBus(t testing.TB, extra ...string) *bus {
	base := t.TempDir()
	b := &bus{t: t, name: fmt.Sprintf("e2e-%d-%d", os.Getpid(), busCounter.Add(1)),
		shmDir: filepath.Join(base, "shm"), runDir: filepath.Join(base, "run"), walDir: filepath.Join(base, "wal"), extra: extra}
	for _, d := range []string{b.shmDir, b.runDir, b.walDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func (b *bus) runArgs() []string {
	return append([]string{"run", "--name", b.name, "--shm-dir", b.shmDir, "--run-dir", b.runDir, "--wal-dir", b.walDir,
		"--metrics-addr", "off", "--http-addr", "off"}, b.extra...)
}

// proc is a framebus process started by a test; it is killed and reaped
// when the test ends.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t testing.TB, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	p := &proc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, p.out.String())
		}
	})
	return p
}

// wait waits for the process to exit and returns its error.
func (p *proc) wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("%v did not exit within %v; output:\n%s", p.cmd.Args, timeout, p.out.String())
	}
	return nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// startSidecar starts `framebus run` and waits until its socket accepts.
func (b *bus) startSidecar() *proc {
	b.t.Helper()
	p := start(b.t, b.runArgs()...)
	sock := filepath.Join(b.runDir, b.name+".sock")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if strings.Contains(p.out.String(), "framebus sidecar running") {
			if _, err := os.Stat(sock); err == nil {
				return p
			}
		}
		if p.exited() {
			b.t.Fatalf("sidecar exited: %v\n%s", p.err, p.out.String())
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("sidecar not ready after 30s:\n%s", p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and expects a clean exit.
func (p *proc) stop(t testing.TB) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.wait(t, 90*time.Second); err != nil {
		t.Fatalf("%v exited with %v after SIGTERM:\n%s", p.cmd.Args[:2], err, p.out.String())
	}
}

// publish starts `framebus publish` as a driver.
func (b *bus) publish(producer string, count int, extra ...string) *proc {
	args := append([]string{"publish", "--name", b.name, "--run-dir", b.runDir, "--producer", producer, "--count", fmt.Sprint(count)}, extra...)
	return start(b.t, args...)
}

// walFrames reads the WAL after the sidecar has stopped and returns, per
// producer, the seq numbers of its data frames in WAL order.
func (b *bus) walFrames() map[string][]uint64 {
	b.t.Helper()
	w, err := wal.Open(wal.Options{Dir: filepath.Join(b.walDir, b.name)})
	if err != nil {
		b.t.Fatalf("open WAL: %v", err)
	}
	defer w.Close()
	out := map[string][]uint64{}
	err = w.Iterate(1, func(seq uint64, f wal.Frame) error {
		if schema.Kind(f.Kind) != schema.KindData {
			return nil
		}
		df, err := schema.ViewDataFrame(f.Data)
		if err != nil {
			return fmt.Errorf("WAL seq %d: %w", seq, err)
		}
		out[string(df.Producer())] = append(out[string(df.Producer())], df.Seq())
		return nil
	})
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

// checkExactlyOnce asserts that producer's frames are seq 0..n-1, each once,
// in order.
func checkExactlyOnce(t testing.TB, got map[string][]uint64, producer string, n int) {
	t.Helper()
	seqs := got[producer]
	if len(seqs) != n {
		missing, dup := 0, 0
		seen := map[uint64]int{}
		for _, s := range seqs {
			seen[s]++
		}
		for i := 0; i < n; i++ {
			if seen[uint64(i)] == 0 {
				missing++
			}
		}
		for _, c := range seen {
			if c > 1 {
				dup += c - 1
			}
		}
		t.Fatalf("%s: %d frames in the WAL, want %d (%d missing, %d duplicated)", producer, len(seqs), n, missing, dup)
	}
	for i, s := range seqs {
		if s != uint64(i) {
			t.Fatalf("%s: WAL position %d holds seq %d, want %d (reordered or duplicated)", producer, i, s, i)
		}
	}
}

// lines returns the lines of a process's output that contain sub.
func lines(out, sub string) []string {
	var l []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if strings.Contains(sc.Text(), sub) {
			l = append(l, sc.Text())
		}
	}
	return l
}

var _ = context.Background
