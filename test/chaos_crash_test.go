package test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/wal"
)

// The crash matrix: kill -9 of the sidecar, of drivers, of subscribers and
// of command requesters at random moments under load, with a check of the
// WAL after each sidecar kill and of everything at the end.

var durableLine = regexp.MustCompile(`(?m)^durable (\d+)$`)

// lastDurable returns the count of the last "durable N" line a
// `framebus publish --report-durable` process printed: its first N frames
// are known durable.
func lastDurable(out string) uint64 {
	m := durableLine.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.ParseUint(m[len(m)-1][1], 10, 64)
	return n
}

var publishedLine = regexp.MustCompile(`(?m)^published (\d+) frames \((\d+) dropped`)

// publishedCount parses the final line of `framebus publish`.
func publishedCount(t testing.TB, out string) uint64 {
	t.Helper()
	m := publishedLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no \"published N frames\" line in:\n%s", out)
	}
	if m[2] != "0" {
		t.Fatalf("a driver with the block policy dropped frames: %s", m[0])
	}
	n, _ := strconv.ParseUint(m[1], 10, 64)
	return n
}

// frameLedger checks the WAL across several reads while retention deletes
// its front: every (producer, frame seq) must always sit at the same WAL
// sequence (else it was stored twice), and a producer's frames must have
// strictly increasing frame seqs in WAL order.
type frameLedger struct {
	at      map[string]map[uint64]uint64 // producer → frame seq → WAL seq
	dups    int
	reorder int
	first   []string // the first few problems
	// lastSeen is the highest WAL sequence number any read saw;
	// unobserved counts the WAL sequence numbers that retention deleted
	// between two reads, before any read saw them (their frames cannot be
	// checked, and a frame missing from the ledger may be one of them).
	lastSeen, unobserved uint64
}

func newLedger() *frameLedger { return &frameLedger{at: map[string]map[uint64]uint64{}} }

func (l *frameLedger) problem(format string, args ...any) {
	if len(l.first) < 5 {
		l.first = append(l.first, fmt.Sprintf(format, args...))
	}
}

// read iterates the WAL in dir (the sidecar must be stopped or dead) and
// adds what it finds; it returns, per producer, the frame seqs present now.
func (l *frameLedger) read(t testing.TB, dir string) map[string][]uint64 {
	t.Helper()
	w, err := wal.Open(wal.Options{Dir: dir})
	if err != nil {
		t.Fatalf("open WAL after the crash: %v", err)
	}
	defer w.Close()
	now := map[string][]uint64{}
	firstRead := true
	err = w.Iterate(1, func(seq uint64, f wal.Frame) error {
		if firstRead {
			firstRead = false
			if seq > l.lastSeen+1 {
				l.unobserved += seq - l.lastSeen - 1
			}
		}
		l.lastSeen = max(l.lastSeen, seq)
		if schema.Kind(f.Kind) != schema.KindData {
			return nil
		}
		df, err := schema.ViewDataFrame(f.Data)
		if err != nil {
			return fmt.Errorf("WAL seq %d: %w", seq, err)
		}
		p, fs := string(df.Producer()), df.Seq()
		m := l.at[p]
		if m == nil {
			m = map[uint64]uint64{}
			l.at[p] = m
		}
		if prev, ok := m[fs]; ok && prev != seq {
			l.dups++
			l.problem("%s frame %d stored at WAL seq %d and %d", p, fs, prev, seq)
		}
		m[fs] = seq
		if s := now[p]; len(s) > 0 && s[len(s)-1] >= fs {
			l.reorder++
			l.problem("%s frame %d after frame %d in WAL order", p, fs, s[len(s)-1])
		}
		now[p] = append(now[p], fs)
		return nil
	})
	if err != nil {
		t.Fatalf("read WAL: %v", err)
	}
	return now
}

// missing counts the frames of producer below n that no read ever saw.
func (l *frameLedger) missing(producer string, n uint64) int {
	miss := 0
	for i := uint64(0); i < n; i++ {
		if _, ok := l.at[producer][i]; !ok {
			if miss == 0 {
				l.problem("%s frame %d never in the WAL (want frames 0..%d)", producer, i, n-1)
			}
			miss++
		}
	}
	return miss
}

// beyond counts the frames of producer at or above n (a killed driver's
// frames past what it published cannot exist).
func (l *frameLedger) beyond(producer string, n uint64) int {
	c := 0
	for fs := range l.at[producer] {
		if fs >= n {
			c++
		}
	}
	return c
}

// verifyWAL runs `framebus wal verify` on the bus's WAL and returns its
// error and output.
func (b *bus) verifyWAL() (string, error) {
	out, err := exec.Command(binary, "wal", "verify", "--wal-dir", b.walDir, "--name", b.name).CombinedOutput()
	return string(out), err
}

// waitProgress waits until every driver has reported more durable frames
// than in before; it returns the drivers that did not within d.
func waitProgress(drivers []*proc, before []uint64, d time.Duration) []int {
	deadline := time.Now().Add(d)
	for {
		var stuck []int
		for i, p := range drivers {
			if lastDurable(p.out.String()) <= before[i] {
				stuck = append(stuck, i)
			}
		}
		if len(stuck) == 0 || time.Now().After(deadline) {
			return stuck
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestChaosCrashSidecar kills the sidecar with SIGKILL at random moments
// while 4 drivers publish, with retention deleting segments at every
// commit; every third kill comes as soon as the first driver has
// re-attached to the restarted sidecar. After each kill: `framebus wal verify`
// passes, every frame a driver saw durable is in the WAL, no frame is
// there twice, and after the restart every driver makes progress again (no
// ring stuck). At the end every published frame was stored exactly once.
func TestChaosCrashSidecar(t *testing.T) {
	kills := chaosCount(5, 50)
	// The check reads the WAL after every kill, and retention must not
	// delete a frame before a read has seen it: 4 MiB of retention holds
	// about 2.5 s of this load (4 × 2500 frames/s of ~160 bytes), while
	// between two reads the drivers publish for at most about 1.5 s, plus
	// what their 256 KiB rings hold while the sidecar is down (a driver
	// blocks when its ring is full). Retention still deletes at almost
	// every commit once the first 4 MiB are in.
	b := newBus(t, "--wal-max-bytes", "4MiB", "--wal-flush-ms", "5", "--ring-bytes", "256KiB")
	sc := b.startSidecar()
	const drivers = 4
	var ds []*proc
	for i := range drivers {
		ds = append(ds, b.publish(fmt.Sprintf("crash-%d", i), 0, "--rate", "2500", "--report-durable", "20ms"))
	}
	ledger := newLedger()
	var out Outcome
	out.Fault = "kill -9 sidecar under load (4 drivers, retention deleting)"
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	reattach := 0
	before := make([]uint64, drivers)
	if stuck := waitProgress(ds, before, 30*time.Second); len(stuck) > 0 {
		t.Fatalf("drivers %v made no progress before the first kill", stuck)
	}
	for k := 0; k < kills; k++ {
		if k%3 == 2 && k > 0 {
			// Kill as soon as the first driver has re-attached to this
			// sidecar, while the others may still be re-attaching.
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) && len(lines(sc.out.String(), "driver re-attached")) == 0 {
				time.Sleep(time.Millisecond)
			}
			if n := len(lines(sc.out.String(), "driver re-attached")); n > 0 && n < drivers {
				reattach++
			}
		} else {
			time.Sleep(time.Duration(50+rng.IntN(400)) * time.Millisecond)
		}
		for i, d := range ds {
			before[i] = lastDurable(d.out.String())
		}
		sc.cmd.Process.Signal(syscall.SIGKILL)
		sc.wait(t, 10*time.Second)
		out.Injected++
		if len(lines(sc.out.String(), "panic")) > 0 {
			out.Panics++
		}
		if vout, err := b.verifyWAL(); err != nil {
			out.Lost++ // a WAL that fails verification has lost what it cannot read
			t.Errorf("kill %d: framebus wal verify: %v\n%s", k, err, vout)
		}
		ledger.read(t, b.walPath())
		for i := range ds {
			p := fmt.Sprintf("crash-%d", i)
			if before[i] == 0 {
				continue
			}
			if _, ok := ledger.at[p][before[i]-1]; !ok {
				out.Lost++
				t.Errorf("kill %d: %s reported %d frames durable; frame %d is not in the WAL", k, p, before[i], before[i]-1)
			}
		}
		sc = b.startSidecar()
		if stuck := waitProgress(ds, before, 30*time.Second); len(stuck) > 0 {
			out.Stalls += len(stuck)
			t.Errorf("kill %d: drivers %v made no durable progress within 30 s of the restart", k, stuck)
		}
	}
	var published []uint64
	// All at once (one after the other, the last ones would publish for
	// seconds more, and retention would delete frames before the final
	// read), and only once: a second SIGTERM after the driver has let go of
	// its signal handler would kill it.
	for _, d := range ds {
		d.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, d := range ds {
		if err := d.wait(t, 90*time.Second); err != nil {
			t.Fatalf("%v exited with %v after SIGTERM:\n%s", d.cmd.Args[:2], err, d.out.String())
		}
		published = append(published, publishedCount(t, d.out.String()))
	}
	sc.stop(t)
	if lines(sc.out.String(), "panic") != nil {
		out.Panics++
	}
	final := ledger.read(t, b.walPath())
	deleted := 0
	for p, m := range ledger.at {
		deleted += len(m) - len(final[p])
	}
	var total uint64
	missing := 0
	for i, n := range published {
		p := fmt.Sprintf("crash-%d", i)
		missing += ledger.missing(p, n)
		out.Duplicates += ledger.beyond(p, n) // frames never published cannot be stored
		total += n
	}
	// A frame no read saw is lost only if more are missing than retention
	// deleted unseen.
	if uint64(missing) > ledger.unobserved {
		out.Lost += missing - int(ledger.unobserved)
	}
	out.Duplicates += ledger.dups + ledger.reorder
	if vout, err := b.verifyWAL(); err != nil {
		out.Lost++
		t.Errorf("final framebus wal verify: %v\n%s", err, vout)
	}
	out.Detail = fmt.Sprintf("%d kills while 1-3 of the 4 drivers had re-attached, the rest 50-450 ms into load (drain, commit, retention delete: %d frames deleted by retention, %d of them before a read saw them); %d frames from 4 drivers checked; wal verify after every kill",
		reattach, deleted+int(ledger.unobserved), ledger.unobserved, total)
	if len(ledger.first) > 0 && out.Lost > 0 {
		t.Errorf("WAL problems: %v", ledger.first)
	}
	report(t, out)
}

// TestChaosCrashDriver kills drivers with SIGKILL mid-publish, each
// replaced at once by a new driver process under a new producer name, 4 at
// a time. Every killed driver's frames must form a prefix 0..k-1 in the
// WAL, stored once, with k at least what the driver saw durable; the
// drivers that finish normally must have every frame stored once; and the
// sidecar must free every dead driver's ring (200 kills need far more rings
// than the directory has slots).
func TestChaosCrashDriver(t *testing.T) {
	kills := chaosCount(20, 200)
	b := newBus(t)
	sc := b.startSidecar()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	type lane struct {
		p        *proc
		producer string
	}
	gen := 0
	newDriver := func(l int) lane {
		gen++
		name := fmt.Sprintf("lane%d-%d", l, gen)
		return lane{b.publish(name, 0, "--rate", "8000", "--report-durable", "10ms"), name}
	}
	lanes := make([]lane, 4)
	for i := range lanes {
		lanes[i] = newDriver(i)
	}
	type killed struct {
		producer string
		durable  uint64
	}
	var dead []killed
	var out Outcome
	out.Fault = "kill -9 driver mid-publish (4 drivers, replaced at once)"
	for k := 0; k < kills; k++ {
		time.Sleep(time.Duration(20+rng.IntN(150)) * time.Millisecond)
		l := rng.IntN(len(lanes))
		d := lanes[l]
		n := lastDurable(d.p.out.String())
		d.p.cmd.Process.Signal(syscall.SIGKILL)
		<-d.p.done
		out.Injected++
		dead = append(dead, killed{d.producer, n})
		lanes[l] = newDriver(l)
		if sc.exited() {
			out.Panics++
			t.Fatalf("the sidecar exited after %d driver kills: %v\n%s", k+1, sc.err, sc.out.String())
		}
	}
	// Every lane must still reach the durable state: no ring is stuck.
	zero := make([]uint64, len(lanes))
	var procs []*proc
	for _, l := range lanes {
		procs = append(procs, l.p)
	}
	if stuck := waitProgress(procs, zero, 30*time.Second); len(stuck) > 0 {
		out.Stalls += len(stuck)
		t.Errorf("drivers %v made no durable progress after the kills", stuck)
	}
	var published []uint64
	for _, l := range lanes {
		l.p.stop(t)
		published = append(published, publishedCount(t, l.p.out.String()))
	}
	sc.stop(t)
	if lines(sc.out.String(), "panic") != nil {
		out.Panics++
	}
	ledger := newLedger()
	got := ledger.read(t, b.walPath())
	out.Duplicates += ledger.dups + ledger.reorder
	var maxRings int
	for _, k := range dead {
		s := got[k.producer]
		// A prefix: frame i at position i.
		for i, fs := range s {
			if fs != uint64(i) {
				out.Lost++
				t.Errorf("%s (killed): WAL position %d holds frame %d: not a prefix", k.producer, i, fs)
				break
			}
		}
		if uint64(len(s)) < k.durable {
			out.Lost += int(k.durable) - len(s)
			t.Errorf("%s (killed): %d frames in the WAL, the driver saw %d durable", k.producer, len(s), k.durable)
		}
	}
	var total uint64
	for i, l := range lanes {
		out.Lost += ledger.missing(l.producer, published[i])
		out.Duplicates += ledger.beyond(l.producer, published[i])
		total += published[i]
	}
	if vout, err := b.verifyWAL(); err != nil {
		out.Lost++
		t.Errorf("framebus wal verify: %v\n%s", err, vout)
	}
	maxRings = len(dead) + len(lanes)
	out.Detail = fmt.Sprintf("%d driver processes in all (rings attached and freed), every killed driver's frames a durable-covering prefix, %d frames of the 4 surviving drivers exactly once; wal verify",
		maxRings, total)
	if len(ledger.first) > 0 {
		t.Errorf("WAL problems: %v", ledger.first)
	}
	report(t, out)
}

// statusOf fetches the parts of GET /v1/status that the client crash tests
// check.
type chaosStatus struct {
	Subscribers []struct {
		Name string `json:"name"`
	} `json:"subscribers"`
	Commands struct {
		InFlight int `json:"in_flight"`
	} `json:"commands"`
}

func statusOf(t testing.TB, addr string) chaosStatus {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st chaosStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// openFDs counts the open file descriptors of a process.
func openFDs(t testing.TB, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestChaosCrashClients kills durable-cursor subscribers and command
// requesters with SIGKILL while drivers publish and serve commands.
// Subscribers: each restart resumes at or before the frame after the last
// one printed (no gap), and within the ack interval (not from the start);
// all runs together cover every data frame of the WAL in order. Requesters:
// their commands in flight all resolve (in_flight returns to 0), a new
// command completes, and the sidecar's subscriptions and file descriptors
// return to what they were: nothing is left behind by the dead.
func TestChaosCrashClients(t *testing.T) {
	subKills, reqKills := chaosCount(4, 30), chaosCount(4, 30)
	addr := freeAddr(t)
	b := newBus(t, "--http-addr", addr)
	sc := b.startSidecar()
	pid := sc.cmd.Process.Pid
	srv := b.serveDriver(sc, "plc-drv", "plc", "--command-delay", "20ms", "--count", "0", "--rate", "2000")
	fdsBefore := openFDs(t, pid)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))

	// Subscribers.
	subOut := Outcome{Fault: "kill -9 durable-cursor subscriber (ack every 100)"}
	ds := []*proc{b.publish("A", 0, "--rate", "5000"), b.publish("B", 0, "--rate", "5000")}
	var runs [][]uint64
	for k := 0; k < subKills; k++ {
		sub := b.tail("--from", "cursor:c1", "--kind", "data", "--follow", "--ack-every", "100")
		waitFor(t, 20*time.Second, "the subscriber's first frames", func() bool { return len(tailSeqs(t, sub.out.String())) > 0 })
		time.Sleep(time.Duration(100+rng.IntN(300)) * time.Millisecond)
		sub.cmd.Process.Signal(syscall.SIGKILL)
		<-sub.done
		subOut.Injected++
		runs = append(runs, tailSeqs(t, sub.out.String()))
	}
	for _, d := range ds {
		d.stop(t)
	}
	srv.cmd.Process.Signal(syscall.SIGTERM) // stops publishing; keeps serving until it exits
	if err := srv.wait(t, time.Minute); err != nil {
		t.Fatalf("command driver: %v\n%s", err, srv.out.String())
	}
	last := b.tail("--from", "cursor:c1", "--kind", "data", "--idle", "2s")
	if err := last.wait(t, time.Minute); err != nil {
		t.Fatalf("tail: %v\n%s", err, last.out.String())
	}
	srv = b.serveDriver(sc, "plc-drv2", "plc", "--command-delay", "20ms")
	runs = append(runs, tailSeqs(t, last.out.String()))
	var merged []uint64
	redelivered := 0
	for i, r := range runs {
		if len(r) == 0 {
			subOut.Stalls++
			t.Errorf("subscriber run %d received nothing", i)
			continue
		}
		if len(merged) > 0 {
			prev := merged[len(merged)-1]
			switch {
			case r[0] > prev+1:
				subOut.Lost += int(r[0] - prev - 1)
				t.Errorf("run %d starts at WAL seq %d, the runs before ended at %d: a gap", i, r[0], prev)
			case r[0] <= prev:
				idx := slices.Index(merged, r[0])
				if idx < 0 || len(merged)-idx > 150 {
					subOut.Duplicates++
					t.Errorf("run %d resumed at WAL seq %d: not within the last 150 frames printed (acks every 100)", i, r[0])
				} else {
					redelivered += len(merged) - idx
					merged = merged[:idx]
				}
			}
		}
		merged = append(merged, r...)
	}
	waitFor(t, 10*time.Second, "no subscription left", func() bool { return len(statusOf(t, addr).Subscribers) == 0 })

	// Requesters.
	reqOut := Outcome{Fault: "kill -9 command requester (16 commands in flight)"}
	for k := 0; k < reqKills; k++ {
		c := b.cmd("--target", "plc", "--device", "d1", "--set", "x=1", "--repeat", "1000000", "--parallel", "16", "--timeout", "2s")
		time.Sleep(time.Duration(50+rng.IntN(250)) * time.Millisecond)
		c.cmd.Process.Signal(syscall.SIGKILL)
		<-c.done
		reqOut.Injected++
	}
	deadline := time.Now().Add(15 * time.Second)
	for statusOf(t, addr).Commands.InFlight != 0 {
		if time.Now().After(deadline) {
			reqOut.Stalls++
			t.Errorf("%d commands still in flight 15 s after their requesters died (deadline 2 s)", statusOf(t, addr).Commands.InFlight)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	c := b.cmd("--target", "plc", "--device", "d1", "--set", "x=2")
	if err := c.wait(t, time.Minute); err != nil || !strings.Contains(c.out.String(), "COMPLETED") {
		reqOut.Stalls++
		t.Errorf("a command after the kills: %v\n%s", err, c.out.String())
	}
	if sc.exited() || len(lines(sc.out.String(), "panic")) > 0 {
		reqOut.Panics++
	}
	// Everything the dead left behind is closed: the sidecar holds no
	// more descriptors than before (a few may come and go: timers, the
	// HTTP client's connection).
	var fdsAfter int
	waitFor(t, 10*time.Second, "descriptors back", func() bool { fdsAfter = openFDs(t, pid); return fdsAfter <= fdsBefore+4 })
	reqOut.Detail = fmt.Sprintf("in-flight commands resolved, a new command COMPLETED; sidecar descriptors %d before, %d after %d subscriber and %d requester kills", fdsBefore, fdsAfter, subKills, reqKills)
	srv.cmd.Process.Signal(syscall.SIGTERM)
	sc.stop(t)

	// The subscriber runs against the WAL: every data frame of the
	// drivers that published while they ran (plc-drv2 came after).
	var want []uint64
	for _, e := range b.walEntries() {
		if e.kind == schema.KindData && e.producer != "plc-drv2" {
			want = append(want, e.seq)
		}
	}
	if !slices.Equal(merged, want) {
		subOut.Lost++
		equalSeqs(t, "cursor c1 over all runs", merged, want)
	}
	subOut.Detail = fmt.Sprintf("%d runs cover all %d data frames of the WAL in order, no gap; %d frames redelivered after kills (unacked, as designed); no subscription left", len(runs), len(want), redelivered)
	report(t, subOut)
	report(t, reqOut)
}

// A PAUSE that the sidecar raised stays in the segment's flags after it is
// killed. Drivers read it as "hold back": a blocking driver waited instead
// of filling its ring, and a drop-newest one dropped frames although its
// ring had room, until a new sidecar cleared the flag. While the sidecar is
// gone only the ring's room may decide.
func TestStalePauseAfterSidecarDeath(t *testing.T) {
	b := newBus(t, "--wal-max-bytes", "1MiB", "--cursor-max-bytes", "1MiB")
	sc := b.startSidecar()
	// A durable cursor that never reads nor acks holds retention: at
	// cursor_max_bytes the sidecar raises PAUSE.
	hold := b.subscribe(client.Filter{}, client.Cursor("hold"), false)
	defer hold.Close()
	filler := b.publish("filler", 0, "--rate", "50000", "--policy", "drop-newest")
	waitFor(t, 60*time.Second, "PAUSE for the unacked cursor", func() bool {
		return len(lines(sc.out.String(), "hold the WAL above cursor_max_bytes")) > 0
	})
	filler.cmd.Process.Signal(syscall.SIGKILL)
	<-filler.done
	victim := b.publish("victim", 0, "--rate", "1000")
	waitFor(t, 30*time.Second, "the victim attached", func() bool { return len(lines(sc.out.String(), "producer=victim")) > 0 })
	sc.cmd.Process.Signal(syscall.SIGKILL)
	sc.wait(t, 10*time.Second)
	// No sidecar for 2 s: the victim's ring (megabytes) has room for
	// all of the 2000 frames it publishes meanwhile.
	time.Sleep(2 * time.Second)
	victim.cmd.Process.Signal(syscall.SIGTERM)
	hold.Close()
	b.startSidecar() // drains the ring: the victim's WaitDurable returns
	if err := victim.wait(t, time.Minute); err != nil {
		t.Fatalf("victim: %v\n%s", err, victim.out.String())
	}
	if n := publishedCount(t, victim.out.String()); n < 1000 {
		t.Fatalf("the driver published %d frames in the 2 s without a sidecar (at 1000/s, into an empty ring): it obeyed the dead sidecar's PAUSE", n)
	}
}
