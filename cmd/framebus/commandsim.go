package main

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/framebus/framebus/schema"
)

// commandSim is the command server of `framebus publish --serve-commands`:
// a stand-in for a driver that writes to devices.
type commandSim struct {
	targets []string
	delay   time.Duration
	stage   schema.AckStage
	none    bool // never answer
	served  atomic.Uint64
}

func newCommandSim(targets string, delay time.Duration, reply string) (*commandSim, error) {
	c := &commandSim{delay: delay}
	for _, t := range strings.Split(targets, ",") {
		if t = strings.TrimSpace(t); t != "" {
			c.targets = append(c.targets, t)
		}
	}
	if len(c.targets) == 0 {
		return nil, fmt.Errorf("--serve-commands %q names no target", targets)
	}
	if delay < 0 {
		return nil, fmt.Errorf("--command-delay %s is negative", delay)
	}
	switch reply {
	case "completed":
		c.stage = schema.AckCompleted
	case "failed":
		c.stage = schema.AckFailed
	case "rejected":
		c.stage = schema.AckRejected
	case "none":
		c.none = true
	default:
		return nil, fmt.Errorf("--command-reply %q: want completed, failed, rejected or none", reply)
	}
	return c, nil
}

// handle runs one command: it waits --command-delay, then answers with the
// command's points as readback.
func (c *commandSim) handle(ctx context.Context, cmd *schema.Command) schema.CommandAck {
	c.served.Add(1)
	if c.none {
		// Answer only well after the deadline, when the sidecar has
		// expired the command (the sidecar counts this as a late ack).
		<-ctx.Done()
		time.Sleep(time.Second)
		return schema.CommandAck{Stage: schema.AckFailed, Message: "simulated driver answers too late"}
	}
	if c.delay > 0 {
		t := time.NewTimer(c.delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	return schema.CommandAck{Stage: c.stage, Message: "simulated " + strings.ToLower(c.stage.String()), Readback: cmd.Points}
}
