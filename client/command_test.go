package client

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
)

// dialFake runs Dial against f and answers the hello with a welcome for a
// new ingress ring; it returns the publisher, its connection and the ring.
func dialFake(t *testing.T, f *fakeSidecar) (*Publisher, *net.UnixConn, *shm.Ring) {
	t.Helper()
	type result struct {
		p   *Publisher
		err error
	}
	res := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		p, err := Dial(ctx, Config{Name: f.name, RunDir: f.runDir, Producer: "drv", Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))})
		res <- result{p, err}
	}()
	c := f.accept()
	hello := recv(t, c)
	if hello.Op != shm.OpHello || hello.Role != "" || hello.Producer != "drv" {
		t.Fatalf("hello = %+v", hello)
	}
	ring, gen := f.allocRing(shm.KindIngressSPSC, 1<<16, shm.NotifyDoorbell)
	send(t, c, &shm.Message{Op: shm.OpWelcome, Version: shm.ProtocolVersion, Segment: f.seg.Path(), Slot: ring.Slot(), Generation: gen,
		ProducerID: 1, Epoch: 1, RingBytes: ring.Capacity()})
	r := <-res
	if r.err != nil {
		t.Fatalf("Dial: %v", r.err)
	}
	t.Cleanup(func() { r.p.Close() })
	return r.p, c, ring
}

// ingress reads what the publisher publishes, as the sidecar's drain would.
type ingress struct {
	t    *testing.T
	ring *shm.Ring
	cons *shm.Consumer
}

func newIngress(t *testing.T, ring *shm.Ring) *ingress {
	cons, err := ring.Consumer()
	if err != nil {
		t.Fatalf("Consumer: %v", err)
	}
	return &ingress{t: t, ring: ring, cons: cons}
}

// ack returns the next record, which must be a CommandAck.
func (in *ingress) ack() schema.CommandAck {
	in.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for {
		var (
			a   schema.CommandAck
			err error
			got bool
		)
		_, perr := in.cons.Poll(1, func(r shm.Record) {
			got = true
			if schema.Kind(r.Type) != schema.KindAck {
				err = errors.New("record of kind " + schema.Kind(r.Type).String() + ", want ack")
				return
			}
			err = schema.DecodeCommandAck(r.Payload, &a)
		})
		if perr != nil {
			in.t.Fatalf("Poll: %v", perr)
		}
		if got {
			in.cons.Release(in.cons.ReadPos())
			if err != nil {
				in.t.Fatalf("ingress record: %v", err)
			}
			return a
		}
		if !in.cons.Wait(ctx, shm.DefaultSpin) {
			in.t.Fatalf("no ack in the ingress ring within %v", waitFor)
		}
	}
}

// empty fails if anything waits in the ingress ring after a short while.
func (in *ingress) empty() {
	in.t.Helper()
	time.Sleep(20 * time.Millisecond)
	if in.cons.Ready() {
		in.t.Fatal("unexpected record in the ingress ring")
	}
}

// serveFake answers a serve request on c with a new command ring and returns
// the ring's producer.
func serveFake(t *testing.T, f *fakeSidecar, c *net.UnixConn, targets []string) (*shm.Producer, *shm.Ring) {
	t.Helper()
	m := recv(t, c)
	if m.Op != shm.OpServe || !reflect.DeepEqual(m.Targets, targets) {
		t.Fatalf("got %+v, want serve{%v}", m, targets)
	}
	ring, gen := f.allocRing(shm.KindCommand, shm.MinRingCapacity, shm.NotifyRing)
	send(t, c, &shm.Message{Op: shm.OpServing, Slot: ring.Slot(), Generation: gen, RingBytes: ring.Capacity(), Targets: targets})
	return mustProducer(t, ring), ring
}

func writeCommand(t *testing.T, prod *shm.Producer, kind schema.Kind, frame []byte) {
	t.Helper()
	cl, err := prod.Claim(uint16(kind), len(frame))
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	copy(cl.Buf, frame)
	prod.Commit(cl)
}

type handled struct {
	cmd      schema.Command
	deadline time.Time
}

// recordingHandler sends every command it gets to the returned channel and
// answers with reply(cmd).
func recordingHandler(reply func(*schema.Command) schema.CommandAck) (CommandHandler, chan handled) {
	ch := make(chan handled, 16)
	return func(ctx context.Context, cmd *schema.Command) schema.CommandAck {
		dl, _ := ctx.Deadline()
		ch <- handled{*cmd, dl}
		return reply(cmd)
	}, ch
}

func waitHandled(t *testing.T, got chan handled) handled {
	t.Helper()
	select {
	case hd := <-got:
		return hd
	case <-time.After(waitFor):
		t.Fatal("handler not called")
		return handled{}
	}
}

func serveAsync(p *Publisher, ctx context.Context, targets []string, h CommandHandler) chan error {
	errc := make(chan error, 1)
	go func() { errc <- p.ServeCommands(ctx, targets, h) }()
	return errc
}

func waitErr(t *testing.T, errc chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(waitFor):
		t.Fatal("ServeCommands did not return")
		return nil
	}
}

func TestServeCommands(t *testing.T) {
	f := newFakeSidecar(t)
	p, c, ingressRing := dialFake(t, f)
	in := newIngress(t, ingressRing)
	h, got := recordingHandler(func(cmd *schema.Command) schema.CommandAck {
		if cmd.ID == 10 {
			return schema.CommandAck{} // not final: published as FAILED
		}
		return schema.CommandAck{ID: 12345, Stage: schema.AckCompleted, Code: 7, Message: "written",
			Readback: []schema.Point{{Tag: "setpoint", Value: schema.F64(21.5)}}}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := serveAsync(p, ctx, []string{"valve", "pump"}, h)
	prod, cmdRing := serveFake(t, f, c, []string{"valve", "pump"})

	enc := schema.NewEncoder(0)
	deadline := time.Now().Add(time.Minute).Truncate(time.Nanosecond)
	cmd := schema.Command{ID: 9, Target: "valve", Device: "v1", Kind: schema.CommandWrite, DeadlineNs: deadline.UnixNano(),
		Points: []schema.Point{{Tag: "setpoint", Value: schema.F64(21.5)}}}
	valid := bytes.Clone(enc.EncodeCommand(&cmd))
	// Malformed: garbage, a truncated command, a valid frame of another
	// kind, a command in a record of the wrong type. Each is skipped.
	writeCommand(t, prod, schema.KindCommand, []byte("not a command at all"))
	writeCommand(t, prod, schema.KindCommand, valid[:len(valid)/2])
	writeCommand(t, prod, schema.KindCommand, enc.EncodeData(&schema.DataFrame{Producer: "x"}))
	writeCommand(t, prod, schema.KindData, valid)
	writeCommand(t, prod, schema.KindCommand, valid)

	hd := waitHandled(t, got)
	if !reflect.DeepEqual(hd.cmd, cmd) {
		t.Errorf("handler got %+v, want %+v", hd.cmd, cmd)
	}
	if !hd.deadline.Equal(deadline) {
		t.Errorf("handler ctx deadline %v, want the command's %v", hd.deadline, deadline)
	}
	if a := in.ack(); a.ID != 9 || a.Stage != schema.AckAccepted {
		t.Fatalf("first ack %+v, want ACCEPTED for 9", a)
	}
	want := schema.CommandAck{ID: 9, Stage: schema.AckCompleted, Code: 7, Message: "written", Readback: []schema.Point{{Tag: "setpoint", Value: schema.F64(21.5)}}}
	if a := in.ack(); !reflect.DeepEqual(a, want) {
		t.Fatalf("final ack %+v, want %+v", a, want)
	}

	// A handler that returns no final stage.
	writeCommand(t, prod, schema.KindCommand, enc.EncodeCommand(&schema.Command{ID: 10, Target: "pump"}))
	if hd := waitHandled(t, got); hd.cmd.ID != 10 || !hd.deadline.IsZero() {
		t.Fatalf("handler got id %d deadline %v, want 10 and none", hd.cmd.ID, hd.deadline)
	}
	if a := in.ack(); a.ID != 10 || a.Stage != schema.AckAccepted {
		t.Fatalf("ack %+v, want ACCEPTED for 10", a)
	}
	if a := in.ack(); a.ID != 10 || a.Stage != schema.AckFailed || a.Message == "" {
		t.Fatalf("ack %+v, want FAILED for 10 with a reason", a)
	}
	in.empty()
	select {
	case hd := <-got:
		t.Fatalf("handler called for %+v", hd.cmd)
	default:
	}
	if h, used := cmdRing.Head(), cmdRing.Used(); used != 0 {
		t.Errorf("command ring: head %d, %d bytes not released", h, used)
	}

	cancel()
	if err := waitErr(t, errc); !errors.Is(err, context.Canceled) {
		t.Fatalf("ServeCommands: %v, want context.Canceled", err)
	}
	// The publisher goes on.
	if err := p.Publish(context.Background(), enc.EncodeData(&schema.DataFrame{Producer: "drv"})); err != nil {
		t.Fatalf("Publish after ServeCommands: %v", err)
	}
}

func TestServeCommandsRefused(t *testing.T) {
	f := newFakeSidecar(t)
	p, c, _ := dialFake(t, f)
	h, _ := recordingHandler(func(*schema.Command) schema.CommandAck { return schema.CommandAck{Stage: schema.AckCompleted} })
	errc := serveAsync(p, context.Background(), []string{"valve"}, h)
	if m := recv(t, c); m.Op != shm.OpServe {
		t.Fatalf("got %+v, want serve", m)
	}
	send(t, c, &shm.Message{Op: shm.OpError, Code: shm.CodeBadHello, Message: `serve: target "valve" is already served by producer "other"`})
	err := waitErr(t, errc)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "already served") {
		t.Fatalf("ServeCommands: %v, want ErrRefused with the sidecar's reason", err)
	}
	// The refusal is not a detach notice: the publisher goes on.
	if err := p.Publish(context.Background(), schema.NewEncoder(0).EncodeData(&schema.DataFrame{})); err != nil {
		t.Fatalf("Publish after the refusal: %v", err)
	}
	if err := p.ServeCommands(context.Background(), nil, h); err == nil {
		t.Fatal("ServeCommands without targets succeeded")
	}
}

func TestServeCommandsReattach(t *testing.T) {
	f := newFakeSidecar(t)
	p, c, ingressRing := dialFake(t, f)
	in := newIngress(t, ingressRing)
	h, got := recordingHandler(func(cmd *schema.Command) schema.CommandAck {
		return schema.CommandAck{Stage: schema.AckCompleted}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := serveAsync(p, ctx, []string{"valve"}, h)
	oldProd, oldRing := serveFake(t, f, c, []string{"valve"})
	// One command on the first registration.
	writeCommand(t, oldProd, schema.KindCommand, schema.NewEncoder(0).EncodeCommand(&schema.Command{ID: 20, Target: "valve"}))
	if hd := waitHandled(t, got); hd.cmd.ID != 20 {
		t.Fatalf("handler got id %d, want 20", hd.cmd.ID)
	}
	for _, want := range []schema.AckStage{schema.AckAccepted, schema.AckCompleted} {
		if a := in.ack(); a.ID != 20 || a.Stage != want {
			t.Fatalf("ack %+v, want %v for 20", a, want)
		}
	}

	// The sidecar restarts: the connection closes, the publisher resumes
	// its ring on a new one, and must register again.
	c.Close()
	f.seg.FreeRing(oldRing.Slot())
	c2 := f.accept()
	hello := recv(t, c2)
	if hello.Resume == nil || hello.Resume.Slot != ingressRing.Slot() || hello.Resume.Generation != ingressRing.Generation() {
		t.Fatalf("re-attach hello = %+v", hello)
	}
	send(t, c2, &shm.Message{Op: shm.OpWelcome, Version: shm.ProtocolVersion, Segment: f.seg.Path(), Slot: ingressRing.Slot(),
		Generation: ingressRing.Generation(), ProducerID: 1, Epoch: 2, RingBytes: ingressRing.Capacity()})
	prod, _ := serveFake(t, f, c2, []string{"valve"})
	writeCommand(t, prod, schema.KindCommand, schema.NewEncoder(0).EncodeCommand(&schema.Command{ID: 21, Target: "valve"}))
	if hd := waitHandled(t, got); hd.cmd.ID != 21 {
		t.Fatalf("handler got id %d, want 21", hd.cmd.ID)
	}
	if a := in.ack(); a.ID != 21 || a.Stage != schema.AckAccepted {
		t.Fatalf("ack %+v, want ACCEPTED for 21", a)
	}
	if a := in.ack(); a.ID != 21 || a.Stage != schema.AckCompleted {
		t.Fatalf("ack %+v, want COMPLETED for 21", a)
	}
	cancel()
	if err := waitErr(t, errc); !errors.Is(err, context.Canceled) {
		t.Fatalf("ServeCommands: %v, want context.Canceled", err)
	}
}

func TestServeCommandsClose(t *testing.T) {
	f := newFakeSidecar(t)
	p, c, _ := dialFake(t, f)
	block := make(chan struct{})
	h := func(ctx context.Context, cmd *schema.Command) schema.CommandAck {
		close(block)
		<-ctx.Done()
		return schema.CommandAck{Stage: schema.AckFailed, Message: ctx.Err().Error()}
	}
	errc := serveAsync(p, context.Background(), []string{"valve"}, h)
	prod, _ := serveFake(t, f, c, []string{"valve"})
	writeCommand(t, prod, schema.KindCommand, schema.NewEncoder(0).EncodeCommand(&schema.Command{ID: 1, Target: "valve"}))
	select {
	case <-block:
	case <-time.After(waitFor):
		t.Fatal("handler not called")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := waitErr(t, errc); !errors.Is(err, ErrClosed) {
		t.Fatalf("ServeCommands: %v, want ErrClosed", err)
	}
	if m := recv(t, c); m.Op != shm.OpBye {
		t.Fatalf("got %+v, want bye", m)
	}
	if err := p.ServeCommands(context.Background(), []string{"valve"}, h); !errors.Is(err, ErrClosed) {
		t.Fatalf("ServeCommands after Close: %v, want ErrClosed", err)
	}
}

// sendAsync runs SendCommand against f and records the stages it reports.
func sendAsync(f *fakeSidecar, ctx context.Context, cmd *schema.Command) (chan schema.CommandAck, chan error, *[]schema.CommandAck, *sync.Mutex) {
	var (
		mu     sync.Mutex
		stages []schema.CommandAck
	)
	ackc, errc := make(chan schema.CommandAck, 1), make(chan error, 1)
	go func() {
		a, err := SendCommand(ctx, cmd, CommandOptions{Name: f.name, RunDir: f.runDir, OnStage: func(a schema.CommandAck) {
			mu.Lock()
			stages = append(stages, a)
			mu.Unlock()
		}})
		ackc <- a
		errc <- err
	}()
	return ackc, errc, &stages, &mu
}

// requesterFake accepts a requester, welcomes it and returns the command it
// sends.
func requesterFake(t *testing.T, f *fakeSidecar) (*net.UnixConn, schema.Command) {
	t.Helper()
	c := f.accept()
	if hello := recv(t, c); hello.Op != shm.OpHello || hello.Role != shm.RoleRequester || hello.Version != shm.ProtocolVersion {
		t.Fatalf("hello = %+v", hello)
	}
	send(t, c, &shm.Message{Op: shm.OpWelcome, Version: shm.ProtocolVersion, Epoch: 1})
	m := recv(t, c)
	if m.Op != shm.OpCommand {
		t.Fatalf("got %+v, want command", m)
	}
	var cmd schema.Command
	if err := schema.DecodeCommand(m.Frame, &cmd); err != nil {
		t.Fatalf("command frame: %v", err)
	}
	return c, cmd
}

func stage(t *testing.T, c *net.UnixConn, a schema.CommandAck) {
	t.Helper()
	send(t, c, &shm.Message{Op: shm.OpStage, Frame: schema.NewEncoder(0).EncodeCommandAck(&a)})
}

func TestSendCommand(t *testing.T) {
	f := newFakeSidecar(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	dl, _ := ctx.Deadline()
	cmd := &schema.Command{Target: "valve", Device: "v1", Points: []schema.Point{{Tag: "open", Value: schema.Bool(true)}}}
	ackc, errc, stages, mu := sendAsync(f, ctx, cmd)
	c, sent := requesterFake(t, f)
	if sent.Target != "valve" || sent.Device != "v1" || len(sent.Points) != 1 || sent.Points[0].Tag != "open" || sent.ID != 0 {
		t.Fatalf("sidecar got %+v", sent)
	}
	if sent.DeadlineNs != dl.UnixNano() {
		t.Errorf("DeadlineNs %d, want the ctx deadline %d", sent.DeadlineNs, dl.UnixNano())
	}
	if cmd.DeadlineNs != 0 {
		t.Errorf("SendCommand modified the caller's command")
	}
	accepted := schema.CommandAck{ID: 77, Stage: schema.AckAccepted}
	completed := schema.CommandAck{ID: 77, Stage: schema.AckCompleted, Code: 3, Message: "done"}
	stage(t, c, accepted)
	stage(t, c, completed)
	if a := <-ackc; !reflect.DeepEqual(a, completed) {
		t.Fatalf("SendCommand = %+v, want %+v", a, completed)
	}
	if err := <-errc; err != nil {
		t.Fatalf("SendCommand: %v", err)
	}
	mu.Lock()
	if want := []schema.CommandAck{accepted, completed}; !reflect.DeepEqual(*stages, want) {
		t.Errorf("OnStage got %+v, want %+v", *stages, want)
	}
	mu.Unlock()
	if m := recv(t, c); m.Op != shm.OpBye {
		t.Fatalf("got %+v, want bye", m)
	}
}

func TestSendCommandStages(t *testing.T) {
	for _, final := range []schema.AckStage{schema.AckRejected, schema.AckExpired, schema.AckFailed} {
		t.Run(final.String(), func(t *testing.T) {
			f := newFakeSidecar(t)
			deadline := time.Now().Add(time.Hour).UnixNano()
			ackc, errc, _, _ := sendAsync(f, context.Background(), &schema.Command{Target: "valve", DeadlineNs: deadline})
			c, sent := requesterFake(t, f)
			if sent.DeadlineNs != deadline {
				t.Errorf("DeadlineNs %d, want the command's %d", sent.DeadlineNs, deadline)
			}
			stage(t, c, schema.CommandAck{ID: 5, Stage: final, Message: "no"})
			if a := <-ackc; a.Stage != final || a.ID != 5 {
				t.Fatalf("SendCommand = %+v, want %v", a, final)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSendCommandContext(t *testing.T) {
	f := newFakeSidecar(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, errc, stages, mu := sendAsync(f, ctx, &schema.Command{Target: "valve"})
	c, _ := requesterFake(t, f)
	stage(t, c, schema.CommandAck{ID: 1, Stage: schema.AckAccepted})
	select {
	case err := <-errc:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("SendCommand: %v, want DeadlineExceeded", err)
		}
	case <-time.After(waitFor):
		t.Fatal("SendCommand did not return at the ctx deadline")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(*stages) != 1 || (*stages)[0].Stage != schema.AckAccepted {
		t.Errorf("OnStage got %+v, want ACCEPTED only", *stages)
	}
}

func TestSendCommandErrors(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		f := newFakeSidecar(t)
		_, errc, _, _ := sendAsync(f, context.Background(), &schema.Command{Target: "valve"})
		c := f.accept()
		recv(t, c)
		send(t, c, &shm.Message{Op: shm.OpError, Code: shm.CodeDenied, Message: "uid 1234 is not allowed"})
		if err := <-errc; !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "not allowed") {
			t.Fatalf("SendCommand: %v, want ErrRefused with the reason", err)
		}
	})
	t.Run("bad command", func(t *testing.T) {
		f := newFakeSidecar(t)
		_, errc, _, _ := sendAsync(f, context.Background(), &schema.Command{Target: "valve"})
		c, _ := requesterFake(t, f)
		send(t, c, &shm.Message{Op: shm.OpError, Code: shm.CodeProtocol, Message: "not a valid Command"})
		if err := <-errc; !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "not a valid Command") {
			t.Fatalf("SendCommand: %v, want ErrRefused with the reason", err)
		}
	})
	t.Run("sidecar gone", func(t *testing.T) {
		f := newFakeSidecar(t)
		_, errc, _, _ := sendAsync(f, context.Background(), &schema.Command{Target: "valve"})
		c, _ := requesterFake(t, f)
		stage(t, c, schema.CommandAck{ID: 1, Stage: schema.AckAccepted})
		c.Close()
		if err := <-errc; !errors.Is(err, ErrLost) {
			t.Fatalf("SendCommand: %v, want ErrLost", err)
		}
	})
	t.Run("no sidecar", func(t *testing.T) {
		_, err := SendCommand(context.Background(), &schema.Command{Target: "valve"}, CommandOptions{Name: "nobody", RunDir: t.TempDir()})
		if !errors.Is(err, ErrNoSidecar) {
			t.Fatalf("SendCommand: %v, want ErrNoSidecar", err)
		}
	})
}
