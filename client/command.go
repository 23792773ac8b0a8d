package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
)

// CommandHandler runs one command; the client has already published stage
// ACCEPTED for it. It returns the final ack: Stage COMPLETED, REJECTED or
// FAILED, with Code, Message and Readback as the handler likes (ID is filled
// in by the client). A returned Stage of ACCEPTED (the zero value) is not
// final: it is published as FAILED. ctx carries the command's deadline (if it
// has one) and ends when ServeCommands' context does.
type CommandHandler func(ctx context.Context, cmd *schema.Command) schema.CommandAck

// serveReplyTimeout bounds the wait for the sidecar's answer to serve.
const serveReplyTimeout = 10 * time.Second

// errConnChanged ends a registration whose connection was lost.
var errConnChanged = errors.New("client: the sidecar connection changed")

// cmdState is a Publisher's side of ServeCommands; watch and Close call into
// it.
type cmdState struct {
	mu     sync.Mutex
	closed bool       // Close has run: no new ServeCommands
	srv    *cmdServer // the running ServeCommands, nil if none
}

// cmdServer is one running ServeCommands.
type cmdServer struct {
	p       *Publisher
	targets []string
	h       CommandHandler
	log     *slog.Logger
	enc     *schema.Encoder
	cancel  context.CancelFunc // stops it (Publisher.Close)
	done    chan struct{}      // closed when ServeCommands returns
	replies chan shm.Message   // serving or error, for a waiting serve; capacity 1

	mu struct {
		sync.Mutex
		waiting bool               // a serve request waits for its reply
		down    bool               // the connection is lost; watch is re-attaching
		gen     uint64             // bumped at every connection change
		phase   context.CancelFunc // ends the current wait at a connection change
	}
}

// ServeCommands registers p for targets (serve{targets} on p's socket; the
// reply serving{slot, generation, ring_bytes} names a KindCommand ring in the
// segment that the sidecar writes and p reads, records of type
// schema.KindCommand holding a Command FlatBuffer), then, until ctx is done,
// reads commands from that ring, verifies each with schema.Verify (a bad one
// is skipped and logged), publishes an ACCEPTED CommandAck
// (PublishKind(ctx, schema.KindAck, ...)), calls h, and publishes h's final
// ack. Commands are handled one at a time, in order; each one's ring space is
// released before h runs. It returns ctx.Err() when ctx is done, ErrClosed
// when p is closed (Close waits for h to return), ErrLost when p's ring is
// gone, or an error wrapping ErrRefused (with the sidecar's reason) if
// registration is refused. One ServeCommands may run per Publisher.
//
// When the connection is lost (the sidecar restarts), ServeCommands stops
// reading the command ring at once (the sidecar frees the command ring of a
// dead connection and may reuse its memory); once p has re-attached, it
// sends serve again on the new connection and maps the command ring named in
// the new reply. Commands left unread in the old ring are handled only if
// the sidecar hands the same ring back; a restarted sidecar has forgotten
// them (their requesters lost their connection with it). Until the
// re-registration, a restarted sidecar rejects commands for these targets.
// Acks travel through p's ingress ring, like
// frames, and so follow p's Policy: under PolicyDropNewest or PolicyError an
// ack can be dropped (it is logged), and the sidecar then expires the
// command at its deadline.
func (p *Publisher) ServeCommands(ctx context.Context, targets []string, h CommandHandler) error {
	if len(targets) == 0 {
		return errors.New("client: ServeCommands needs at least one target")
	}
	if h == nil {
		return errors.New("client: ServeCommands needs a handler")
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &cmdServer{p: p, targets: slices.Clone(targets), h: h, log: p.cfg.Logger.With("targets", targets), enc: schema.NewEncoder(0),
		cancel: cancel, done: make(chan struct{}), replies: make(chan shm.Message, 1)}
	p.cmd.mu.Lock()
	switch {
	case p.cmd.closed:
		p.cmd.mu.Unlock()
		return ErrClosed
	case p.cmd.srv != nil:
		p.cmd.mu.Unlock()
		return errors.New("client: ServeCommands is already running on this publisher")
	}
	p.cmd.srv = s
	p.cmd.mu.Unlock()
	defer func() {
		p.cmd.mu.Lock()
		p.cmd.srv = nil
		p.cmd.mu.Unlock()
		close(s.done)
	}()

	err := s.run(ctx)
	if err := parent.Err(); err != nil {
		return err
	}
	if p.cmd.isClosed() {
		return ErrClosed
	}
	return err
}

func (c *cmdState) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// stopServing stops a running ServeCommands and waits for it (Close, before
// bye: the sidecar frees the command ring when the connection ends).
func (p *Publisher) stopServing() {
	p.cmd.mu.Lock()
	p.cmd.closed = true
	s := p.cmd.srv
	p.cmd.mu.Unlock()
	if s != nil {
		s.cancel()
		<-s.done
	}
}

// cmdReply hands a serving or error message that watch read to a
// ServeCommands waiting for one; it reports whether it did. A corrupted
// notice is never a reply: watch handles it.
func (p *Publisher) cmdReply(m *shm.Message) bool {
	if m.Op == shm.OpError && m.Code == shm.CodeCorrupted {
		return false
	}
	p.cmd.mu.Lock()
	s := p.cmd.srv
	p.cmd.mu.Unlock()
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.mu.waiting {
		return false
	}
	s.mu.waiting = false
	s.replies <- *m // cannot block: drained when waiting is set, and one reply per wait
	return true
}

// cmdConnChanged tells a running ServeCommands that the connection was lost
// (up false: watch re-attaches, or gives up) or re-established (up true).
func (p *Publisher) cmdConnChanged(up bool) {
	p.cmd.mu.Lock()
	s := p.cmd.srv
	p.cmd.mu.Unlock()
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.gen++
	s.mu.down = !up
	s.mu.waiting = false
	if s.mu.phase != nil {
		s.mu.phase()
	}
}

// begin starts a phase: a context that ends with ctx or at the next
// connection change. It returns the connection's generation and whether it
// is down; waiting says a serve request is about to be sent.
func (s *cmdServer) begin(ctx context.Context, waiting bool) (pctx context.Context, cancel context.CancelFunc, gen uint64, down bool) {
	pctx, cancel = context.WithCancel(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.phase = cancel
	gen, down = s.mu.gen, s.mu.down
	s.mu.waiting = waiting && !down
	select {
	case <-s.replies: // stale: for a connection since lost
	default:
	}
	return pctx, cancel, gen, down
}

// changed reports whether the connection changed since generation gen.
func (s *cmdServer) changed(gen uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.gen != gen || s.mu.down
}

// check returns why ServeCommands must stop, or nil.
func (s *cmdServer) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.p.lost.Load() {
		return ErrLost
	}
	return nil
}

func (s *cmdServer) run(ctx context.Context) error {
	first := true
	for {
		ring, gen, err := s.register(ctx)
		if err != nil {
			return err
		}
		if first {
			s.log.Info("serving commands", "command_slot", ring.Slot())
		} else {
			s.log.Info("serving commands again after re-attaching", "command_slot", ring.Slot())
		}
		first = false
		if err := s.loop(ctx, ring, gen); !errors.Is(err, errConnChanged) {
			return err
		}
	}
}

// register sends serve on the current connection (waiting for one while the
// publisher re-attaches) and opens the command ring of the reply.
func (s *cmdServer) register(ctx context.Context) (*shm.Ring, uint64, error) {
	for {
		if err := s.check(ctx); err != nil {
			return nil, 0, err
		}
		pctx, cancel, gen, down := s.begin(ctx, true)
		if down {
			<-pctx.Done()
			cancel()
			continue
		}
		conn := s.p.conn.Load()
		b, err := shm.EncodeMessage(&shm.Message{Op: shm.OpServe, Targets: s.targets})
		if err != nil {
			cancel()
			return nil, 0, fmt.Errorf("client: serve: %w", err)
		}
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, err = conn.Write(b)
		conn.SetWriteDeadline(time.Time{})
		if err != nil {
			// The connection is going away: watch re-attaches (or
			// gives up) and ends the phase.
			s.log.Debug("serve not sent; waiting for the publisher to re-attach", "err", err)
			<-pctx.Done()
			cancel()
			continue
		}
		timer := time.NewTimer(serveReplyTimeout)
		var m shm.Message
		select {
		case m = <-s.replies:
		case <-pctx.Done():
		case <-timer.C:
			cancel()
			return nil, 0, fmt.Errorf("client: serve %v: no reply from the sidecar within %v", s.targets, serveReplyTimeout)
		}
		timer.Stop()
		cancel()
		if m.Op == "" {
			continue // ctx done or the connection changed
		}
		if m.Op == shm.OpError {
			return nil, 0, fmt.Errorf("%w: serve %v: %s: %s", ErrRefused, s.targets, m.Code, m.Message)
		}
		ring, err := openSlot(s.p.seg, m.Slot, m.Generation, shm.KindCommand)
		if err != nil {
			if s.changed(gen) {
				continue // the sidecar went away and freed the ring
			}
			return nil, 0, fmt.Errorf("client: open the command ring the sidecar named: %w", err)
		}
		return ring, gen, nil
	}
}

// loop handles the commands of ring until ctx is done or the connection of
// generation gen is gone (errConnChanged).
func (s *cmdServer) loop(ctx context.Context, ring *shm.Ring, gen uint64) error {
	cons, err := ring.Consumer()
	if err != nil {
		return fmt.Errorf("client: command ring: %w", err)
	}
	var (
		rec shm.Record
		got bool
	)
	take := func(r shm.Record) { rec, got = r, true }
	// wake ends a wait at a cancellation until loop returns; after that the
	// ring may be freed (and its memory reused) or unmapped.
	var wmu sync.Mutex
	mapped := true
	wake := func() {
		wmu.Lock()
		defer wmu.Unlock()
		if mapped {
			ring.DataEvent().Wake()
		}
	}
	defer func() {
		wmu.Lock()
		mapped = false
		wmu.Unlock()
	}()
	for {
		pctx, cancel, g, down := s.begin(ctx, false)
		if g != gen || down {
			cancel()
			return errConnChanged
		}
		got = false
		_, err := cons.Poll(1, take)
		if err != nil {
			cancel()
			return fmt.Errorf("client: command ring: %w", err)
		}
		if !got {
			waitEvent(pctx, ring.DataEvent(), shm.DefaultSpin, cons.Ready, wake)
			cancel()
			if err := s.check(ctx); err != nil {
				return err
			}
			continue
		}
		cancel()
		// Copy the command out of the ring, then free its space.
		var (
			cmd schema.Command // the handler may keep it
			bad error
		)
		if schema.Kind(rec.Type) != schema.KindCommand {
			bad = fmt.Errorf("record of type %d in the command ring", rec.Type)
		} else {
			bad = schema.DecodeCommand(rec.Payload, &cmd)
		}
		if err := cons.Release(rec.End); err != nil {
			return fmt.Errorf("client: command ring: %w", err)
		}
		if bad != nil {
			s.log.Warn("malformed command skipped", "err", bad, "bytes", len(rec.Payload))
			continue
		}
		if err := s.handle(ctx, &cmd); err != nil {
			return err
		}
	}
}

// handle acks cmd as ACCEPTED, runs the handler and publishes its final ack.
func (s *cmdServer) handle(ctx context.Context, cmd *schema.Command) error {
	log := s.log.With("id", cmd.ID, "target", cmd.Target, "device", cmd.Device, "kind", cmd.Kind.String())
	log.Debug("command received")
	if cmd.DeadlineNs != 0 && time.Now().UnixNano() >= cmd.DeadlineNs {
		// The sidecar has expired it (or is about to): do not execute a
		// command its requester was told did not happen.
		log.Warn("command read after its deadline: not executed")
		return s.ack(ctx, &schema.CommandAck{ID: cmd.ID, Stage: schema.AckFailed, Message: "the deadline had passed when the driver read the command: not executed"})
	}
	if err := s.ack(ctx, &schema.CommandAck{ID: cmd.ID, Stage: schema.AckAccepted}); err != nil {
		return err
	}
	hctx, cancel := ctx, context.CancelFunc(func() {})
	if cmd.DeadlineNs != 0 {
		hctx, cancel = context.WithDeadline(ctx, time.Unix(0, cmd.DeadlineNs))
	}
	ack := s.h(hctx, cmd)
	cancel()
	ack.ID = cmd.ID
	if ack.Stage == schema.AckAccepted {
		ack.Stage = schema.AckFailed
		if ack.Message == "" {
			ack.Message = "the command handler returned stage ACCEPTED, which is not final"
		}
		log.Warn("command handler returned stage ACCEPTED; published FAILED")
	}
	log.Debug("command done", "stage", ack.Stage.String(), "code", ack.Code)
	return s.ack(ctx, &ack)
}

// ack publishes a CommandAck into the publisher's ring. Errors that end the
// publisher end ServeCommands; backpressure is logged.
func (s *cmdServer) ack(ctx context.Context, a *schema.CommandAck) error {
	err := s.p.PublishKind(ctx, schema.KindAck, s.enc.EncodeCommandAck(a))
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, ErrClosed), errors.Is(err, ErrLost):
		return err
	}
	s.log.Warn("command ack not published", "id", a.ID, "stage", a.Stage.String(), "err", err)
	return nil
}

// CommandOptions says how SendCommand reaches the sidecar. The zero value
// uses the default bus.
type CommandOptions struct {
	// Name is the bus name. Zero: $FRAMEBUS_NAME, else "default" (as
	// Config.Name).
	Name string
	// RunDir is the sidecar's socket directory. Zero: shm.DefaultRunDir (as
	// Config.RunDir).
	RunDir string
	// OnStage, if set, is called for every stage received, the final one
	// included, in order, from SendCommand's goroutine.
	OnStage func(schema.CommandAck)
	// Logger receives protocol notices. Zero: discard.
	Logger *slog.Logger
}

// SendCommand connects as a requester (hello role "requester"), sends
// command{frame: encoded cmd}, and returns the final ack (stage COMPLETED,
// REJECTED, EXPIRED or FAILED). The sidecar assigns the command's ID (the
// acks carry it); cmd is not modified. If cmd.DeadlineNs is 0 and ctx has a
// deadline, the ctx deadline is used (without either, the sidecar applies
// its default). A ctx that ends before the final ack returns ctx.Err(); the
// command may still run. It fails with ErrNoSidecar if nobody listens,
// ErrRefused if the sidecar refuses the connection or the command, ErrLost
// if the sidecar closes the connection before the final ack, and
// ErrTooLarge if the command does not fit a control message.
func SendCommand(ctx context.Context, cmd *schema.Command, opts CommandOptions) (schema.CommandAck, error) {
	c := *cmd
	if dl, ok := ctx.Deadline(); ok && c.DeadlineNs == 0 {
		c.DeadlineNs = dl.UnixNano()
	}
	msg, err := shm.EncodeMessage(&shm.Message{Op: shm.OpCommand, Frame: schema.NewEncoder(0).EncodeCommand(&c)})
	if err != nil {
		return schema.CommandAck{}, fmt.Errorf("%w: command: %v", ErrTooLarge, err)
	}
	cfg := Config{Name: opts.Name, RunDir: opts.RunDir, Logger: opts.Logger}
	cfg.ensureDefaults()
	conn, _, err := handshake(ctx, &cfg, &shm.Message{Op: shm.OpHello, Version: shm.ProtocolVersion, Role: shm.RoleRequester, Producer: cfg.Producer})
	if err != nil {
		return schema.CommandAck{}, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	ack, err := requestStages(conn, msg, 0, opts.OnStage, cfg.Logger)
	if err != nil && ctx.Err() != nil {
		return schema.CommandAck{}, ctx.Err()
	}
	if err == nil {
		if b, err := shm.EncodeMessage(&shm.Message{Op: shm.OpBye}); err == nil {
			conn.SetWriteDeadline(time.Now().Add(time.Second))
			conn.Write(b)
		}
	}
	return ack, err
}

// Requester sends commands over one connection to the sidecar, one at a
// time (SendCommand dials for every command; a Requester saves the dial and
// the handshake, tens of microseconds). Safe for concurrent use: Send calls
// are serialised; use several Requesters for commands in parallel.
type Requester struct {
	mu   sync.Mutex
	conn *net.UnixConn
	log  *slog.Logger
	enc  *schema.Encoder
	dead bool
	// lastID is the id of the last command finished: a late stage of it
	// (or of an earlier one) is not the next command's. Ids only grow
	// within a sidecar's run.
	lastID uint64
}

// DialRequester connects as a requester (opts.OnStage is not used: Send
// takes its own).
func DialRequester(ctx context.Context, opts CommandOptions) (*Requester, error) {
	cfg := Config{Name: opts.Name, RunDir: opts.RunDir, Logger: opts.Logger}
	cfg.ensureDefaults()
	conn, _, err := handshake(ctx, &cfg, &shm.Message{Op: shm.OpHello, Version: shm.ProtocolVersion, Role: shm.RoleRequester, Producer: cfg.Producer})
	if err != nil {
		return nil, err
	}
	return &Requester{conn: conn, log: cfg.Logger, enc: schema.NewEncoder(0)}, nil
}

// Send is SendCommand on the Requester's connection. After a ctx that ends
// before the final stage, or a lost connection, the Requester is unusable
// (ErrLost): dial a new one.
func (r *Requester) Send(ctx context.Context, cmd *schema.Command, onStage func(schema.CommandAck)) (schema.CommandAck, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dead {
		return schema.CommandAck{}, fmt.Errorf("%w: the requester's connection is gone: dial a new one", ErrLost)
	}
	c := *cmd
	if dl, ok := ctx.Deadline(); ok && c.DeadlineNs == 0 {
		c.DeadlineNs = dl.UnixNano()
	}
	msg, err := shm.EncodeMessage(&shm.Message{Op: shm.OpCommand, Frame: r.enc.EncodeCommand(&c)})
	if err != nil {
		return schema.CommandAck{}, fmt.Errorf("%w: command: %v", ErrTooLarge, err)
	}
	stop := context.AfterFunc(ctx, func() { r.conn.SetDeadline(time.Unix(1, 0)) })
	ack, err := requestStages(r.conn, msg, r.lastID, onStage, r.log)
	if err == nil {
		r.lastID = ack.ID
	}
	if !stop() || err != nil {
		r.dead = true
		if ctx.Err() != nil {
			return schema.CommandAck{}, ctx.Err()
		}
	}
	return ack, err
}

// Close says bye and closes the connection. Idempotent.
func (r *Requester) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		return nil
	}
	if !r.dead {
		if b, err := shm.EncodeMessage(&shm.Message{Op: shm.OpBye}); err == nil {
			r.conn.SetWriteDeadline(time.Now().Add(time.Second))
			r.conn.Write(b)
		}
	}
	err := r.conn.Close()
	r.conn, r.dead = nil, true
	return err
}

// requestStages sends the command message and reads stages until the final
// one.
func requestStages(conn *net.UnixConn, msg []byte, stale uint64, onStage func(schema.CommandAck), log *slog.Logger) (schema.CommandAck, error) {
	if _, err := conn.Write(msg); err != nil {
		return schema.CommandAck{}, fmt.Errorf("%w: command not sent: %v", ErrLost, err)
	}
	buf := make([]byte, shm.MaxMessageSize+1)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return schema.CommandAck{}, fmt.Errorf("%w: the sidecar closed the connection before the command's final stage: %v", ErrLost, err)
		}
		m, err := shm.DecodeMessage(buf[:n])
		if err != nil {
			log.Warn("malformed message from the sidecar", "err", err)
			continue
		}
		switch m.Op {
		case shm.OpStage:
			var ack schema.CommandAck
			if err := schema.DecodeCommandAck(m.Frame, &ack); err != nil {
				return schema.CommandAck{}, fmt.Errorf("%w: stage: %v", shm.ErrProtocol, err)
			}
			if stale != 0 && ack.ID <= stale {
				continue // a late stage of an earlier command on this connection
			}
			if onStage != nil {
				onStage(ack)
			}
			if ack.Stage != schema.AckAccepted {
				return ack, nil
			}
		case shm.OpError:
			return schema.CommandAck{}, fmt.Errorf("%w: command: %s: %s", ErrRefused, m.Code, m.Message)
		default:
			log.Debug("message ignored while waiting for command stages", "op", m.Op)
		}
	}
}
