// Command benchreport reads `go test -bench` output on standard input and
// prints markdown: the median of every metric of every benchmark over its
// runs, and for each shared-memory ring throughput benchmark its ratio to the
// Unix socket peer of the same record size measured in the same run. For the
// end-to-end benchmark (EndToEnd/preset=P/sync=S) it prints framebus's
// frames/s over the JetStream peer's at the same sync interval
// (EndToEnd/peer=jetstream/sync=S) and its MB/s over the disk's
// (EndToEnd/peer=disk). For the uplink benchmark (Uplink/…) it prints, per
// arrangement of the JetStream server, each framebus case's frames/s over
// the async publisher's of the same arrangement (peer=async-publish).
//
//	go test -run '^$' -bench . -count 5 ./shm ./schema | go run ./cmd/benchreport
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

type bench struct {
	name    string
	metrics map[string][]float64
	units   []string // in first-seen order
}

var procSuffix = regexp.MustCompile(`-\d+$`)

func parse(r io.Reader) ([]*bench, error) {
	byName := map[string]*bench{}
	var order []*bench
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		name := procSuffix.ReplaceAllString(strings.TrimPrefix(f[0], "Benchmark"), "")
		b := byName[name]
		if b == nil {
			b = &bench{name: name, metrics: map[string][]float64{}}
			byName[name] = b
			order = append(order, b)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			u := f[i+1]
			if _, ok := b.metrics[u]; !ok {
				b.units = append(b.units, u)
			}
			b.metrics[u] = append(b.metrics[u], v)
		}
	}
	return order, sc.Err()
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func format(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

var (
	sizeRE   = regexp.MustCompile(`size=(\d+)`)
	presetRE = regexp.MustCompile(`^EndToEnd/preset=([^/]+)/sync=([^/]+)$`)
	pacedRE  = regexp.MustCompile(`^EndToEnd/preset=([^/]+)/sync=([^/]+)/rate=(\d+)$`)
)

func main() {
	benches, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
	if len(benches) == 0 {
		fmt.Fprintln(os.Stderr, "benchreport: no benchmark lines on standard input")
		os.Exit(1)
	}
	fmt.Println("| benchmark | runs | median |")
	fmt.Println("|---|---|---|")
	byName := map[string]*bench{}
	for _, b := range benches {
		byName[b.name] = b
		var parts []string
		runs := 0
		for _, u := range b.units {
			if u == "ns/op" && median(b.metrics[u]) == 0 {
				continue // latency benchmarks report percentiles instead
			}
			parts = append(parts, format(median(b.metrics[u]))+" "+u)
			runs = max(runs, len(b.metrics[u]))
		}
		fmt.Printf("| %s | %d | %s |\n", b.name, runs, strings.Join(parts, ", "))
	}

	var rows []string
	for _, b := range benches {
		if !strings.HasPrefix(b.name, "RingThroughput/") {
			continue
		}
		m := sizeRE.FindStringSubmatch(b.name)
		if m == nil {
			continue
		}
		ring := median(b.metrics["records/s"])
		per := byName["UnixSocket/write=record/size="+m[1]]
		bat := byName["UnixSocket/write=64KiB/size="+m[1]]
		if per == nil || bat == nil || ring == 0 {
			continue
		}
		p, q := median(per.metrics["records/s"]), median(bat.metrics["records/s"])
		rows = append(rows, fmt.Sprintf("| %s | %s | %s (%.1f×) | %s (%.2f×) |",
			strings.TrimPrefix(b.name, "RingThroughput/"), format(ring), format(p), ring/p, format(q), ring/q))
	}
	table("| ring (records/s, median) | ring | Unix socket, write per record (ring ÷ socket) | Unix socket, 64 KiB writes (ring ÷ socket) |", rows)
	endToEnd(benches, byName)
	uplink(benches, byName)
}

// uplink prints framebus's forwarding throughput over the async publisher's
// (frames/s, a ratio of two medians), in each arrangement: Uplink/X/bus=B
// against Uplink/X/peer=async-publish.
func uplink(benches []*bench, byName map[string]*bench) {
	var rows []string
	for _, b := range benches {
		arr, bus, ok := strings.Cut(b.name, "bus=")
		if !strings.HasPrefix(arr, "Uplink/") || !ok {
			continue
		}
		peer := byName[arr+"peer=async-publish"]
		if peer == nil {
			continue
		}
		fb, pv := median(b.metrics["frames/s"]), median(peer.metrics["frames/s"])
		if pv == 0 {
			continue
		}
		where := strings.TrimSuffix(strings.TrimPrefix(arr, "Uplink/"), "/")
		if where == "" {
			where = "server in the benchmark process"
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %.2f |", where, bus, format(fb), format(pv), fb/pv))
	}
	table("| uplink arrangement | framebus case | framebus frames/s | async publisher frames/s | framebus ÷ async publisher |", rows)
}

// table prints a markdown table after a blank line: header, the separator
// row for its columns, and rows; nothing when there are no rows.
func table(header string, rows []string) {
	if len(rows) == 0 {
		return
	}
	fmt.Println()
	fmt.Println(header)
	fmt.Println(strings.Repeat("|---", strings.Count(header, "|")-1) + "|")
	for _, r := range rows {
		fmt.Println(r)
	}
}

// endToEnd prints the end-to-end ratios: framebus ÷ JetStream (frames/s, same
// sync interval) and framebus ÷ disk (MB/s), each a ratio of two medians.
func endToEnd(benches []*bench, byName map[string]*bench) {
	var rows []string
	disk := byName["EndToEnd/peer=disk"]
	for _, b := range benches {
		m := presetRE.FindStringSubmatch(b.name)
		if m == nil {
			continue
		}
		fps, mbps := median(b.metrics["frames/s"]), median(b.metrics["MB/s"])
		p99 := "–"
		if v, ok := b.metrics["p99-ms"]; ok {
			p99 = format(median(v))
		}
		js := "–"
		if j := byName["EndToEnd/peer=jetstream/sync="+m[2]]; j != nil {
			if v := median(j.metrics["frames/s"]); v > 0 {
				js = fmt.Sprintf("%s (%.2f×)", format(v), fps/v)
			}
		}
		dk := "–"
		if disk != nil {
			if v := median(disk.metrics["MB/s"]); v > 0 {
				dk = fmt.Sprintf("%s (%.0f %%)", format(v), 100*mbps/v)
			}
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s |", m[1], m[2], format(fps), format(mbps), p99, js, dk))
	}
	if len(rows) == 0 {
		return
	}
	table("| preset (medians) | wal_flush_ms | framebus frames/s | framebus MB/s | p99 publish→durable ms | JetStream frames/s, same sync (framebus ÷ JetStream) | disk MB/s (framebus ÷ disk) |", rows)
	paced(benches)
}

// paced prints the latency of the paced end-to-end runs against the target
// p99 ≤ wal_flush_ms + 5 ms. The p99 of a run is the worst op's.
func paced(benches []*bench) {
	var rows []string
	disk := "–"
	for _, b := range benches {
		if strings.HasPrefix(b.name, "EndToEnd/peer=disk-commit/") {
			disk = format(median(b.metrics["p99-ms"]))
		}
	}
	for _, b := range benches {
		m := pacedRE.FindStringSubmatch(b.name)
		if m == nil {
			continue
		}
		sync, err := time.ParseDuration(m[2])
		if err != nil {
			continue
		}
		p50, p99 := median(b.metrics["p50-ms"]), median(b.metrics["p99-ms"])
		target := float64(sync+5*time.Millisecond) / 1e6
		verdict := "met"
		if p99 > target {
			verdict = "not met"
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s |", m[1], m[3], format(median(b.metrics["frames/s"])), format(p50), format(p99), format(target), verdict, disk))
	}
	table("| preset (paced, medians) | rate frames/s | durable frames/s | p50 ms | p99 ms | target p99 ms (wal_flush_ms + 5) | | disk commit p99 ms, same run (peer=disk-commit) |", rows)
}
