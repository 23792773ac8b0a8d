package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
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
	const total, lost = 500, 50
	si := startStandIn(t, func(n, stored uint64) []byte {
		if n <= lost {
			return nil // taken, never answered
		}
		return fmt.Appendf(nil, `{"stream":"FRAMEBUS","seq":%d}`, stored)
	})
	s := startUplinkSidecar(t, si.url, inflight, total)
	waitFor(t, "every frame acknowledged", 30*time.Second, func() bool { return s.uplink.position.Load() == total })
	done := time.Now()
	// Quiet afterwards: nothing waits, nothing fails again.
	time.Sleep(2 * uplinkAckWait)
	st := s.uplink.status()
	si.mu.Lock()
	defer si.mu.Unlock()
	for i := 1; i <= total; i++ {
		if id := fmt.Sprintf("gw1-%d-%d", s.wal.Created(), i); si.seen[id] == 0 {
			t.Fatalf("message %s never sent", id)
		}
	}
	if si.resent.Sub(si.first) < uplinkAckWait*9/10 {
		t.Fatalf("a frame was sent again %v after the first publish, before the %v wait", si.resent.Sub(si.first), uplinkAckWait)
	}
	if !strings.Contains(st.LastError, "no PubAck") {
		t.Fatalf("status last_error %q does not report the missing PubAcks", st.LastError)
	}
	if inflight > total && (si.received != 2*total || st.Errors != 1) {
		// One round of every frame, all unanswered ones among the first, one failure, then all sent again.
		t.Fatalf("%d messages received, %d errors: want %d and 1", si.received, st.Errors, 2*total)
	}
	t.Logf("all %d acknowledged %v after the first publish; %d messages received; %d errors, the last: %s", total, done.Sub(si.first).Round(time.Millisecond), si.received, st.Errors, st.LastError)
}

// TestUplinkLeftoverPublish: the first publish's reply is lost and the
// second gets an error reply, so the uplink sends everything again from
// the first frame, and that round is acknowledged. The first round's
// unanswered publish is then given up quietly: no "no PubAck" failure
// once the uplink is idle, the injected error the only one.
func TestUplinkLeftoverPublish(t *testing.T) {
	defer func(d time.Duration) { uplinkAckWait = d }(uplinkAckWait)
	uplinkAckWait = time.Second
	const total = 200
	si := startStandIn(t, func(n, stored uint64) []byte {
		switch n {
		case 1:
			return nil
		case 2:
			return []byte(`{"error":{"code":503,"err_code":10077,"description":"injected failure"}}`)
		}
		return fmt.Appendf(nil, `{"stream":"FRAMEBUS","seq":%d}`, stored)
	})
	s := startUplinkSidecar(t, si.url, 4096, total)
	waitFor(t, "every frame acknowledged", 30*time.Second, func() bool { return s.uplink.position.Load() == total })
	time.Sleep(3 * uplinkAckWait)
	if st := s.uplink.status(); st.Errors != 1 || !strings.Contains(st.LastError, "injected failure") {
		t.Fatalf("%d errors, the last %q: want only the injected failure", st.Errors, st.LastError)
	}
}

// injectedFailure is a JetStream error reply.
const injectedFailure = `{"error":{"code":503,"err_code":10077,"description":"injected failure"}}`

// TestUplinkRepeatedFailureLog: JetStream refuses every publish with the
// same error. The uplink retries after each backoff and counts each
// failure, but logs the failure once, not once per retry; with a repeat
// interval of 1 s, again after it, with the count of those not logged.
func TestUplinkRepeatedFailureLog(t *testing.T) {
	t.Run("repeat=1m", func(t *testing.T) {
		out, failures := repeatedFailures(t)
		if n := strings.Count(out, "uplink: forwarding failed"); n != 1 {
			t.Fatalf("%d log lines for %d failures, want 1:\n%s", n, failures, out)
		}
		if !strings.Contains(out, "injected failure") || !strings.Contains(out, "at most once a minute") {
			t.Fatalf("the failure's line does not name the error or say it is not repeated:\n%s", out)
		}
	})
	t.Run("repeat=1s", func(t *testing.T) {
		defer func(d time.Duration) { uplinkRepeatLog = d }(uplinkRepeatLog)
		uplinkRepeatLog = time.Second
		// Failures about 0, 0.25, 0.7 and 1.5 s in: the second and
		// third are not logged, the fourth is, with their count.
		out, failures := repeatedFailures(t)
		if n := strings.Count(out, "uplink: forwarding failed"); n < 2 || n >= failures {
			t.Fatalf("%d log lines for %d failures, want at least 2 and fewer than the failures:\n%s", n, failures, out)
		}
		if !strings.Contains(out, "not_logged_since_last_line=") {
			t.Fatalf("no line counts the failures not logged:\n%s", out)
		}
	})
}

// repeatedFailures runs a sidecar whose every publish JetStream refuses
// until it has failed five rounds, and returns its log and failures.
func repeatedFailures(t *testing.T) (string, int) {
	si := startStandIn(t, func(n, stored uint64) []byte { return []byte(injectedFailure) })
	var logs lockedBuffer
	s := startUplinkSidecarLog(t, si.url, 4096, 10, slog.New(slog.NewTextHandler(&logs, nil)))
	// Backoffs of 0.2, 0.4, 0.8 and 1.6 s: the fifth failure about 3 s in.
	waitFor(t, "five failed rounds", 30*time.Second, func() bool { return s.uplink.status().Errors >= 5 })
	st := s.uplink.status()
	if !strings.Contains(st.LastError, "injected failure") {
		t.Fatalf("status last_error %q, want the injected failure", st.LastError)
	}
	if s.uplink.position.Load() != 0 {
		t.Fatalf("position %d: nothing was acknowledged", s.uplink.position.Load())
	}
	return logs.String(), int(st.Errors)
}

// TestUplinkFailureAfterProgress: the same failure twice, with frames
// acknowledged in between, is two incidents: each is logged, and so is
// each recovery, even within the repeat interval.
func TestUplinkFailureAfterProgress(t *testing.T) {
	const batch = 10
	var failNext atomic.Bool // set once the first batch is acknowledged
	si := startStandIn(t, func(n, stored uint64) []byte {
		// The first publish, and the first of the second batch.
		if n == 1 || failNext.CompareAndSwap(true, false) {
			return []byte(injectedFailure)
		}
		return fmt.Appendf(nil, `{"stream":"FRAMEBUS","seq":%d}`, stored)
	})
	var logs lockedBuffer
	s := startUplinkSidecarLog(t, si.url, 4096, batch, slog.New(slog.NewTextHandler(&logs, nil)))
	waitFor(t, "the first batch acknowledged", 30*time.Second, func() bool { return s.uplink.position.Load() == batch })
	failNext.Store(true)
	publishFrames(t, s, batch)
	waitFor(t, "the second batch acknowledged", 30*time.Second, func() bool { return s.uplink.position.Load() == 2*batch })
	// The recovery's line is logged on the uplink's goroutine after it
	// moves the position.
	waitFor(t, "the second recovery logged", 10*time.Second, func() bool { return strings.Count(logs.String(), "uplink forwards again") == 2 })
	out := logs.String()
	if n := strings.Count(out, "uplink: forwarding failed"); n != 2 {
		t.Fatalf("%d failure lines for 2 incidents of the same failure, want 2:\n%s", n, out)
	}
	if st := s.uplink.status(); st.Errors != 2 {
		t.Fatalf("%d errors, want 2", st.Errors)
	}
}

// standIn is a core NATS server standing in for JetStream: it answers the
// stream's info, and each publish on framebus.> with reply(n, stored) (n
// counts the publishes received, stored those answered so far plus this
// one; nil: no answer).
type standIn struct {
	url           string
	mu            sync.Mutex
	received      uint64
	first, resent time.Time // the first message, the first one received twice
	seen          map[string]int
}

func startStandIn(t *testing.T, reply func(n, stored uint64) []byte) *standIn {
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if _, err := nc.Subscribe("$JS.API.STREAM.INFO.FRAMEBUS", func(m *nats.Msg) {
		m.Respond([]byte(`{"type":"io.nats.jetstream.api.v1.stream_info_response","config":{"name":"FRAMEBUS","subjects":["framebus.>"]},"state":{}}`))
	}); err != nil {
		t.Fatal(err)
	}
	si := &standIn{url: srv.ClientURL(), seen: map[string]int{}}
	var stored uint64
	if _, err := nc.Subscribe("framebus.>", func(m *nats.Msg) {
		si.mu.Lock()
		defer si.mu.Unlock()
		si.received++
		id := m.Header.Get(jetstream.MsgIDHeader)
		if si.received == 1 {
			si.first = time.Now()
		}
		if si.seen[id]++; si.seen[id] == 2 && si.resent.IsZero() {
			si.resent = time.Now()
		}
		if r := reply(si.received, stored+1); r != nil {
			if !strings.Contains(string(r), `"error"`) {
				stored++
			}
			m.Respond(r)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return si
}

// startUplinkSidecar starts a sidecar forwarding to url (gateway gw1,
// max_inflight inflight) and publishes total frames, durable on return.
func startUplinkSidecar(t *testing.T, url string, inflight, total int) *Sidecar {
	return startUplinkSidecarLog(t, url, inflight, total, quietLogger(t))
}

// startUplinkSidecarLog is startUplinkSidecar logging to log.
func startUplinkSidecarLog(t *testing.T, url string, inflight, total int, log *slog.Logger) *Sidecar {
	cfg := testConfig(t, "--uplink-nats-servers", url, "--uplink-nats-gateway", "gw1", "--uplink-nats-max-inflight", fmt.Sprint(inflight))
	s, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	publishFrames(t, s, total)
	return s
}

// publishFrames publishes total frames to s's bus, durable on return.
func publishFrames(t *testing.T, s *Sidecar, total int) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pub, err := client.Dial(ctx, client.Config{Name: s.cfg.Name, RunDir: s.cfg.RunDir, Producer: "p"})
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
}
