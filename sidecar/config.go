package sidecar

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/framebus/framebus/shm"
)

// Config is the sidecar's whole configuration: what `framebus run` reads from
// flags, FRAMEBUS_* environment variables, a TOML file and a preset
// (LoadConfig), and what `framebus run --print-config` prints (TOML).
//
// The zero value is usable. EnsureDefaults fills every zero field from the
// chosen preset (Preset, "" meaning "default"; see the function Preset for
// the values) and the paths from the environment. Zero or empty means "the
// default" in every source (a flag --pause-hi 0 too), except where a field's
// comment says otherwise. Call EnsureDefaults, then Validate, before use.
//
// Every field has a TOML key (named in its comment; snake_case, the seed's
// name where the seed has one), a flag (the key in kebab case: --wal-flush-ms)
// and an environment variable (FRAMEBUS_ and the key in upper case:
// FRAMEBUS_WAL_FLUSH_MS). docs/configuration.md has the table.
type Config struct {
	// Name (name) is the bus name; sidecar and clients find each other by
	// it. The segment is <ShmDir>/framebus-<Name>, the socket
	// <RunDir>/<Name>.sock, the WAL <WALDir>/<Name>/. 1 to 64 letters,
	// digits, '-', '_' or '.'. Zero means "default".
	Name string
	// Preset (preset) chooses the values of every zero field:
	// high-throughput, low-latency, memory-optimized or default. Zero means
	// "default".
	Preset string
	// ShmDir (shm_dir) is the directory of the segment file, normally a
	// tmpfs. Zero means /dev/shm.
	ShmDir string
	// RunDir (run_dir) is the directory of the attach socket. Zero means
	// $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=) if set, else
	// $XDG_RUNTIME_DIR/framebus if set, else /run/framebus for root, else
	// /tmp/framebus-<uid> (DefaultRunDir).
	RunDir string
	// WALDir (wal_dir) is the base directory of WALs; this bus's WAL is
	// <WALDir>/<Name>/. Zero means $STATE_DIRECTORY (systemd's
	// StateDirectory=) if set, else /var/lib/framebus for root, else
	// $XDG_STATE_HOME/framebus, else $HOME/.local/state/framebus, else
	// /var/tmp/framebus-<uid> (DefaultWALDir). The old module's WAL_DIR
	// environment variable sets it too, below FRAMEBUS_WAL_DIR.
	WALDir string
	// MetricsAddr (metrics_addr) is the host:port of /metrics, /healthz and
	// /readyz; "off" disables the listener. Zero means 127.0.0.1:9464.
	MetricsAddr string
	// HTTPAddr (http_addr) is the host:port of the HTTP API (/v1/frames,
	// /v1/commands, /v1/status). It can send commands to devices: keep it
	// on loopback unless a proxy with authentication fronts it. "off"
	// disables it. Zero means 127.0.0.1:9465.
	HTTPAddr string

	// WALFlush (wal_flush_ms) is the group-commit interval: the WAL commits
	// when its oldest pending frame is this old (or its pending bytes reach
	// the writer's cap), counting the time the frame waited in its ring
	// for the drain loop. A frame is durable about this long after it was
	// published plus the commit itself (a few ms on an SSD). In files and
	// flags an integer is milliseconds. Zero means the preset's value (5, 1,
	// 20, 10 ms).
	WALFlush Duration
	// WALMaxBytes (wal_max_bytes) is the WAL's size cap: retention deletes
	// whole oldest segments to stay under it. Takes units: "16GiB" (2^30),
	// "16GB" (10^9). Zero means the preset's value (16, 4, 2, 8 GiB).
	WALMaxBytes int64
	// WALMaxAge (wal_max_age) deletes segments older than this as well. Zero
	// means no age limit (and is the default). A bare integer other than 0
	// is refused: write a unit ("72h", "7d").
	WALMaxAge Duration
	// WALCompression (wal_compression) compresses WAL segments: "s2"
	// (github.com/klauspost/compress/s2; gateway frames are repetitive and
	// shrink several times, which lifts durable throughput past the disk's
	// bandwidth) or "none". Zero means s2. A WAL may hold both kinds;
	// readers handle either.
	WALCompression string
	// CursorPolicy (cursor_policy) is what retention does with frames a
	// durable subscriber cursor has not acked: "retain" holds deletion (the
	// WAL grows past wal_max_bytes; at CursorMaxBytes the sidecar raises
	// PAUSE rather than lose them) or "drop" deletes them anyway, advances
	// the cursor and counts the frames lost per cursor. Zero means retain.
	CursorPolicy string
	// CursorMaxBytes (cursor_max_bytes) is the hard cap of the retain
	// policy: a WAL held above this size by unacked cursors raises PAUSE
	// until the cursors ack or are deleted. Zero means 2 × wal_max_bytes.
	CursorMaxBytes int64
	// WALRecover (wal_recover) makes the sidecar check the whole WAL at
	// start (every page and every segment's CRC: it reads the file once)
	// and, if it is damaged, move the file aside (never deleting it) and
	// rebuild the WAL from every intact segment before opening it
	// (wal.Recover; docs/wal-recovery.md). Without it a WAL whose pages or
	// last segment are damaged stops the start (exit status 3), and a
	// damaged older segment is found when a subscriber, the uplink or
	// `framebus wal verify` reads it. Zero means off.
	WALRecover bool

	// BackpressureThreshold (backpressure_threshold) is the fill of the WAL
	// write queue at which the sidecar raises the global PAUSE flag; it
	// clears it when the fill drops below ResumeLo. The fill is the larger of
	// queued frames / AsyncWriteQueueSize and queued bytes / MaxMemoryBytes.
	// A fraction in (0, 1]; "95%" is accepted. Zero means the preset's value
	// (0.95, 0.85, 0.80, 0.90).
	BackpressureThreshold float64
	// PauseHi (pause_hi) is the fill of a producer's ring at which the
	// sidecar raises that ring's PAUSE flag. A fraction in (0, 1]. Zero
	// means the preset's value (0.90, 0.80, 0.75, 0.85).
	PauseHi float64
	// ResumeLo (resume_lo) is the fill below which a paused ring's PAUSE is
	// cleared, and the write-queue fill below which the global PAUSE is: the
	// hysteresis that keeps the flags from flapping. A fraction in [0,
	// PauseHi) and below BackpressureThreshold. Zero means the preset's
	// value (0.75, 0.65, 0.60, 0.70).
	ResumeLo float64

	// MaxBatchSize (max_batch_size) is how many frames the drain loop hands
	// to the WAL writer at most at once (the seed's BatchConfig). Zero means
	// 2000.
	MaxBatchSize int
	// BatchFlush (batch_flush_ms) is how long the drain loop lets a batch
	// fill before it hands it over anyway (the seed's
	// BatchConfig.flush_interval). An integer is milliseconds; "500us" is
	// accepted. Zero means 1 ms.
	BatchFlush Duration
	// MaxMemoryBytes (max_memory_bytes) bounds the bytes of frames the
	// sidecar holds in its own memory before the WAL has committed them: the
	// batch being drained, the pending group commit and, when the WAL fails
	// (DEGRADED), the retry queue are one queue, the WAL write queue, and
	// this is its byte bound (AsyncWriteQueueSize is its frame bound). PAUSE
	// is raised at BackpressureThreshold of it, so the queue does not
	// overflow; what drivers publish meanwhile waits in their rings. Zero
	// means 8 MiB (the seed's BatchConfig.max_memory_bytes).
	MaxMemoryBytes int64
	// AsyncWriteQueueSize (async_write_queue_size) is the frame bound of the
	// WAL write queue (see MaxMemoryBytes). Zero means the preset's value
	// (100000, 10000, 10000, 50000).
	AsyncWriteQueueSize int
	// HighPerformanceMode (high_performance_mode) trades CPU for latency
	// under load: the drain loop keeps polling its rings longer before it
	// sleeps on the doorbell futex. An idle sidecar still sleeps (~0 % CPU).
	// Zero means off. Preset and LoadConfig set it for high-throughput;
	// EnsureDefaults never changes it, because false cannot be told apart
	// from unset, and an explicit false must stay false.
	HighPerformanceMode bool

	// RingBytes (ring_bytes) is the data capacity of a producer's ring, a
	// power of two (the seed's memory column). Zero means the preset's value
	// (32, 8, 2, 16 MiB).
	RingBytes int
	// MaxRings (max_rings) is the number of ring directory slots: producer,
	// command and egress rings together. Zero means 64.
	MaxRings int
	// ShmBytes (shm_bytes) is the size of the segment file, all of it
	// allocated at start. Zero means the header, the directory and room for
	// 8 rings of RingBytes (DeriveShmBytes; 128 MiB + 56 KiB for default).
	ShmBytes int64
	// MaxRingBytes (max_ring_bytes) is the largest ring a client may ask
	// for, a power of two. Zero means 4 × RingBytes.
	MaxRingBytes int

	// AllowUIDs (allow_uids) are the uids allowed to attach besides the
	// sidecar's own uid and the members of Group. The sidecar gives them the
	// group's permissions on the segment and the socket with a POSIX ACL
	// (shm.SetAccess), so they need not be in the group. Zero means none.
	AllowUIDs []int
	// Group (group) is a group name or numeric gid that owns the segment and
	// the socket; its members may attach. Zero means the sidecar's primary
	// group.
	Group string
	// FileMode (file_mode) is the permission bits of the segment and the
	// socket, an octal string ("0660"). The owner (the sidecar) needs rw;
	// the group's bits are what Group's members and AllowUIDs get (rw to
	// attach, none to lock them out); others may get nothing: admit users
	// through Group or AllowUIDs. Zero means 0660.
	FileMode fs.FileMode

	// LogLevel (log_level) is debug, info, warn or error. Zero means info.
	LogLevel string
	// LogFormat (log_format) is text or json. Zero means text.
	LogFormat string

	// Uplink: store-and-forward of the WAL to NATS JetStream, the [uplink.nats]
	// table of the config file. Off while UplinkServers is empty.
	//
	// UplinkServers (uplink.nats.servers): NATS URLs, comma separated.
	UplinkServers string
	// UplinkCredsFile, UplinkNKeyFile, UplinkToken: credentials (a .creds
	// file, an nkey seed file, or a token); at most one.
	UplinkCredsFile string
	UplinkNKeyFile  string
	UplinkToken     string
	// UplinkTLSCA, UplinkTLSCert, UplinkTLSKey: TLS (a CA to verify the
	// servers; a client certificate and key).
	UplinkTLSCA   string
	UplinkTLSCert string
	UplinkTLSKey  string
	// UplinkStream is the JetStream stream. Zero means FRAMEBUS.
	UplinkStream string
	// UplinkSubject is the subject template: {gateway}, {producer},
	// {device} and {kind} are replaced. Zero means
	// framebus.{gateway}.{producer}.{device}.
	UplinkSubject string
	// UplinkGateway names this gateway in subjects and message ids. Zero
	// means the host name.
	UplinkGateway string
	// UplinkMaxInflight bounds the publishes waiting for their PubAck.
	// Zero means 4096.
	UplinkMaxInflight int
	// UplinkPayload is flatbuffers (the frame's bytes) or json
	// (docs/json.md). Zero means flatbuffers.
	UplinkPayload string
	// UplinkCreateStream creates the stream (subjects framebus.>, file
	// storage) if it does not exist.
	UplinkCreateStream bool
}

// Duration is a time.Duration that config files, flags and environment
// variables spell as an integer number of milliseconds (the unit of every
// *_ms key) or as a duration with a unit: "5ms", "500us", "2s", "7d" (days).
type Duration struct{ time.Duration }

// String returns the duration in Go syntax ("5ms"), or "7d" for whole days.
func (d Duration) String() string {
	if day := 24 * time.Hour; d.Duration > 0 && d.Duration%day == 0 {
		return strconv.FormatInt(int64(d.Duration/day), 10) + "d"
	}
	return d.Duration.String()
}

// MarshalText returns String().
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText parses a duration with a unit, or an integer number of
// milliseconds.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := parseDuration(string(b), true)
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// ErrConfig is matched (errors.Is) by every problem Validate and LoadConfig
// report.
var ErrConfig = errors.New("sidecar: invalid configuration")

// configError is one configuration problem; its message names the key, the
// value and what to do.
type configError struct{ msg string }

func (e *configError) Error() string        { return e.msg }
func (e *configError) Is(target error) bool { return target == ErrConfig }

func configProblem(format string, args ...any) error {
	return &configError{fmt.Sprintf(format, args...)}
}

// EnsureDefaults fills every zero field: from the chosen preset ("" means
// default; an unknown preset is left for Validate to report, and the default
// preset's values are used), and RunDir and WALDir from the process
// environment (DefaultRunDir, DefaultWALDir). It never changes a field that
// is set, and never sets HighPerformanceMode or WALMaxAge.
func (c *Config) EnsureDefaults() {
	c.ensureDefaults(os.Getenv, os.Getuid())
}

func (c *Config) ensureDefaults(getenv func(string) string, uid int) {
	if c.Preset == "" {
		c.Preset = PresetDefault
	}
	p, _ := presetBase(c.Preset)
	setIfZero(&c.Name, p.Name)
	setIfZero(&c.ShmDir, p.ShmDir)
	setIfZero(&c.RunDir, defaultRunDir(getenv, uid))
	setIfZero(&c.WALDir, defaultWALDir(getenv, uid))
	setIfZero(&c.MetricsAddr, p.MetricsAddr)
	setIfZero(&c.HTTPAddr, p.HTTPAddr)
	setIfZero(&c.WALFlush, p.WALFlush)
	setIfZero(&c.WALMaxBytes, p.WALMaxBytes)
	setIfZero(&c.BackpressureThreshold, p.BackpressureThreshold)
	setIfZero(&c.PauseHi, p.PauseHi)
	setIfZero(&c.ResumeLo, p.ResumeLo)
	setIfZero(&c.MaxBatchSize, p.MaxBatchSize)
	setIfZero(&c.BatchFlush, p.BatchFlush)
	setIfZero(&c.MaxMemoryBytes, p.MaxMemoryBytes)
	setIfZero(&c.AsyncWriteQueueSize, p.AsyncWriteQueueSize)
	setIfZero(&c.RingBytes, p.RingBytes)
	setIfZero(&c.MaxRings, p.MaxRings)
	setIfZero(&c.LogLevel, p.LogLevel)
	setIfZero(&c.LogFormat, p.LogFormat)
	setIfZero(&c.UplinkStream, p.UplinkStream)
	setIfZero(&c.UplinkSubject, p.UplinkSubject)
	setIfZero(&c.UplinkMaxInflight, p.UplinkMaxInflight)
	setIfZero(&c.UplinkPayload, p.UplinkPayload)
	setIfZero(&c.WALCompression, p.WALCompression)
	setIfZero(&c.CursorPolicy, p.CursorPolicy)
	setIfZero(&c.FileMode, p.FileMode)
	c.deriveSizes()
	if len(c.AllowUIDs) == 0 {
		c.AllowUIDs = nil
	}
}

func setIfZero[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}

// DefaultRunDir is the socket directory run_dir = "" stands for, given an
// environment (KEY=value strings; the last of duplicates wins) and a uid:
// $RUNTIME_DIRECTORY (the first of its ':'-separated list), else
// $XDG_RUNTIME_DIR/framebus, else /run/framebus for uid 0, else
// /tmp/framebus-<uid>. A client looking for a sidecar run by another user
// must be told the directory (or use the same environment).
func DefaultRunDir(environ []string, uid int) string {
	return defaultRunDir(envLookup(environ), uid)
}

// DefaultWALDir is the WAL base directory wal_dir = "" stands for, given an
// environment and a uid: $STATE_DIRECTORY (the first of its list), else
// /var/lib/framebus for uid 0, else $XDG_STATE_HOME/framebus, else
// $HOME/.local/state/framebus, else /var/tmp/framebus-<uid>.
func DefaultWALDir(environ []string, uid int) string {
	return defaultWALDir(envLookup(environ), uid)
}

func defaultRunDir(getenv func(string) string, uid int) string {
	// The one rule drivers use too (FRAMEBUS_RUN_DIR, handled by the
	// environment layer before defaults, is part of it).
	return shm.DefaultRunDir(getenv, uid)
}

func defaultWALDir(getenv func(string) string, uid int) string {
	if d := firstPath(getenv("STATE_DIRECTORY")); d != "" {
		return d
	}
	if uid == 0 {
		return "/var/lib/framebus"
	}
	if d := getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "framebus")
	}
	if h := getenv("HOME"); filepath.IsAbs(h) && h != "/" {
		return filepath.Join(h, ".local", "state", "framebus")
	}
	return fmt.Sprintf("/var/tmp/framebus-%d", uid)
}

// firstPath returns the first entry of a systemd directory list ("a:b").
func firstPath(list string) string {
	first, _, _ := strings.Cut(list, ":")
	if !filepath.IsAbs(first) {
		return ""
	}
	return first
}

// envLookup indexes KEY=value strings; for duplicates the last one wins, as
// in os/exec.Cmd.Env.
func envLookup(environ []string) func(string) string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return func(k string) string { return m[k] }
}

// SegmentPath is the shared-memory segment file: <ShmDir>/framebus-<Name>.
// Zero fields mean their defaults, as EnsureDefaults computes them.
func (c Config) SegmentPath() string {
	c.EnsureDefaults()
	return shm.Path(c.ShmDir, c.Name)
}

// SocketPath is the attach socket: <RunDir>/<Name>.sock. Zero fields mean
// their defaults, as EnsureDefaults computes them.
func (c Config) SocketPath() string {
	c.EnsureDefaults()
	return filepath.Join(c.RunDir, c.Name+".sock")
}

// WALPath is this bus's WAL directory: <WALDir>/<Name>. Zero fields mean
// their defaults, as EnsureDefaults computes them.
func (c Config) WALPath() string {
	c.EnsureDefaults()
	return filepath.Join(c.WALDir, c.Name)
}

// GroupID resolves Group to a gid; -1 if Group is empty (the sidecar's
// primary group applies).
func (c Config) GroupID() (int, error) {
	if c.Group == "" {
		return -1, nil
	}
	if n, err := strconv.ParseUint(c.Group, 10, 32); err == nil {
		if n == math.MaxUint32 {
			return 0, configProblem("group (%s) is not a valid gid: use a gid below 4294967295 or a group name", c.Group)
		}
		return int(n), nil
	}
	g, err := user.LookupGroup(c.Group)
	if err != nil {
		return 0, configProblem("group (%q) does not exist: create it (groupadd %s), or give an existing group name or a numeric gid", c.Group, c.Group)
	}
	n, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, configProblem("group (%q) has the non-numeric gid %q: give a numeric gid", c.Group, g.Gid)
	}
	return n, nil
}

// DefaultFileMode is the permission bits of the segment and the socket when
// file_mode is not set: owner and group read and write.
const DefaultFileMode fs.FileMode = shm.DefaultMode

// Limits that Validate enforces.
const (
	maxSocketPath  = 107 // sun_path is 108 bytes including the NUL
	minWALMaxBytes = 1 << 20
	minMemoryBytes = 64 << 10
	maxShmBytes    = 1 << 40
	maxMaxRings    = 4096
	maxBatchFrames = 1 << 20
	maxFlush       = time.Minute
	maxBatchFlush  = time.Second
)

// Validate reports every problem of c at once (errors.Join; each matches
// ErrConfig), one line per problem, each naming the key, its value and what
// to do. Call it after EnsureDefaults: a zero field is a problem here.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, configProblem(format, args...)) }

	if err := validBusName(c.Name); err != "" {
		add("name (%q) %s", c.Name, err)
	}
	if !slices.Contains(presetNames, c.Preset) {
		add("preset (%q) is unknown: choose one of %s", c.Preset, strings.Join(presetNames, ", "))
	}
	for _, d := range []struct{ key, v string }{{"shm_dir", c.ShmDir}, {"run_dir", c.RunDir}, {"wal_dir", c.WALDir}} {
		if d.v == "" {
			add("%s is empty: give a directory, or leave the key out for the default", d.key)
		} else if strings.ContainsRune(d.v, 0) {
			add("%s (%q) contains a NUL byte: give a valid path", d.key, d.v)
		}
	}
	if c.RunDir != "" && c.Name != "" {
		if p := filepath.Join(c.RunDir, c.Name+".sock"); len(p) > maxSocketPath {
			add("run_dir (%q) makes the socket path %s %d bytes long, more than the %d a Unix socket allows: choose a shorter run_dir or name",
				c.RunDir, p, len(p), maxSocketPath)
		}
	}
	if c.MetricsAddr != MetricsOff {
		if _, port, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			add("metrics_addr (%q) is not host:port: write e.g. %s or :9464, or %q to disable metrics", c.MetricsAddr, DefaultMetricsAddr, MetricsOff)
		} else if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
			add("metrics_addr (%q) has an invalid port %q: use a number in 0..65535", c.MetricsAddr, port)
		}
	}
	if c.HTTPAddr != MetricsOff {
		if _, port, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			add("http_addr (%q) is not host:port: write e.g. %s, or %q to disable the HTTP API", c.HTTPAddr, DefaultHTTPAddr, MetricsOff)
		} else if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
			add("http_addr (%q) has an invalid port %q: use a number in 0..65535", c.HTTPAddr, port)
		}
	}

	if d := c.WALFlush.Duration; d <= 0 || d > maxFlush {
		add("wal_flush_ms (%s) must be more than 0 and at most %s: e.g. 5 (ms) or \"500us\"", c.WALFlush, maxFlush)
	}
	if c.WALMaxBytes < minWALMaxBytes {
		add("wal_max_bytes (%s) must be at least 1MiB: e.g. \"8GiB\"", formatBytes(c.WALMaxBytes))
	}
	if c.WALMaxAge.Duration < 0 {
		add("wal_max_age (%s) must not be negative: give a duration such as \"7d\", or 0 for no age limit", c.WALMaxAge)
	}

	if t := c.BackpressureThreshold; !(t > 0 && t <= 1) {
		add("backpressure_threshold (%s) must be a fraction in (0, 1]: e.g. 0.9 or \"90%%\"", fmtFrac(t))
	}
	if p := c.PauseHi; !(p > 0 && p <= 1) {
		add("pause_hi (%s) must be a fraction in (0, 1]: e.g. 0.85 or \"85%%\"", fmtFrac(p))
	}
	if r := c.ResumeLo; !(r >= 0 && r < 1) {
		add("resume_lo (%s) must be a fraction in [0, 1): e.g. 0.7 or \"70%%\"", fmtFrac(r))
	} else {
		if c.PauseHi > 0 && c.PauseHi <= 1 && !(c.PauseHi > r) {
			add("pause_hi (%s) must be greater than resume_lo (%s): raise pause_hi or lower resume_lo", fmtFrac(c.PauseHi), fmtFrac(r))
		}
		if t := c.BackpressureThreshold; t > 0 && t <= 1 && !(t > r) {
			add("backpressure_threshold (%s) must be greater than resume_lo (%s), which also clears the global PAUSE: raise backpressure_threshold or lower resume_lo",
				fmtFrac(t), fmtFrac(r))
		}
	}

	if n := c.MaxBatchSize; n < 1 || n > maxBatchFrames {
		add("max_batch_size (%d) must be in 1..%d frames", n, maxBatchFrames)
	}
	if d := c.BatchFlush.Duration; d <= 0 || d > maxBatchFlush {
		add("batch_flush_ms (%s) must be more than 0 and at most %s: e.g. 1 (ms) or \"500us\"", c.BatchFlush, maxBatchFlush)
	}
	if c.MaxMemoryBytes < minMemoryBytes {
		add("max_memory_bytes (%s) must be at least 64KiB: e.g. \"8MiB\"", formatBytes(c.MaxMemoryBytes))
	}
	if n := c.AsyncWriteQueueSize; n < 1 {
		add("async_write_queue_size (%d) must be at least 1 frame: e.g. 50000", n)
	} else if c.MaxBatchSize >= 1 && n < c.MaxBatchSize {
		add("async_write_queue_size (%d) must be at least max_batch_size (%d), or a whole batch never fits: raise it or lower max_batch_size", n, c.MaxBatchSize)
	}

	ringOK := validRingBytes(c.RingBytes)
	if !ringOK {
		add("ring_bytes (%s) must be a power of two in %s..%s: e.g. \"16MiB\"",
			formatBytes(int64(c.RingBytes)), formatBytes(shm.MinRingCapacity), formatBytes(shm.MaxRingCapacity))
	}
	maxOK := validRingBytes(c.MaxRingBytes)
	if !maxOK {
		add("max_ring_bytes (%s) must be a power of two in %s..%s: e.g. \"64MiB\", or 0 for 4 × ring_bytes",
			formatBytes(int64(c.MaxRingBytes)), formatBytes(shm.MinRingCapacity), formatBytes(shm.MaxRingCapacity))
	} else if ringOK && c.MaxRingBytes < c.RingBytes {
		add("max_ring_bytes (%s) must be at least ring_bytes (%s): raise it, or 0 for 4 × ring_bytes", formatBytes(int64(c.MaxRingBytes)), formatBytes(int64(c.RingBytes)))
		maxOK = false
	}
	ringsOK := c.MaxRings >= 1 && c.MaxRings <= maxMaxRings
	if !ringsOK {
		add("max_rings (%d) must be in 1..%d", c.MaxRings, maxMaxRings)
	}
	if c.ShmBytes > maxShmBytes {
		add("shm_bytes (%s) must be at most 1TiB", formatBytes(c.ShmBytes))
	} else if maxOK && ringsOK {
		if need := shmOverhead(c.MaxRings) + shmRingRegion(int64(c.MaxRingBytes)); c.ShmBytes < need {
			add("shm_bytes (%s) is too small for the header, %d directory slots and one ring of max_ring_bytes (%s): make it at least %d, or 0 to derive it",
				formatBytes(c.ShmBytes), c.MaxRings, formatBytes(int64(c.MaxRingBytes)), need)
		}
	}

	for _, u := range c.AllowUIDs {
		if u < 0 || u >= math.MaxUint32 {
			add("allow_uids has %d, which is not a uid: use numbers in 0..4294967294", u)
		}
	}
	if c.Group != "" {
		if _, err := c.GroupID(); err != nil {
			errs = append(errs, err)
		}
	}
	switch m := c.FileMode; {
	case m&^fs.ModePerm != 0:
		add("file_mode (%04o) has bits beyond 0777: give permission bits only, e.g. \"0660\"", uint32(m))
	case m&0o600 != 0o600:
		add("file_mode (%04o) must give the owner (the sidecar) read and write: e.g. \"0660\"", uint32(m))
	case m&0o007 != 0:
		add("file_mode (%04o) gives every local user access (the last digit): make it 0: admit users with group or allow_uids, e.g. \"0660\"", uint32(m))
	case m&0o060 != 0o060 && (c.Group != "" || len(c.AllowUIDs) > 0):
		add("file_mode (%04o) does not give the group read and write, so the members of group and allow_uids could not attach: make it \"0660\", or leave out group and allow_uids", uint32(m))
	}

	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.LogLevel) {
		add("log_level (%q) is unknown: choose debug, info, warn or error", c.LogLevel)
	}
	if c.UplinkServers != "" {
		for _, u := range strings.Split(c.UplinkServers, ",") {
			if u = strings.TrimSpace(u); u == "" || !strings.Contains(u, "://") && !strings.Contains(u, ":") {
				add("uplink.nats.servers (%q): %q is not a NATS URL: write e.g. nats://10.0.0.5:4222", c.UplinkServers, u)
			}
		}
		n := 0
		for _, v := range []string{c.UplinkCredsFile, c.UplinkNKeyFile, c.UplinkToken} {
			if v != "" {
				n++
			}
		}
		if n > 1 {
			add("uplink.nats: give one of creds_file, nkey_file and token, not %d", n)
		}
		if (c.UplinkTLSCert == "") != (c.UplinkTLSKey == "") {
			add("uplink.nats.tls_cert and tls_key go together: give both or neither")
		}
		if c.UplinkStream == "" || strings.ContainsAny(c.UplinkStream, " .*>/\\") {
			add("uplink.nats.stream (%q) must be a name without spaces, dots, *, > or slashes", c.UplinkStream)
		}
		if c.UplinkSubject == "" || strings.ContainsAny(c.UplinkSubject, " \t") {
			add("uplink.nats.subject (%q) must be a subject template without spaces, e.g. framebus.{gateway}.{producer}.{device}", c.UplinkSubject)
		}
		if c.UplinkMaxInflight < 1 || c.UplinkMaxInflight > 1<<16 {
			add("uplink.nats.max_inflight (%d) must be in 1..65536", c.UplinkMaxInflight)
		}
		if !slices.Contains([]string{"flatbuffers", "json"}, c.UplinkPayload) {
			add("uplink.nats.payload (%q) is unknown: choose flatbuffers or json", c.UplinkPayload)
		}
	}
	if !slices.Contains([]string{"retain", "drop"}, c.CursorPolicy) {
		add("cursor_policy (%q) is unknown: choose retain or drop", c.CursorPolicy)
	}
	if c.CursorMaxBytes < c.WALMaxBytes {
		add("cursor_max_bytes (%s) must be at least wal_max_bytes (%s)", formatBytes(c.CursorMaxBytes), formatBytes(c.WALMaxBytes))
	}
	if !slices.Contains([]string{"s2", "none"}, c.WALCompression) {
		add("wal_compression (%q) is unknown: choose s2 or none", c.WALCompression)
	}
	if !slices.Contains([]string{"text", "json"}, c.LogFormat) {
		add("log_format (%q) is unknown: choose text or json", c.LogFormat)
	}
	return errors.Join(errs...)
}

func validRingBytes(n int) bool {
	return n >= shm.MinRingCapacity && n <= shm.MaxRingCapacity && n&(n-1) == 0
}

// validBusName returns what is wrong with a bus name, or "". The rules are
// package shm's, which names the segment file after the bus.
func validBusName(name string) string {
	if name == "" || len(name) > 64 {
		return "must be 1 to 64 characters"
	}
	if name == "." || name == ".." {
		return "must not be . or ..: use letters, digits, '-', '_' and '.'"
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return "may only hold letters, digits, '-', '_' and '.'"
		}
	}
	return ""
}

// fmtFrac prints a fraction with two decimals, or all of them if two would
// hide a difference.
func fmtFrac(v float64) string {
	s := strconv.FormatFloat(v, 'f', 2, 64)
	if f, _ := strconv.ParseFloat(s, 64); f != v {
		s = strconv.FormatFloat(v, 'g', -1, 64)
	}
	return s
}

// ---------------------------------------------------------------------------
// Keys: one table drives flags, environment variables, the TOML file, the
// TOML output, the help text and the documentation.

type keyKind int

const (
	kindString   keyKind = iota // string
	kindEnum                    // string, lower-cased on input
	kindMillis                  // Duration; a bare number is milliseconds
	kindAge                     // Duration; a bare number must be 0
	kindBytes                   // int64 or int byte size, units accepted
	kindCount                   // int
	kindFraction                // float64; "95%" accepted
	kindBool                    // bool
	kindUIDs                    // []int; "1000,1001" accepted
	kindMode                    // fs.FileMode; an octal string, "0660" or "0o660"
)

type configKey struct {
	key   string
	group string
	arg   string // the value's placeholder in the help text (its unit)
	kind  keyKind
	help  string // one line: what it is
	def   string // the default, where it does not come from the preset
	ptr   func(c *Config) any
}

// flag is the key's flag name: uplink.nats.max_inflight → uplink-nats-max-inflight.
func (f *configKey) flag() string { return strings.NewReplacer("_", "-", ".", "-").Replace(f.key) }

// env is the key's environment variable: FRAMEBUS_UPLINK_NATS_MAX_INFLIGHT.
func (f *configKey) env() string {
	return "FRAMEBUS_" + strings.ToUpper(strings.ReplaceAll(f.key, ".", "_"))
}

// perPreset reports whether the default comes from the preset table.
func (f *configKey) perPreset() bool { return f.def == "" }

const (
	groupGeneral  = "General"
	groupWAL      = "WAL"
	groupBackp    = "Backpressure"
	groupBatch    = "Batching and the WAL write queue"
	groupShm      = "Shared memory"
	groupAccess   = "Access control"
	groupLogging  = "Logging"
	groupUplink   = "Uplink (NATS JetStream)"
	compatWALDir  = "WAL_DIR"
	envConfigFile = "FRAMEBUS_CONFIG"
)

var configKeys = []configKey{
	{key: "name", group: groupGeneral, arg: "NAME", kind: kindString, def: `"default"`,
		help: "bus name: segment <shm_dir>/framebus-<name>, socket <run_dir>/<name>.sock, WAL <wal_dir>/<name>/",
		ptr:  func(c *Config) any { return &c.Name }},
	{key: "preset", group: groupGeneral, arg: "NAME", kind: kindEnum, def: `"default"`,
		help: "performance preset: high-throughput, low-latency, memory-optimized or default",
		ptr:  func(c *Config) any { return &c.Preset }},
	{key: "shm_dir", group: groupGeneral, arg: "PATH", kind: kindString, def: `"/dev/shm"`,
		help: "directory of the shared-memory segment file (a tmpfs)",
		ptr:  func(c *Config) any { return &c.ShmDir }},
	{key: "run_dir", group: groupGeneral, arg: "PATH", kind: kindString,
		def:  "$RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/framebus, else /run/framebus (root), else /tmp/framebus-<uid>",
		help: "directory of the attach socket <name>.sock",
		ptr:  func(c *Config) any { return &c.RunDir }},
	{key: "wal_dir", group: groupGeneral, arg: "PATH", kind: kindString,
		def:  "$STATE_DIRECTORY, else /var/lib/framebus (root), else $XDG_STATE_HOME/framebus, else ~/.local/state/framebus, else /var/tmp/framebus-<uid>",
		help: "base directory of WALs; this bus's WAL is <wal_dir>/<name>/ (env WAL_DIR too)",
		ptr:  func(c *Config) any { return &c.WALDir }},
	{key: "metrics_addr", group: groupGeneral, arg: "ADDR", kind: kindString, def: `"127.0.0.1:9464"`,
		help: `host:port of /metrics, /healthz and /readyz; "off" disables them`,
		ptr:  func(c *Config) any { return &c.MetricsAddr }},
	{key: "http_addr", group: groupGeneral, arg: "ADDR", kind: kindString, def: `"127.0.0.1:9465"`,
		help: `host:port of the HTTP API (/v1/frames, /v1/commands, /v1/status); keep it on loopback; "off" disables it`,
		ptr:  func(c *Config) any { return &c.HTTPAddr }},

	{key: "wal_flush_ms", group: groupWAL, arg: "MS", kind: kindMillis,
		help: `group-commit interval, ms (or a duration: "500us"); bounds publish-to-durable latency`,
		ptr:  func(c *Config) any { return &c.WALFlush }},
	{key: "wal_max_bytes", group: groupWAL, arg: "BYTES", kind: kindBytes,
		help: `WAL size cap; the oldest segments are deleted beyond it (bytes, or "16GiB", "16GB")`,
		ptr:  func(c *Config) any { return &c.WALMaxBytes }},
	{key: "wal_max_age", group: groupWAL, arg: "DURATION", kind: kindAge, def: "0 (no age limit)",
		help: `segments older than this are deleted ("72h", "7d"); 0 = no age limit`,
		ptr:  func(c *Config) any { return &c.WALMaxAge }},
	{key: "wal_compression", group: groupWAL, arg: "ALGO", kind: kindEnum, def: `"s2"`,
		help: "compression of WAL segments: s2 or none",
		ptr:  func(c *Config) any { return &c.WALCompression }},
	{key: "cursor_policy", group: groupWAL, arg: "POLICY", kind: kindEnum, def: `"retain"`,
		help: "retention against unacked durable cursors: retain (hold deletion, PAUSE at cursor_max_bytes) or drop (delete, count lost frames)",
		ptr:  func(c *Config) any { return &c.CursorPolicy }},
	{key: "cursor_max_bytes", group: groupWAL, arg: "BYTES", kind: kindBytes, def: "2 × wal_max_bytes",
		help: "retain policy's hard cap: above it the sidecar raises PAUSE until cursors ack",
		ptr:  func(c *Config) any { return &c.CursorMaxBytes }},
	{key: "wal_recover", group: groupWAL, arg: "BOOL", kind: kindBool, def: "false",
		help: "at start, check every WAL page and segment (reads the whole file) and, if damaged, move the file aside and rebuild the WAL from every intact segment (docs/wal-recovery.md); without it a damaged WAL stops the start, and damage in an older segment is found when it is read",
		ptr:  func(c *Config) any { return &c.WALRecover }},

	{key: "backpressure_threshold", group: groupBackp, arg: "FRACTION", kind: kindFraction,
		help: `WAL write-queue fill that raises the global PAUSE (0.9 or "90%")`,
		ptr:  func(c *Config) any { return &c.BackpressureThreshold }},
	{key: "pause_hi", group: groupBackp, arg: "FRACTION", kind: kindFraction,
		help: "ring fill that raises the ring's PAUSE",
		ptr:  func(c *Config) any { return &c.PauseHi }},
	{key: "resume_lo", group: groupBackp, arg: "FRACTION", kind: kindFraction,
		help: "ring fill (and write-queue fill) below which PAUSE is cleared",
		ptr:  func(c *Config) any { return &c.ResumeLo }},

	{key: "max_batch_size", group: groupBatch, arg: "FRAMES", kind: kindCount,
		help: "frames the drain loop hands to the WAL writer at most at once",
		ptr:  func(c *Config) any { return &c.MaxBatchSize }},
	{key: "batch_flush_ms", group: groupBatch, arg: "MS", kind: kindMillis,
		help: "how long a drain batch may fill before it is handed over, ms (or a duration)",
		ptr:  func(c *Config) any { return &c.BatchFlush }},
	{key: "max_memory_bytes", group: groupBatch, arg: "BYTES", kind: kindBytes,
		help: "byte bound of the WAL write queue (also the DEGRADED memory queue)",
		ptr:  func(c *Config) any { return &c.MaxMemoryBytes }},
	{key: "async_write_queue_size", group: groupBatch, arg: "FRAMES", kind: kindCount,
		help: "frame bound of the WAL write queue",
		ptr:  func(c *Config) any { return &c.AsyncWriteQueueSize }},
	{key: "high_performance_mode", group: groupBatch, arg: "BOOL", kind: kindBool,
		help: "drain loop polls longer before it sleeps: less latency, more CPU under load",
		ptr:  func(c *Config) any { return &c.HighPerformanceMode }},

	{key: "ring_bytes", group: groupShm, arg: "BYTES", kind: kindBytes,
		help: "data capacity of a producer's ring, a power of two",
		ptr:  func(c *Config) any { return &c.RingBytes }},
	{key: "max_ring_bytes", group: groupShm, arg: "BYTES", kind: kindBytes, def: "4 × ring_bytes",
		help: "largest ring a client may ask for, a power of two; 0 = 4 × ring_bytes",
		ptr:  func(c *Config) any { return &c.MaxRingBytes }},
	{key: "max_rings", group: groupShm, arg: "N", kind: kindCount, def: "64",
		help: "ring directory slots (producer, command and egress rings)",
		ptr:  func(c *Config) any { return &c.MaxRings }},
	{key: "shm_bytes", group: groupShm, arg: "BYTES", kind: kindBytes, def: "header + directory + 8 × (ring_bytes + 4KiB)",
		help: "segment file size, allocated at start; 0 = room for 8 rings of ring_bytes",
		ptr:  func(c *Config) any { return &c.ShmBytes }},

	{key: "allow_uids", group: groupAccess, arg: "UIDS", kind: kindUIDs, def: "none",
		help: "uids allowed to attach besides the sidecar's own and group members; an ACL gives them the group's access to the segment and socket (1000,1001)",
		ptr:  func(c *Config) any { return &c.AllowUIDs }},
	{key: "group", group: groupAccess, arg: "GROUP", kind: kindString, def: "the sidecar's primary group",
		help: "group name or gid owning the segment and socket; members may attach",
		ptr:  func(c *Config) any { return &c.Group }},
	{key: "file_mode", group: groupAccess, arg: "MODE", kind: kindMode, def: `"0660"`,
		help: `octal permission bits of the segment and socket: owner rw; the group's bits also go to allow_uids; none for others`,
		ptr:  func(c *Config) any { return &c.FileMode }},

	{key: "log_level", group: groupLogging, arg: "LEVEL", kind: kindEnum, def: `"info"`,
		help: "debug, info, warn or error",
		ptr:  func(c *Config) any { return &c.LogLevel }},
	{key: "log_format", group: groupLogging, arg: "FORMAT", kind: kindEnum, def: `"text"`,
		help: "text or json",
		ptr:  func(c *Config) any { return &c.LogFormat }},

	{key: "uplink.nats.servers", group: groupUplink, arg: "URLS", kind: kindString, def: `"" (uplink off)`,
		help: "NATS server URLs, comma separated: forward the WAL to JetStream",
		ptr:  func(c *Config) any { return &c.UplinkServers }},
	{key: "uplink.nats.creds_file", group: groupUplink, arg: "PATH", kind: kindString, def: "none",
		help: "NATS credentials file (.creds)",
		ptr:  func(c *Config) any { return &c.UplinkCredsFile }},
	{key: "uplink.nats.nkey_file", group: groupUplink, arg: "PATH", kind: kindString, def: "none",
		help: "NATS nkey seed file",
		ptr:  func(c *Config) any { return &c.UplinkNKeyFile }},
	{key: "uplink.nats.token", group: groupUplink, arg: "TOKEN", kind: kindString, def: "none",
		help: "NATS token",
		ptr:  func(c *Config) any { return &c.UplinkToken }},
	{key: "uplink.nats.tls_ca", group: groupUplink, arg: "PATH", kind: kindString, def: "none",
		help: "CA file that signs the NATS servers' certificates",
		ptr:  func(c *Config) any { return &c.UplinkTLSCA }},
	{key: "uplink.nats.tls_cert", group: groupUplink, arg: "PATH", kind: kindString, def: "none",
		help: "client certificate for NATS (with tls_key)",
		ptr:  func(c *Config) any { return &c.UplinkTLSCert }},
	{key: "uplink.nats.tls_key", group: groupUplink, arg: "PATH", kind: kindString, def: "none",
		help: "client key for NATS (with tls_cert)",
		ptr:  func(c *Config) any { return &c.UplinkTLSKey }},
	{key: "uplink.nats.stream", group: groupUplink, arg: "NAME", kind: kindString, def: `"FRAMEBUS"`,
		help: "JetStream stream the frames go to",
		ptr:  func(c *Config) any { return &c.UplinkStream }},
	{key: "uplink.nats.subject", group: groupUplink, arg: "TEMPLATE", kind: kindString, def: `"framebus.{gateway}.{producer}.{device}"`,
		help: "subject template: {gateway}, {producer}, {device}, {kind}",
		ptr:  func(c *Config) any { return &c.UplinkSubject }},
	{key: "uplink.nats.gateway", group: groupUplink, arg: "ID", kind: kindString, def: "the host name",
		help: "this gateway's id in subjects and message ids",
		ptr:  func(c *Config) any { return &c.UplinkGateway }},
	{key: "uplink.nats.max_inflight", group: groupUplink, arg: "N", kind: kindCount, def: "4096",
		help: "publishes waiting for their PubAck at most",
		ptr:  func(c *Config) any { return &c.UplinkMaxInflight }},
	{key: "uplink.nats.payload", group: groupUplink, arg: "FORMAT", kind: kindEnum, def: `"flatbuffers"`,
		help: "message body: flatbuffers (the frame's bytes) or json (docs/json.md)",
		ptr:  func(c *Config) any { return &c.UplinkPayload }},
	{key: "uplink.nats.create_stream", group: groupUplink, arg: "BOOL", kind: kindBool, def: "false",
		help: "create the stream (subjects framebus.>, file storage) if it does not exist",
		ptr:  func(c *Config) any { return &c.UplinkCreateStream }},
}

var keyGroups = []string{groupGeneral, groupWAL, groupBackp, groupBatch, groupShm, groupAccess, groupLogging, groupUplink}

func keyByName(key string) *configKey {
	for i := range configKeys {
		if configKeys[i].key == key {
			return &configKeys[i]
		}
	}
	return nil
}

// set parses v (a string from a flag or the environment, or a value decoded
// from TOML) into f's field of c. The error says what the key wants; the
// caller adds the source.
func (f *configKey) set(c *Config, v any) error {
	switch p := f.ptr(c).(type) {
	case *string:
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s is not a string: quote it", tomlText(v))
		}
		if f.kind == kindEnum {
			s = strings.ToLower(strings.TrimSpace(s))
			if f.key == "preset" {
				s = normalizePreset(s)
			}
		}
		*p = s
	case *Duration:
		d, err := durationValue(v, f.kind == kindMillis)
		if err != nil {
			return err
		}
		p.Duration = d
	case *int64:
		n, err := intValue(v, f.kind == kindBytes)
		if err != nil {
			return err
		}
		*p = n
	case *int:
		n, err := intValue(v, f.kind == kindBytes)
		if err != nil {
			return err
		}
		if int64(int(n)) != n {
			return fmt.Errorf("%d is too large", n)
		}
		*p = int(n)
	case *float64:
		x, err := fractionValue(v)
		if err != nil {
			return err
		}
		*p = x
	case *bool:
		b, err := boolValue(v)
		if err != nil {
			return err
		}
		*p = b
	case *[]int:
		l, err := uidsValue(v)
		if err != nil {
			return err
		}
		*p = l
	case *fs.FileMode:
		m, err := modeValue(v)
		if err != nil {
			return err
		}
		*p = m
	default:
		panic("sidecar: config field " + f.key + " has an unhandled type")
	}
	return nil
}

// value returns f's field of c as the value TOML() writes.
func (f *configKey) value(c *Config) any {
	switch p := f.ptr(c).(type) {
	case *string:
		return *p
	case *Duration:
		if f.kind == kindMillis && p.Duration%time.Millisecond == 0 {
			return int64(p.Duration / time.Millisecond)
		}
		return p.String()
	case *int64:
		return bytesValue(*p)
	case *int:
		if f.kind == kindBytes {
			return bytesValue(int64(*p))
		}
		return int64(*p)
	case *float64:
		return *p
	case *bool:
		return *p
	case *[]int:
		l := make([]int64, len(*p))
		for i, u := range *p {
			l[i] = int64(u)
		}
		return l
	case *fs.FileMode:
		return fmt.Sprintf("%04o", uint32(*p))
	}
	panic("sidecar: config field " + f.key + " has an unhandled type")
}

// display returns f's field of c as the help text and docs show it.
func (f *configKey) display(c *Config) string {
	switch v := f.value(c).(type) {
	case string:
		if f.kind == kindMillis || f.kind == kindAge || f.kind == kindBytes {
			return v
		}
		return strconv.Quote(v)
	case int64:
		switch {
		case f.kind == kindMillis:
			return strconv.FormatInt(v, 10) + "ms"
		case f.kind == kindBytes && v >= 1<<20:
			return fmt.Sprintf("%d (%.2fMiB)", v, float64(v)/(1<<20))
		}
		return strconv.FormatInt(v, 10)
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	case []int64:
		s := make([]string, len(v))
		for i, u := range v {
			s[i] = strconv.FormatInt(u, 10)
		}
		return "[" + strings.Join(s, ", ") + "]"
	}
	return fmt.Sprint(f.value(c))
}

// tomlText renders a decoded TOML value (or a string) for an error message.
func tomlText(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case map[string]any:
		return "a table"
	}
	b, err := toml.Marshal(map[string]any{"v": v})
	if err != nil {
		return fmt.Sprint(v)
	}
	return strings.TrimSpace(strings.TrimPrefix(string(b), "v = "))
}

func durationValue(v any, bareMillis bool) (time.Duration, error) {
	switch x := v.(type) {
	case string:
		return parseDuration(x, bareMillis)
	case int64:
		if !bareMillis && x != 0 {
			return 0, fmt.Errorf("%d has no unit: write a duration such as \"72h\" or \"7d\", or 0 for no limit", x)
		}
		if x > math.MaxInt64/int64(time.Millisecond) || x < math.MinInt64/int64(time.Millisecond) {
			return 0, fmt.Errorf("%d ms is out of range", x)
		}
		return time.Duration(x) * time.Millisecond, nil
	case float64:
		if !bareMillis && x != 0 {
			return 0, fmt.Errorf("%v has no unit: write a duration such as \"72h\" or \"7d\", or 0 for no limit", x)
		}
		ns := x * float64(time.Millisecond)
		if math.IsNaN(ns) || math.Abs(ns) >= math.MaxInt64 {
			return 0, fmt.Errorf("%v ms is out of range", x)
		}
		return time.Duration(ns), nil
	}
	return 0, fmt.Errorf("%s is not a duration: write milliseconds (5) or a duration with a unit (\"5ms\", \"500us\")", tomlText(v))
}

// parseDuration parses "5ms", "2s", "7d" or, if bareMillis, "5" (ms). Without
// bareMillis only "0" may lack a unit.
func parseDuration(s string, bareMillis bool) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(strings.ReplaceAll(s, "_", ""), 10, 64); err == nil {
		return durationValue(n, bareMillis)
	}
	if num, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
		if err == nil && n >= 0 && n <= math.MaxInt64/int64(24*time.Hour) {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		if bareMillis {
			return 0, fmt.Errorf("%q is not a duration: write milliseconds (5) or a duration with a unit (\"5ms\", \"500us\", \"2s\")", s)
		}
		return 0, fmt.Errorf("%q is not a duration: write one with a unit (\"90m\", \"72h\", \"7d\"), or 0 for no limit", s)
	}
	return d, nil
}

// Byte units. "kB", "MB", "GB", "TB" are decimal (10^3…); "KiB", "MiB",
// "GiB", "TiB" (or "Ki", "Mi", "Gi", "Ti") are binary (2^10…). Case does not
// matter. A bare "K", "M", "G" or "T" is refused as ambiguous.
var byteUnits = []struct {
	name string
	mult int64
}{
	{"TiB", 1 << 40}, {"TB", 1e12}, {"GiB", 1 << 30}, {"GB", 1e9},
	{"MiB", 1 << 20}, {"MB", 1e6}, {"KiB", 1 << 10}, {"kB", 1e3},
}

func intValue(v any, bytesUnit bool) (int64, error) {
	switch x := v.(type) {
	case int64:
		return x, nil
	case float64:
		if x != math.Trunc(x) || math.Abs(x) >= math.MaxInt64 {
			return 0, fmt.Errorf("%v is not a whole number", x)
		}
		return int64(x), nil
	case string:
		if bytesUnit {
			return parseBytes(x)
		}
		n, err := strconv.ParseInt(strings.ReplaceAll(strings.TrimSpace(x), "_", ""), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%q is not a whole number", x)
		}
		return n, nil
	}
	if bytesUnit {
		return 0, fmt.Errorf("%s is not a byte size: write bytes (1048576) or a size with a unit (\"1MiB\", \"16GB\")", tomlText(v))
	}
	return 0, fmt.Errorf("%s is not a whole number", tomlText(v))
}

// ParseBytes parses a byte size: an integer, or an integer with a unit:
// kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024),
// case-insensitive, with optional space ("16GiB", "4 GB", "8mib"). A bare
// "G" is refused as ambiguous.
func ParseBytes(s string) (int64, error) { return parseBytes(s) }

func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	if i < len(t) && (t[i] == '-' || t[i] == '+') {
		i++
	}
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '_') {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	n, err := strconv.ParseInt(strings.ReplaceAll(num, "_", ""), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a byte size: write bytes (1048576) or a whole number with a unit (\"1MiB\", \"16GB\")", s)
	}
	if strings.HasPrefix(unit, ".") || strings.HasPrefix(unit, ",") {
		return 0, fmt.Errorf("%q is not a whole number: use a smaller unit (\"1536MiB\", not \"1.5GiB\")", s)
	}
	if unit == "" || strings.EqualFold(unit, "B") {
		return n, nil
	}
	for _, u := range byteUnits {
		if strings.EqualFold(unit, u.name) || strings.EqualFold(unit, strings.TrimSuffix(u.name, "B")) && strings.HasSuffix(u.name, "iB") {
			if n > math.MaxInt64/u.mult || n < math.MinInt64/u.mult {
				return 0, fmt.Errorf("%q is too large", s)
			}
			return n * u.mult, nil
		}
	}
	if len(unit) == 1 && strings.ContainsAny(unit, "kKmMgGtT") {
		up := strings.ToUpper(unit)
		return 0, fmt.Errorf("%q is ambiguous: write %d%siB (×2^%d) or %d%sB (×10^%d)",
			s, n, up, 10*strings.Index("KMGT", up)+10, n, up, 3*strings.Index("KMGT", up)+3)
	}
	return 0, fmt.Errorf("%q has an unknown unit %q: use B, kB, MB, GB, TB (×1000) or KiB, MiB, GiB, TiB (×1024)", s, unit)
}

// formatBytes writes n with the largest unit that divides it exactly into a
// number below 10000, else as a plain integer.
func formatBytes(n int64) string {
	if v, ok := bytesValue(n).(string); ok {
		return v
	}
	return strconv.FormatInt(n, 10)
}

// bytesValue is n as TOML() writes it: "16GiB" where a unit fits, else the
// integer.
func bytesValue(n int64) any {
	if n > 0 {
		for _, u := range byteUnits {
			if n%u.mult == 0 && n/u.mult < 10000 {
				return strconv.FormatInt(n/u.mult, 10) + u.name
			}
		}
	}
	return n
}

func fractionValue(v any) (float64, error) {
	var x float64
	switch y := v.(type) {
	case float64:
		x = y
	case int64:
		x = float64(y)
	case string:
		s := strings.TrimSpace(y)
		pct, isPct := strings.CutSuffix(s, "%")
		f, err := strconv.ParseFloat(strings.TrimSpace(pct), 64)
		if err != nil {
			return 0, fmt.Errorf("%q is not a fraction: write e.g. 0.9 or \"90%%\"", y)
		}
		if isPct {
			f /= 100
		}
		x = f
	default:
		return 0, fmt.Errorf("%s is not a fraction: write e.g. 0.9 or \"90%%\"", tomlText(v))
	}
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0, fmt.Errorf("%s is not a fraction: write e.g. 0.9 or \"90%%\"", tomlText(v))
	}
	return x, nil
}

func boolValue(v any) (bool, error) {
	switch x := v.(type) {
	case bool:
		return x, nil
	case string:
		switch strings.ToLower(strings.TrimSpace(x)) {
		case "1", "t", "true", "yes", "y", "on":
			return true, nil
		case "0", "f", "false", "no", "n", "off":
			return false, nil
		}
	}
	return false, fmt.Errorf("%s is not a boolean: write true or false", tomlText(v))
}

// modeValue parses file permission bits written in octal: "0660", "660"
// or "0o660". A TOML integer is refused: file_mode = 660 would be decimal.
func modeValue(v any) (fs.FileMode, error) {
	s, ok := v.(string)
	if !ok {
		return 0, fmt.Errorf("%s is not a quoted octal mode: write e.g. \"0660\" (a bare TOML number would be decimal)", tomlText(v))
	}
	t := strings.TrimSpace(s)
	n, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimPrefix(t, "0o"), "0O"), 8, 32)
	if err != nil || t == "" {
		return 0, fmt.Errorf("%q is not an octal file mode: write e.g. \"0660\"", s)
	}
	return fs.FileMode(n), nil
}

func uidsValue(v any) ([]int, error) {
	var out []int
	add := func(x any) error {
		n, err := intValue(x, false)
		if err != nil {
			return fmt.Errorf("%s is not a uid: list numeric uids, e.g. [1000, 1001] or \"1000,1001\"", tomlText(x))
		}
		if int64(int(n)) != n {
			return fmt.Errorf("%d is not a uid", n)
		}
		out = append(out, int(n))
		return nil
	}
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			if err := add(e); err != nil {
				return nil, err
			}
		}
	case int64:
		if err := add(x); err != nil {
			return nil, err
		}
	case string:
		for _, e := range strings.FieldsFunc(x, func(r rune) bool { return r == ',' || r == ' ' }) {
			if err := add(e); err != nil {
				return nil, err
			}
		}
	default:
		return nil, fmt.Errorf("%s is not a list of uids: write e.g. [1000, 1001] or \"1000,1001\"", tomlText(v))
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// TOML

// TOML returns c as a TOML document with a comment line per key (what it is,
// its unit), grouped as the help text is. `framebus run --print-config`
// prints it; DecodeConfig (and so --config) reads it back to the same Config.
func (c Config) TOML() []byte {
	var b bytes.Buffer
	b.WriteString("# framebus sidecar configuration (framebus run --print-config).\n")
	b.WriteString("# Precedence: flags > FRAMEBUS_* environment > this file (--config) > preset.\n")
	b.WriteString("# Sizes: 16GiB = 16×2^30, 16GB = 16×10^9. *_ms: milliseconds or a duration (\"500us\").\n")
	for _, g := range keyGroups {
		fmt.Fprintf(&b, "\n# %s\n", g)
		for i := range configKeys {
			f := &configKeys[i]
			if f.group != g {
				continue
			}
			fmt.Fprintf(&b, "\n# %s [%s]\n", f.help, f.arg)
			enc, err := toml.Marshal(map[string]any{"v": f.value(&c)})
			if err != nil { // cannot happen: values are strings, ints, floats, bools, int lists
				panic("sidecar: encoding " + f.key + ": " + err.Error())
			}
			// A dotted key (uplink.nats.servers) is written bare: TOML
			// reads it as the table [uplink.nats], like the file's own.
			b.WriteString(f.key)
			b.Write(bytes.TrimPrefix(enc, []byte("v")))
		}
	}
	return b.Bytes()
}

// DecodeConfig reads a TOML config document: the values of its preset (its
// preset key, else default) overridden by its keys. Fields it leaves zero
// and the derived sizes are left for EnsureDefaults. Unknown keys and values
// of the wrong type are errors (all of them, joined).
func DecodeConfig(data []byte) (Config, error) {
	m, err := decodeConfigTOML(data)
	if err != nil {
		return Config{}, configProblem("config: %v", err)
	}
	name := PresetDefault
	if s, ok := m["preset"].(string); ok {
		name = normalizePreset(s)
	}
	c, _ := presetBase(name)
	errs := applyConfigFile(&c, m, "config", nil)
	return c, errors.Join(errs...)
}

func decodeConfigTOML(data []byte) (map[string]any, error) {
	m := map[string]any{}
	if _, err := toml.Decode(string(data), &m); err != nil {
		return nil, err
	}
	flat := map[string]any{}
	flattenTables("", m, flat)
	return flat, nil
}

// flattenTables turns tables into dotted keys: [uplink.nats] servers = …
// is uplink.nats.servers.
func flattenTables(prefix string, m, out map[string]any) {
	for k, v := range m {
		if t, ok := v.(map[string]any); ok {
			flattenTables(prefix+k+".", t, out)
			continue
		}
		out[prefix+k] = v
	}
}

// applyConfigFile sets the file's keys on c, in table order, and reports unknown
// keys and bad values. sources, if not nil, records where each key came
// from.
func applyConfigFile(c *Config, m map[string]any, origin string, sources map[string]string) []error {
	var errs []error
	var unknown []string
	for k := range m {
		if keyByName(k) == nil {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		var hints []string
		for _, k := range unknown {
			if s := suggestConfigKey(k); s != "" {
				hints = append(hints, fmt.Sprintf("%s → %s?", k, s))
			}
		}
		msg := fmt.Sprintf("%s: unknown keys: %s", origin, strings.Join(unknown, ", "))
		if len(hints) > 0 {
			msg += " (did you mean " + strings.Join(hints, ", ") + ")"
		}
		errs = append(errs, configProblem("%s: remove them or fix their names; framebus run --print-config lists every key", msg))
	}
	for i := range configKeys {
		f := &configKeys[i]
		v, ok := m[f.key]
		if !ok {
			continue
		}
		if err := f.set(c, v); err != nil {
			errs = append(errs, configProblem("%s: %s: %v", origin, f.key, err))
			continue
		}
		if sources != nil {
			sources[f.key] = origin
		}
	}
	return errs
}

// suggestConfigKey returns the known key closest to k, if it is close.
func suggestConfigKey(k string) string {
	k = strings.ToLower(strings.NewReplacer("-", "_", ".", "_").Replace(k))
	best, bestD := "", min(3, len(k)/3+1)+1 // accept distances up to min(3, len/3+1)
	for i := range configKeys {
		if d := configEditDistance(k, configKeys[i].key); d < bestD {
			best, bestD = configKeys[i].key, d
		}
	}
	return best
}

func configEditDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// ---------------------------------------------------------------------------
// LoadConfig

// LoadInfo is what LoadConfig learnt besides the Config.
type LoadInfo struct {
	// FlagSet holds the parsed flags; its Usage prints the grouped help to
	// FlagSet.Output() (stderr unless the caller sets it).
	FlagSet *flag.FlagSet
	// PrintConfig is set by --print-config: print Config.TOML() and exit.
	PrintConfig bool
	// ConfigFile is the file read (--config or FRAMEBUS_CONFIG), or "".
	ConfigFile string
	// Sources says where each key's value came from: "flag --wal-dir",
	// "environment FRAMEBUS_WAL_DIR", "environment WAL_DIR",
	// "config file /etc/framebus.toml", "preset default", or "default"
	// (filled by EnsureDefaults: derived sizes and paths).
	Sources map[string]string
	// Ignored lists FRAMEBUS_* environment variables that name no key
	// (other framebus programs may use them; a typo shows up here). The
	// caller may log them.
	Ignored []string
}

// LoadConfig builds the sidecar's configuration from command-line flags
// (args, without the program and subcommand names) and an environment
// (KEY=value strings, normally os.Environ(); LoadConfig reads no other
// environment, and the default paths come from it and os.Getuid()).
//
// Precedence, highest first: flags; environment variables FRAMEBUS_<KEY>
// (the upper-cased TOML key; for wal_dir also WAL_DIR, below
// FRAMEBUS_WAL_DIR; empty values count as unset); the TOML file named by
// --config or FRAMEBUS_CONFIG; the preset. The preset is taken from the
// highest source that names one (--preset, FRAMEBUS_PRESET, the file's
// preset key, else default); the other sources then override its fields.
// Zero fields are filled by EnsureDefaults, and the result is validated.
//
// The error joins every problem found (each naming its source and key, each
// matching ErrConfig), validation included; the Config is returned as far as
// it could be built, for --print-config. On -h or --help LoadConfig prints
// the grouped help to stderr, as package flag does, and returns an error
// matching flag.ErrHelp: exit 0. LoadInfo is never nil.
func LoadConfig(args []string, environ []string) (Config, *LoadInfo, error) {
	getenv := envLookup(environ)
	info := &LoadInfo{Sources: map[string]string{}}

	fs := flag.NewFlagSet("framebus run", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, not printed
	raw := make(map[string]*rawConfigFlag, len(configKeys))
	for i := range configKeys {
		f := &configKeys[i]
		rf := &rawConfigFlag{isBool: f.kind == kindBool, list: f.kind == kindUIDs}
		raw[f.key] = rf
		fs.Var(rf, f.flag(), f.help)
	}
	configPath := fs.String("config", "", "TOML config file (env "+envConfigFile+")")
	fs.BoolVar(&info.PrintConfig, "print-config", false, "print the effective configuration as TOML and exit")
	fs.Usage = func() { writeConfigUsage(fs.Output(), getenv, os.Getuid()) }
	info.FlagSet = fs
	err := fs.Parse(args)
	fs.SetOutput(configHelpOutput)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.Usage()
			return Config{}, info, err
		}
		return Config{}, info, fmt.Errorf("%w: %v (framebus run -h lists the flags)", ErrConfig, err)
	}
	var errs []error
	if fs.NArg() > 0 {
		errs = append(errs, configProblem("unexpected argument %q: framebus run takes only flags (--name, --preset, ...)", fs.Arg(0)))
	}

	// The file.
	path := getenv(envConfigFile)
	fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "config" {
			path = *configPath
		}
	})
	var file map[string]any
	fileOrigin := ""
	if path != "" {
		info.ConfigFile = path
		fileOrigin = "config file " + path
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, configProblem("%s: %v: fix the path given by --config or %s", fileOrigin, err, envConfigFile))
		} else if file, err = decodeConfigTOML(data); err != nil {
			errs = append(errs, configProblem("%s: %v", fileOrigin, err))
			file = nil
		}
	}

	// The preset, from the highest source that names one.
	name, origin := PresetDefault, "default"
	if s, ok := file["preset"].(string); ok && s != "" {
		name, origin = s, fileOrigin
	}
	if s := getenv("FRAMEBUS_PRESET"); s != "" {
		name, origin = s, "environment FRAMEBUS_PRESET"
	}
	if rf := raw["preset"]; rf.set {
		name, origin = rf.value, "flag --preset"
	}
	c, _ := presetBase(normalizePreset(name))
	for i := range configKeys {
		if !keyIsZero(&configKeys[i], &c) {
			info.Sources[configKeys[i].key] = "preset " + c.Preset
		}
	}
	info.Sources["preset"] = origin

	// File, then environment, then flags.
	if file != nil {
		errs = append(errs, applyConfigFile(&c, file, fileOrigin, info.Sources)...)
	}
	for i := range configKeys {
		f := &configKeys[i]
		envName, v := f.env(), getenv(f.env())
		if v == "" && f.key == "wal_dir" {
			envName, v = compatWALDir, getenv(compatWALDir)
		}
		if v == "" {
			continue
		}
		if err := f.set(&c, v); err != nil {
			errs = append(errs, configProblem("environment %s (%s): %v", envName, f.key, err))
			continue
		}
		info.Sources[f.key] = "environment " + envName
	}
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "FRAMEBUS_") && k != envConfigFile &&
			keyByName(strings.ToLower(strings.TrimPrefix(k, "FRAMEBUS_"))) == nil && !slices.Contains(info.Ignored, k) {
			info.Ignored = append(info.Ignored, k)
		}
	}
	slices.Sort(info.Ignored)
	for i := range configKeys {
		f := &configKeys[i]
		rf := raw[f.key]
		if !rf.set {
			continue
		}
		if err := f.set(&c, rf.value); err != nil {
			errs = append(errs, configProblem("flag --%s (%s): %v", f.flag(), f.key, err))
			continue
		}
		info.Sources[f.key] = "flag --" + f.flag()
	}

	// Defaults, then validation.
	before := c
	c.ensureDefaults(getenv, os.Getuid())
	for i := range configKeys {
		f := &configKeys[i]
		if keyIsZero(f, &before) && !keyIsZero(f, &c) {
			info.Sources[f.key] = "default"
		}
	}
	if err := c.Validate(); err != nil {
		errs = append(errs, err)
	}
	return c, info, errors.Join(errs...)
}

func keyIsZero(f *configKey, c *Config) bool {
	switch p := f.ptr(c).(type) {
	case *string:
		return *p == ""
	case *Duration:
		return p.Duration == 0
	case *int64:
		return *p == 0
	case *int:
		return *p == 0
	case *float64:
		return *p == 0
	case *bool:
		return !*p
	case *[]int:
		return len(*p) == 0
	case *fs.FileMode:
		return *p == 0
	}
	return false
}

// configHelpOutput is where LoadConfig prints the help for -h (tests replace it).
var configHelpOutput io.Writer = os.Stderr

// rawConfigFlag keeps a flag's text; LoadConfig parses it after the lower layers,
// so that every bad value is reported, not only the first.
type rawConfigFlag struct {
	value  string
	set    bool
	isBool bool
	list   bool // repeated flags append ("--allow-uids 1 --allow-uids 2")
}

func (r *rawConfigFlag) String() string {
	if r == nil {
		return ""
	}
	return r.value
}

func (r *rawConfigFlag) Set(s string) error {
	if r.list && r.set && s != "" {
		r.value += "," + s
	} else {
		r.value = s
	}
	r.set = true
	return nil
}

func (r *rawConfigFlag) IsBoolFlag() bool { return r.isBool }

// writeConfigUsage prints the grouped help for `framebus run`.
func writeConfigUsage(w io.Writer, getenv func(string) string, uid int) {
	var b strings.Builder
	b.WriteString(`Usage: framebus run [flags]

Runs the framebus sidecar. Every setting is a flag, an environment variable
FRAMEBUS_<KEY> (e.g. FRAMEBUS_WAL_FLUSH_MS) and a key of the TOML file given
by --config (e.g. wal_flush_ms). Precedence: flag > environment > file >
preset. Zero or empty means the default. Sizes: bytes or 16GiB (×2^30), 16GB
(×10^9); MS: milliseconds or a duration (500us); FRACTION: 0.9 or 90%.
Exit status: 0 after a clean stop, 2 for an invalid configuration, 3 when the
WAL is damaged (see --wal-recover), 1 for any other failure.

`)
	const indent, width = 32, 100
	wrap := func(text string) []string {
		var lines []string
		words := strings.Fields(text)
		for len(words) > 0 {
			n, l := 1, len(words[0])
			for n < len(words) && l+1+len(words[n]) <= width-indent {
				l += 1 + len(words[n])
				n++
			}
			lines = append(lines, strings.Join(words[:n], " "))
			words = words[n:]
		}
		return lines
	}
	more := func(text string) {
		for _, l := range wrap(text) {
			fmt.Fprintf(&b, "%*s%s\n", indent, "", l)
		}
	}
	line := func(name, arg, help string) {
		left := "  --" + name
		if arg != "" {
			left += " " + arg
		}
		if len(left) >= indent {
			b.WriteString(left + "\n")
			more(help)
			return
		}
		lines := wrap(help)
		fmt.Fprintf(&b, "%-*s%s\n", indent, left, lines[0])
		for _, l := range lines[1:] {
			fmt.Fprintf(&b, "%*s%s\n", indent, "", l)
		}
	}
	presets := make([]Config, len(presetNames))
	for i, n := range presetNames {
		presets[i], _ = Preset(n)
	}
	for _, g := range keyGroups {
		fmt.Fprintf(&b, "%s:\n", g)
		if g == groupGeneral {
			line("config", "PATH", "TOML config file (env "+envConfigFile+"); none by default")
			line("print-config", "", "print the effective configuration as TOML and exit")
		}
		for i := range configKeys {
			f := &configKeys[i]
			if f.group != g {
				continue
			}
			arg := f.arg
			if f.kind == kindBool {
				arg = ""
			}
			line(f.flag(), arg, f.help)
			var vs []string
			vary := false
			for j := range presets {
				vs = append(vs, presetNames[j]+" "+f.display(&presets[j]))
				vary = vary || f.display(&presets[j]) != f.display(&presets[0])
			}
			if f.key == "preset" {
				vary = false
			}
			switch {
			case f.key == "run_dir":
				more("default " + defaultRunDir(getenv, uid) + " (" + f.def + ")")
			case f.key == "wal_dir":
				more("default " + defaultWALDir(getenv, uid) + " (" + f.def + ")")
			case vary && f.perPreset():
				more("preset: " + strings.Join(vs, ", "))
			case vary:
				more("default " + f.def + "; preset: " + strings.Join(vs, ", "))
			case f.perPreset():
				more("default " + f.display(&presets[0]) + " (every preset)")
			default:
				more("default " + f.def)
			}
		}
		b.WriteString("\n")
	}
	io.WriteString(w, b.String())
}
