package sidecar

import (
	"context"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
)

// A durable-cursor subscriber whose filter matches nothing (or rarely)
// never receives a frame to ack, so its cursor stayed at its start: under
// the retain policy it held retention and, at cursor_max_bytes, paused
// every producer, although it had acked everything it could.
func TestFilteredCursorDoesNotHoldRetention(t *testing.T) {
	cfg := testConfig(t, "--wal-max-bytes", "1MiB", "--cursor-max-bytes", "2MiB", "--wal-flush-ms", "2")
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sub, err := client.Subscribe(ctx, client.Filter{Device: "rare"}, client.Cursor("rare"), client.SubscribeOptions{Name: cfg.Name, RunDir: cfg.RunDir})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pub := dialPub(t, ctx, cfg, "busy")
	tpl, err := schema.NewDataTemplate("busy", "common", []schema.TemplateTag{{Tag: "t", Type: schema.TypeF64}})
	if err != nil {
		t.Fatal(err)
	}
	// About 4 MiB of frames the filter skips: twice cursor_max_bytes.
	frames := 4 << 20 / len(tpl.Bytes())
	for i := 0; i < frames; i++ {
		tpl.SetSeq(uint64(i))
		pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
		err := pub.Publish(pctx, tpl.Bytes())
		pcancel()
		if err != nil {
			t.Fatalf("frame %d of %d: %v (status: paused=%v retention_held=%v)", i, frames, err, s.Status().Paused, s.Status().WAL.RetentionHeld)
		}
	}
	if err := pub.WaitDurable(ctx); err != nil {
		t.Fatal(err)
	}
	// One matching frame is still delivered, after all that.
	rare, _ := schema.NewDataTemplate("busy", "rare", []schema.TemplateTag{{Tag: "t", Type: schema.TypeF64}})
	if err := pub.Publish(ctx, rare.Bytes()); err != nil {
		t.Fatal(err)
	}
	f, err := sub.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := schema.RootDataFrame(f.Data); string(d.Device()) != "rare" {
		t.Fatalf("got a frame of device %q", d.Device())
	}
	// Before the frame, the cursor had moved over most of the skipped ones
	// (it moves at most every 100 ms, so not necessarily all of them).
	if ci := s.Status().Cursors["rare"]; ci.Acked < uint64(frames)/2 {
		t.Errorf("cursor at %d after %d skipped frames: it was not moved over them", ci.Acked, frames)
	}
}
