package shm

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// Cross-process benchmarks. The benchmark process is the consumer; producers
// are re-executed copies of the test binary (roles below), started before the
// timer and released together by a line on stdin. Record sizes are whole
// records: the 8-byte ring header is part of the size, and the Unix socket
// peer writes records of the same size.

func init() {
	roles["bench-producer"] = roleBenchProducer
	roles["bench-uds"] = roleBenchUDS
	roles["bench-lat"] = roleBenchLatency
	roles["bench-lat-uds"] = roleBenchLatencyUDS
}

var benchSizes = []int{64, 128, 512, 4096}

var (
	benchMinBatch = envOr("BENCH_MINBATCH", 64)
	benchPause    = time.Duration(envOr("BENCH_PAUSE_NS", 20000))
	benchRing     = envOr("BENCH_RING", 16<<20)
)

func envOr(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// pause spins for d without a system call.
func pause(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
	}
}

func waitGo() error {
	fmt.Println("ready")
	_, err := bufio.NewReader(os.Stdin).ReadString('\n')
	return err
}

// roleBenchProducer writes COUNT records of SIZE bytes, BATCH per commit.
func roleBenchProducer() error {
	s, r, err := openRingEnv()
	if err != nil {
		return err
	}
	defer s.Close()
	p, err := r.Producer(uint16(envInt("ID")))
	if err != nil {
		return err
	}
	count, size, batch := envInt("COUNT"), envInt("SIZE"), envInt("BATCH")
	src := make([]byte, size)
	fill(src, 1)
	sizes := make([]int, batch)
	for i := range sizes {
		sizes[i] = size - RecordHeaderSize
	}
	if err := waitGo(); err != nil {
		return err
	}
	ctx := context.Background()
	for i := 0; i < count; {
		if batch == 1 {
			cl, err := p.Claim(1, size-RecordHeaderSize)
			if err != nil {
				if errors.Is(err, ErrFull) {
					p.WaitSpace(ctx, size, DefaultSpin)
					continue
				}
				return err
			}
			copy(cl.Buf, src)
			p.Commit(cl)
			i++
			continue
		}
		k := min(batch, count-i)
		b, err := p.ClaimBatch(1, sizes[:k])
		if err != nil {
			if errors.Is(err, ErrFull) {
				p.WaitSpace(ctx, k*size, DefaultSpin)
				continue
			}
			return err
		}
		for j := 0; j < k; j++ {
			copy(p.Next(&b), src)
		}
		p.CommitBatch(&b)
		i += k
	}
	return nil
}

// roleBenchUDS writes COUNT records of SIZE bytes to the Unix socket SOCK:
// one write per record (BATCH=1) or 64 KiB writes.
func roleBenchUDS() error {
	conn, err := net.Dial("unix", os.Getenv("SOCK"))
	if err != nil {
		return err
	}
	defer conn.Close()
	count, size, batch := envInt("COUNT"), envInt("SIZE"), envInt("BATCH")
	rec := make([]byte, size)
	fill(rec, 1)
	binary.LittleEndian.PutUint32(rec, uint32(size))
	if err := waitGo(); err != nil {
		return err
	}
	if batch == 1 {
		for i := 0; i < count; i++ {
			if _, err := conn.Write(rec); err != nil {
				return err
			}
		}
		return nil
	}
	buf := make([]byte, 0, 64<<10)
	for i := 0; i < count; i++ {
		if len(buf)+size > cap(buf) {
			if _, err := conn.Write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
		buf = append(buf, rec...)
	}
	_, err = conn.Write(buf)
	return err
}

// benchConsume drains rings until want records arrived, spinning briefly and
// then sleeping on the doorbell when they are empty.
func benchConsume(b *testing.B, s *Segment, rings []*Ring, want int) {
	cons := make([]*Consumer, len(rings))
	for i, r := range rings {
		cons[i] = mustConsumer(b, r)
	}
	ready := func() bool {
		for _, c := range cons {
			if c.Ready() {
				return true
			}
		}
		return false
	}
	ctx := context.Background()
	var sink byte
	got := 0
	for got < want {
		n := 0
		for _, c := range cons {
			k, err := c.Poll(0, func(rec Record) { sink ^= rec.Payload[0] })
			if err != nil {
				b.Fatal(err)
			}
			if k > 0 {
				c.Release(c.ReadPos())
			}
			n += k
		}
		got += n
		if n == 0 {
			s.Doorbell().Wait(ctx, DefaultSpin, ready)
		} else if n < benchMinBatch {
			// Drain in batches, as the sidecar does: after a small
			// batch, give the producers a moment to get ahead instead
			// of chasing them line by line.
			pause(benchPause)
		}
	}
	_ = sink
}

func startAll(b *testing.B, kids []*child) {
	for _, k := range kids {
		if l := k.line(b, 30*time.Second); l != "ready" {
			b.Fatalf("child said %q", l)
		}
	}
	b.ResetTimer()
	for _, k := range kids {
		fmt.Fprintln(k.in, "go")
	}
}

func finish(b *testing.B, kids []*child) {
	b.StopTimer()
	for _, k := range kids {
		if err := k.wait(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRingThroughput: producers in other processes, records/s and B/s.
func BenchmarkRingThroughput(b *testing.B) {
	type cfg struct {
		kind      RingKind
		producers int
	}
	for _, c := range []cfg{{KindIngressSPSC, 1}, {KindIngressMPMC, 1}, {KindIngressMPMC, 2}, {KindIngressMPMC, 4}} {
		for _, size := range benchSizes {
			for _, batch := range []int{1, 64} {
				if size == 4096 && batch == 64 {
					batch = 16 // a batch must fit in half the ring
				}
				name := fmt.Sprintf("ring=spsc/producers=%d/size=%d/batch=%d", c.producers, size, batch)
				if c.kind == KindIngressMPMC {
					name = fmt.Sprintf("ring=mpmc/producers=%d/size=%d/batch=%d", c.producers, size, batch)
				}
				b.Run(name, func(b *testing.B) {
					s := newSegment(b, int64(benchRing)+1<<20)
					r := newRing(b, s, c.kind, benchRing)
					per := (b.N + c.producers - 1) / c.producers
					var kids []*child
					for id := 1; id <= c.producers; id++ {
						kids = append(kids, startChild(b, "bench-producer", append(segEnv(s, r.Slot()),
							"ID="+strconv.Itoa(id), "COUNT="+strconv.Itoa(per), "SIZE="+strconv.Itoa(size), "BATCH="+strconv.Itoa(batch))...))
					}
					b.SetBytes(int64(size))
					startAll(b, kids)
					benchConsume(b, s, []*Ring{r}, per*c.producers)
					finish(b, kids)
					b.ReportMetric(float64(per*c.producers)/b.Elapsed().Seconds(), "records/s")
				})
			}
		}
	}
}

// BenchmarkUnixSocket is the peer: the same records through a Unix domain
// stream socket, one write per record or 64 KiB writes.
func BenchmarkUnixSocket(b *testing.B) {
	for _, size := range benchSizes {
		for _, batch := range []int{1, 64} {
			mode := "write=record"
			if batch > 1 {
				mode = "write=64KiB"
			}
			b.Run(fmt.Sprintf("%s/size=%d", mode, size), func(b *testing.B) {
				sock := filepath.Join(b.TempDir(), "s")
				ln, err := net.Listen("unix", sock)
				if err != nil {
					b.Fatal(err)
				}
				defer ln.Close()
				kid := startChild(b, "bench-uds", "SOCK="+sock, "COUNT="+strconv.Itoa(b.N), "SIZE="+strconv.Itoa(size), "BATCH="+strconv.Itoa(batch))
				conn, err := ln.Accept()
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				b.SetBytes(int64(size))
				startAll(b, []*child{kid})
				buf := make([]byte, 256<<10)
				want := int64(b.N) * int64(size)
				var got int64
				for got < want {
					n, err := conn.Read(buf)
					if err != nil && err != io.EOF {
						b.Fatal(err)
					}
					got += int64(n)
					if err == io.EOF {
						break
					}
				}
				finish(b, []*child{kid})
				if got != want {
					b.Fatalf("read %d bytes, want %d", got, want)
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
			})
		}
	}
}

// roleBenchLatency sends COUNT 128-byte records, one every INTERVAL_NS,
// each carrying its send time.
func roleBenchLatency() error {
	s, r, err := openRingEnv()
	if err != nil {
		return err
	}
	defer s.Close()
	p, err := r.Producer(1)
	if err != nil {
		return err
	}
	count := envInt("COUNT")
	interval := time.Duration(envInt("INTERVAL_NS"))
	if err := waitGo(); err != nil {
		return err
	}
	next := time.Now()
	for i := 0; i < count; i++ {
		for time.Now().Before(next) {
		}
		next = next.Add(interval)
		cl, err := p.Claim(1, 120)
		if err != nil {
			return err
		}
		binary.LittleEndian.PutUint64(cl.Buf, uint64(time.Now().UnixNano()))
		p.Commit(cl)
	}
	return nil
}

func roleBenchLatencyUDS() error {
	conn, err := net.Dial("unix", os.Getenv("SOCK"))
	if err != nil {
		return err
	}
	defer conn.Close()
	count := envInt("COUNT")
	interval := time.Duration(envInt("INTERVAL_NS"))
	if err := waitGo(); err != nil {
		return err
	}
	rec := make([]byte, 128)
	next := time.Now()
	for i := 0; i < count; i++ {
		for time.Now().Before(next) {
		}
		next = next.Add(interval)
		binary.LittleEndian.PutUint64(rec, uint64(time.Now().UnixNano()))
		if _, err := conn.Write(rec); err != nil {
			return err
		}
	}
	return nil
}

func reportLatency(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Nanoseconds()) }
	b.ReportMetric(q(0.50), "p50-ns")
	b.ReportMetric(q(0.99), "p99-ns")
	b.ReportMetric(q(0.999), "p999-ns")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkHandoffLatency measures one-way latency of 128-byte records from a
// producer process to this consumer, paced so the consumer idles between
// records: spinning, or asleep on the futex and woken by the commit; and the
// same through a Unix socket with a blocking read.
func BenchmarkHandoffLatency(b *testing.B) {
	const interval = 50 * time.Microsecond
	for _, mode := range []string{"ring-spin", "ring-futex", "unix-socket"} {
		b.Run("consumer="+mode, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			env := []string{"COUNT=" + strconv.Itoa(b.N), "INTERVAL_NS=" + strconv.Itoa(int(interval))}
			if mode == "unix-socket" {
				sock := filepath.Join(b.TempDir(), "s")
				ln, err := net.Listen("unix", sock)
				if err != nil {
					b.Fatal(err)
				}
				defer ln.Close()
				kid := startChild(b, "bench-lat-uds", append(env, "SOCK="+sock)...)
				conn, err := ln.Accept()
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close()
				startAll(b, []*child{kid})
				rec := make([]byte, 128)
				for i := 0; i < b.N; i++ {
					if _, err := io.ReadFull(conn, rec); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Duration(time.Now().UnixNano()-int64(binary.LittleEndian.Uint64(rec))))
				}
				finish(b, []*child{kid})
				reportLatency(b, lat)
				return
			}
			s := newSegment(b, 4<<20)
			r := newRing(b, s, KindIngressSPSC, 1<<20)
			kid := startChild(b, "bench-lat", append(segEnv(s, r.Slot()), env...)...)
			c := mustConsumer(b, r)
			spin := time.Duration(0)
			if mode == "ring-spin" {
				spin = time.Hour
			}
			ctx := context.Background()
			startAll(b, []*child{kid})
			for len(lat) < b.N {
				n, err := c.Poll(0, func(rec Record) {
					lat = append(lat, time.Duration(time.Now().UnixNano()-int64(binary.LittleEndian.Uint64(rec.Payload))))
				})
				if err != nil {
					b.Fatal(err)
				}
				c.Release(c.ReadPos())
				if n == 0 {
					s.Doorbell().Wait(ctx, spin, c.Ready)
				}
			}
			finish(b, []*child{kid})
			reportLatency(b, lat)
		})
	}
}
