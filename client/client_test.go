package client

import (
	"net"
	"testing"
	"time"

	"github.com/framebus/framebus/shm"
)

// TestCloseDuringReattach: Close while the publisher re-attaches to a
// restarted sidecar, its welcome still on the way. The new connection
// must not keep the publisher's reader waiting: Close returns, and the
// sidecar sees that connection close.
func TestCloseDuringReattach(t *testing.T) {
	f := newFakeSidecar(t)
	p, c, ring := dialFake(t, f)
	c.Close() // the sidecar restarts
	c2 := f.accept()
	if hello := recv(t, c2); hello.Resume == nil || hello.Resume.Slot != ring.Slot() {
		t.Fatalf("re-attach hello = %+v", hello)
	}
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	time.Sleep(100 * time.Millisecond) // Close is waiting for the reader
	send(t, c2, &shm.Message{Op: shm.OpWelcome, Version: shm.ProtocolVersion, Segment: f.seg.Path(), Slot: ring.Slot(),
		Generation: ring.Generation(), ProducerID: 1, Epoch: 2, RingBytes: ring.Capacity()})
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatalf("Close did not return within %v of a re-attach that completed during it", waitFor)
	}
	// The re-attached connection is closed (after a bye, if any).
	c2.SetReadDeadline(time.Now().Add(waitFor))
	buf := make([]byte, shm.MaxMessageSize+1)
	for {
		n, err := c2.Read(buf)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the re-attached connection stayed open after Close")
		}
		if err != nil || n == 0 {
			break
		}
		if m, err := shm.DecodeMessage(buf[:n]); err != nil || m.Op != shm.OpBye {
			t.Fatalf("unexpected message %+v (%v) after Close", m, err)
		}
	}
}
