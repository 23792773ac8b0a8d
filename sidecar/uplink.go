package sidecar

import (
	"context"
	"crypto/tls"
	"encoding/binary"
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
// Publishing and acks run side by side (at most max_inflight frames wait
// for their PubAck). After a failure it starts again, after a backoff, from
// the first frame not acknowledged; JetStream keeps the first copy of each
// message, so a frame that failed while later ones were stored is stored
// after them (order per producer holds unless a failure falls in the
// middle of the frames in flight).

// uplinkCursor is the uplink's durable cursor in the WAL.
const uplinkCursor = "uplink-nats"

// uplinkBackoffMax bounds the wait between failed rounds.
const uplinkBackoffMax = 5 * time.Second

// uplinkAckWait is how long the first frame not yet acknowledged may wait
// in flight before the uplink gives up the frames in flight and sends
// everything after the last acknowledged frame again (JetStream's
// duplicate window drops what it had stored). One check per cursor sync: a
// timer per message (nats.go's WithPublishAsyncTimeout) cost 12-16 % of
// the uplink's CPU.
var uplinkAckWait = 30 * time.Second

// errNoPubAck is the error of a round that checkAcks ended.
var errNoPubAck = errors.New("no PubAck from JetStream")

// maxPooledData: a message whose data buffer grew beyond it is not reused
// (a burst of large frames would otherwise keep its buffers).
const maxPooledData = 64 << 10

type uplink struct {
	s       *Sidecar
	cfg     Config
	log     *slog.Logger
	gateway string
	idBase  string // <gateway>-<WAL creation time>-
	// subjParts is the subject template, split once.
	subjParts []subjectPart
	// subjects caches filled templates by kind, producer and device (the
	// key built in subjKey); the uplink's goroutine only.
	subjects map[string]string
	subjKey  []byte

	connected  atomic.Bool
	published  atomic.Uint64
	acked      atomic.Uint64 // frames acknowledged by JetStream (duplicates included)
	duplicates atomic.Uint64
	errors     atomic.Uint64
	position   atomic.Uint64 // every frame up to it is acknowledged
	caughtUp   atomic.Int64  // Unix ns when position last reached the durable watermark

	mu      sync.Mutex
	lastErr string
	server  string // the server connected to, last

	tracker *ackTracker
	// msgs holds acknowledged messages for reuse (newMsg).
	msgs sync.Pool
	// ackPos and ackAt: the acknowledged position when the acks were
	// last seen moving (or nothing was in flight), and when; the uplink's
	// goroutine only.
	ackPos uint64
	ackAt  time.Time
	// sentMax is the highest sequence number published (the uplink's
	// goroutine only).
	sentMax uint64
	// failLog: when a failure was last logged (zero: none since the
	// position last moved) and how many were not logged since
	// (logFailure, advance; the uplink's goroutine only).
	failLog struct {
		at         time.Time
		suppressed int
	}

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
		idBase: gw + "-" + strconv.FormatInt(s.wal.Created(), 10) + "-", done: make(chan struct{}), subjParts: parseSubject(c.UplinkSubject)}
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

// setErr records a failure; changed reports whether it differs from the
// last error recorded.
func (u *uplink) setErr(err error) (changed bool) {
	u.errors.Add(1)
	u.mu.Lock()
	changed = u.lastErr != err.Error()
	u.lastErr = err.Error()
	u.mu.Unlock()
	return changed
}

func (u *uplink) setServer(url string) {
	u.mu.Lock()
	u.server = url
	u.mu.Unlock()
}

// noteConnErr records a failed connection attempt; the log gets a line
// when the error changes (not one per attempt).
func (u *uplink) noteConnErr(err error) {
	if err == nil {
		return
	}
	u.errors.Add(1)
	u.mu.Lock()
	changed := u.lastErr != err.Error()
	u.lastErr = err.Error()
	u.mu.Unlock()
	if changed {
		u.log.Error("uplink cannot connect to NATS; frames wait in the WAL and it keeps trying", "servers", u.cfg.UplinkServers, "err", err)
	}
}

func (u *uplink) options() ([]nats.Option, error) {
	c := u.cfg
	opts := []nats.Option{
		nats.Name("framebus " + u.gateway),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		// No reconnect buffer: a publish while disconnected fails at once,
		// and the uplink sends again from its last acknowledged frame
		// after the reconnect. Buffered publishes would be stored after
		// reconnecting while earlier ones in flight were lost: out of
		// order.
		nats.ReconnectBufSize(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.ConnectHandler(func(nc *nats.Conn) {
			u.setServer(nc.ConnectedUrlRedacted())
			u.connected.Store(true)
			u.log.Info("uplink connected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			u.setServer(nc.ConnectedUrlRedacted())
			u.connected.Store(true)
			u.log.Info("uplink reconnected", "server", nc.ConnectedUrlRedacted())
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if u.connected.Swap(false) {
				u.log.Warn("uplink disconnected; frames wait in the WAL", "err", err)
			}
		}),
		nats.ReconnectErrHandler(func(nc *nats.Conn, err error) {
			// Connection attempts that fail (also the first ones).
			u.noteConnErr(err)
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
	u.tracker = &ackTracker{u: u, done: map[uint64]bool{}}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(u.cfg.UplinkMaxInflight),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, ack *jetstream.PubAck) {
			u.tracker.onAck(m, ack)
			// nats.go (v1.55.0; check again when upgrading) serialises
			// the header and copies the data when it publishes, and drops
			// its pending entry before calling this handler, once per
			// message: the next publish reuses the message, its header
			// map and its data buffer.
			if cap(m.Data) > maxPooledData {
				m.Data = nil
			}
			u.msgs.Put(m)
		}),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) { u.tracker.onErr(m, err) }))
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
			u.noteConnErr(nc.LastError())
			backoff = min(max(2*backoff, 200*time.Millisecond), uplinkBackoffMax)
			continue
		}
		if !streamReady {
			if err := u.ensureStream(ctx, js); err != nil {
				u.logFailure(u.setErr(err), slog.LevelError, "uplink: stream not usable; retrying", "stream", u.cfg.UplinkStream, "err", err)
				backoff = min(max(2*backoff, 500*time.Millisecond), uplinkBackoffMax)
				continue
			}
			streamReady = true
		}
		if err := u.pump(ctx, nc, js); err != nil {
			if ctx.Err() != nil {
				return
			}
			changed := u.setErr(err)
			switch {
			case errors.Is(err, wal.ErrCorrupt):
				// It tries again after each backoff; one line says it.
				if changed {
					u.log.Error("uplink stops before a damaged WAL segment: JetStream has every frame before it and gets none after it. "+
						"Stop the sidecar, run `framebus wal verify`, then start it once with --wal-recover (docs/wal-recovery.md)", "after_seq", u.position.Load(), "err", err)
				}
			default:
				u.logFailure(changed, slog.LevelWarn, "uplink: forwarding failed; sending again after the last acknowledged frame", "after_seq", u.position.Load(), "err", err)
			}
			if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) {
				streamReady = false
			}
			backoff = min(max(2*backoff, 200*time.Millisecond), uplinkBackoffMax)
			continue
		}
		backoff = 0
	}
}

// uplinkRepeatLog bounds how often the same failure of the uplink is
// logged again while the uplink makes no progress: it retries every few
// seconds for as long as the failure lasts. A variable for tests.
var uplinkRepeatLog = time.Minute

// logFailure logs a failure of the uplink's loop: at once when it differs
// from the last one recorded (changed, from setErr) or when frames were
// acknowledged since the last line (a new incident), else at most every
// uplinkRepeatLog, with how many times it happened unlogged in between.
// The status's last_error and framebus_uplink_errors_total count every
// one; advance logs when the uplink forwards again.
func (u *uplink) logFailure(changed bool, level slog.Level, msg string, args ...any) {
	if !changed && !u.failLog.at.IsZero() && time.Since(u.failLog.at) < uplinkRepeatLog {
		u.failLog.suppressed++
		return
	}
	if u.failLog.suppressed > 0 {
		args = append(args, "not_logged_since_last_line", u.failLog.suppressed)
	}
	u.log.Log(context.Background(), level, msg+" (while it makes no progress, the same failure is logged again at most once a minute)", args...)
	u.failLog.at, u.failLog.suppressed = time.Now(), 0
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

// ackTracker follows the PubAcks (delivered by nats.go's async ack and
// error handlers, in any order): pos is the highest sequence number up to
// which every frame is acknowledged.
type ackTracker struct {
	u    *uplink
	mu   sync.Mutex
	pos  uint64
	done map[uint64]bool // acknowledged beyond pos
	err  error           // the first failure since reset
}

func (t *ackTracker) reset(pos uint64) {
	t.mu.Lock()
	t.pos, t.err = pos, nil
	clear(t.done)
	t.mu.Unlock()
}

func (t *ackTracker) onAck(m *nats.Msg, ack *jetstream.PubAck) {
	seq, ok := msgSeq(m)
	if !ok {
		return
	}
	t.u.acked.Add(1)
	if ack != nil && ack.Duplicate {
		t.u.duplicates.Add(1)
	}
	t.mark(seq)
}

// mark counts seq as done: acknowledged, or skipped by the pump.
func (t *ackTracker) mark(seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case seq == t.pos+1:
		t.pos++
		for t.done[t.pos+1] {
			delete(t.done, t.pos+1)
			t.pos++
		}
	case seq > t.pos:
		t.done[seq] = true
	}
}

func (t *ackTracker) onErr(m *nats.Msg, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if seq, ok := msgSeq(m); ok && seq <= t.pos {
		// A publish of an earlier round whose frame a later one sent
		// again and had acknowledged: nothing to do.
		return
	}
	if t.err == nil {
		t.err = err
	}
}

// msgSeq is the WAL sequence number a message carries.
func msgSeq(m *nats.Msg) (uint64, bool) {
	v := m.Header[seqHeader]
	if len(v) == 0 {
		return 0, false
	}
	seq, err := strconv.ParseUint(v[0], 10, 64)
	return seq, err == nil
}

func (t *ackTracker) state() (uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pos, t.err
}

// pump forwards frames from the uplink's position on until a publish
// fails, an ack reports an error, or ctx ends. PublishMsgAsync blocks at
// max_inflight pending; the acks arrive through the tracker, and the cursor
// follows its acknowledged prefix (every 50 ms, and when caught up). The
// next call starts again after the last acknowledged frame.
func (u *uplink) pump(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) error {
	s := u.s
	// A reconnect ends the pump: publishes in flight on the old
	// connection may be lost while later ones are stored, so everything
	// after the last acknowledged frame is sent again, in order.
	reconnects := nc.Stats().Reconnects
	// Acks that arrived after the last round ended (it may end before
	// its last publishes are acknowledged, e.g. at a WAL read error) move
	// the position first: the tracker's position is an acknowledged
	// prefix, and sending those frames again would only make duplicates
	// (stored again once JetStream's duplicate window has passed).
	acked, _ := u.tracker.state()
	if err := u.advance(acked); err != nil {
		return err
	}
	u.tracker.reset(u.position.Load())
	next := u.position.Load() + 1
	var enc, idBuf []byte
	lastSet := time.Now()
	syncCursor := func() error {
		pos, err := u.tracker.state()
		if serr := u.advance(pos); serr != nil {
			return serr
		}
		now := time.Now()
		lastSet = now
		if pos >= s.wal.Durable() {
			u.caughtUp.Store(now.UnixNano())
		}
		if err == nil {
			err = u.checkAcks(js, pos, now)
		}
		return err
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for ctx.Err() == nil {
		if err := syncCursor(); err != nil {
			return err
		}
		commit := s.commitSignal()
		durable := s.wal.Durable()
		if next > durable {
			select {
			case <-ctx.Done():
			case <-commit:
			case <-tick.C:
			}
			continue
		}
		var pubErr error
		err := s.wal.Iterate(next, func(seq uint64, f wal.Frame) error {
			if seq > durable {
				return errStopIter
			}
			// One string for the message id and, its tail, the sequence.
			idBuf = strconv.AppendUint(append(idBuf[:0], u.idBase...), seq, 10)
			id := string(idBuf)
			m := u.newMsg()
			m.Subject = u.subject(schema.Kind(f.Kind), f.Data)
			m.Header[jetstream.MsgIDHeader][0] = id
			m.Header[seqHeader][0] = id[len(u.idBase):]
			if u.cfg.UplinkPayload == "json" {
				var err error
				if enc, err = schema.AppendDeliveredJSON(enc[:0], seq, schema.Kind(f.Kind), f.Data); err != nil {
					// The WAL holds verified frames; skip one that is not.
					u.log.Error("uplink: frame not forwarded: no JSON for it", "seq", seq, "err", err)
					u.msgs.Put(m)
					u.tracker.mark(seq)
					next = seq + 1
					return nil
				}
				m.Header["Content-Type"] = jsonContentType
				m.Data = append(m.Data[:0], enc...)
			} else {
				m.Header["Content-Type"] = contentTypes[schema.Kind(f.Kind)]
				// A copy: f.Data is valid only in this callback, and
				// JetStream may publish the message again later.
				m.Data = append(m.Data[:0], f.Data...)
			}
			if nc.Stats().Reconnects != reconnects || !nc.IsConnected() {
				pubErr = errors.New("the NATS connection was lost: sending again after the last acknowledged frame")
				return errStopIter
			}
			if _, err := u.tracker.state(); err != nil {
				// Stop at the first failure: what follows is sent again
				// after the last acknowledged frame, in order.
				pubErr = err
				return errStopIter
			}
			if _, err := js.PublishMsgAsync(m); err != nil {
				pubErr = err
				return errStopIter
			}
			u.published.Add(1)
			u.sentMax = max(u.sentMax, seq)
			next = seq + 1
			if time.Since(lastSet) > 50*time.Millisecond {
				if err := syncCursor(); err != nil {
					pubErr = err
					return errStopIter
				}
			}
			return nil
		})
		if pubErr != nil {
			if err := syncCursor(); errors.Is(err, errNoPubAck) {
				pubErr = err // the cause of the stalled publish
			}
			return pubErr
		}
		if err != nil && !errors.Is(err, errStopIter) {
			if ctx.Err() != nil {
				break
			}
			// Let the publishes in flight be acknowledged first (for a
			// while): the next round then starts after them instead of
			// sending them again.
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(5 * time.Second):
			case <-ctx.Done():
			}
			syncCursor()
			return fmt.Errorf("reading the WAL: %w", err)
		}
		if first := s.wal.FirstSeq(); first > next {
			// Retention deleted frames the uplink had not sent
			// (cursor_policy drop): the WAL counts them on the cursor.
			u.log.Warn("uplink: retention deleted frames before they were forwarded", "from_seq", next, "to_seq", first-1)
			u.tracker.mu.Lock()
			if u.tracker.pos < first-1 {
				u.tracker.pos = first - 1
			}
			u.tracker.mu.Unlock()
			next = first
		}
	}
	syncCursor()
	return nil
}

// advance moves the position and the durable cursor to pos, an
// acknowledged prefix, when it is ahead of them.
func (u *uplink) advance(pos uint64) error {
	if pos > u.position.Load() {
		u.position.Store(pos)
		if !u.failLog.at.IsZero() {
			// The end of the failures logFailure saw; the next one is
			// a new incident, logged at once.
			args := []any{"acked_seq", pos}
			if u.failLog.suppressed > 0 {
				args = append(args, "failures_not_logged", u.failLog.suppressed)
			}
			u.log.Info("uplink forwards again", args...)
			u.failLog.at, u.failLog.suppressed = time.Time{}, 0
		}
		if err := u.s.wal.SetCursor(uplinkCursor, pos); err != nil {
			return fmt.Errorf("moving the uplink cursor: %w", err)
		}
	}
	return nil
}

// checkAcks fails the publishes in flight when the acknowledged position
// pos has not moved for uplinkAckWait while publishes wait (the first frame
// not acknowledged has waited that long: its reply lost, a server that
// stopped answering without dropping the connection): they would otherwise
// hold their max_inflight slots and the cursor for ever. The error handler
// then sees them fail, and the next round sends everything after pos
// again. The clock runs across rounds: a round that ends because its
// publishes stall (max_inflight full of unanswered ones) does not restart
// it.
//
// Every frame ever published acknowledged (pos ≥ sentMax) while publishes
// still wait: those are of earlier rounds (a reply lost, then the frame
// sent again and acknowledged). They are given up at once and quietly
// (the tracker ignores errors for acknowledged frames): they would hold
// max_inflight slots.
func (u *uplink) checkAcks(js jetstream.JetStream, pos uint64, now time.Time) error {
	if pos >= u.sentMax && js.PublishAsyncPending() > 0 {
		js.CleanupPublisher()
	}
	if pos != u.ackPos || u.ackAt.IsZero() || js.PublishAsyncPending() == 0 {
		u.ackPos, u.ackAt = pos, now
		return nil
	}
	if wait := now.Sub(u.ackAt); wait > uplinkAckWait {
		inflight := js.PublishAsyncPending()
		js.CleanupPublisher()
		u.ackAt = now
		return fmt.Errorf("%w for %v with %d frames in flight after frame %d: sending them again", errNoPubAck, wait.Round(time.Second), inflight, pos)
	}
	return nil
}

// newMsg returns a message to publish: one nats.go has acknowledged, or a
// new one. Its header map has the message id and sequence entries, one
// value each, for the caller to set; it sets Content-Type and Data.
func (u *uplink) newMsg() *nats.Msg {
	if m, ok := u.msgs.Get().(*nats.Msg); ok {
		return m
	}
	return &nats.Msg{Header: nats.Header{jetstream.MsgIDHeader: make([]string, 1), seqHeader: make([]string, 1), "Content-Type": nil}}
}

// contentTypes and jsonContentType are the Content-Type header values, as
// header value slices shared by every message (nats.go only reads them).
var (
	contentTypes = map[schema.Kind][]string{
		schema.KindData:    {"application/x-flatbuffers; kind=data"},
		schema.KindCommand: {"application/x-flatbuffers; kind=command"},
		schema.KindAck:     {"application/x-flatbuffers; kind=ack"},
	}
	jsonContentType = []string{"application/json"}
)

// seqHeader carries a message's WAL sequence number.
const seqHeader = "Framebus-Seq"

// subjectPart is a piece of the subject template: literal text, or a
// placeholder ({gateway}, {producer}, {device}, {kind}).
type subjectPart struct {
	text string
	ph   string
}

// parseSubject splits the template once.
func parseSubject(tpl string) []subjectPart {
	var parts []subjectPart
	for tpl != "" {
		i := strings.IndexByte(tpl, '{')
		j := strings.IndexByte(tpl[max(i, 0):], '}')
		if i < 0 || j < 0 {
			parts = append(parts, subjectPart{text: tpl})
			break
		}
		name := tpl[i : i+j+1]
		switch name {
		case "{gateway}", "{producer}", "{device}", "{kind}":
			if i > 0 {
				parts = append(parts, subjectPart{text: tpl[:i]})
			}
			parts = append(parts, subjectPart{ph: name})
		default:
			parts = append(parts, subjectPart{text: tpl[:i+j+1]})
		}
		tpl = tpl[i+j+1:]
	}
	return parts
}

// subject fills the subject template for a frame.
func (u *uplink) subject(kind schema.Kind, buf []byte) string {
	var producer, device []byte
	switch kind {
	case schema.KindData:
		d := schema.RootDataFrame(buf)
		producer, device = d.Producer(), d.Device()
	case schema.KindCommand:
		c := schema.RootCommand(buf)
		producer, device = c.Target(), c.Device()
	default:
		producer, device = []byte("sidecar"), []byte("ack")
	}
	// A gateway's frames come from a few producers and devices: look the
	// subject up rather than build a string per frame.
	key := append(binary.AppendUvarint(binary.AppendUvarint(u.subjKey[:0], uint64(kind)), uint64(len(producer))), producer...)
	key = append(key, device...)
	u.subjKey = key
	if subj, ok := u.subjects[string(key)]; ok {
		return subj
	}
	subj := u.fillSubject(kind, producer, device)
	if len(u.subjects) >= subjectCacheSize || u.subjects == nil {
		u.subjects = make(map[string]string)
	}
	u.subjects[string(key)] = subj
	return subj
}

// subjectCacheSize bounds the subject cache; it starts again empty when
// full.
const subjectCacheSize = 4096

// fillSubject fills the subject template.
func (u *uplink) fillSubject(kind schema.Kind, producer, device []byte) string {
	var b strings.Builder
	b.Grow(64)
	for _, p := range u.subjParts {
		switch p.ph {
		case "":
			b.WriteString(p.text)
		case "{gateway}":
			b.WriteString(u.gateway)
		case "{producer}":
			writeToken(&b, producer)
		case "{device}":
			writeToken(&b, device)
		case "{kind}":
			b.WriteString(kind.String())
		}
	}
	return b.String()
}

// writeToken writes s as one subject token (see subjectToken).
func writeToken(b *strings.Builder, s []byte) {
	if len(s) == 0 {
		b.WriteByte('_')
		return
	}
	for _, c := range s {
		switch c {
		case '.', ' ', '\t', '\r', '\n', '*', '>':
			c = '_'
		}
		b.WriteByte(c)
	}
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
	Server     string  `json:"server,omitempty"` // the server it is (or was last) connected to
	Position   uint64  `json:"position"`         // every frame up to it is in JetStream
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
	st.LastError, st.Server = u.lastErr, u.server
	u.mu.Unlock()
	return st
}
