package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
)

// TestKillDriver: kill -9 one of three drivers mid-publish. The others
// finish, the dead driver's committed frames are in the WAL as an unbroken
// prefix, and its ring is freed and reused by the next driver.
func TestKillDriver(t *testing.T) {
	b := newBus(t)
	sc := b.startSidecar()
	const n = 20000
	// The survivors are paced so that they still hold their rings when the
	// next driver attaches: it must get the victim's freed slot.
	victim := b.publish("victim", 1_000_000, "--rate", "20000")
	a := b.publish("survivor-a", n, "--rate", "5000")
	c := b.publish("survivor-b", n, "--rate", "5000")
	seg, err := shm.Open(b.shmDir, b.name)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	victimSlot := -1
	for deadline := time.Now().Add(30 * time.Second); victimSlot < 0; {
		for _, r := range seg.Rings() {
			if r.Owner.Name == "victim" {
				victimSlot = r.Slot
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ring for the victim after 30s: %+v", seg.Rings())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let it publish, then kill it mid-stream
	victim.cmd.Process.Kill()
	victim.wait(t, 10*time.Second)
	// The victim's ring is drained and freed ...
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, _ := seg.Info(victimSlot)
		if info.State == shm.SlotFree {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("victim's ring %d still %v after 30s:\n%s", victimSlot, info.State, sc.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// ... and reused while the survivors hold theirs.
	next := b.publish("next", 100)
	if err := next.wait(t, time.Minute); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(sc.out.String(), fmt.Sprintf("producer=next slot=%d", victimSlot)) {
		t.Fatalf("the next driver did not get the freed slot %d:\n%s", victimSlot, strings.Join(lines(sc.out.String(), "attached"), "\n"))
	}
	for _, d := range []*proc{a, c} {
		if err := d.wait(t, 2*time.Minute); err != nil {
			t.Fatalf("survivor: %v\n%s", err, d.out.String())
		}
	}
	sc.stop(t)
	got := b.walFrames()
	checkExactlyOnce(t, got, "survivor-a", n)
	checkExactlyOnce(t, got, "survivor-b", n)
	checkExactlyOnce(t, got, "next", 100)
	v := got["victim"]
	if len(v) == 0 {
		t.Fatal("none of the victim's frames reached the WAL")
	}
	checkExactlyOnce(t, got, "victim", len(v))
}

// TestRejectedFrames: frames that fail verification are rejected and
// counted; the driver is told, and its good frames keep flowing.
func TestRejectedFrames(t *testing.T) {
	b := newBus(t)
	sc := b.startSidecar()
	rejected := make(chan uint64, 16)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pub, err := client.Dial(ctx, client.Config{Name: b.name, RunDir: b.runDir, Producer: "mixed",
		OnRejected: func(n uint64, reason string) { rejected <- n }})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	var e schema.Encoder
	for i := 0; i < 100; i++ {
		if i%10 == 5 {
			if err := pub.Publish(ctx, []byte("this is not a flatbuffer at all")); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := pub.Publish(ctx, e.EncodeData(&schema.DataFrame{Producer: "mixed", Device: "d", Seq: uint64(i - (i+4)/10)})); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.WaitDurable(ctx); err != nil {
		t.Fatal(err)
	}
	var told uint64
	for told < 10 {
		select {
		case n := <-rejected:
			told += n
		case <-ctx.Done():
			t.Fatalf("driver was told of %d rejected frames, want 10", told)
		}
	}
	if st := pub.Stats(); st.Rejected != 10 || st.Published != 100 {
		t.Fatalf("stats %+v, want 100 published and 10 rejected", st)
	}
	pub.Close()
	sc.stop(t)
	got := b.walFrames()
	checkExactlyOnce(t, got, "mixed", 90)
}

// TestSecondSidecar: a second sidecar on the same name fails with a clear
// message and touches nothing; the first keeps working.
func TestSecondSidecar(t *testing.T) {
	b := newBus(t)
	sc := b.startSidecar()
	second := start(t, b.runArgs()...)
	if err := second.wait(t, 30*time.Second); err == nil {
		t.Fatal("a second sidecar on the same bus started")
	}
	if !strings.Contains(second.out.String(), "another sidecar") {
		t.Fatalf("second sidecar's message: %s", second.out.String())
	}
	d := b.publish("after-second", 1000)
	if err := d.wait(t, time.Minute); err != nil {
		t.Fatalf("driver after the second sidecar failed: %v\n%s", err, d.out.String())
	}
	sc.stop(t)
	checkExactlyOnce(t, b.walFrames(), "after-second", 1000)
}

// TestConfigErrors: invalid configuration exits 2 with every problem listed.
func TestConfigErrors(t *testing.T) {
	b := newBus(t)
	p := start(t, append(b.runArgs(), "--pause-hi", "1.5", "--resume-lo", "-1", "--preset", "turbo")...)
	err := p.wait(t, 30*time.Second)
	if code := exitCode(err); code != 2 {
		t.Fatalf("exit %d (%v), want 2\n%s", code, err, p.out.String())
	}
	for _, want := range []string{"pause_hi", "resume_lo", "turbo"} {
		if !strings.Contains(p.out.String(), want) {
			t.Fatalf("error output does not mention %s:\n%s", want, p.out.String())
		}
	}
	pc := start(t, append(b.runArgs(), "--print-config")...)
	if err := pc.wait(t, 30*time.Second); err != nil || !strings.Contains(pc.out.String(), "wal_flush_ms") {
		t.Fatalf("--print-config: %v\n%s", err, pc.out.String())
	}
}

// TestBadSegmentFile: a file that is not a segment where the segment goes
// stops the sidecar with a message that says what to do.
func TestBadSegmentFile(t *testing.T) {
	b := newBus(t)
	if err := os.WriteFile(filepath.Join(b.shmDir, "framebus-"+b.name), make([]byte, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, b.runArgs()...)
	if err := p.wait(t, 30*time.Second); err == nil {
		t.Fatal("sidecar started over a garbage segment file")
	}
	if !strings.Contains(p.out.String(), "remove it") {
		t.Fatalf("message: %s", p.out.String())
	}
}

// TestProtocolVersion: a client of another protocol version gets a clear
// refusal, and garbage on the socket gets an error reply; the sidecar keeps
// serving.
func TestProtocolVersion(t *testing.T) {
	b := newBus(t)
	sc := b.startSidecar()
	sock := filepath.Join(b.runDir, b.name+".sock")
	ask := func(payload []byte) shm.Message {
		c, err := net.Dial("unixpacket", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, shm.MaxMessageSize)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no reply: %v", err)
		}
		m, err := shm.DecodeMessage(buf[:n])
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	hello, _ := json.Marshal(shm.Message{Op: shm.OpHello, Version: 99, Producer: "future"})
	if m := ask(hello); m.Op != shm.OpError || m.Code != shm.CodeVersion || !strings.Contains(m.Message, "protocol") {
		t.Fatalf("reply to version 99: %+v", m)
	}
	if m := ask([]byte("\x00\x01garbage")); m.Op != shm.OpError || m.Code != shm.CodeBadHello {
		t.Fatalf("reply to garbage: %+v", m)
	}
	d := b.publish("after-garbage", 500)
	if err := d.wait(t, time.Minute); err != nil {
		t.Fatalf("driver: %v\n%s", err, d.out.String())
	}
	sc.stop(t)
	checkExactlyOnce(t, b.walFrames(), "after-garbage", 500)
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee interface{ ExitCode() int }
	if e, ok := err.(interface{ ExitCode() int }); ok {
		ee = e
		return ee.ExitCode()
	}
	return -1
}
