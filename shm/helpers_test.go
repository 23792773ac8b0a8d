package shm

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"
)

var segCounter atomic.Uint64

// uniqueName returns a segment name no other test (or test process) uses.
func uniqueName(tb testing.TB) string {
	return fmt.Sprintf("test-%d-%d", os.Getpid(), segCounter.Add(1))
}

// newSegment creates a segment in a fresh temporary directory and removes it
// when the test ends, pass or fail.
func newSegment(tb testing.TB, size int64) *Segment {
	tb.Helper()
	cfg := Config{Name: uniqueName(tb), Dir: tb.TempDir(), Size: size, MaxRings: 16}
	s, err := Create(cfg, 1)
	if err != nil {
		tb.Fatalf("Create: %v", err)
	}
	tb.Cleanup(func() {
		s.Close()
		s.Remove()
	})
	return s
}

// newRing allocates a ring of the given kind and capacity.
func newRing(tb testing.TB, s *Segment, kind RingKind, capacity int) *Ring {
	tb.Helper()
	slot, err := s.AllocRing(RingSpec{Kind: kind, Capacity: capacity, Owner: Owner{Pid: os.Getpid(), Name: "test"}})
	if err != nil {
		tb.Fatalf("AllocRing: %v", err)
	}
	r, err := s.Ring(slot)
	if err != nil {
		tb.Fatalf("Ring: %v", err)
	}
	return r
}

func mustProducer(tb testing.TB, r *Ring, id uint16) *Producer {
	tb.Helper()
	p, err := r.Producer(id)
	if err != nil {
		tb.Fatalf("Producer: %v", err)
	}
	return p
}

func mustConsumer(tb testing.TB, r *Ring) *Consumer {
	tb.Helper()
	c, err := r.Consumer()
	if err != nil {
		tb.Fatalf("Consumer: %v", err)
	}
	return c
}

// fill writes a recognisable pattern derived from seq into b.
func fill(b []byte, seq uint64) {
	for i := range b {
		b[i] = byte(seq*31 + uint64(i)*7 + 1)
	}
}
