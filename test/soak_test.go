package test

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

var (
	soakTime = flag.Duration("soak", 0, "run TestSoak for this long (make soak: 10m); 0 skips it")
	soakOut  = flag.String("soak.out", "", "with -soak: write the samples (CSV) and the plot (PNG) as PREFIX.csv and PREFIX.png")
)

// soakSample is one reading of the sidecar's resources.
type soakSample struct {
	at         time.Duration
	rss        float64 // bytes
	goroutines float64
	fds        float64
	frames     float64 // WAL durable sequence: frames committed so far
}

// countWriter counts the lines written to it and keeps only the last 64
// KiB, so that long-running children do not fill the test's memory.
type countWriter struct {
	mu    sync.Mutex
	lines int
	tail  []byte
}

func (c *countWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lines += bytes.Count(p, []byte{'\n'})
	c.tail = append(c.tail, p...)
	if len(c.tail) > 64<<10 {
		c.tail = append(c.tail[:0], c.tail[len(c.tail)-32<<10:]...)
	}
	return len(p), nil
}

func (c *countWriter) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.tail)
}

// quiet starts a framebus process whose output is only counted; it is
// killed at the end of the test.
func quiet(t testing.TB, args ...string) (*exec.Cmd, *countWriter, chan error) {
	t.Helper()
	w := &countWriter{}
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	})
	return cmd, w, done
}

var rateLine = regexp.MustCompile(`: (\d+) frames/s;`)

// metricValue reads one unlabelled sample from a Prometheus text page.
func metricValue(page, name string) (float64, bool) {
	sc := bufio.NewScanner(strings.NewReader(page))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, name+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(l[len(name):]), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// TestSoak runs the sidecar for -soak at half of the maximum throughput
// measured at its start, with two steady drivers, a driver attaching,
// publishing 20 000 frames and detaching every 5 s, and a durable-cursor
// subscriber killed or stopped and restarted every 10 s. Every 5 s it
// samples the sidecar's RSS, goroutines and open descriptors; after a
// warm-up of a fifth of the run (at least a minute), the median of the
// last fifth must stay within ±10 % of the median of the second fifth.
// -soak.out writes the samples and a plot.
func TestSoak(t *testing.T) {
	if *soakTime == 0 {
		t.Skip("soak test: run with -soak 10m (make soak)")
	}
	if *soakTime < 5*time.Minute {
		t.Fatalf("-soak %v: at least 5m, so that the warm-up and the windows compared mean something", *soakTime)
	}
	metrics := freeAddr(t)
	b := newBus(t, "--metrics-addr", metrics, "--wal-max-bytes", "512MiB")
	sc := b.startSidecar()
	pid := sc.cmd.Process.Pid

	// The maximum: one driver as fast as it can, 2 M frames.
	cal := b.publish("calibrate", 2_000_000)
	if err := cal.wait(t, 5*time.Minute); err != nil {
		t.Fatalf("calibration: %v\n%s", err, cal.out.String())
	}
	m := rateLine.FindStringSubmatch(cal.out.String())
	if m == nil {
		t.Fatalf("no rate in %q", cal.out.String())
	}
	maxRate, _ := strconv.ParseFloat(m[1], 64)
	half := maxRate / 2
	t.Logf("maximum %.0f frames/s; soak at %.0f frames/s for %v", maxRate, half, *soakTime)

	pubArgs := func(producer string, count int, rate float64) []string {
		return []string{"publish", "--name", b.name, "--run-dir", b.runDir, "--producer", producer,
			"--count", fmt.Sprint(count), "--rate", fmt.Sprintf("%.0f", rate)}
	}
	var steady []*exec.Cmd
	var steadyOut []*countWriter
	var steadyDone []chan error
	for i := range 2 {
		c, w, d := quiet(t, pubArgs(fmt.Sprintf("steady-%d", i), 0, half/2)...)
		steady, steadyOut, steadyDone = append(steady, c), append(steadyOut, w), append(steadyDone, d)
	}

	var churned, subRestarts, failures atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // drivers attaching and detaching
		defer wg.Done()
		for i := 0; ; i++ {
			_, w, d := quiet(t, append(pubArgs(fmt.Sprintf("churn-%d", i), 20000, 10000), "--device", "churn")...)
			select {
			case err := <-d:
				if err != nil {
					failures.Add(1)
					t.Errorf("churn driver %d: %v\n%s", i, err, w.String())
				}
				churned.Add(1)
			case <-stop:
				return
			}
			select {
			case <-time.After(5 * time.Second):
			case <-stop:
				return
			}
		}
	}()
	go func() { // a subscriber reconnecting
		defer wg.Done()
		for i := 0; ; i++ {
			c, _, d := quiet(t, "tail", "--name", b.name, "--run-dir", b.runDir, "--from", "cursor:soak", "--device", "churn", "--follow")
			select {
			case <-time.After(10 * time.Second):
			case <-stop:
				return
			}
			if i%2 == 0 {
				c.Process.Signal(syscall.SIGKILL)
			} else {
				c.Process.Signal(syscall.SIGTERM)
			}
			<-d
			subRestarts.Add(1)
		}
	}()

	var samples []soakSample
	begin := time.Now()
	tick := time.NewTicker(5 * time.Second)
	for time.Since(begin) < *soakTime {
		<-tick.C
		s := soakSample{at: time.Since(begin)}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatalf("the sidecar is gone: %v\n%s", err, sc.out.String())
		}
		for _, l := range strings.Split(string(status), "\n") {
			if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseFloat(f[1], 64)
				s.rss = kb * 1024
			}
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		s.fds = float64(len(fds))
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		s.goroutines, _ = metricValue(string(page), "go_goroutines")
		s.frames, _ = metricValue(string(page), "framebus_wal_durable_sequence")
		samples = append(samples, s)
	}
	tick.Stop()
	close(stop)
	wg.Wait()
	for i, c := range steady {
		c.Process.Signal(syscall.SIGTERM)
		if err := <-steadyDone[i]; err != nil {
			t.Errorf("steady driver %d: %v\n%s", i, err, steadyOut[i].String())
		}
	}
	sc.stop(t)
	if lines(sc.out.String(), "panic") != nil {
		t.Errorf("the sidecar logged a panic")
	}

	n := len(samples)
	window := func(from, to int) []soakSample { return samples[from:to] }
	med := func(ss []soakSample, f func(soakSample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	base, last := window(n/5, 2*n/5), window(n-n/5, n)
	out := Outcome{Fault: fmt.Sprintf("soak %v at half the maximum (%.0f of %.0f frames/s)", soakTime.Round(time.Second), half, maxRate),
		Injected: int(churned.Load() + subRestarts.Load())}
	var detail []string
	for _, q := range []struct {
		name string
		f    func(soakSample) float64
	}{
		{"RSS MiB", func(s soakSample) float64 { return s.rss / (1 << 20) }},
		{"goroutines", func(s soakSample) float64 { return s.goroutines }},
		{"fds", func(s soakSample) float64 { return s.fds }},
	} {
		b0, b1 := med(base, q.f), med(last, q.f)
		detail = append(detail, fmt.Sprintf("%s %.1f→%.1f", q.name, b0, b1))
		if b1 > b0*1.1 || b1 < b0*0.9 {
			out.Stalls++ // a resource that grows (or shrinks) is a leak in the making
			t.Errorf("%s: median %.1f in the second fifth, %.1f in the last: beyond ±10 %%", q.name, b0, b1)
		}
	}
	rate := (samples[n-1].frames - samples[0].frames) / (samples[n-1].at - samples[0].at).Seconds()
	detail = append(detail, fmt.Sprintf("%d drivers attached and detached, %d subscriber restarts, %.0f frames/s committed", churned.Load(), subRestarts.Load(), rate))
	out.Panics = int(failures.Load())
	out.Detail = strings.Join(detail, "; ")
	report(t, out)

	if *soakOut != "" {
		if err := writeSoak(*soakOut, samples, out.Fault); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s.csv and %s.png", *soakOut, *soakOut)
	}
}

// writeSoak writes the samples as PREFIX.csv and a plot of RSS,
// goroutines and descriptors (each relative to its median over the second
// fifth) as PREFIX.png.
func writeSoak(prefix string, samples []soakSample, title string) error {
	if err := os.MkdirAll(filepath.Dir(prefix), 0o755); err != nil {
		return err
	}
	f, err := os.Create(prefix + ".csv")
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	w.Write([]string{"seconds", "rss_bytes", "goroutines", "open_fds", "durable_seq"})
	for _, s := range samples {
		w.Write([]string{fmt.Sprintf("%.0f", s.at.Seconds()), fmt.Sprintf("%.0f", s.rss), fmt.Sprintf("%.0f", s.goroutines),
			fmt.Sprintf("%.0f", s.fds), fmt.Sprintf("%.0f", s.frames)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}

	n := len(samples)
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "minutes"
	p.Y.Label.Text = "% of the median over the second fifth"
	p.Y.Min, p.Y.Max = 50, 150
	var lines []any
	for _, q := range []struct {
		name string
		f    func(soakSample) float64
	}{
		{"RSS", func(s soakSample) float64 { return s.rss }},
		{"goroutines", func(s soakSample) float64 { return s.goroutines }},
		{"open fds", func(s soakSample) float64 { return s.fds }},
	} {
		base := make([]float64, 0, n/5+1)
		for _, s := range samples[n/5 : 2*n/5] {
			base = append(base, q.f(s))
		}
		slices.Sort(base)
		b := base[len(base)/2]
		pts := make(plotter.XYs, n)
		for i, s := range samples {
			pts[i].X = s.at.Minutes()
			pts[i].Y = 100 * q.f(s) / b
		}
		lines = append(lines, fmt.Sprintf("%s (100 %% = %.0f)", q.name, b), pts)
	}
	if err := plotutil.AddLines(p, lines...); err != nil {
		return err
	}
	for _, y := range []float64{90, 110} {
		band, _ := plotter.NewLine(plotter.XYs{{X: 0, Y: y}, {X: samples[n-1].at.Minutes(), Y: y}})
		band.Dashes = []vg.Length{vg.Points(4), vg.Points(4)}
		p.Add(band)
	}
	p.Legend.Top = true
	return p.Save(8*vg.Inch, 4*vg.Inch, prefix+".png")
}
