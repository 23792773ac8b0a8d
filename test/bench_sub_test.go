package test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"golang.org/x/sys/unix"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/schema/fb"
)

// The subscriber and command benchmarks of issue 4. Each has framebus
// sub-benchmarks (the real sidecar binary, clients in this process) and an
// embedded NATS core peer (nats-server in this process, nats.go clients)
// moving the same 160-byte frames, run in the same invocation:
//
//   - LiveLatency: one publisher at liveRate frames/s for liveSeconds; the
//     subscriber computes receive time − the frame's ts_ns (set just before
//     publishing). framebus: a live-only subscription, its Next spinning
//     (consumer=spin, 200 µs before it sleeps) or sleeping on the futex at
//     once (consumer=futex). NATS: a core subscription on the same
//     connection's server.
//   - FanOut: K subscribers each receive the same fanOutFrames frames;
//     frames/s counts deliveries (K × frames ÷ time). framebus: the frames
//     are in the WAL before the timer starts and every subscriber replays
//     them from Earliest (the WAL path, lossless). NATS: the publisher
//     publishes them as fast as it can while K subscribers receive.
//   - CommandRoundTrip: cmdRounds commands one after another; a driver in
//     this process answers COMPLETED at once. framebus: client.Requester →
//     sidecar → the driver's command ring → ACCEPTED and COMPLETED acks
//     through its ingress ring → sidecar → requester. NATS: Request/Reply
//     with a responder echoing the payload.
const (
	liveRate     = 100_000
	liveSeconds  = 2
	fanOutFrames = 500_000
	cmdRounds    = 5000
)

func startNATS(tb testing.TB) *nats.Conn {
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		tb.Fatal(err)
	}
	srv.Start()
	tb.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		tb.Fatal("nats-server not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

func natsConn(tb testing.TB, nc *nats.Conn) *nats.Conn {
	c, err := nats.Connect(nc.ConnectedUrl())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(c.Close)
	return c
}

// paced calls fn(i) liveRate times a second for liveSeconds. It sleeps
// between calls with nanosleep on a thread whose timer slack is 1 µs (Go's
// timers would batch the calls by the millisecond, and a busy wait would
// take a whole core from the processes measured).
func paced(fn func(i int)) int {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
	n := liveRate * liveSeconds
	interval := time.Second / liveRate
	start := time.Now()
	for i := 0; i < n; i++ {
		if d := time.Duration(i)*interval - time.Since(start); d > 0 {
			ts := unix.NsecToTimespec(d.Nanoseconds())
			unix.Nanosleep(&ts, nil)
		}
		fn(i)
	}
	return n
}

func reportLatency(b *testing.B, lats []time.Duration) {
	slices.Sort(lats)
	if len(lats) == 0 {
		b.Fatal("no latency samples")
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(lats[len(lats)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lats[len(lats)*99/100].Nanoseconds())/1e3, "p99-µs")
	b.ReportMetric(float64(lats[len(lats)*999/1000].Nanoseconds())/1e3, "p999-µs")
}

func BenchmarkLiveLatency(b *testing.B) {
	for _, consumer := range []string{"spin", "futex"} {
		b.Run("consumer="+consumer, func(b *testing.B) {
			spin := 200 * time.Microsecond
			if consumer == "futex" {
				spin = -1
			}
			bus := newBenchBus(b, "--metrics-addr", "off")
			sc := bus.startSidecar()
			defer sc.stop(b)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			sub, err := client.Subscribe(ctx, client.Filter{}, client.Latest(), client.SubscribeOptions{Name: bus.name, RunDir: bus.runDir, Live: true, Spin: spin})
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Close()
			pub, err := client.Dial(ctx, client.Config{Name: bus.name, RunDir: bus.runDir, Producer: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			defer pub.Close()
			tpl := benchTemplate(b)
			var lats []time.Duration
			b.ResetTimer()
			for op := 0; op < b.N; op++ {
				got := make(chan []time.Duration, 1)
				n := liveRate * liveSeconds
				go func() {
					l := make([]time.Duration, 0, n)
					rctx, rcancel := context.WithTimeout(ctx, time.Minute)
					defer rcancel()
					for len(l) < n {
						f, err := sub.Next(rctx)
						if err != nil {
							b.Errorf("Next after %d frames: %v", len(l), err)
							break
						}
						l = append(l, time.Duration(time.Now().UnixNano()-pointTs(f.Data)))
					}
					got <- l
				}()
				paced(func(i int) {
					tpl.SetSeq(uint64(i))
					tpl.SetTs(0, time.Now().UnixNano())
					if err := pub.Publish(ctx, tpl.Bytes()); err != nil {
						b.Fatal(err)
					}
				})
				lats = append(lats, <-got...)
			}
			b.StopTimer()
			if l := sub.Lost(); l > 0 {
				b.Fatalf("the live subscription lost %d frames", l)
			}
			reportLatency(b, lats)
		})
	}
	b.Run("peer=nats", func(b *testing.B) {
		nc := startNATS(b)
		subc := natsConn(b, nc)
		tpl := benchTemplate(b)
		var lats []time.Duration
		b.ResetTimer()
		for op := 0; op < b.N; op++ {
			n := liveRate * liveSeconds
			l := make([]time.Duration, 0, n)
			done := make(chan struct{})
			var mu sync.Mutex
			s, err := subc.Subscribe("live", func(m *nats.Msg) {
				ts := pointTs(m.Data)
				mu.Lock()
				l = append(l, time.Duration(time.Now().UnixNano()-ts))
				if len(l) == n {
					close(done)
				}
				mu.Unlock()
			})
			if err != nil {
				b.Fatal(err)
			}
			subc.Flush()
			paced(func(i int) {
				tpl.SetSeq(uint64(i))
				tpl.SetTs(0, time.Now().UnixNano())
				if err := nc.Publish("live", tpl.Bytes()); err != nil {
					b.Fatal(err)
				}
				if i%64 == 63 {
					nc.Flush() // NATS buffers; without a flush per batch it adds ms
				}
			})
			nc.Flush()
			select {
			case <-done:
			case <-time.After(time.Minute):
				b.Fatalf("NATS delivered %d of %d", len(l), n)
			}
			s.Unsubscribe()
			lats = append(lats, l...)
		}
		b.StopTimer()
		reportLatency(b, lats)
	})
}

// pointTs returns the ts_ns of a data frame's first point.
func pointTs(buf []byte) int64 {
	d := schema.RootDataFrame(buf)
	var p fb.Point
	d.Points(&p, 0)
	return p.TsNs()
}

func BenchmarkFanOut(b *testing.B) {
	for _, k := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("subscribers=%d", k), func(b *testing.B) {
			bus := newBenchBus(b, "--metrics-addr", "off")
			sc := bus.startSidecar()
			defer sc.stop(b)
			p := bus.publish("fan", fanOutFrames)
			if err := p.wait(b, 5*time.Minute); err != nil {
				b.Fatalf("publish: %v\n%s", err, p.out.String())
			}
			var total int
			var busy time.Duration
			b.ResetTimer()
			for op := 0; op < b.N; op++ {
				subs := make([]*client.Subscription, k)
				for i := range subs {
					s, err := client.Subscribe(context.Background(), client.Filter{}, client.Earliest(), client.SubscribeOptions{Name: bus.name, RunDir: bus.runDir})
					if err != nil {
						b.Fatal(err)
					}
					subs[i] = s
				}
				start := time.Now()
				var wg sync.WaitGroup
				var failed atomic.Int64
				for _, s := range subs {
					wg.Add(1)
					go func() {
						defer wg.Done()
						ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
						defer cancel()
						for i := 0; i < fanOutFrames; i++ {
							if _, err := s.Next(ctx); err != nil {
								failed.Add(1)
								return
							}
						}
					}()
				}
				wg.Wait()
				busy += time.Since(start)
				total += k * fanOutFrames
				for _, s := range subs {
					s.Close()
				}
				if failed.Load() > 0 {
					b.Fatalf("%d subscribers failed", failed.Load())
				}
			}
			b.StopTimer()
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(total)/busy.Seconds(), "frames/s")
		})
	}
	for _, k := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("peer=nats/subscribers=%d", k), func(b *testing.B) {
			nc := startNATS(b)
			tpl := benchTemplate(b)
			var total int
			var busy time.Duration
			b.ResetTimer()
			for op := 0; op < b.N; op++ {
				var wg sync.WaitGroup
				var subs []*nats.Subscription
				for i := 0; i < k; i++ {
					c := natsConn(b, nc)
					var got atomic.Int64
					wg.Add(1)
					s, err := c.Subscribe("fan", func(*nats.Msg) {
						if got.Add(1) == fanOutFrames {
							wg.Done()
						}
					})
					if err != nil {
						b.Fatal(err)
					}
					s.SetPendingLimits(-1, -1)
					c.Flush()
					subs = append(subs, s)
				}
				start := time.Now()
				for i := 0; i < fanOutFrames; i++ {
					tpl.SetSeq(uint64(i))
					if err := nc.Publish("fan", tpl.Bytes()); err != nil {
						b.Fatal(err)
					}
				}
				nc.Flush()
				done := make(chan struct{})
				go func() { wg.Wait(); close(done) }()
				select {
				case <-done:
				case <-time.After(5 * time.Minute):
					b.Fatal("NATS subscribers did not receive every message (slow consumers dropped some?)")
				}
				busy += time.Since(start)
				total += k * fanOutFrames
				for _, s := range subs {
					s.Unsubscribe()
				}
			}
			b.StopTimer()
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(float64(total)/busy.Seconds(), "frames/s")
		})
	}
}

func BenchmarkCommandRoundTrip(b *testing.B) {
	b.Run("bus=framebus", func(b *testing.B) {
		bus := newBenchBus(b, "--metrics-addr", "off")
		sc := bus.startSidecar()
		defer sc.stop(b)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		drv, err := client.Dial(ctx, client.Config{Name: bus.name, RunDir: bus.runDir, Producer: "drv"})
		if err != nil {
			b.Fatal(err)
		}
		defer drv.Close()
		go drv.ServeCommands(ctx, []string{"pump"}, func(ctx context.Context, c *schema.Command) schema.CommandAck {
			return schema.CommandAck{Stage: schema.AckCompleted, Readback: c.Points}
		})
		waitFor(b, 10*time.Second, "the driver's registration", func() bool {
			return len(lines(sc.out.String(), "driver serves commands")) > 0
		})
		r, err := client.DialRequester(ctx, client.CommandOptions{Name: bus.name, RunDir: bus.runDir})
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		cmd := &schema.Command{Target: "pump", Device: "p1", Points: []schema.Point{{Tag: "sim/tag0", Value: schema.F64(1)}}}
		var lats []time.Duration
		b.ResetTimer()
		for op := 0; op < b.N; op++ {
			for i := 0; i < cmdRounds; i++ {
				cmd.DeadlineNs = time.Now().Add(5 * time.Second).UnixNano()
				start := time.Now()
				ack, err := r.Send(ctx, cmd, nil)
				if err != nil || ack.Stage != schema.AckCompleted {
					b.Fatalf("command %d: %v %+v", i, err, ack)
				}
				lats = append(lats, time.Since(start))
			}
		}
		b.StopTimer()
		reportLatency(b, lats)
	})
	b.Run("peer=nats", func(b *testing.B) {
		nc := startNATS(b)
		resp := natsConn(b, nc)
		if _, err := resp.Subscribe("cmd", func(m *nats.Msg) { m.Respond(m.Data) }); err != nil {
			b.Fatal(err)
		}
		resp.Flush()
		tpl := benchTemplate(b)
		var lats []time.Duration
		b.ResetTimer()
		for op := 0; op < b.N; op++ {
			for i := 0; i < cmdRounds; i++ {
				start := time.Now()
				if _, err := nc.Request("cmd", tpl.Bytes(), 5*time.Second); err != nil {
					b.Fatal(err)
				}
				lats = append(lats, time.Since(start))
			}
		}
		b.StopTimer()
		reportLatency(b, lats)
	})
}
