package test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/wal"
)

// serveDriver starts `framebus publish` as a command server for target and
// waits until the sidecar has registered it.
func (b *bus) serveDriver(sc *proc, producer, target string, extra ...string) *proc {
	b.t.Helper()
	before := strings.Count(sc.out.String(), "driver serves commands")
	p := b.publish(producer, 1, append([]string{"--serve-commands", target}, extra...)...)
	waitFor(b.t, 20*time.Second, "the driver's command registration", func() bool {
		return strings.Count(sc.out.String(), "driver serves commands") > before
	})
	return p
}

func (b *bus) cmd(args ...string) *proc {
	return start(b.t, append([]string{"cmd", "--name", b.name, "--run-dir", b.runDir}, args...)...)
}

func (b *bus) sendCommand(t testing.TB, c *schema.Command, onStage func(schema.CommandAck)) (schema.CommandAck, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return client.SendCommand(ctx, c, client.CommandOptions{Name: b.name, RunDir: b.runDir, OnStage: onStage})
}

// TestCommands: completed, rejected (no target), expired at the deadline,
// failed when the driver dies, and 10 000 concurrent commands from 4
// requester processes, each resolved exactly once.
func TestCommands(t *testing.T) {
	b := newBus(t)
	sc := b.startSidecar()
	b.serveDriver(sc, "drv", "pump")

	t.Run("completed", func(t *testing.T) {
		c := b.cmd("--target", "pump", "--device", "p1", "--set", "speed=1500", "--set", "mode=auto")
		if err := c.wait(t, time.Minute); err != nil {
			t.Fatalf("framebus cmd: %v\n%s", err, c.out.String())
		}
		out := c.out.String()
		if !strings.Contains(out, "ACCEPTED") || !regexp.MustCompile(`COMPLETED id=\d+ .*speed=1500 GOOD, mode="auto" GOOD`).MatchString(out) {
			t.Fatalf("framebus cmd output:\n%s", out)
		}
	})
	t.Run("rejected", func(t *testing.T) {
		c := b.cmd("--target", "nosuch", "--device", "p1", "--set", "x=1")
		if err := c.wait(t, time.Minute); err == nil {
			t.Fatalf("framebus cmd to a target nobody serves exited 0:\n%s", c.out.String())
		}
		if out := c.out.String(); !strings.Contains(out, "REJECTED") || !strings.Contains(out, `no driver serves target "nosuch"`) {
			t.Fatalf("framebus cmd output:\n%s", out)
		}
	})
	t.Run("expired", func(t *testing.T) {
		b.serveDriver(sc, "mute", "silent", "--command-reply", "none")
		// The deviation from the deadline as the requester sees it
		// (timers, the socket and scheduling on a busy machine included):
		// the median of 5 within ±10 ms, none beyond ±50 ms.
		var devs []time.Duration
		for i := 0; i < 5; i++ {
			deadline := time.Now().Add(300 * time.Millisecond)
			var at time.Time
			ack, err := b.sendCommand(t, &schema.Command{Target: "silent", Device: "d", DeadlineNs: deadline.UnixNano()},
				func(a schema.CommandAck) { at = time.Now() })
			if err != nil {
				t.Fatal(err)
			}
			if ack.Stage != schema.AckExpired {
				t.Fatalf("final stage %v (%s), want EXPIRED", ack.Stage, ack.Message)
			}
			devs = append(devs, at.Sub(deadline))
		}
		t.Logf("EXPIRED after the deadline: %v", devs)
		slices.Sort(devs)
		if med := devs[len(devs)/2]; med < -10*time.Millisecond || med > 10*time.Millisecond || devs[0] < -50*time.Millisecond || devs[len(devs)-1] > 50*time.Millisecond {
			t.Errorf("EXPIRED arrived %v from the deadline (sorted); want the median within ±10 ms and all within ±50 ms", devs)
		}
	})
	t.Run("driver killed", func(t *testing.T) {
		victim := b.serveDriver(sc, "victim", "doomed", "--command-delay", "1h")
		accepted := make(chan struct{})
		done := make(chan schema.CommandAck, 1)
		go func() {
			ack, err := b.sendCommand(t, &schema.Command{Target: "doomed", Device: "d", DeadlineNs: time.Now().Add(20 * time.Second).UnixNano()},
				func(a schema.CommandAck) {
					if a.Stage == schema.AckAccepted {
						close(accepted)
					}
				})
			if err != nil {
				t.Error(err)
			}
			done <- ack
		}()
		select {
		case <-accepted:
		case <-time.After(10 * time.Second):
			t.Fatal("no ACCEPTED from the driver")
		}
		killed := time.Now()
		victim.cmd.Process.Signal(syscall.SIGKILL)
		select {
		case ack := <-done:
			if ack.Stage != schema.AckFailed || !strings.Contains(ack.Message, "victim") {
				t.Fatalf("final stage %v %q, want FAILED naming the driver", ack.Stage, ack.Message)
			}
			t.Logf("FAILED %v after the kill: %s", time.Since(killed).Round(time.Millisecond), ack.Message)
		case <-time.After(15 * time.Second):
			t.Fatal("the command was left hanging after its driver died")
		}
	})
	t.Run("requester connection", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		r, err := client.DialRequester(ctx, client.CommandOptions{Name: b.name, RunDir: b.runDir})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		ids := map[uint64]bool{}
		for i := 0; i < 200; i++ {
			stages := 0
			ack, err := r.Send(ctx, &schema.Command{Target: "pump", Device: "d", Points: []schema.Point{{Tag: "x", Value: schema.I64(int64(i))}},
				DeadlineNs: time.Now().Add(5 * time.Second).UnixNano()}, func(schema.CommandAck) { stages++ })
			if err != nil {
				t.Fatalf("command %d: %v", i, err)
			}
			if ack.Stage != schema.AckCompleted || stages != 2 || ids[ack.ID] || len(ack.Readback) != 1 || ack.Readback[0].Value.I64() != int64(i) {
				t.Fatalf("command %d: %+v after %d stages (ids so far %d)", i, ack, stages, len(ids))
			}
			ids[ack.ID] = true
		}
		// A ctx that ends first makes the requester unusable, clearly.
		short, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel2()
		if _, err := r.Send(short, &schema.Command{Target: "silent", Device: "d", DeadlineNs: time.Now().Add(5 * time.Second).UnixNano()}, nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Send with a short ctx: %v", err)
		}
		if _, err := r.Send(ctx, &schema.Command{Target: "pump"}, nil); !errors.Is(err, client.ErrLost) {
			t.Fatalf("Send after a broken one: %v, want ErrLost", err)
		}
	})
	t.Run("10000 concurrent", func(t *testing.T) {
		const procs, each = 4, 2500
		var ps []*proc
		for i := 0; i < procs; i++ {
			ps = append(ps, b.cmd("--target", "pump", "--device", fmt.Sprintf("r%d", i), "--set", "x=1",
				"--repeat", fmt.Sprint(each), "--parallel", "32", "--timeout", "20s"))
		}
		want := regexp.MustCompile(fmt.Sprintf(`commands %d: COMPLETED %d REJECTED 0 EXPIRED 0 FAILED 0, errors 0, duplicate ids 0`, each, each))
		for _, p := range ps {
			if err := p.wait(t, 3*time.Minute); err != nil || !want.MatchString(p.out.String()) {
				t.Fatalf("framebus cmd --repeat: %v\n%s", err, p.out.String())
			}
			t.Log(strings.TrimSpace(p.out.String()))
		}
	})
	sc.stop(t)

	// The WAL's audit trail: every command once, and exactly one final ack
	// for each.
	w, err := wal.Open(wal.Options{Dir: b.walPath()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	commands := map[uint64]string{}
	finals := map[uint64]int{}
	err = w.Iterate(1, func(seq uint64, f wal.Frame) error {
		switch schema.Kind(f.Kind) {
		case schema.KindCommand:
			var c schema.Command
			if err := schema.DecodeCommand(f.Data, &c); err != nil {
				return err
			}
			if _, dup := commands[c.ID]; dup {
				return fmt.Errorf("command id %d twice in the WAL", c.ID)
			}
			commands[c.ID] = c.Target
		case schema.KindAck:
			a := schema.RootCommandAck(f.Data)
			if schema.AckStage(a.Stage()) != schema.AckAccepted {
				finals[a.Id()]++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(commands) < 10000 {
		t.Fatalf("the WAL holds %d commands, want at least 10 000", len(commands))
	}
	for id, target := range commands {
		// The silent driver answers after EXPIRED (a late ack, also in
		// the audit trail); every other command has one final ack.
		if n := finals[id]; n != 1 && !(target == "silent" && n == 2) {
			t.Fatalf("command %d (target %s) has %d final acks in the WAL", id, target, n)
		}
	}
}
