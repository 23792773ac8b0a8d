package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"

	"github.com/framebus/framebus/shm"
	"github.com/framebus/framebus/sidecar"
)

// `framebus bench` runs the standard scenarios against the real binaries:
// it starts its own sidecar (`framebus run`) and driver processes
// (`framebus publish`) on a private bus, measures the peers in the same run
// (the disk, a Unix socket between two processes, NATS JetStream when
// nats-server is installed), and writes bench.md and PNG plots.
//
// The files of this command:
//
//	bench.go          flags, the temporary bus directories, child processes, progress
//	bench_run.go      the scenarios: durable ingest, publish→durable latency, live and commands
//	bench_peers.go    the peers: disk, Unix socket (a re-executed child), JetStream
//	bench_report.go   medians, the markdown and the plots

// The scenarios, in the order they run.
const (
	benchIngest  = "ingest"
	benchLatency = "latency"
	benchLive    = "live"
)

var benchScenarios = []string{benchIngest, benchLatency, benchLive}

// benchScaleEnv multiplies every count (frames, rounds, bytes, seconds) of
// a run; for tests and quick trials. --quick sets 0.25 unless it is given.
const benchScaleEnv = "FRAMEBUS_BENCH_SCALE"

// benchOpts is what the flags of `framebus bench` chose.
type benchOpts struct {
	command   string // the command line, as the report prints it
	runs      int
	scale     float64 // multiplies every count; 1 for a full run
	scenarios []string
	out       string // directory for bench.md and the PNGs
	dir       string // where the temporary directory goes ("" = $TMPDIR)
	shmRoot   string // where the private segment directory goes
}

func (o benchOpts) has(s string) bool { return slices.Contains(o.scenarios, s) }

func benchMain(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == benchPeerArg {
		return benchPeerMain(args[1:], stderr)
	}
	fs := flag.NewFlagSet("framebus bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	runs := fs.Int("runs", 3, "repetitions of every measurement; the tables show medians and every run")
	quick := fs.Bool("quick", false, "a smoke test: 1 run, a quarter of the counts")
	out := fs.String("out", "docs", "directory for bench.md, bench-throughput.png and bench-latency.png")
	scen := fs.String("scenarios", strings.Join(benchScenarios, ","), "comma list of the scenarios to run: "+strings.Join(benchScenarios, ", "))
	dir := fs.String("dir", "", "directory for the temporary WALs, sockets, JetStream's store and the disk peer's file (default $TMPDIR): the disk measured")
	shmRoot := fs.String("shm-dir", shm.DefaultDir, "tmpfs in which a private directory for the segments is made")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: framebus bench [flags]

Runs the standard scenarios against the real thing: its own sidecar
(framebus run) on a private bus and driver processes (framebus publish),
with the peers measured in the same run. Every measurement is repeated
--runs times; bench.md in --out gets the medians with every run, the ratios
framebus ÷ peer, and two plots. The tables are also printed at the end.

Scenarios:
  ingest    durable ingest at the high-throughput preset for frames of 1, 8,
            32 and 128 points: frames/s and MB/s; peers: the disk's fsync'd
            sequential writes, a Unix socket (one write per frame, between
            two processes), NATS JetStream (when nats-server is in PATH)
  latency   publish→durable p50 and p99 at 100 k and 1 M frames/s, default
            and high-throughput presets
  live      live publish→subscriber latency and command round trip; peer: a
            Unix socket ping-pong between two processes

Everything runs in a temporary directory (and a private one under --shm-dir)
that is removed at the end, also on Ctrl-C. A full run takes a few minutes;
a busy machine gives lower and noisier figures (the report prints the load
average at the start).

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
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	o := benchOpts{command: benchCommandLine(args), runs: *runs, scale: 1, out: *out, dir: *dir, shmRoot: *shmRoot}
	var bad []string
	if fs.NArg() > 0 {
		bad = append(bad, fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	}
	if *quick {
		o.scale = 0.25
		if !set["runs"] {
			o.runs = 1
		}
	}
	if s := os.Getenv(benchScaleEnv); s != "" {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f <= 0 || f > 100 {
			bad = append(bad, fmt.Sprintf("%s=%q: want a number in (0, 100]", benchScaleEnv, s))
		}
		o.scale = f
	}
	if o.runs < 1 || o.runs > 100 {
		bad = append(bad, "--runs must be 1..100")
	}
	for _, s := range strings.Split(*scen, ",") {
		s = strings.TrimSpace(s)
		switch {
		case s == "":
		case !slices.Contains(benchScenarios, s):
			bad = append(bad, fmt.Sprintf("--scenarios: unknown scenario %q (choose from %s)", s, strings.Join(benchScenarios, ", ")))
		case !o.has(s):
			o.scenarios = append(o.scenarios, s)
		}
	}
	if len(o.scenarios) == 0 && len(bad) == 0 {
		bad = append(bad, "--scenarios: none chosen")
	}
	if len(bad) > 0 {
		fmt.Fprintln(stderr, "framebus bench: "+strings.Join(bad, "; "))
		return 2
	}
	// Sorted into the order they run.
	slices.SortFunc(o.scenarios, func(a, b string) int { return slices.Index(benchScenarios, a) - slices.Index(benchScenarios, b) })

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench(ctx, o, stdout, stderr); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "framebus bench: interrupted; the children are stopped and the temporary directories removed")
			return 130
		}
		fmt.Fprintln(stderr, "framebus bench:", err)
		return 1
	}
	return 0
}

// benchCommandLine is the command as a user would type it again.
func benchCommandLine(args []string) string {
	parts := []string{"framebus", "bench"}
	for _, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\*?;&|<>()") {
			a = strconv.Quote(a)
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// bench runs the chosen scenarios and writes the report.
func bench(ctx context.Context, o benchOpts, stdout, stderr io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	res := &benchResults{command: o.command, runs: o.runs, scale: o.scale, machine: benchMachineInfo(), start: time.Now()}
	if err := benchCheckShm(o); err != nil {
		return err
	}
	e, err := newBenchEnv(o, exe, stderr)
	if err != nil {
		return err
	}
	defer e.close()
	if o.has(benchIngest) {
		if e.natsServer, err = exec.LookPath("nats-server"); err != nil {
			e.natsServer = ""
			res.jetStreamSkipped = "skipped: nats-server not on PATH (apt-get install nats-server)"
			fmt.Fprintln(stderr, "framebus bench: JetStream peer "+res.jetStreamSkipped)
		}
	}
	e.prog = newBenchProgress(stderr, benchSteps(o, e.natsServer != ""))
	if o.has(benchIngest) {
		if res.ingest, err = e.runIngest(ctx); err != nil {
			e.prog.finish()
			return err
		}
	}
	if o.has(benchLatency) {
		if res.latency, err = e.runLatency(ctx); err != nil {
			e.prog.finish()
			return err
		}
	}
	if o.has(benchLive) {
		if res.live, err = e.runLive(ctx); err != nil {
			e.prog.finish()
			return err
		}
	}
	e.prog.finish()
	res.elapsed = time.Since(res.start)
	res.failures = e.failures
	if err := res.write(o.out); err != nil {
		return err
	}
	fmt.Fprint(stdout, res.tables())
	fmt.Fprintf(stdout, "\nwritten: %s (and its plots); %s in all\n", filepath.Join(o.out, "bench.md"), res.elapsed.Round(time.Second))
	if n := len(e.failures); n > 0 {
		return fmt.Errorf("%d of %d measurements failed (their details above; bench.md lists them and reports no figure for them)", n, e.prog.total)
	}
	return nil
}

// benchCheckShm fails early, with what to do, when the tmpfs for the
// segments has too little room for the largest preset a scenario uses.
func benchCheckShm(o benchOpts) error {
	need := int64(0)
	for _, p := range []string{sidecar.PresetDefault, sidecar.PresetHighThroughput} {
		if c, err := sidecar.Preset(p); err == nil {
			need = max(need, c.ShmBytes)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(o.shmRoot, &st); err != nil {
		return fmt.Errorf("--shm-dir %s: %w", o.shmRoot, err)
	}
	if free := int64(st.Bavail) * st.Bsize; free < need {
		return fmt.Errorf("%s has %s free, and the high-throughput preset's segment needs %s: enlarge it (mount -o remount,size=1G %s) or choose another tmpfs with --shm-dir",
			o.shmRoot, fmtBytes(float64(free)), fmtBytes(float64(need)), o.shmRoot)
	}
	return nil
}

// benchEnv is one invocation's private directories and children.
type benchEnv struct {
	opts       benchOpts
	exe        string
	base       string // temporary directory: WALs, sockets, JetStream, the disk file
	shmDir     string // private directory for the segments
	natsServer string // path of nats-server, "" when not found
	prog       *benchProgress
	buses      int // buses started so far, for unique names
	failures   []benchFailure

	mu struct {
		sync.Mutex
		children map[*benchChild]struct{}
	}
}

func newBenchEnv(o benchOpts, exe string, stderr io.Writer) (*benchEnv, error) {
	e := &benchEnv{opts: o, exe: exe}
	e.mu.children = map[*benchChild]struct{}{}
	var err error
	if e.base, err = os.MkdirTemp(o.dir, "framebus-bench-"); err != nil {
		return nil, fmt.Errorf("a temporary directory: %w", err)
	}
	if e.shmDir, err = os.MkdirTemp(o.shmRoot, "framebus-bench-"); err != nil {
		os.RemoveAll(e.base)
		return nil, fmt.Errorf("a segment directory in %s: %w", o.shmRoot, err)
	}
	return e, nil
}

// close kills every child still running and removes the directories.
func (e *benchEnv) close() {
	e.mu.Lock()
	cs := make([]*benchChild, 0, len(e.mu.children))
	for c := range e.mu.children {
		cs = append(cs, c)
	}
	e.mu.Unlock()
	for _, c := range cs {
		c.kill()
	}
	os.RemoveAll(e.shmDir)
	os.RemoveAll(e.base)
}

// count scales a full run's count n (at least min).
func (e *benchEnv) count(n, least int) int {
	return max(least, int(float64(n)*e.opts.scale))
}

// step runs one measurement: it shows desc in the progress bar; fn
// returns a short result for the progress line. A failed measurement does
// not end the bench: it is printed with its details, listed in the report
// (fn records NaN for it) and makes the command exit 1 at the end. step
// returns an error only when ctx ends.
func (e *benchEnv) step(ctx context.Context, desc string, fn func() (string, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.prog.begin(desc)
	r, err := fn()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		e.failures = append(e.failures, benchFailure{desc: desc, reason: firstLine(err.Error())})
		e.prog.fail(desc, err)
		return nil
	}
	e.prog.end(desc, r)
	return nil
}

// benchFailure is a measurement that failed: it has no figure.
type benchFailure struct {
	desc, reason string
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// settle writes back every dirty page before a measured run, so that a run
// does not pay for the previous one's writes.
func settle() { unix.Sync() }

// benchChild is a child process: its output is kept for error messages,
// and benchEnv.close kills it if it is still running.
type benchChild struct {
	e    *benchEnv
	name string // for messages: "framebus run", "nats-server"
	cmd  *exec.Cmd
	out  benchBuffer
	done chan struct{}
	err  error
}

// benchBuffer is a bytes buffer safe for a child's stdout and stderr and
// a reader in another goroutine; it keeps the last 64 KiB.
type benchBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (b *benchBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b = append(b.b, p...)
	if len(b.b) > 128<<10 {
		b.b = append(b.b[:0], b.b[len(b.b)-64<<10:]...)
	}
	return len(p), nil
}

func (b *benchBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.b)
}

// start starts path with args in its own process group (Ctrl-C reaches
// framebus bench only, which stops the children itself), killed if this
// process dies.
func (e *benchEnv) start(name, path string, args ...string) (*benchChild, error) {
	c := &benchChild{e: e, name: name, cmd: exec.Command(path, args...), done: make(chan struct{})}
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
	// Not the bench's own variable: the sidecar warns about unknown
	// FRAMEBUS_ variables.
	c.cmd.Env = slices.DeleteFunc(os.Environ(), func(v string) bool { return strings.HasPrefix(v, benchScaleEnv+"=") })
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	e.mu.Lock()
	e.mu.children[c] = struct{}{}
	e.mu.Unlock()
	go func() {
		c.err = c.cmd.Wait()
		e.mu.Lock()
		delete(e.mu.children, c)
		e.mu.Unlock()
		close(c.done)
	}()
	return c, nil
}

func (c *benchChild) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// kill kills the child and waits for it.
func (c *benchChild) kill() {
	c.cmd.Process.Kill()
	<-c.done
}

// failed describes a child that failed, with its output.
func (c *benchChild) failed(what string) error {
	return fmt.Errorf("%s %s; its output:\n%s", c.name, what, indent(c.out.String()))
}

// wait waits for the child to exit: an error with its output if it fails,
// takes longer than timeout, or ctx ends (then it is killed).
func (c *benchChild) wait(ctx context.Context, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.done:
		return c.result()
	case <-ctx.Done():
		c.kill()
		return ctx.Err()
	case <-t.C:
		c.kill()
		return c.failed(fmt.Sprintf("did not finish within %v", timeout))
	}
}

// result is the error of a child that has exited: nil, or its exit
// status with its output.
func (c *benchChild) result() error {
	if c.err != nil {
		return c.failed(fmt.Sprintf("failed (%v)", c.err))
	}
	return nil
}

// stop sends SIGTERM and expects a clean exit within timeout.
func (c *benchChild) stop(timeout time.Duration) error {
	c.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-c.done:
		if c.err != nil {
			return c.failed(fmt.Sprintf("did not stop cleanly (%v)", c.err))
		}
		return nil
	case <-t.C:
		c.kill()
		return c.failed(fmt.Sprintf("did not stop within %v of SIGTERM", timeout))
	}
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "    (none)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

// benchBus is a sidecar started by framebus bench.
type benchBus struct {
	e                 *benchEnv
	name, dir, runDir string
	preset            string
	sc                *benchChild
}

// startBus starts `framebus run --preset preset` on a new private bus and
// waits until it serves.
func (e *benchEnv) startBus(ctx context.Context, preset string) (*benchBus, error) {
	e.buses++
	b := &benchBus{e: e, name: fmt.Sprintf("bench-%d-%d", os.Getpid(), e.buses), preset: preset}
	b.dir = filepath.Join(e.base, b.name)
	b.runDir = filepath.Join(b.dir, "run")
	walDir := filepath.Join(b.dir, "wal")
	for _, d := range []string{b.runDir, walDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	var err error
	b.sc, err = e.start("framebus run", e.exe, "run", "--name", b.name, "--shm-dir", e.shmDir, "--run-dir", b.runDir, "--wal-dir", walDir,
		"--metrics-addr", "off", "--http-addr", "off", "--preset", preset)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(b.runDir, b.name+".sock")
	for deadline := time.Now().Add(30 * time.Second); ; {
		if strings.Contains(b.sc.out.String(), "framebus sidecar running") {
			if _, err := os.Stat(sock); err == nil {
				return b, nil
			}
		}
		if b.sc.exited() {
			b.remove()
			return nil, b.sc.failed(fmt.Sprintf("exited at start (%v)", b.sc.err))
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			b.sc.kill()
			b.remove()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, b.sc.failed("did not start serving within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop stops the sidecar gracefully and removes its WAL and segment.
func (b *benchBus) stop() error {
	err := b.sc.stop(90 * time.Second)
	b.remove()
	return err
}

func (b *benchBus) remove() {
	os.Remove(shm.Path(b.e.shmDir, b.name))
	os.RemoveAll(b.dir)
}

// benchProgress shows one step per measured run: a bar with the current
// scenario on a terminal, otherwise a line on stderr per finished run.
type benchProgress struct {
	w           io.Writer
	bar         *progressbar.ProgressBar // nil without a terminal
	total, done int
	started     time.Time
}

func newBenchProgress(w io.Writer, total int) *benchProgress {
	p := &benchProgress{w: w, total: total, started: time.Now()}
	if isTerminalWriter(w) {
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetWidth(30),
			progressbar.OptionShowCount(),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionSetRenderBlankState(true),
			progressbar.OptionSetDescription("starting"),
		)
	}
	return p
}

func (p *benchProgress) begin(desc string) {
	if p.bar != nil {
		p.bar.Describe(desc)
	}
}

func (p *benchProgress) end(desc, result string) {
	p.done++
	if p.bar != nil {
		p.bar.Add(1)
		return
	}
	fmt.Fprintf(p.w, "[%d/%d %5.0fs] %s: %s\n", p.done, p.total, time.Since(p.started).Seconds(), desc, result)
}

// fail reports a failed measurement with its details (a child's output),
// above the bar on a terminal.
func (p *benchProgress) fail(desc string, err error) {
	p.done++
	if p.bar != nil {
		p.bar.Clear()
		fmt.Fprintf(p.w, "\r%s: FAILED: %v\n", desc, err)
		p.bar.Add(1)
		return
	}
	fmt.Fprintf(p.w, "[%d/%d %5.0fs] %s: FAILED: %v\n", p.done, p.total, time.Since(p.started).Seconds(), desc, err)
}

func (p *benchProgress) finish() {
	if p.bar != nil {
		p.bar.Finish()
		p.bar = nil
	}
}

// benchMachine describes where the bench ran.
type benchMachine struct {
	cpu     string
	cores   int
	kernel  string
	goVer   string
	version string  // framebus version and commit, as far as known
	load    string  // /proc/loadavg's three averages at the start
	load1   float64 // the 1-minute average; -1 if unknown
}

func benchMachineInfo() benchMachine {
	m := benchMachine{cpu: "unknown CPU", cores: runtime.NumCPU(), kernel: runtime.GOOS, goVer: runtime.Version(),
		version: benchVersion(), load: "unknown", load1: -1}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.kernel = unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.load = strings.Join(f[:3], " ")
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				m.load1 = v
			}
		}
	}
	return m
}

// benchVersion is `framebus version`'s string, marked when the tree had
// uncommitted changes. A binary built without VCS stamps (-buildvcs=false)
// has no commit: then, if the bench runs in the framebus repository (as
// make bench-report does), git's commit of the working tree is given.
func benchVersion() string {
	v := version()
	stamped := false
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision":
				stamped = true
			case s.Key == "vcs.modified" && s.Value == "true":
				v += " (with uncommitted changes)"
			}
		}
	}
	if stamped {
		return v
	}
	if mod, err := os.ReadFile("go.mod"); err != nil || !strings.HasPrefix(string(mod), "module github.com/framebus/framebus\n") {
		return v + " (no commit: built without VCS stamps)"
	}
	rev, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return v + " (no commit: built without VCS stamps)"
	}
	v += fmt.Sprintf(", working tree at commit %s (from git; the binary has no VCS stamp)", strings.TrimSpace(string(rev)))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		v += " with uncommitted changes"
	}
	return v
}
