package test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
)

// TestLargeFramesDoNotStall: frames close to max_memory_bytes at saturation
// are drained a few at a time (a pass is bounded by bytes, not only by
// max_batch_size frames: a pass of 2000 such frames never fit the WAL's
// memory queue, and the ring stalled for good); a frame larger than the
// queue can ever take is rejected and counted, and the frames after it
// are durable.
func TestLargeFramesDoNotStall(t *testing.T) {
	b := newBus(t, "--max-memory-bytes", "256KiB", "--async-write-queue-size", "2000")
	sc := b.startSidecar()

	// 1000-point frames: about 52 KB each, 5 to a 256 KiB queue.
	const n = 400
	d := b.publish("large", n, "--points", "1000")
	if err := d.wait(t, time.Minute); err != nil {
		t.Fatalf("publishing %d frames of 1000 points: %v\n%s\nsidecar:\n%s", n, err, d.out.String(), sc.out.String())
	}
	if !strings.Contains(d.out.String(), fmt.Sprintf("published %d frames (0 dropped, 0 rejected)", n)) {
		t.Fatalf("driver output: %s", d.out.String())
	}

	// A frame the queue can never take: 6000 points, about 300 KB.
	tags := make([]schema.TemplateTag, 6000)
	for i := range tags {
		tags[i] = schema.TemplateTag{Tag: fmt.Sprintf("big/tag%d", i), Type: schema.TypeF64}
	}
	big, err := schema.NewDataTemplate("huge", "dev", tags)
	if err != nil {
		t.Fatal(err)
	}
	small, err := schema.NewDataTemplate("huge", "dev", tags[:1])
	if err != nil {
		t.Fatal(err)
	}
	var rejected atomic.Uint64
	var reason atomic.Value
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pub, err := client.Dial(ctx, client.Config{Name: b.name, RunDir: b.runDir, Producer: "huge", RingBytes: 1 << 20,
		OnRejected: func(c uint64, r string) { rejected.Add(c); reason.Store(r) }})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if len(big.Bytes()) <= 256<<10 {
		t.Fatalf("the big frame has %d bytes: not larger than max_memory_bytes", len(big.Bytes()))
	}
	if err := pub.Publish(ctx, big.Bytes()); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		small.SetSeq(uint64(i))
		if err := pub.Publish(ctx, small.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.WaitDurable(ctx); err != nil {
		t.Fatalf("the frames after the oversized one: %v\nsidecar:\n%s", err, sc.out.String())
	}
	for rejected.Load() == 0 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if r, _ := reason.Load().(string); rejected.Load() != 1 || !strings.Contains(r, "max_memory_bytes") {
		t.Fatalf("driver told of %d rejected frames (%q); want 1, naming max_memory_bytes", rejected.Load(), r)
	}
	sc.stop(t)
	got := b.walFrames()
	checkExactlyOnce(t, got, "large", n)
	if len(got["huge"]) != 100 {
		t.Fatalf("%d frames of the driver with the oversized frame in the WAL, want its 100 small ones", len(got["huge"]))
	}
}
