package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
	"github.com/framebus/framebus/wal"
)

// Sidecar is the running daemon: it owns the segment, the WAL, the socket,
// the drain goroutine and one goroutine per attached driver.
type Sidecar struct {
	cfg   Config
	log   *slog.Logger
	seg   *shm.Segment
	wal   *wal.WAL
	ln    *net.UnixListener
	lock  *os.File
	epoch uint64
	uid   int
	gid   int // the group of the segment and the socket: Group, else the primary group

	m *metrics

	mu struct {
		sync.Mutex
		producers map[int]*producer // by directory slot
		nextGen   uint32
		stopping  bool
		releases  map[string]uint64 // committed positions to release, by source key
		durable   uint64
		afterPass []func()               // run by the drain loop between passes (afterDrainPass)
		liveAudit []auditFrame           // the sidecar's own frames, for live subscribers (appendAudit)
		conns     map[*net.UnixConn]bool // subscriber and requester connections, closed by Shutdown
	}
	feeders  sync.WaitGroup // subscription feeders (they write rings and read the WAL)
	subs     subscriberSet
	router   *router
	commitMu sync.Mutex
	commitC  chan struct{} // closed and replaced at every WAL commit
	// heldPause: PAUSE is up because cursors hold the WAL above
	// cursor_max_bytes (drain goroutine).
	heldPause bool
	// pauseLog rate-limits the log lines of the WAL queue's PAUSE and
	// resume, which toggle many times a second at saturation (drain
	// goroutine).
	pauseLog struct {
		at              time.Time
		pauses, resumes int
	}
	// repairLog rate-limits the log line of repairSegment (drain
	// goroutine).
	repairLog struct {
		at    time.Time
		words int
	}
	api     *httpAPI
	uplink  *uplink // nil when uplink.nats.servers is empty
	lostMu  sync.Mutex
	lostLog map[string]*lostLog // onCursorLost's rate limit
	apiAddr string              // the HTTP API's listening address, "" if off
	wake    shm.Event           // the segment's doorbell: the drain loop sleeps on it
	// committed cuts the drain loop's batching pause short when a commit
	// has ring space to release (releasesPending), so a driver learns
	// that its frames are durable right away.
	committed       shm.Event
	releasesPending atomic.Bool
	// ringsVersion changes whenever a ring is added: the drain loop,
	// asleep with its list of rings, must take a new one.
	ringsVersion atomic.Uint64
	lastDurable  atomic.Int64  // Unix ns of the last commit that advanced the watermark
	drainReq     chan struct{} // closed to ask the drain loop to finish
	drained      chan struct{} // closed when the drain loop has finished
	conns        sync.WaitGroup
	closed       atomic.Bool
	shutOnce     sync.Once
	shutErr      error
}

// producerState says where an attachment is in its life.
type producerState int

const (
	stateAttached producerState = iota // socket open
	stateOrphan                        // adopted after a restart, or socket closed while the process lives
	stateRetiring                      // gone: drain what it committed, then free the ring
)

// producer is one ring and the driver that writes it.
type producer struct {
	slot  int
	gen   uint64
	key   string // WAL position key: "slot/generation"
	name  string
	id    uint16
	pid   int
	start uint64
	uid   uint32
	ring  *shm.Ring
	cons  *shm.Consumer // drain goroutine only

	state atomic.Int32 // producerState
	conn  atomic.Pointer[net.UnixConn]

	published atomic.Uint64 // frames written to the WAL
	rejected  atomic.Uint64 // frames that failed verification
	notified  uint64        // rejections already reported to the driver (drain goroutine)
	paused    bool          // per-ring PAUSE raised (drain goroutine)
	corrupt   bool          // the ring broke the protocol: detached (drain goroutine)
	// rejectLog rate-limits the log line of rejected frames (drain
	// goroutine, logRejected).
	rejectLog struct {
		at     time.Time
		frames uint64
		reason string // the last rejection's, also for the driver's notice
	}
	stalledSince time.Time // since when its ring is Stalled (drain goroutine, checkStalled)
	// caughtUp is when the last poll that read the ring to its end
	// started (drain goroutine): what a later poll finds was published
	// after it, so the WAL's commit interval can count from it.
	caughtUp time.Time
}

func (p *producer) getState() producerState  { return producerState(p.state.Load()) }
func (p *producer) setState(s producerState) { p.state.Store(int32(s)) }

// New starts a sidecar: it takes the bus's lock, opens the WAL, creates (or
// adopts) the segment, resumes the rings it finds, listens on the socket and
// starts draining. Stop it with Shutdown.
func New(cfg Config, log *slog.Logger) (*Sidecar, error) { return newSidecar(cfg, log, nil) }

// newSidecar is New with WAL fault-injection hooks, for tests.
func newSidecar(cfg Config, log *slog.Logger, hooks *wal.Hooks) (*Sidecar, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Sidecar{cfg: cfg, log: log, uid: os.Getuid(), gid: -1, drainReq: make(chan struct{}), drained: make(chan struct{})}
	s.lastDurable.Store(time.Now().UnixNano())
	s.mu.producers = map[int]*producer{}
	s.mu.releases = map[string]uint64{}
	s.mu.conns = map[*net.UnixConn]bool{}
	s.commitC = make(chan struct{})
	s.router = newRouter(s)
	ok := false
	defer func() {
		if !ok {
			s.release()
		}
	}()
	if err := s.resolveGroup(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("sidecar: create run directory %s: %w (set --run-dir)", cfg.RunDir, err)
	}
	if err := s.takeLock(); err != nil {
		return nil, err
	}
	walDir := cfg.WALPath()
	if err := os.MkdirAll(walDir, 0o750); err != nil {
		return nil, fmt.Errorf("sidecar: create WAL directory %s: %w (set --wal-dir)", walDir, err)
	}
	s.m = newMetrics(s)
	w, err := s.openWAL(walDir, hooks) // walopen.go: damage, wal_recover
	if err != nil {
		return nil, err
	}
	s.wal = w
	if err := s.openSegment(); err != nil {
		return nil, err
	}
	s.wake = s.seg.Doorbell()
	s.committed = shm.NewLocalEvent()
	if err := s.resumeRings(); err != nil {
		return nil, err
	}
	if err := s.listen(); err != nil {
		return nil, err
	}
	if err := s.m.serve(cfg.MetricsAddr); err != nil {
		s.ln.Close()
		return nil, fmt.Errorf("sidecar: metrics listener on %s: %w (set --metrics-addr, or \"off\")", cfg.MetricsAddr, err)
	}
	if err := s.serveHTTP(cfg.HTTPAddr); err != nil {
		s.m.close()
		if s.api != nil {
			s.api.close()
		}
		s.ln.Close()
		return nil, fmt.Errorf("sidecar: HTTP API listener on %s: %w (set --http-addr, or \"off\")", cfg.HTTPAddr, err)
	}
	s.warnExposed("metrics_addr", cfg.MetricsAddr, "/metrics")
	s.warnExposed("http_addr", cfg.HTTPAddr, "the HTTP API (frames, status, commands to devices)")
	ok = true
	// The rings resumed from the segment, counted before the drain loop
	// starts: it frees those of drivers that are gone.
	s.mu.Lock()
	resumed := len(s.mu.producers)
	s.mu.Unlock()
	go s.drainLoop()
	go s.acceptLoop()
	s.startUplink()
	s.log.Info("framebus sidecar running", "name", cfg.Name, "preset", cfg.Preset, "segment", s.seg.Path(),
		"socket", cfg.SocketPath(), "wal", walDir, "epoch", s.epoch, "rings", resumed, "http", s.apiAddr, "metrics", cfg.MetricsAddr)
	return s, nil
}

// resolveGroup sets the group that owns the segment and the socket and
// whose members may attach: Group, else the sidecar's primary group (as
// Config.Group documents; the files get that group either way, so its
// members pass the file permissions and must pass authorize too).
func (s *Sidecar) resolveGroup() error {
	gid, err := s.cfg.GroupID()
	if err != nil {
		return err
	}
	if gid < 0 {
		gid = os.Getgid()
	}
	s.gid = gid
	return nil
}

// setAccess gives the segment or the socket the configured mode, group and
// allowed uids (shm.SetAccess).
func (s *Sidecar) setAccess(path string) error {
	if err := shm.SetAccess(path, s.cfg.FileMode, s.gid, s.cfg.AllowUIDs); err != nil {
		return fmt.Errorf("sidecar: access to %s (file_mode %04o, group %d, allow_uids %v): %w", path, uint32(s.cfg.FileMode), s.gid, s.cfg.AllowUIDs, err)
	}
	return nil
}

// warnExposed logs a warning when an HTTP listener was configured on an
// address that is not loopback: the defaults are 127.0.0.1, and the HTTP API
// can send commands to devices, without authentication.
func (s *Sidecar) warnExposed(key, addr, what string) {
	if addr == "" || addr == MetricsOff {
		return
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return // Validate refused it already
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		return
	}
	s.log.Warn(key+" is not a loopback address: "+what+" can be reached from the network without authentication; "+
		"bind it to 127.0.0.1 and put an authenticating proxy in front, or firewall it", key, addr)
}

// takeLock holds an exclusive flock on <run_dir>/<name>.lock for the life of
// the process: a second sidecar on the same bus fails here, before it
// touches the segment, the WAL or the socket.
func (s *Sidecar) takeLock() error {
	path := filepath.Join(s.cfg.RunDir, s.cfg.Name+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("sidecar: open lock file %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b := make([]byte, 32)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		pid := strings.TrimSpace(string(b[:n]))
		return fmt.Errorf("sidecar: another sidecar (pid %s) is running on bus %q (lock %s): stop it, or choose another --name", pid, s.cfg.Name, path)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	s.lock = f
	return nil
}

// openSegment creates the segment, or adopts one left by a previous sidecar
// (its rings may hold committed frames that are not in the WAL yet).
func (s *Sidecar) openSegment() error {
	c := s.cfg
	seg, err := shm.Open(c.ShmDir, c.Name)
	switch {
	case err == nil:
		epoch := seg.Epoch() + 1
		seg.Close()
		seg, err = shm.Adopt(c.ShmDir, c.Name, epoch)
		if err != nil {
			return fmt.Errorf("sidecar: adopt segment %s: %w", shm.Path(c.ShmDir, c.Name), err)
		}
		s.log.Info("adopted the segment of a previous sidecar", "segment", seg.Path(), "epoch", epoch)
	case errors.Is(err, fs.ErrNotExist):
		seg, err = shm.Create(shm.Config{Name: c.Name, Dir: c.ShmDir, Size: c.ShmBytes, MaxRings: c.MaxRings, Mode: c.FileMode, Gid: max(s.gid, 0)}, 1)
		if err != nil {
			return fmt.Errorf("sidecar: %w", err)
		}
	case errors.Is(err, shm.ErrNotReady):
		// A sidecar died while creating it: nothing can be in it.
		s.log.Warn("removing a half-initialised segment", "segment", shm.Path(c.ShmDir, c.Name))
		os.Remove(shm.Path(c.ShmDir, c.Name))
		return s.openSegment()
	default:
		return fmt.Errorf("sidecar: segment %s exists but cannot be used: %w (if no driver uses it, remove it)", shm.Path(c.ShmDir, c.Name), err)
	}
	s.seg = seg
	s.epoch = seg.Epoch()
	// Created or adopted: either way the file gets this start's mode,
	// group and allowed uids (an adopted one may have older ones).
	if err := s.setAccess(seg.Path()); err != nil {
		return err
	}
	seg.ClearFlags(shm.FlagShuttingDown | shm.FlagPause | shm.FlagDegraded)
	return nil
}

func sourceKey(slot int, gen uint64) string {
	return strconv.Itoa(slot) + "/" + strconv.FormatUint(gen, 10)
}

// resumeRings takes over the rings of an adopted segment: their committed
// frames up to the WAL's recorded position are already in the WAL and are
// released; reading resumes exactly there.
func (s *Sidecar) resumeRings() error {
	positions := s.wal.Positions()
	live := map[string]bool{}
	for _, info := range s.seg.Rings() {
		if info.Kind == shm.KindEgress || info.Kind == shm.KindCommand {
			// A previous sidecar's subscription or command ring: its
			// users attach again and get new ones.
			s.seg.FreeRing(info.Slot)
			continue
		}
		ring, err := s.seg.Ring(info.Slot)
		if err != nil {
			s.log.Warn("freeing an unusable ring directory slot", "slot", info.Slot, "err", err)
			s.seg.FreeRing(info.Slot)
			continue
		}
		cons, err := ring.Consumer()
		if err != nil {
			s.log.Warn("freeing a ring with corrupt positions", "slot", info.Slot, "err", err)
			s.seg.FreeRing(info.Slot)
			continue
		}
		p := &producer{slot: info.Slot, gen: info.Generation, key: sourceKey(info.Slot, info.Generation), name: info.Owner.Name,
			pid: info.Owner.Pid, start: info.Owner.Start, uid: info.Owner.UID, ring: ring, cons: cons}
		p.id = uint16(info.Slot + 1)
		if pos, ok := positions[p.key]; ok && pos > cons.Head() {
			if err := cons.Seek(pos); err != nil {
				return fmt.Errorf("sidecar: ring %d: the WAL says %d frames bytes were drained, the ring disagrees: %w", info.Slot, pos, err)
			}
			cons.Release(pos)
		}
		live[p.key] = true
		if shm.ProcessAlive(p.pid, p.start) {
			p.setState(stateOrphan)
		} else {
			p.setState(stateRetiring)
		}
		s.mu.producers[info.Slot] = p
		if g := uint32(info.Generation); g >= s.mu.nextGen {
			s.mu.nextGen = g + 1
		}
		s.log.Info("resumed ring", "slot", info.Slot, "producer", p.name, "pid", p.pid, "state", stateName(p.getState()))
	}
	for key := range positions {
		if !live[key] {
			s.wal.DeletePosition(key)
		}
	}
	return nil
}

func stateName(st producerState) string {
	switch st {
	case stateAttached:
		return "attached"
	case stateOrphan:
		return "orphan"
	}
	return "retiring"
}

func (s *Sidecar) listen() error {
	path := s.cfg.SocketPath()
	// We hold the bus lock, so a socket file there is a dead sidecar's.
	os.Remove(path)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("sidecar: listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	// Until this, the socket has the umask's mode; authorize stops anyone
	// who connects in that window.
	if err := s.setAccess(path); err != nil {
		ln.Close()
		return err
	}
	s.ln = ln
	return nil
}

// onCommit runs on the WAL writer after each durable commit: the committed
// positions may now be released in their rings (by the drain goroutine,
// which owns the consumers) and the durable watermark advances.
func (s *Sidecar) onCommit(c wal.Commit) {
	s.mu.Lock()
	for k, v := range c.Positions {
		s.mu.releases[k] = v
	}
	if c.LastSeq > s.mu.durable {
		s.mu.durable = c.LastSeq
		s.lastDurable.Store(time.Now().UnixNano())
	}
	released := len(c.Positions) > 0
	if released {
		// Under mu, as applyReleases clears it: never left set after
		// the releases it announces were taken.
		s.releasesPending.Store(true)
	}
	s.mu.Unlock()
	if released {
		s.committed.Signal()
	}
	if s.seg.Flags()&shm.FlagDegraded != 0 {
		s.seg.ClearFlags(shm.FlagDegraded)
		s.log.Info("WAL writes work again; leaving degraded mode")
	}
	s.m.observeCommit(c)
	s.wake.Wake()
	s.signalCommit()
}

// onCursorLost logs frames retention deleted before a cursor acked them.
// At most one line per cursor a second: the frames since the last line.
func (s *Sidecar) onCursorLost(name string, lost uint64) {
	s.lostMu.Lock()
	defer s.lostMu.Unlock()
	if s.lostLog == nil {
		s.lostLog = map[string]*lostLog{}
	}
	l := s.lostLog[name]
	if l == nil {
		l = &lostLog{}
		s.lostLog[name] = l
	}
	l.frames += lost
	if now := time.Now(); now.Sub(l.last) >= time.Second {
		s.log.Warn("retention deleted frames a durable cursor had not acked (cursor_policy drop)", "cursor", name, "frames", l.frames,
			"since", l.last.Format(time.RFC3339))
		l.frames, l.last = 0, now
	}
}

type lostLog struct {
	frames uint64
	last   time.Time
}

func (s *Sidecar) onWALError(err error) {
	if s.seg.Flags()&shm.FlagDegraded == 0 {
		s.log.Error("WAL commit failed; degraded: frames are kept in memory and retried", "err", err)
	}
	s.seg.SetFlags(shm.FlagDegraded)
	s.m.walErrors.Inc()
}

// Shutdown stops accepting drivers, drains every ring, commits the WAL and
// releases everything. Drivers still attached keep their rings in the
// segment, which stays for the next sidecar to adopt. Idempotent.
func (s *Sidecar) Shutdown(ctx context.Context) error {
	s.shutOnce.Do(func() {
		s.seg.SetFlags(shm.FlagShuttingDown)
		s.mu.Lock()
		s.mu.stopping = true
		s.mu.Unlock()
		s.ln.Close()
		close(s.drainReq)
		s.wake.Wake()
		select {
		case <-s.drained:
		case <-ctx.Done():
			s.shutErr = fmt.Errorf("sidecar: shutdown: drain did not finish: %w", ctx.Err())
		}
		if s.uplink != nil {
			s.uplink.stop()
		}
		s.router.failAll("the sidecar stopped with the command in flight")
		s.mu.Lock()
		for _, p := range s.mu.producers {
			if c := p.conn.Load(); c != nil {
				c.Close()
			}
		}
		for c := range s.mu.conns {
			c.Close() // subscribers and requesters
		}
		s.mu.Unlock()
		for _, sub := range s.subs.list() {
			sub.end()
		}
		if s.api != nil {
			s.api.close()
		}
		s.conns.Wait()
		s.feeders.Wait()
		select {
		case <-s.drained:
			// Rings freed after the drain loop's last pass (live
			// subscriptions'), now that nothing writes them.
			s.runAfterPass()
		default:
			// The drain loop is still running and reading the rings: do
			// not unmap them under it. The process exits anyway.
			s.log.Error("shutdown: the drain loop did not finish; leaving the segment mapped")
			return
		}
		s.release()
	})
	return s.shutErr
}

// release closes what New opened, in reverse order.
func (s *Sidecar) release() {
	if s.closed.Swap(true) {
		return
	}
	if s.m != nil {
		s.m.close()
	}
	if s.ln != nil {
		s.ln.Close()
	}
	if s.wal != nil {
		if err := s.wal.Close(); err != nil && s.shutErr == nil {
			s.shutErr = fmt.Errorf("sidecar: close WAL: %w", err)
		}
	}
	if s.seg != nil {
		remove := len(s.seg.Rings()) == 0
		s.seg.ClearFlags(shm.FlagPause)
		s.seg.Close()
		if remove {
			s.seg.Remove()
		}
	}
	if s.lock != nil {
		os.Remove(s.lock.Name())
		s.lock.Close()
	}
}

// Segment returns the segment (for tests and status).
func (s *Sidecar) Segment() *shm.Segment { return s.seg }

// kindValid reports whether a ring record type is a frame kind.
func kindValid(t uint16) bool {
	k := schema.Kind(t)
	return k == schema.KindData || k == schema.KindCommand || k == schema.KindAck
}
