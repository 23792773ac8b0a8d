package sidecar

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/framebus/framebus/shm"
)

// A sidecar that adopts a segment holding the ring of a driver that is gone
// frees that ring from its drain loop right away; New read the producer map
// for its "framebus sidecar running" log line without the lock, after it had
// started that loop: a data race (found by framebus stat's end-to-end test,
// whose adopting sidecar exited 66 under -race).
func TestAdoptDeadDriversRingNoRace(t *testing.T) {
	cfg := testConfig(t)
	seg, err := shm.Create(shm.Config{Name: cfg.Name, Dir: cfg.ShmDir, Size: cfg.ShmBytes, MaxRings: cfg.MaxRings}, 1)
	if err != nil {
		t.Fatal(err)
	}
	// The owner is this process with another start time: a driver that
	// exited and whose pid was reused.
	_, err = seg.AllocRing(shm.RingSpec{Kind: shm.KindIngressSPSC, Capacity: 4096, Generation: 1,
		Owner: shm.Owner{Pid: os.Getpid(), Start: 1, Name: "gone"}})
	if err != nil {
		t.Fatal(err)
	}
	seg.Close()

	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	// Watch the segment from outside: anything that takes the sidecar's
	// lock here would order the racing accesses and hide the race.
	obs, err := shm.OpenObserver(cfg.ShmDir, cfg.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	waitFor(t, "the dead driver's ring freed", 10*time.Second, func() bool {
		snap, err := obs.Snapshot()
		return err == nil && len(snap.Rings) == 0
	})
	if n := len(s.Status().Producers); n != 0 {
		t.Fatalf("%d producers after the dead driver's ring was freed", n)
	}
}
