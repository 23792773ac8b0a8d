package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/wal"
)

// walEntry is one frame of the WAL, read independently of the sidecar.
type walEntry struct {
	seq      uint64
	kind     schema.Kind
	producer string
	device   string
	tags     []string
}

func (b *bus) walEntries() []walEntry {
	b.t.Helper()
	w, err := wal.Open(wal.Options{Dir: b.walPath()})
	if err != nil {
		b.t.Fatalf("open WAL: %v", err)
	}
	defer w.Close()
	var out []walEntry
	err = w.Iterate(1, func(seq uint64, f wal.Frame) error {
		e := walEntry{seq: seq, kind: schema.Kind(f.Kind)}
		if e.kind == schema.KindData {
			d := schema.RootDataFrame(f.Data)
			e.producer, e.device = string(d.Producer()), string(d.Device())
			var df schema.DataFrame
			if err := schema.DecodeDataFrame(f.Data, &df); err != nil {
				return err
			}
			for _, p := range df.Points {
				e.tags = append(e.tags, p.Tag)
			}
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

func (b *bus) walPath() string { return b.walDir + "/" + b.name }

// tailLine is the part of a `framebus tail --json` line the tests check.
type tailLine struct {
	WALSeq   uint64 `json:"wal_seq"`
	Kind     string `json:"kind"`
	Producer string `json:"producer"`
	Device   string `json:"device"`
	Points   []struct {
		Tag string `json:"tag"`
	} `json:"points"`
}

// tailSeqs parses the JSON lines of a tail process's output.
func tailSeqs(t testing.TB, out string) []uint64 {
	t.Helper()
	var seqs []uint64
	// Only complete lines: the process may be writing the last one.
	out = out[:strings.LastIndexByte(out, '\n')+1]
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var l tailLine
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("tail printed a bad JSON line %q: %v", line, err)
		}
		seqs = append(seqs, l.WALSeq)
	}
	return seqs
}

func (b *bus) tail(args ...string) *proc {
	return start(b.t, append([]string{"tail", "--name", b.name, "--run-dir", b.runDir, "--json"}, args...)...)
}

func equalSeqs(t testing.TB, what string, got, want []uint64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d frames, want %d (first got %v, first want %v)", what, len(got), len(want), head(got), head(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: frame %d is WAL seq %d, want %d", what, i, got[i], want[i])
		}
	}
}

func head(s []uint64) []uint64 { return s[:min(len(s), 5)] }

// TestSubscribers: three `framebus tail` processes with different filters
// and starts against two drivers; each receives exactly the frames its
// filter selects, in WAL order. The cursor subscriber is killed and
// restarted and resumes right after its last ack.
func TestSubscribers(t *testing.T) {
	const n = 20000
	b := newBus(t)
	sc := b.startSidecar()

	// Frames before any subscriber exists: "earliest" and the cursor get
	// them, "latest" does not.
	pre := b.publish("early", 500, "--device", "dev0")
	if err := pre.wait(t, time.Minute); err != nil {
		t.Fatalf("publish: %v\n%s", err, pre.out.String())
	}
	earliest := b.tail("--from", "earliest", "--producer", "A", "--follow", "--limit", fmt.Sprint(n))
	latest := b.tail("--from", "latest", "--tag", "B*/tag1", "--follow", "--limit", fmt.Sprint(n))
	cur1 := b.tail("--from", "cursor:c1", "--kind", "data", "--follow", "--ack-every", "50")
	waitFor(t, 10*time.Second, "three subscribers attached", func() bool {
		return strings.Count(sc.out.String(), "subscriber attached") >= 3
	})

	a := b.publish("A", n, "--device", "A0", "--rate", "20000")
	bb := b.publish("B", n, "--device", "B0", "--points", "2", "--rate", "20000")
	// Kill the cursor subscriber once it has printed a few thousand.
	waitFor(t, time.Minute, "cursor subscriber output", func() bool { return len(tailSeqs(t, cur1.out.String())) >= 3000 })
	cur1.cmd.Process.Signal(syscall.SIGKILL)
	<-cur1.done
	for _, p := range []*proc{a, bb} {
		if err := p.wait(t, 2*time.Minute); err != nil {
			t.Fatalf("publish: %v\n%s", err, p.out.String())
		}
	}
	for _, p := range []*proc{earliest, latest} {
		if err := p.wait(t, time.Minute); err != nil {
			t.Fatalf("tail: %v\n%s", err, p.out.String())
		}
	}
	// The restarted cursor subscriber reads what is there and exits.
	cur2 := b.tail("--from", "cursor:c1", "--kind", "data")
	if err := cur2.wait(t, time.Minute); err != nil {
		t.Fatalf("tail: %v\n%s", err, cur2.out.String())
	}
	sc.stop(t)

	entries := b.walEntries()
	var wantA, wantB, wantData []uint64
	for _, e := range entries {
		if e.kind != schema.KindData {
			continue
		}
		wantData = append(wantData, e.seq)
		if e.producer == "A" {
			wantA = append(wantA, e.seq)
		}
		for _, tag := range e.tags {
			if ok, _ := path.Match("B*/tag1", tag); ok {
				wantB = append(wantB, e.seq)
				break
			}
		}
	}
	if len(wantA) != n || len(wantB) != n {
		t.Fatalf("the WAL holds %d frames of A and %d of B with tag1, want %d each", len(wantA), len(wantB), n)
	}
	equalSeqs(t, "tail --from earliest --producer A", tailSeqs(t, earliest.out.String()), wantA)
	equalSeqs(t, "tail --from latest --tag B*/tag1", tailSeqs(t, latest.out.String()), wantB)

	got1, got2 := tailSeqs(t, cur1.out.String()), tailSeqs(t, cur2.out.String())
	if len(got1) == 0 || len(got2) == 0 {
		t.Fatalf("cursor runs printed %d and %d frames", len(got1), len(got2))
	}
	last1, first2 := got1[len(got1)-1], got2[0]
	// No gap: the restart starts at or before the frame after the last
	// one printed; and it resumes from its ack, not from the start (acks
	// every 50 frames, so at most 50 frames come again).
	if first2 > last1+1 {
		t.Fatalf("cursor restart skipped frames: first run ended at %d, second starts at %d", last1, first2)
	}
	merged := append([]uint64{}, got1...)
	if first2 <= last1 {
		idx := slices.Index(got1, first2)
		if idx < 0 || len(got1)-idx > 60 {
			t.Fatalf("cursor restart resumed at seq %d: not within the last 60 frames of the first run (it acks every 50)", first2)
		}
		merged = merged[:idx]
	}
	merged = append(merged, got2...)
	equalSeqs(t, "cursor c1, both runs", merged, wantData)
}

// waitFor polls cond every 20 ms.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// subscribe opens an in-process subscription on b.
func (b *bus) subscribe(f client.Filter, from client.From, live bool) *client.Subscription {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := client.Subscribe(ctx, f, from, client.SubscribeOptions{Name: b.name, RunDir: b.runDir, Live: live})
	if err != nil {
		b.t.Fatalf("subscribe: %v", err)
	}
	b.t.Cleanup(func() { sub.Close() })
	return sub
}

// TestCursorRetention: retention against a durable cursor that has not
// acked, under both policies.
func TestCursorRetention(t *testing.T) {
	const n = 30000 // ~5 MB of frames against a 1 MiB WAL cap
	t.Run("retain", func(t *testing.T) {
		b := newBus(t, "--wal-max-bytes", "1MiB", "--wal-compression", "none", "--cursor-policy", "retain", "--cursor-max-bytes", "3MiB")
		sc := b.startSidecar()
		b.subscribe(client.Filter{}, client.Cursor("c"), false).Close()
		// Slow enough that PAUSE stops the driver before it is done (a
		// ring's frames are accepted: they go to the WAL whatever its size).
		pub := b.publish("P", n, "--rate", "15000")
		// The cursor holds every frame: at 3 MiB the sidecar pauses the
		// driver instead of deleting them.
		waitFor(t, 30*time.Second, "PAUSE at cursor_max_bytes", func() bool {
			return strings.Contains(sc.out.String(), "above cursor_max_bytes")
		})
		time.Sleep(300 * time.Millisecond)
		if pub.exited() {
			t.Fatalf("the driver finished although the WAL is held at its cap:\n%s", pub.out.String())
		}
		// The cursor's owner reads and acks: the driver resumes.
		sub := b.subscribe(client.Filter{Kinds: []schema.Kind{schema.KindData}}, client.Cursor("c"), false)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var seqs []uint64
		var producerSeqs []uint64
		for len(producerSeqs) < n {
			f, err := sub.Next(ctx)
			if err != nil {
				t.Fatalf("Next after %d frames: %v\ndriver:\n%s", len(seqs), err, pub.out.String())
			}
			seqs = append(seqs, f.Seq)
			df := schema.RootDataFrame(f.Data)
			producerSeqs = append(producerSeqs, df.Seq())
			if len(seqs)%500 == 0 {
				if err := sub.Ack(f.Seq); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := sub.Ack(seqs[len(seqs)-1]); err != nil {
			t.Fatal(err)
		}
		if err := pub.wait(t, time.Minute); err != nil {
			t.Fatalf("publish: %v\n%s", err, pub.out.String())
		}
		if sub.Lost() != 0 {
			t.Fatalf("retain policy lost %d frames", sub.Lost())
		}
		for i, s := range producerSeqs {
			if s != uint64(i) {
				t.Fatalf("cursor subscriber: frame %d has producer seq %d", i, s)
			}
		}
		sub.Close()
		time.Sleep(200 * time.Millisecond) // one commit for the last ack
		sc.stop(t)
		st, err := wal.ReadStats(b.walPath())
		if err != nil {
			t.Fatal(err)
		}
		if c := st.Cursors["c"]; c.Acked != seqs[len(seqs)-1] || c.Lost != 0 {
			t.Fatalf("cursor c after the run: %+v, want acked %d, lost 0", c, seqs[len(seqs)-1])
		}
		if st.FirstSeq <= 1 {
			t.Fatalf("retention deleted nothing after the cursor acked everything (first seq %d)", st.FirstSeq)
		}
	})
	t.Run("drop", func(t *testing.T) {
		b := newBus(t, "--wal-max-bytes", "1MiB", "--wal-compression", "none", "--cursor-policy", "drop")
		sc := b.startSidecar()
		b.subscribe(client.Filter{}, client.Cursor("c"), false).Close()
		pub := b.publish("P", n)
		if err := pub.wait(t, time.Minute); err != nil {
			t.Fatalf("publish: %v\n%s", err, pub.out.String())
		}
		sc.stop(t)
		st, err := wal.ReadStats(b.walPath())
		if err != nil {
			t.Fatal(err)
		}
		if st.FirstSeq <= 1 {
			t.Fatalf("drop policy: retention deleted nothing (first seq %d)", st.FirstSeq)
		}
		c := st.Cursors["c"]
		if c.Lost != st.FirstSeq-1 || c.Acked != st.FirstSeq-1 {
			t.Fatalf("cursor c: %+v; want acked = lost = first seq - 1 = %d", c, st.FirstSeq-1)
		}
		if !strings.Contains(sc.out.String(), "durable cursor had not acked") {
			t.Fatalf("no log line about the lost frames:\n%s", sc.out.String())
		}
		// The subscriber resumes at the oldest frame left.
		sc = b.startSidecar()
		sub := b.subscribe(client.Filter{}, client.Cursor("c"), false)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		f, err := sub.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if f.Seq != st.FirstSeq {
			t.Fatalf("first frame after the drop: seq %d, want %d", f.Seq, st.FirstSeq)
		}
		sub.Close()
		sc.stop(t)
	})
}

// publishRate runs one `framebus publish` of n frames and returns its
// durable frames/s.
func (b *bus) publishRate(t testing.TB, producer string, n int) float64 {
	t.Helper()
	p := b.publish(producer, n)
	if err := p.wait(t, 2*time.Minute); err != nil {
		t.Fatalf("publish: %v\n%s", err, p.out.String())
	}
	r, err := parsePublishReport(p.out.String())
	if err != nil {
		t.Fatal(err)
	}
	return float64(r.published) / (r.publishSec + r.lastDurableMs/1000)
}

// TestSlowSubscriber: a subscriber that sleeps in its loop costs ingest at
// most 10 % of its throughput, and catches up later. Rounds with and
// without the subscriber alternate; the medians are compared (without
// -race only: `make test-perf`).
func TestSlowSubscriber(t *testing.T) {
	n := 800000
	if raceEnabled {
		n = 200000
	}
	const rounds = 9
	b := newBus(t)
	sc := b.startSidecar()
	defer sc.stop(t)
	b.publishRate(t, "warmup", n/4)

	var with, without []float64
	for i := 0; i < rounds; i++ {
		// Which run comes first alternates: a run pays for the previous
		// one's page-cache writeback.
		if i%2 == 0 {
			without = append(without, b.publishRate(t, fmt.Sprintf("base%d", i), n))
		}

		producer := fmt.Sprintf("slow%d", i)
		sub := b.subscribe(client.Filter{Producer: producer}, client.Latest(), false)
		var slow atomic.Bool
		slow.Store(true)
		got := make(chan []uint64, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			var seqs []uint64
			defer func() { got <- seqs }()
			for len(seqs) < n {
				f, err := sub.Next(ctx)
				if err != nil {
					t.Errorf("slow subscriber: Next after %d frames: %v", len(seqs), err)
					return
				}
				df := schema.RootDataFrame(f.Data)
				seqs = append(seqs, df.Seq())
				if slow.Load() && len(seqs)%100 == 0 {
					time.Sleep(10 * time.Millisecond) // at most ~10 k frames/s
				}
			}
		}()
		with = append(with, b.publishRate(t, producer, n))
		// Ingest is done; the subscriber is far behind and now catches up.
		slow.Store(false)
		seqs := <-got
		sub.Close()
		if len(seqs) != n {
			t.Fatalf("round %d: the slow subscriber got %d frames, want %d", i, len(seqs), n)
		}
		for j, s := range seqs {
			if s != uint64(j) {
				t.Fatalf("round %d: the slow subscriber's frame %d has seq %d", i, j, s)
			}
		}
		if i%2 == 1 {
			without = append(without, b.publishRate(t, fmt.Sprintf("base%d", i), n))
		}
	}
	slices.Sort(with)
	slices.Sort(without)
	mw, mo := with[rounds/2], without[rounds/2]
	t.Logf("ingest with a slow subscriber: median %.0f frames/s (runs %.0f); without: %.0f frames/s (runs %.0f); ratio %.2f", mw, with, mo, without, mw/mo)
	if raceEnabled {
		// The race detector slows the feeder and the subscriber far more
		// than the ingest path; `make test-perf` checks the ratio without it.
		return
	}
	if mw < 0.9*mo {
		t.Errorf("a slow subscriber cost ingest %.1f %% (with %.0f, without %.0f frames/s); want at most 10 %%", 100*(1-mw/mo), mw, mo)
	}
}
