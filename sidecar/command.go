package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
	"github.com/framebus/framebus/wal"
)

// Commands.
//
// A driver registers the targets it serves (serve on its socket); the
// sidecar gives it a command ring, which the sidecar writes and the driver
// reads. A requester (a process on the socket, or the HTTP API) sends a
// Command; the router assigns it a bus-wide id, writes it to the serving
// driver's ring and to the WAL, and waits for the driver's acks, which come
// back through the driver's ingress ring like any frame (the drain loop
// hands them to the router, and they go to the WAL with the rest). The
// router forwards every stage to the requester and enforces the deadline:
// past it, it issues EXPIRED itself, and a later ack from the driver is
// counted as late and logged. No driver for the target: REJECTED at once. A
// driver that goes away with commands in flight: those are FAILED.

// defaultCommandTimeout applies to a command without a deadline.
const defaultCommandTimeout = 30 * time.Second

// commandRingBytes is the size of a driver's command ring.
const commandRingBytes = 256 << 10

// maxTargets bounds how many targets one driver may serve.
const maxTargets = 256

// cmdServer is a driver that serves commands.
type cmdServer struct {
	p       *producer
	targets []string
	slot    int
	gen     uint64
	prod    *shm.Producer
}

// inflight is a command waiting for its final ack.
type inflight struct {
	id       uint64
	target   string
	srv      *cmdServer
	reply    func(ack []byte) // sends a stage to the requester; nil if it left
	start    time.Time
	timer    *time.Timer
	accepted bool
}

type router struct {
	s  *Sidecar
	mu sync.Mutex
	// targets maps a target to the driver serving it.
	targets  map[string]*cmdServer
	inflight map[uint64]*inflight
	nextID   uint64
	enc      *schema.Encoder // under mu
	pending  atomic.Int64    // len(inflight), for the drain loop
	lastBusy atomic.Int64    // Unix ns of the last command that arrived or finished
	closed   bool            // failAll ran: new commands are rejected
}

func newRouter(s *Sidecar) *router {
	return &router{s: s, targets: map[string]*cmdServer{}, inflight: map[uint64]*inflight{}, enc: schema.NewEncoder(1024)}
}

func validTarget(t string) bool {
	return t != "" && len(t) <= 64 && !strings.ContainsFunc(t, func(r rune) bool { return r <= 0x20 || r == 0x7f })
}

// serve registers driver p for targets and allocates its command ring.
func (r *router) serve(p *producer, targets []string) (*cmdServer, error) {
	if len(targets) == 0 || len(targets) > maxTargets {
		return nil, fmt.Errorf("serve: %d targets; want 1 to %d", len(targets), maxTargets)
	}
	for _, t := range targets {
		if !validTarget(t) {
			return nil, fmt.Errorf("serve: target %q must be 1..64 printable characters without spaces", t)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if p.getState() == stateRetiring {
		return nil, errors.New("serve: this driver is being detached")
	}
	for _, t := range targets {
		if o := r.targets[t]; o != nil && o.p != p {
			return nil, fmt.Errorf("serve: target %q is already served by producer %q (pid %d): stop that driver or serve another target", t, o.p.name, o.p.pid)
		}
	}
	n := 0
	for _, o := range r.targets {
		if o.p == p {
			n++
		}
	}
	if n+len(targets) > maxTargets {
		return nil, fmt.Errorf("serve: at most %d targets per driver", maxTargets)
	}
	s := r.s
	if old := r.serverOfLocked(p); old != nil {
		// A second serve adds targets to the same ring.
		for _, t := range targets {
			if !slices.Contains(old.targets, t) {
				old.targets = append(old.targets, t)
			}
			r.targets[t] = old
		}
		return old, nil
	}
	s.mu.Lock()
	gen := s.epoch<<32 | uint64(s.mu.nextGen)
	s.mu.nextGen++
	s.mu.Unlock()
	slot, err := s.seg.AllocRing(shm.RingSpec{Kind: shm.KindCommand, Capacity: commandRingBytes, Notify: shm.NotifyRing, Generation: gen,
		Owner: shm.Owner{Pid: p.pid, UID: p.uid, Start: p.start, Name: p.name}})
	if err != nil {
		return nil, fmt.Errorf("no command ring: %w (raise max_rings or the segment size)", err)
	}
	ring, err := s.seg.Ring(slot)
	var prod *shm.Producer
	if err == nil {
		prod, err = ring.Producer(sidecarProducerID)
	}
	if err != nil {
		s.seg.FreeRing(slot)
		return nil, err
	}
	srv := &cmdServer{p: p, targets: slices.Clone(targets), slot: slot, gen: gen, prod: prod}
	for _, t := range targets {
		r.targets[t] = srv
	}
	return srv, nil
}

func (r *router) serverOfLocked(p *producer) *cmdServer {
	for _, srv := range r.targets {
		if srv.p == p {
			return srv
		}
	}
	return nil
}

// unserve removes driver p: its in-flight commands fail, its command ring
// is freed.
func (r *router) unserve(p *producer, why string) {
	r.mu.Lock()
	srv := r.serverOfLocked(p)
	if srv == nil {
		r.mu.Unlock()
		return
	}
	for t, o := range r.targets {
		if o == srv {
			delete(r.targets, t)
		}
	}
	var failed []*inflight
	for id, c := range r.inflight {
		if c.srv == srv {
			delete(r.inflight, id)
			c.timer.Stop()
			failed = append(failed, c)
		}
	}
	r.pending.Store(int64(len(r.inflight)))
	r.mu.Unlock()
	for _, c := range failed {
		r.finish(c, schema.AckFailed, fmt.Sprintf("driver %q %s with the command in flight", p.name, why))
	}
	r.s.seg.FreeRing(srv.slot)
}

// busy reports whether a command is in flight or one came or went in the
// last commandQuiet: requesters often send the next command at once, and
// its acks should not wait for the drain loop's batching pause.
func (r *router) busy() bool {
	return r.pending.Load() > 0 || time.Now().UnixNano()-r.lastBusy.Load() < int64(commandQuiet)
}

// commandQuiet: see busy.
const commandQuiet = 20 * time.Millisecond

// failAll finishes every command in flight as FAILED (at shutdown: the
// requesters are told before their connections close, and the WAL gets
// the acks before it is closed).
func (r *router) failAll(why string) {
	r.mu.Lock()
	r.closed = true
	var failed []*inflight
	for id, c := range r.inflight {
		delete(r.inflight, id)
		c.timer.Stop()
		failed = append(failed, c)
	}
	r.pending.Store(0)
	r.mu.Unlock()
	for _, c := range failed {
		r.finish(c, schema.AckFailed, why)
	}
}

// submit routes one command; reply receives every stage. It returns the
// id assigned, or an error for a command that is not a valid Command.
func (r *router) submit(buf []byte, reply func(ack []byte)) (uint64, error) {
	if err := schema.Verify(schema.KindCommand, buf); err != nil {
		return 0, fmt.Errorf("not a valid Command: %w", err)
	}
	var cmd schema.Command
	if err := schema.DecodeCommand(buf, &cmd); err != nil {
		return 0, fmt.Errorf("not a valid Command: %w", err)
	}
	s := r.s
	r.mu.Lock()
	r.nextID++
	cmd.ID = s.epoch<<32 | r.nextID
	if cmd.DeadlineNs == 0 {
		cmd.DeadlineNs = time.Now().Add(defaultCommandTimeout).UnixNano()
	}
	enc := slices.Clone(r.enc.EncodeCommand(&cmd))
	c := &inflight{id: cmd.ID, target: cmd.Target, reply: reply, start: time.Now()}
	srv := r.targets[cmd.Target]
	r.mu.Unlock()

	s.m.commands.Inc()
	s.appendAudit(schema.KindCommand, enc)
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		r.finish(c, schema.AckRejected, "the sidecar is stopping")
		return cmd.ID, nil
	}
	if srv == nil {
		r.finish(c, schema.AckRejected, fmt.Sprintf("no driver serves target %q", cmd.Target))
		return cmd.ID, nil
	}
	until := time.Until(time.Unix(0, cmd.DeadlineNs))
	if until <= 0 {
		r.finish(c, schema.AckExpired, "the deadline had passed when the command arrived")
		return cmd.ID, nil
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		r.finish(c, schema.AckRejected, "the sidecar is stopping")
		return cmd.ID, nil
	}
	if r.targets[cmd.Target] != srv {
		r.mu.Unlock()
		r.finish(c, schema.AckFailed, fmt.Sprintf("driver %q left before the command was delivered", srv.p.name))
		return cmd.ID, nil
	}
	cl, err := srv.prod.Claim(uint16(schema.KindCommand), len(enc))
	if err != nil {
		r.mu.Unlock()
		r.finish(c, schema.AckRejected, fmt.Sprintf("the command queue of driver %q is full (%v)", srv.p.name, err))
		return cmd.ID, nil
	}
	copy(cl.Buf, enc)
	c.srv = srv
	c.timer = time.AfterFunc(until, func() { r.expire(c.id) })
	r.inflight[c.id] = c
	r.pending.Store(int64(len(r.inflight)))
	r.lastBusy.Store(time.Now().UnixNano())
	srv.prod.Commit(cl)
	r.mu.Unlock()
	return cmd.ID, nil
}

// rejectNow answers a command REJECTED without routing it (it is still
// written to the WAL's audit trail if it is a valid Command).
func (r *router) rejectNow(buf []byte, reply func([]byte), why string) {
	var cmd schema.Command
	if schema.DecodeCommand(buf, &cmd) != nil {
		return
	}
	r.mu.Lock()
	r.nextID++
	cmd.ID = r.s.epoch<<32 | r.nextID
	enc := slices.Clone(r.enc.EncodeCommand(&cmd))
	r.mu.Unlock()
	r.s.appendAudit(schema.KindCommand, enc)
	r.finish(&inflight{id: cmd.ID, target: cmd.Target, reply: reply, start: time.Now()}, schema.AckRejected, why)
}

// expire issues EXPIRED for a command still in flight at its deadline.
func (r *router) expire(id uint64) {
	r.mu.Lock()
	c := r.inflight[id]
	delete(r.inflight, id)
	r.pending.Store(int64(len(r.inflight)))
	r.mu.Unlock()
	if c != nil {
		r.s.m.commandsExpired.Inc()
		r.finish(c, schema.AckExpired, "no final ack from the driver before the deadline")
	}
}

// onAck takes an ack driver p published (drain goroutine; buf is verified
// and in the WAL queue). Only the driver the command went to may ack it.
func (r *router) onAck(p *producer, buf []byte) {
	a := schema.RootCommandAck(buf)
	id, stage := a.Id(), schema.AckStage(a.Stage())
	if stage > schema.AckFailed {
		r.s.m.lateAcks.Inc()
		r.s.log.Warn("ack with an unknown stage ignored", "producer", p.name, "id", id, "stage", int(stage))
		return
	}
	r.mu.Lock()
	c := r.inflight[id]
	if c != nil && c.srv.p != p {
		r.mu.Unlock()
		r.s.m.lateAcks.Inc()
		r.s.log.Warn("ack for a command routed to another driver ignored", "producer", p.name, "id", id, "routed_to", c.srv.p.name)
		return
	}
	final := stage != schema.AckAccepted
	if c != nil && final {
		delete(r.inflight, id)
		r.pending.Store(int64(len(r.inflight)))
		r.lastBusy.Store(time.Now().UnixNano())
		c.timer.Stop()
	}
	if c != nil && !final {
		c.accepted = true
	}
	r.mu.Unlock()
	if c == nil {
		r.s.m.lateAcks.Inc()
		r.s.log.Warn("ack for a command that is not in flight (late after EXPIRED or FAILED, or unknown)", "id", id, "stage", stage.String())
		return
	}
	if c.reply != nil {
		c.reply(buf)
	}
	if final {
		r.s.m.observeCommand(stage, time.Since(c.start))
	}
}

// finish sends a final ack the sidecar issues itself, and writes it to the
// WAL.
func (r *router) finish(c *inflight, stage schema.AckStage, msg string) {
	r.mu.Lock()
	ack := slices.Clone(r.enc.EncodeCommandAck(&schema.CommandAck{ID: c.id, Stage: stage, Message: msg}))
	r.mu.Unlock()
	r.s.appendAudit(schema.KindAck, ack)
	r.s.m.observeCommand(stage, time.Since(c.start))
	lvl := slog.LevelInfo
	if stage != schema.AckCompleted {
		lvl = slog.LevelWarn
	}
	r.s.log.Log(context.Background(), lvl, "command finished by the sidecar", "id", c.id, "target", c.target, "stage", stage.String(), "reason", msg)
	if c.reply != nil {
		c.reply(ack)
	}
}

// requesterQueue bounds the stages waiting to be written to one requester.
// A requester that lets it fill (it does not read its socket) is
// disconnected: its commands go on, but no stage of the sidecar ever waits
// for its socket.
const requesterQueue = 1024

// maxInflightPerRequester bounds the commands one requester connection may
// have in flight; beyond it commands are REJECTED.
const maxInflightPerRequester = 4096

// outbox is a connection's queue of outgoing messages and its writer
// goroutine: the drain loop, timers and Shutdown only ever enqueue.
type outbox struct {
	mu     sync.Mutex
	q      chan []byte
	closed bool
	c      *net.UnixConn
	done   chan struct{}
}

func newOutbox(c *net.UnixConn) *outbox {
	o := &outbox{q: make(chan []byte, requesterQueue), c: c, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		for b := range o.q {
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(b); err != nil {
				c.Close() // the reader loop ends; later sends are dropped
				for range o.q {
				}
				return
			}
		}
	}()
	return o
}

// send enqueues m without blocking; false if the queue is full (the
// connection is then closed) or the outbox is closed.
func (o *outbox) send(m *shm.Message) bool {
	b, err := shm.EncodeMessage(m)
	if err != nil {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	select {
	case o.q <- b:
		return true
	default:
		o.closed = true
		close(o.q)
		o.c.Close()
		return false
	}
}

// close stops accepting messages; the writer sends what is queued (with
// its write deadline) and exits.
func (o *outbox) close() {
	o.mu.Lock()
	if !o.closed {
		o.closed = true
		close(o.q)
	}
	o.mu.Unlock()
}

// serveRequester runs a requester's connection: commands in, stages out.
func (s *Sidecar) serveRequester(c *net.UnixConn, buf []byte, log *slog.Logger) {
	out := newOutbox(c)
	var inflight atomic.Int64
	reply := func(ack []byte) {
		if a := schema.RootCommandAck(ack); schema.AckStage(a.Stage()) != schema.AckAccepted {
			inflight.Add(-1)
		}
		if !out.send(&shm.Message{Op: shm.OpStage, Frame: ack}) {
			log.Debug("requester gone or not reading: stage dropped")
		}
	}
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
		if err == nil && m.Op == shm.OpCommand {
			if inflight.Load() >= maxInflightPerRequester {
				inflight.Add(1)
				s.router.rejectNow(m.Frame, reply, fmt.Sprintf("this requester has %d commands in flight already: wait for their acks", maxInflightPerRequester))
				continue
			}
			inflight.Add(1)
			if _, err := s.router.submit(m.Frame, reply); err != nil {
				inflight.Add(-1)
				// A frame that is not a Command is a malformed message
				// like any other: counted, and too many disconnect.
				bad++
				s.m.protocolErrors.Inc()
				out.send(&shm.Message{Op: shm.OpError, Code: shm.CodeProtocol, Message: err.Error()})
				log.Warn("bad command from requester", "err", err, "count", bad)
				if bad >= maxProtocolErrors {
					out.send(&shm.Message{Op: shm.OpError, Code: shm.CodeProtocol, Message: "too many malformed messages: disconnected"})
					break
				}
			}
			continue
		}
		if err == nil {
			err = fmt.Errorf("unexpected %q", m.Op)
		}
		bad++
		s.m.protocolErrors.Inc()
		log.Warn("protocol error from requester", "err", err, "count", bad)
		out.send(&shm.Message{Op: shm.OpError, Code: shm.CodeProtocol, Message: err.Error()})
		if bad >= maxProtocolErrors {
			out.send(&shm.Message{Op: shm.OpError, Code: shm.CodeProtocol, Message: "too many malformed messages: disconnected"})
			break
		}
	}
	out.close()
	<-out.done
}

func walFrame(kind schema.Kind, data []byte) wal.Frame {
	return wal.Frame{Kind: uint16(kind), Data: data}
}

// appendAudit writes a frame the sidecar issues itself (a command, or an
// ack it gives in the driver's place) to the WAL, and hands it to the live
// subscribers through the drain loop, their rings' only writer.
func (s *Sidecar) appendAudit(kind schema.Kind, data []byte) {
	seq, err := s.wal.Append(walFrame(kind, data))
	if err != nil {
		s.log.Warn("command audit record not written to the WAL", "kind", kind.String(), "err", err)
		return
	}
	if lp := s.subs.live.Load(); lp == nil || len(*lp) == 0 {
		return
	}
	s.mu.Lock()
	s.mu.liveAudit = append(s.mu.liveAudit, auditFrame{seq: seq, f: walFrame(kind, data)})
	s.mu.Unlock()
	s.wake.Wake()
}

// auditFrame is a frame the sidecar appended itself, for the live
// subscribers.
type auditFrame struct {
	seq uint64
	f   wal.Frame
}
