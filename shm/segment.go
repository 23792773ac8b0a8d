package shm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"math/bits"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/edsrzf/mmap-go"
	"golang.org/x/sys/unix"
)

// Global flag bits in the header's flag word. The sidecar writes them; every
// producer reads them before it publishes.
const (
	// FlagPause asks producers to stop publishing (backpressure).
	FlagPause uint64 = 1 << iota
	// FlagDegraded says the sidecar cannot write its WAL and holds frames
	// in memory.
	FlagDegraded
	// FlagShuttingDown says the sidecar is draining and will exit.
	FlagShuttingDown
)

// Config describes a segment to create. The zero value is usable.
type Config struct {
	// Name is the bus name; the file is Dir/framebus-<Name>. Zero means
	// "default".
	Name string
	// Dir is the directory of the segment file. Zero means /dev/shm.
	Dir string
	// Size is the file size in bytes: header, directory and every ring.
	// Zero means 64 MiB. It is rounded up to a whole page.
	Size int64
	// MaxRings is the number of ring directory slots. Zero means 64.
	MaxRings int
	// Mode is the file mode. Zero means 0660.
	Mode fs.FileMode
	// Gid, if not zero, becomes the file's group, so that drivers running
	// as other users in that group can map it.
	Gid int
}

// DefaultName, DefaultDir, DefaultSize and DefaultMaxRings are the values a
// zero Config field stands for.
const (
	DefaultName     = "default"
	DefaultDir      = "/dev/shm"
	DefaultSize     = 64 << 20
	DefaultMaxRings = 64
	DefaultMode     = 0o660
)

// EnsureDefaults fills zero fields with their defaults.
func (c *Config) EnsureDefaults() {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.Dir == "" {
		c.Dir = DefaultDir
	}
	if c.Size == 0 {
		c.Size = DefaultSize
	}
	if c.MaxRings == 0 {
		c.MaxRings = DefaultMaxRings
	}
	if c.Mode == 0 {
		c.Mode = DefaultMode
	}
}

// Validate reports every invalid field at once.
func (c *Config) Validate() error {
	var errs []error
	if err := validName(c.Name); err != nil {
		errs = append(errs, err)
	}
	if c.MaxRings < 1 || c.MaxRings > 4096 {
		errs = append(errs, fmt.Errorf("%w: MaxRings %d is outside 1..4096", ErrConfig, c.MaxRings))
	}
	min := int64(minSegmentSize(c.MaxRings))
	if c.Size < min || c.Size > 1<<40 {
		errs = append(errs, fmt.Errorf("%w: Size %d is outside %d..1 TiB (header, %d directory slots and one %d-byte ring)",
			ErrConfig, c.Size, min, c.MaxRings, MinRingCapacity))
	}
	if c.Mode&^fs.ModePerm != 0 {
		errs = append(errs, fmt.Errorf("%w: Mode %v has bits other than permissions", ErrConfig, c.Mode))
	}
	return errors.Join(errs...)
}

func validName(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("%w: name %q must be 1..64 characters", ErrConfig, name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') || name == "." || name == ".." {
			return fmt.Errorf("%w: name %q may only hold letters, digits, '-', '_' and '.'", ErrConfig, name)
		}
	}
	return nil
}

// Path returns the segment file path for a bus name in dir (zero values mean
// the defaults).
func Path(dir, name string) string {
	if dir == "" {
		dir = DefaultDir
	}
	if name == "" {
		name = DefaultName
	}
	return filepath.Join(dir, "framebus-"+name)
}

func dirBytes(slots int) uint64 { return alignPage(uint64(slots) * dirSlotSize) }

func minSegmentSize(slots int) uint64 {
	if slots < 1 {
		slots = 1
	}
	return HeaderSize + dirBytes(slots) + alignPage(RingControlSize+MinRingCapacity)
}

// Segment is a mapped segment file. The sidecar creates it (Create, Adopt);
// drivers open it (Open). Its geometry is read once, validated, and kept in
// process memory: nothing a client later writes into the header changes how
// this process interprets the file.
//
// A Segment is safe for concurrent use. Close unmaps the file; no Ring,
// Producer or Consumer of it may be used afterwards.
type Segment struct {
	path    string
	mem     mmap.MMap
	size    uint64
	dirOff  uint64
	slots   int
	dataOff uint64
	owner   bool // created or adopted: this process is the sidecar
	// shadow is the owner's own copy of what only it writes (shadow.go);
	// nil in a client.
	shadow *shadow

	mu struct {
		sync.Mutex
		closed bool
	}
}

// Create makes a new segment file (it fails with ErrExists if one is there),
// sizes and pre-faults it, writes the header and publishes it with the ready
// word. epoch is the sidecar's start counter (1 for a first start).
func Create(cfg Config, epoch uint64) (*Segment, error) {
	cfg.EnsureDefaults()
	cfg.Size = int64(alignPage(uint64(cfg.Size)))
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	path := Path(cfg.Dir, cfg.Name)
	if err := checkSpace(cfg.Dir, cfg.Size); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, cfg.Mode)
	if errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%w: %s (another sidecar runs on bus %q, or a crashed one left it: adopt or remove it)", ErrExists, path, cfg.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("shm: create %s: %w", path, err)
	}
	defer f.Close()
	fail := func(err error) (*Segment, error) {
		os.Remove(path)
		return nil, err
	}
	// The umask may have cleared group bits; the mode is part of the
	// access-control contract, so set it explicitly.
	if err := f.Chmod(cfg.Mode); err != nil {
		return fail(fmt.Errorf("shm: chmod %s: %w", path, err))
	}
	if cfg.Gid != 0 {
		if err := f.Chown(-1, cfg.Gid); err != nil {
			return fail(fmt.Errorf("shm: chown %s to group %d: %w", path, cfg.Gid, err))
		}
	}
	// Allocate every page now: on tmpfs a page that cannot be allocated
	// later would kill the writer with SIGBUS instead of returning an error.
	if err := unix.Fallocate(int(f.Fd()), 0, 0, cfg.Size); err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return fail(fmt.Errorf("%w: %s needs %d bytes: %v", ErrNoSpace, path, cfg.Size, err))
		}
		// Some file systems lack fallocate; fall back to a sparse size.
		if err := f.Truncate(cfg.Size); err != nil {
			return fail(fmt.Errorf("shm: size %s: %w", path, err))
		}
	}
	mem, err := mmap.Map(f, mmap.RDWR, 0)
	if err != nil {
		return fail(fmt.Errorf("shm: map %s: %w", path, err))
	}
	s := &Segment{path: path, mem: mem, owner: true}
	s.size = uint64(cfg.Size)
	s.slots = cfg.MaxRings
	s.dirOff = HeaderSize
	s.dataOff = HeaderSize + dirBytes(cfg.MaxRings)
	s.writeStatic(epoch, time.Now().UnixNano())
	u32At(s.mem, offReady).Store(readyValue)
	s.shadow = newShadow(s)
	return s, nil
}

// Adopt takes over an existing segment left by a sidecar that is gone: it
// validates it, bumps nothing but the owner fields and the epoch, and
// republishes it. Rings stay as they are, so their committed records can be
// drained. The caller must make sure no other sidecar uses the segment (the
// sidecar holds a lock file for that).
func Adopt(dir, name string, epoch uint64) (*Segment, error) {
	s, err := open(dir, name)
	if err != nil {
		return nil, err
	}
	s.owner = true
	u32At(s.mem, offReady).Store(0)
	created := int64(binary.LittleEndian.Uint64(s.mem[offCreatedNs:]))
	s.writeStatic(epoch, created)
	u32At(s.mem, offReady).Store(readyValue)
	s.shadow = newShadow(s)
	return s, nil
}

// Open maps an existing segment for a driver. It returns ErrNotReady (wrapped)
// while the sidecar is still initialising it, and a validation error if it is
// not a compatible segment.
func Open(dir, name string) (*Segment, error) {
	return open(dir, name)
}

func open(dir, name string) (*Segment, error) {
	s, _, err := mapFile(dir, name, true)
	return s, err
}

// mapFile maps an existing segment file, read-write or read-only, and
// checks its header; it also returns the file's metadata as opened.
func mapFile(dir, name string, writable bool) (*Segment, os.FileInfo, error) {
	if err := validName(orDefault(name, DefaultName)); err != nil {
		return nil, nil, err
	}
	path := Path(dir, name)
	flag, prot := os.O_RDONLY, mmap.RDONLY
	if writable {
		flag, prot = os.O_RDWR, mmap.RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("shm: open %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("shm: stat %s: %w", path, err)
	}
	if fi.Size() < HeaderSize {
		return nil, nil, fmt.Errorf("%w: %s has %d bytes", ErrTooSmall, path, fi.Size())
	}
	mem, err := mmap.Map(f, prot, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("shm: map %s: %w", path, err)
	}
	s, err := segmentOver(mem, path)
	if err != nil {
		mem.Unmap()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, fi, nil
}

// segmentOver validates a segment image and wraps it.
func segmentOver(mem []byte, path string) (*Segment, error) {
	g, err := ValidateHeader(mem)
	if err != nil {
		return nil, err
	}
	return &Segment{path: path, mem: mem, size: g.size, dirOff: g.dirOff, slots: g.slots, dataOff: g.dataOff}, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func (s *Segment) writeStatic(epoch uint64, created int64) {
	le := binary.LittleEndian
	h := s.mem[:lineSize]
	clear(h)
	copy(h[offMagic:], Magic)
	le.PutUint32(h[offVersion:], LayoutVersion)
	le.PutUint32(h[offHeaderSize:], HeaderSize)
	le.PutUint64(h[offSegmentSize:], s.size)
	le.PutUint64(h[offDirOffset:], s.dirOff)
	le.PutUint32(h[offDirSlots:], uint32(s.slots))
	le.PutUint32(h[offDirSlotSize:], dirSlotSize)
	le.PutUint64(h[offDataOffset:], s.dataOff)
	le.PutUint32(h[offCounterOff:], counterOffset)
	le.PutUint32(h[offCounterSlots:], counterSlots)
	le.PutUint64(h[offCreatedNs:], uint64(created))
	le.PutUint32(h[offSidecarPid:], uint32(os.Getpid()))
	le.PutUint32(h[offPageSize:], pageSize)
	start, _ := ProcessStart(os.Getpid())
	le.PutUint64(h[offSidecarStart:], start)
	le.PutUint64(h[offEpoch:], epoch)
	le.PutUint32(h[offCRC:], crc32Header(h))
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type geometry struct {
	size    uint64
	dirOff  uint64
	slots   int
	dataOff uint64
}

// ValidateHeader checks a segment image: magic, version, checksum, sizes and
// the ready word. b is the whole mapped file. It returns one of the package's
// validation sentinels, wrapped with the detail.
func ValidateHeader(b []byte) (geometry, error) {
	var g geometry
	le := binary.LittleEndian
	if len(b) < HeaderSize {
		return g, fmt.Errorf("%w: %d bytes, a header needs %d", ErrTooSmall, len(b), HeaderSize)
	}
	if !bytes.Equal(b[offMagic:offMagic+8], []byte(Magic)) {
		return g, fmt.Errorf("%w: starts with %q", ErrBadMagic, b[offMagic:offMagic+8])
	}
	if v := le.Uint32(b[offVersion:]); v != LayoutVersion {
		return g, fmt.Errorf("%w: segment has version %d, this program understands %d", ErrVersion, v, LayoutVersion)
	}
	// The ready word is stored last; until it is set the rest may be
	// half-written, so check it before the checksum.
	if u32At(b, offReady).Load() != readyValue {
		return g, ErrNotReady
	}
	if got, want := crc32Header(b), le.Uint32(b[offCRC:]); got != want {
		return g, fmt.Errorf("%w: computed %08x, stored %08x", ErrChecksum, got, want)
	}
	g.size = le.Uint64(b[offSegmentSize:])
	g.dirOff = le.Uint64(b[offDirOffset:])
	slots := le.Uint32(b[offDirSlots:])
	g.dataOff = le.Uint64(b[offDataOffset:])
	switch {
	case le.Uint32(b[offHeaderSize:]) != HeaderSize:
		return g, fmt.Errorf("%w: header size %d, want %d", ErrBadHeader, le.Uint32(b[offHeaderSize:]), HeaderSize)
	case le.Uint32(b[offPageSize:]) != pageSize:
		return g, fmt.Errorf("%w: page size %d, want %d", ErrBadHeader, le.Uint32(b[offPageSize:]), pageSize)
	case g.size != uint64(len(b)):
		if g.size > uint64(len(b)) {
			return g, fmt.Errorf("%w: header says %d bytes, file has %d", ErrTooSmall, g.size, len(b))
		}
		return g, fmt.Errorf("%w: header says %d bytes, file has %d", ErrBadHeader, g.size, len(b))
	case le.Uint32(b[offDirSlotSize:]) != dirSlotSize:
		return g, fmt.Errorf("%w: directory slot size %d, want %d", ErrBadHeader, le.Uint32(b[offDirSlotSize:]), dirSlotSize)
	case slots < 1 || slots > 4096:
		return g, fmt.Errorf("%w: %d directory slots", ErrBadHeader, slots)
	case g.dirOff != HeaderSize:
		return g, fmt.Errorf("%w: directory at %d, want %d", ErrBadHeader, g.dirOff, HeaderSize)
	case g.dataOff != g.dirOff+dirBytes(int(slots)):
		return g, fmt.Errorf("%w: data area at %d, want %d", ErrBadHeader, g.dataOff, g.dirOff+dirBytes(int(slots)))
	case g.dataOff > g.size:
		return g, fmt.Errorf("%w: data area at %d beyond the %d-byte segment", ErrBadHeader, g.dataOff, g.size)
	case le.Uint32(b[offCounterOff:]) != counterOffset || le.Uint32(b[offCounterSlots:]) != counterSlots:
		return g, fmt.Errorf("%w: counter area %d/%d", ErrBadHeader, le.Uint32(b[offCounterOff:]), le.Uint32(b[offCounterSlots:]))
	}
	g.slots = int(slots)
	return g, nil
}

// Validate checks the mapped header again (for a long-lived client that
// wants to know the sidecar has not replaced the segment).
func (s *Segment) Validate() error {
	_, err := ValidateHeader(s.mem)
	return err
}

// Path returns the segment's file path.
func (s *Segment) Path() string { return s.path }

// Size returns the segment's size in bytes.
func (s *Segment) Size() uint64 { return s.size }

// MaxRings returns the number of directory slots.
func (s *Segment) MaxRings() int { return s.slots }

// Epoch returns the epoch of the sidecar that (re)published the segment.
func (s *Segment) Epoch() uint64 { return binary.LittleEndian.Uint64(s.mem[offEpoch:]) }

// SidecarPid returns the pid of the sidecar that published the segment and
// its process start time (clock ticks since boot), to tell a live sidecar
// from a recycled pid.
func (s *Segment) SidecarPid() (pid int, start uint64) {
	return int(binary.LittleEndian.Uint32(s.mem[offSidecarPid:])), binary.LittleEndian.Uint64(s.mem[offSidecarStart:])
}

// Created returns the segment's creation time.
func (s *Segment) Created() time.Time {
	return time.Unix(0, int64(binary.LittleEndian.Uint64(s.mem[offCreatedNs:])))
}

// Flags returns the global flag word: in the sidecar's segment the one it
// set (its shadow), whatever another process wrote.
func (s *Segment) Flags() uint64 {
	if s.shadow != nil {
		return s.shadow.flags.Load()
	}
	return u64At(s.mem, offFlags).Load()
}

// SetFlags sets bits in the global flag word (sidecar only).
func (s *Segment) SetFlags(bits uint64) { s.updateFlags(func(f uint64) uint64 { return f | bits }) }

// ClearFlags clears bits in the global flag word (sidecar only).
func (s *Segment) ClearFlags(bits uint64) { s.updateFlags(func(f uint64) uint64 { return f &^ bits }) }

// Durable returns the durable watermark: the highest WAL sequence committed
// (in the sidecar's segment, the one it published).
func (s *Segment) Durable() uint64 {
	if s.shadow != nil {
		return s.shadow.durable.Load()
	}
	return u64At(s.mem, offDurable).Load()
}

// PublishDurable stores a new durable watermark and wakes its waiters
// (sidecar only, after the WAL commit returned).
func (s *Segment) PublishDurable(seq uint64) {
	if sh := s.shadow; sh != nil {
		sh.mu.Lock()
		sh.durable.Store(seq)
		u64At(s.mem, offDurable).Store(seq)
		sh.mu.Unlock()
	} else {
		u64At(s.mem, offDurable).Store(seq)
	}
	ev := s.DurableEvent()
	ev.Signal()
}

// DurableEvent is signalled after every PublishDurable.
func (s *Segment) DurableEvent() Event { return newEvent(s.mem, offDurableEv) }

// Doorbell is the event that rings with NotifyDoorbell signal on commit; the
// sidecar's drain loop sleeps on it.
func (s *Segment) Doorbell() Event { return newEvent(s.mem, offDoorbell) }

// Close unmaps the segment. It is idempotent. It does not remove the file.
func (s *Segment) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil
	}
	s.mu.closed = true
	return s.mem.Unmap()
}

// Remove unlinks the segment file (sidecar only, at clean shutdown). Mapped
// copies stay valid until they are unmapped.
func (s *Segment) Remove() error {
	if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("shm: remove %s: %w", s.path, err)
	}
	return nil
}

// checkSpace fails with ErrNoSpace if dir's file system cannot hold size more
// bytes, with numbers that tell the operator what to change.
func checkSpace(dir string, size int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("shm: statfs %s: %w (does the directory exist?)", dir, err)
	}
	free := st.Bavail * uint64(st.Bsize)
	if free < uint64(size) {
		return fmt.Errorf("%w: %s has %d MiB free, the segment needs %d MiB (enlarge it, e.g. mount -o remount,size=... /dev/shm, or choose a smaller preset)",
			ErrNoSpace, dir, free>>20, size>>20)
	}
	return nil
}

func isPow2(n uint64) bool { return n != 0 && bits.OnesCount64(n) == 1 }

// crc32Header computes the header checksum of a segment image.
func crc32Header(b []byte) uint32 { return crc32.Checksum(b[:offCRC], castagnoli) }
