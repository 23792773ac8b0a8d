package sidecar

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/wal"
)

// The uplink forwards the WAL to NATS JetStream (store and forward). It
// reads committed frames from its own durable cursor (uplinkCursor: while
// JetStream is unreachable, retention holds the frames under
// cursor_policy retain), publishes them asynchronously with at most
// max_inflight waiting for their PubAck, and moves the cursor only past
// frames JetStream acknowledged. Every message carries Nats-Msg-Id =
// <gateway>-<WAL creation time>-<WAL sequence>: a frame sent again after a
// reconnect or a sidecar crash has the same id, and JetStream's duplicate
// window drops it (the PubAck says so; counted as duplicates).
//
// It works in rounds: publish up to max_inflight frames, wait for their
// acks, move the cursor, repeat. A failed round is sent again from its
// first frame after a backoff; JetStream keeps the first copy of each
// message, so a frame that failed while later ones of the same round
// succeeded is stored after them (order per producer holds unless a round
// fails part-way).

// uplinkCursor is the uplink's durable cursor in the WAL.
const uplinkCursor = "uplink-nats"

// uplinkBackoffMax bounds the wait between failed rounds.
const uplinkBackoffMax = 5 * time.Second

type uplink struct {
	s       *Sidecar
	cfg     Config
	log     *slog.Logger
	gateway string
	idBase  string // <gateway>-<WAL creation time>-

	connected  atomic.Bool
	published  atomic.Uint64
	acked      atomic.Uint64 // frames acknowledged by JetStream (duplicates included)
	duplicates atomic.Uint64
	errors     atomic.Uint64
	position   atomic.Uint64 // every frame up to it is acknowledged
	caughtUp   atomic.Int64  // Unix ns when position last reached the durable watermark

	mu      sync.Mutex
	lastErr string

	cancel context.CancelFunc
	done   chan struct{}
}

// startUplink starts forwarding when uplink.nats.servers is set.
func (s *Sidecar) startUplink() {
	c := s.cfg
	if c.UplinkServers == "" {
		return
	}
	gw := c.UplinkGateway
	if gw == "" {
		gw, _ = os.Hostname()
	}
	gw = subjectToken(gw)
	u := &uplink{s: s, cfg: c, log: s.log.With("uplink", "nats"), gateway: gw,
		idBase: gw + "-" + strconv.FormatInt(s.wal.Created(), 10) + "-", done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	u.cancel = cancel
	s.uplink = u
	go func() {
		defer close(u.done)
		u.run(ctx)
	}()
}

func (u *uplink) stop() {
	u.cancel()
	<-u.done
}

func (u *uplink) setErr(err error) {
	u.errors.Add(1)
	u.mu.Lock()
	u.lastErr = err.Error()
	u.mu.Unlock()
}

func (u *uplink) options() ([]nats.Option, error) {
	c := u.cfg
	opts := []nats.Option{
		nats.Name("framebus " + u.gateway),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.ConnectHandler(func(nc *nats.Conn) {
			u.connected.Store(true)
			u.log.Info("uplink connected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			u.connected.Store(true)
			u.log.Info("uplink reconnected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if u.connected.Swap(false) {
				u.log.Warn("uplink disconnected; frames wait in the WAL", "err", err)
			}
		}),
		nats.ErrorHandler(func(nc *nats.Conn, _ *nats.Subscription, err error) {
			u.setErr(err)
			u.log.Warn("uplink error", "err", err)
		}),
	}
	switch {
	case c.UplinkCredsFile != "":
		opts = append(opts, nats.UserCredentials(c.UplinkCredsFile))
	case c.UplinkNKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(c.UplinkNKeyFile)
		if err != nil {
			return nil, fmt.Errorf("uplink.nats.nkey_file %s: %w", c.UplinkNKeyFile, err)
		}
		opts = append(opts, o)
	case c.UplinkToken != "":
		opts = append(opts, nats.Token(c.UplinkToken))
	}
	if c.UplinkTLSCA != "" {
		opts = append(opts, nats.RootCAs(c.UplinkTLSCA))
	}
	if c.UplinkTLSCert != "" {
		opts = append(opts, nats.ClientCert(c.UplinkTLSCert, c.UplinkTLSKey))
	}
	if c.UplinkTLSCA != "" || c.UplinkTLSCert != "" {
		opts = append(opts, nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12}))
	}
	return opts, nil
}

func (u *uplink) run(ctx context.Context) {
	s := u.s
	opts, err := u.options()
	if err != nil {
		u.setErr(err)
		u.log.Error("uplink not started", "err", err)
		return
	}
	nc, err := nats.Connect(u.cfg.UplinkServers, opts...)
	if err != nil {
		u.setErr(err)
		u.log.Error("uplink not started: cannot configure the NATS connection", "err", err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(u.cfg.UplinkMaxInflight))
	if err != nil {
		u.setErr(err)
		u.log.Error("uplink not started", "err", err)
		return
	}
	// The cursor: a new uplink forwards everything the WAL holds.
	if _, ok := s.wal.Cursor(uplinkCursor); !ok {
		first := s.wal.FirstSeq()
		if first == 0 {
			first = s.wal.Durable() + 1
		}
		if err := s.wal.SetCursor(uplinkCursor, first-1); err != nil {
			u.setErr(err)
			u.log.Error("uplink not started: cannot create its WAL cursor", "err", err)
			return
		}
	}
	cur, _ := s.wal.Cursor(uplinkCursor)
	u.position.Store(cur.Acked)
	u.caughtUp.Store(time.Now().UnixNano())
	u.log.Info("uplink forwarding", "servers", u.cfg.UplinkServers, "stream", u.cfg.UplinkStream, "from_seq", cur.Acked+1)

	streamReady := false
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		if backoff > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
		if !nc.IsConnected() {
			backoff = min(max(2*backoff, 200*time.Millisecond), uplinkBackoffMax)
			continue
		}
		if !streamReady {
			if err := u.ensureStream(ctx, js); err != nil {
				u.setErr(err)
				u.log.Error("uplink: stream not usable; retrying", "stream", u.cfg.UplinkStream, "err", err)
				backoff = min(max(2*backoff, 500*time.Millisecond), uplinkBackoffMax)
				continue
			}
			streamReady = true
		}
		commit := s.commitSignal()
		next := u.position.Load() + 1
		if next > s.wal.Durable() {
			u.caughtUp.Store(time.Now().UnixNano())
			select {
			case <-ctx.Done():
				return
			case <-commit:
			case <-time.After(time.Second): // notice a lost connection while idle
			}
			continue
		}
		n, err := u.round(ctx, js, next)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			u.setErr(err)
			u.log.Warn("uplink round failed; sending it again", "from_seq", next, "frames", n, "err", err)
			if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) {
				streamReady = false
			}
			backoff = min(max(2*backoff, 200*time.Millisecond), uplinkBackoffMax)
			continue
		}
		backoff = 0
	}
}

// ensureStream checks that the stream exists (creating it if told to).
func (u *uplink) ensureStream(ctx context.Context, js jetstream.JetStream) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := js.Stream(cctx, u.cfg.UplinkStream)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) || !u.cfg.UplinkCreateStream {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("stream %s does not exist: create it (subjects matching uplink.nats.subject), or set uplink.nats.create_stream", u.cfg.UplinkStream)
		}
		return err
	}
	_, err = js.CreateStream(cctx, jetstream.StreamConfig{Name: u.cfg.UplinkStream, Subjects: []string{"framebus.>"},
		Storage: jetstream.FileStorage, Retention: jetstream.LimitsPolicy, Duplicates: 2 * time.Minute})
	if err == nil {
		u.log.Info("uplink created the stream", "stream", u.cfg.UplinkStream, "subjects", "framebus.>")
	}
	return err
}

var errRoundFull = errors.New("round full")

// round publishes up to max_inflight frames from next, waits for their
// acks and moves the cursor past them. It returns how many it sent.
func (u *uplink) round(ctx context.Context, js jetstream.JetStream, next uint64) (int, error) {
	s := u.s
	durable := s.wal.Durable()
	maxN := u.cfg.UplinkMaxInflight
	type sent struct {
		seq uint64
		f   jetstream.PubAckFuture
	}
	futures := make([]sent, 0, maxN)
	var pubErr error
	var enc []byte
	err := s.wal.Iterate(next, func(seq uint64, f wal.Frame) error {
		if seq > durable {
			return errStopIter
		}
		if len(futures) >= maxN {
			return errRoundFull
		}
		m := nats.NewMsg(u.subject(schema.Kind(f.Kind), f.Data))
		m.Header.Set(jetstream.MsgIDHeader, u.idBase+strconv.FormatUint(seq, 10))
		m.Header.Set("Framebus-Seq", strconv.FormatUint(seq, 10))
		if u.cfg.UplinkPayload == "json" {
			var err error
			if enc, err = schema.AppendDeliveredJSON(enc[:0], seq, schema.Kind(f.Kind), f.Data); err != nil {
				return nil // the WAL holds verified frames; skip one that is not
			}
			m.Header.Set("Content-Type", "application/json")
			m.Data = enc
		} else {
			m.Header.Set("Content-Type", "application/x-flatbuffers; kind="+schema.Kind(f.Kind).String())
			m.Data = f.Data
		}
		fut, err := js.PublishMsgAsync(m)
		if err != nil {
			pubErr = err
			return errRoundFull
		}
		u.published.Add(1)
		futures = append(futures, sent{seq, fut})
		return nil
	})
	if err != nil && !errors.Is(err, errStopIter) && !errors.Is(err, errRoundFull) {
		return len(futures), fmt.Errorf("reading the WAL: %w", err)
	}
	// Frames retention deleted before the uplink sent them (cursor_policy
	// drop): the cursor moves on, the loss is counted on it.
	if first := s.wal.FirstSeq(); first > next && (len(futures) == 0 || futures[0].seq > next) {
		u.log.Warn("uplink: retention deleted frames before they were forwarded", "from_seq", next, "to_seq", first-1)
	}
	// Wait for the acks in order; the cursor moves past the acknowledged
	// prefix.
	last := next - 1
	if len(futures) == 0 && pubErr == nil {
		// Nothing matched up to durable (a gap): move on.
		last = durable
	}
	var ackErr error
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
wait:
	for _, sf := range futures {
		select {
		case ack := <-sf.f.Ok():
			u.acked.Add(1)
			if ack.Duplicate {
				u.duplicates.Add(1)
			}
			last = sf.seq
		case err := <-sf.f.Err():
			ackErr = err
			break wait
		case <-timeout.C:
			ackErr = errors.New("no PubAck within 30 s")
			break wait
		case <-ctx.Done():
			return len(futures), ctx.Err()
		}
	}
	if last >= next || (len(futures) == 0 && last > u.position.Load()) {
		if err := s.wal.SetCursor(uplinkCursor, last); err != nil {
			return len(futures), fmt.Errorf("moving the uplink cursor: %w", err)
		}
		u.position.Store(last)
	}
	if ackErr != nil {
		return len(futures), ackErr
	}
	return len(futures), pubErr
}

// subject fills the subject template for a frame.
func (u *uplink) subject(kind schema.Kind, buf []byte) string {
	var producer, device string
	switch kind {
	case schema.KindData:
		d := schema.RootDataFrame(buf)
		producer, device = string(d.Producer()), string(d.Device())
	case schema.KindCommand:
		c := schema.RootCommand(buf)
		producer, device = string(c.Target()), string(c.Device())
	default:
		producer, device = "sidecar", "ack"
	}
	return strings.NewReplacer("{gateway}", u.gateway, "{producer}", subjectToken(producer), "{device}", subjectToken(device),
		"{kind}", kind.String()).Replace(u.cfg.UplinkSubject)
}

// subjectToken makes s one NATS subject token: no dots, spaces or
// wildcards; "_" if empty.
func subjectToken(s string) string {
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', ' ', '\t', '\r', '\n', '*', '>':
			return '_'
		}
		return r
	}, s)
}

// UplinkStatus is the uplink part of Status.
type UplinkStatus struct {
	Servers    string  `json:"servers"`
	Stream     string  `json:"stream"`
	Connected  bool    `json:"connected"`
	Position   uint64  `json:"position"` // every frame up to it is in JetStream
	LagFrames  uint64  `json:"lag_frames"`
	LagSeconds float64 `json:"lag_seconds"`
	Published  uint64  `json:"published"`
	Acked      uint64  `json:"acked"`
	Duplicates uint64  `json:"duplicates"`
	Errors     uint64  `json:"errors"`
	LastError  string  `json:"last_error,omitempty"`
}

func (u *uplink) status() *UplinkStatus {
	durable := u.s.wal.Durable()
	pos := u.position.Load()
	st := &UplinkStatus{Servers: u.cfg.UplinkServers, Stream: u.cfg.UplinkStream, Connected: u.connected.Load(), Position: pos,
		Published: u.published.Load(), Acked: u.acked.Load(), Duplicates: u.duplicates.Load(), Errors: u.errors.Load()}
	if durable > pos {
		st.LagFrames = durable - pos
		st.LagSeconds = time.Since(time.Unix(0, u.caughtUp.Load())).Seconds()
	}
	u.mu.Lock()
	st.LastError = u.lastErr
	u.mu.Unlock()
	return st
}
