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

// TestRestartSidecarGracefully: SIGTERM the sidecar 3 times during a load
// run from 2 drivers and start it again each time. A graceful stop drains
// and commits, keeps the segment for the drivers still attached, and the
// next sidecar adopts it: every frame is in the WAL exactly once.
func TestRestartSidecarGracefully(t *testing.T) {
	b := newBus(t)
	sc := b.startSidecar()
	// 8 s of publishing: the drivers are attached through every restart.
	const n = 120000
	d1 := b.publish("graceful-a", n, "--rate", "15000")
	d2 := b.publish("graceful-b", n, "--rate", "15000")
	for i := 0; i < 3; i++ {
		time.Sleep(500 * time.Millisecond)
		sc.stop(t)
		if d1.exited() || d2.exited() {
			t.Fatalf("restart %d: a driver finished before the restart; the test needs them attached", i+1)
		}
		sc = b.startSidecar()
		// The drivers were still attached: the segment was kept and
		// the new sidecar took it over with their rings.
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(sc.out.String(), "driver re-attached") {
			if time.Now().After(deadline) {
				t.Fatalf("restart %d: no driver re-attached:\n%s", i+1, sc.out.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
		if !strings.Contains(sc.out.String(), "adopted the segment") {
			t.Fatalf("restart %d: the segment was not adopted:\n%s", i+1, sc.out.String())
		}
	}
	for _, d := range []*proc{d1, d2} {
		if err := d.wait(t, 3*time.Minute); err != nil {
			t.Fatalf("driver: %v\n%s", err, d.out.String())
		}
	}
	sc.stop(t)
	got := b.walFrames()
	checkExactlyOnce(t, got, "graceful-a", n)
	checkExactlyOnce(t, got, "graceful-b", n)
}
