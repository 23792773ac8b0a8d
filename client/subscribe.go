package client

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
)

// Filter selects frames; empty fields select everything (see shm.Filter for
// the matching rules, applied by the sidecar).
type Filter struct {
	// Producer and Device select frames of one producer or device (exact
	// match). Zero: any.
	Producer, Device string
	// Tag is a path.Match glob on point tags: a frame matches when any of
	// its points' tags does. Zero: any.
	Tag string
	// Kinds lists the frame kinds wanted. Zero: every kind.
	Kinds []schema.Kind
}

func (f Filter) empty() bool {
	return f.Producer == "" && f.Device == "" && f.Tag == "" && len(f.Kinds) == 0
}

// wire returns the filter as the hello carries it; nil selects everything.
func (f Filter) wire() *shm.Filter {
	if f.empty() {
		return nil
	}
	w := &shm.Filter{Producer: f.Producer, Device: f.Device, Tag: f.Tag}
	for _, k := range f.Kinds {
		w.Kinds = append(w.Kinds, uint16(k))
	}
	return w
}

// From is where a subscription starts. The zero From is Latest.
type From struct {
	from   string // shm.FromLatest, FromEarliest, FromSeq or FromCursor
	seq    uint64 // FromSeq
	cursor string // FromCursor
}

// Latest starts with the frames committed after the subscription starts (for
// a Live subscription: drained after it starts).
func Latest() From { return From{from: shm.FromLatest} }

// Earliest starts at the oldest frame the WAL still holds.
func Earliest() From { return From{from: shm.FromEarliest} }

// Seq starts at the frame with WAL sequence number n, or the oldest one
// after it if retention has deleted it.
func Seq(n uint64) From { return From{from: shm.FromSeq, seq: n} }

// Cursor starts right after the last frame acknowledged (Subscription.Ack) on
// the named durable cursor; a new cursor starts at the oldest frame the WAL
// holds. The sidecar allows one subscription per cursor at a time.
func Cursor(name string) From { return From{from: shm.FromCursor, cursor: name} }

// String returns "latest", "earliest", "seq:N" or "cursor:NAME".
func (f From) String() string {
	switch f.from {
	case "", shm.FromLatest:
		return shm.FromLatest
	case shm.FromSeq:
		return fmt.Sprintf("seq:%d", f.seq)
	case shm.FromCursor:
		return "cursor:" + f.cursor
	}
	return f.from
}

// SubscribeOptions says how to reach the sidecar and what kind of
// subscription to ask for. The zero value subscribes on the default bus.
type SubscribeOptions struct {
	// Name is the bus name. Zero: $FRAMEBUS_NAME, else "default" (as
	// Config.Name).
	Name string
	// RunDir is the sidecar's socket directory. Zero: shm.DefaultRunDir (as
	// Config.RunDir).
	RunDir string
	// RingBytes requests the egress ring's size: a power of two of at least
	// shm.MinRingCapacity. Zero: the sidecar's default.
	RingBytes int
	// Live asks for a live-only subscription: frames as the sidecar drains
	// them, before their WAL commit; a full egress ring loses frames
	// (counted, see Subscription.Lost). A live subscription starts at
	// Latest. Zero: frames are delivered once durable, from the WAL when the
	// subscriber is behind, and none is lost to a slow subscriber.
	Live bool
	// Logger receives lost-frame and error notices. Zero: discard.
	Logger *slog.Logger
	// Spin is how long Next polls an empty ring before it sleeps on the
	// futex: spinning costs a core, sleeping costs a wake-up (tens of µs)
	// per frame. Zero: shm.DefaultSpin (20 µs); negative: no spin.
	Spin time.Duration
}

// Frame is one delivered frame. Data points into the egress ring in shared
// memory: read it in place with the schema package's accessors (e.g.
// schema.RootDataFrame, or schema.AppendJSON); copy what must outlive the
// frame. It is valid until the next call of Next or Close.
//
// The sidecar verified every frame when it was published. The ring is
// writable by every process that maps the segment, so an application that
// does not trust the other processes on the bus reads with the verifying
// schema.View* functions instead of Root*.
type Frame struct {
	Seq  uint64 // WAL sequence number
	Kind schema.Kind
	Data []byte
}

// Subscription receives frames from the sidecar through an egress ring. Next
// is for one goroutine at a time; Ack, Lost, Start and Close may be called
// from any goroutine, and Close unblocks a waiting Next.
//
// # Lifecycle
//
// Subscribe sends hello{role: subscriber, filter, from, ...}, maps the
// segment and the egress ring named in the welcome, and starts a goroutine
// that reads the socket (lost notices, errors, and its closing). Close sends
// bye, closes the socket, stops that goroutine and unmaps the segment.
//
// # Sidecar restarts
//
// A subscription does not survive a restart of the sidecar: when the socket
// closes, Next returns ErrLost, and frames still in the ring are not
// delivered (the restarted sidecar frees the ring and may reuse its memory,
// so they are not read). Subscribe again: with Cursor, from the cursor,
// which has what was acknowledged; otherwise with Seq(last+1).
type Subscription struct {
	log    *slog.Logger
	conn   *net.UnixConn
	seg    *shm.Segment
	ring   *shm.Ring
	cons   *shm.Consumer
	start  uint64
	cursor string        // the durable cursor's name, "" if none
	spin   time.Duration // Next's poll before it sleeps

	lost atomic.Uint64
	// stopping is set when Close begins, gone when the socket closes;
	// either ends Next's wait.
	stopping atomic.Bool
	gone     atomic.Bool

	// rd is held by Next for its whole call: Close takes it before it
	// releases the ring, so nothing reads the mapping after it is unmapped.
	rd struct {
		sync.Mutex
		pending uint64 // End of the record Next returned last; released by the next call
		rec     shm.Record
		got     bool
	}
	take  func(shm.Record) // stores a polled record in rd (allocated once)
	ready func() bool      // Next's wait condition (allocated once)
	wake  func()           // wakes Next when its ctx ends, unless Close has begun (allocated once)

	// mu orders the reader's wake-up against Close, so that the reader
	// does not signal the ring's event after Close has said bye (the
	// sidecar then frees the ring, and may reuse its memory).
	mu struct {
		sync.Mutex
		closed bool
	}
	wg sync.WaitGroup
}

// Subscribe asks the sidecar for frames matching f, starting at from, and
// maps the egress ring it assigns. It fails with ErrNoSidecar if nobody
// listens and with ErrRefused (carrying the sidecar's code and reason) if the
// sidecar says no: a bad filter, a cursor already in use, no room for the
// ring.
func Subscribe(ctx context.Context, f Filter, from From, opts SubscribeOptions) (*Subscription, error) {
	hello, err := subscribeHello(f, from, opts)
	if err != nil {
		return nil, err
	}
	cfg := Config{Name: opts.Name, RunDir: opts.RunDir, Logger: opts.Logger}
	cfg.ensureDefaults()
	hello.Producer = cfg.Producer
	conn, welcome, err := handshake(ctx, &cfg, hello)
	if err != nil {
		return nil, err
	}
	seg, ring, err := openRing(welcome.Segment, welcome.Slot, welcome.Generation, shm.KindEgress)
	var cons *shm.Consumer
	if err == nil {
		if cons, err = ring.Consumer(); err != nil {
			seg.Close()
		}
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("client: open the egress ring the sidecar named: %w", err)
	}
	s := &Subscription{log: cfg.Logger, conn: conn, seg: seg, ring: ring, cons: cons, start: welcome.Seq, cursor: from.cursor, spin: shm.DefaultSpin}
	if opts.Spin != 0 {
		s.spin = max(opts.Spin, 0)
	}
	s.rd.pending = cons.ReadPos()
	s.take = func(r shm.Record) { s.rd.rec, s.rd.got = r, true }
	s.ready = func() bool { return s.cons.Ready() || s.stopping.Load() || s.gone.Load() }
	s.wake = func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.mu.closed && !s.gone.Load() {
			s.ring.DataEvent().Wake()
		}
	}
	s.wg.Add(1)
	go s.watch()
	return s, nil
}

// subscribeHello builds the subscriber's hello and checks what the client can
// check itself.
func subscribeHello(f Filter, from From, opts SubscribeOptions) (*shm.Message, error) {
	var errs []error
	if f.Tag != "" {
		if _, err := path.Match(f.Tag, ""); err != nil {
			errs = append(errs, fmt.Errorf("client: Filter.Tag %q is not a valid glob: %v", f.Tag, err))
		}
	}
	switch from.from {
	case "", shm.FromLatest, shm.FromEarliest, shm.FromSeq:
	case shm.FromCursor:
		if from.cursor == "" {
			errs = append(errs, errors.New("client: Cursor needs a name"))
		}
	default:
		errs = append(errs, fmt.Errorf("client: unknown start %q", from.from))
	}
	if opts.RingBytes < 0 {
		errs = append(errs, fmt.Errorf("client: SubscribeOptions.RingBytes %d is negative", opts.RingBytes))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	fr := from.from
	if fr == "" {
		fr = shm.FromLatest
	}
	return &shm.Message{Op: shm.OpHello, Version: shm.ProtocolVersion, Role: shm.RoleSubscriber, RingBytes: opts.RingBytes,
		Filter: f.wire(), From: fr, Seq: from.seq, Cursor: from.cursor, Live: opts.Live}, nil
}

// watch reads the socket until it closes: lost notices and errors.
func (s *Subscription) watch() {
	defer s.wg.Done()
	buf := make([]byte, shm.MaxMessageSize+1)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			break
		}
		m, err := shm.DecodeMessage(buf[:n])
		if err != nil {
			s.log.Warn("malformed message from the sidecar", "err", err)
			continue
		}
		switch m.Op {
		case shm.OpLost:
			s.lost.Add(m.Count)
			s.log.Warn("frames lost to this subscription", "count", m.Count, "reason", m.Message)
		case shm.OpError:
			s.log.Error("sidecar error for this subscription", "code", m.Code, "reason", m.Message)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.mu.closed {
		s.log.Warn("the sidecar closed the subscription's socket")
		s.gone.Store(true)
		s.ring.DataEvent().Wake()
	}
}

// Start returns the first sequence number the sidecar said it may deliver
// (the welcome's seq): frames before it were not selected by the start.
func (s *Subscription) Start() uint64 { return s.start }

// Next returns the next frame, waiting (a brief spin, then a futex sleep on
// the ring's data event) until one arrives or ctx is done. The Data of the
// frame it returned last is then invalid (its ring space is released, in
// chunks of a sixteenth of the ring, or before Next sleeps).
// It returns ErrClosed after Close and ErrLost once the sidecar has gone
// away (its socket closed).
func (s *Subscription) Next(ctx context.Context) (Frame, error) {
	s.rd.Lock()
	defer s.rd.Unlock()
	if s.stopping.Load() {
		return Frame{}, ErrClosed
	}
	if s.gone.Load() {
		return Frame{}, ErrLost
	}
	// Space is released in chunks of a sixteenth of the ring (and before
	// a sleep): a release per frame would wake the sidecar's writer per
	// frame when the ring is full.
	if s.rd.pending-s.cons.Head() >= uint64(s.ring.Capacity()/16) {
		if err := s.cons.Release(s.rd.pending); err != nil {
			return Frame{}, err
		}
	}
	for {
		s.rd.got = false
		_, err := s.cons.Poll(1, s.take)
		if err != nil {
			return Frame{}, fmt.Errorf("client: egress ring: %w", err)
		}
		if s.rd.got {
			r := s.rd.rec
			s.rd.pending = r.End
			if len(r.Payload) < shm.EgressHeaderSize {
				return Frame{}, fmt.Errorf("%w: egress record of %d bytes is shorter than its sequence number", shm.ErrProtocol, len(r.Payload))
			}
			return Frame{Seq: binary.LittleEndian.Uint64(r.Payload), Kind: schema.Kind(r.Type), Data: r.Payload[shm.EgressHeaderSize:]}, nil
		}
		switch {
		case s.stopping.Load():
			return Frame{}, ErrClosed
		case s.gone.Load():
			return Frame{}, ErrLost
		}
		if err := ctx.Err(); err != nil {
			return Frame{}, err
		}
		if s.rd.pending > s.cons.Head() {
			if err := s.cons.Release(s.rd.pending); err != nil {
				return Frame{}, err
			}
		}
		waitEvent(ctx, s.ring.DataEvent(), s.spin, s.ready, s.wake)
	}
}

// Ack tells the sidecar that everything up to seq has been processed: the
// durable cursor moves there, and a later Subscribe with the same Cursor
// starts after it. Only cursor subscriptions acknowledge. The sidecar
// applies acks asynchronously; one it refuses is logged.
func (s *Subscription) Ack(seq uint64) error {
	if s.cursor == "" {
		return errors.New("client: Ack needs a subscription started with Cursor")
	}
	if s.stopping.Load() {
		return ErrClosed
	}
	if s.gone.Load() {
		return ErrLost
	}
	b, err := shm.EncodeMessage(&shm.Message{Op: shm.OpAck, Seq: seq})
	if err != nil {
		return err
	}
	if _, err := s.conn.Write(b); err != nil {
		if s.stopping.Load() {
			return ErrClosed
		}
		return fmt.Errorf("%w: ack: %v", ErrLost, err)
	}
	return nil
}

// Lost returns how many frames the sidecar reported this subscription will
// never receive (retention deleted them before they were delivered, or a
// live ring was full), cumulative.
func (s *Subscription) Lost() uint64 { return s.lost.Load() }

// Close ends the subscription: it wakes a waiting Next (which returns
// ErrClosed), sends bye (the sidecar frees the ring), closes the socket and
// unmaps the segment. Idempotent.
func (s *Subscription) Close() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil
	}
	s.mu.closed = true
	s.stopping.Store(true)
	if !s.gone.Load() {
		s.ring.DataEvent().Wake()
	}
	s.mu.Unlock()
	s.rd.Lock() // Next has returned and will not touch the ring again
	defer s.rd.Unlock()
	if b, err := shm.EncodeMessage(&shm.Message{Op: shm.OpBye}); err == nil {
		s.conn.SetWriteDeadline(time.Now().Add(time.Second))
		s.conn.Write(b)
	}
	s.conn.Close()
	s.wg.Wait()
	return s.seg.Close()
}

// waitEvent sleeps on ev until cond is true (true) or ctx is done (false),
// like ev.Wait, with one difference: on cancellation the sleeper is woken by
// wake, not by a Wake of ev that Event.Wait schedules itself. That one runs
// in a goroutine of its own which may not have run when Wait returns, and
// so could write to the ring after the caller has unmapped the segment;
// wake checks, under the caller's lock, that the ring is still mapped (and
// still the caller's).
func waitEvent(ctx context.Context, ev shm.Event, spin time.Duration, cond func() bool, wake func()) bool {
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, wake)
		defer stop()
	}
	return ev.Wait(noDone{ctx}, spin, cond)
}

// noDone is a context with its parent's deadline and error but no Done
// channel: Event.Wait then sleeps at most until the deadline, checks Err
// whenever it wakes, and schedules no wake-up of its own.
type noDone struct{ context.Context }

func (noDone) Done() <-chan struct{} { return nil }

// handshake connects to the sidecar's socket, sends hello and returns the
// connection and the welcome. It fails with ErrNoSidecar if nobody answers
// and with ErrRefused if the sidecar answers with an error.
func handshake(ctx context.Context, cfg *Config, hello *shm.Message) (*net.UnixConn, shm.Message, error) {
	p := shm.SocketPath(cfg.RunDir, cfg.Name)
	var d net.Dialer
	c, err := d.DialContext(ctx, "unixpacket", p)
	if err != nil {
		if ctx.Err() != nil {
			return nil, shm.Message{}, ctx.Err()
		}
		if r := socketRefusal(p, err); r != nil {
			return nil, shm.Message{}, r
		}
		return nil, shm.Message{}, fmt.Errorf("%w: %s: %v (is `framebus run --name %s` running?)", ErrNoSidecar, p, err, cfg.Name)
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
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	b, err := shm.EncodeMessage(hello)
	if err != nil {
		return fail(err)
	}
	if _, err := conn.Write(b); err != nil {
		return fail(fmt.Errorf("%w: %s: %v", ErrNoSidecar, p, err))
	}
	m, err := readWelcome(conn, p)
	if err != nil {
		if ctx.Err() != nil {
			return fail(ctx.Err())
		}
		return fail(err)
	}
	if !stop() {
		return fail(ctx.Err())
	}
	conn.SetDeadline(time.Time{})
	return conn, m, nil
}

// openRing maps the segment at segPath and opens ring slot, which must be of
// kind kind and generation gen.
func openRing(segPath string, slot int, gen uint64, kind shm.RingKind) (*shm.Segment, *shm.Ring, error) {
	seg, err := shm.Open(filepath.Dir(segPath), strings.TrimPrefix(filepath.Base(segPath), "framebus-"))
	if err != nil {
		return nil, nil, err
	}
	ring, err := openSlot(seg, slot, gen, kind)
	if err != nil {
		seg.Close()
		return nil, nil, err
	}
	return seg, ring, nil
}

// openSlot opens ring slot of a mapped segment and checks its kind and
// generation.
func openSlot(seg *shm.Segment, slot int, gen uint64, kind shm.RingKind) (*shm.Ring, error) {
	ring, err := seg.Ring(slot)
	if err != nil {
		return nil, err
	}
	if ring.Generation() != gen {
		return nil, fmt.Errorf("ring %d has generation %d, the sidecar said %d", slot, ring.Generation(), gen)
	}
	if ring.Kind() != kind {
		return nil, fmt.Errorf("ring %d is %v, want %v", slot, ring.Kind(), kind)
	}
	return ring, nil
}
