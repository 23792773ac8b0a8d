package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/framebus/framebus/shm"
	"github.com/framebus/framebus/sidecar"
)

const statUsage = `Usage: framebus stat [flags]

A live view of a bus that refreshes every --interval, like top: the sidecar
(pid, uptime, epoch, flags PAUSE, DEGRADED, SHUTTING_DOWN), the WAL (size
against wal_max_bytes, first, last and durable sequence, durable lag,
commit latency, retention), every ring (kind, producer, pid, state, fill,
frame rate, published, dropped, rejected, flags), the subscribers with their
lag, the commands in flight and the uplink. q or Ctrl-C quits.

It reads the shared-memory segment read-only and GETs /v1/status (http_addr)
and /metrics (metrics_addr) from the sidecar, as a Prometheus scrape does:
it does not attach as a driver or subscriber, takes no lock and writes
nothing, so it has no effect on the data path. With the HTTP API off or
unreachable it shows what the segment alone gives (ring rates in bytes/s,
no WAL sizes, subscribers or commands) and says so.

Rates are differences between two samples. --once takes two samples
--interval apart (so it takes that long) and prints one view; with --json
one JSON object, whose fields docs/stat.md describes. Without --once,
--json prints one object per line per interval, and when stdout is not a
terminal the text view is printed once per interval, views separated by a
blank line.

The bus is found as framebus run finds it: --config (or $FRAMEBUS_CONFIG),
the FRAMEBUS_* environment variables and the flags below, with the same
defaults (bus "default" in /dev/shm, http_addr 127.0.0.1:9465, metrics_addr
127.0.0.1:9464).

Exit status: 0; 1 if neither the segment nor the sidecar's HTTP API can be
read; 2 for a usage error.

Flags:
`

// userHZ is the unit of the start times in /proc/<pid>/stat (clock ticks).
// The kernel reports them in USER_HZ, which is 100 on every architecture
// framebus runs on (it is part of the user ABI, unlike the kernel's HZ).
const userHZ = 100

// statHTTPTimeout bounds one request to the sidecar.
const statHTTPTimeout = 2 * time.Second

func statMain(args []string, stdout, stderr io.Writer) int {
	fset := flag.NewFlagSet("framebus stat", flag.ContinueOnError)
	fset.SetOutput(stderr)
	// These name the sidecar's keys; they are passed on to the sidecar's
	// configuration loader, so that stat resolves them as framebus run does.
	fset.String("config", "", "the sidecar's TOML config file (default $FRAMEBUS_CONFIG)")
	fset.String("name", "", "bus name (default $FRAMEBUS_NAME or \"default\")")
	fset.String("shm-dir", "", "directory of the segment file (default $FRAMEBUS_SHM_DIR or /dev/shm)")
	fset.String("http-addr", "", "the sidecar's http_addr, for /v1/status; off to skip it (default $FRAMEBUS_HTTP_ADDR or "+sidecar.DefaultHTTPAddr+")")
	fset.String("metrics-addr", "", "the sidecar's metrics_addr, for commit latency and lag seconds; off to skip it (default $FRAMEBUS_METRICS_ADDR or "+sidecar.DefaultMetricsAddr+")")
	interval := fset.Duration("interval", time.Second, "time between samples; rates are over this interval")
	once := fset.Bool("once", false, "print one view (two samples --interval apart) and exit")
	asJSON := fset.Bool("json", false, "print JSON (docs/stat.md) instead of text")
	fset.Usage = func() { fmt.Fprint(stderr, statUsage); fset.PrintDefaults() }
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fset.NArg() > 0 {
		fmt.Fprintf(stderr, "framebus stat: unexpected argument %q (framebus stat -h)\n", fset.Arg(0))
		return 2
	}
	if *interval < 100*time.Millisecond {
		fmt.Fprintf(stderr, "framebus stat: --interval %v is too short: at least 100ms\n", *interval)
		return 2
	}
	var runArgs []string
	fset.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "config", "name", "shm-dir", "http-addr", "metrics-addr":
			runArgs = append(runArgs, "--"+f.Name, f.Value.String())
		}
	})
	cfg, _, err := sidecar.LoadConfig(runArgs, os.Environ())
	if err != nil {
		fmt.Fprintf(stderr, "framebus stat: the sidecar's configuration, as framebus run would load it:\n%v\n", err)
		return 2
	}
	src := &statSource{name: cfg.Name, shmDir: cfg.ShmDir, client: &http.Client{Timeout: statHTTPTimeout}}
	if src.httpAddr, err = dialAddr(cfg.HTTPAddr); err != nil {
		fmt.Fprintf(stderr, "framebus stat: http_addr %v\n", err)
		return 2
	}
	if src.metricsAddr, err = dialAddr(cfg.MetricsAddr); err != nil {
		fmt.Fprintf(stderr, "framebus stat: metrics_addr %v\n", err)
		return 2
	}
	defer src.close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	first := src.sample(ctx)
	if err := first.unavailable(src); err != nil {
		fmt.Fprintln(stderr, "framebus stat:", err)
		return 1
	}
	out := statOutput{w: stdout, json: *asJSON, width: 80}
	if f, ok := stdout.(*os.File); ok && isTerminal(int(f.Fd())) {
		out.tty, out.fd = true, int(f.Fd())
	} else if c, err := strconv.Atoi(os.Getenv("COLUMNS")); err == nil && c >= 40 {
		out.width = c
	}
	if *once {
		select {
		case <-ctx.Done():
			return 1
		case <-time.After(*interval):
		}
		v := buildStatView(src, first, src.sample(ctx))
		if *asJSON {
			b, _ := json.MarshalIndent(v, "", "  ")
			stdout.Write(append(b, '\n'))
			return 0
		}
		out.size()
		fmt.Fprint(stdout, strings.Join(renderStat(&v, out.width), "\n")+"\n")
		return 0
	}
	return statLive(ctx, src, first, &out, *interval)
}

// statLive refreshes the view every interval until ctx is done or, on a
// terminal, q is pressed.
func statLive(ctx context.Context, src *statSource, prev *statSample, out *statOutput, interval time.Duration) int {
	var quit <-chan struct{}
	var last statView // the view on the screen, redrawn when the terminal is resized
	winch := make(chan os.Signal, 1)
	if out.tty && !out.json {
		if in := int(os.Stdin.Fd()); isTerminal(in) {
			if st, err := cbreak(in); err == nil {
				defer st.restore()
				quit = readQuit(os.Stdin)
			}
		}
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		io.WriteString(out.w, "\x1b[?25l\x1b[H\x1b[2J") // hide the cursor, clear the screen
		defer io.WriteString(out.w, "\x1b[?25h\n")
		last = buildStatView(src, nil, prev)
		last.Notes = append(last.Notes, fmt.Sprintf("rates in %v", interval))
		out.draw(&last, interval)
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0
		case <-quit:
			return 0
		case <-winch:
			if last.Bus != "" {
				out.draw(&last, interval)
			}
		case <-tick.C:
			cur := src.sample(ctx)
			if ctx.Err() != nil {
				return 0
			}
			last = buildStatView(src, prev, cur)
			prev = cur
			if err := out.draw(&last, interval); err != nil {
				return 1 // stdout is gone (a closed pipe)
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Sampling

// statSource reads the bus: the segment through a read-only shm.Observer,
// the sidecar's /v1/status and /metrics over HTTP.
type statSource struct {
	name, shmDir          string
	httpAddr, metricsAddr string // host:port to dial, or "off"
	client                *http.Client
	obs                   *shm.Observer
}

// statSample is one reading of every source. Each part carries its own
// time, so that a rate divides by the time between two readings of the
// same source.
type statSample struct {
	at     time.Time
	seg    *shm.Snapshot
	segErr error
	// alive and uptime describe the sidecar named in the segment header.
	alive  bool
	uptime time.Duration

	status    *sidecar.Status
	statusAt  time.Time
	statusErr error

	metrics    map[string]*dto.MetricFamily
	metricsErr error
}

func (src *statSource) close() {
	if src.obs != nil {
		src.obs.Close()
	}
}

func (src *statSource) segPath() string { return shm.Path(src.shmDir, src.name) }

func (src *statSource) sample(ctx context.Context) *statSample {
	s := &statSample{at: time.Now()}
	if src.obs != nil && src.obs.Replaced() {
		src.obs.Close()
		src.obs = nil
	}
	if src.obs == nil {
		src.obs, s.segErr = shm.OpenObserver(src.shmDir, src.name)
	}
	if src.obs != nil {
		var snap shm.Snapshot
		if snap, s.segErr = readSnapshot(src.obs); s.segErr == nil {
			s.seg = &snap
			s.alive = shm.ProcessAlive(snap.SidecarPid, snap.SidecarStart)
			var ts unix.Timespec
			if s.alive && snap.SidecarStart > 0 && unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) == nil {
				started := time.Duration(snap.SidecarStart) * (time.Second / userHZ)
				s.uptime = max(time.Duration(ts.Nano())-started, 0)
			}
		}
	}
	if src.httpAddr == sidecar.MetricsOff {
		s.statusErr = errOff
	} else {
		var st sidecar.Status
		if s.statusErr = src.get(ctx, src.httpAddr, "/v1/status", func(r io.Reader) error { return json.NewDecoder(r).Decode(&st) }); s.statusErr == nil {
			if st.Name != src.name {
				s.statusErr = fmt.Errorf("it serves bus %q, not %q: pass the http_addr of this bus's sidecar (--http-addr)", st.Name, src.name)
			} else {
				s.status, s.statusAt = &st, time.Now()
			}
		}
	}
	if src.metricsAddr == sidecar.MetricsOff {
		s.metricsErr = errOff
	} else {
		s.metricsErr = src.get(ctx, src.metricsAddr, "/metrics", func(r io.Reader) (err error) {
			p := expfmt.NewTextParser(model.UTF8Validation)
			s.metrics, err = p.TextToMetricFamilies(r)
			return err
		})
		if s.metricsErr == nil && s.metrics["framebus_wal_durable_sequence"] == nil {
			s.metrics, s.metricsErr = nil, errors.New("no framebus metrics there: pass the metrics_addr of this bus's sidecar (--metrics-addr)")
		}
	}
	return s
}

var errOff = errors.New("off")

// readSnapshot reads the segment. A segment that shrank under the mapping
// (a process truncated the file) faults on access: that becomes an error
// here instead of killing the tool.
func readSnapshot(o *shm.Observer) (snap shm.Snapshot, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("reading %s faulted (was the file truncated?): %v", o.Path(), r)
		}
	}()
	return o.Snapshot()
}

func (src *statSource) get(ctx context.Context, addr, path string, decode func(io.Reader) error) error {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	if path == "/metrics" {
		req.Header.Set("Accept", "text/plain;version=0.0.4")
	}
	resp, err := src.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	if err := decode(resp.Body); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// unavailable explains, when neither the segment nor /v1/status could be
// read, why nothing can be shown.
func (s *statSample) unavailable(src *statSource) error {
	if s.seg != nil || s.status != nil {
		return nil
	}
	api := "the HTTP API is off (http_addr off)"
	if s.statusErr != errOff {
		api = fmt.Sprintf("nothing usable at http://%s/v1/status (%v)", src.httpAddr, shortErr(s.statusErr))
	}
	if errors.Is(s.segErr, fs.ErrNotExist) {
		return fmt.Errorf("bus %q: there is no segment %s and %s: is its sidecar running? (--name, --shm-dir, --http-addr or --config say where it is)",
			src.name, src.segPath(), api)
	}
	hint := ""
	if errors.Is(s.segErr, fs.ErrPermission) {
		hint = " (run as the sidecar's user or a member of the segment's group)"
	}
	return fmt.Errorf("bus %q: %v%s, and %s", src.name, s.segErr, hint, api)
}

// dialAddr turns a listen address into one to connect to: an empty or
// unspecified host means the loopback address.
func dialAddr(addr string) (string, error) {
	if addr == sidecar.MetricsOff {
		return addr, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%q: %v (want host:port or off)", addr, err)
	}
	if port == "0" {
		return "", fmt.Errorf("%q has port 0: the sidecar picked a port at random; its log says which (pass it as host:port)", addr)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port), nil
}

// ---------------------------------------------------------------------------
// The view: what the text shows and the JSON is (docs/stat.md). Pointer
// fields are null when their source could not be read.

type statView struct {
	Time            time.Time       `json:"time"`
	IntervalSeconds float64         `json:"interval_seconds"`
	Bus             string          `json:"bus"`
	Segment         statSegmentInfo `json:"segment"`
	HTTP            statEndpoint    `json:"http"`
	Metrics         statEndpoint    `json:"metrics"`
	Sidecar         statSidecar     `json:"sidecar"`
	Flags           []string        `json:"flags"`
	WAL             statWAL         `json:"wal"`
	Rings           []statRing      `json:"rings"`
	Subscribers     []statSub       `json:"subscribers"`
	Commands        *statCommands   `json:"commands"`
	Uplink          *statUplink     `json:"uplink"`
	Notes           []string        `json:"notes"`
}

type statSegmentInfo struct {
	Path      string     `json:"path"`
	OK        bool       `json:"ok"`
	Error     string     `json:"error"`
	SizeBytes uint64     `json:"size_bytes"`
	MaxRings  int        `json:"max_rings"`
	Created   *time.Time `json:"created"`
}

type statEndpoint struct {
	Addr  string `json:"addr"`
	OK    bool   `json:"ok"`
	Error string `json:"error"`
}

type statSidecar struct {
	Pid           int      `json:"pid"`
	Running       *bool    `json:"running"`
	UptimeSeconds *float64 `json:"uptime_seconds"`
	Epoch         uint64   `json:"epoch"`
	Preset        *string  `json:"preset"`
}

type statWAL struct {
	Dir                    *string      `json:"dir"`
	FirstSeq               *uint64      `json:"first_seq"`
	LastSeq                *uint64      `json:"last_seq"`
	DurableSeq             *uint64      `json:"durable_seq"`
	DurableLagFrames       *uint64      `json:"durable_lag_frames"`
	DurableLagSeconds      *float64     `json:"durable_lag_seconds"`
	DurableFramesPerSecond *float64     `json:"durable_frames_per_second"`
	StoredBytes            *int64       `json:"stored_bytes"`
	FootprintBytes         *int64       `json:"footprint_bytes"`
	MaxBytes               *int64       `json:"max_bytes"`
	RetentionHeld          *bool        `json:"retention_held"`
	CommitLatency          *statLatency `json:"commit_latency"`
}

type statLatency struct {
	Source     string  `json:"source"`
	Commits    uint64  `json:"commits"`
	P50Seconds float64 `json:"p50_seconds"`
	P99Seconds float64 `json:"p99_seconds"`
}

type statRing struct {
	Slot            int      `json:"slot"`
	Kind            string   `json:"kind"`
	Producer        string   `json:"producer"`
	Pid             int      `json:"pid"`
	Alive           *bool    `json:"alive"`
	SlotState       *string  `json:"slot_state"`
	DriverState     *string  `json:"driver_state"`
	CapacityBytes   uint64   `json:"capacity_bytes"`
	UsedBytes       uint64   `json:"used_bytes"`
	FillPercent     float64  `json:"fill_percent"`
	BytesPerSecond  *float64 `json:"bytes_per_second"`
	FramesPerSecond *float64 `json:"frames_per_second"`
	Published       *uint64  `json:"published"`
	Rejected        *uint64  `json:"rejected"`
	DroppedFull     *uint64  `json:"dropped_full"`
	DroppedPaused   *uint64  `json:"dropped_paused"`
	Flags           []string `json:"flags"`
	Error           string   `json:"error"`
}

type statSub struct {
	Name            string   `json:"name"`
	Cursor          string   `json:"cursor"`
	Live            bool     `json:"live"`
	Filter          string   `json:"filter"`
	NextSeq         uint64   `json:"next_seq"`
	LagFrames       uint64   `json:"lag_frames"`
	LagSeconds      *float64 `json:"lag_seconds"`
	Delivered       uint64   `json:"delivered"`
	FramesPerSecond *float64 `json:"frames_per_second"`
	Lost            uint64   `json:"lost"`
	Error           string   `json:"error,omitempty"`
}

type statCommands struct {
	InFlight int               `json:"in_flight"`
	Targets  map[string]string `json:"targets"`
}

type statUplink struct {
	Servers    string  `json:"servers"`
	Stream     string  `json:"stream"`
	Connected  bool    `json:"connected"`
	Server     string  `json:"server"`
	Position   uint64  `json:"position"`
	LagFrames  uint64  `json:"lag_frames"`
	LagSeconds float64 `json:"lag_seconds"`
	Published  uint64  `json:"published"`
	Acked      uint64  `json:"acked"`
	Duplicates uint64  `json:"duplicates"`
	Errors     uint64  `json:"errors"`
	LastError  string  `json:"last_error"`
}

func statPtr[T any](v T) *T { return &v }

// statRate is (b-a)/seconds, or nil when the counter went back (a restart) or
// no time passed.
func statRate(a, b uint64, seconds float64) *float64 {
	if b < a || seconds <= 0 {
		return nil
	}
	return statPtr(float64(b-a) / seconds)
}

func statEndpointOf(addr string, err error) statEndpoint {
	e := statEndpoint{Addr: addr, OK: err == nil}
	if err != nil {
		e.Error = err.Error()
	}
	return e
}

// buildStatView combines a sample with the one before it (nil: no rates).
func buildStatView(src *statSource, prev, cur *statSample) statView {
	v := statView{Time: cur.at, Bus: src.name, Flags: []string{}, Rings: []statRing{}, Notes: []string{},
		Segment: statSegmentInfo{Path: src.segPath()},
		HTTP:    statEndpointOf(src.httpAddr, cur.statusErr), Metrics: statEndpointOf(src.metricsAddr, cur.metricsErr)}
	if prev != nil {
		v.IntervalSeconds = cur.at.Sub(prev.at).Seconds()
	}
	seg, st := cur.seg, cur.status
	var pseg *shm.Snapshot
	var pst *sidecar.Status
	if prev != nil {
		pseg, pst = prev.seg, prev.status
	}

	// Header and WAL watermark from the segment.
	if seg != nil {
		v.Segment.OK, v.Segment.SizeBytes, v.Segment.MaxRings, v.Segment.Created = true, seg.Size, seg.MaxRings, statPtr(seg.Created)
		v.Sidecar.Pid, v.Sidecar.Epoch, v.Sidecar.Running = seg.SidecarPid, seg.Epoch, statPtr(cur.alive)
		if cur.alive && cur.uptime > 0 {
			v.Sidecar.UptimeSeconds = statPtr(cur.uptime.Seconds())
		}
		v.Flags = flagList(seg.Flags)
		v.WAL.DurableSeq = statPtr(seg.Durable)
		if pseg != nil {
			v.WAL.DurableFramesPerSecond = statRate(pseg.Durable, seg.Durable, seg.Taken.Sub(pseg.Taken).Seconds())
		}
	} else {
		v.Segment.Error = cur.segErr.Error()
	}

	// The rest of the WAL, subscribers, commands and uplink from /v1/status.
	subs := map[string]sidecar.StatusSubscriber{}
	psubs := map[string]sidecar.StatusSubscriber{}
	var dtStatus float64
	if pst != nil && st != nil {
		dtStatus = cur.statusAt.Sub(prev.statusAt).Seconds()
		for _, s := range pst.Subscribers {
			psubs[s.Name] = s
		}
	}
	if st != nil {
		v.Sidecar.Preset = statPtr(st.Preset)
		if seg == nil {
			v.Sidecar.Epoch = st.Epoch
			if st.Paused {
				v.Flags = append(v.Flags, "PAUSE")
			}
			if st.Degraded {
				v.Flags = append(v.Flags, "DEGRADED")
			}
		}
		w := st.WAL
		v.WAL.Dir, v.WAL.FirstSeq, v.WAL.LastSeq, v.WAL.DurableSeq = statPtr(w.Dir), statPtr(w.FirstSeq), statPtr(w.LastSeq), statPtr(w.DurableSeq)
		v.WAL.DurableLagFrames = statPtr(w.LastSeq - min(w.DurableSeq, w.LastSeq))
		v.WAL.StoredBytes, v.WAL.FootprintBytes, v.WAL.MaxBytes, v.WAL.RetentionHeld = statPtr(w.StoredBytes), statPtr(w.FootprintBytes), statPtr(w.MaxBytes), statPtr(w.RetentionHeld)
		v.Subscribers = []statSub{}
		for _, s := range st.Subscribers {
			subs[s.Name] = s
			ss := statSub{Name: s.Name, Cursor: s.Cursor, Live: s.Live, Filter: s.Filter, NextSeq: s.NextSeq, LagFrames: s.LagFrames,
				Delivered: s.Delivered, Lost: s.Lost, Error: s.Error}
			if p, ok := psubs[s.Name]; ok {
				ss.FramesPerSecond = statRate(p.Delivered, s.Delivered, dtStatus)
			}
			if g, ok := metricValue(cur.metrics, "framebus_subscriber_lag_seconds", "subscriber", s.Name); ok {
				ss.LagSeconds = statPtr(g)
			}
			v.Subscribers = append(v.Subscribers, ss)
		}
		v.Commands = &statCommands{InFlight: st.Commands.InFlight, Targets: st.Commands.Targets}
		if v.Commands.Targets == nil {
			v.Commands.Targets = map[string]string{}
		}
		if u := st.Uplink; u != nil {
			v.Uplink = &statUplink{Servers: u.Servers, Stream: u.Stream, Connected: u.Connected, Server: u.Server, Position: u.Position,
				LagFrames: u.LagFrames, LagSeconds: u.LagSeconds, Published: u.Published, Acked: u.Acked, Duplicates: u.Duplicates,
				Errors: u.Errors, LastError: u.LastError}
		}
	}

	// Commit latency and lag seconds from /metrics.
	if g, ok := metricValue(cur.metrics, "framebus_durable_lag_seconds"); ok {
		v.WAL.DurableLagSeconds = statPtr(g)
	}
	var pm map[string]*dto.MetricFamily
	if prev != nil {
		pm = prev.metrics
	}
	v.WAL.CommitLatency = commitLatency(pm, cur.metrics)

	// Rings: the segment's directory, with the sidecar's counters.
	prods := map[int]sidecar.StatusProducer{}
	pprods := map[int]sidecar.StatusProducer{}
	if st != nil {
		for _, p := range st.Producers {
			prods[p.Slot] = p
		}
	}
	if pst != nil {
		for _, p := range pst.Producers {
			pprods[p.Slot] = p
		}
	}
	addStatus := func(r *statRing, p sidecar.StatusProducer) {
		r.DriverState, r.Published, r.Rejected = statPtr(p.State), statPtr(p.Published), statPtr(p.Rejected)
		if pp, ok := pprods[p.Slot]; ok && pp.Name == p.Name && pp.Pid == p.Pid {
			r.FramesPerSecond = statRate(pp.Published, p.Published, dtStatus)
		}
	}
	if seg != nil {
		before := map[int]shm.RingSnapshot{}
		if pseg != nil {
			for _, r := range pseg.Rings {
				before[r.Slot] = r
			}
		}
		for _, rs := range seg.Rings {
			r := statRing{Slot: rs.Slot, Kind: rs.Kind.String(), Producer: rs.Owner.Name, Pid: rs.Owner.Pid,
				Alive: statPtr(shm.ProcessAlive(rs.Owner.Pid, rs.Owner.Start)), SlotState: statPtr(slotStateName(rs.State)),
				CapacityBytes: rs.Capacity, UsedBytes: rs.Used, Flags: flagList(rs.Flags)}
			if rs.Err != nil {
				r.Error = rs.Err.Error()
			} else {
				r.DroppedFull, r.DroppedPaused = statPtr(rs.DroppedFull), statPtr(rs.DroppedPaused)
				if rs.Capacity > 0 {
					r.FillPercent = 100 * float64(rs.Used) / float64(rs.Capacity)
				}
				if b, ok := before[rs.Slot]; ok && b.Generation == rs.Generation && b.Offset == rs.Offset && b.Err == nil {
					r.BytesPerSecond = statRate(b.Tail, rs.Tail, seg.Taken.Sub(pseg.Taken).Seconds())
				}
			}
			if p, ok := prods[rs.Slot]; ok && p.Name == rs.Owner.Name {
				addStatus(&r, p)
			}
			if rs.Kind == shm.KindEgress {
				label := "slot:" + strconv.Itoa(rs.Slot)
				if s, ok := subs[label]; ok {
					if p, ok := psubs[label]; ok {
						r.FramesPerSecond = statRate(p.Delivered, s.Delivered, dtStatus)
					}
				}
			}
			v.Rings = append(v.Rings, r)
		}
	} else if st != nil {
		for _, p := range st.Producers {
			r := statRing{Slot: p.Slot, Kind: "ingress", Producer: p.Name, Pid: p.Pid, CapacityBytes: uint64(p.RingBytes), UsedBytes: p.UsedBytes,
				Flags: []string{}}
			if p.RingBytes > 0 {
				r.FillPercent = 100 * float64(p.UsedBytes) / float64(p.RingBytes)
			}
			if p.Paused {
				r.Flags = append(r.Flags, "PAUSE")
			}
			addStatus(&r, p)
			v.Rings = append(v.Rings, r)
		}
	}

	// What could not be read, in one line each.
	switch {
	case seg == nil && errors.Is(cur.segErr, fs.ErrNotExist):
		v.Notes = append(v.Notes, fmt.Sprintf("no segment at %s: rings from /v1/status only (--shm-dir?)", v.Segment.Path))
	case seg == nil:
		v.Notes = append(v.Notes, fmt.Sprintf("segment unreadable: %v: rings from /v1/status only", cur.segErr))
	case !cur.alive:
		v.Notes = append(v.Notes, fmt.Sprintf("sidecar pid %d is not running: the segment is as it left it (drivers publish until their rings fill; the next sidecar adopts it)",
			seg.SidecarPid))
	}
	if st == nil {
		what := "HTTP API off"
		if cur.statusErr != errOff {
			what = fmt.Sprintf("HTTP API %s: %v", src.httpAddr, shortErr(cur.statusErr))
		}
		v.Notes = append(v.Notes, what+": segment only (ring rates in bytes/s; no WAL sizes, subscribers, commands or uplink)")
	}
	if cur.metrics == nil {
		what := "metrics off"
		if cur.metricsErr != errOff {
			what = fmt.Sprintf("metrics %s: %v", src.metricsAddr, shortErr(cur.metricsErr))
		}
		v.Notes = append(v.Notes, what+": no commit latency or lag seconds")
	}
	return v
}

// shortErr drops what a note does not need from an HTTP error: the request
// ("Get URL: "), the operation and the addresses ("dial tcp A: connect: ").
func shortErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	var se *os.SyscallError
	if errors.As(err, &se) {
		err = se.Err
	}
	return err
}

func slotStateName(s shm.SlotState) string {
	switch s {
	case shm.SlotActive:
		return "active"
	case shm.SlotRetired:
		return "retired"
	case shm.SlotFree:
		return "free"
	}
	return fmt.Sprintf("state(%d)", uint32(s))
}

// flagList names the bits of a flag word; unknown bits are shown in hex.
func flagList(f uint64) []string {
	out := []string{}
	for _, b := range []struct {
		bit  uint64
		name string
	}{{shm.FlagPause, "PAUSE"}, {shm.FlagDegraded, "DEGRADED"}, {shm.FlagShuttingDown, "SHUTTING_DOWN"}} {
		if f&b.bit != 0 {
			out = append(out, b.name)
			f &^= b.bit
		}
	}
	if f != 0 {
		out = append(out, fmt.Sprintf("0x%x", f))
	}
	return out
}

// metricValue returns the gauge or counter value of the first sample of
// family name whose labels include the given name/value pairs.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	mf := fams[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

// commitLatency estimates p50 and p99 of the WAL's group commits from the
// framebus_wal_flush_duration_seconds histogram: over the commits between
// the two samples, or, when there were none (or no earlier sample), over
// every commit since the sidecar started.
func commitLatency(prev, cur map[string]*dto.MetricFamily) *statLatency {
	h := histogramOf(cur)
	if h == nil || h.GetSampleCount() == 0 {
		return nil
	}
	bs := h.GetBucket()
	cum := make([]float64, len(bs))
	for i, b := range bs {
		cum[i] = float64(b.GetCumulativeCount())
	}
	total := float64(h.GetSampleCount())
	source := "since_start"
	if p := histogramOf(prev); p != nil && len(p.GetBucket()) == len(bs) && p.GetSampleCount() < h.GetSampleCount() {
		ok := true
		window := make([]float64, len(bs))
		for i, b := range p.GetBucket() {
			if b.GetUpperBound() != bs[i].GetUpperBound() || float64(b.GetCumulativeCount()) > cum[i] {
				ok = false
				break
			}
			window[i] = cum[i] - float64(b.GetCumulativeCount())
		}
		if ok {
			cum, total, source = window, total-float64(p.GetSampleCount()), "interval"
		}
	}
	upper := make([]float64, len(bs))
	for i, b := range bs {
		upper[i] = b.GetUpperBound()
	}
	return &statLatency{Source: source, Commits: uint64(total), P50Seconds: bucketQuantile(0.5, upper, cum, total),
		P99Seconds: bucketQuantile(0.99, upper, cum, total)}
}

func histogramOf(fams map[string]*dto.MetricFamily) *dto.Histogram {
	mf := fams["framebus_wal_flush_duration_seconds"]
	if mf == nil || len(mf.GetMetric()) == 0 {
		return nil
	}
	return mf.GetMetric()[0].GetHistogram()
}

// bucketQuantile estimates quantile q from cumulative bucket counts cum
// with upper bounds upper (ascending, without +Inf) and total observations
// (+Inf included), interpolating linearly inside the bucket, as PromQL's
// histogram_quantile does. A quantile in the +Inf bucket is reported as
// the largest finite bound.
func bucketQuantile(q float64, upper, cum []float64, total float64) float64 {
	rank := q * total
	lower, below := 0.0, 0.0
	for i, c := range cum {
		if math.IsInf(upper[i], 1) {
			break
		}
		if c >= rank && c > below {
			return lower + (upper[i]-lower)*(rank-below)/(c-below)
		}
		lower, below = upper[i], c
	}
	return lower
}

// ---------------------------------------------------------------------------
// Text

// statOutput is where views go: a terminal (redrawn in place), a pipe or a
// file (one view after another), as text or JSON lines.
type statOutput struct {
	w     io.Writer
	json  bool
	tty   bool
	fd    int
	width int
	rows  int
	views int // views written (not on a terminal)
}

// size reads the terminal's size.
func (o *statOutput) size() {
	if !o.tty {
		return
	}
	if ws, err := unix.IoctlGetWinsize(o.fd, unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
		o.width, o.rows = int(ws.Col), int(ws.Row)
	}
}

func (o *statOutput) draw(v *statView, interval time.Duration) error {
	if o.json {
		b, _ := json.Marshal(v)
		_, err := o.w.Write(append(b, '\n'))
		return err
	}
	o.size()
	lines := renderStat(v, o.width)
	if !o.tty {
		var b strings.Builder
		if o.views > 0 {
			b.WriteByte('\n')
		}
		o.views++
		b.WriteString(strings.Join(lines, "\n"))
		b.WriteByte('\n')
		_, err := io.WriteString(o.w, b.String())
		return err
	}
	footer := fitWidth(fmt.Sprintf("refresh %v · q or Ctrl-C quits", interval), o.width)
	if o.rows > 1 && len(lines) > o.rows-2 {
		more := len(lines) - (o.rows - 3)
		lines = append(lines[:max(o.rows-3, 0)], fitWidth(fmt.Sprintf("… %d more lines: enlarge the terminal, or use --once", more), o.width))
	}
	var b strings.Builder
	b.WriteString("\x1b[H") // home; each line clears its rest, then the screen below
	for _, l := range lines {
		b.WriteString(l)
		b.WriteString("\x1b[K\n")
	}
	b.WriteString(footer)
	b.WriteString("\x1b[K\x1b[J")
	_, err := io.WriteString(o.w, b.String())
	return err
}

// renderStat lays a view out in lines of at most width columns.
func renderStat(v *statView, width int) []string {
	width = max(width, 40)
	var out []string
	line := func(format string, args ...any) { out = append(out, fitWidth(fmt.Sprintf(format, args...), width)) }

	// Header.
	h := []string{"bus " + termSafe(v.Bus)}
	switch {
	case v.Sidecar.Pid != 0 && v.Sidecar.Running != nil && !*v.Sidecar.Running:
		h = append(h, fmt.Sprintf("sidecar pid %d NOT RUNNING", v.Sidecar.Pid))
	case v.Sidecar.Pid != 0:
		h = append(h, fmt.Sprintf("sidecar pid %d", v.Sidecar.Pid))
	}
	if v.Sidecar.UptimeSeconds != nil {
		h = append(h, "up "+fmtUptime(*v.Sidecar.UptimeSeconds))
	}
	h = append(h, fmt.Sprintf("epoch %d", v.Sidecar.Epoch))
	if v.Sidecar.Preset != nil {
		h = append(h, "preset "+termSafe(*v.Sidecar.Preset))
	}
	head := strings.Join(h, " · ")
	if clock := v.Time.Format("15:04:05"); utf8.RuneCountInString(head)+2+len(clock) <= width {
		head += strings.Repeat(" ", width-utf8.RuneCountInString(head)-len(clock)) + clock
	}
	out = append(out, fitWidth(head, width))
	flags := "none"
	if len(v.Flags) > 0 {
		flags = strings.Join(v.Flags, " ")
	}
	line("flags: %s", flags)

	// WAL.
	w := v.WAL
	out = append(out, "")
	if w.Dir != nil {
		line("WAL  %s", leftFit(termSafe(*w.Dir), width-5))
	} else {
		line("WAL")
	}
	if w.FootprintBytes != nil {
		s := fmt.Sprintf("  size %s", fmtBytes(float64(*w.FootprintBytes)))
		if *w.MaxBytes > 0 {
			s += fmt.Sprintf(" of %s (%.0f%%)", fmtBytes(float64(*w.MaxBytes)), 100*float64(*w.FootprintBytes)/float64(*w.MaxBytes))
		}
		s += fmt.Sprintf(", frames %s", fmtBytes(float64(*w.StoredBytes)))
		if *w.RetentionHeld {
			s += ", RETENTION HELD by unacked cursors"
		}
		line("%s", s)
	}
	var seq []string
	if w.FirstSeq != nil {
		seq = append(seq, fmt.Sprintf("seq %d..%d", *w.FirstSeq, *w.LastSeq))
	}
	if w.DurableSeq != nil {
		seq = append(seq, fmt.Sprintf("durable %d", *w.DurableSeq))
	}
	if w.DurableLagFrames != nil {
		lag := fmt.Sprintf("lag %d frames", *w.DurableLagFrames)
		if w.DurableLagSeconds != nil {
			lag += fmt.Sprintf(" %.3f s", *w.DurableLagSeconds)
		}
		seq = append(seq, lag)
	}
	seq = append(seq, fmtRate(w.DurableFramesPerSecond)+" durable frames/s")
	line("  %s", strings.Join(seq, " · "))
	if c := w.CommitLatency; c != nil {
		when := fmt.Sprintf("%d commits in %.1f s", c.Commits, v.IntervalSeconds)
		if c.Source != "interval" {
			when = fmt.Sprintf("%d commits since start", c.Commits)
		}
		line("  commit p50 %s · p99 %s (%s)", fmtSeconds(c.P50Seconds), fmtSeconds(c.P99Seconds), when)
	}

	// Rings.
	out = append(out, "")
	if len(v.Rings) == 0 {
		line("RINGS  none")
	} else {
		line("RINGS")
		rateTitle, framesKnown := "FRAMES/S", v.HTTP.OK
		if !framesKnown {
			rateTitle = "BYTES/S"
		}
		cols := []statColumn{{title: "SLOT", right: true}, {title: "KIND"}, {title: "PRODUCER", flex: true}, {title: "PID", right: true},
			{title: "STATE"}, {title: "FILL", right: true}, {title: rateTitle, right: true}, {title: "PUBL", right: true},
			{title: "DROP", right: true}, {title: "REJ", right: true}, {title: "FLAGS", flex: true}}
		var rows [][]string
		for _, r := range v.Rings {
			state := "?"
			switch {
			case r.DriverState != nil:
				state = *r.DriverState
			case r.SlotState != nil:
				state = *r.SlotState
			}
			if r.Alive != nil && !*r.Alive && (state == "attached" || state == "active") {
				state = "gone" // its owner process has exited
			}
			rt := r.FramesPerSecond
			if !framesKnown {
				rt = r.BytesPerSecond
			}
			var drop *uint64
			if r.DroppedFull != nil {
				drop = statPtr(*r.DroppedFull + *r.DroppedPaused)
			}
			flags := strings.Join(r.Flags, ",")
			if r.Error != "" {
				flags = "BAD SLOT"
			}
			rows = append(rows, []string{strconv.Itoa(r.Slot), shortKind(r.Kind), termSafe(r.Producer), strconv.Itoa(r.Pid), state,
				fmtPercent(r.FillPercent), fmtRate(rt), fmtCount(r.Published), fmtCount(drop), fmtCount(r.Rejected), flags})
		}
		out = append(out, renderTable(cols, rows, width)...)
	}

	// Subscribers.
	out = append(out, "")
	switch {
	case v.Subscribers == nil:
		line("SUBSCRIBERS  unknown without the HTTP API")
	case len(v.Subscribers) == 0:
		line("SUBSCRIBERS  none")
	default:
		line("SUBSCRIBERS")
		cols := []statColumn{{title: "NAME", flex: true}, {title: "FILTER", flex: true}, {title: "LAG", right: true}, {title: "LAG S", right: true},
			{title: "FRAMES/S", right: true}, {title: "DELIVERED", right: true}, {title: "LOST", right: true}}
		var rows [][]string
		for _, s := range v.Subscribers {
			name := s.Name
			if s.Live {
				name += " (live)"
			}
			lagS := "-"
			if s.LagSeconds != nil {
				lagS = fmt.Sprintf("%.1f", *s.LagSeconds)
			}
			rows = append(rows, []string{termSafe(name), termSafe(s.Filter), fmtCount(&s.LagFrames), lagS, fmtRate(s.FramesPerSecond),
				fmtCount(&s.Delivered), fmtCount(&s.Lost)})
		}
		out = append(out, renderTable(cols, rows, width)...)
		for _, s := range v.Subscribers {
			if s.Error != "" {
				out = append(out, wrapWidth(termSafe(s.Name)+" cannot read the WAL: "+termSafe(s.Error), width)...)
			}
		}
	}

	// Commands and uplink.
	out = append(out, "")
	if c := v.Commands; c == nil {
		line("COMMANDS  unknown without the HTTP API")
	} else {
		targets := make([]string, 0, len(c.Targets))
		for t, p := range c.Targets {
			targets = append(targets, termSafe(t)+"→"+termSafe(p))
		}
		slices.Sort(targets)
		ts := "no targets"
		if len(targets) > 0 {
			ts = "targets " + strings.Join(targets, ", ")
		}
		line("COMMANDS  %d in flight · %s", c.InFlight, ts)
	}
	switch u := v.Uplink; {
	case u != nil:
		state := "connected to " + termSafe(u.Server)
		if !u.Connected {
			state = "NOT CONNECTED (" + termSafe(u.Servers) + ")"
		}
		line("UPLINK  %s · stream %s", state, termSafe(u.Stream))
		line("  lag %d frames %.1f s · published %s · acked %s · errors %s", u.LagFrames, u.LagSeconds, compactNum(float64(u.Published)),
			compactNum(float64(u.Acked)), compactNum(float64(u.Errors)))
		if u.LastError != "" {
			line("  last error: %s", termSafe(u.LastError))
		}
	case v.HTTP.OK:
		line("UPLINK  off")
	default:
		line("UPLINK  unknown without the HTTP API")
	}

	if len(v.Notes) > 0 {
		out = append(out, "")
		for _, n := range v.Notes {
			out = append(out, wrapWidth("note: "+termSafe(n), width)...)
		}
	}
	return out
}

func shortKind(k string) string {
	switch k {
	case shm.KindIngressSPSC.String():
		return "spsc"
	case shm.KindIngressMPMC.String():
		return "mpmc"
	case shm.KindCommand.String():
		return "cmd"
	}
	return k
}

// statColumn describes a table column: right-aligned numbers, or text; flex
// columns are cut (in the middle, with …) when the table is too wide.
type statColumn struct {
	title string
	right bool
	flex  bool
}

// renderTable lays out rows under the column titles in at most width
// columns: every column as wide as its widest cell, flex columns cut to
// fit, down to their title's width.
func renderTable(cols []statColumn, rows [][]string, width int) []string {
	w := make([]int, len(cols))
	for i, c := range cols {
		w[i] = utf8.RuneCountInString(c.title)
		for _, r := range rows {
			w[i] = max(w[i], utf8.RuneCountInString(r[i]))
		}
	}
	total := func() int {
		n := len(w) - 1
		for _, x := range w {
			n += x
		}
		return n
	}
	// Take from the widest flex column until it fits or none can give.
	for total() > width {
		best := -1
		for i, c := range cols {
			if c.flex && w[i] > max(utf8.RuneCountInString(c.title), 4) && (best < 0 || w[i] > w[best]) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		w[best]--
	}
	format := func(cells []string) string {
		var b strings.Builder
		for i, c := range cells {
			if i > 0 {
				b.WriteByte(' ')
			}
			c = cutMiddle(c, w[i])
			pad := strings.Repeat(" ", w[i]-utf8.RuneCountInString(c))
			if cols[i].right {
				b.WriteString(pad + c)
			} else if i < len(cells)-1 {
				b.WriteString(c + pad)
			} else {
				b.WriteString(c)
			}
		}
		return fitWidth(strings.TrimRight(b.String(), " "), width)
	}
	titles := make([]string, len(cols))
	for i, c := range cols {
		titles[i] = c.title
	}
	out := []string{format(titles)}
	for _, r := range rows {
		out = append(out, format(r))
	}
	return out
}

// termSafe replaces what a terminal would interpret (control characters,
// escape sequences, invalid UTF-8) by '?': names come from shared memory and
// from the sidecar, which any process on the bus can influence.
func termSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
}

// fitWidth cuts s to n columns, ending in … when cut.
func fitWidth(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	if n < 1 {
		return ""
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// leftFit cuts s to n columns, keeping its end (for paths).
func leftFit(s string, n int) string {
	r := []rune(s)
	if len(r) <= n || n < 2 {
		return s
	}
	return "…" + string(r[len(r)-n+1:])
}

// cutMiddle cuts s to n columns, keeping its start and its end (names often
// differ at the end: plc-line-1, plc-line-2).
func cutMiddle(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	if n < 2 {
		return string(r[:n])
	}
	head := (n - 1) / 2
	return string(r[:head]) + "…" + string(r[len(r)-(n-1-head):])
}

// wrapWidth breaks s into lines of at most width columns at spaces.
func wrapWidth(s string, width int) []string {
	var out []string
	line := ""
	for _, word := range strings.Fields(s) {
		switch {
		case line == "":
			line = word
		case utf8.RuneCountInString(line)+1+utf8.RuneCountInString(word) <= width:
			line += " " + word
		default:
			out = append(out, fitWidth(line, width))
			line = "  " + word
		}
	}
	return append(out, fitWidth(line, width))
}

// fmtCount prints a counter compactly: 999, 12.3k, 4.6M; "-" when unknown.
func fmtCount(v *uint64) string {
	if v == nil {
		return "-"
	}
	return compactNum(float64(*v))
}

// fmtRate prints a rate compactly; "-" when unknown.
func fmtRate(v *float64) string {
	if v == nil {
		return "-"
	}
	if *v > 0 && *v < 10 {
		return fmt.Sprintf("%.1f", *v)
	}
	return compactNum(*v)
}

func compactNum(v float64) string {
	for _, u := range []struct {
		div  float64
		unit string
	}{{1e12, "T"}, {1e9, "G"}, {1e6, "M"}, {1e3, "k"}} {
		if v >= u.div {
			x := v / u.div
			if x >= 100 {
				return fmt.Sprintf("%.0f%s", x, u.unit)
			}
			return fmt.Sprintf("%.1f%s", x, u.unit)
		}
	}
	return fmt.Sprintf("%.0f", v)
}

func fmtPercent(p float64) string {
	if p > 0 && p < 10 {
		return fmt.Sprintf("%.1f%%", p)
	}
	return fmt.Sprintf("%.0f%%", p)
}

func fmtBytes(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", b)
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}

func fmtSeconds(s float64) string {
	switch {
	case s < 0.001:
		return fmt.Sprintf("%.2f ms", s*1000)
	case s < 0.1:
		return fmt.Sprintf("%.1f ms", s*1000)
	case s < 10:
		return fmt.Sprintf("%.0f ms", s*1000)
	}
	return fmt.Sprintf("%.0f s", s)
}

func fmtUptime(s float64) string {
	d := time.Duration(s) * time.Second
	switch {
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd%02dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%dh%02dm", d/time.Hour, d%time.Hour/time.Minute)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%02ds", d/time.Minute, d%time.Minute/time.Second)
	}
	return fmt.Sprintf("%ds", int(s))
}

// ---------------------------------------------------------------------------
// Terminal

func isTerminal(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

type ttyState struct {
	fd  int
	old unix.Termios
}

// cbreak turns off line buffering and echo on the terminal fd, so that a
// single q can be read, and keeps signal keys: Ctrl-C still sends SIGINT.
func cbreak(fd int) (*ttyState, error) {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	st := &ttyState{fd: fd, old: *t}
	t.Lflag &^= unix.ICANON | unix.ECHO
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return nil, err
	}
	return st, nil
}

func (s *ttyState) restore() { unix.IoctlSetTermios(s.fd, unix.TCSETS, &s.old) }

// readQuit returns a channel closed when q (or Q) is read from r. Its
// goroutine ends with the process: a read of a terminal cannot be
// interrupted.
func readQuit(r io.Reader) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		b := make([]byte, 16)
		for {
			n, err := r.Read(b)
			if err != nil || slices.ContainsFunc(b[:n], func(c byte) bool { return c == 'q' || c == 'Q' }) {
				close(ch)
				return
			}
		}
	}()
	return ch
}
