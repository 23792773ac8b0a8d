package main

import (
	"bytes"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// framebus bench re-executes its binary for the Unix socket peer
// (`framebus bench internal-peer ROLE`); in a test that binary is the test
// binary, whose TestMain (main_test.go) dispatches only the sidecar and
// driver commands: run the peer role here, before TestMain.
func init() {
	if len(os.Args) > 2 && os.Args[1] == "bench" && os.Args[2] == benchPeerArg {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
}

// TestBenchQuick runs the ingest scenario end to end with tiny counts:
// bench.md has a row per frame size, the plot is a valid PNG, and the
// temporary directory is gone afterwards.
func TestBenchQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("starts sidecars and drivers")
	}
	t.Setenv(benchScaleEnv, "0.02")
	out, tmp := t.TempDir(), t.TempDir()
	var stdout, stderr bytes.Buffer
	start := time.Now()
	code := run([]string{"bench", "--quick", "--scenarios", "ingest", "--out", out, "--dir", tmp}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("bench exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	t.Logf("bench --quick --scenarios ingest took %v", time.Since(start).Round(time.Millisecond))
	md, err := os.ReadFile(filepath.Join(out, benchMarkdown))
	if err != nil {
		t.Fatal(err)
	}
	s := string(md)
	for _, want := range []string{
		"# framebus bench\n\n```sh\nframebus bench --quick --scenarios ingest --out " + out,
		"- machine: ", " cores, ", "- Go: go1.", "- load average at the start (1, 5, 15 min): ",
		"counts scaled by 0.02",
		"## Durable ingest vs frame size", "fsync'd sequential 1 MiB writes",
		"## publish→durable latency, paced\n\nNot run (--scenarios).",
		"![durable ingest vs frame size](bench-throughput.png)",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("bench.md lacks %q", want)
		}
	}
	for _, k := range benchPoints {
		row := regexp.MustCompile(`(?m)^\| ` + strconv.Itoa(k) + ` \| ` + strconv.Itoa(benchFrameBytes(k)) + ` \| \*\*[0-9.]+( [kM])?\*\* \| \*\*[0-9.]+\*\* \| [0-9]+ % \| \*\*[0-9.]+( [kM])?\*\* \| [0-9.]+× \| (\*\*[0-9.]+( [kM])?\*\*|skipped) \| `)
		if !row.MatchString(s) {
			t.Errorf("bench.md has no table row for %d points:\n%s", k, s)
		}
	}
	if !strings.Contains(s, "skipped: nats-server not on PATH") && !strings.Contains(s, "NATS JetStream (nats-server") {
		t.Errorf("bench.md says neither how JetStream ran nor why it was skipped")
	}
	f, err := os.Open(filepath.Join(out, benchThroughputPNG))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", benchThroughputPNG, err)
	}
	if b := img.Bounds(); b.Dx() < 500 || b.Dy() < 200 {
		t.Errorf("%s is %v", benchThroughputPNG, b)
	}
	if _, err := os.Stat(filepath.Join(out, benchLatencyPNG)); !os.IsNotExist(err) {
		t.Errorf("%s written without the latency scenario (%v)", benchLatencyPNG, err)
	}
	if !strings.Contains(stdout.String(), "## Durable ingest vs frame size") || !strings.Contains(stdout.String(), "written: ") {
		t.Errorf("stdout lacks the tables:\n%s", stdout.String())
	}
	// Without a terminal, a line per finished run.
	if !regexp.MustCompile(`(?m)^\[1/\d+ +\d+s\] ingest: disk`).MatchString(stderr.String()) {
		t.Errorf("stderr lacks the progress lines:\n%s", stderr.String())
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("the temporary directory was not removed: %v", left)
	}
}

func TestBenchMedian(t *testing.T) {
	for _, tc := range []struct {
		s    benchSeries
		want float64
	}{
		{benchSeries{3}, 3},
		{benchSeries{5, 1, 3}, 3},
		{benchSeries{4, 1, 3, 2}, 2.5},
		{benchSeries{2.60e6, 2.86e6, 2.73e6}, 2.73e6},
	} {
		if got := tc.s.median(); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.s, got, tc.want)
		}
	}
	if !math.IsNaN(benchSeries(nil).median()) {
		t.Error("median of no runs is not NaN")
	}
	s := benchSeries{2.60e6, 2.73e6, 2.86e6}
	if got := s.cell(benchNum); got != "**2.73 M** (2.60 M, 2.73 M, 2.86 M)" {
		t.Errorf("cell = %q", got)
	}
	if got := (benchSeries{138e3}).cell(benchNum); got != "**138 k**" {
		t.Errorf("one run: cell = %q", got)
	}
	for v, want := range map[float64]string{999_999.6: "1.00 M", 99_999.9: "100 k", 99_940: "99.9 k", 950: "950", 2_734_000: "2.73 M"} {
		if got := benchNum(v); got != want {
			t.Errorf("benchNum(%v) = %q, want %q", v, got, want)
		}
	}
	failed := benchSeries{2.60e6, math.NaN(), 2.86e6}
	if got := failed.cell(benchNum); got != "**2.73 M** (2.60 M, failed, 2.86 M)" {
		t.Errorf("a failed run: cell = %q", got)
	}
	if got := (benchSeries{math.NaN(), math.NaN()}).cell(benchNum); got != "**failed** (failed, failed)" {
		t.Errorf("every run failed: cell = %q", got)
	}
	for _, tc := range []struct {
		a, b float64
		want string
	}{{2.73e6, 138e3, "20×"}, {2.73e6, 1e6, "2.7×"}, {1, 4, "0.25×"}, {1, 0, "–"}, {math.NaN(), 1, "–"}} {
		if got := benchRatio(tc.a, tc.b); got != tc.want {
			t.Errorf("benchRatio(%v, %v) = %q, want %q", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestBenchMarkdown(t *testing.T) {
	r := &benchResults{
		command: "framebus bench --out docs", runs: 3, scale: 1, start: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC), elapsed: 3 * time.Minute,
		machine: benchMachine{cpu: "AMD EPYC", cores: 2, kernel: "Linux 6.18 x86_64", goVer: "go1.26.8", version: "(devel) abc", load: "1.10 0.82 0.95", load1: 1.1},
		ingest: &benchIngestResult{preset: "high-throughput", disk: benchSeries{465, 543, 848}, rows: []*benchIngestRow{
			{points: 1, frameBytes: 160, framebus: benchSeries{2.60e6, 2.73e6, 2.86e6}, socket: benchSeries{289e3, 300e3, 280e3}},
			{points: 128, frameBytes: 6760, framebus: benchSeries{math.NaN(), math.NaN(), math.NaN()}, socket: benchSeries{151e3, 127e3, 195e3}},
		}},
		jetStreamSkipped: "skipped: nats-server not on PATH (apt-get install nats-server)",
		latency: []*benchLatencyRow{{preset: "default", walFlush: 10 * time.Millisecond, rate: 1_000_000,
			fps: benchSeries{997e3, 998e3, 999e3}, p50: benchSeries{7.2, 7.0, 7.5}, p99: benchSeries{13.1, 14.5, 14.0}}},
	}
	r.failures = []benchFailure{{desc: "ingest: framebus, 128 points (6760 B), run 2/3", reason: "framebus publish stalled | x"}}
	var b strings.Builder
	b.WriteString(r.header())
	b.WriteString(r.tables())
	s := b.String()
	for _, want := range []string{
		"# framebus bench\n\n```sh\nframebus bench --out docs\n```\n\n- date: 2026-12-06 12:00 UTC (took 3m0s)\n",
		"- machine: AMD EPYC, 2 cores, Linux 6.18 x86_64\n- Go: go1.26.8; framebus: (devel) abc\n",
		"1.10 0.82 0.95 — **the machine was not otherwise idle**",
		"the median of 3 runs",
		"in the WAL's directory: **543** (465, 543, 848) MB/s",
		"| 1 | 160 | **2.73 M** (2.60 M, 2.73 M, 2.86 M) | **437** (416, 437, 458) | 80 % | **289 k** (289 k, 300 k, 280 k) | 9.4× | skipped | – |",
		"| 128 | 6760 | **failed** (failed, failed, failed) | **failed** (failed, failed, failed) | – | **151 k** (151 k, 127 k, 195 k) | – | skipped | – |",
		"NATS JetStream skipped: nats-server not on PATH (apt-get install nats-server).",
		"| default | 10 | 1.00 M | **998 k** (997 k, 998 k, 999 k) | **7.20** (7.20, 7.00, 7.50) | **14.0** (13.1, 14.5, 14.0) |",
		"## Live publish→subscriber latency and command round trip\n\nNot run (--scenarios).",
		"## Failed measurements\n\n1 measurements failed", "- ingest: framebus, 128 points (6760 B), run 2/3: framebus publish stalled \\| x\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("markdown lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "counts scaled") {
		t.Error("a full run is called scaled")
	}
	r.machine.load1 = 0.1
	if h := r.header(); strings.Contains(h, "not otherwise idle") || !strings.Contains(h, "looked idle") {
		t.Errorf("an idle machine:\n%s", h)
	}

	dir := t.TempDir()
	if err := r.write(dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{benchThroughputPNG, benchLatencyPNG} {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(f); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		f.Close()
	}
}

func TestParseBenchPublish(t *testing.T) {
	out := "framebus publish: something\npublished 3000000 frames (0 dropped, 0 rejected) in 3.00s: 999000 frames/s; durable 9.5 ms after the last publish; durable latency p50 7.2 ms p99 14.0 ms (2990 samples)\n"
	r, err := parseBenchPublish(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.published != 3e6 || !r.hasLatency || r.p50Ms != 7.2 || r.p99Ms != 14 || math.Abs(r.publishSec-3e6/999000.0) > 1e-9 || r.lastDurableMs != 9.5 {
		t.Errorf("parsed %+v", r)
	}
	if want := 3e6 / (3e6/999000.0 + 0.0095); math.Abs(r.durableFPS()-want) > 1e-6 {
		t.Errorf("durable frames/s %v, want %v", r.durableFPS(), want)
	}
	if !strings.HasPrefix(r.line, "published 3000000") || strings.Contains(r.line, "\n") {
		t.Errorf("line %q", r.line)
	}
	if _, err := parseBenchPublish("framebus publish: dial: no sidecar\n"); err == nil || !strings.Contains(err.Error(), "no summary line") {
		t.Errorf("no summary: %v", err)
	}
}

func TestBenchUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--scenarios", "ingest,frobnicate"}, `unknown scenario "frobnicate"`},
		{[]string{"--scenarios", ""}, "none chosen"},
		{[]string{"--runs", "0"}, "--runs must be 1..100"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		var out, errb bytes.Buffer
		if code := run(append([]string{"bench"}, tc.args...), &out, &errb); code != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}
