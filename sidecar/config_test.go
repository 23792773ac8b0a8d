package sidecar

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

var cfgUpdateDocs = flag.Bool("update-docs", false, "rewrite the key table of docs/configuration.md")

func cfgMs(n int) Duration { return Duration{time.Duration(n) * time.Millisecond} }

// cfgEnv is an environment whose default paths are fixed whatever the uid.
func cfgEnv(tb testing.TB, extra ...string) []string {
	tb.Helper()
	dir := tb.TempDir()
	return append([]string{
		"RUNTIME_DIRECTORY=" + filepath.Join(dir, "run"),
		"STATE_DIRECTORY=" + filepath.Join(dir, "state"),
	}, extra...)
}

func cfgWriteFile(tb testing.TB, text string) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "framebus.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		tb.Fatal(err)
	}
	return p
}

func cfgLoad(tb testing.TB, args, environ []string) (Config, *LoadInfo) {
	tb.Helper()
	c, info, err := LoadConfig(args, environ)
	if err != nil {
		tb.Fatalf("LoadConfig(%q): %v", args, err)
	}
	return c, info
}

// cfgWantErrs checks that err matches ErrConfig and mentions every substring.
func cfgWantErrs(tb testing.TB, err error, subs ...string) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("no error, want one mentioning %q", subs)
	}
	if !errors.Is(err, ErrConfig) {
		tb.Errorf("error does not match ErrConfig: %v", err)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			tb.Errorf("error does not mention %q:\n%v", s, err)
		}
	}
}

func TestPresetValues(t *testing.T) {
	common := Config{
		Name: "default", ShmDir: "/dev/shm", MetricsAddr: "127.0.0.1:9464",
		MaxBatchSize: 2000, BatchFlush: cfgMs(1), MaxMemoryBytes: 8 << 20,
		MaxRings: 64, LogLevel: "info", LogFormat: "text", WALCompression: "s2",
		HTTPAddr: "127.0.0.1:9465", CursorPolicy: "retain", FileMode: 0o660,
		UplinkStream: "FRAMEBUS", UplinkSubject: "framebus.{gateway}.{producer}.{device}", UplinkMaxInflight: 4096, UplinkPayload: "flatbuffers",
	}
	// header 8 KiB + 64 directory slots (16 KiB) + 8 × (ring + 4 KiB control page)
	shmFor := func(ring int64) int64 { return 8<<10 + 16<<10 + 8*(ring+4<<10) }
	want := map[string]func(c *Config){
		"high-throughput": func(c *Config) {
			c.WALFlush, c.WALMaxBytes, c.BackpressureThreshold = cfgMs(5), 16<<30, 0.95
			c.PauseHi, c.ResumeLo, c.AsyncWriteQueueSize, c.HighPerformanceMode = 0.90, 0.75, 100000, true
			c.RingBytes, c.MaxRingBytes, c.ShmBytes = 32<<20, 128<<20, shmFor(32<<20)
		},
		"low-latency": func(c *Config) {
			c.WALFlush, c.WALMaxBytes, c.BackpressureThreshold = cfgMs(1), 4<<30, 0.85
			c.PauseHi, c.ResumeLo, c.AsyncWriteQueueSize = 0.80, 0.65, 10000
			c.RingBytes, c.MaxRingBytes, c.ShmBytes = 8<<20, 32<<20, shmFor(8<<20)
		},
		"memory-optimized": func(c *Config) {
			c.WALFlush, c.WALMaxBytes, c.BackpressureThreshold = cfgMs(20), 2<<30, 0.80
			c.PauseHi, c.ResumeLo, c.AsyncWriteQueueSize = 0.75, 0.60, 10000
			c.RingBytes, c.MaxRingBytes, c.ShmBytes = 2<<20, 8<<20, shmFor(2<<20)
		},
		"default": func(c *Config) {
			c.WALFlush, c.WALMaxBytes, c.BackpressureThreshold = cfgMs(10), 8<<30, 0.90
			c.PauseHi, c.ResumeLo, c.AsyncWriteQueueSize = 0.85, 0.70, 50000
			c.RingBytes, c.MaxRingBytes, c.ShmBytes = 16<<20, 64<<20, shmFor(16<<20)
		},
	}
	if got := PresetNames(); !slices.Equal(got, []string{"high-throughput", "low-latency", "memory-optimized", "default"}) {
		t.Errorf("PresetNames() = %q", got)
	}
	for _, name := range PresetNames() {
		t.Run(name, func(t *testing.T) {
			got, err := Preset(name)
			if err != nil {
				t.Fatal(err)
			}
			w := common
			w.Preset = name
			want[name](&w)
			w.CursorMaxBytes = 2 * w.WALMaxBytes
			if !reflect.DeepEqual(got, w) {
				t.Errorf("Preset(%q) =\n%+v\nwant\n%+v", name, got, w)
			}
			// Only the environment-dependent paths are missing; with them
			// the preset is valid as it is.
			got.RunDir, got.WALDir = "/run/framebus", "/var/lib/framebus"
			if err := got.Validate(); err != nil {
				t.Errorf("preset does not validate: %v", err)
			}
			// EnsureDefaults on a config naming only the preset yields the
			// same values (except HighPerformanceMode, which it never sets).
			var z Config
			z.Preset = name
			z.ensureDefaults(envLookup(nil), 1000)
			z.RunDir, z.WALDir, z.HighPerformanceMode = got.RunDir, got.WALDir, got.HighPerformanceMode
			if !reflect.DeepEqual(z, got) {
				t.Errorf("EnsureDefaults with Preset %q =\n%+v\nwant\n%+v", name, z, got)
			}
		})
	}
	if c, err := Preset(" High_Throughput "); err != nil || c.Preset != "high-throughput" {
		t.Errorf("Preset with another spelling: %+v, %v", c.Preset, err)
	}
	if _, err := Preset("turbo"); err == nil || !strings.Contains(err.Error(), "high-throughput, low-latency, memory-optimized, default") {
		t.Errorf("Preset(turbo) error = %v, want the list of presets", err)
	}
	// The sizes are derived from ring_bytes, so the default preset's
	// segment is 128 MiB + 56 KiB.
	if got := DeriveShmBytes(64, 16<<20); got != 128<<20+56<<10 {
		t.Errorf("DeriveShmBytes(64, 16MiB) = %d", got)
	}
}

func TestConfigZeroValueAndEnsureDefaults(t *testing.T) {
	var c Config
	c.ensureDefaults(envLookup([]string{"XDG_RUNTIME_DIR=/run/user/1000", "HOME=/home/u"}), 1000)
	want, _ := Preset("default")
	want.RunDir, want.WALDir = "/run/user/1000/framebus", "/home/u/.local/state/framebus"
	if !reflect.DeepEqual(c, want) {
		t.Errorf("zero Config after EnsureDefaults =\n%+v\nwant\n%+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}

	// Set fields are kept, derived ones follow the set ones, and an
	// explicit false high_performance_mode stays false.
	c = Config{Preset: "high-throughput", RingBytes: 1 << 20, WALFlush: cfgMs(3), ResumeLo: 0.5}
	c.EnsureDefaults()
	if c.RingBytes != 1<<20 || c.WALFlush != cfgMs(3) || c.ResumeLo != 0.5 || c.PauseHi != 0.90 || c.HighPerformanceMode {
		t.Errorf("EnsureDefaults changed set fields or missed zero ones: %+v", c)
	}
	if c.MaxRingBytes != 4<<20 || c.ShmBytes != DeriveShmBytes(64, 1<<20) {
		t.Errorf("derived sizes: max_ring_bytes %d shm_bytes %d", c.MaxRingBytes, c.ShmBytes)
	}
	again := c
	again.EnsureDefaults()
	if !reflect.DeepEqual(again, c) {
		t.Errorf("EnsureDefaults is not idempotent")
	}

	// An unknown preset falls back to the default's values and is reported.
	c = Config{Preset: "turbo"}
	c.EnsureDefaults()
	if c.WALFlush != cfgMs(10) {
		t.Errorf("unknown preset: wal_flush_ms = %v, want the default preset's 10ms", c.WALFlush)
	}
	cfgWantErrs(t, c.Validate(), `preset ("turbo") is unknown: choose one of high-throughput, low-latency, memory-optimized, default`)
}

// TestConfigFieldsCoverStruct: every Config field has exactly one key.
func TestConfigFieldsCoverStruct(t *testing.T) {
	var c Config
	rv := reflect.ValueOf(&c).Elem()
	seen := map[uintptr]string{}
	for i := range configKeys {
		p := reflect.ValueOf(configKeys[i].ptr(&c)).Pointer()
		if k, dup := seen[p]; dup {
			t.Errorf("keys %s and %s share a field", k, configKeys[i].key)
		}
		seen[p] = configKeys[i].key
		if !slices.Contains(keyGroups, configKeys[i].group) {
			t.Errorf("key %s: group %q is not in groups", configKeys[i].key, configKeys[i].group)
		}
	}
	for i := 0; i < rv.NumField(); i++ {
		if _, ok := seen[rv.Field(i).Addr().Pointer()]; !ok {
			t.Errorf("Config.%s has no key in fields", rv.Type().Field(i).Name)
		}
	}
	for _, k := range []string{"wal_flush_ms", "wal_max_bytes", "pause_hi", "resume_lo", "backpressure_threshold",
		"async_write_queue_size", "high_performance_mode", "max_batch_size", "max_memory_bytes"} {
		if keyByName(k) == nil {
			t.Errorf("the seed's key %s is missing", k)
		}
	}
}

func TestConfigPrecedence(t *testing.T) {
	file := cfgWriteFile(t, `
preset = "low-latency"
wal_flush_ms = 7
pause_hi = 0.5
resume_lo = 0.25
wal_max_bytes = "3GiB"
log_level = "debug"
name = "file"
`)
	env := cfgEnv(t,
		"FRAMEBUS_CONFIG="+file,
		"FRAMEBUS_PRESET=memory-optimized",
		"FRAMEBUS_WAL_FLUSH_MS=8",
		"FRAMEBUS_PAUSE_HI=60%",
		"FRAMEBUS_NAME=env",
		"FRAMEBUS_MAX_BATCH_SIZE=", // empty: unset
	)
	args := []string{"--preset", "high-throughput", "--wal-flush-ms", "9", "--name=flag"}

	// All four layers: flags win.
	c, info := cfgLoad(t, args, env)
	if c.Preset != "high-throughput" || c.WALFlush != cfgMs(9) || c.Name != "flag" {
		t.Errorf("flags: preset %q wal_flush_ms %v name %q", c.Preset, c.WALFlush, c.Name)
	}
	if c.PauseHi != 0.6 { // env beats file
		t.Errorf("pause_hi = %v, want 0.6 from the environment", c.PauseHi)
	}
	if c.ResumeLo != 0.25 || c.WALMaxBytes != 3<<30 || c.LogLevel != "debug" { // file beats preset
		t.Errorf("file keys: resume_lo %v wal_max_bytes %d log_level %q", c.ResumeLo, c.WALMaxBytes, c.LogLevel)
	}
	if c.BackpressureThreshold != 0.95 || c.RingBytes != 32<<20 || c.AsyncWriteQueueSize != 100000 || !c.HighPerformanceMode {
		t.Errorf("preset keys from the flag's high-throughput: %+v", c)
	}
	if c.MaxBatchSize != 2000 {
		t.Errorf("an empty FRAMEBUS_MAX_BATCH_SIZE should count as unset; got %d", c.MaxBatchSize)
	}
	for key, src := range map[string]string{
		"preset": "flag --preset", "wal_flush_ms": "flag --wal-flush-ms", "pause_hi": "environment FRAMEBUS_PAUSE_HI",
		"resume_lo": "config file " + file, "ring_bytes": "preset high-throughput", "run_dir": "default", "shm_bytes": "default",
	} {
		if info.Sources[key] != src {
			t.Errorf("Sources[%s] = %q, want %q", key, info.Sources[key], src)
		}
	}
	if info.ConfigFile != file {
		t.Errorf("ConfigFile = %q", info.ConfigFile)
	}

	// Without flags: the environment wins, its preset too.
	c, _ = cfgLoad(t, nil, env)
	if c.Preset != "memory-optimized" || c.WALFlush != cfgMs(8) || c.Name != "env" || c.RingBytes != 2<<20 || c.PauseHi != 0.6 {
		t.Errorf("env layer: preset %q wal_flush_ms %v name %q ring_bytes %d pause_hi %v", c.Preset, c.WALFlush, c.Name, c.RingBytes, c.PauseHi)
	}

	// Without environment: the file, its preset too.
	c, _ = cfgLoad(t, []string{"--config", file}, cfgEnv(t))
	if c.Preset != "low-latency" || c.WALFlush != cfgMs(7) || c.Name != "file" || c.PauseHi != 0.5 || c.RingBytes != 8<<20 || c.BackpressureThreshold != 0.85 {
		t.Errorf("file layer: %+v", c)
	}

	// Nothing: the default preset.
	c, _ = cfgLoad(t, nil, cfgEnv(t))
	want, _ := Preset("default")
	want.RunDir, want.WALDir = c.RunDir, c.WALDir
	if !reflect.DeepEqual(c, want) {
		t.Errorf("no configuration =\n%+v\nwant\n%+v", c, want)
	}

	// --config "" turns off FRAMEBUS_CONFIG.
	c, info = cfgLoad(t, []string{"--config="}, cfgEnv(t, "FRAMEBUS_CONFIG="+file))
	if info.ConfigFile != "" || c.Name != "default" {
		t.Errorf("--config= still read %q", info.ConfigFile)
	}

	// A flag's ring_bytes re-derives the sizes a preset would have derived.
	c, _ = cfgLoad(t, []string{"--ring-bytes", "1MiB"}, cfgEnv(t))
	if c.MaxRingBytes != 4<<20 || c.ShmBytes != DeriveShmBytes(64, 1<<20) {
		t.Errorf("--ring-bytes 1MiB: max_ring_bytes %d shm_bytes %d", c.MaxRingBytes, c.ShmBytes)
	}

	// A flag can turn high_performance_mode off under its preset.
	c, _ = cfgLoad(t, []string{"--preset=high-throughput", "--high-performance-mode=false"}, cfgEnv(t))
	if c.HighPerformanceMode {
		t.Errorf("--high-performance-mode=false did not turn it off")
	}
	c, _ = cfgLoad(t, []string{"--high-performance-mode"}, cfgEnv(t))
	if !c.HighPerformanceMode {
		t.Errorf("--high-performance-mode did not turn it on")
	}

	// Lists: repeated flags append; the flag layer replaces the others.
	c, _ = cfgLoad(t, []string{"--allow-uids", "1000,1001", "--allow-uids=1002"}, cfgEnv(t, "FRAMEBUS_ALLOW_UIDS=5"))
	if !slices.Equal(c.AllowUIDs, []int{1000, 1001, 1002}) {
		t.Errorf("allow_uids = %v", c.AllowUIDs)
	}
}

func TestConfigWALDirCompat(t *testing.T) {
	file := cfgWriteFile(t, `wal_dir = "/from/file"`)
	for _, tc := range []struct {
		args []string
		env  []string
		want string
		src  string
	}{
		{nil, []string{"WAL_DIR=/old"}, "/old", "environment WAL_DIR"},
		{nil, []string{"WAL_DIR=/old", "FRAMEBUS_WAL_DIR=/new"}, "/new", "environment FRAMEBUS_WAL_DIR"},
		{nil, []string{"WAL_DIR=/old", "FRAMEBUS_WAL_DIR="}, "/old", "environment WAL_DIR"},
		{[]string{"--wal-dir", "/flag"}, []string{"WAL_DIR=/old", "FRAMEBUS_WAL_DIR=/new"}, "/flag", "flag --wal-dir"},
		{[]string{"--config", file}, []string{"WAL_DIR=/old"}, "/old", "environment WAL_DIR"},
		{[]string{"--config", file}, nil, "/from/file", "config file " + file},
	} {
		c, info := cfgLoad(t, tc.args, cfgEnv(t, tc.env...))
		if c.WALDir != tc.want || info.Sources["wal_dir"] != tc.src {
			t.Errorf("args %q env %q: wal_dir %q from %q, want %q from %q", tc.args, tc.env, c.WALDir, info.Sources["wal_dir"], tc.want, tc.src)
		}
		if c.WALPath() != filepath.Join(tc.want, "default") {
			t.Errorf("WALPath() = %q", c.WALPath())
		}
	}
}

func TestConfigUnknownKeys(t *testing.T) {
	file := cfgWriteFile(t, "wal_flush = 5\ncolour = \"blue\"\nwal_flush_ms = 4\n[wal]\nmax_bytes = 1\n")
	c, _, err := LoadConfig([]string{"--config", file}, cfgEnv(t))
	cfgWantErrs(t, err, "config file "+file, "unknown keys: colour, wal.max_bytes, wal_flush", "wal_flush → wal_flush_ms?", "wal.max_bytes → wal_max_bytes?")
	if c.WALFlush != cfgMs(4) {
		t.Errorf("known keys should still apply: wal_flush_ms = %v", c.WALFlush)
	}
	_, err = DecodeConfig([]byte("pause_high = 0.9\n"))
	cfgWantErrs(t, err, "unknown keys: pause_high", "pause_high → pause_hi?")

	// Syntax errors name the file and the line.
	_, _, err = LoadConfig([]string{"--config", cfgWriteFile(t, "a = \n")}, cfgEnv(t))
	cfgWantErrs(t, err, "line 1")
	// A missing file says how to fix it.
	_, _, err = LoadConfig(nil, cfgEnv(t, "FRAMEBUS_CONFIG=/nonexistent/framebus.toml"))
	cfgWantErrs(t, err, "/nonexistent/framebus.toml", "FRAMEBUS_CONFIG")
}

func TestConfigBadValuesNameSourceAndKey(t *testing.T) {
	file := cfgWriteFile(t, "wal_flush_ms = true\nring_bytes = \"lots\"\nallow_uids = [\"bob\"]\nname = 5\n")
	_, _, err := LoadConfig(
		[]string{"--config", file, "--pause-hi", "high", "--max-rings=many"},
		cfgEnv(t, "FRAMEBUS_WAL_MAX_BYTES=16G", "FRAMEBUS_HIGH_PERFORMANCE_MODE=maybe", "FRAMEBUS_WAL_MAX_AGE=3600"))
	cfgWantErrs(t, err,
		"config file "+file+": wal_flush_ms: true is not a duration",
		"config file "+file+`: ring_bytes: "lots" is not a byte size`,
		"config file "+file+`: allow_uids: "bob" is not a uid`,
		"config file "+file+": name: 5 is not a string",
		`flag --pause-hi (pause_hi): "high" is not a fraction`,
		`flag --max-rings (max_rings): "many" is not a whole number`,
		`environment FRAMEBUS_WAL_MAX_BYTES (wal_max_bytes): "16G" is ambiguous: write 16GiB (×2^30) or 16GB (×10^9)`,
		`environment FRAMEBUS_HIGH_PERFORMANCE_MODE (high_performance_mode): "maybe" is not a boolean`,
		`environment FRAMEBUS_WAL_MAX_AGE (wal_max_age): 3600 has no unit`,
	)

	_, _, err = LoadConfig([]string{"--no-such-flag"}, cfgEnv(t))
	cfgWantErrs(t, err, "flag provided but not defined: -no-such-flag", "framebus run -h")
	_, _, err = LoadConfig([]string{"stray"}, cfgEnv(t))
	cfgWantErrs(t, err, `unexpected argument "stray"`)
}

func TestConfigValidateReportsEverything(t *testing.T) {
	c, _ := Preset("default")
	c.RunDir, c.WALDir = "/run/framebus", "/var/lib/framebus"
	c.Name = "bad/name"
	c.Preset = "turbo"
	c.PauseHi, c.ResumeLo = 0.70, 0.75
	c.BackpressureThreshold = 95
	c.WALFlush = cfgMs(-1)
	c.WALMaxBytes = 1000
	c.RingBytes = 3 << 20
	c.MaxRings = 0
	c.AsyncWriteQueueSize = 10
	c.MetricsAddr = "localhost"
	c.LogLevel = "verbose"
	c.LogFormat = "xml"
	c.AllowUIDs = []int{-1}
	c.Group = "framebus-no-such-group-7f3a"
	c.ShmDir = ""
	err := c.Validate()
	cfgWantErrs(t, err,
		`name ("bad/name") may only hold letters, digits`,
		`preset ("turbo") is unknown`,
		`pause_hi (0.70) must be greater than resume_lo (0.75)`,
		`backpressure_threshold (95.00) must be a fraction in (0, 1]`,
		`wal_flush_ms (-1ms) must be more than 0`,
		`wal_max_bytes (1kB) must be at least 1MiB`,
		`ring_bytes (3MiB) must be a power of two`,
		`max_rings (0) must be in 1..4096`,
		`async_write_queue_size (10) must be at least max_batch_size (2000)`,
		`metrics_addr ("localhost") is not host:port`,
		`log_level ("verbose") is unknown`,
		`log_format ("xml") is unknown`,
		`allow_uids has -1`,
		`group ("framebus-no-such-group-7f3a") does not exist`,
		`shm_dir is empty`,
	)
	if n := len(strings.Split(err.Error(), "\n")); n != 15 {
		t.Errorf("%d problems reported, want 15:\n%v", n, err)
	}

	// Cross-key rules.
	c, _ = Preset("default")
	c.RunDir, c.WALDir = "/run/"+strings.Repeat("x", 100), "/w"
	c.MaxRingBytes = 1 << 30
	c.ResumeLo, c.BackpressureThreshold = 0.8, 0.75
	cfgWantErrs(t, c.Validate(),
		"a Unix socket allows: choose a shorter run_dir or name",
		"shm_bytes (134275072) is too small for the header, 64 directory slots and one ring of max_ring_bytes (1GiB)",
		"backpressure_threshold (0.75) must be greater than resume_lo (0.80)",
	)
	c, _ = Preset("default")
	c.RunDir, c.WALDir = "/r", "/w"
	c.MaxRingBytes = 8 << 20
	c.MetricsAddr = MetricsOff
	c.Group = "0"
	cfgWantErrs(t, c.Validate(), "max_ring_bytes (8MiB) must be at least ring_bytes (16MiB)")

	// LoadConfig reports validation problems along with parse problems.
	_, _, err = LoadConfig([]string{"--pause-hi", "0.70", "--resume-lo=0.75", "--wal-flush-ms", "x"}, cfgEnv(t))
	cfgWantErrs(t, err, "pause_hi (0.70) must be greater than resume_lo (0.75)", `flag --wal-flush-ms (wal_flush_ms): "x" is not a duration`)
}

func TestConfigTOMLRoundTrip(t *testing.T) {
	var cases []Config
	for _, name := range PresetNames() {
		c, _ := Preset(name)
		c.RunDir, c.WALDir = "/run/framebus", "/var/lib/framebus"
		cases = append(cases, c)
	}
	odd, _ := Preset("high-throughput")
	odd.HighPerformanceMode = false // differs from its preset
	odd.Name = "line-1.a_b"
	odd.RunDir, odd.WALDir, odd.ShmDir = `/tmp/with "quotes" and \ back`, "/tmp/é", "/tmp/shm"
	odd.WALFlush, odd.BatchFlush, odd.WALMaxAge = Duration{500 * time.Microsecond}, Duration{1500 * time.Microsecond}, Duration{36 * time.Hour}
	odd.WALMaxBytes, odd.MaxMemoryBytes, odd.ShmBytes = 16e9, 1234567, 0
	odd.PauseHi, odd.ResumeLo, odd.BackpressureThreshold = 1, 0, 0.333
	odd.AllowUIDs, odd.Group, odd.MetricsAddr = []int{0, 1000, 4294967294}, "wheel", MetricsOff
	cases = append(cases, odd, Config{})

	for _, c := range cases {
		t.Run(c.Preset, func(t *testing.T) {
			text := c.TOML()
			got, err := DecodeConfig(text)
			if err != nil {
				t.Fatalf("DecodeConfig: %v\n%s", err, text)
			}
			if !reflect.DeepEqual(got, c) {
				t.Errorf("round trip =\n%+v\nwant\n%+v\n%s", got, c, text)
			}
			// One comment line per key.
			for i := range configKeys {
				f := &configKeys[i]
				if !strings.Contains(string(text), "# "+f.help+" ["+f.arg+"]\n"+f.key+" = ") {
					t.Errorf("TOML() lacks the commented key %s:\n%s", f.key, text)
				}
			}
			// The same through LoadConfig (--config), what --print-config
			// output is for; EnsureDefaults has nothing left to fill for the
			// presets.
			if c.Preset != "" && c.ShmBytes != 0 {
				loaded, _ := cfgLoad(t, []string{"--config", cfgWriteFile(t, string(text))}, cfgEnv(t))
				if !reflect.DeepEqual(loaded, c) {
					t.Errorf("LoadConfig --config of TOML() =\n%+v\nwant\n%+v", loaded, c)
				}
			}
		})
	}
	want := "# group-commit interval, ms (or a duration: \"500us\"); bounds publish-to-durable latency [MS]\nwal_flush_ms = 10\n"
	if d, _ := Preset("default"); !strings.Contains(string(d.TOML()), want) {
		t.Errorf("TOML() of default lacks %q:\n%s", want, d.TOML())
	}
}

func TestConfigDurations(t *testing.T) {
	for _, tc := range []struct {
		toml string
		env  string
		want time.Duration
	}{
		{"5", "5", 5 * time.Millisecond},
		{`"5ms"`, "5ms", 5 * time.Millisecond},
		{`"500us"`, "500µs", 500 * time.Microsecond},
		{"2.5", "2.5ms", 2500 * time.Microsecond},
		{`"2s"`, "2s", 2 * time.Second},
		{"1_000", "1_000", time.Second},
	} {
		c, err := DecodeConfig([]byte("wal_flush_ms = " + tc.toml))
		if err != nil || c.WALFlush.Duration != tc.want {
			t.Errorf("wal_flush_ms = %s: %v, %v; want %v", tc.toml, c.WALFlush, err, tc.want)
		}
		c, _ = cfgLoad(t, nil, cfgEnv(t, "FRAMEBUS_WAL_FLUSH_MS="+tc.env))
		if c.WALFlush.Duration != tc.want {
			t.Errorf("FRAMEBUS_WAL_FLUSH_MS=%s: %v, want %v", tc.env, c.WALFlush, tc.want)
		}
	}
	if c, _ := cfgLoad(t, nil, cfgEnv(t, "FRAMEBUS_BATCH_FLUSH_MS=500us")); c.BatchFlush.Duration != 500*time.Microsecond {
		t.Errorf("FRAMEBUS_BATCH_FLUSH_MS=500us: %v", c.BatchFlush)
	}
	for _, bad := range []string{`"soon"`, "true", `"5 parsecs"`} {
		if _, err := DecodeConfig([]byte("wal_flush_ms = " + bad)); err == nil {
			t.Errorf("wal_flush_ms = %s: no error", bad)
		}
	}
	for text, want := range map[string]time.Duration{`"7d"`: 7 * 24 * time.Hour, `"72h"`: 72 * time.Hour, "0": 0, `"0"`: 0, `"90m"`: 90 * time.Minute} {
		c, err := DecodeConfig([]byte("wal_max_age = " + text))
		if err != nil || c.WALMaxAge.Duration != want {
			t.Errorf("wal_max_age = %s: %v, %v; want %v", text, c.WALMaxAge, err, want)
		}
	}
	_, err := DecodeConfig([]byte("wal_max_age = 3600"))
	cfgWantErrs(t, err, `wal_max_age: 3600 has no unit: write a duration such as "72h" or "7d"`)

	// Duration as a flag.TextVar / encoding.TextUnmarshaler.
	var d Duration
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.TextVar(&d, "d", Duration{}, "")
	if err := fs.Parse([]string{"-d", "250"}); err != nil || d.Duration != 250*time.Millisecond {
		t.Errorf("TextVar: %v, %v", d, err)
	}
	if s := (Duration{48 * time.Hour}).String(); s != "2d" {
		t.Errorf("String() = %q", s)
	}
}

func TestConfigByteSizes(t *testing.T) {
	for in, want := range map[string]int64{
		"16GB": 16e9, "16 GB": 16e9, "4GiB": 4 << 30, "4gib": 4 << 30, "4Gi": 4 << 30, "8MiB": 8 << 20,
		"8MB": 8e6, "1kB": 1000, "1KiB": 1024, "1TiB": 1 << 40, "2TB": 2e12, "1048576": 1 << 20,
		"1_048_576": 1 << 20, "512B": 512, "0": 0,
	} {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"16G":        `"16G" is ambiguous: write 16GiB (×2^30) or 16GB (×10^9)`,
		"4k":         `"4k" is ambiguous: write 4KiB (×2^10) or 4KB (×10^3)`,
		"1.5GiB":     `"1.5GiB" is not a whole number: use a smaller unit`,
		"lots":       "is not a byte size",
		"3 parsec":   `unknown unit "parsec"`,
		"9000000TiB": "too large",
	} {
		if _, err := ParseBytes(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseBytes(%q) error = %v, want %q", in, err, msg)
		}
	}
	// Integers, strings and integral floats in TOML; the output uses units.
	c, err := DecodeConfig([]byte("wal_max_bytes = \"16GB\"\nmax_memory_bytes = 8388608\nring_bytes = \"4MiB\"\nshm_bytes = 1e9\n"))
	if err != nil || c.WALMaxBytes != 16e9 || c.MaxMemoryBytes != 8<<20 || c.RingBytes != 4<<20 || c.ShmBytes != 1e9 {
		t.Errorf("byte keys: %d %d %d %d, %v", c.WALMaxBytes, c.MaxMemoryBytes, c.RingBytes, c.ShmBytes, err)
	}
	text := string(c.TOML())
	for _, want := range []string{`wal_max_bytes = "16GB"`, `max_memory_bytes = "8MiB"`, `ring_bytes = "4MiB"`, `shm_bytes = "1GB"`} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("TOML() lacks %s", want)
		}
	}
	c, _ = cfgLoad(t, []string{"--wal-max-bytes", "4GiB"}, cfgEnv(t, "FRAMEBUS_MAX_MEMORY_BYTES=16777216"))
	if c.WALMaxBytes != 4<<30 || c.MaxMemoryBytes != 16<<20 {
		t.Errorf("flag/env byte sizes: %d %d", c.WALMaxBytes, c.MaxMemoryBytes)
	}
}

func TestConfigFractions(t *testing.T) {
	c, _ := cfgLoad(t, []string{"--backpressure-threshold", "80%", "--pause-hi=0.7"}, cfgEnv(t, "FRAMEBUS_RESUME_LO=0.5"))
	if c.BackpressureThreshold != 0.8 || c.PauseHi != 0.7 || c.ResumeLo != 0.5 {
		t.Errorf("fractions: %v %v %v", c.BackpressureThreshold, c.PauseHi, c.ResumeLo)
	}
	c, err := DecodeConfig([]byte("pause_hi = 1\nresume_lo = \"50 %\"\n"))
	if err != nil || c.PauseHi != 1 || c.ResumeLo != 0.5 {
		t.Errorf("TOML fractions: %v %v %v", c.PauseHi, c.ResumeLo, err)
	}
	_, err = DecodeConfig([]byte(`pause_hi = "nan"`))
	cfgWantErrs(t, err, "is not a fraction")
}

func TestConfigDerivedPaths(t *testing.T) {
	for _, tc := range []struct {
		env      []string
		uid      int
		run, wal string
	}{
		{nil, 0, "/run/framebus", "/var/lib/framebus"},
		{nil, 1000, "/tmp/framebus-1000", "/var/tmp/framebus-1000"},
		{[]string{"HOME=/home/u"}, 1000, "/tmp/framebus-1000", "/home/u/.local/state/framebus"},
		{[]string{"HOME=/home/u", "XDG_RUNTIME_DIR=/run/user/1000", "XDG_STATE_HOME=/home/u/state"}, 1000,
			"/run/user/1000/framebus", "/home/u/state/framebus"},
		{[]string{"XDG_RUNTIME_DIR=/run/user/0", "XDG_STATE_HOME=/root/state"}, 0, "/run/user/0/framebus", "/var/lib/framebus"},
		{[]string{"XDG_RUNTIME_DIR=relative", "XDG_STATE_HOME=relative", "HOME=/"}, 1000, "/tmp/framebus-1000", "/var/tmp/framebus-1000"},
		{[]string{"RUNTIME_DIRECTORY=/run/framebus:/run/other", "STATE_DIRECTORY=/var/lib/fb", "XDG_RUNTIME_DIR=/run/user/1000"}, 1000,
			"/run/framebus", "/var/lib/fb"},
		{[]string{"XDG_RUNTIME_DIR=/a", "XDG_RUNTIME_DIR=/b"}, 1000, "/b/framebus", "/var/tmp/framebus-1000"},
	} {
		if got := DefaultRunDir(tc.env, tc.uid); got != tc.run {
			t.Errorf("DefaultRunDir(%q, %d) = %q, want %q", tc.env, tc.uid, got, tc.run)
		}
		if got := DefaultWALDir(tc.env, tc.uid); got != tc.wal {
			t.Errorf("DefaultWALDir(%q, %d) = %q, want %q", tc.env, tc.uid, got, tc.wal)
		}
		// LoadConfig takes them from its environ argument and the real uid.
		if tc.uid == os.Getuid() {
			c, _ := cfgLoad(t, []string{"--name", "bus1"}, tc.env)
			if c.RunDir != tc.run || c.WALDir != tc.wal {
				t.Errorf("LoadConfig(env %q): run_dir %q wal_dir %q", tc.env, c.RunDir, c.WALDir)
			}
			if c.SocketPath() != tc.run+"/bus1.sock" || c.WALPath() != tc.wal+"/bus1" || c.SegmentPath() != "/dev/shm/framebus-bus1" {
				t.Errorf("paths: %s %s %s", c.SocketPath(), c.WALPath(), c.SegmentPath())
			}
		}
	}
	// With the XDG variables set and unset, through LoadConfig.
	uid := os.Getuid()
	c, _ := cfgLoad(t, nil, []string{"XDG_RUNTIME_DIR=/run/user/42", "XDG_STATE_HOME=/s", "HOME=/h"})
	if uid != 0 && (c.RunDir != "/run/user/42/framebus" || c.WALDir != "/s/framebus") {
		t.Errorf("XDG set: %q %q", c.RunDir, c.WALDir)
	}
	if uid == 0 && (c.RunDir != "/run/user/42/framebus" || c.WALDir != "/var/lib/framebus") {
		t.Errorf("XDG set, root: %q %q", c.RunDir, c.WALDir)
	}
	c, _ = cfgLoad(t, nil, nil)
	if c.RunDir != DefaultRunDir(nil, uid) || c.WALDir != DefaultWALDir(nil, uid) {
		t.Errorf("XDG unset: %q %q", c.RunDir, c.WALDir)
	}
	c, _ = cfgLoad(t, []string{"--shm-dir", "/x", "--run-dir", "/r", "--wal-dir", "/w", "--name", "n"}, nil)
	if c.SegmentPath() != "/x/framebus-n" || c.SocketPath() != "/r/n.sock" || c.WALPath() != "/w/n" {
		t.Errorf("paths: %s %s %s", c.SegmentPath(), c.SocketPath(), c.WALPath())
	}
}

func TestConfigIgnoredEnvironment(t *testing.T) {
	_, info := cfgLoad(t, nil, cfgEnv(t, "FRAMEBUS_WAL_FLUSH=5", "FRAMEBUS_TEST_ROLE=x", "FRAMEBUS_NAME=a", "FRAMEBUS_CONFIG="))
	if !slices.Equal(info.Ignored, []string{"FRAMEBUS_TEST_ROLE", "FRAMEBUS_WAL_FLUSH"}) {
		t.Errorf("Ignored = %q", info.Ignored)
	}
}

func TestConfigUsage(t *testing.T) {
	var b strings.Builder
	configHelpOutput = &b
	t.Cleanup(func() { configHelpOutput = os.Stderr })
	_, info, err := LoadConfig([]string{"-h"}, []string{"XDG_RUNTIME_DIR=/run/user/7"})
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	help := b.String()
	var again strings.Builder
	info.FlagSet.SetOutput(&again)
	info.FlagSet.Usage()
	if again.String() != help {
		t.Errorf("FlagSet.Usage() prints another text than -h")
	}
	flat := strings.Join(strings.Fields(help), " ")
	for _, want := range []string{
		"Usage: framebus run [flags]",
		"General:\n  --config PATH",
		"WAL:\n  --wal-flush-ms MS ",
		"Shared memory:\n  --ring-bytes BYTES",
		"  --backpressure-threshold FRACTION\n",
		"  --high-performance-mode  ",
		"  --print-config  ",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q:\n%s", want, help)
		}
	}
	for _, want := range []string{
		"preset: high-throughput 5ms, low-latency 1ms, memory-optimized 20ms, default 10ms",
		"preset: high-throughput 16GiB, low-latency 4GiB, memory-optimized 2GiB, default 8GiB",
		"--max-batch-size FRAMES frames the drain loop hands to the WAL writer at most at once default 2000 (every preset)",
		"default /run/user/7/framebus",
		`default "127.0.0.1:9464"`,
		"default 4 × ring_bytes; preset: high-throughput 128MiB",
	} {
		if !strings.Contains(flat, want) {
			t.Errorf("help lacks %q:\n%s", want, help)
		}
	}
	for _, l := range strings.Split(help, "\n") {
		if len([]rune(l)) > 100 {
			t.Errorf("help line longer than 100 columns: %q", l)
		}
	}
	for i := range configKeys {
		if !strings.Contains(help, "--"+configKeys[i].flag()+" ") && !strings.Contains(help, "--"+configKeys[i].flag()+"\n") {
			t.Errorf("help lacks --%s", configKeys[i].flag())
		}
	}
	if _, info, _ := LoadConfig([]string{"--print-config"}, nil); !info.PrintConfig {
		t.Errorf("--print-config not seen")
	}
}

// ---------------------------------------------------------------------------
// docs/configuration.md: its key table is rendered from the fields table.
// Run `go test ./sidecar -run TestConfigDocs -update-docs` after changing a key.

const (
	cfgDocsPath  = "../docs/configuration.md"
	cfgDocsBegin = "<!-- BEGIN KEYS: generated from sidecar/config.go by `go test ./sidecar -run TestConfigDocs -update-docs` -->\n"
	cfgDocsEnd   = "<!-- END KEYS -->\n"
)

func TestConfigDocs(t *testing.T) {
	data, err := os.ReadFile(cfgDocsPath)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	i, j := strings.Index(doc, cfgDocsBegin), strings.Index(doc, cfgDocsEnd)
	if i < 0 || j < i {
		t.Fatalf("%s lacks the markers %q and %q", cfgDocsPath, cfgDocsBegin, cfgDocsEnd)
	}
	table := cfgDocsTable()
	if got := doc[i+len(cfgDocsBegin) : j]; got != table {
		if *cfgUpdateDocs {
			doc = doc[:i+len(cfgDocsBegin)] + table + doc[j:]
			if err := os.WriteFile(cfgDocsPath, []byte(doc), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("%s's key table is out of date; run go test ./sidecar -run TestConfigDocs -update-docs. Want:\n%s", cfgDocsPath, table)
	}
}

func cfgDocsTable() string {
	var b strings.Builder
	md := func(s string) string {
		return strings.NewReplacer("|", `\|`, "<", "&lt;", ">", "&gt;").Replace(s)
	}
	presets := make([]Config, len(presetNames))
	for i, n := range presetNames {
		presets[i], _ = Preset(n)
	}
	b.WriteString("| TOML key | flag | environment | type (unit) | default | high-throughput | low-latency | memory-optimized | meaning |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	for _, g := range keyGroups {
		fmt.Fprintf(&b, "| **%s** | | | | | | | | |\n", g)
		for k := range configKeys {
			f := &configKeys[k]
			if f.group != g {
				continue
			}
			env := "`" + f.env() + "`"
			if f.key == "wal_dir" {
				env += ", `WAL_DIR`"
			}
			vary := false
			for p := range presets {
				vary = vary || f.display(&presets[p]) != f.display(&presets[0])
			}
			if f.key == "preset" {
				vary = false
			}
			def := md(f.def)
			switch {
			case strings.HasPrefix(f.def, `"`) || f.def == "64":
				def = "`" + f.def + "`"
			case f.perPreset():
				def = "`" + f.display(&presets[3]) + "`"
			case vary:
				def += ": `" + f.display(&presets[3]) + "`"
			}
			var vals []string
			for p := 0; p < 3; p++ {
				switch {
				case f.key == "run_dir" || f.key == "wal_dir":
					vals = append(vals, "—")
				case vary:
					vals = append(vals, "`"+f.display(&presets[p])+"`")
				default:
					vals = append(vals, "=")
				}
			}
			fmt.Fprintf(&b, "| `%s` | `--%s` | %s | %s | %s | %s | %s |\n",
				f.key, f.flag(), env, cfgDocsType(f), def, strings.Join(vals, " | "), md(f.help))
		}
	}
	return b.String()
}

func cfgDocsType(f *configKey) string {
	switch f.kind {
	case kindMillis:
		return "duration (integer = ms)"
	case kindAge:
		return "duration (unit required)"
	case kindBytes:
		return "bytes (units accepted)"
	case kindFraction:
		return "fraction 0..1 or %"
	case kindBool:
		return "bool"
	case kindUIDs:
		return "list of uids"
	case kindCount:
		return "integer (" + strings.ToLower(f.arg) + ")"
	case kindEnum:
		return "enum"
	}
	switch f.arg {
	case "PATH":
		return "path"
	case "ADDR":
		return "host:port or `off`"
	case "GROUP":
		return "group name or gid"
	case "MODE":
		return "octal mode (a string)"
	}
	return "string"
}

func TestConfigUplinkTable(t *testing.T) {
	file := cfgWriteFile(t, "[uplink.nats]\nservers = \"nats://10.0.0.5:4222\"\nmax_inflight = 100\ncreate_stream = true\n")
	c, _, err := LoadConfig([]string{"--config", file, "--uplink-nats-stream", "GW"}, cfgEnv(t, "FRAMEBUS_UPLINK_NATS_PAYLOAD=json"))
	if err != nil {
		t.Fatal(err)
	}
	if c.UplinkServers != "nats://10.0.0.5:4222" || c.UplinkMaxInflight != 100 || !c.UplinkCreateStream || c.UplinkStream != "GW" || c.UplinkPayload != "json" {
		t.Fatalf("uplink config from table, flag and env: %+v", c)
	}
	// --print-config writes the table back as dotted keys that read the same.
	back, _, err := LoadConfig([]string{"--config", cfgWriteFile(t, string(c.TOML()))}, cfgEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	if back.UplinkServers != c.UplinkServers || back.UplinkStream != "GW" || back.UplinkMaxInflight != 100 {
		t.Fatalf("round trip of the uplink table: %+v", back)
	}
	_, _, err = LoadConfig([]string{"--uplink-nats-servers", "nats://x:4222", "--uplink-nats-token", "t", "--uplink-nats-creds-file", "/c", "--uplink-nats-payload", "xml"}, cfgEnv(t))
	cfgWantErrs(t, err, "one of creds_file, nkey_file and token", "uplink.nats.payload")
}
