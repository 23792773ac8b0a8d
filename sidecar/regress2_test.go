package sidecar

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
)

// a command the sidecar has already EXPIRED (the requester was told)
// is still handed to the driver's handler, which performs the write.
func TestExecutedAfterExpired(t *testing.T) {
	cfg := testConfig(t)
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	drv := dialPub(t, ctx, cfg, "slow")
	var mu sync.Mutex
	executed := map[uint64]time.Time{}
	go drv.ServeCommands(ctx, []string{"valve"}, func(hctx context.Context, cmd *schema.Command) schema.CommandAck {
		mu.Lock()
		executed[cmd.ID] = time.Now() // "write the setpoint"
		mu.Unlock()
		time.Sleep(300 * time.Millisecond) // a slow fieldbus write, ignoring ctx
		return schema.CommandAck{Stage: schema.AckCompleted}
	})
	waitFor(t, "serve", 5*time.Second, func() bool { return s.Status().Commands.Targets["valve"] != "" })
	var wg sync.WaitGroup
	expired := map[uint64]time.Time{}
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var id uint64
			ack, err := client.SendCommand(ctx, &schema.Command{Target: "valve", DeadlineNs: time.Now().Add(400 * time.Millisecond).UnixNano()},
				client.CommandOptions{Name: cfg.Name, RunDir: cfg.RunDir})
			if err != nil {
				t.Error(err)
				return
			}
			id = ack.ID
			if ack.Stage == schema.AckExpired {
				mu.Lock()
				expired[id] = time.Now()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	time.Sleep(1500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	for id, te := range expired {
		if tx, ok := executed[id]; ok && tx.After(te) {
			t.Errorf("command %d: requester told EXPIRED at %v, driver executed it %v later", id, te.Format("15:04:05.000"), tx.Sub(te))
		}
	}
}
