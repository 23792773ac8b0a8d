package test

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestFourDriversExactlyOnce: 4 driver processes publish sequence-numbered
// frames; after a graceful stop every frame is in the WAL exactly once, in
// per-producer order, read independently of the sidecar.
func TestFourDriversExactlyOnce(t *testing.T) {
	b := newBus(t)
	sc := b.startSidecar()
	const n = 20000
	var drivers []*proc
	for i := 0; i < 4; i++ {
		drivers = append(drivers, b.publish(fmt.Sprintf("driver-%d", i), n))
	}
	for _, d := range drivers {
		if err := d.wait(t, 2*time.Minute); err != nil {
			t.Fatalf("driver: %v\n%s", err, d.out.String())
		}
		if !strings.Contains(d.out.String(), fmt.Sprintf("published %d frames", n)) {
			t.Fatalf("driver output: %s", d.out.String())
		}
	}
	sc.stop(t)
	got := b.walFrames()
	for i := 0; i < 4; i++ {
		checkExactlyOnce(t, got, fmt.Sprintf("driver-%d", i), n)
	}
}

// TestKillSidecar: kill -9 the sidecar 5 times during a load run from 2
// drivers, restarting it each time, then stop it gracefully: every frame
// the drivers published is in the WAL exactly once, in order.
func TestKillSidecar(t *testing.T) {
	b := newBus(t)
	sc := b.startSidecar()
	const n = 60000
	d1 := b.publish("crash-a", n, "--rate", "15000")
	d2 := b.publish("crash-b", n, "--rate", "15000")
	for i := 0; i < 5; i++ {
		time.Sleep(400 * time.Millisecond)
		sc.cmd.Process.Kill()
		sc.wait(t, 10*time.Second)
		time.Sleep(100 * time.Millisecond)
		sc = b.startSidecar()
	}
	for _, d := range []*proc{d1, d2} {
		if err := d.wait(t, 3*time.Minute); err != nil {
			t.Fatalf("driver: %v\n%s", err, d.out.String())
		}
	}
	sc.stop(t)
	got := b.walFrames()
	checkExactlyOnce(t, got, "crash-a", n)
	checkExactlyOnce(t, got, "crash-b", n)
}
