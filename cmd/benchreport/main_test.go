package main

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"
)

// TestUplinkRatios: each framebus case is divided by the async publisher
// of its own arrangement, medians of the runs.
func TestUplinkRatios(t *testing.T) {
	in := `BenchmarkUplink/bus=framebus-2   	1	 80000 frames/s
BenchmarkUplink/bus=framebus-2   	1	 90000 frames/s
BenchmarkUplink/bus=framebus-2   	1	 70000 frames/s
BenchmarkUplink/bus=framebus-in-process-2   	1	 95000 frames/s
BenchmarkUplink/peer=async-publish-2   	1	100000 frames/s
BenchmarkUplink/server=process/bus=framebus-2   	1	 5500 client-cpu-ns/frame	 45000 frames/s
BenchmarkUplink/server=process/peer=async-publish-2   	1	 4000 client-cpu-ns/frame	 50000 frames/s
`
	benches, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*bench{}
	for _, b := range benches {
		byName[b.name] = b
	}
	out := capture(t, func() { uplink(benches, byName) })
	for _, want := range []string{
		"| server in the benchmark process | framebus | 80000 | 100000 | 0.80 |",
		"| server in the benchmark process | framebus-in-process | 95000 | 100000 | 0.95 |",
		"| server=process | framebus | 45000 | 50000 | 0.90 |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing row %q in:\n%s", want, out)
		}
	}
}

// capture returns what f prints on standard output.
func capture(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		done <- b
	}()
	f()
	os.Stdout = old
	w.Close()
	return string(bytes.TrimSpace(<-done))
}
