package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
)

// The tests run against fakeSidecar: a segment and a unixpacket socket in a
// temporary directory, driven step by step by the test, which speaks the
// attach protocol with shm.EncodeMessage and shm.DecodeMessage.

// waitFor bounds every wait of a test.
const waitFor = 5 * time.Second

var fakeCounter atomic.Uint64

type fakeSidecar struct {
	tb     testing.TB
	name   string
	runDir string
	seg    *shm.Segment
	ln     *net.UnixListener
	conns  chan *net.UnixConn
	gen    atomic.Uint64
}

// newFakeSidecar creates a segment and listens on the bus's socket; both go
// away when the test ends.
func newFakeSidecar(tb testing.TB) *fakeSidecar {
	tb.Helper()
	dir := tb.TempDir()
	name := fmt.Sprintf("ct-%d-%d", os.Getpid(), fakeCounter.Add(1))
	seg, err := shm.Create(shm.Config{Name: name, Dir: dir, Size: 2 << 20, MaxRings: 16}, 1)
	if err != nil {
		tb.Fatalf("shm.Create: %v", err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: shm.SocketPath(dir, name), Net: "unixpacket"})
	if err != nil {
		seg.Close()
		seg.Remove()
		tb.Fatalf("listen: %v", err)
	}
	f := &fakeSidecar{tb: tb, name: name, runDir: dir, seg: seg, ln: ln, conns: make(chan *net.UnixConn, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			f.conns <- c
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-done
		for {
			select {
			case c := <-f.conns:
				c.Close()
				continue
			default:
			}
			break
		}
		seg.Close()
		seg.Remove()
	})
	return f
}

// accept returns the next connection; it is closed when the test ends.
func (f *fakeSidecar) accept() *net.UnixConn {
	f.tb.Helper()
	select {
	case c := <-f.conns:
		f.tb.Cleanup(func() { c.Close() })
		return c
	case <-time.After(waitFor):
		f.tb.Fatalf("no connection within %v", waitFor)
		return nil
	}
}

// allocRing allocates a ring as the sidecar would and returns it and its
// generation.
func (f *fakeSidecar) allocRing(kind shm.RingKind, capacity int, notify shm.Notify) (*shm.Ring, uint64) {
	f.tb.Helper()
	gen := 100 + f.gen.Add(1)
	slot, err := f.seg.AllocRing(shm.RingSpec{Kind: kind, Capacity: capacity, Notify: notify, Generation: gen, Owner: shm.Owner{Pid: os.Getpid(), Name: "fake"}})
	if err != nil {
		f.tb.Fatalf("AllocRing: %v", err)
	}
	r, err := f.seg.Ring(slot)
	if err != nil {
		f.tb.Fatalf("Ring: %v", err)
	}
	return r, gen
}

func send(tb testing.TB, c *net.UnixConn, m *shm.Message) {
	tb.Helper()
	b, err := shm.EncodeMessage(m)
	if err != nil {
		tb.Fatalf("EncodeMessage: %v", err)
	}
	if _, err := c.Write(b); err != nil {
		tb.Fatalf("write %s: %v", m.Op, err)
	}
}

func recv(tb testing.TB, c *net.UnixConn) shm.Message {
	tb.Helper()
	m, err := tryRecv(c, waitFor)
	if err != nil {
		tb.Fatalf("recv: %v", err)
	}
	return m
}

func tryRecv(c *net.UnixConn, d time.Duration) (shm.Message, error) {
	buf := make([]byte, shm.MaxMessageSize+1)
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	n, err := c.Read(buf)
	if err != nil {
		return shm.Message{}, err
	}
	return shm.DecodeMessage(buf[:n])
}

func mustProducer(tb testing.TB, r *shm.Ring) *shm.Producer {
	tb.Helper()
	p, err := r.Producer(1)
	if err != nil {
		tb.Fatalf("Producer: %v", err)
	}
	return p
}

// writeEgress writes one egress record, [seq][frame] of type kind, waiting
// for space.
func writeEgress(prod *shm.Producer, seq uint64, kind schema.Kind, frame []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	for {
		cl, err := prod.Claim(uint16(kind), shm.EgressHeaderSize+len(frame))
		if errors.Is(err, shm.ErrFull) {
			if !prod.WaitSpace(ctx, shm.EgressHeaderSize+len(frame), shm.DefaultSpin) {
				return fmt.Errorf("seq %d: no space in the egress ring within %v", seq, waitFor)
			}
			continue
		}
		if err != nil {
			return err
		}
		binary.LittleEndian.PutUint64(cl.Buf, seq)
		copy(cl.Buf[shm.EgressHeaderSize:], frame)
		prod.Commit(cl)
		return nil
	}
}

// subscribeFake runs Subscribe against f: it answers the hello with a
// welcome for a new egress ring of ringBytes and start seq, and returns the
// subscription, the hello, the connection and the ring.
func subscribeFake(t *testing.T, f *fakeSidecar, filter Filter, from From, opts SubscribeOptions, ringBytes int, start uint64) (*Subscription, shm.Message, *net.UnixConn, *shm.Ring) {
	t.Helper()
	opts.Name, opts.RunDir = f.name, f.runDir
	type result struct {
		s   *Subscription
		err error
	}
	res := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		s, err := Subscribe(ctx, filter, from, opts)
		res <- result{s, err}
	}()
	c := f.accept()
	hello := recv(t, c)
	ring, gen := f.allocRing(shm.KindEgress, ringBytes, shm.NotifyRing)
	send(t, c, &shm.Message{Op: shm.OpWelcome, Version: shm.ProtocolVersion, Segment: f.seg.Path(), Slot: ring.Slot(), Generation: gen, Epoch: 1,
		RingBytes: ring.Capacity(), Seq: start})
	r := <-res
	if r.err != nil {
		t.Fatalf("Subscribe: %v", r.err)
	}
	t.Cleanup(func() { r.s.Close() })
	return r.s, hello, c, ring
}

func next(t *testing.T, s *Subscription) Frame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	fr, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return fr
}

func TestSubscribeHello(t *testing.T) {
	tests := []struct {
		name   string
		filter Filter
		from   From
		opts   SubscribeOptions
		want   shm.Message
	}{
		{"zero", Filter{}, From{}, SubscribeOptions{}, shm.Message{From: shm.FromLatest}},
		{"latest live", Filter{}, Latest(), SubscribeOptions{Live: true, RingBytes: 8192}, shm.Message{From: shm.FromLatest, Live: true, RingBytes: 8192}},
		{"earliest", Filter{Device: "pump"}, Earliest(), SubscribeOptions{}, shm.Message{From: shm.FromEarliest, Filter: &shm.Filter{Device: "pump"}}},
		{"seq", Filter{Producer: "modbus", Tag: "line1/*", Kinds: []schema.Kind{schema.KindData, schema.KindAck}}, Seq(42), SubscribeOptions{},
			shm.Message{From: shm.FromSeq, Seq: 42, Filter: &shm.Filter{Producer: "modbus", Tag: "line1/*", Kinds: []uint16{1, 3}}}},
		{"cursor", Filter{}, Cursor("historian"), SubscribeOptions{}, shm.Message{From: shm.FromCursor, Cursor: "historian"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := subscribeHello(tt.filter, tt.from, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			want.Op, want.Version, want.Role = shm.OpHello, shm.ProtocolVersion, shm.RoleSubscriber
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("hello = %+v, want %+v", *got, want)
			}
		})
	}
	for _, bad := range []struct {
		name   string
		filter Filter
		from   From
		opts   SubscribeOptions
	}{
		{"bad glob", Filter{Tag: "["}, Latest(), SubscribeOptions{}},
		{"cursor without name", Filter{}, Cursor(""), SubscribeOptions{}},
		{"negative ring", Filter{}, Latest(), SubscribeOptions{RingBytes: -1}},
	} {
		if _, err := subscribeHello(bad.filter, bad.from, bad.opts); err == nil {
			t.Errorf("%s: no error", bad.name)
		}
	}
}

func TestSubscribeDelivers(t *testing.T) {
	f := newFakeSidecar(t)
	filter := Filter{Producer: "modbus", Kinds: []schema.Kind{schema.KindData, schema.KindAck}}
	s, hello, _, ring := subscribeFake(t, f, filter, Seq(5), SubscribeOptions{RingBytes: 8192}, 8192, 7)
	if hello.Role != shm.RoleSubscriber || hello.From != shm.FromSeq || hello.Seq != 5 || hello.RingBytes != 8192 || hello.Live ||
		!reflect.DeepEqual(hello.Filter, &shm.Filter{Producer: "modbus", Kinds: []uint16{1, 3}}) {
		t.Fatalf("hello = %+v", hello)
	}
	if s.Start() != 7 {
		t.Errorf("Start = %d, want 7", s.Start())
	}
	enc := schema.NewEncoder(0)
	data := bytes.Clone(enc.EncodeData(&schema.DataFrame{Producer: "modbus", Device: "pump", Seq: 3, Points: []schema.Point{{Tag: "rpm", Value: schema.F64(1450)}}}))
	ack := bytes.Clone(enc.EncodeCommandAck(&schema.CommandAck{ID: 9, Stage: schema.AckCompleted, Message: "ok"}))
	want := []Frame{{7, schema.KindData, data}, {8, schema.KindAck, ack}, {12, schema.KindData, []byte{}}, {13, schema.Kind(77), []byte("opaque")}}
	prod := mustProducer(t, ring)
	for _, w := range want {
		if err := writeEgress(prod, w.Seq, w.Kind, w.Data); err != nil {
			t.Fatal(err)
		}
	}
	for i, w := range want {
		got := next(t, s)
		if got.Seq != w.Seq || got.Kind != w.Kind || !bytes.Equal(got.Data, w.Data) {
			t.Fatalf("frame %d = {%d %v %q}, want {%d %v %q}", i, got.Seq, got.Kind, got.Data, w.Seq, w.Kind, w.Data)
		}
		if i == 0 {
			v := schema.RootDataFrame(got.Data)
			if string(v.Device()) != "pump" || v.Seq() != 3 {
				t.Errorf("data frame read in place: device %q seq %d", v.Device(), v.Seq())
			}
		}
	}
}

func TestSubscribeReleasesSpace(t *testing.T) {
	f := newFakeSidecar(t)
	const ringBytes = shm.MinRingCapacity
	s, _, _, ring := subscribeFake(t, f, Filter{}, Earliest(), SubscribeOptions{}, ringBytes, 1)
	prod := mustProducer(t, ring)
	frame := func(seq uint64) []byte {
		b := make([]byte, 100+seq%90)
		for i := range b {
			b[i] = byte(seq*13 + uint64(i))
		}
		return b
	}
	// Next releases the previous frame, not the one it returns.
	for seq := uint64(1); seq <= 2; seq++ {
		if err := writeEgress(prod, seq, schema.KindData, frame(seq)); err != nil {
			t.Fatal(err)
		}
	}
	first := (shm.RecordHeaderSize + shm.EgressHeaderSize + len(frame(1)) + 7) &^ 7
	if fr := next(t, s); fr.Seq != 1 {
		t.Fatalf("seq %d, want 1", fr.Seq)
	}
	if h := ring.Head(); h != 0 {
		t.Fatalf("head %d after the first Next, want 0 (the frame is still in use)", h)
	}
	if fr := next(t, s); fr.Seq != 2 {
		t.Fatalf("seq %d, want 2", fr.Seq)
	}
	if h := ring.Head(); h > uint64(first) {
		t.Fatalf("head %d after the second Next, beyond the first frame (%d): the frame in use was released", h, first)
	}
	// With nothing to read, Next releases everything before it sleeps.
	second := (shm.RecordHeaderSize + shm.EgressHeaderSize + len(frame(2)) + 7) &^ 7
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	if _, err := s.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next on an empty ring: %v, want the context's deadline", err)
	}
	cancel()
	if h := ring.Head(); h != uint64(first+second) {
		t.Fatalf("head %d after a Next that found nothing, want %d (both frames released)", h, first+second)
	}

	// Many times the ring's capacity: the writer needs the space Next
	// frees.
	const total = 300
	errc := make(chan error, 1)
	go func() {
		for seq := uint64(3); seq <= total; seq++ {
			if err := writeEgress(prod, seq, schema.KindData, frame(seq)); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	var bytesRead int
	for seq := uint64(3); seq <= total; seq++ {
		fr := next(t, s)
		if fr.Seq != seq || fr.Kind != schema.KindData || !bytes.Equal(fr.Data, frame(seq)) {
			t.Fatalf("frame seq %d kind %v (%d bytes), want seq %d (%d bytes)", fr.Seq, fr.Kind, len(fr.Data), seq, len(frame(seq)))
		}
		bytesRead += len(fr.Data)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if bytesRead < 5*ringBytes {
		t.Fatalf("read %d bytes; the test should cycle the %d-byte ring several times", bytesRead, ringBytes)
	}
}

func TestSubscribeAckLostClose(t *testing.T) {
	f := newFakeSidecar(t)
	s, hello, c, _ := subscribeFake(t, f, Filter{}, Cursor("historian"), SubscribeOptions{}, 8192, 1)
	if hello.From != shm.FromCursor || hello.Cursor != "historian" {
		t.Fatalf("hello = %+v", hello)
	}
	if err := s.Ack(41); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if m := recv(t, c); m.Op != shm.OpAck || m.Seq != 41 {
		t.Fatalf("got %+v, want ack{seq 41}", m)
	}

	send(t, c, &shm.Message{Op: shm.OpLost, Count: 3, Message: "retention"})
	send(t, c, &shm.Message{Op: shm.OpLost, Count: 4, Message: "retention"})
	deadline := time.Now().Add(waitFor)
	for s.Lost() != 7 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := s.Lost(); n != 7 {
		t.Fatalf("Lost = %d, want 7", n)
	}

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if m := recv(t, c); m.Op != shm.OpBye {
		t.Fatalf("got %+v, want bye", m)
	}
	if _, err := tryRecv(c, waitFor); err == nil {
		t.Fatal("socket still open after Close")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Next(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close: %v, want ErrClosed", err)
	}
	if err := s.Ack(42); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ack after Close: %v, want ErrClosed", err)
	}
}

func TestSubscribeAckNeedsCursor(t *testing.T) {
	f := newFakeSidecar(t)
	s, _, c, _ := subscribeFake(t, f, Filter{}, Latest(), SubscribeOptions{}, 8192, 1)
	if err := s.Ack(1); err == nil {
		t.Fatal("Ack on a subscription without a cursor succeeded")
	}
	if m, err := tryRecv(c, 50*time.Millisecond); err == nil {
		t.Fatalf("the sidecar got %+v", m)
	}
}

func TestSubscribeSidecarGone(t *testing.T) {
	f := newFakeSidecar(t)
	s, _, c, _ := subscribeFake(t, f, Filter{}, Latest(), SubscribeOptions{}, 8192, 1)
	errc := make(chan error, 1)
	go func() {
		_, err := s.Next(context.Background())
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // let Next sleep on the futex
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrLost) {
			t.Fatalf("Next: %v, want ErrLost", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Next still blocked after the sidecar went away")
	}
	if err := s.Ack(1); err == nil {
		t.Fatal("Ack after the sidecar went away succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestSubscribeCloseWakesNext(t *testing.T) {
	f := newFakeSidecar(t)
	s, _, c, _ := subscribeFake(t, f, Filter{}, Latest(), SubscribeOptions{}, 8192, 1)
	errc := make(chan error, 1)
	go func() {
		_, err := s.Next(context.Background())
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Next: %v, want ErrClosed", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Next still blocked after Close")
	}
	if m := recv(t, c); m.Op != shm.OpBye {
		t.Fatalf("got %+v, want bye", m)
	}
}

func TestSubscribeNextContext(t *testing.T) {
	f := newFakeSidecar(t)
	s, _, _, _ := subscribeFake(t, f, Filter{}, Latest(), SubscribeOptions{}, 8192, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := s.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > waitFor {
		t.Fatalf("Next returned after %v", d)
	}
}

func TestSubscribeRefused(t *testing.T) {
	f := newFakeSidecar(t)
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		s, err := Subscribe(ctx, Filter{}, Cursor("historian"), SubscribeOptions{Name: f.name, RunDir: f.runDir})
		if err == nil {
			s.Close()
		}
		errc <- err
	}()
	c := f.accept()
	recv(t, c)
	send(t, c, &shm.Message{Op: shm.OpError, Code: shm.CodeCursor, Message: "cursor \"historian\" is in use"})
	err := <-errc
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "is in use") {
		t.Fatalf("Subscribe: %v, want ErrRefused with the sidecar's reason", err)
	}
}

func TestSubscribeNoSidecar(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err := Subscribe(ctx, Filter{}, Latest(), SubscribeOptions{Name: "nobody", RunDir: t.TempDir()})
	if !errors.Is(err, ErrNoSidecar) {
		t.Fatalf("Subscribe: %v, want ErrNoSidecar", err)
	}
}
