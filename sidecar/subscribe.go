package sidecar

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"path"
	"slices"
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

// Subscriptions.
//
// Every subscriber has an egress ring that the sidecar writes and the
// subscriber reads. A WAL subscriber is fed by its own goroutine (feed),
// which reads committed frames from the WAL from its next sequence number,
// filters them and copies them into the ring; when the ring is full it
// waits for the subscriber outside any WAL transaction. Ingest never waits
// for a subscriber: a slow one only falls behind and reads older frames
// from the WAL later (until retention deletes them: then its cursor's
// policy applies, see wal.Options.CursorPolicy). A live-only subscriber is
// fed by the drain loop itself, right after each batch is appended to the
// WAL (before it is durable); a full ring there loses the frames, counted
// and reported to the subscriber.

// defaultEgressBytes is the egress ring size when the subscriber does not
// ask for one.
const defaultEgressBytes = 4 << 20

// lostNoticeEvery is how often a subscriber is told about lost frames.
const lostNoticeEvery = 100 * time.Millisecond

// subscriber is one subscription and its egress ring.
type subscriber struct {
	slot   int
	gen    uint64
	label  string // for logs and metrics: the cursor name, or "slot N"
	pid    int
	filter shm.Filter
	cursor string // durable cursor name, "" if none
	live   bool
	ring   *shm.Ring     // nil for an HTTP subscription
	prod   *shm.Producer // the feeder's (or, live, the drain loop's)
	sink   sink          // where the feeder puts frames
	conn   *net.UnixConn
	ctx    context.Context // done when the subscription ends
	cancel context.CancelFunc

	next atomic.Uint64 // next sequence number to consider
	// acked is the last sequence number the cursor holds (start, or the
	// subscriber's last ack); lastPut, owned by the feeder, the last one
	// it delivered. While acked ≥ lastPut every delivered frame is acked,
	// and the feeder moves the cursor over the frames its filter skipped
	// (see advanceCursor): a filter that rarely matches does not hold
	// retention.
	acked       atomic.Uint64
	lastPut     uint64
	lastAdvance time.Time // feeder-owned: when advanceCursor last moved the cursor
	delivered   atomic.Uint64
	lost        atomic.Uint64
	caughtUp    atomic.Int64 // Unix ns when the feeder last reached the durable watermark
	need        int          // bytes the frame that did not fit needs (feeder)
	// readErr is why the feeder cannot read the WAL now (nil when it
	// can): written by the feeder, read by the status.
	readErr atomic.Pointer[string]
}

func (sub *subscriber) end() { sub.cancel() }

// subscribers is the set the drain loop and the metrics read.
type subscriberSet struct {
	mu      sync.Mutex
	all     map[int]*subscriber // by slot
	cursors map[string]bool     // cursor names held by a subscription
	live    atomic.Pointer[[]*subscriber]
}

func (ss *subscriberSet) add(sub *subscriber) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.all == nil {
		ss.all = map[int]*subscriber{}
	}
	ss.all[sub.slot] = sub
	ss.publishLive()
}

// remove takes sub out of the set and frees its cursor name.
func (ss *subscriberSet) remove(sub *subscriber) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.all[sub.slot] == sub {
		delete(ss.all, sub.slot)
	}
	if sub.cursor != "" {
		delete(ss.cursors, sub.cursor)
	}
	ss.publishLive()
}

// reserveCursor claims a durable cursor's name for one subscription; false
// if another holds it.
func (ss *subscriberSet) reserveCursor(name string) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.cursors[name] {
		return false
	}
	if ss.cursors == nil {
		ss.cursors = map[string]bool{}
	}
	ss.cursors[name] = true
	return true
}

func (ss *subscriberSet) releaseCursor(name string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.cursors, name)
}

func (ss *subscriberSet) publishLive() {
	var live []*subscriber
	for _, sub := range ss.all {
		if sub.live {
			live = append(live, sub)
		}
	}
	ss.live.Store(&live)
}

func (ss *subscriberSet) list() []*subscriber {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]*subscriber, 0, len(ss.all))
	for _, sub := range ss.all {
		out = append(out, sub)
	}
	slices.SortFunc(out, func(a, b *subscriber) int { return a.slot - b.slot })
	return out
}

// hasCursor reports whether a subscription holds the cursor.
func (ss *subscriberSet) hasCursor(name string) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.cursors[name]
}

// commitSignal returns a channel closed at the next WAL commit.
func (s *Sidecar) commitSignal() <-chan struct{} {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	return s.commitC
}

// signalCommit wakes everything waiting for a commit.
func (s *Sidecar) signalCommit() {
	s.commitMu.Lock()
	close(s.commitC)
	s.commitC = make(chan struct{})
	s.commitMu.Unlock()
}

// validCursorName: 1..128 printable ASCII characters without '/'.
func validCursorName(n string) bool {
	if n == "" || len(n) > 128 {
		return false
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; c < 0x21 || c > 0x7e || c == '/' {
			return false
		}
	}
	return true
}

// startSeq resolves where a subscription starts.
func (s *Sidecar) startSeq(hello *shm.Message) (uint64, error) {
	durable := s.wal.Durable()
	first := s.wal.FirstSeq()
	if first == 0 {
		first = durable + 1
	}
	switch hello.From {
	case "", shm.FromLatest:
		if hello.Live {
			return s.wal.LastSeq() + 1, nil
		}
		return durable + 1, nil
	case shm.FromEarliest:
		return first, nil
	case shm.FromSeq:
		return max(hello.Seq, 1), nil
	case shm.FromCursor:
		if !validCursorName(hello.Cursor) {
			return 0, fmt.Errorf("cursor name %q: want 1 to 128 printable characters without '/' or spaces", hello.Cursor)
		}
		if c, ok := s.wal.Cursor(hello.Cursor); ok {
			return c.Acked + 1, nil
		}
		return first, nil
	}
	return 0, fmt.Errorf("from %q: want latest, earliest, seq or cursor", hello.From)
}

// attachSubscriber allocates the egress ring and starts feeding it.
func (s *Sidecar) attachSubscriber(cred *unix.Ucred, hello *shm.Message, c *net.UnixConn) (*subscriber, string, error) {
	var f shm.Filter
	if hello.Filter != nil {
		f = *hello.Filter
	}
	if f.Tag != "" {
		if _, err := matchGlob(f.Tag, ""); err != nil {
			return nil, shm.CodeBadHello, fmt.Errorf("tag glob %q: %v", f.Tag, err)
		}
	}
	for _, k := range f.Kinds {
		if !kindValid(k) {
			return nil, shm.CodeBadHello, fmt.Errorf("frame kind %d: want 1 (data), 2 (command) or 3 (ack)", k)
		}
	}
	if hello.Live && hello.From != "" && hello.From != shm.FromLatest {
		return nil, shm.CodeBadHello, errors.New("a live-only subscription starts at latest: it does not read the WAL")
	}
	next, err := s.startSeq(hello)
	if err != nil {
		return nil, shm.CodeBadHello, err
	}
	if hello.From == shm.FromCursor {
		if !s.subs.reserveCursor(hello.Cursor) {
			return nil, shm.CodeCursor, fmt.Errorf("cursor %q is in use by another subscription: one subscriber per cursor", hello.Cursor)
		}
		ok := false
		defer func() {
			if !ok {
				s.subs.releaseCursor(hello.Cursor)
			}
		}()
		sub, code, err := s.allocSubscriber(cred, hello, c, f, next)
		ok = err == nil
		return sub, code, err
	}
	return s.allocSubscriber(cred, hello, c, f, next)
}

// allocSubscriber allocates the egress ring of a subscription.
func (s *Sidecar) allocSubscriber(cred *unix.Ucred, hello *shm.Message, c *net.UnixConn, f shm.Filter, next uint64) (*subscriber, string, error) {
	// Egress rings share the segment with the drivers' rings: by default
	// no larger than a driver's.
	size := min(defaultEgressBytes, s.cfg.RingBytes)
	if hello.RingBytes != 0 {
		size = hello.RingBytes
		if size < shm.MinRingCapacity || size > s.cfg.MaxRingBytes || size&(size-1) != 0 {
			return nil, shm.CodeBadHello, fmt.Errorf("ring_bytes %d must be a power of two between %d and %d (max_ring_bytes)", size, shm.MinRingCapacity, s.cfg.MaxRingBytes)
		}
	}
	s.mu.Lock()
	if s.mu.stopping {
		s.mu.Unlock()
		return nil, shm.CodeShutdown, errors.New("the sidecar is shutting down; retry when it is back")
	}
	gen := s.epoch<<32 | uint64(s.mu.nextGen)
	s.mu.nextGen++
	s.mu.Unlock()
	start, _ := shm.ProcessStart(int(cred.Pid))
	slot, err := s.seg.AllocRing(shm.RingSpec{Kind: shm.KindEgress, Capacity: size, Notify: shm.NotifyRing, Generation: gen,
		Owner: shm.Owner{Pid: int(cred.Pid), UID: cred.Uid, Start: start, Name: "subscriber"}})
	if err != nil {
		return nil, shm.CodeNoRing, fmt.Errorf("no egress ring for this subscriber: %w (%d subscriptions hold rings now; raise max_rings or shm_bytes, or ask for a smaller ring)", err, len(s.subs.list()))
	}
	ring, err := s.seg.Ring(slot)
	var prod *shm.Producer
	if err == nil {
		prod, err = ring.Producer(sidecarProducerID)
	}
	if err != nil {
		s.seg.FreeRing(slot)
		return nil, shm.CodeNoRing, err
	}
	sub := &subscriber{slot: slot, gen: gen, pid: int(cred.Pid), filter: f, cursor: "", live: hello.Live, ring: ring, prod: prod,
		conn: c}
	sub.ctx, sub.cancel = context.WithCancel(context.Background())
	sub.sink = ringSink{s: s, sub: sub}
	sub.label = "slot:" + strconv.Itoa(slot)
	if hello.From == shm.FromCursor {
		sub.cursor = hello.Cursor
		sub.label = "cursor:" + hello.Cursor
	}
	sub.next.Store(next)
	sub.acked.Store(next - 1)
	sub.caughtUp.Store(time.Now().UnixNano())
	return sub, "", nil
}

// serveSubscriber runs a subscriber's connection after its welcome: acks
// and bye from the socket, lost notices to it; its closing ends the
// subscription and frees the ring.
func (s *Sidecar) serveSubscriber(sub *subscriber, c *net.UnixConn, buf []byte) {
	log := s.log.With("subscriber", sub.label, "slot", sub.slot, "pid", sub.pid)
	if sub.cursor != "" {
		if _, ok := s.wal.Cursor(sub.cursor); !ok {
			// A new cursor holds retention from where it starts.
			if err := s.wal.SetCursor(sub.cursor, sub.next.Load()-1); err != nil {
				log.Error("cannot create the durable cursor", "err", err)
				s.reply(c, &shm.Message{Op: shm.OpError, Code: shm.CodeCursor, Message: err.Error()})
				s.subs.releaseCursor(sub.cursor)
				s.seg.FreeRing(sub.slot)
				return
			}
		}
	}
	s.subs.add(sub)
	log.Info("subscriber attached", "from_seq", sub.next.Load(), "live", sub.live, "filter", filterString(sub.filter))
	if !sub.live {
		s.feeders.Add(1)
		go func() {
			defer s.feeders.Done()
			s.feed(sub, log)
		}()
	}
	go s.noticeLost(sub, c)
	bad := 0
	for {
		n, err := c.Read(buf)
		if err != nil {
			break
		}
		m, err := shm.DecodeMessage(buf[:n])
		if err == nil && m.Op == shm.OpBye {
			break
		}
		if err == nil && m.Op == shm.OpAck && sub.cursor != "" {
			if last := sub.next.Load() - 1; m.Seq > last {
				msg := fmt.Sprintf("ack of seq %d refused: the last frame delivered is %d; ack only sequence numbers you received", m.Seq, last)
				log.Warn("cursor ack beyond what was delivered", "seq", m.Seq, "delivered_up_to", last)
				s.reply(c, &shm.Message{Op: shm.OpError, Code: shm.CodeCursor, Message: msg})
				continue
			}
			if err := s.wal.SetCursor(sub.cursor, m.Seq); err != nil {
				log.Warn("cursor ack refused", "seq", m.Seq, "err", err)
				s.reply(c, &shm.Message{Op: shm.OpError, Code: shm.CodeCursor, Message: err.Error()})
				continue
			}
			for a := sub.acked.Load(); m.Seq > a && !sub.acked.CompareAndSwap(a, m.Seq); a = sub.acked.Load() {
			}
			continue
		}
		if err == nil {
			err = fmt.Errorf("unexpected %q", m.Op)
		}
		bad++
		s.m.protocolErrors.Inc()
		log.Warn("protocol error from subscriber", "err", err, "count", bad)
		s.reply(c, &shm.Message{Op: shm.OpError, Code: shm.CodeProtocol, Message: err.Error()})
		if bad >= maxProtocolErrors {
			s.reply(c, &shm.Message{Op: shm.OpError, Code: shm.CodeProtocol, Message: "too many malformed messages: disconnected"})
			break
		}
	}
	s.subs.remove(sub) // first: the slot is freed below and may be reused
	sub.end()
	// The feeder may be writing the ring: it stops at done; the ring is
	// freed once it has (see feed), or here for live subscriptions, whose
	// writer (the drain loop) no longer sees the subscriber after remove
	// and a drain pass.
	if sub.live {
		s.afterDrainPass(func() { s.seg.FreeRing(sub.slot) })
	}
	log.Info("subscriber detached", "delivered", sub.delivered.Load(), "lost", sub.lost.Load())
}

// noticeLost tells the subscriber about frames it lost, at most every
// lostNoticeEvery.
func (s *Sidecar) noticeLost(sub *subscriber, c *net.UnixConn) {
	t := time.NewTicker(lostNoticeEvery)
	defer t.Stop()
	var told uint64
	for {
		select {
		case <-sub.ctx.Done():
			return
		case <-t.C:
		}
		if n := sub.lost.Load(); n > told {
			s.reply(c, &shm.Message{Op: shm.OpLost, Count: n - told, Message: "frames this subscription will not receive (retention deleted them, or its live ring was full)"})
			told = n
		}
	}
}

var errEgressFull = errors.New("egress ring full")

// feed copies committed frames from the WAL into a subscriber's ring.
func (s *Sidecar) feed(sub *subscriber, log feedLogger) {
	if sub.ring != nil {
		defer s.seg.FreeRing(sub.slot)
	}
	for {
		select {
		case <-sub.ctx.Done():
			return
		default:
		}
		commit := s.commitSignal()
		durable := s.wal.Durable()
		next := sub.next.Load()
		if next > durable {
			if err := sub.sink.flush(sub.ctx); err != nil {
				return
			}
			sub.caughtUp.Store(time.Now().UnixNano())
			s.advanceCursor(sub, log)
			select {
			case <-commit:
			case <-sub.ctx.Done():
				return
			}
			continue
		}
		if first := s.wal.FirstSeq(); first > next {
			// Retention deleted frames this subscriber had not read.
			sub.lost.Add(first - next)
			log.Warn("subscriber lost frames to retention", "frames", first-next, "from_seq", next)
			next = first
			sub.next.Store(next)
		}
		err := s.wal.Iterate(next, func(seq uint64, f wal.Frame) error {
			if seq > durable {
				return errStopIter
			}
			if seq > next {
				// A gap: retention deleted frames meanwhile.
				sub.lost.Add(seq - next)
			}
			next = seq
			if matchFrame(&sub.filter, schema.Kind(f.Kind), f.Data) {
				if !sub.sink.put(seq, f) {
					return errEgressFull
				}
				sub.lastPut = seq
			}
			next = seq + 1
			sub.next.Store(next)
			return nil
		})
		sub.sink.signal()
		if err == nil || errors.Is(err, errStopIter) || errors.Is(err, errEgressFull) {
			if sub.readErr.Swap(nil) != nil {
				log.Info("a subscriber reads the WAL again", "next_seq", next)
			}
		}
		switch {
		case errors.Is(err, errEgressFull):
			// Wait for the subscriber outside the WAL's read
			// transaction.
			if err := sub.sink.wait(sub.ctx); err != nil {
				return
			}
		case err == nil, errors.Is(err, errStopIter):
		case errors.Is(err, wal.ErrClosed):
			return
		default:
			// Logged when the error changes, not at every retry; the
			// status shows it meanwhile.
			msg := err.Error()
			if prev := sub.readErr.Swap(&msg); prev == nil || *prev != msg {
				if errors.Is(err, wal.ErrCorrupt) {
					log.Error("a subscriber stops before a damaged WAL segment: it has every frame before it and gets none after it. "+
						"Stop the sidecar, run `framebus wal verify`, then start it once with --wal-recover (docs/wal-recovery.md)", "next_seq", next, "err", err)
				} else {
					log.Warn("reading the WAL for a subscriber failed; retrying every second", "next_seq", next, "err", err)
				}
			}
			select {
			case <-time.After(time.Second):
			case <-sub.ctx.Done():
				return
			}
		}
	}
}

// feedLogger is what feed logs through (a *slog.Logger).
type feedLogger interface {
	Info(string, ...any)
	Warn(string, ...any)
	Error(string, ...any)
}

var errStopIter = errors.New("stop")

// cursorAdvanceEvery bounds how often a feeder moves a cursor over the
// frames its filter skipped (each move is a WAL change to commit).
const cursorAdvanceEvery = 100 * time.Millisecond

// advanceCursor moves a durable cursor whose subscriber has acked every
// frame delivered to it up to the feeder's position: the frames between
// are ones the filter skipped, which the subscriber would never receive
// nor ack, and which would otherwise hold retention (and, under the retain
// policy, pause ingest at cursor_max_bytes) for a subscriber that has
// done all it can. Feeder goroutine.
func (s *Sidecar) advanceCursor(sub *subscriber, log interface{ Warn(string, ...any) }) {
	if sub.cursor == "" {
		return
	}
	acked, pos := sub.acked.Load(), sub.next.Load()-1
	if acked < sub.lastPut || pos <= acked || time.Since(sub.lastAdvance) < cursorAdvanceEvery {
		return
	}
	if err := s.wal.SetCursor(sub.cursor, pos); err != nil {
		log.Warn("moving the cursor over filtered-out frames failed", "seq", pos, "err", err)
		return
	}
	sub.lastAdvance = time.Now()
	for a := sub.acked.Load(); pos > a && !sub.acked.CompareAndSwap(a, pos); a = sub.acked.Load() {
	}
}

// sink is where a feeder puts the frames of a subscription.
type sink interface {
	// put delivers one frame, or returns false if there is no room now.
	put(seq uint64, f wal.Frame) bool
	// wait returns when put may succeed again (called outside any WAL
	// transaction); an error ends the subscription.
	wait(ctx context.Context) error
	// flush pushes out what put buffered (the feeder has caught up).
	flush(ctx context.Context) error
	// signal wakes the reader after a run of puts.
	signal()
}

// ringSink writes into the subscriber's egress ring.
type ringSink struct {
	s   *Sidecar
	sub *subscriber
}

func (r ringSink) put(seq uint64, f wal.Frame) bool {
	if !r.s.writeEgress(r.sub, seq, f) {
		r.sub.need = shm.EgressHeaderSize + len(f.Data)
		return false
	}
	return true
}

func (r ringSink) wait(ctx context.Context) error {
	// Wait for a quarter of the ring, not just the one frame: every
	// wake-up then delivers a batch (and reads the WAL once for it).
	r.sub.prod.WaitSpace(ctx, max(r.sub.need, r.sub.ring.Capacity()/4), shm.DefaultSpin)
	return ctx.Err()
}

func (r ringSink) flush(context.Context) error { return nil }

func (r ringSink) signal() { r.sub.prod.Signal() }

// writeEgress copies one frame into the subscriber's ring: [seq][frame].
// It returns false if the ring has no room now; a frame the ring can never
// hold counts as lost.
func (s *Sidecar) writeEgress(sub *subscriber, seq uint64, f wal.Frame) bool {
	cl, err := sub.prod.Claim(f.Kind, shm.EgressHeaderSize+len(f.Data))
	if errors.Is(err, shm.ErrTooLarge) {
		sub.lost.Add(1)
		return true
	}
	if err != nil {
		return false
	}
	binary.LittleEndian.PutUint64(cl.Buf, seq)
	copy(cl.Buf[shm.EgressHeaderSize:], f.Data)
	// One wake-up per batch, not per frame: the caller signals (see
	// feedLive and feed).
	sub.prod.CommitQuiet(cl)
	sub.delivered.Add(1)
	return true
}

// feedLive hands a just-appended batch to the live-only subscribers (drain
// goroutine). frames[i] has sequence number last-len(frames)+1+i.
func (s *Sidecar) feedLive(frames []wal.Frame, last uint64) {
	lp := s.subs.live.Load()
	if lp == nil || len(*lp) == 0 {
		return
	}
	first := last - uint64(len(frames)) + 1
	for _, sub := range *lp {
		if sub.ctx.Err() != nil {
			continue
		}
		for i := range frames {
			f := frames[i]
			if !matchFrame(&sub.filter, schema.Kind(f.Kind), f.Data) {
				continue
			}
			if !s.writeEgress(sub, first+uint64(i), f) {
				sub.lost.Add(1)
			}
		}
		sub.prod.Signal()
		sub.next.Store(last + 1)
	}
}

// afterDrainPass runs fn once the drain loop has finished the pass in
// progress (so that it no longer uses what a removed subscriber owned).
func (s *Sidecar) afterDrainPass(fn func()) {
	s.mu.Lock()
	s.mu.afterPass = append(s.mu.afterPass, fn)
	s.mu.Unlock()
	s.wake.Wake()
}

// runAfterPass runs the functions queued by afterDrainPass (drain
// goroutine, between passes).
func (s *Sidecar) runAfterPass() {
	s.mu.Lock()
	fns := s.mu.afterPass
	s.mu.afterPass = nil
	audit := s.mu.liveAudit
	s.mu.liveAudit = nil
	s.mu.Unlock()
	for _, a := range audit {
		s.feedLive([]wal.Frame{a.f}, a.seq)
	}
	for _, fn := range fns {
		fn()
	}
}

// matchFrame applies a subscription filter to a verified frame.
func matchFrame(f *shm.Filter, kind schema.Kind, buf []byte) bool {
	if len(f.Kinds) > 0 && !slices.Contains(f.Kinds, uint16(kind)) {
		return false
	}
	return schema.Match(kind, buf, f.Producer, f.Device, f.Tag)
}

func filterString(f shm.Filter) string {
	var parts []string
	if f.Producer != "" {
		parts = append(parts, "producer="+f.Producer)
	}
	if f.Device != "" {
		parts = append(parts, "device="+f.Device)
	}
	if f.Tag != "" {
		parts = append(parts, "tag="+f.Tag)
	}
	for _, k := range f.Kinds {
		parts = append(parts, "kind="+schema.Kind(k).String())
	}
	if len(parts) == 0 {
		return "everything"
	}
	return strings.Join(parts, " ")
}

// matchGlob is path.Match: the tag glob syntax.
func matchGlob(glob, name string) (bool, error) { return path.Match(glob, name) }

// sidecarProducerID is the producer id the sidecar writes egress and
// command rings with (driver ids are slot+1, at most the directory size).
const sidecarProducerID = 0xFFFF

// trackHTTP counts an HTTP event stream among the feeders Shutdown waits
// for; false if the sidecar is stopping.
func (s *Sidecar) trackHTTP() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.stopping {
		return false
	}
	s.feeders.Add(1)
	return true
}
