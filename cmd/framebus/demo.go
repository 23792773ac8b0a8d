package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/framebus/framebus/shm"
	"github.com/framebus/framebus/wal"
)

func demoMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("framebus demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	drivers := fs.Int("drivers", 3, "number of simulated driver processes")
	duration := fs.Duration("duration", 20*time.Second, "how long the drivers publish")
	points := fs.Int("points", 4, "points per frame")
	rate := fs.Float64("rate", 0, "frames per second per driver (0: as fast as they can)")
	dir := fs.String("dir", "", "directory for the demo's socket and WAL (default: a new one under $TMPDIR)")
	shmDir := fs.String("shm-dir", shm.DefaultDir, "directory of the segment file")
	preset := fs.String("preset", "default", "sidecar preset")
	modbus := fs.String("modbus", "auto", "the Modbus part: on, off, or auto (on if framebus-modbus is found)")
	throughput := fs.Bool("throughput", true, "the throughput part (--drivers, --duration, --points, --rate)")
	walMax := fs.String("wal-max-bytes", "1GiB", "the demo sidecar's wal_max_bytes: retention keeps its WAL about this size (the presets allow GiBs, which 20 s at full speed fill)")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: framebus demo [flags]

Starts a sidecar (framebus run) on a private bus, then:

- the Modbus part: a simulated PLC (framebus-modbus sim) and the Modbus
  driver (framebus-modbus) polling it into the bus; framebus tail shows its
  frames, framebus cmd writes a setpoint, the PLC logs the write and its pump
  speed follows. framebus-modbus is looked for next to this executable, then
  in PATH (make demo builds both into bin/);
- the throughput part: simulated driver processes (framebus publish); it
  prints the durable throughput and the bytes not yet durable once a second;

then stops everything gracefully and prints what the WAL holds and where it
is. Needs no configuration.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *drivers < 1 || *drivers > 32 || *points < 1 || *points > 1000 {
		fmt.Fprintln(stderr, "framebus demo: --drivers must be 1..32 and --points 1..1000")
		return 2
	}
	if *modbus != "on" && *modbus != "off" && *modbus != "auto" {
		fmt.Fprintf(stderr, "framebus demo: --modbus %q: want on, off or auto\n", *modbus)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := demo(ctx, stdout, stderr, demoOpts{drivers: *drivers, duration: *duration, points: *points, rate: *rate, dir: *dir, shmDir: *shmDir, preset: *preset,
		modbus: *modbus, throughput: *throughput, walMax: *walMax}); err != nil {
		fmt.Fprintln(stderr, "framebus demo:", err)
		return 1
	}
	return 0
}

type demoOpts struct {
	drivers  int
	duration time.Duration
	points   int
	rate     float64
	dir      string
	shmDir   string
	preset   string
	// modbus is on, off or auto (on if framebus-modbus is found).
	modbus     string
	throughput bool
	walMax     string // --wal-max-bytes of the sidecar
}

func demo(ctx context.Context, out, errw io.Writer, o demoOpts) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	var modbus string
	if o.modbus != "off" {
		if modbus, err = findModbus(exe); err != nil {
			if o.modbus == "on" {
				return err
			}
			fmt.Fprintf(errw, "framebus demo: %v; skipping the Modbus part\n", err)
		}
	}
	base := o.dir
	if base == "" {
		if base, err = os.MkdirTemp("", "framebus-demo-"); err != nil {
			return err
		}
	}
	name := "demo-" + strconv.Itoa(os.Getpid())
	runDir, walDir := filepath.Join(base, "run"), filepath.Join(base, "wal")
	metrics, httpAddr := freeAddr(), freeAddr()
	sidecarLog, err := os.Create(filepath.Join(base, "sidecar.log"))
	if err != nil {
		return err
	}
	defer sidecarLog.Close()
	args := []string{"run", "--name", name, "--preset", o.preset, "--shm-dir", o.shmDir, "--run-dir", runDir, "--wal-dir", walDir, "--metrics-addr", metrics, "--http-addr", httpAddr}
	if o.walMax != "" {
		args = append(args, "--wal-max-bytes", o.walMax)
	}
	sc := exec.Command(exe, args...)
	sc.Stdout, sc.Stderr = sidecarLog, sidecarLog
	sc.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sc.Start(); err != nil {
		return err
	}
	scDone := make(chan struct{})
	var scErr error
	go func() { scErr = sc.Wait(); close(scDone) }()
	defer func() {
		sc.Process.Kill()
		<-scDone
	}()
	sock := filepath.Join(runDir, name+".sock")
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-scDone:
			b, _ := os.ReadFile(sidecarLog.Name())
			return fmt.Errorf("the sidecar exited (%v):\n%s", scErr, b)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the sidecar did not open %s within 30s; see %s", sock, sidecarLog.Name())
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Fprintf(out, "framebus demo: sidecar on bus %q (preset %s)\n", name, o.preset)
	fmt.Fprintf(out, "  metrics: http://%s/metrics   status: http://%s/v1/status   sidecar log: %s\n", metrics, httpAddr, sidecarLog.Name())
	fmt.Fprintf(out, "  watch it in another terminal: %s stat --name %s --metrics-addr %s --http-addr %s\n", statExe(exe), name, metrics, httpAddr)
	if modbus != "" {
		if err := demoModbus(ctx, out, exe, modbus, base, name, runDir); err != nil && ctx.Err() == nil {
			return fmt.Errorf("the Modbus part: %w", err)
		}
	}
	if o.throughput && ctx.Err() == nil {
		if err := demoThroughput(ctx, out, exe, name, runDir, o); err != nil {
			return err
		}
	}
	sc.Process.Signal(syscall.SIGTERM)
	<-scDone
	if scErr != nil {
		return fmt.Errorf("the sidecar did not stop cleanly (%v); see %s", scErr, sidecarLog.Name())
	}
	walPath := filepath.Join(walDir, name)
	st, err := wal.ReadStats(walPath)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nWAL %s: %d frames, %d bytes, sequence %d..%d\n", walPath, st.Frames, st.Bytes, st.FirstSeq, st.LastSeq)
	fmt.Fprintf(out, "inspect it with: framebus wal stats --wal-dir %s   (remove %s when done)\n", walPath, base)
	if o.throughput {
		fmt.Fprintln(out, "* MB/s estimated from the frame size of the template")
	}
	return nil
}

// demoThroughput is the throughput part of the demo: o.drivers `framebus
// publish` processes for o.duration, with a line of rates a second.
func demoThroughput(ctx context.Context, out io.Writer, exe, name, runDir string, o demoOpts) error {
	fmt.Fprintf(out, "\nThroughput: %d driver processes (framebus publish), %d points per frame, for %v\n", o.drivers, o.points, o.duration)
	type drv struct {
		cmd *exec.Cmd
		out strings.Builder
	}
	ds := make([]*drv, o.drivers)
	for i := range ds {
		d := &drv{}
		d.cmd = exec.Command(exe, "publish", "--name", name, "--run-dir", runDir, "--producer", fmt.Sprintf("demo-driver-%d", i+1),
			"--device", fmt.Sprintf("plc%d", i+1), "--count", "0", "--points", strconv.Itoa(o.points), "--rate", fmt.Sprint(o.rate))
		d.cmd.Stdout, d.cmd.Stderr = &d.out, &d.out
		d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := d.cmd.Start(); err != nil {
			return err
		}
		ds[i] = d
	}
	seg, err := shm.Open(o.shmDir, name)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "  time   durable frames/s   durable MB/s*   not yet durable   rings   flags")
	start := time.Now()
	last, lastT := seg.Durable(), start
	tick := time.NewTicker(time.Second)
	end := time.After(o.duration)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-end:
			break loop
		case now := <-tick.C:
			d := seg.Durable()
			var backlog uint64
			rings := seg.Rings()
			for _, r := range rings {
				if ring, err := seg.Ring(r.Slot); err == nil {
					backlog += ring.Used()
				}
			}
			dt := now.Sub(lastT).Seconds()
			rate := float64(d-last) / dt
			fmt.Fprintf(out, "%5.0fs %18.0f %15.1f %13d KiB %7d   %s\n", now.Sub(start).Seconds(), rate,
				rate*float64(frameSize(o.points))/1e6, backlog>>10, len(rings), flagNames(seg.Flags()))
			last, lastT = d, now
		}
	}
	tick.Stop()
	seg.Close()
	for _, d := range ds {
		d.cmd.Process.Signal(syscall.SIGTERM)
	}
	for i, d := range ds {
		d.cmd.Wait()
		fmt.Fprintf(out, "  driver %d: %s", i+1, d.out.String())
	}
	return nil
}

// frameSize is the encoded size of a demo frame (see framebus publish).
func frameSize(points int) int { return 120 + 72*points }

func flagNames(f uint64) string {
	var n []string
	if f&shm.FlagPause != 0 {
		n = append(n, "PAUSE")
	}
	if f&shm.FlagDegraded != 0 {
		n = append(n, "DEGRADED")
	}
	if f&shm.FlagShuttingDown != 0 {
		n = append(n, "SHUTTING_DOWN")
	}
	if len(n) == 0 {
		return "-"
	}
	return strings.Join(n, ",")
}

// freeAddr returns a free loopback address for the demo's metrics.
func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "off"
	}
	defer ln.Close()
	return ln.Addr().String()
}

// statExe is how the demo names this executable in the framebus stat line it
// prints: relative to the working directory when it is below it (make demo
// runs bin/framebus), else its path.
func statExe(exe string) string {
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, exe); err == nil && !strings.HasPrefix(rel, "..") {
			return rel
		}
	}
	return exe
}
