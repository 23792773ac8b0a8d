package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/sidecar"
)

// statJSON is the part of `framebus stat --json` (docs/stat.md) the tests
// check.
type statJSON struct {
	IntervalSeconds float64 `json:"interval_seconds"`
	Bus             string  `json:"bus"`
	HTTP            struct {
		Addr string `json:"addr"`
		OK   bool   `json:"ok"`
	} `json:"http"`
	Metrics struct {
		OK bool `json:"ok"`
	} `json:"metrics"`
	Sidecar struct {
		Pid     int    `json:"pid"`
		Running *bool  `json:"running"`
		Epoch   uint64 `json:"epoch"`
	} `json:"sidecar"`
	WAL struct {
		FirstSeq               *uint64  `json:"first_seq"`
		LastSeq                *uint64  `json:"last_seq"`
		DurableSeq             *uint64  `json:"durable_seq"`
		DurableLagFrames       *uint64  `json:"durable_lag_frames"`
		DurableFramesPerSecond *float64 `json:"durable_frames_per_second"`
		StoredBytes            *int64   `json:"stored_bytes"`
		FootprintBytes         *int64   `json:"footprint_bytes"`
		MaxBytes               *int64   `json:"max_bytes"`
		CommitLatency          *struct {
			Source     string  `json:"source"`
			Commits    uint64  `json:"commits"`
			P50Seconds float64 `json:"p50_seconds"`
			P99Seconds float64 `json:"p99_seconds"`
		} `json:"commit_latency"`
	} `json:"wal"`
	Rings []struct {
		Slot            int      `json:"slot"`
		Kind            string   `json:"kind"`
		Producer        string   `json:"producer"`
		Pid             int      `json:"pid"`
		DriverState     *string  `json:"driver_state"`
		BytesPerSecond  *float64 `json:"bytes_per_second"`
		FramesPerSecond *float64 `json:"frames_per_second"`
		Published       *uint64  `json:"published"`
	} `json:"rings"`
	Subscribers []struct {
		Name      string `json:"name"`
		NextSeq   uint64 `json:"next_seq"`
		LagFrames uint64 `json:"lag_frames"`
		Delivered uint64 `json:"delivered"`
	} `json:"subscribers"`
	Notes []string `json:"notes"`
}

// runStat runs `framebus stat ARGS` to its end, 80 columns wide.
func runStat(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append([]string{"stat"}, args...)...)
	cmd.Env = append(os.Environ(), "COLUMNS=80")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("framebus stat %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func (b *bus) statArgs(httpAddr, metricsAddr string) []string {
	return []string{"--name", b.name, "--shm-dir", b.shmDir, "--http-addr", httpAddr, "--metrics-addr", metricsAddr}
}

func statOnce(t testing.TB, args ...string) statJSON {
	t.Helper()
	out, errs, code := runStat(t, append(args, "--once", "--json")...)
	if code != 0 {
		t.Fatalf("framebus stat %v: exit %d\n%s", args, code, errs)
	}
	var v statJSON
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("framebus stat %v: %v\n%s", args, err, out)
	}
	return v
}

func getStatus(t testing.TB, addr string) sidecar.Status {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st sidecar.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestStat: `framebus stat --once --json` on a bus with two drivers
// publishing and a subscriber that reads nothing shows each driver's ring
// with its producer, pid and a rate, the subscriber with its lag, and WAL
// numbers that are /v1/status's; the text view has its headings and each
// producer. stat attaches to nothing.
func TestStat(t *testing.T) {
	httpAddr, metricsAddr := freeAddr(t), freeAddr(t)
	b := newBus(t, "--http-addr", httpAddr, "--metrics-addr", metricsAddr)
	sc := b.startSidecar()
	defer sc.stop(t)
	// A subscriber with a 4 KiB ring that it never reads: it lags.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	sub, err := client.Subscribe(ctx, client.Filter{}, client.Earliest(), client.SubscribeOptions{Name: b.name, RunDir: b.runDir, RingBytes: 4096})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pubA := b.publish("stat-a", 0, "--rate", "1000")
	pubB := b.publish("stat-b-with-a-name-longer-than-the-column", 0, "--rate", "300")
	waitFor(t, 30*time.Second, "both drivers publishing", func() bool {
		n := 0
		for _, p := range getStatus(t, httpAddr).Producers {
			if p.Published > 0 {
				n++
			}
		}
		return n == 2
	})

	v := statOnce(t, b.statArgs(httpAddr, metricsAddr)...)
	if v.Bus != b.name || !v.HTTP.OK || !v.Metrics.OK || v.Sidecar.Pid != sc.cmd.Process.Pid || !*v.Sidecar.Running || v.Sidecar.Epoch != 1 ||
		v.IntervalSeconds < 0.9 || len(v.Notes) != 0 {
		t.Fatalf("header: %+v", v)
	}
	pids := map[string]int{"stat-a": pubA.cmd.Process.Pid, "stat-b-with-a-name-longer-than-the-column": pubB.cmd.Process.Pid}
	seen := map[string]bool{}
	for _, r := range v.Rings {
		want, ok := pids[r.Producer]
		if !ok {
			continue
		}
		seen[r.Producer] = true
		if r.Kind != "ingress-spsc" || r.Pid != want || r.DriverState == nil || *r.DriverState != "attached" || r.Published == nil || *r.Published == 0 ||
			r.FramesPerSecond == nil || *r.FramesPerSecond <= 0 || r.BytesPerSecond == nil || *r.BytesPerSecond <= 0 {
			t.Errorf("ring of %s: %+v (driver pid %d)", r.Producer, r, want)
		}
	}
	if len(seen) != 2 || v.WAL.DurableFramesPerSecond == nil || *v.WAL.DurableFramesPerSecond <= 0 {
		t.Fatalf("rings %+v, durable frames/s %v: want both drivers' rings and a durable rate", v.Rings, v.WAL.DurableFramesPerSecond)
	}
	if c := v.WAL.CommitLatency; c == nil || c.Source != "interval" || c.Commits == 0 || c.P50Seconds <= 0 || c.P99Seconds < c.P50Seconds {
		t.Fatalf("commit latency %+v", v.WAL.CommitLatency)
	}
	if len(v.Subscribers) != 1 || v.Subscribers[0].LagFrames == 0 {
		t.Fatalf("subscribers %+v: want the one that reads nothing, lagging", v.Subscribers)
	}

	out, errs, code := runStat(t, append(b.statArgs(httpAddr, metricsAddr), "--once", "--interval", "300ms")...)
	if code != 0 {
		t.Fatalf("text: exit %d: %s", code, errs)
	}
	for _, want := range []string{"bus " + b.name, "flags: none", "WAL  ", "RINGS", "SLOT KIND   PRODUCER", "FRAMES/S", "SUBSCRIBERS", "COMMANDS  0 in flight",
		"UPLINK  off", " stat-a "} {
		if !strings.Contains(out, want) {
			t.Errorf("text view lacks %q:\n%s", want, out)
		}
	}
	if cut := lines(out, "stat-b-"); len(cut) != 1 || !strings.Contains(cut[0], "…") || !strings.Contains(cut[0], "column ") {
		t.Errorf("the long producer name is not cut in the middle: %q", cut)
	}
	for _, l := range strings.Split(out, "\n") {
		if utf8.RuneCountInString(l) > 80 {
			t.Errorf("line wider than 80 columns: %q", l)
		}
	}

	// With the drivers done, the numbers stand still: stat's WAL and
	// subscriber numbers are /v1/status's.
	pubA.stop(t)
	pubB.stop(t)
	waitFor(t, 30*time.Second, "the drivers' rings freed", func() bool { return len(getStatus(t, httpAddr).Producers) == 0 })
	v = statOnce(t, append(b.statArgs(httpAddr, metricsAddr), "--interval", "200ms")...)
	st := getStatus(t, httpAddr)
	w := v.WAL
	if *w.FirstSeq != st.WAL.FirstSeq || *w.LastSeq != st.WAL.LastSeq || *w.DurableSeq != st.WAL.DurableSeq || *w.DurableLagFrames != 0 ||
		*w.StoredBytes != st.WAL.StoredBytes || *w.FootprintBytes != st.WAL.FootprintBytes || *w.MaxBytes != st.WAL.MaxBytes || *w.LastSeq == 0 {
		t.Fatalf("stat's WAL %+v, /v1/status's %+v", w, st.WAL)
	}
	if len(st.Subscribers) != 1 || len(v.Subscribers) != 1 || v.Subscribers[0].Name != st.Subscribers[0].Name ||
		v.Subscribers[0].LagFrames != st.Subscribers[0].LagFrames || v.Subscribers[0].NextSeq != st.Subscribers[0].NextSeq ||
		v.Subscribers[0].LagFrames != st.WAL.DurableSeq-st.Subscribers[0].NextSeq+1 {
		t.Fatalf("stat's subscribers %+v, /v1/status's %+v", v.Subscribers, st.Subscribers)
	}
	// Three stat runs attached nothing: the only ring left is the
	// subscriber's, and the sidecar logged no other attach.
	if len(v.Rings) != 1 || v.Rings[0].Kind != "egress" || v.Rings[0].Pid != os.Getpid() {
		t.Fatalf("rings after the drivers left: %+v", v.Rings)
	}
	if n := len(lines(sc.out.String(), "subscriber attached")); n != 1 {
		t.Fatalf("the sidecar logged %d subscriber attaches, want 1 (the test's)", n)
	}
}

// TestStatWithoutHTTP: with the HTTP API and metrics off, stat shows the
// rings from the segment, rates in bytes/s, and says what is missing.
func TestStatWithoutHTTP(t *testing.T) {
	b := newBus(t)
	sc := b.startSidecar()
	defer sc.stop(t)
	pub := b.publish("nohttp-driver", 0, "--rate", "500")
	defer pub.stop(t)
	args := b.statArgs("off", "off")
	var v statJSON
	waitFor(t, 30*time.Second, "the driver's ring moving", func() bool {
		v = statOnce(t, append(args, "--interval", "300ms")...)
		return len(v.Rings) == 1 && v.Rings[0].BytesPerSecond != nil && *v.Rings[0].BytesPerSecond > 0
	})
	r := v.Rings[0]
	if v.HTTP.OK || v.HTTP.Addr != "off" || v.Metrics.OK || r.Producer != "nohttp-driver" || r.Pid != pub.cmd.Process.Pid ||
		r.FramesPerSecond != nil || r.Published != nil || v.Subscribers != nil || v.WAL.FirstSeq != nil || v.WAL.DurableSeq == nil {
		t.Fatalf("segment-only view: %+v", v)
	}
	if notes := strings.Join(v.Notes, "\n"); !strings.Contains(notes, "HTTP API off: segment only") || !strings.Contains(notes, "metrics off") {
		t.Fatalf("notes %q", v.Notes)
	}
	out, _, code := runStat(t, append(args, "--once", "--interval", "200ms")...)
	if code != 0 || !strings.Contains(out, "BYTES/S") || !strings.Contains(out, "nohttp-driver") || !strings.Contains(out, "note: HTTP API off") {
		t.Fatalf("text, exit %d:\n%s", code, out)
	}
}

// TestStatNoBus: no segment and no sidecar: exit status 1 and a message
// that says where stat looked.
func TestStatNoBus(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	_, errs, code := runStat(t, "--name", "nobody-here", "--shm-dir", dir, "--http-addr", addr, "--metrics-addr", "off", "--once")
	if code != 1 || !strings.Contains(errs, filepath.Join(dir, "framebus-nobody-here")) || !strings.Contains(errs, addr) ||
		!strings.Contains(errs, "is its sidecar running?") {
		t.Fatalf("exit %d: %s", code, errs)
	}
}

// TestStatReadOnly: stat maps the segment read-only, leaves every byte of
// it as it was (checked with nothing else running), holds nothing the
// sidecar needs (a sidecar adopts the segment while stat watches), and
// follows the new sidecar.
func TestStatReadOnly(t *testing.T) {
	httpAddr, metricsAddr := freeAddr(t), freeAddr(t)
	b := newBus(t, "--http-addr", httpAddr, "--metrics-addr", metricsAddr)
	sc := b.startSidecar()
	pub := b.publish("ro-driver", 0, "--rate", "500")
	waitFor(t, 30*time.Second, "the driver publishing", func() bool {
		ps := getStatus(t, httpAddr).Producers
		return len(ps) == 1 && ps[0].Published > 0
	})
	live := start(t, append([]string{"stat", "--json", "--interval", "200ms"}, b.statArgs(httpAddr, metricsAddr)...)...)
	lastView := func() (statJSON, int) {
		var v statJSON
		n := 0
		sc := bufio.NewScanner(strings.NewReader(live.out.String()))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
				t.Fatalf("live stat printed %q: %v", sc.Text(), err)
			}
			n++
		}
		return v, n
	}
	waitFor(t, 30*time.Second, "a view from the live stat", func() bool { _, n := lastView(); return n > 0 })

	seg := filepath.Join(b.shmDir, "framebus-"+b.name)
	maps, err := os.ReadFile("/proc/" + strconv.Itoa(live.cmd.Process.Pid) + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(maps), "\n") {
		if f := strings.Fields(l); len(f) >= 6 && f[len(f)-1] == seg {
			n++
			if f[1] != "r--s" {
				t.Fatalf("stat maps the segment %s: %s", f[1], l)
			}
		}
	}
	if n == 0 {
		t.Fatalf("stat has no mapping of %s:\n%s", seg, maps)
	}

	// Nothing else may write the segment now: the sidecar dies (its
	// segment stays, as after a crash), then the driver.
	sc.cmd.Process.Kill()
	sc.wait(t, 10*time.Second)
	pub.cmd.Process.Kill()
	pub.wait(t, 10*time.Second)
	sum := func() ([32]byte, time.Time) {
		b, err := os.ReadFile(seg)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(seg)
		if err != nil {
			t.Fatal(err)
		}
		return sha256.Sum256(b), fi.ModTime()
	}
	sum0, mtime0 := sum()
	v := statOnce(t, append(b.statArgs(httpAddr, metricsAddr), "--interval", "300ms")...)
	driverRing := false
	for _, r := range v.Rings {
		driverRing = driverRing || r.Producer == "ro-driver" && r.Kind == "ingress-spsc"
	}
	if v.Sidecar.Running == nil || *v.Sidecar.Running || v.HTTP.OK || !driverRing || !strings.Contains(strings.Join(v.Notes, "\n"), "is not running") {
		t.Fatalf("view of a dead sidecar's segment: %+v", v)
	}
	_, before := lastView()
	waitFor(t, 10*time.Second, "two more views from the live stat", func() bool { _, n := lastView(); return n >= before+2 })
	if sum1, mtime1 := sum(); sum1 != sum0 || !mtime1.Equal(mtime0) {
		t.Fatalf("the segment changed while only stat read it (mtime %v → %v)", mtime0, mtime1)
	}

	// A new sidecar adopts the segment while stat watches; stat follows it.
	sc2 := b.startSidecar()
	defer sc2.stop(t)
	waitFor(t, 30*time.Second, "the live stat showing the new sidecar", func() bool {
		v, _ := lastView()
		return v.Sidecar.Epoch == 2 && v.Sidecar.Running != nil && *v.Sidecar.Running && v.Sidecar.Pid == sc2.cmd.Process.Pid && v.HTTP.OK
	})
	live.cmd.Process.Signal(syscall.SIGTERM)
	if err := live.wait(t, 10*time.Second); err != nil {
		t.Fatalf("stat after SIGTERM: %v", err)
	}
}
