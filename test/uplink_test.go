package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/framebus/framebus/schema"
)

// startJetStream runs a JetStream server in this process on a random
// 127.0.0.1 port, its store in the test's directory.
func startJetStream(t testing.TB) *server.Server {
	t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: filepath.Join(t.TempDir(), "js")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return srv
}

// streamFrames reads every message of stream and returns, per producer,
// the producer sequence numbers of its data frames in stream order, and
// the message count.
func streamFrames(t testing.TB, url, stream string) (map[string][]uint64, uint64) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	total := st.CachedInfo().State.Msgs
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]uint64{}
	var n uint64
	for n < total {
		batch, err := cons.Fetch(10000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			n++
			if err := schema.Verify(schema.KindData, m.Data()); err != nil {
				continue // commands and acks
			}
			d := schema.RootDataFrame(m.Data())
			out[string(d.Producer())] = append(out[string(d.Producer())], d.Seq())
		}
		if got == 0 {
			t.Fatalf("the stream stopped after %d of %d messages", n, total)
		}
	}
	return out, total
}

// waitStream waits until stream holds want messages (and no more).
func waitStream(t testing.TB, url, stream string, want uint64, d time.Duration) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	deadline := time.Now().Add(d)
	var last uint64
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := js.Stream(ctx, stream)
		cancel()
		if err == nil {
			last = st.CachedInfo().State.Msgs
			if last >= want {
				if last > want {
					t.Fatalf("stream %s holds %d messages, want %d: duplicates", stream, last, want)
				}
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("stream %s holds %d of %d messages after %v", stream, last, want, d)
}

func uplinkStatus(t testing.TB, addr string) map[string]any {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct{ Uplink map[string]any }
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.Uplink
}

// TestUplink: frames from two drivers through the uplink into JetStream,
// each exactly once and in per-producer order; then a kill -9 of the
// sidecar while it forwards: after a restart nothing is missing and
// nothing is twice in the stream (the duplicate window drops the resends).
func TestUplink(t *testing.T) {
	n := 1_000_000
	if raceEnabled {
		n = 200_000
	}
	js := startJetStream(t)
	url := js.ClientURL()
	httpAddr := freeAddr(t)
	b := newBus(t, "--uplink-nats-servers", url, "--uplink-nats-create-stream", "--uplink-nats-gateway", "gw1", "--http-addr", httpAddr)
	sc := b.startSidecar()
	p1 := b.publish("A", n/2, "--device", "a0")
	p2 := b.publish("B", n/2, "--device", "b0")
	for _, p := range []*proc{p1, p2} {
		if err := p.wait(t, 5*time.Minute); err != nil {
			t.Fatalf("publish: %v\n%s", err, p.out.String())
		}
	}
	start := time.Now()
	waitStream(t, url, "FRAMEBUS", uint64(n), 5*time.Minute)
	t.Logf("%d frames in the stream %v after the drivers finished; uplink %v", n, time.Since(start).Round(time.Millisecond), uplinkStatus(t, httpAddr))

	// kill -9 while forwarding the next batch.
	p3 := b.publish("C", n/2, "--device", "c0")
	if err := p3.wait(t, 5*time.Minute); err != nil {
		t.Fatalf("publish: %v\n%s", err, p3.out.String())
	}
	waitFor(t, time.Minute, "the uplink forwarding C", func() bool {
		u := uplinkStatus(t, httpAddr)
		pos, _ := u["position"].(float64)
		return pos > float64(n)+1000
	})
	sc.cmd.Process.Signal(syscall.SIGKILL)
	<-sc.done
	sc = b.startSidecar()
	defer sc.stop(t)
	waitStream(t, url, "FRAMEBUS", uint64(n+n/2), 5*time.Minute)
	u := uplinkStatus(t, httpAddr)
	t.Logf("after the kill and restart: uplink %v", u)

	got, total := streamFrames(t, url, "FRAMEBUS")
	if total != uint64(n+n/2) {
		t.Fatalf("stream holds %d messages, want %d", total, n+n/2)
	}
	for _, prod := range []string{"A", "B", "C"} {
		seqs := got[prod]
		if len(seqs) != n/2 {
			t.Fatalf("producer %s: %d frames in the stream, want %d", prod, len(seqs), n/2)
		}
		for i, s := range seqs {
			if s != uint64(i) {
				t.Fatalf("producer %s: stream position %d holds seq %d (missing, duplicated or reordered)", prod, i, s)
			}
		}
	}
	_ = fmt.Sprint
}
