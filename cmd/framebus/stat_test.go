package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/framebus/framebus/shm"
	"github.com/framebus/framebus/sidecar"
)

// promText parses a Prometheus text exposition.
func promText(tb testing.TB, text string) map[string]*dto.MetricFamily {
	tb.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		tb.Fatal(err)
	}
	return fams
}

// flushHistogram is framebus_wal_flush_duration_seconds with cumulative
// counts for the bounds 1 ms, 10 ms, 100 ms and a total (the +Inf bucket).
func flushHistogram(c1, c10, c100, total int) string {
	return fmt.Sprintf(`# TYPE framebus_wal_flush_duration_seconds histogram
framebus_wal_flush_duration_seconds_bucket{le="0.001"} %d
framebus_wal_flush_duration_seconds_bucket{le="0.01"} %d
framebus_wal_flush_duration_seconds_bucket{le="0.1"} %d
framebus_wal_flush_duration_seconds_bucket{le="+Inf"} %d
framebus_wal_flush_duration_seconds_sum 1
framebus_wal_flush_duration_seconds_count %d
# TYPE framebus_wal_durable_sequence gauge
framebus_wal_durable_sequence 1
`, c1, c10, c100, total, total)
}

func nearlyEqual(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func TestStatBucketQuantile(t *testing.T) {
	upper := []float64{0.001, 0.01, 0.1}
	for _, tc := range []struct {
		q     float64
		cum   []float64
		total float64
		want  float64
	}{
		{0.5, []float64{10, 90, 100}, 100, 0.001 + 0.009*40/80}, // inside the second bucket
		{0.99, []float64{10, 90, 100}, 100, 0.01 + 0.09*9/10},   // inside the third
		{0.05, []float64{10, 90, 100}, 100, 0.001 * 5 / 10},     // the first starts at 0
		{0.99, []float64{10, 90, 100}, 200, 0.1},                // in +Inf: the largest finite bound
		{0.5, []float64{0, 0, 4}, 4, 0.01 + 0.09*2/4},           // empty buckets are skipped
	} {
		if got := bucketQuantile(tc.q, upper, tc.cum, tc.total); !nearlyEqual(got, tc.want) {
			t.Errorf("q%.2f of %v/%v = %g, want %g", tc.q, tc.cum, tc.total, got, tc.want)
		}
	}
}

// statFixture is two samples of a bus one second apart (two for /v1/status,
// whose readings are 2 s apart), with every source readable.
func statFixture(tb testing.TB) (*statSource, *statSample, *statSample) {
	src := &statSource{name: "plant", shmDir: "/dev/shm", httpAddr: "127.0.0.1:9465", metricsAddr: "127.0.0.1:9464"}
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	ring := func(slot int, kind shm.RingKind, name string, gen, tail, used uint64) shm.RingSnapshot {
		return shm.RingSnapshot{RingInfo: shm.RingInfo{Slot: slot, State: shm.SlotActive, Kind: kind, Offset: uint64(1+slot) << 20,
			Capacity: 1 << 16, Generation: gen, Owner: shm.Owner{Pid: os.Getpid(), Name: name}}, Tail: tail, Used: used}
	}
	seg0 := &shm.Snapshot{Taken: t0, Epoch: 3, SidecarPid: 4321, Durable: 1000, Rings: []shm.RingSnapshot{
		ring(0, shm.KindIngressSPSC, "modbus", 1, 10000, 0),
		ring(1, shm.KindIngressMPMC, "opcua", 1, 5000, 0),
		ring(2, shm.KindEgress, "subscriber", 1, 0, 0),
		ring(3, shm.KindIngressSPSC, "s7", 1, 7000, 0),
	}}
	seg1 := &shm.Snapshot{Taken: t0.Add(time.Second), Epoch: 3, SidecarPid: 4321, Flags: shm.FlagPause | 1<<9, Durable: 1500, Rings: []shm.RingSnapshot{
		ring(0, shm.KindIngressSPSC, "modbus", 1, 30000, 1<<14),
		ring(1, shm.KindIngressMPMC, "opcua", 1, 5500, 0),
		ring(2, shm.KindEgress, "subscriber", 1, 4000, 0),
		ring(3, shm.KindIngressSPSC, "s7-new", 2, 100, 0), // the slot was reused
	}}
	seg1.Rings[0].DroppedFull, seg1.Rings[0].DroppedPaused, seg1.Rings[0].Flags = 2, 3, shm.FlagPause
	status := func(published, delivered, opcua uint64) *sidecar.Status {
		return &sidecar.Status{Name: "plant", Epoch: 3, Preset: "default",
			WAL: sidecar.StatusWAL{Dir: "/var/lib/framebus/plant", FirstSeq: 1, LastSeq: 1510, DurableSeq: 1500,
				StoredBytes: 1 << 20, FootprintBytes: 2 << 20, MaxBytes: 8 << 20},
			Producers: []sidecar.StatusProducer{
				{Slot: 0, Name: "modbus", Pid: os.Getpid(), State: "attached", Published: published, Rejected: 4},
				{Slot: 1, Name: "opcua", Pid: os.Getpid(), State: "orphan", Published: opcua},
				{Slot: 3, Name: "s7", Pid: 1, State: "attached", Published: 50}, // the old owner of slot 3
			},
			Subscribers: []sidecar.StatusSubscriber{
				{Name: "slot:2", Filter: "everything", NextSeq: 1490, LagFrames: 11, Delivered: delivered},
				{Name: "cursor:historian", Cursor: "historian", Filter: "producer=modbus", Delivered: 7},
			},
			Commands: sidecar.StatusCommands{InFlight: 1, Targets: map[string]string{"pump": "modbus"}},
		}
	}
	prev := &statSample{at: t0, seg: seg0, alive: true, status: status(100, 10, 40), statusAt: t0,
		metrics: promText(tb, flushHistogram(10, 20, 20, 20))}
	cur := &statSample{at: t0.Add(time.Second), seg: seg1, alive: true, uptime: 90 * time.Second,
		status: status(2100, 410, 40), statusAt: t0.Add(2 * time.Second),
		metrics: promText(tb, flushHistogram(10, 90, 100, 100)+`# TYPE framebus_durable_lag_seconds gauge
framebus_durable_lag_seconds 0.25
# TYPE framebus_subscriber_lag_seconds gauge
framebus_subscriber_lag_seconds{subscriber="slot:2"} 1.5
`)}
	return src, prev, cur
}

// TestStatView: the view combines segment, /v1/status and /metrics, and
// each rate is the difference of two readings of one source over the time
// between them.
func TestStatView(t *testing.T) {
	src, prev, cur := statFixture(t)
	v := buildStatView(src, prev, cur)
	if v.IntervalSeconds != 1 || v.Bus != "plant" || v.Sidecar.Pid != 4321 || v.Sidecar.Epoch != 3 || *v.Sidecar.UptimeSeconds != 90 ||
		!*v.Sidecar.Running || *v.Sidecar.Preset != "default" {
		t.Fatalf("header: %+v %+v", v, v.Sidecar)
	}
	if !slices.Equal(v.Flags, []string{"PAUSE", "0x200"}) {
		t.Fatalf("flags %v", v.Flags)
	}
	w := v.WAL
	if *w.DurableSeq != 1500 || *w.DurableLagFrames != 10 || *w.DurableLagSeconds != 0.25 || *w.DurableFramesPerSecond != 500 ||
		*w.FirstSeq != 1 || *w.LastSeq != 1510 || *w.FootprintBytes != 2<<20 || *w.MaxBytes != 8<<20 || *w.RetentionHeld {
		t.Fatalf("WAL: %+v", w)
	}
	// 80 commits between the samples: 70 in 1..10 ms, 10 in 10..100 ms.
	if c := w.CommitLatency; c == nil || c.Source != "interval" || c.Commits != 80 ||
		!nearlyEqual(c.P50Seconds, 0.001+0.009*40/70) || !nearlyEqual(c.P99Seconds, 0.01+0.09*9.2/10) {
		t.Fatalf("commit latency %+v", w.CommitLatency)
	}
	if len(v.Rings) != 4 {
		t.Fatalf("%d rings", len(v.Rings))
	}
	modbus, opcua, egress, s7 := v.Rings[0], v.Rings[1], v.Rings[2], v.Rings[3]
	if modbus.Producer != "modbus" || modbus.Kind != "ingress-spsc" || *modbus.DriverState != "attached" || *modbus.SlotState != "active" ||
		!*modbus.Alive || *modbus.FramesPerSecond != 1000 || *modbus.BytesPerSecond != 20000 || *modbus.Published != 2100 ||
		*modbus.Rejected != 4 || *modbus.DroppedFull != 2 || *modbus.DroppedPaused != 3 || modbus.FillPercent != 25 ||
		!slices.Equal(modbus.Flags, []string{"PAUSE"}) {
		t.Fatalf("modbus ring: %+v", modbus)
	}
	if *opcua.FramesPerSecond != 0 || *opcua.BytesPerSecond != 500 || *opcua.DriverState != "orphan" || opcua.Kind != "ingress-mpmc" {
		t.Fatalf("opcua ring: %+v", opcua)
	}
	// The egress ring of subscriber slot:2 moves at that subscriber's rate.
	if *egress.FramesPerSecond != 200 || egress.DriverState != nil || egress.Published != nil {
		t.Fatalf("egress ring: %+v", egress)
	}
	// Slot 3 changed hands: no rate across owners, and the status entry
	// of the old owner is not the new ring's.
	if s7.Producer != "s7-new" || s7.BytesPerSecond != nil || s7.FramesPerSecond != nil || s7.Published != nil {
		t.Fatalf("reused slot: %+v", s7)
	}
	if len(v.Subscribers) != 2 {
		t.Fatalf("subscribers %+v", v.Subscribers)
	}
	if s := v.Subscribers[0]; s.Name != "slot:2" || s.LagFrames != 11 || *s.LagSeconds != 1.5 || *s.FramesPerSecond != 200 {
		t.Fatalf("subscriber slot:2: %+v", s)
	}
	if s := v.Subscribers[1]; s.Cursor != "historian" || s.LagSeconds != nil || *s.FramesPerSecond != 0 {
		t.Fatalf("subscriber cursor:historian: %+v", s)
	}
	if v.Commands.InFlight != 1 || v.Commands.Targets["pump"] != "modbus" || v.Uplink != nil {
		t.Fatalf("commands %+v uplink %+v", v.Commands, v.Uplink)
	}
	if len(v.Notes) != 0 {
		t.Fatalf("notes with every source readable: %q", v.Notes)
	}

	// Without an earlier sample: no rates, and the commit latency of every
	// commit since the sidecar started.
	v = buildStatView(src, nil, cur)
	if v.IntervalSeconds != 0 || v.WAL.DurableFramesPerSecond != nil || v.Rings[0].FramesPerSecond != nil || v.Rings[0].BytesPerSecond != nil ||
		v.Subscribers[0].FramesPerSecond != nil {
		t.Fatalf("rates from one sample: %+v", v)
	}
	if c := v.WAL.CommitLatency; c == nil || c.Source != "since_start" || c.Commits != 100 || !nearlyEqual(c.P50Seconds, 0.001+0.009*40/80) {
		t.Fatalf("commit latency since start: %+v", c)
	}

	// A restarted sidecar: counters went back, so no rates from them.
	_, prev, cur = statFixture(t)
	prev.seg.Durable, prev.status.Producers[0].Published = 99999, 99999
	v = buildStatView(src, prev, cur)
	if v.WAL.DurableFramesPerSecond != nil || v.Rings[0].FramesPerSecond != nil {
		t.Fatalf("rates across a restart: durable %v, ring %v", v.WAL.DurableFramesPerSecond, v.Rings[0].FramesPerSecond)
	}
}

// TestStatViewSegmentOnly: with the HTTP API and metrics unreadable the
// view holds what the segment gives, the rest is null, and notes say why.
func TestStatViewSegmentOnly(t *testing.T) {
	src, prev, cur := statFixture(t)
	for _, s := range []*statSample{prev, cur} {
		s.status, s.statusErr, s.metrics, s.metricsErr = nil, errOff, nil, fmt.Errorf("connection refused")
	}
	cur.alive = false
	v := buildStatView(src, prev, cur)
	if v.HTTP.OK || v.Metrics.OK || v.Metrics.Error != "connection refused" || v.Subscribers != nil || v.Commands != nil ||
		v.WAL.FirstSeq != nil || v.WAL.StoredBytes != nil || v.WAL.CommitLatency != nil || *v.WAL.DurableSeq != 1500 {
		t.Fatalf("segment-only view: %+v", v)
	}
	if r := v.Rings[0]; r.FramesPerSecond != nil || r.Published != nil || *r.BytesPerSecond != 20000 || r.Producer != "modbus" {
		t.Fatalf("segment-only ring: %+v", r)
	}
	notes := strings.Join(v.Notes, "\n")
	for _, want := range []string{"sidecar pid 4321 is not running", "HTTP API off: segment only", "metrics 127.0.0.1:9464: connection refused"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	text := strings.Join(renderStat(&v, 80), "\n")
	for _, want := range []string{"BYTES/S", "NOT RUNNING", "SUBSCRIBERS  unknown", "note: HTTP API off"} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
}

// TestStatRender: the text view has its headings, a row per ring with its
// producer, fits the width, cuts long names in the middle and prints no
// control characters that came from the bus.
func TestStatRender(t *testing.T) {
	src, prev, cur := statFixture(t)
	cur.seg.Rings[1].Owner.Name = "opcua-line-7-with-a-name-far-too-long-for-the-table"
	cur.seg.Rings[2].Owner.Name = "evil\x1b[2J\x1b]0;pwned\x07"
	cur.status.Uplink = &sidecar.UplinkStatus{Servers: "nats://a:4222", Stream: "FRAMES", Server: "nats://a:4222", Connected: true, LastError: "timeout"}
	cur.status.Subscribers[1].Error = "wal: corrupt: segment 15001"
	v := buildStatView(src, prev, cur)
	for _, width := range []int{80, 132} {
		lines := renderStat(&v, width)
		text := strings.Join(lines, "\n")
		for i, l := range lines {
			if n := utf8.RuneCountInString(l); n > width {
				t.Errorf("width %d: line %d has %d columns: %q", width, i, n, l)
			}
		}
		for _, want := range []string{"bus plant", "sidecar pid 4321", "up 1m30s", "epoch 3", "flags: PAUSE 0x200", "WAL  /var/lib/framebus/plant",
			"seq 1..1510", "durable 1500", "lag 10 frames 0.250 s", "500 durable frames/s", "commit p50 ", "(80 commits in 1.0 s)",
			"RINGS", "SLOT KIND", "FRAMES/S", "SUBSCRIBERS", "cursor:historian", "COMMANDS  1 in flight · targets pump→modbus",
			"UPLINK  connected to nats://a:4222 · stream FRAMES", "lag 0 frames 0.0 s · published 0 · acked 0 · errors 0", "last error: timeout",
			"cursor:historian cannot read the WAL: wal: corrupt: segment 15001"} {
			if !strings.Contains(text, want) {
				t.Errorf("width %d: text lacks %q:\n%s", width, want, text)
			}
		}
		if strings.ContainsAny(text, "\x1b\x07") {
			t.Errorf("width %d: control characters from a ring's name reached the text:\n%q", width, text)
		}
		rows := map[string]string{}
		for _, l := range lines {
			if f := strings.Fields(l); len(f) > 2 && regexp.MustCompile(`^\d+$`).MatchString(f[0]) {
				rows[f[0]] = l
			}
		}
		if len(rows) != 4 || !strings.Contains(rows["0"], " modbus ") || !strings.Contains(rows["0"], "1.0k") || !strings.Contains(rows["0"], "25%") ||
			!strings.Contains(rows["3"], "s7-new") || !strings.Contains(rows["2"], "evil?[2J?]0;pwned?") {
			t.Errorf("width %d: ring rows %q", width, rows)
		}
		long := "opcua-line-7-with-a-name-far-too-long-for-the-table"
		if width == 80 && (strings.Contains(rows["1"], long) || !strings.Contains(rows["1"], "opcua-") || !strings.Contains(rows["1"], "…")) {
			t.Errorf("width 80: the long name is not cut in the middle: %q", rows["1"])
		}
		if width == 132 && !strings.Contains(rows["1"], long) {
			t.Errorf("width 132: the long name is cut: %q", rows["1"])
		}
	}
}

// fakeSidecar serves /v1/status and /metrics like a sidecar whose counters
// move by fixed steps per request.
func fakeSidecar(t *testing.T, name string) (status, metrics *httptest.Server) {
	var n atomic.Uint64
	status = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/status" {
			http.NotFound(w, r)
			return
		}
		k := n.Add(1)
		json.NewEncoder(w).Encode(sidecar.Status{Name: name, Epoch: 1, Preset: "default",
			WAL:       sidecar.StatusWAL{FirstSeq: 1, LastSeq: 100 * k, DurableSeq: 100 * k},
			Producers: []sidecar.StatusProducer{{Slot: 0, Name: "drv", Pid: os.Getpid(), State: "attached", Published: 100 * k}}})
	}))
	var m atomic.Uint64
	metrics = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k := int(m.Add(1))
		fmt.Fprint(w, flushHistogram(k, 2*k, 2*k, 2*k))
	}))
	t.Cleanup(status.Close)
	t.Cleanup(metrics.Close)
	return status, metrics
}

// testSegment creates a segment named name in dir with one ingress ring
// owned by "drv" holding one record.
func testSegment(t *testing.T, dir, name string) *shm.Segment {
	s, err := shm.Create(shm.Config{Name: name, Dir: dir, Size: 1 << 20, MaxRings: 8}, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); s.Remove() })
	slot, err := s.AllocRing(shm.RingSpec{Kind: shm.KindIngressSPSC, Capacity: 4096, Owner: shm.Owner{Pid: os.Getpid(), Name: "drv"}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Ring(slot)
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.Producer(1)
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Claim(1, 100)
	if err != nil {
		t.Fatal(err)
	}
	p.Commit(c)
	return s
}

func hostPort(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }

// TestStatOnceJSON runs `framebus stat --once --json` against a segment and
// a fake sidecar: one object whose every key docs/stat.md describes.
func TestStatOnceJSON(t *testing.T) {
	dir, name := t.TempDir(), fmt.Sprintf("stat-%d", os.Getpid())
	testSegment(t, dir, name)
	st, mt := fakeSidecar(t, name)
	var out, errb bytes.Buffer
	code := run([]string{"stat", "--name", name, "--shm-dir", dir, "--http-addr", hostPort(st), "--metrics-addr", hostPort(mt),
		"--once", "--json", "--interval", "200ms"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var v statView
	if err := json.Unmarshal(out.Bytes(), &v); err != nil {
		t.Fatalf("%v:\n%s", err, out.String())
	}
	if v.IntervalSeconds < 0.2 || !v.Segment.OK || !v.HTTP.OK || !v.Metrics.OK || v.Sidecar.Pid != os.Getpid() || !*v.Sidecar.Running ||
		len(v.Rings) != 1 || v.Rings[0].Producer != "drv" || *v.Rings[0].DriverState != "attached" || *v.Rings[0].FramesPerSecond <= 0 ||
		*v.Rings[0].Published != 200 || v.Rings[0].UsedBytes != 112 || v.WAL.CommitLatency.Source != "interval" || len(v.Notes) != 0 {
		t.Fatalf("view:\n%s", out.String())
	}

	// Every key of the JSON is documented, in backquotes.
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "stat.md"))
	if err != nil {
		t.Fatal(err)
	}
	var tree any
	json.Unmarshal(out.Bytes(), &tree)
	var walk func(path string, x any)
	walk = func(path string, x any) {
		switch x := x.(type) {
		case map[string]any:
			for k, e := range x {
				if path == ".commands.targets" {
					continue // target names
				}
				if !bytes.Contains(doc, []byte("`"+k+"`")) {
					t.Errorf("docs/stat.md does not describe %s.%s", path, k)
				}
				walk(path+"."+k, e)
			}
		case []any:
			for _, e := range x {
				walk(path+"[]", e)
			}
		}
	}
	walk("", tree)
}

// TestStatErrors: usage errors exit 2; a bus with neither segment nor HTTP
// API exits 1 and says where it looked; an HTTP API of another bus is not
// taken for this one's.
func TestStatErrors(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{{"--interval", "1ms"}, {"extra"}, {"--http-addr", "nohost"}, {"--bogus"}} {
		var out, errb bytes.Buffer
		if code := run(append([]string{"stat", "--shm-dir", dir}, args...), &out, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, errb.String())
		}
	}
	var out, errb bytes.Buffer
	code := run([]string{"stat", "--name", "nobus", "--shm-dir", dir, "--http-addr", "off", "--metrics-addr", "off", "--once"}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "no segment "+filepath.Join(dir, "framebus-nobus")) ||
		!strings.Contains(errb.String(), "HTTP API is off") || !strings.Contains(errb.String(), "sidecar running") {
		t.Fatalf("no bus: exit %d, %q", code, errb.String())
	}

	st, _ := fakeSidecar(t, "otherbus")
	errb.Reset()
	code = run([]string{"stat", "--name", "nobus", "--shm-dir", dir, "--http-addr", hostPort(st), "--metrics-addr", "off", "--once"}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), `serves bus "otherbus", not "nobus"`) {
		t.Fatalf("another bus's API: exit %d, %q", code, errb.String())
	}

	// With the segment there, the other bus's status is left out, and
	// a note says why.
	testSegment(t, dir, "nobus")
	out.Reset()
	code = run([]string{"stat", "--name", "nobus", "--shm-dir", dir, "--http-addr", hostPort(st), "--metrics-addr", "off", "--once",
		"--json", "--interval", "100ms"}, &out, &errb)
	var v statView
	if err := json.Unmarshal(out.Bytes(), &v); code != 0 || err != nil {
		t.Fatalf("exit %d, %v: %s", code, err, errb.String())
	}
	if v.HTTP.OK || !strings.Contains(v.HTTP.Error, `"otherbus"`) || len(v.Rings) != 1 || v.Rings[0].Published != nil {
		t.Fatalf("view with another bus's API: %+v", v)
	}
}

func TestStatDialAddr(t *testing.T) {
	for in, want := range map[string]string{"off": "off", "127.0.0.1:9465": "127.0.0.1:9465", ":9465": "127.0.0.1:9465",
		"0.0.0.0:1": "127.0.0.1:1", "[::]:2": "[::1]:2", "gw.local:3": "gw.local:3"} {
		if got, err := dialAddr(in); err != nil || got != want {
			t.Errorf("dialAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := dialAddr("127.0.0.1:0"); err == nil {
		t.Error("port 0 accepted")
	}
}
