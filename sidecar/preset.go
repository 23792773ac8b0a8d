package sidecar

import (
	"fmt"
	"strings"
	"time"

	"github.com/framebus/framebus/shm"
)

// The four performance presets of the seed (its config.rs), by name.
const (
	PresetHighThroughput  = "high-throughput"
	PresetLowLatency      = "low-latency"
	PresetMemoryOptimized = "memory-optimized"
	PresetDefault         = "default"
)

// Defaults that do not depend on the preset.
const (
	// DefaultName is the bus name when none is configured.
	DefaultName = "default"
	// DefaultMetricsAddr is where /metrics, /healthz and /readyz listen.
	DefaultMetricsAddr = "127.0.0.1:9464"
	// DefaultHTTPAddr is where the HTTP API listens.
	DefaultHTTPAddr = "127.0.0.1:9465"
	// MetricsOff as metrics_addr disables the HTTP listener.
	MetricsOff = "off"
	// DefaultMaxRings is the number of ring directory slots.
	DefaultMaxRings = 64
	// DefaultShmRings is how many rings of ring_bytes a derived shm_bytes
	// has room for (besides the header and the ring directory).
	DefaultShmRings = 8
	// DefaultMaxRingFactor: max_ring_bytes defaults to this many times
	// ring_bytes.
	DefaultMaxRingFactor = 4
)

// presetNames is in the seed's order.
var presetNames = []string{PresetHighThroughput, PresetLowLatency, PresetMemoryOptimized, PresetDefault}

// PresetNames returns the names of the presets, in the seed's order
// (high-throughput, low-latency, memory-optimized, default).
func PresetNames() []string { return append([]string(nil), presetNames...) }

// Preset returns the named preset's configuration. Every field is set except
// RunDir and WALDir, whose defaults depend on the environment and the user
// (EnsureDefaults fills them), and the fields whose zero value is their
// default (WALMaxAge, AllowUIDs, Group). ShmBytes and MaxRingBytes are derived
// from RingBytes and MaxRings as EnsureDefaults derives them.
//
// Names are case-insensitive and '_' may stand for '-' (High_Throughput).
//
// Values, from the seed's table; "seed" marks the seed's own numbers:
//
//	                        high-throughput  low-latency  memory-optimized  default
//	wal_flush_ms            5 (seed)         1 (seed)     20 (seed)         10 (seed)
//	wal_max_bytes           16 GiB (seed)    4 GiB (seed) 2 GiB (seed)      8 GiB (seed)
//	backpressure_threshold  0.95 (seed)      0.85 (seed)  0.80 (seed)       0.90 (seed)
//	pause_hi                0.90 (seed)      0.80         0.75              0.85
//	resume_lo               0.75 (seed)      0.65         0.60              0.70
//	async_write_queue_size  100000 (seed)    10000        10000             50000
//	high_performance_mode   true (seed)      false        false             false
//	ring_bytes              32 MiB (seed)    8 MiB (seed) 2 MiB (seed)      16 MiB (seed)
//	max_batch_size          2000 (seed)      2000         2000              2000
//	batch_flush_ms          1 (seed)         1            1                 1
//	max_memory_bytes        8 MiB (seed)     8 MiB        8 MiB             8 MiB
//
// The seed gives pause_hi and resume_lo only for high-throughput; the others
// follow the same rule, which reproduces the seed's pair exactly: pause_hi is
// backpressure_threshold − 0.05 and resume_lo is pause_hi − 0.15 (a ring pauses
// a little before the WAL queue would, and resumes after a 15-point drop, so
// that flags do not flap). The seed's "GB" and "MB" are binary: its memory
// column is 2^21 slots → ~32 MB, i.e. MiB. The seed's batching values
// (BatchConfig::default) apply to every preset. async_write_queue_size is the
// seed's 100000 for high-throughput, half that for default, and 10000 for the
// two small presets (at 2 M frames/s that is 5 ms of queue, the order of their
// commit interval; at 100-byte frames about 1 MB).
func Preset(name string) (Config, error) {
	c, ok := presetBase(normalizePreset(name))
	if !ok {
		return Config{}, fmt.Errorf("sidecar: unknown preset %q: choose one of %s", name, strings.Join(presetNames, ", "))
	}
	c.deriveSizes()
	return c, nil
}

// presetBase returns the preset's values without the derived sizes, which
// LoadConfig derives only after every source has been applied (a ring_bytes
// from a flag must change the derived shm_bytes). ok is false for an unknown
// name, and c is then the default preset with Preset set to name.
func presetBase(name string) (c Config, ok bool) {
	c = Config{
		Name:           DefaultName,
		Preset:         name,
		ShmDir:         shm.DefaultDir,
		MetricsAddr:    DefaultMetricsAddr,
		HTTPAddr:       DefaultHTTPAddr,
		FileMode:       DefaultFileMode,
		MaxBatchSize:   2000,
		BatchFlush:     Duration{time.Millisecond},
		MaxMemoryBytes: 8 << 20,
		MaxRings:       DefaultMaxRings,
		LogLevel:       "info",
		LogFormat:      "text",
		WALCompression: "s2",
		CursorPolicy:   "retain",
		// Uplink defaults (it is off until uplink.nats.servers is set).
		UplinkStream:      "FRAMEBUS",
		UplinkSubject:     "framebus.{gateway}.{producer}.{device}",
		UplinkMaxInflight: 4096,
		UplinkPayload:     "flatbuffers",
	}
	ok = true
	switch name {
	case PresetHighThroughput:
		c.WALFlush = Duration{5 * time.Millisecond}
		c.WALMaxBytes = 16 << 30
		c.BackpressureThreshold = 0.95
		c.PauseHi = 0.90
		c.ResumeLo = 0.75
		c.AsyncWriteQueueSize = 100000
		c.HighPerformanceMode = true
		c.RingBytes = 32 << 20
	case PresetLowLatency:
		c.WALFlush = Duration{1 * time.Millisecond}
		c.WALMaxBytes = 4 << 30
		c.BackpressureThreshold = 0.85
		c.PauseHi = 0.80
		c.ResumeLo = 0.65
		c.AsyncWriteQueueSize = 10000
		c.RingBytes = 8 << 20
	case PresetMemoryOptimized:
		c.WALFlush = Duration{20 * time.Millisecond}
		c.WALMaxBytes = 2 << 30
		c.BackpressureThreshold = 0.80
		c.PauseHi = 0.75
		c.ResumeLo = 0.60
		c.AsyncWriteQueueSize = 10000
		c.RingBytes = 2 << 20
	default:
		ok = name == PresetDefault
		c.WALFlush = Duration{10 * time.Millisecond}
		c.WALMaxBytes = 8 << 30
		c.BackpressureThreshold = 0.90
		c.PauseHi = 0.85
		c.ResumeLo = 0.70
		c.AsyncWriteQueueSize = 50000
		c.RingBytes = 16 << 20
	}
	return c, ok
}

// normalizePreset lower-cases a preset name and accepts '_' and ' ' for '-'.
func normalizePreset(name string) string {
	name = strings.ToLower(strings.TrimSpace(name))
	return strings.NewReplacer("_", "-", " ", "-").Replace(name)
}

// Segment geometry used to derive shm_bytes. The header size and the ring
// control block come from package shm; the directory slot size and the page
// size are not exported there and are repeated here (shm/layout.go:
// dirSlotSize, pageSize).
const (
	shmDirSlotBytes = 256
	shmPageBytes    = 4096
)

func alignShmPage(n int64) int64 { return (n + shmPageBytes - 1) &^ (shmPageBytes - 1) }

// shmOverhead is the segment's header and ring directory.
func shmOverhead(maxRings int) int64 {
	return shm.HeaderSize + alignShmPage(int64(maxRings)*shmDirSlotBytes)
}

// shmRingRegion is the space one ring of capacity bytes takes in a segment.
func shmRingRegion(capacity int64) int64 { return alignShmPage(shm.RingControlSize + capacity) }

// DeriveShmBytes is the segment size shm_bytes = 0 stands for: the header, a
// directory of maxRings slots, and room for DefaultShmRings (8) rings of
// ringBytes. For the default preset that is 128 MiB + 56 KiB.
func DeriveShmBytes(maxRings, ringBytes int) int64 {
	return shmOverhead(maxRings) + DefaultShmRings*shmRingRegion(int64(ringBytes))
}

// deriveSizes fills MaxRingBytes and ShmBytes if they are zero and the
// values they derive from are usable.
func (c *Config) deriveSizes() {
	if c.MaxRingBytes == 0 && c.RingBytes > 0 {
		c.MaxRingBytes = min(DefaultMaxRingFactor*c.RingBytes, max(c.RingBytes, shm.MaxRingCapacity))
	}
	if c.CursorMaxBytes == 0 && c.WALMaxBytes > 0 {
		c.CursorMaxBytes = 2 * c.WALMaxBytes
	}
	if c.ShmBytes == 0 && c.RingBytes > 0 && c.MaxRings > 0 {
		c.ShmBytes = DeriveShmBytes(c.MaxRings, c.RingBytes)
	}
}
