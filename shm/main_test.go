package shm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Multiprocess tests re-execute the test binary: TestMain runs a named role
// instead of the tests when roleEnv is set.
const roleEnv = "FRAMEBUS_SHM_TEST_ROLE"

var roles = map[string]func() error{}

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		fn, ok := roles[role]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown role %q\n", role)
			os.Exit(2)
		}
		if path := os.Getenv("FRAMEBUS_SHM_TEST_CPUPROFILE"); path != "" {
			f, err := os.Create(path)
			if err == nil {
				pprof.StartCPUProfile(f)
			}
		}
		err := fn()
		pprof.StopCPUProfile()
		if err != nil {
			fmt.Fprintf(os.Stderr, "role %s: %v\n", role, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child is a re-executed test binary running a role.
type child struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Reader
	errb  *strings.Builder
	done  chan struct{}
	state error
}

// testExecEnv names the program that runs this test binary when the kernel
// cannot (`make test-arm64` sets qemu-aarch64-static: under qemu-user
// without a binfmt_misc registration an arm64 binary cannot exec itself);
// startChild runs roles through it, as `go test -exec` runs the first one.
const testExecEnv = "FRAMEBUS_TEST_EXEC"

// startChild starts a role with the given environment (KEY=VALUE). The child
// is killed and reaped when the test ends, whatever its outcome.
func startChild(tb testing.TB, role string, env ...string) *child {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	if emu := os.Getenv(testExecEnv); emu != "" {
		cmd = exec.Command(emu, os.Args[0], "-test.run=^$")
	}
	cmd.Env = append(os.Environ(), append([]string{roleEnv + "=" + role}, env...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c := &child{cmd: cmd, errb: &strings.Builder{}, done: make(chan struct{})}
	cmd.Stderr = c.errb
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	c.in, c.out = in, bufio.NewReader(out)
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.kill() })
	return c
}

// line reads one line the child printed, with a timeout.
func (c *child) line(tb testing.TB, timeout time.Duration) string {
	tb.Helper()
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := c.out.ReadString('\n')
		ch <- res{s, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			tb.Fatalf("child %d: reading its output: %v (stderr: %s)", c.cmd.Process.Pid, r.err, c.errb.String())
		}
		return strings.TrimSpace(r.s)
	case <-time.After(timeout):
		c.kill()
		tb.Fatalf("child %d printed nothing for %v (stderr: %s)", c.cmd.Process.Pid, timeout, c.errb.String())
	}
	return ""
}

// wait waits for the child to exit and returns its error.
func (c *child) wait() error {
	select {
	case <-c.done:
		return c.state
	default:
	}
	c.in.Close()
	c.state = c.cmd.Wait()
	close(c.done)
	if c.state != nil && c.errb.Len() > 0 {
		c.state = fmt.Errorf("%w: %s", c.state, c.errb.String())
	}
	return c.state
}

// kill sends SIGKILL and reaps the child.
func (c *child) kill() {
	select {
	case <-c.done:
		return
	default:
	}
	c.cmd.Process.Kill()
	c.wait()
}

func envInt(name string) int {
	v, err := strconv.Atoi(os.Getenv(name))
	if err != nil {
		panic(fmt.Sprintf("%s: %v", name, err))
	}
	return v
}

func envU64(name string) uint64 {
	v, err := strconv.ParseUint(os.Getenv(name), 10, 64)
	if err != nil {
		panic(fmt.Sprintf("%s: %v", name, err))
	}
	return v
}

// openRingEnv opens the segment and ring named by SEG_DIR, SEG_NAME, SLOT.
func openRingEnv() (*Segment, *Ring, error) {
	s, err := Open(os.Getenv("SEG_DIR"), os.Getenv("SEG_NAME"))
	if err != nil {
		return nil, nil, err
	}
	r, err := s.Ring(envInt("SLOT"))
	if err != nil {
		return nil, nil, err
	}
	return s, r, nil
}

func segEnv(s *Segment, slot int) []string {
	name := strings.TrimPrefix(s.path[strings.LastIndexByte(s.path, '/')+1:], "framebus-")
	return []string{"SEG_DIR=" + s.path[:strings.LastIndexByte(s.path, '/')], "SEG_NAME=" + name, "SLOT=" + strconv.Itoa(slot)}
}
