package sidecar

import (
	"context"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
)

// commands and sidecar-issued acks are appended with wal.Append and
// never handed to feedLive: a live subscriber never sees them.
func TestLiveMissesCommands(t *testing.T) {
	cfg := testConfig(t, "--wal-flush-ms", "5")
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f := client.Filter{Kinds: []schema.Kind{schema.KindCommand, schema.KindAck}}
	live, err := client.Subscribe(ctx, f, client.Latest(), client.SubscribeOptions{Name: cfg.Name, RunDir: cfg.RunDir, Live: true})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	durable, err := client.Subscribe(ctx, f, client.Latest(), client.SubscribeOptions{Name: cfg.Name, RunDir: cfg.RunDir})
	if err != nil {
		t.Fatal(err)
	}
	defer durable.Close()
	ack, err := client.SendCommand(ctx, &schema.Command{Target: "nobody"}, client.CommandOptions{Name: cfg.Name, RunDir: cfg.RunDir})
	t.Logf("command: %v %q %v", ack.Stage, ack.Message, err)
	count := func(sub *client.Subscription) (n int) {
		for {
			c, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			_, err := sub.Next(c)
			cancel()
			if err != nil {
				return n
			}
			n++
		}
	}
	nd, nl := count(durable), count(live)
	t.Logf("WAL subscriber got %d frames (command + ack), live subscriber %d; live lost=%d", nd, nl, live.Lost())
	if nl != nd {
		t.Errorf("live subscription missed %d command/ack frames without a lost notice", nd-nl)
	}
}
