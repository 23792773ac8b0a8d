package sidecar

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
)

// subscriberSet.remove deletes by slot, so removing an old subscriber
// whose slot has been reused deletes the new one.
func TestRemoveWrongSub(t *testing.T) {
	var ss subscriberSet
	a := &subscriber{slot: 3, live: true, label: "A"}
	b := &subscriber{slot: 3, live: true, label: "B"}
	ss.add(a)
	ss.add(b) // slot 3 freed by A's feeder and reallocated to B
	ss.remove(a)
	if got := ss.list(); len(got) != 1 {
		t.Errorf("after remove(A): %d subscribers listed, want 1 (B); live list has %d", len(got), len(*ss.live.Load()))
	}
}

// two concurrent subscribers on the same cursor.
func TestCursorTOCTOU(t *testing.T) {
	cfg := testConfig(t, "--max-rings", "64", "--ring-bytes", "65536")
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	worst := 0
	for round := 0; round < 20; round++ {
		name := fmt.Sprintf("c%d", round)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var subs []*client.Subscription
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sub, err := client.Subscribe(ctx, client.Filter{}, client.Cursor(name), client.SubscribeOptions{Name: cfg.Name, RunDir: cfg.RunDir, RingBytes: 4096})
				if err == nil {
					mu.Lock()
					subs = append(subs, sub)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		worst = max(worst, len(subs))
		for _, sub := range subs {
			sub.Close()
		}
	}
	if worst > 1 {
		t.Errorf("up to %d subscriptions were granted the same cursor at once", worst)
	}
}

func dialPub(t *testing.T, ctx context.Context, cfg Config, name string) *client.Publisher {
	p, err := client.Dial(ctx, client.Config{Name: cfg.Name, RunDir: cfg.RunDir, Producer: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// any producer can publish the final ack of a command routed to
// another driver.
func TestForgedAck(t *testing.T) {
	cfg := testConfig(t)
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	drv := dialPub(t, ctx, cfg, "real-driver")
	go drv.ServeCommands(ctx, []string{"pump"}, func(ctx context.Context, cmd *schema.Command) schema.CommandAck {
		<-ctx.Done() // a slow write
		return schema.CommandAck{Stage: schema.AckFailed, Message: "real driver: too slow"}
	})
	waitFor(t, "serve", 5*time.Second, func() bool { return s.Status().Commands.Targets["pump"] != "" })
	evil := dialPub(t, ctx, cfg, "other-driver")
	var e schema.Encoder
	ack, err := client.SendCommand(ctx, &schema.Command{Target: "pump", DeadlineNs: time.Now().Add(5 * time.Second).UnixNano()},
		client.CommandOptions{Name: cfg.Name, RunDir: cfg.RunDir, OnStage: func(a schema.CommandAck) {
			if a.Stage == schema.AckAccepted {
				evil.PublishKind(ctx, schema.KindAck, e.EncodeCommandAck(&schema.CommandAck{ID: a.ID, Stage: schema.AckCompleted, Message: "forged by other-driver"}))
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if ack.Stage == schema.AckCompleted {
		t.Errorf("requester got %v %q: a producer that does not serve the target completed the command", ack.Stage, ack.Message)
	}
}

// HTTP command whose final ack is dropped because the stage channel
// (cap 8) is full of ACCEPTED stages.
func TestHTTPFinalDropped(t *testing.T) {
	cfg := testConfig(t, "--http-addr", "127.0.0.1:0")
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	drv := dialPub(t, ctx, cfg, "chatty")
	var e schema.Encoder
	go drv.ServeCommands(ctx, []string{"pump"}, func(_ context.Context, cmd *schema.Command) schema.CommandAck {
		for i := 0; i < 30; i++ {
			drv.PublishKind(ctx, schema.KindAck, bytes.Clone(e.EncodeCommandAck(&schema.CommandAck{ID: cmd.ID, Stage: schema.AckAccepted, Message: "progress"})))
		}
		return schema.CommandAck{Stage: schema.AckCompleted, Message: "done"}
	})
	waitFor(t, "serve", 5*time.Second, func() bool { return s.Status().Commands.Targets["pump"] != "" })
	hung := 0
	for i := 0; i < 5; i++ {
		hc := &http.Client{Timeout: 2 * time.Second}
		resp, err := hc.Post("http://"+s.apiAddr+"/v1/commands?stream=1", "application/json", strings.NewReader(`{"kind":"command","target":"pump","device":"d","command_kind":"WRITE","points":[]}`))
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil && !strings.Contains(string(body), "COMPLETED") {
			hung++
			t.Logf("POST %d: no final stage after 2 s (%d ACCEPTED lines): %v", i, strings.Count(string(body), "ACCEPTED"), err)
		}
	}
	if hung > 0 {
		t.Errorf("%d of 5 POST /v1/commands?stream=1 never got their final COMPLETED", hung)
	}
}

// a requester that does not read its socket stalls the drain loop
// (the drain goroutine forwards stages with a 1 s write deadline).
func TestRequesterStallsDrain(t *testing.T) {
	cfg := testConfig(t, "--wal-flush-ms", "5")
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	drv := dialPub(t, ctx, cfg, "driver")
	go drv.ServeCommands(ctx, []string{"pump"}, func(_ context.Context, cmd *schema.Command) schema.CommandAck {
		return schema.CommandAck{Stage: schema.AckCompleted}
	})
	waitFor(t, "serve", 5*time.Second, func() bool { return s.Status().Commands.Targets["pump"] != "" })
	// A requester that never reads.
	c, err := net.Dial("unixpacket", cfg.SocketPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hello, _ := shm.EncodeMessage(&shm.Message{Op: shm.OpHello, Version: shm.ProtocolVersion, Role: shm.RoleRequester})
	c.Write(hello)
	buf := make([]byte, shm.MaxMessageSize)
	c.Read(buf) // welcome
	var e schema.Encoder
	msg, _ := shm.EncodeMessage(&shm.Message{Op: shm.OpCommand, Frame: e.EncodeCommand(&schema.Command{Target: "pump", Device: "d",
		Points: []schema.Point{{Tag: strings.Repeat("x", 200), Value: schema.U64(1)}}})})
	go func() {
		for i := 0; i < 2000 && ctx.Err() == nil; i++ {
			if _, err := c.Write(msg); err != nil {
				return
			}
		}
	}()
	time.Sleep(3 * time.Second)
	{
		var b strings.Builder
		pprof.Lookup("goroutine").WriteTo(&b, 2)
		for _, g := range strings.Split(b.String(), "\n\n") {
			if strings.Contains(g, "drainLoop") {
				t.Logf("drain goroutine:\n%s", g)
			}
		}
	}
	// Now a plain data producer: how long until its frame is durable?
	pub := dialPub(t, ctx, cfg, "data")
	var worst time.Duration
	for i := 0; i < 5; i++ {
		t0 := time.Now()
		if err := pub.Publish(ctx, e.EncodeData(&schema.DataFrame{Producer: "data", Seq: uint64(i), Points: []schema.Point{{Tag: "t", Value: schema.U64(1)}}})); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		err := pub.WaitDurable(wctx)
		wcancel()
		d := time.Since(t0)
		t.Logf("frame %d durable after %v (err %v)", i, d, err)
		worst = max(worst, d)
	}
	if worst > 500*time.Millisecond {
		t.Errorf("publish→durable took up to %v while a requester does not read its socket (wal_flush_ms 5)", worst)
	}
}

// a WAL subscriber whose cursor ack is beyond the durable watermark
// (but <= LastSeq) is accepted.
func TestAckBeyondDurable(t *testing.T) {
	cfg := testConfig(t, "--wal-flush-ms", "2000")
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sub, err := client.Subscribe(ctx, client.Filter{}, client.Cursor("cur"), client.SubscribeOptions{Name: cfg.Name, RunDir: cfg.RunDir})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pub := dialPub(t, ctx, cfg, "data")
	var e schema.Encoder
	for i := 0; i < 10; i++ {
		pub.Publish(ctx, e.EncodeData(&schema.DataFrame{Producer: "data", Seq: uint64(i)}))
	}
	waitFor(t, "appended", 5*time.Second, func() bool { return s.wal.LastSeq() >= 10 })
	if err := sub.Ack(10); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	c, _ := s.wal.Cursor("cur")
	if c.Acked > s.wal.Durable() {
		t.Errorf("cursor acked %d, durable %d, delivered %d: ack of frames never delivered (not even durable) accepted", c.Acked, s.wal.Durable(), s.Status().Subscribers[0].Delivered)
	}
}

var _ = binary.LittleEndian
var _ atomic.Bool
