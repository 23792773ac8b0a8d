package sidecar

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
)

// Shutdown with commands in flight to a requester that does not read its
// socket returns promptly and leaves nothing running on unmapped memory.
func TestShutdownWhileDrainBlocked(t *testing.T) {
	cfg := testConfig(t, "--wal-flush-ms", "5")
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	drv := dialPub(t, ctx, cfg, "driver")
	go drv.ServeCommands(ctx, []string{"pump"}, func(_ context.Context, cmd *schema.Command) schema.CommandAck {
		return schema.CommandAck{Stage: schema.AckCompleted}
	})
	waitFor(t, "serve", 5*time.Second, func() bool { return s.Status().Commands.Targets["pump"] != "" })
	c, err := net.Dial("unixpacket", cfg.SocketPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hello, _ := shm.EncodeMessage(&shm.Message{Op: shm.OpHello, Version: shm.ProtocolVersion, Role: shm.RoleRequester})
	c.Write(hello)
	buf := make([]byte, shm.MaxMessageSize)
	c.Read(buf)
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
	pub := dialPub(t, ctx, cfg, "data")
	go func() {
		for i := uint64(0); ctx.Err() == nil; i++ {
			pub.Publish(ctx, e.EncodeData(&schema.DataFrame{Producer: "data", Seq: i}))
			time.Sleep(time.Millisecond)
		}
	}()
	time.Sleep(time.Second)
	t.Logf("in flight before Shutdown: %d", s.Status().Commands.InFlight)
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	t0 := time.Now()
	defer func() { t.Logf("Shutdown took %v", time.Since(t0)) }()
	err = s.Shutdown(sctx)
	scancel()
	if d := time.Since(t0); d > 10*time.Second {
		t.Errorf("Shutdown took %v with a requester that does not read (ctx 2 s): the drain loop or failAll waited on its socket", d)
	}
	t.Logf("Shutdown: %v", err)
	time.Sleep(time.Second) // the process must survive what Shutdown left running
}
