package test

import (
	"context"
	ebin "encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
)

// The hostile role: the test binary, re-executed with $FRAMEBUS_TEST_ROLE
// set to "hostile", attaches to a bus like a driver and then breaks every
// rule it can, in the mode that $FRAMEBUS_HOSTILE (a JSON hostileSpec)
// names. It prints "hostile ready" once its attack is under way, keeps
// attacking until it has run the spec's cycles and received SIGTERM, and
// ends with one line "hostile done key=value ..." of what it did and saw,
// which chaos_hostile_test.go checks against the sidecar's WAL, metrics and
// log.
//
// It writes shared memory through its own read-write mapping of the segment
// file (unix.Mmap), as any process that may open the file can, and talks to
// the socket with raw packets. Offsets into the header and directory are
// mirrored from shm/layout.go (the format drawn in shm/doc.go) and checked
// against the shm package's accessors before use.

// roleEnv names the role a re-executed test binary plays.
const roleEnv = "FRAMEBUS_TEST_ROLE"

// hostileEnv holds the hostile role's hostileSpec as JSON.
const hostileEnv = "FRAMEBUS_HOSTILE"

// testRoles are the roles TestMain dispatches to, by name.
var testRoles = map[string]func() int{"hostile": hostileMain}

// runRole runs the role $FRAMEBUS_TEST_ROLE names and returns its exit code;
// ok is false in a normal test run (the variable is unset).
func runRole() (code int, ok bool) {
	name := os.Getenv(roleEnv)
	if name == "" {
		return 0, false
	}
	f := testRoles[name]
	if f == nil {
		fmt.Fprintf(os.Stderr, "unknown test role %q\n", name)
		return 2, true
	}
	return f(), true
}

// Hostile modes.
const (
	hostileGarbage     = "garbage"     // garbage records and positions in its own ring
	hostileFlatBuffers = "flatbuffers" // well-formed records holding malformed FlatBuffers
	hostileClaim       = "claim"       // claims that never commit, and gaps
	hostileOutside     = "outside"     // header, directory and counter words of the segment
	hostileOtherRing   = "other-ring"  // random bytes into another driver's ring
	hostileSocket      = "socket"      // malformed, oversized and idle connections
)

// hostileSpec tells the hostile role what to do.
type hostileSpec struct {
	Mode   string        `json:"mode"`
	Name   string        `json:"name"`    // bus name
	RunDir string        `json:"run_dir"` // sidecar socket directory
	Cycles int           `json:"cycles"`  // attack cycles (rounds, writes) at least, before SIGTERM ends it
	Pace   time.Duration `json:"pace"`    // pause between cycles
	Victim string        `json:"victim"`  // other-ring: the producer whose ring it writes
	Conns  int           `json:"conns"`   // socket: idle connections held open
	Steps  []string      `json:"steps"`   // outside: only these kinds of write (all if empty)
	Seed   uint64        `json:"seed"`
}

// Mirrors of shm/layout.go: header page 0, the directory slot and the ring
// control block. checkLayout compares them with the shm accessors.
const (
	hMagic      = 0
	hSegSize    = 16
	hEpoch      = 80
	hCRC        = 124
	hReady      = 128
	hFlags      = 256
	hDurable    = 384
	hDoorbell   = 640 // seq u32, waiters u32
	hCounters   = 4096
	dsState     = 0
	dsKind      = 4
	dsOffset    = 8
	dsCapacity  = 16
	dsGen       = 24
	dsOwnerPid  = 32
	dsName      = 56
	dsFlags     = 128
	dirSlotSize = 256
	rcTail      = 0
	rcHead      = 128
)

// hostile is the role's state.
type hostile struct {
	spec   hostileSpec
	rng    *rand.Rand
	enc    schema.Encoder
	seg    *shm.Segment // the segment as the shm package reads it
	mem    []byte       // the same file, mapped read-write by hand
	counts map[string]int
	mu     sync.Mutex     // counts
	usr1   chan os.Signal // SIGUSR1: the test has read what it needs, go on
}

func hostileMain() int {
	var spec hostileSpec
	if err := json.Unmarshal([]byte(os.Getenv(hostileEnv)), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "hostile: bad spec:", err)
		return 2
	}
	// Never stopped: a SIGTERM that arrives after the attack ended early
	// (the victim's ring is gone) must not kill the process as it exits.
	ctx, _ := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	h := &hostile{spec: spec, rng: rand.New(rand.NewPCG(spec.Seed, uint64(os.Getpid()))), counts: map[string]int{}, usr1: make(chan os.Signal, 1)}
	signal.Notify(h.usr1, syscall.SIGUSR1)
	var err error
	switch spec.Mode {
	case hostileGarbage:
		err = h.garbage(ctx)
	case hostileFlatBuffers:
		err = h.flatBuffers(ctx)
	case hostileClaim:
		err = h.claims(ctx)
	case hostileOutside:
		err = h.outside(ctx)
	case hostileOtherRing:
		err = h.otherRing(ctx)
	case hostileSocket:
		err = h.socket(ctx)
	default:
		err = fmt.Errorf("unknown mode %q", spec.Mode)
	}
	h.printSummary()
	if err != nil {
		fmt.Println("hostile error:", err)
		return 1
	}
	return 0
}

func (h *hostile) add(key string, n int) {
	h.mu.Lock()
	h.counts[key] += n
	h.mu.Unlock()
}

func (h *hostile) printSummary() {
	h.mu.Lock()
	defer h.mu.Unlock()
	keys := make([]string, 0, len(h.counts))
	for k := range h.counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	b.WriteString("hostile done")
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%d", k, h.counts[k])
	}
	fmt.Println(b.String())
}

// more reports whether another cycle is due: until the spec's cycles are done
// and the test has sent SIGTERM.
func (h *hostile) more(ctx context.Context, done int) bool {
	return done < h.spec.Cycles || ctx.Err() == nil
}

func (h *hostile) pace() { time.Sleep(h.spec.Pace) }

// --- socket ---

func (h *hostile) dial() (*net.UnixConn, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: shm.SocketPath(h.spec.RunDir, h.spec.Name), Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	return c, nil
}

func sendMsg(c *net.UnixConn, m *shm.Message) error {
	b, err := shm.EncodeMessage(m)
	if err != nil {
		return err
	}
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	_, err = c.Write(b)
	return err
}

// readMsg reads one message; io errors (EOF: the sidecar closed) are returned.
func readMsg(c *net.UnixConn, timeout time.Duration) (shm.Message, error) {
	buf := make([]byte, shm.MaxMessageSize+1)
	c.SetReadDeadline(time.Now().Add(timeout))
	n, err := c.Read(buf)
	if err != nil {
		return shm.Message{}, err
	}
	if n == 0 {
		return shm.Message{}, errors.New("empty packet (connection closed)")
	}
	return shm.DecodeMessage(buf[:n])
}

func hello(producer string, ringBytes int) *shm.Message {
	return &shm.Message{Op: shm.OpHello, Version: shm.ProtocolVersion, Producer: producer, RingBytes: ringBytes}
}

// --- its own ring ---

// ownRing is a ring the hostile attached for itself.
type ownRing struct {
	h    *hostile
	name string
	conn *net.UnixConn
	slot int
	id   uint16
	ring *shm.Ring
	prod *shm.Producer
	data []byte // the data area, in the hand-made mapping
	ctl  []byte // the control block, in the hand-made mapping
	cap  uint64
	pos  uint64 // position after the last record it wrote
}

// attach dials, says hello and maps the ring it is given, like a driver.
func (h *hostile) attach(name string, ringBytes int) (*ownRing, error) {
	c, err := h.dial()
	if err != nil {
		return nil, err
	}
	if err := sendMsg(c, hello(name, ringBytes)); err != nil {
		c.Close()
		return nil, err
	}
	w, err := readMsg(c, 10*time.Second)
	if err != nil || w.Op != shm.OpWelcome {
		c.Close()
		return nil, fmt.Errorf("attach %s: %v %+v", name, err, w)
	}
	first := h.seg == nil
	if first {
		if err := h.mapSegment(w.Segment); err != nil {
			c.Close()
			return nil, err
		}
	}
	ring, err := h.seg.Ring(w.Slot)
	if err != nil {
		c.Close()
		return nil, err
	}
	prod, err := ring.Producer(w.ProducerID)
	if err != nil {
		c.Close()
		return nil, err
	}
	info, _ := h.seg.Info(w.Slot)
	o := &ownRing{h: h, name: name, conn: c, slot: w.Slot, id: w.ProducerID, ring: ring, prod: prod,
		cap: info.Capacity, pos: ring.Head()}
	o.ctl = h.mem[info.Offset : info.Offset+shm.RingControlSize]
	o.data = h.mem[info.Offset+shm.RingControlSize : info.Offset+shm.RingControlSize+info.Capacity]
	if first {
		h.checkLayout(w.Slot, info)
	}
	return o, nil
}

// mapSegment opens the segment with the shm package and maps it again by
// hand, read-write, as the file's permissions allow any process that may
// open it.
func (h *hostile) mapSegment(path string) error {
	seg, err := shm.Open(filepath.Dir(path), strings.TrimPrefix(filepath.Base(path), "framebus-"))
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		seg.Close()
		return err
	}
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, int(seg.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		seg.Close()
		return err
	}
	h.seg, h.mem = seg, mem
	return nil
}

// checkLayout makes sure the mirrored offsets are the segment's: a hostile
// writing the wrong words would test nothing.
func (h *hostile) checkLayout(slot int, info shm.RingInfo) {
	le := ebin.LittleEndian
	so := shm.HeaderSize + slot*dirSlotSize
	switch {
	case string(h.mem[hMagic:hMagic+8]) != shm.Magic,
		le.Uint64(h.mem[hSegSize:]) != h.seg.Size(),
		le.Uint64(h.mem[hEpoch:]) != h.seg.Epoch(),
		le.Uint64(h.mem[so+dsOffset:]) != info.Offset,
		le.Uint64(h.mem[so+dsCapacity:]) != info.Capacity,
		le.Uint64(h.mem[so+dsGen:]) != info.Generation,
		le.Uint32(h.mem[so+dsKind:]) != uint32(info.Kind):
		fmt.Fprintln(os.Stderr, "hostile: the mirrored layout offsets do not match shm/layout.go; update hostile_role_test.go")
		os.Exit(3)
	}
}

// validFrame encodes a DataFrame that passes verification.
func (h *hostile) validFrame(producer string, seq uint64) []byte {
	return h.enc.EncodeData(&schema.DataFrame{Producer: producer, Device: "hostile", Seq: seq,
		Points: []schema.Point{{Tag: "t", Value: schema.F64(float64(seq)), TsNs: time.Now().UnixNano()}}})
}

// publish writes one record through the shm producer (claim, copy,
// release-store the header), waiting for room if the ring is full.
func (o *ownRing) publish(kind uint16, payload []byte) error {
	for tries := 0; ; tries++ {
		cl, err := o.prod.Claim(kind, len(payload))
		if errors.Is(err, shm.ErrFull) && tries < 1000 {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			o.prod.WaitSpace(ctx, len(payload), shm.DefaultSpin)
			cancel()
			continue
		}
		if err != nil {
			return err
		}
		copy(cl.Buf, payload)
		o.prod.Commit(cl)
		o.pos = cl.End()
		return nil
	}
}

// publishValid publishes n valid frames of producer frames, numbered by seq.
func (o *ownRing) publishValid(n int, frames string, seq *uint64) error {
	for i := 0; i < n; i++ {
		if err := o.publish(uint16(schema.KindData), o.h.validFrame(frames, *seq)); err != nil {
			return err
		}
		*seq++
		o.h.add("valid", 1)
	}
	return nil
}

// rawHeader writes a record header word at position pos by hand.
func (o *ownRing) rawHeader(pos uint64, length int32, typ uint16) {
	ebin.LittleEndian.PutUint64(o.data[pos&(o.cap-1):], uint64(uint32(length))|uint64(typ)<<32|uint64(o.id)<<48)
}

// ring wakes the sidecar's drain loop (the doorbell), as a commit does.
func (h *hostile) ring() {
	ev := h.seg.Doorbell()
	ev.Wake()
}

// waitError waits up to d for an error message with code, or the socket's
// closing after one; it reports whether it came.
func (o *ownRing) waitError(code string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		m, err := readMsg(o.conn, time.Until(deadline))
		if err != nil {
			return false
		}
		if m.Op == shm.OpError && m.Code == code {
			return true
		}
	}
	return false
}

func (o *ownRing) bye() {
	sendMsg(o.conn, &shm.Message{Op: shm.OpBye})
	o.conn.Close()
}

// waitDrained waits until the sidecar has released everything up to the
// ring's last valid record: its WAL has committed it.
func (o *ownRing) waitDrained(upTo uint64, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for o.ring.Head() < upTo {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// --- garbage: its own ring ---

// garbageVariants are the ways garbage goes into its own ring, in turn. The
// first four break the record protocol: the sidecar must detach the ring.
var garbageVariants = []string{"huge-length", "past-end", "short-length", "odd-padding", "random-bytes", "negative-length", "control-block"}

func garbageDetaches(v string) bool {
	switch v {
	case "huge-length", "past-end", "short-length", "odd-padding":
		return true
	}
	return false
}

// garbage attaches once per cycle, publishes three valid frames, then
// writes one kind of garbage after them and sees what the sidecar does.
func (h *hostile) garbage(ctx context.Context) error {
	var seq uint64
	for i := 0; h.more(ctx, i); i++ {
		v := garbageVariants[i%len(garbageVariants)]
		o, err := h.attach(fmt.Sprintf("hostile-g-%d", i), 64<<10)
		if err != nil {
			return err
		}
		if err := o.publishValid(3, "hostile-g", &seq); err != nil {
			return err
		}
		switch v {
		case "huge-length":
			o.rawHeader(o.pos, 0x7ffffff8, uint16(schema.KindData))
		case "past-end":
			o.rawHeader(o.pos, int32(o.cap), uint16(schema.KindData))
		case "short-length":
			o.rawHeader(o.pos, 3, uint16(schema.KindData))
		case "odd-padding":
			o.rawHeader(o.pos, 13, shm.TypePadding)
		case "random-bytes":
			i := o.pos & (o.cap - 1)
			n := min(2048, o.cap-i)
			for j := uint64(8); j < n; j++ {
				o.data[i+j] = byte(h.rng.Uint32())
			}
			o.rawHeader(o.pos, int32(h.rng.Int32N(1<<31-1)+1), uint16(h.rng.Uint32()))
		case "negative-length":
			o.rawHeader(o.pos, -64, uint16(schema.KindData))
		case "control-block":
			// After the sidecar has released its frames, so that no
			// release stores the head again.
			o.waitDrained(o.pos, 10*time.Second)
			ebin.LittleEndian.PutUint64(o.ctl[rcTail:], h.rng.Uint64()&^7)
			ebin.LittleEndian.PutUint64(o.ctl[rcHead:], h.rng.Uint64()&^7)
		}
		h.ring()
		if i == 0 {
			fmt.Println("hostile ready")
		}
		h.add("cycles", 1)
		h.add(v, 1)
		wait := 200 * time.Millisecond
		if garbageDetaches(v) {
			wait = 10 * time.Second
		}
		if o.waitError(shm.CodeCorrupted, wait) {
			h.add("detached", 1)
			h.add(v+"-detached", 1)
			o.conn.Close()
		} else {
			o.bye()
		}
		h.pace()
	}
	return nil
}

// --- flatbuffers: well-formed records, malformed frames ---

// malformed returns a record type and payload that break the frame format
// in the way variant k says.
func (h *hostile) malformed(k int, seq uint64) (uint16, []byte) {
	// Another producer name than the valid frames': a mutation that still
	// verifies cannot turn it into "hostile-f" (at most cut it short).
	good := h.validFrame("mutant-of-hostile", seq)
	switch k % 8 {
	case 0: // random bytes behind a valid identifier
		kind := schema.Kind(1 + h.rng.IntN(3))
		b := make([]byte, 8+h.rng.IntN(300))
		for i := range b {
			b[i] = byte(h.rng.Uint32())
		}
		copy(b[4:], kind.Identifier())
		return uint16(kind), b
	case 1: // truncated
		return uint16(schema.KindData), good[:len(good)/2]
	case 2: // root offset outside the buffer
		ebin.LittleEndian.PutUint32(good, uint32(len(good)+100))
		return uint16(schema.KindData), good
	case 3: // empty
		return uint16(schema.KindData), nil
	case 4: // unknown record type
		return uint16(4 + h.rng.IntN(0xfff0)), good
	case 5: // random bytes changed in a valid frame
		for j := 0; j < 4; j++ {
			good[8+h.rng.IntN(len(good)-8)] = byte(h.rng.Uint32())
		}
		return uint16(schema.KindData), good
	case 6: // a DataFrame where a Command belongs
		return uint16(schema.KindCommand), good
	default: // an ack whose tables point anywhere
		b := make([]byte, 64)
		for i := range b {
			b[i] = byte(h.rng.Uint32())
		}
		ebin.LittleEndian.PutUint32(b, 8)
		copy(b[4:], schema.IdentAck)
		return uint16(schema.KindAck), b
	}
}

// flatBuffers interleaves valid frames and malformed ones that the sidecar
// must reject and count, and checks that it is told of each rejection.
func (h *hostile) flatBuffers(ctx context.Context) error {
	o, err := h.attach("hostile-f", 1<<20)
	if err != nil {
		return err
	}
	var told atomic.Uint64 // rejections the sidecar reported
	go func() {
		for {
			m, err := readMsg(o.conn, time.Hour)
			if err != nil {
				return
			}
			switch {
			case m.Op == shm.OpRejected:
				told.Add(m.Count)
			case m.Op == shm.OpError:
				h.add("error-"+m.Code, 1)
			}
		}
	}()
	fmt.Println("hostile ready")
	var seq, bad uint64
	for round := 0; h.more(ctx, round); round++ {
		for k := 0; k < 8; k++ {
			if err := o.publishValid(1, "hostile-f", &seq); err != nil {
				return err
			}
			typ, b := h.malformed(k, bad)
			bad++
			if err := o.publish(typ, b); err != nil {
				return err
			}
			h.add("malformed", 1)
			if k := schema.Kind(typ); (k != schema.KindData && k != schema.KindCommand && k != schema.KindAck) || schema.Verify(k, b) != nil {
				h.add("expect-rejected", 1)
			} else {
				h.add("malformed-verified", 1) // the sidecar stores it: it is a valid frame
				if schema.Kind(typ) == schema.KindData {
					h.add("malformed-verified-data", 1)
				}
			}
		}
		h.add("cycles", 1)
		h.pace()
	}
	if !o.waitDrained(o.pos, 30*time.Second) {
		h.add("not-drained", 1)
	}
	// The notices come from the sidecar's housekeeping, after the drain.
	h.mu.Lock()
	want := uint64(h.counts["expect-rejected"])
	h.mu.Unlock()
	for deadline := time.Now().Add(10 * time.Second); told.Load() < want && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	h.add("told-rejected", int(told.Load()))
	// Attached until the test has scraped the per-producer metrics (they
	// go with the ring).
	fmt.Println("hostile drained")
	select {
	case <-h.usr1:
	case <-time.After(time.Minute):
	}
	o.bye()
	return nil
}

// --- claims that never commit ---

// claims holds rings that stop at a claim that is never committed (a
// negative length, as an MPMC producer marks its claim) or at a gap (a zero
// header followed by a committed record), with valid frames before them.
// At SIGTERM it says bye on half of them and closes the other half's
// socket without bye, then exits while they are orphaned.
func (h *hostile) claims(ctx context.Context) error {
	var seq uint64
	var rings []*ownRing
	for i := 0; i < h.spec.Cycles; i++ {
		o, err := h.attach(fmt.Sprintf("hostile-c-%d", i), 64<<10)
		if err != nil {
			return err
		}
		if err := o.publishValid(3, "hostile-c", &seq); err != nil {
			return err
		}
		if i%2 == 0 {
			o.rawHeader(o.pos, -64, uint16(schema.KindData))
			h.add("claim", 1)
		} else {
			// A committed record behind a never-written header: it must
			// never be read.
			f := h.validFrame("hostile-c-gap", uint64(i))
			at := (o.pos + 64) & (o.cap - 1)
			copy(o.data[at+shm.RecordHeaderSize:], f)
			o.rawHeader(o.pos+64, int32(shm.RecordHeaderSize+len(f)), uint16(schema.KindData))
			h.add("gap", 1)
		}
		h.ring()
		rings = append(rings, o)
	}
	for _, o := range rings {
		if o.waitDrained(o.pos, 30*time.Second) {
			h.add("valid-durable-rings", 1)
		}
	}
	fmt.Println("hostile ready")
	<-ctx.Done()
	for i, o := range rings {
		if i%2 == 0 {
			o.bye()
		} else {
			o.conn.Close()
		}
	}
	h.add("cycles", len(rings))
	// Alive for a moment with closed sockets: the sidecar keeps those rings
	// (the process might still write) until it exits.
	time.Sleep(300 * time.Millisecond)
	return nil
}

// --- outside its ring: header, counters, directory ---

// outside writes, every cycle, each word of the segment outside its ring
// that a process could use to disturb the others: global flags, the ready
// word, magic and static header, durable watermark, doorbell, counter
// slots, and the directory slots of the other rings (their flags, state
// and geometry) and of free slots (a forged ring).
func (h *hostile) outside(ctx context.Context) error {
	o, err := h.attach("hostile-o", 64<<10)
	if err != nil {
		return err
	}
	le := ebin.LittleEndian
	slots := h.seg.MaxRings()
	// Wait for the rings named in Victim (comma list): the drivers the test
	// starts after this process.
	for deadline := time.Now().Add(30 * time.Second); h.spec.Victim != ""; {
		// Attached, and publishing: a driver that maps the segment while
		// its header is broken is refused (docs/security.md).
		found := 0
		for _, r := range h.seg.Rings() {
			if slices.Contains(strings.Split(h.spec.Victim, ","), r.Owner.Name) && r.State == shm.SlotActive &&
				le.Uint64(h.mem[r.Offset+rcTail:]) > 0 {
				found++
			}
		}
		if found == len(strings.Split(h.spec.Victim, ",")) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the rings of %s did not appear", h.spec.Victim)
		}
		time.Sleep(time.Millisecond)
	}
	var others, free []int
	for i := 0; i < slots; i++ {
		so := shm.HeaderSize + i*dirSlotSize
		switch {
		case i == o.slot:
		case le.Uint32(h.mem[so+dsState:]) != 0:
			others = append(others, i)
		default:
			free = append(free, i)
		}
	}
	h.add("other-rings", len(others))
	dataOff := uint64(shm.HeaderSize) + uint64((slots*dirSlotSize+4095)&^4095)
	steps := []struct {
		name string
		do   func()
	}{
		{"flags", func() {
			le.PutUint64(h.mem[hFlags:], le.Uint64(h.mem[hFlags:])|shm.FlagPause|shm.FlagDegraded|shm.FlagShuttingDown)
		}},
		{"ready", func() { le.PutUint32(h.mem[hReady:], 0) }},
		{"magic", func() { copy(h.mem[hMagic:], "HOSTILE!") }},
		{"static", func() {
			for j := 8; j < hCRC+4; j++ {
				h.mem[j] = byte(h.rng.Uint32())
			}
		}},
		{"durable", func() { le.PutUint64(h.mem[hDurable:], h.rng.Uint64()) }},
		{"doorbell", func() { le.PutUint32(h.mem[hDoorbell:], h.rng.Uint32()); le.PutUint32(h.mem[hDoorbell+4:], 0) }},
		{"counters", func() {
			at := hCounters + 64*h.rng.IntN(64)
			for j := 0; j < 64; j++ {
				h.mem[at+j] = byte(h.rng.Uint32())
			}
		}},
		{"ring-flags", func() {
			for _, s := range others {
				so := shm.HeaderSize + s*dirSlotSize
				le.PutUint64(h.mem[so+dsFlags:], le.Uint64(h.mem[so+dsFlags:])|shm.FlagPause)
			}
		}},
		{"slot-state", func() {
			for _, s := range others {
				le.PutUint32(h.mem[shm.HeaderSize+s*dirSlotSize+dsState:], uint32(h.rng.IntN(3)))
			}
		}},
		{"slot-geometry", func() {
			for _, s := range others {
				so := shm.HeaderSize + s*dirSlotSize
				le.PutUint64(h.mem[so+dsOffset:], h.rng.Uint64())
				le.PutUint64(h.mem[so+dsCapacity:], 1<<h.rng.IntN(40))
				le.PutUint32(h.mem[so+dsKind:], h.rng.Uint32N(6))
				le.PutUint32(h.mem[so+dsOwnerPid:], h.rng.Uint32())
			}
		}},
		{"forged-slot", func() {
			if len(free) == 0 {
				return
			}
			s := free[h.rng.IntN(len(free))]
			so := shm.HeaderSize + s*dirSlotSize
			le.PutUint32(h.mem[so+dsKind:], uint32(shm.KindIngressSPSC))
			le.PutUint64(h.mem[so+dsOffset:], dataOff)
			le.PutUint64(h.mem[so+dsCapacity:], shm.MinRingCapacity)
			le.PutUint64(h.mem[so+dsGen:], 1)
			le.PutUint32(h.mem[so+dsOwnerPid:], uint32(os.Getpid()))
			copy(h.mem[so+dsName:so+dsName+64], "forged\x00")
			le.PutUint32(h.mem[so+dsState:], uint32(shm.SlotActive))
		}},
	}
	fmt.Println("hostile ready")
	var seq uint64
	for round := 0; h.more(ctx, round); round++ {
		for _, st := range steps {
			if len(h.spec.Steps) > 0 && !slices.Contains(h.spec.Steps, st.name) {
				continue
			}
			st.do()
			h.add(st.name, 1)
		}
		// A new ring on a tampered directory: the sidecar must place it
		// clear of the rings in use, whatever the directory says.
		if n, err := h.attach(fmt.Sprintf("hostile-o-%d", round), 4096); err != nil {
			h.add("attach-failed", 1)
		} else {
			if err := n.publishValid(1, "hostile-o", &seq); err != nil {
				h.add("publish-failed", 1)
			}
			n.bye()
		}
		h.add("cycles", 1)
		h.pace()
	}
	o.bye()
	return nil
}

// --- another driver's ring ---

// otherRing writes 64 random bytes at a random place of the victim's data
// area every cycle, while the victim's directory slot still holds the ring
// it found (it stops when the slot is freed or reused).
func (h *hostile) otherRing(ctx context.Context) error {
	o, err := h.attach("hostile-r", 64<<10)
	if err != nil {
		return err
	}
	defer o.bye()
	var victim shm.RingInfo
	for deadline := time.Now().Add(30 * time.Second); victim.Capacity == 0; {
		for _, r := range h.seg.Rings() {
			if r.Owner.Name == h.spec.Victim && r.State == shm.SlotActive {
				victim = r
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no ring of %q", h.spec.Victim)
		}
		time.Sleep(5 * time.Millisecond)
	}
	data := h.mem[victim.Offset+shm.RingControlSize : victim.Offset+shm.RingControlSize+victim.Capacity]
	so := shm.HeaderSize + victim.Slot*dirSlotSize
	fmt.Println("hostile ready")
	le := ebin.LittleEndian
	for i := 0; h.more(ctx, i); i++ {
		if le.Uint32(h.mem[so+dsState:]) != uint32(shm.SlotActive) || le.Uint64(h.mem[so+dsGen:]) != victim.Generation {
			h.add("victim-gone", 1)
			break
		}
		at := uint64(h.rng.IntN(int(victim.Capacity-64))) &^ 7
		for j := uint64(0); j < 64; j++ {
			data[at+j] = byte(h.rng.Uint32())
		}
		h.add("writes", 1)
		h.add("cycles", 1)
		h.pace()
	}
	return nil
}

// --- the socket ---

// badHello is a first packet the sidecar must refuse. counted says whether
// it is a protocol error (framebus_protocol_errors_total) rather than a
// refused request.
type badHello struct {
	name    string
	packet  func(h *hostile) []byte
	code    string // the error code the sidecar must answer with
	counted bool
}

func jsonMsg(m *shm.Message) []byte {
	b, _ := json.Marshal(m)
	return b
}

var badHellos = []badHello{
	{"random-bytes", func(h *hostile) []byte {
		b := make([]byte, 1+h.rng.IntN(1000))
		for i := range b {
			b[i] = byte(h.rng.Uint32())
		}
		b[0] = 'x' // not JSON whatever follows
		return b
	}, shm.CodeBadHello, true},
	{"truncated-json", func(*hostile) []byte { return []byte(`{"op":"hello","version":1,"prod`) }, shm.CodeBadHello, true},
	{"json-array", func(*hostile) []byte { return []byte(`[1,2,3]`) }, shm.CodeBadHello, true},
	{"unknown-op", func(*hostile) []byte { return []byte(`{"op":"gimme-root"}`) }, shm.CodeBadHello, true},
	{"bye-first", func(*hostile) []byte { return []byte(`{"op":"bye"}`) }, shm.CodeBadHello, true},
	// A zero-length packet reads as end of file: closed without an answer.
	{"empty-packet", func(*hostile) []byte { return []byte{} }, "", false},
	{"oversized-64k", func(*hostile) []byte {
		return []byte(`{"op":"hello","version":1,"producer":"` + strings.Repeat("A", 64<<10) + `"}`)
	}, shm.CodeBadHello, true},
	{"oversized-160k", func(*hostile) []byte { return []byte(strings.Repeat("{", 160<<10)) }, shm.CodeBadHello, true},
	{"wrong-version", func(*hostile) []byte {
		return jsonMsg(&shm.Message{Op: shm.OpHello, Version: 999, Producer: "hostile-s"})
	}, shm.CodeVersion, false},
	{"bad-ring-bytes", func(*hostile) []byte { return jsonMsg(hello("hostile-s", 12345)) }, shm.CodeBadHello, false},
	{"huge-ring-bytes", func(*hostile) []byte { return jsonMsg(hello("hostile-s", 1<<40)) }, shm.CodeBadHello, false},
	{"negative-ring-bytes", func(*hostile) []byte { return jsonMsg(hello("hostile-s", -4096)) }, shm.CodeBadHello, false},
	{"empty-producer", func(*hostile) []byte { return jsonMsg(hello("", 0)) }, shm.CodeBadHello, false},
	{"long-producer", func(*hostile) []byte { return jsonMsg(hello(strings.Repeat("p", 4000), 0)) }, shm.CodeBadHello, false},
	{"control-chars", func(*hostile) []byte { return jsonMsg(hello("evil\n\x1b[31mdriver", 0)) }, shm.CodeBadHello, false},
	{"unknown-role", func(*hostile) []byte {
		return jsonMsg(&shm.Message{Op: shm.OpHello, Version: 1, Producer: "hostile-s", Role: "root"})
	}, shm.CodeBadHello, false},
	{"foreign-resume", func(*hostile) []byte {
		return jsonMsg(&shm.Message{Op: shm.OpHello, Version: 1, Producer: "hostile-s", Resume: &shm.Resume{Slot: 0, Generation: 1 << 32}})
	}, shm.CodeResume, false},
	{"bad-glob", func(*hostile) []byte {
		return jsonMsg(&shm.Message{Op: shm.OpHello, Version: 1, Role: shm.RoleSubscriber, Filter: &shm.Filter{Tag: "[a-"}})
	}, shm.CodeBadHello, false},
	{"bad-kind", func(*hostile) []byte {
		return jsonMsg(&shm.Message{Op: shm.OpHello, Version: 1, Role: shm.RoleSubscriber, Filter: &shm.Filter{Kinds: []uint16{0, 9}}})
	}, shm.CodeBadHello, false},
	{"bad-cursor", func(*hostile) []byte {
		return jsonMsg(&shm.Message{Op: shm.OpHello, Version: 1, Role: shm.RoleSubscriber, From: shm.FromCursor, Cursor: "../../etc/passwd"})
	}, shm.CodeBadHello, false},
	{"bad-from", func(*hostile) []byte {
		return jsonMsg(&shm.Message{Op: shm.OpHello, Version: 1, Role: shm.RoleSubscriber, From: "yesterday"})
	}, shm.CodeBadHello, false},
}

// garbageMessages is what the hostile sends on a connection the sidecar
// accepted: each is a protocol error.
func (h *hostile) garbageMessage(i int) []byte {
	switch i % 5 {
	case 0:
		return []byte("\x00\x01\x02 not json")
	case 1:
		return []byte(`{"op":"welcome"}`) // valid op, wrong direction
	case 2:
		return []byte(strings.Repeat("[", 20<<10)) // oversized
	case 3:
		return []byte(`{"op":"hello","version":1}`) // a second hello
	default:
		return []byte(`{"op":`)
	}
}

// socket floods the sidecar's socket: idle connections that never say
// hello, malformed and oversized first packets, refused hellos, and
// drivers, subscribers and requesters that send garbage after attaching.
// Every refused packet is checked for the sidecar's answer.
func (h *hostile) socket(ctx context.Context) error {
	var idle []*net.UnixConn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for i := 0; i < h.spec.Conns; i++ {
		c, err := h.dial()
		if err != nil {
			h.add("idle-dial-failed", 1)
			continue
		}
		idle = append(idle, c)
		h.add("idle-conns", 1)
	}
	fmt.Println("hostile ready")
	for round := 0; h.more(ctx, round); round++ {
		// Malformed and refused first packets.
		for _, bh := range badHellos {
			c, err := h.dial()
			if err != nil {
				h.add("dial-failed", 1)
				continue
			}
			c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Write(bh.packet(h)); err != nil {
				// Larger than the socket's send buffer allows: the
				// kernel refuses it before the sidecar sees it.
				h.add("send-refused-"+bh.name, 1)
				c.Close()
				continue
			}
			h.add("bad-hello", 1)
			if bh.counted {
				h.add("expect-protocol-errors", 1)
			}
			m, err := readMsg(c, 10*time.Second)
			switch {
			case err != nil && bh.code == "":
				h.add("refused", 1)
			case err != nil:
				h.add("no-answer-"+bh.name, 1)
			case m.Op == shm.OpError && m.Code == bh.code:
				h.add("refused", 1)
			default:
				h.add("wrong-answer-"+bh.name, 1)
				fmt.Printf("hostile note: %s answered %+v, want error %s\n", bh.name, m, bh.code)
			}
			c.Close()
		}
		// A driver, a subscriber and a requester that send garbage after
		// the welcome, until the sidecar disconnects them.
		for _, role := range []string{shm.RoleProducer, shm.RoleSubscriber, shm.RoleRequester} {
			h.garbageAfterWelcome(role, round)
		}
		// Connections that close at once.
		for j := 0; j < 20; j++ {
			if c, err := h.dial(); err == nil {
				c.Close()
				h.add("churn", 1)
			}
		}
		h.add("cycles", 1)
		h.pace()
	}
	// The idle connections: the sidecar must have closed them (hello
	// deadline), not kept a goroutine and a descriptor for each.
	closed := 0
	for _, c := range idle {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 64)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			closed++
		}
	}
	h.add("idle-closed-by-sidecar", closed)
	return nil
}

// garbageAfterWelcome attaches in role and then sends malformed messages
// until the sidecar closes the connection (it must, after a bounded number).
func (h *hostile) garbageAfterWelcome(role string, round int) {
	c, err := h.dial()
	if err != nil {
		h.add("dial-failed", 1)
		return
	}
	defer c.Close()
	m := &shm.Message{Op: shm.OpHello, Version: shm.ProtocolVersion, Role: role, Producer: fmt.Sprintf("hostile-s-%s-%d", role, round), RingBytes: 4096}
	if err := sendMsg(c, m); err != nil {
		h.add("dial-failed", 1)
		return
	}
	if w, err := readMsg(c, 10*time.Second); err != nil || w.Op != shm.OpWelcome {
		h.add("no-welcome-"+role, 1)
		fmt.Printf("hostile note: %s hello answered %+v %v\n", role, w, err)
		return
	}
	h.add("attached-"+role, 1)
	// Read the sidecar's answers concurrently: it must not block on a
	// client that never reads, but this one does, to see the close.
	closed := make(chan struct{}) // closed when the sidecar closes the connection
	go func() {
		buf := make([]byte, shm.MaxMessageSize+1)
		for {
			c.SetReadDeadline(time.Now().Add(time.Minute))
			if _, err := c.Read(buf); err != nil {
				if !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, net.ErrClosed) {
					close(closed)
				}
				return
			}
		}
	}()
	sent := 0
	for ; sent < 100; sent++ {
		var b []byte
		if role == shm.RoleRequester {
			// A well-formed command message whose frame is not a
			// Command: a DataFrame, or random bytes.
			frame := h.validFrame("hostile-s", uint64(sent))
			if sent%2 == 1 {
				frame = []byte(fmt.Sprintf("not a command %d", h.rng.Uint64()))
			}
			b = jsonMsg(&shm.Message{Op: shm.OpCommand, Frame: frame})
		} else {
			b = h.garbageMessage(sent)
		}
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write(b); err != nil {
			break
		}
		select {
		case <-closed:
		default:
			time.Sleep(time.Millisecond)
			continue
		}
		break
	}
	select {
	case <-closed:
		h.add("disconnected-"+role, 1)
	case <-time.After(15 * time.Second):
		h.add("never-disconnected-"+role, 1)
	}
	h.add("garbage-sent-"+role, sent)
}
