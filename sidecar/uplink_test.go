package sidecar

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
)

func TestUplinkSubject(t *testing.T) {
	enc := schema.NewEncoder(0)
	data := append([]byte(nil), enc.EncodeData(&schema.DataFrame{Producer: "mod.bus", Device: "pump 1"})...)
	cmd := append([]byte(nil), enc.EncodeCommand(&schema.Command{Target: "modbus", Device: ""})...)
	ack := append([]byte(nil), enc.EncodeCommandAck(&schema.CommandAck{ID: 1})...)
	for _, c := range []struct {
		tpl  string
		kind schema.Kind
		buf  []byte
		want string
	}{
		{"framebus.{gateway}.{producer}.{device}", schema.KindData, data, "framebus.gw1.mod_bus.pump_1"},
		{"framebus.{gateway}.{producer}.{device}", schema.KindCommand, cmd, "framebus.gw1.modbus._"},
		{"framebus.{gateway}.{producer}.{device}", schema.KindAck, ack, "framebus.gw1.sidecar.ack"},
		{"plant.{kind}.{gateway}", schema.KindData, data, "plant.data.gw1"},
		{"x.{unknown}.{device}", schema.KindData, data, "x.{unknown}.pump_1"},
		{"static", schema.KindData, data, "static"},
	} {
		u := &uplink{gateway: "gw1", subjParts: parseSubject(c.tpl)}
		for range 2 { // filled, then from the cache
			if got := u.subject(c.kind, c.buf); got != c.want {
				t.Errorf("%q for %s: %q, want %q", c.tpl, c.kind, got, c.want)
			}
		}
	}
	// The cache keeps producer and device apart, whatever bytes they hold.
	u := &uplink{gateway: "gw1", subjParts: parseSubject("{producer}.{device}")}
	for _, c := range []struct{ producer, device, want string }{
		{"a\x00b", "c", "a\x00b.c"}, {"a", "b\x00c", "a.b\x00c"}, {"a", "b", "a.b"}, {"ab", "", "ab._"}, {"a", "b", "a.b"},
	} {
		buf := append([]byte(nil), enc.EncodeData(&schema.DataFrame{Producer: c.producer, Device: c.device})...)
		if got := u.subject(schema.KindData, buf); got != c.want {
			t.Errorf("producer %q device %q: %q, want %q", c.producer, c.device, got, c.want)
		}
	}
}

// TestUplinkAckWait: a server that takes the first 50 publishes and never
// answers them (a stand-in for JetStream on a core NATS server, whose
// replies the test writes) holds the uplink's acknowledged position; once
// the first of them has waited uplinkAckWait the uplink gives the frames
// in flight up, sends them again, and every frame ends up acknowledged.
// With max_inflight 32 the unanswered publishes fill the window: every
// round then ends with a stalled publish, and the wait must still count
// across rounds.
func TestUplinkAckWait(t *testing.T) {
	defer func(d time.Duration) { uplinkAckWait = d }(uplinkAckWait)
	uplinkAckWait = time.Second
	t.Run("inflight=4096", func(t *testing.T) { testUplinkAckWait(t, 4096) })
	t.Run("inflight=32", func(t *testing.T) { testUplinkAckWait(t, 32) })
}

func testUplinkAckWait(t *testing.T, inflight int) {
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// The stream's info, as JetStream answers it.
	if _, err := nc.Subscribe("$JS.API.STREAM.INFO.FRAMEBUS", func(m *nats.Msg) {
		m.Respond([]byte(`{"type":"io.nats.jetstream.api.v1.stream_info_response","config":{"name":"FRAMEBUS","subjects":["framebus.>"]},"state":{}}`))
	}); err != nil {
		t.Fatal(err)
	}
	const total, lost = 500, 50
	var mu sync.Mutex
	var received, stored uint64
	var first, resent time.Time // the first message, the first one sent again
	seen := map[string]int{}
	if _, err := nc.Subscribe("framebus.>", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		received++
		id := m.Header.Get(jetstream.MsgIDHeader)
		if received == 1 {
			first = time.Now()
		}
		if seen[id]++; seen[id] == 2 && resent.IsZero() {
			resent = time.Now()
		}
		if received <= lost {
			return // taken, never answered
		}
		stored++
		m.Respond(fmt.Appendf(nil, `{"stream":"FRAMEBUS","seq":%d}`, stored))
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	cfg := testConfig(t, "--uplink-nats-servers", srv.ClientURL(), "--uplink-nats-gateway", "gw1", "--uplink-nats-max-inflight", fmt.Sprint(inflight))
	s, err := New(cfg, quietLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pub, err := client.Dial(ctx, client.Config{Name: cfg.Name, RunDir: cfg.RunDir, Producer: "p"})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	var e schema.Encoder
	for i := range uint64(total) {
		if err := pub.Publish(ctx, e.EncodeData(&schema.DataFrame{Producer: "p", Device: "d", Seq: i})); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.WaitDurable(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every frame acknowledged", 30*time.Second, func() bool { return s.uplink.position.Load() == total })
	done := time.Now()
	// Quiet afterwards: nothing waits, nothing fails again.
	time.Sleep(2 * uplinkAckWait)
	st := s.uplink.status()
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i <= total; i++ {
		if id := fmt.Sprintf("gw1-%d-%d", s.wal.Created(), i); seen[id] == 0 {
			t.Fatalf("message %s never sent", id)
		}
	}
	if resent.Sub(first) < uplinkAckWait*9/10 {
		t.Fatalf("a frame was sent again %v after the first publish, before the %v wait", resent.Sub(first), uplinkAckWait)
	}
	if !strings.Contains(st.LastError, "no PubAck") {
		t.Fatalf("status last_error %q does not report the missing PubAcks", st.LastError)
	}
	if inflight > total && (received != 2*total || st.Errors != 1) {
		// One round of every frame, all unanswered ones among the first, one failure, then all sent again.
		t.Fatalf("%d messages received, %d errors: want %d and 1", received, st.Errors, 2*total)
	}
	t.Logf("all %d acknowledged %v after the first publish; %d messages received; %d errors, the last: %s", total, done.Sub(first).Round(time.Millisecond), received, st.Errors, st.LastError)
}
