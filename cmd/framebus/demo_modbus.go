package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// modbusBinary is the Modbus driver's executable name.
const modbusBinary = "framebus-modbus"

// findModbus returns the framebus-modbus executable next to exe, else the
// one in PATH.
func findModbus(exe string) (string, error) {
	next := filepath.Join(filepath.Dir(exe), modbusBinary)
	if fi, err := os.Stat(next); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return next, nil
	}
	if p, err := exec.LookPath(modbusBinary); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found next to %s or in PATH: build it with `make demo`, or `go build -o %s ./cmd/framebus-modbus`",
		modbusBinary, exe, filepath.Join(filepath.Dir(exe), modbusBinary))
}

// demoModbus is the Modbus part of the demo: the simulated PLC, the
// driver polling it into the bus, framebus tail showing its frames, and
// framebus cmd writing a setpoint that the PLC then follows. It stops the
// PLC and the driver before it returns.
func demoModbus(ctx context.Context, out io.Writer, exe, modbus, base, name, runDir string) error {
	plcAddr := freeAddr()
	if plcAddr == "off" {
		return errors.New("no free 127.0.0.1 port for the simulated PLC")
	}
	mapFile := filepath.Join(base, "plc.toml")
	m, err := exec.CommandContext(ctx, modbus, "sim", "--print-map", "--listen", plcAddr).Output()
	if err != nil {
		return fmt.Errorf("%s sim --print-map: %w", modbus, err)
	}
	if err := os.WriteFile(mapFile, m, 0o644); err != nil {
		return err
	}
	simLog, drvLog := filepath.Join(base, "plc-sim.log"), filepath.Join(base, "framebus-modbus.log")
	sim, err := startLogged(modbus, simLog, "sim", "--listen", plcAddr)
	if err != nil {
		return err
	}
	defer sim.stop()
	if err := waitListening(ctx, plcAddr, sim, simLog); err != nil {
		return err
	}
	drv, err := startLogged(modbus, drvLog, "run", "--name", name, "--run-dir", runDir, "--map", mapFile)
	if err != nil {
		return err
	}
	defer drv.stop()

	bus := []string{"--name", name, "--run-dir", runDir}
	fmt.Fprintf(out, "\nModbus: simulated PLC → framebus-modbus → bus → framebus tail\n")
	fmt.Fprintf(out, "  PLC:    %s sim --listen %s   (log %s)\n", modbusBinary, plcAddr, simLog)
	fmt.Fprintf(out, "  driver: %s --map %s %s   (log %s)\n", modbusBinary, mapFile, strings.Join(bus, " "), drvLog)
	fmt.Fprintf(out, "  (the framebus commands below also take %s)\n", strings.Join(bus, " "))

	step := func(what string, args ...string) ([]string, error) {
		fmt.Fprintf(out, "$ framebus %s\n", strings.Join(args, " "))
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		c := exec.CommandContext(cctx, exe, append(args, bus...)...)
		var buf bytes.Buffer
		c.Stdout, c.Stderr = &buf, &buf
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		err := c.Run()
		lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
		for _, l := range lines {
			if l != "" && !strings.HasPrefix(l, "framebus cmd: command") { // cmd repeats a failed final stage on stderr
				fmt.Fprintf(out, "  %s\n", l)
			}
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if cctx.Err() != nil {
			return nil, fmt.Errorf("%s took more than 20s: is the driver running? see %s", what, drvLog)
		}
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		return lines, nil
	}
	tail := []string{"tail", "--producer", "modbus", "--follow", "--limit"}
	if _, err := step("tail", append(tail, "2")...); err != nil {
		return err
	}
	mark := fileSize(simLog)
	lines, err := step("cmd", "cmd", "--target", "modbus", "--device", "plc1", "--set", "speed_setpoint=1800")
	if err != nil {
		return err
	}
	if !strings.HasPrefix(lines[len(lines)-1], "COMPLETED") {
		return fmt.Errorf("the setpoint write did not complete; see %s and %s", drvLog, simLog)
	}
	for _, l := range logLinesSince(simLog, mark, "written") {
		fmt.Fprintf(out, "  the PLC logged: %s\n", l)
	}
	fmt.Fprintln(out, "the pump speed follows its new setpoint:")
	if _, err := step("tail", append(tail, "4")...); err != nil {
		return err
	}
	fmt.Fprintln(out, "a read-only register is refused by the driver, before the PLC sees it:")
	if _, err := step("cmd", "cmd", "--target", "modbus", "--device", "plc1", "--set", "firmware=1"); err != nil {
		return err
	}
	drv.stop()
	sim.stop()
	return nil
}

// loggedProc is a child process whose output goes to a log file.
type loggedProc struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
}

func startLogged(bin, logPath string, args ...string) (*loggedProc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	c := exec.Command(bin, args...)
	c.Stdout, c.Stderr = f, f
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s %s: %w", bin, args[0], err)
	}
	p := &loggedProc{cmd: c, log: f, done: make(chan struct{})}
	go func() { c.Wait(); close(p.done) }()
	return p, nil
}

// stop ends the process with SIGTERM (SIGKILL after 5 s) and waits.
// Idempotent.
func (p *loggedProc) stop() {
	select {
	case <-p.done:
		p.log.Close()
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	p.log.Close()
}

// waitListening waits until addr accepts TCP connections.
func waitListening(ctx context.Context, addr string, p *loggedProc, logPath string) error {
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(logPath)
			return fmt.Errorf("the simulated PLC exited:\n%s", b)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the simulated PLC does not listen on %s after 10s; see %s", addr, logPath)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logLinesSince returns the lines of the log file after offset that
// contain substr, without their time= and level= fields.
func logLinesSince(path string, offset int64, substr string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil
	}
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, substr) {
			continue
		}
		// time=… level=INFO msg="holding register written" address=0 … client=…
		if _, rest, ok := strings.Cut(l, ` msg="`); ok {
			if msg, attrs, ok := strings.Cut(rest, `" `); ok {
				attrs, _, _ = strings.Cut(attrs, " client=")
				l = msg + ": " + attrs
			}
		}
		lines = append(lines, l)
	}
	return lines
}
