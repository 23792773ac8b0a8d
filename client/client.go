package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
)

// Policy says what Publish does while the bus applies backpressure (the
// sidecar's PAUSE flags are up) or the ring is full.
type Policy int

const (
	// PolicyBlock waits until the bus resumes and the ring has room, bounded
	// by the caller's context. The default.
	PolicyBlock Policy = iota
	// PolicyDropNewest drops the frame being published, counts it in
	// Stats.Dropped, and returns nil.
	PolicyDropNewest
	// PolicyError returns ErrBackpressure.
	PolicyError
)

func (p Policy) String() string {
	switch p {
	case PolicyBlock:
		return "block"
	case PolicyDropNewest:
		return "drop-newest"
	case PolicyError:
		return "error"
	}
	return fmt.Sprintf("policy(%d)", int(p))
}

// Config describes how to reach the sidecar. The zero value attaches to the
// bus "default" found by the same rules as the sidecar's defaults.
type Config struct {
	// Name is the bus name. Zero: $FRAMEBUS_NAME, else "default".
	Name string
	// RunDir is the sidecar's socket directory. Zero: shm.DefaultRunDir.
	RunDir string
	// Producer names this publisher in the sidecar's logs, metrics and the
	// WAL. Zero: the program name and pid.
	Producer string
	// RingBytes requests a ring size (a power of two). Zero: the sidecar's
	// preset.
	RingBytes int
	// Policy applies while the bus pushes back. Zero: PolicyBlock.
	Policy Policy
	// Logger receives reattach and rejection notices. Zero: discard.
	Logger *slog.Logger
	// OnRejected, if set, is called (from a background goroutine) when the
	// sidecar reports frames of this publisher that failed verification.
	OnRejected func(count uint64, reason string)
}

func (c *Config) ensureDefaults() {
	if c.Name == "" {
		c.Name = os.Getenv("FRAMEBUS_NAME")
	}
	if c.Name == "" {
		c.Name = shm.DefaultName
	}
	if c.RunDir == "" {
		c.RunDir = shm.DefaultRunDir(os.Getenv, os.Getuid())
	}
	if c.Producer == "" {
		c.Producer = fmt.Sprintf("%s-%d", filepath.Base(os.Args[0]), os.Getpid())
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// Stats counts what a publisher did.
type Stats struct {
	Published uint64 // frames committed to the ring
	Dropped   uint64 // frames dropped under PolicyDropNewest
	Rejected  uint64 // frames the sidecar reported as failing verification
	Reattach  uint64 // successful re-attachments after a sidecar restart
}

// Publisher publishes frames into the ring the sidecar assigned. It is safe
// for concurrent use; publishes are serialised (the ring has one producer).
type Publisher struct {
	cfg  Config
	seg  *shm.Segment
	ring *shm.Ring
	prod *shm.Producer
	slot int
	gen  uint64

	mu struct {
		sync.Mutex
		sizes  []int
		closed bool
		end    uint64 // ring position after the last commit
	}
	conn      atomic.Pointer[net.UnixConn]
	lost      atomic.Bool
	detached  atomic.Bool // the sidecar's socket closed; not re-attached yet
	published atomic.Uint64
	dropped   atomic.Uint64
	rejected  atomic.Uint64
	reattach  atomic.Uint64
	cmd       cmdState // ServeCommands (command.go)

	stop chan struct{}
	wg   sync.WaitGroup
}

// Dial attaches to the sidecar: it sends hello, maps the segment and opens
// the ring named in the welcome. It fails with ErrNoSidecar if nobody
// listens, and with ErrRefused if the sidecar says no.
func Dial(ctx context.Context, cfg Config) (*Publisher, error) {
	cfg.ensureDefaults()
	conn, welcome, err := attach(ctx, &cfg, nil)
	if err != nil {
		return nil, err
	}
	seg, err := shm.Open(filepath.Dir(welcome.Segment), strings.TrimPrefix(filepath.Base(welcome.Segment), "framebus-"))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("client: map the segment the sidecar named: %w", err)
	}
	ring, err := seg.Ring(welcome.Slot)
	if err == nil && ring.Generation() != welcome.Generation {
		err = fmt.Errorf("ring %d has generation %d, the sidecar said %d", welcome.Slot, ring.Generation(), welcome.Generation)
	}
	var prod *shm.Producer
	if err == nil {
		// Best effort: without it the first pass over the ring takes
		// the page faults on the publish path instead.
		_ = ring.Prefault()
		prod, err = ring.Producer(welcome.ProducerID)
	}
	if err != nil {
		conn.Close()
		seg.Close()
		return nil, fmt.Errorf("client: open the assigned ring: %w", err)
	}
	p := &Publisher{cfg: cfg, seg: seg, ring: ring, prod: prod, slot: welcome.Slot, gen: welcome.Generation, stop: make(chan struct{})}
	p.mu.end = ring.Head()
	p.conn.Store(conn)
	p.wg.Add(1)
	go p.watch()
	return p, nil
}

// attach connects and exchanges hello/welcome. resume names the ring to keep.
func attach(ctx context.Context, cfg *Config, resume *shm.Resume) (*net.UnixConn, shm.Message, error) {
	path := shm.SocketPath(cfg.RunDir, cfg.Name)
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		// A re-attach retries instead: a restarting sidecar's new socket
		// has the umask's mode for a moment, until it sets file_mode.
		if r := socketRefusal(path, err); r != nil && resume == nil {
			return nil, shm.Message{}, r
		}
		return nil, shm.Message{}, fmt.Errorf("%w: %s: %v (is `framebus run --name %s` running?)", ErrNoSidecar, path, err, cfg.Name)
	}
	conn := c.(*net.UnixConn)
	fail := func(err error) (*net.UnixConn, shm.Message, error) {
		conn.Close()
		return nil, shm.Message{}, err
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	} else {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
	}
	hello, err := shm.EncodeMessage(&shm.Message{Op: shm.OpHello, Version: shm.ProtocolVersion, Producer: cfg.Producer, RingBytes: cfg.RingBytes, Resume: resume})
	if err != nil {
		return fail(err)
	}
	if _, err := conn.Write(hello); err != nil {
		return fail(fmt.Errorf("%w: %s: %v", ErrNoSidecar, path, err))
	}
	m, err := readWelcome(conn, path)
	if err != nil {
		return fail(err)
	}
	conn.SetDeadline(time.Time{})
	return conn, m, nil
}

// watch reads control messages; when the socket closes (the sidecar died or
// is restarting) it re-attaches with the same ring, with backoff, while
// Publish carries on writing into the ring.
func (p *Publisher) watch() {
	defer p.wg.Done()
	buf := make([]byte, shm.MaxMessageSize+1)
	for {
		conn := p.conn.Load()
		n, err := conn.Read(buf)
		if err == nil {
			if m, err := shm.DecodeMessage(buf[:n]); err == nil && (m.Op == shm.OpServing || m.Op == shm.OpError) && p.cmdReply(&m) {
				// A reply to ServeCommands' serve request.
			} else if err == nil && m.Op == shm.OpRejected {
				p.rejected.Add(m.Count)
				p.cfg.Logger.Warn("frames rejected by the sidecar", "producer", p.cfg.Producer, "count", m.Count, "reason", m.Message)
				if p.cfg.OnRejected != nil {
					p.cfg.OnRejected(m.Count, m.Message)
				}
			} else if err == nil && m.Op == shm.OpError {
				p.cfg.Logger.Error("sidecar detached this publisher", "code", m.Code, "reason", m.Message)
				if m.Code == shm.CodeCorrupted {
					p.lost.Store(true)
				}
			}
			continue
		}
		select {
		case <-p.stop:
			return
		default:
		}
		conn.Close()
		p.detached.Store(true)
		p.cmdConnChanged(false)
		ok := p.reattachLoop()
		p.detached.Store(false)
		if !ok {
			p.cmdConnChanged(false) // wakes ServeCommands to see lost
			return
		}
		p.cmdConnChanged(true)
	}
}

func (p *Publisher) reattachLoop() bool {
	backoff := 20 * time.Millisecond
	for {
		select {
		case <-p.stop:
			return false
		case <-time.After(backoff):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, m, err := attach(ctx, &p.cfg, &shm.Resume{Slot: p.slot, Generation: p.gen})
		cancel()
		if err == nil {
			if m.Slot != p.slot || m.Generation != p.gen {
				conn.Close()
				err = fmt.Errorf("sidecar gave ring %d/%d instead of %d/%d", m.Slot, m.Generation, p.slot, p.gen)
			} else {
				p.conn.Store(conn)
				select {
				case <-p.stop:
					// Close ran during the attach and closed the old
					// connection only: watch would read this one for
					// ever, and Close wait for it.
					conn.Close()
					return false
				default:
				}
				p.reattach.Add(1)
				p.cfg.Logger.Info("re-attached to the sidecar", "producer", p.cfg.Producer, "slot", p.slot)
				return true
			}
		}
		if errors.Is(err, ErrRefused) {
			p.lost.Store(true)
			p.cfg.Logger.Error("sidecar refused to resume this publisher's ring; frames not yet durable may be lost", "err", err)
			return false
		}
		p.cfg.Logger.Debug("re-attach failed, retrying", "err", err, "in", backoff)
		backoff = min(2*backoff, time.Second)
	}
}

// paused reports whether the sidecar asks producers to hold back. While the
// sidecar is gone its flags are stale (a PAUSE it raised stays up until the
// next sidecar clears it): the ring's free space alone then decides, so
// that publishing goes on into the ring as long as it has room.
func (p *Publisher) paused() bool {
	if p.detached.Load() {
		return false
	}
	return p.seg.Flags()&shm.FlagPause != 0 || p.ring.Flags()&shm.FlagPause != 0
}

// Publish copies one encoded DataFrame into the ring and commits it.
func (p *Publisher) Publish(ctx context.Context, frame []byte) error {
	return p.PublishKind(ctx, schema.KindData, frame)
}

// PublishKind publishes a frame of any kind (data, command ack ...).
func (p *Publisher) PublishKind(ctx context.Context, kind schema.Kind, frame []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.check(); err != nil {
		return err
	}
	if len(frame) > p.ring.MaxPayload() {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, len(frame), p.ring.MaxPayload())
	}
	for {
		if p.paused() {
			if done, err := p.pushBack(ctx, len(frame), 1, shm.DropPaused); done {
				return err
			}
			continue
		}
		cl, err := p.prod.Claim(uint16(kind), len(frame))
		if errors.Is(err, shm.ErrFull) {
			if done, err := p.pushBack(ctx, len(frame), 1, shm.DropRingFull); done {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		copy(cl.Buf, frame)
		p.prod.Commit(cl)
		p.mu.end = cl.End()
		p.published.Add(1)
		return nil
	}
}

// PublishBatch publishes frames with as few claims and commits as fit: each
// commit makes a whole run of frames visible at once.
func (p *Publisher) PublishBatch(ctx context.Context, frames [][]byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.check(); err != nil {
		return err
	}
	limit := p.ring.MaxPayload() / 2
	for len(frames) > 0 {
		// The longest prefix that fits in one claim.
		sizes := p.mu.sizes[:0]
		total := 0
		for _, f := range frames {
			need := (shm.RecordHeaderSize + len(f) + 7) &^ 7
			if len(sizes) > 0 && total+need > limit {
				break
			}
			if len(f) > p.ring.MaxPayload() {
				return fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, len(f), p.ring.MaxPayload())
			}
			sizes = append(sizes, len(f))
			total += need
		}
		p.mu.sizes = sizes
		if p.paused() {
			if done, err := p.pushBack(ctx, total, len(frames), shm.DropPaused); done {
				return err
			}
			continue
		}
		b, err := p.prod.ClaimBatch(uint16(schema.KindData), sizes)
		if errors.Is(err, shm.ErrFull) {
			if done, err := p.pushBack(ctx, total, len(frames), shm.DropRingFull); done {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		for _, f := range frames[:len(sizes)] {
			copy(p.prod.Next(&b), f)
		}
		p.prod.CommitBatch(&b)
		p.mu.end = b.End()
		p.published.Add(uint64(len(sizes)))
		frames = frames[len(sizes):]
	}
	return nil
}

// pushBack applies the policy when the frame cannot go in now. done says
// whether Publish returns (with err); otherwise it tries again.
func (p *Publisher) pushBack(ctx context.Context, n, frames int, reason shm.DropReason) (done bool, err error) {
	switch p.cfg.Policy {
	case PolicyDropNewest:
		p.dropped.Add(uint64(frames))
		p.ring.AddDropped(reason, uint64(frames))
		return true, nil
	case PolicyError:
		return true, ErrBackpressure
	}
	if err := ctx.Err(); err != nil {
		return true, err
	}
	if p.lost.Load() {
		// Detached while waiting (its ring is no longer drained): the
		// space will never come.
		return true, ErrLost
	}
	// Sleep until the sidecar releases space or lifts the pause (it wakes
	// the space event for both); re-check at least every 50 ms.
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if p.paused() {
		// Ring the sidecar's doorbell: if another process forged the
		// PAUSE, the sidecar puts it right now, not at its next timeout.
		ev := p.ring.DataEvent()
		ev.Signal()
		p.ring.SpaceEvent().Wait(wctx, shm.DefaultSpin, func() bool { return !p.paused() })
	} else {
		p.prod.WaitSpace(wctx, n, shm.DefaultSpin)
	}
	if err := ctx.Err(); err != nil {
		return true, err
	}
	return false, nil
}

func (p *Publisher) check() error {
	if p.mu.closed {
		return ErrClosed
	}
	if p.lost.Load() {
		return ErrLost
	}
	return nil
}

// WaitDurable returns once the sidecar's WAL has committed every frame this
// publisher published before the call (the sidecar frees ring space only
// after its WAL commit, so this waits for the ring's head to pass them).
func (p *Publisher) WaitDurable(ctx context.Context) error {
	p.mu.Lock()
	target := p.mu.end
	p.mu.Unlock()
	if p.ring.Head() >= target {
		return nil
	}
	ev := p.ring.SpaceEvent()
	for {
		if ev.Wait(ctx, shm.DefaultSpin, func() bool { return p.ring.Head() >= target || p.lost.Load() }) {
			if p.lost.Load() && p.ring.Head() < target {
				return ErrLost
			}
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// Flush waits until the sidecar has taken every frame published so far out
// of the ring. Publish has no client-side buffer, and the sidecar takes frames
// out of the ring only with its WAL commit, so Flush is WaitDurable.
func (p *Publisher) Flush(ctx context.Context) error { return p.WaitDurable(ctx) }

// Mark is a point in a publisher's stream: it stands for every frame
// published before it was taken.
type Mark uint64

// Mark returns a Mark for everything published so far.
func (p *Publisher) Mark() Mark {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Mark(p.mu.end)
}

// Durable reports whether everything before m is durable, without waiting:
// a cheap check for tools that track publish-to-durable latency.
func (p *Publisher) Durable(m Mark) bool { return p.ring.Head() >= uint64(m) }

// Stats returns the publisher's counters.
func (p *Publisher) Stats() Stats {
	return Stats{Published: p.published.Load(), Dropped: p.dropped.Load(), Rejected: p.rejected.Load(), Reattach: p.reattach.Load()}
}

// Slot returns the ring's directory slot (for logs and tests).
func (p *Publisher) Slot() int { return p.slot }

// Close detaches: it tells the sidecar (which drains what was published and
// frees the ring), closes the socket and unmaps the segment. It does not
// wait for durability; call WaitDurable first for that. Idempotent.
func (p *Publisher) Close() error {
	p.mu.Lock()
	if p.mu.closed {
		p.mu.Unlock()
		return nil
	}
	p.mu.closed = true
	p.mu.Unlock()
	close(p.stop)
	p.stopServing()
	conn := p.conn.Load()
	if b, err := shm.EncodeMessage(&shm.Message{Op: shm.OpBye}); err == nil {
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		conn.Write(b)
	}
	conn.Close()
	p.wg.Wait()
	if c := p.conn.Load(); c != conn {
		c.Close()
	}
	return p.seg.Close()
}

// socketRefusal turns a permission error from connecting to the sidecar's
// socket into ErrRefused, saying whom the socket admits and what to
// configure; nil for other errors. The socket's mode, group and ACL admit
// exactly the users the sidecar accepts (its file_mode, group and
// allow_uids), so the kernel refuses the others before the sidecar sees them.
func socketRefusal(path string, err error) error {
	if !errors.Is(err, fs.ErrPermission) {
		return nil
	}
	uid := os.Getuid()
	fi, serr := os.Stat(path)
	st, ok := statT(fi, serr)
	if !ok {
		return fmt.Errorf("%w: uid %d cannot reach the socket %s: permission denied on a directory of its path: make the sidecar's run_dir searchable (chmod 0755)",
			ErrRefused, uid, path)
	}
	group := fmt.Sprintf("gid %d", st.Gid)
	if g, err := user.LookupGroupId(strconv.FormatUint(uint64(st.Gid), 10)); err == nil {
		group = fmt.Sprintf("%s (gid %d)", g.Name, st.Gid)
	}
	return fmt.Errorf("%w: uid %d may not connect to its socket %s (mode %04o, owner uid %d, group %s), which admits the sidecar's user, its group and its allow_uids: "+
		"add uid %d to the sidecar's allow_uids, or this user to group %s (the sidecar's group key), or run the driver as uid %d",
		ErrRefused, uid, path, uint32(fi.Mode().Perm()), st.Uid, group, uid, group, st.Uid)
}

func statT(fi fs.FileInfo, err error) (*syscall.Stat_t, bool) {
	if err != nil {
		return nil, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return st, ok
}

// readWelcome reads the sidecar's answer to a hello: the welcome, or the
// error it refused with.
func readWelcome(conn *net.UnixConn, path string) (shm.Message, error) {
	buf := make([]byte, shm.MaxMessageSize+1)
	n, err := conn.Read(buf)
	if err != nil {
		return shm.Message{}, fmt.Errorf("%w: %s: no welcome: %v", ErrNoSidecar, path, err)
	}
	m, err := shm.DecodeMessage(buf[:n])
	if err != nil {
		return shm.Message{}, err
	}
	switch m.Op {
	case shm.OpWelcome:
	case shm.OpError:
		return shm.Message{}, fmt.Errorf("%w: %s: %s", ErrRefused, m.Code, m.Message)
	default:
		return shm.Message{}, fmt.Errorf("%w: expected welcome, got %q", shm.ErrProtocol, m.Op)
	}
	if m.Version != shm.ProtocolVersion {
		return shm.Message{}, fmt.Errorf("%w: sidecar speaks protocol %d, this client %d", ErrRefused, m.Version, shm.ProtocolVersion)
	}
	return m, nil
}
