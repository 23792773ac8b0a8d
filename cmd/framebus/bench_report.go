package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/framebus/framebus/sidecar"
)

// benchSeries is one figure, a value per run.
type benchSeries []float64

// median is the middle run, or the mean of the two middle ones, of the
// runs that did not fail (NaN); NaN if every run failed or none ran.
func (s benchSeries) median() float64 {
	c := make([]float64, 0, len(s))
	for _, v := range s {
		if !math.IsNaN(v) {
			c = append(c, v)
		}
	}
	if len(c) == 0 {
		return math.NaN()
	}
	slices.Sort(c)
	n := len(c)
	if n%2 == 1 {
		return c[n/2]
	}
	return (c[n/2-1] + c[n/2]) / 2
}

// cell is the median in bold with every run in brackets, formatted by f;
// a failed run shows as "failed".
func (s benchSeries) cell(f func(float64) string) string {
	if len(s) == 0 {
		return "–"
	}
	m := "**failed**"
	if v := s.median(); !math.IsNaN(v) {
		m = "**" + f(v) + "**"
	}
	if len(s) == 1 {
		return m
	}
	runs := make([]string, len(s))
	for i, v := range s {
		if math.IsNaN(v) {
			runs[i] = "failed"
		} else {
			runs[i] = f(v)
		}
	}
	return m + " (" + strings.Join(runs, ", ") + ")"
}

// benchNum formats a rate: 2.73 M, 138 k, 12.5 k, 950.
func benchNum(v float64) string {
	switch { // thresholds where the rounded figure reaches the next unit
	case v >= 999.5e3:
		return fmt.Sprintf("%.2f M", v/1e6)
	case v >= 99.95e3:
		return fmt.Sprintf("%.0f k", v/1e3)
	case v >= 1e3:
		return fmt.Sprintf("%.1f k", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// benchFixed formats a bandwidth or a latency with 3 significant digits or
// whole units.
func benchFixed(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// benchRatio formats a ÷ b of two medians.
func benchRatio(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return "–"
	}
	r := a / b
	switch {
	case r >= 10:
		return fmt.Sprintf("%.0f×", r)
	case r >= 1:
		return fmt.Sprintf("%.1f×", r)
	}
	return fmt.Sprintf("%.2f×", r)
}

// benchResults is everything one invocation measured.
type benchResults struct {
	command string
	runs    int
	scale   float64
	machine benchMachine
	start   time.Time
	elapsed time.Duration

	ingest           *benchIngestResult // nil: not run
	jetStreamSkipped string             // why the JetStream peer did not run
	latency          []*benchLatencyRow // nil: not run
	live             *benchLiveResult   // nil: not run
	failures         []benchFailure
}

type benchIngestResult struct {
	preset           string
	disk             benchSeries // MB/s
	rows             []*benchIngestRow
	jetStreamVersion string
}

type benchIngestRow struct {
	points, frameBytes          int
	framebus, socket, jetStream benchSeries // frames/s
}

type benchLatencyRow struct {
	preset   string
	walFlush time.Duration
	rate     int
	fps      benchSeries // the publish loop's rate
	p50, p99 benchSeries // ms
}

type benchLiveResult struct {
	rate, frames, rounds, pings, size int
	live50, live99                    benchSeries // µs
	cmd50, cmd99                      benchSeries
	ping50, ping99                    benchSeries
}

// The files written into --out.
const (
	benchMarkdown      = "bench.md"
	benchThroughputPNG = "bench-throughput.png"
	benchLatencyPNG    = "bench-latency.png"
)

// write writes bench.md and the plots into dir.
func (r *benchResults) write(dir string) error {
	var images []string
	if r.ingest != nil {
		if err := r.ingest.plot(filepath.Join(dir, benchThroughputPNG), r.jetStreamSkipped == ""); err != nil {
			return fmt.Errorf("the throughput plot: %w", err)
		}
		images = append(images, fmt.Sprintf("![durable ingest vs frame size](%s)", benchThroughputPNG))
	}
	if len(r.latency) > 0 {
		if err := benchLatencyPlot(filepath.Join(dir, benchLatencyPNG), r.latency); err != nil {
			return fmt.Errorf("the latency plot: %w", err)
		}
		images = append(images, fmt.Sprintf("![publish→durable latency](%s)", benchLatencyPNG))
	}
	var b strings.Builder
	b.WriteString(r.header())
	b.WriteString(r.tables())
	if len(images) > 0 {
		b.WriteString("\n## Plots\n\n")
		b.WriteString(strings.Join(images, "\n\n"))
		b.WriteString("\n")
	}
	return os.WriteFile(filepath.Join(dir, benchMarkdown), []byte(b.String()), 0o644)
}

// header is the command, the date and the machine.
func (r *benchResults) header() string {
	var b strings.Builder
	m := r.machine
	fmt.Fprintf(&b, "# framebus bench\n\n```sh\n%s\n```\n\n", r.command)
	fmt.Fprintf(&b, "- date: %s", r.start.UTC().Format("2006-01-02 15:04 MST"))
	if r.elapsed > 0 {
		fmt.Fprintf(&b, " (took %s)", r.elapsed.Round(time.Second))
	}
	fmt.Fprintf(&b, "\n- machine: %s, %d cores, %s\n", m.cpu, m.cores, m.kernel)
	fmt.Fprintf(&b, "- Go: %s; framebus: %s\n", m.goVer, m.version)
	fmt.Fprintf(&b, "- load average at the start (1, 5, 15 min): %s", m.load)
	switch {
	case m.load1 < 0:
		b.WriteString(" — whether the machine was idle is unknown")
	case m.load1 >= 0.5:
		fmt.Fprintf(&b, " — **the machine was not otherwise idle** (%.2f runnable on %d cores before the bench began): expect lower and noisier figures than on an idle machine", m.load1, m.cores)
	default:
		b.WriteString(" — the machine looked idle")
	}
	if r.runs == 1 {
		b.WriteString("\n- every figure: one run (no median); ratios divide two figures of this invocation")
	} else {
		fmt.Fprintf(&b, "\n- every figure: the median of %d runs in bold, the runs in brackets in the order they ran; ratios divide two medians of this invocation", r.runs)
	}
	if r.scale != 1 {
		fmt.Fprintf(&b, "\n- counts scaled by %g (--quick or %s): a smoke test, not a measurement", r.scale, benchScaleEnv)
	}
	b.WriteString("\n\nGenerated by `framebus bench` (`make bench-report` writes docs/bench.md); the method of every scenario is in `framebus bench -h` and below each table.\n")
	return b.String()
}

// tables is the result tables, in markdown (also what the command prints).
func (r *benchResults) tables() string {
	var b strings.Builder
	b.WriteString("\n## Durable ingest vs frame size\n\n")
	if r.ingest == nil {
		b.WriteString("Not run (--scenarios).\n")
	} else {
		r.ingest.table(&b, r.jetStreamSkipped)
	}
	b.WriteString("\n## publish→durable latency, paced\n\n")
	if r.latency == nil {
		b.WriteString("Not run (--scenarios).\n")
	} else {
		benchLatencyTable(&b, r.latency)
	}
	b.WriteString("\n## Live publish→subscriber latency and command round trip\n\n")
	if r.live == nil {
		b.WriteString("Not run (--scenarios).\n")
	} else {
		r.live.table(&b)
	}
	if len(r.failures) > 0 {
		fmt.Fprintf(&b, "\n## Failed measurements\n\n%d measurements failed and have no figure (\"failed\" above; their medians are of the other runs). The command printed each with the output of its processes:\n\n", len(r.failures))
		for _, f := range r.failures {
			fmt.Fprintf(&b, "- %s: %s\n", f.desc, strings.ReplaceAll(f.reason, "|", "\\|"))
		}
	}
	return b.String()
}

func (in *benchIngestResult) table(b *strings.Builder, jsSkipped string) {
	fmt.Fprintf(b, "One driver process (`framebus publish --producer bench --points K`) into a fresh sidecar at the %s preset each run; "+
		"frames/s = frames ÷ (the publish loop + the wait until the last one was durable, fsync'd). MB/s = frames/s × the encoded frame. "+
		"Peers in the same run, sending the same frames with the same work per frame: a Unix stream socket between two processes, one `write` per frame; ", in.preset)
	if jsSkipped == "" {
		fmt.Fprintf(b, "NATS JetStream (%s, a child process; file store in the same directory as the WAL; this process publishes with nats.go `PublishAsync`, at most %d outstanding, until the last ack — an ack means stored, not fsync'd).\n\n", in.jetStreamVersion, benchJSPending)
	} else {
		fmt.Fprintf(b, "NATS JetStream %s.\n\n", jsSkipped)
	}
	disk := in.disk.median()
	fmt.Fprintf(b, "The disk, fsync'd sequential 1 MiB writes (`fdatasync` every 4 MiB) in the WAL's directory: %s MB/s.\n\n", in.disk.cell(benchFixed))
	b.WriteString("| points | frame bytes | framebus frames/s | framebus MB/s | framebus MB/s ÷ disk | Unix socket frames/s | framebus ÷ socket | JetStream frames/s | framebus ÷ JetStream |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range in.rows {
		mbps := make(benchSeries, len(row.framebus))
		for i, v := range row.framebus {
			mbps[i] = v * float64(row.frameBytes) / 1e6
		}
		js, jsRatio := "skipped", "–"
		if jsSkipped == "" {
			js, jsRatio = row.jetStream.cell(benchNum), benchRatio(row.framebus.median(), row.jetStream.median())
		}
		diskPart := "–"
		if m := mbps.median(); !math.IsNaN(m) && !math.IsNaN(disk) && disk > 0 {
			diskPart = fmt.Sprintf("%.0f %%", 100*mbps.median()/disk)
		}
		fmt.Fprintf(b, "| %d | %d | %s | %s | %s | %s | %s | %s | %s |\n", row.points, row.frameBytes,
			row.framebus.cell(benchNum), mbps.cell(benchFixed), diskPart,
			row.socket.cell(benchNum), benchRatio(row.framebus.median(), row.socket.median()), js, jsRatio)
	}
}

func benchLatencyTable(b *strings.Builder, rows []*benchLatencyRow) {
	fmt.Fprintf(b, "One driver process (`framebus publish --points 1 --rate R`) into a fresh sidecar for %d s each run; "+
		"p50 and p99 are the driver's own publish→durable percentiles (a mark every millisecond, checked every 100 µs).\n\n", benchPacedSeconds)
	b.WriteString("| preset | wal_flush_ms | rate frames/s | publish loop frames/s | p50 ms | p99 ms |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(b, "| %s | %d | %s | %s | %s | %s |\n", r.preset, r.walFlush.Milliseconds(), benchNum(float64(r.rate)),
			r.fps.cell(benchNum), r.p50.cell(benchFixed), r.p99.cell(benchFixed))
	}
}

func (l *benchLiveResult) table(b *strings.Builder) {
	fmt.Fprintf(b, "A fresh %s-preset sidecar each run; publisher, live-only subscriber (futex-woken: it sleeps at once when its ring is empty) "+
		"and command server in this process. Live: %s frames of %d B at %s frames/s, receive time − the frame's timestamp. "+
		"Commands: %d one after another through a `client.Requester`, the driver answering COMPLETED at once. "+
		"Peer: %d round trips of a %d-byte message to a child process that echoes it over a Unix stream socket.\n\n",
		sidecar.PresetDefault, benchNum(float64(l.frames)), l.size, benchNum(float64(l.rate)), l.rounds, l.pings, l.size)
	half := func(s benchSeries) benchSeries {
		h := make(benchSeries, len(s))
		for i, v := range s {
			h[i] = v / 2
		}
		return h
	}
	b.WriteString("| what | framebus p50 µs | framebus p99 µs | peer | peer p50 µs | peer p99 µs | framebus ÷ peer, p50 / p99 |\n")
	b.WriteString("|---|---|---|---|---|---|---|\n")
	h50, h99 := half(l.ping50), half(l.ping99)
	fmt.Fprintf(b, "| live publish→subscriber | %s | %s | half a Unix socket round trip | %s | %s | %s / %s |\n",
		l.live50.cell(benchFixed), l.live99.cell(benchFixed), h50.cell(benchFixed), h99.cell(benchFixed),
		benchRatio(l.live50.median(), h50.median()), benchRatio(l.live99.median(), h99.median()))
	fmt.Fprintf(b, "| command round trip | %s | %s | Unix socket round trip | %s | %s | %s / %s |\n",
		l.cmd50.cell(benchFixed), l.cmd99.cell(benchFixed), l.ping50.cell(benchFixed), l.ping99.cell(benchFixed),
		benchRatio(l.cmd50.median(), l.ping50.median()), benchRatio(l.cmd99.median(), l.ping99.median()))
	b.WriteString("\nFor latency a ratio above 1 means framebus takes longer than the peer.\n")
}

// plot draws frames/s and MB/s against the frame size, framebus and the
// peers as lines (medians; log scales), side by side.
func (in *benchIngestResult) plot(path string, withJS bool) error {
	type line struct {
		name string
		get  func(*benchIngestRow) benchSeries
	}
	lines := []line{
		{"framebus (durable)", func(r *benchIngestRow) benchSeries { return r.framebus }},
		{"Unix socket", func(r *benchIngestRow) benchSeries { return r.socket }},
	}
	if withJS {
		lines = append(lines, line{"NATS JetStream", func(r *benchIngestRow) benchSeries { return r.jetStream }})
	}
	fps, mbps := plot.New(), plot.New()
	fps.Title.Text = "frames/s vs frame size (" + in.preset + ")"
	mbps.Title.Text = "MB/s vs frame size"
	fps.Y.Label.Text, mbps.Y.Label.Text = "frames/s", "MB/s (10⁶ B/s)"
	for _, p := range []*plot.Plot{fps, mbps} {
		p.X.Label.Text = "frame bytes"
		p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
		p.X.Tick.Marker = benchSizeTicks(in.rows)
		p.Y.Tick.Marker = benchLogTicks{}
		p.Legend.Top, p.Legend.Left = true, false
		p.Add(plotter.NewGrid())
	}
	var fl, ml []any
	for _, l := range lines {
		var f, m plotter.XYs
		for _, r := range in.rows {
			v := l.get(r).median()
			if math.IsNaN(v) || v <= 0 {
				continue
			}
			f = append(f, plotter.XY{X: float64(r.frameBytes), Y: v})
			m = append(m, plotter.XY{X: float64(r.frameBytes), Y: v * float64(r.frameBytes) / 1e6})
		}
		if len(f) > 0 {
			fl, ml = append(fl, l.name, f), append(ml, l.name, m)
		}
	}
	if err := plotutil.AddLinePoints(fps, fl...); err != nil {
		return err
	}
	if err := plotutil.AddLinePoints(mbps, ml...); err != nil {
		return err
	}
	if d := in.disk.median(); !math.IsNaN(d) && d > 0 && len(in.rows) > 0 {
		disk, err := plotter.NewLine(plotter.XYs{{X: float64(in.rows[0].frameBytes), Y: d}, {X: float64(in.rows[len(in.rows)-1].frameBytes), Y: d}})
		if err != nil {
			return err
		}
		disk.Dashes = []vg.Length{vg.Points(4), vg.Points(4)}
		disk.Color = color.Gray{Y: 80}
		mbps.Add(disk)
		mbps.Legend.Add("disk, fsync'd", disk)
	}
	// Room above the lines for the legend (a factor of 5 on the log axis).
	for _, p := range []*plot.Plot{fps, mbps} {
		p.Y.Max *= 5
	}
	return benchSave(path, 11*vg.Inch, 4.5*vg.Inch, fps, mbps)
}

// benchSizeTicks marks the measured frame sizes on a log axis.
type benchSizeTicks []*benchIngestRow

func (t benchSizeTicks) Ticks(min, max float64) []plot.Tick {
	var ts []plot.Tick
	for _, r := range t {
		ts = append(ts, plot.Tick{Value: float64(r.frameBytes), Label: fmt.Sprintf("%d B (%d pt)", r.frameBytes, r.points)})
	}
	return ts
}

// benchLogTicks marks 1, 2 and 5 of every decade on a log axis.
type benchLogTicks struct{}

func (benchLogTicks) Ticks(min, max float64) []plot.Tick {
	var ts []plot.Tick
	for d := math.Pow(10, math.Floor(math.Log10(min))); d <= max; d *= 10 {
		for _, m := range []float64{1, 2, 5} {
			if v := d * m; v >= min && v <= max {
				ts = append(ts, plot.Tick{Value: v, Label: strings.TrimSuffix(strings.Replace(compactNum(v), ".0", "", 1), ".0")})
			}
		}
	}
	return ts
}

// benchLatencyPlot draws p50 and p99 bars per preset and rate.
func benchLatencyPlot(path string, rows []*benchLatencyRow) error {
	p := plot.New()
	p.Title.Text = "publish→durable latency, paced (medians)"
	p.Y.Label.Text = "ms"
	var labels []string
	var p50, p99 plotter.Values
	for _, r := range rows {
		labels = append(labels, fmt.Sprintf("%s\n%s frames/s", r.preset, benchNum(float64(r.rate))))
		p50 = append(p50, r.p50.median())
		p99 = append(p99, r.p99.median())
	}
	w := vg.Points(22)
	b50, err := plotter.NewBarChart(p50, w)
	if err != nil {
		return err
	}
	b99, err := plotter.NewBarChart(p99, w)
	if err != nil {
		return err
	}
	b50.Color, b99.Color = plotutil.Color(0), plotutil.Color(1)
	b50.LineStyle.Width, b99.LineStyle.Width = 0, 0
	b50.Offset, b99.Offset = -w/2, w/2
	p.Add(plotter.NewGrid(), b50, b99)
	p.Legend.Add("p50", b50)
	p.Legend.Add("p99", b99)
	p.Legend.Top, p.Legend.Left = true, true
	p.NominalX(labels...)
	p.Y.Min = 0
	return benchSave(path, 8*vg.Inch, 4.5*vg.Inch, p)
}

// benchSave draws the plots side by side into a PNG.
func benchSave(path string, w, h vg.Length, plots ...*plot.Plot) error {
	img := vgimg.New(w, h)
	dc := draw.New(img)
	t := draw.Tiles{Rows: 1, Cols: len(plots), PadX: vg.Millimeter * 6, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2,
		PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4}
	cs := plot.Align([][]*plot.Plot{plots}, t, dc)
	for i, p := range plots {
		p.Draw(cs[0][i])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
