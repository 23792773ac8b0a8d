package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
	"github.com/framebus/framebus/wal"
)

// The HTTP API, for applications that cannot link Go (on http_addr,
// loopback by default):
//
//	GET  /v1/frames?from=…&producer=…&device=…&tag=…&kind=…   Server-Sent Events
//	POST /v1/commands[?stream=1][&timeout=2s]                  a command; its final ack (or every stage)
//	GET  /v1/status                                            the bus's state as JSON
//	DELETE /v1/cursors/NAME                                    delete a durable cursor (retention stops waiting for it)
//
// Frames are events with id = WAL sequence number and data = the JSON of
// docs/json.md (what `framebus tail --json` prints); a client that
// reconnects with Last-Event-ID resumes right after that frame.

// sseBufBytes bounds the events an SSE feeder buffers before it writes them
// out (outside the WAL's read transaction).
const sseBufBytes = 256 << 10

// sseKeepAlive is how often an idle event stream gets a comment line, so
// that proxies and clients see it is alive.
const sseKeepAlive = 15 * time.Second

// httpWriteTimeout bounds one write to an HTTP client: a client that stops
// reading is disconnected.
const httpWriteTimeout = 30 * time.Second

// maxCommandBody bounds a POST /v1/commands body.
const maxCommandBody = 64 << 10

type httpAPI struct {
	s      *Sidecar
	srv    *http.Server
	nextID atomic.Int64
}

func (s *Sidecar) serveHTTP(addr string) error {
	if addr == "" || addr == "off" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	a := &httpAPI{s: s}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/frames", a.frames)
	mux.HandleFunc("POST /v1/commands", a.commands)
	mux.HandleFunc("GET /v1/status", a.status)
	mux.HandleFunc("DELETE /v1/cursors/{name}", a.deleteCursor)
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	s.api = a
	s.apiAddr = ln.Addr().String()
	go func() {
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("HTTP API listener failed", "err", err)
		}
	}()
	return nil
}

func (a *httpAPI) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	a.srv.Shutdown(ctx)
	a.srv.Close()
}

func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	b, _ := json.Marshal(map[string]string{"error": fmt.Sprintf(format, args...)})
	w.Write(append(b, '\n'))
}

// parseFilter reads producer, device, tag and kind (repeated or a comma
// list: data, command, ack) from the query.
func parseFilter(r *http.Request) (shm.Filter, error) {
	q := r.URL.Query()
	f := shm.Filter{Producer: q.Get("producer"), Device: q.Get("device"), Tag: q.Get("tag")}
	for _, v := range q["kind"] {
		for _, k := range strings.Split(v, ",") {
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "data":
				f.Kinds = append(f.Kinds, uint16(schema.KindData))
			case "command":
				f.Kinds = append(f.Kinds, uint16(schema.KindCommand))
			case "ack":
				f.Kinds = append(f.Kinds, uint16(schema.KindAck))
			case "":
			default:
				return f, fmt.Errorf("kind %q: want data, command or ack", k)
			}
		}
	}
	return f, nil
}

// frames serves GET /v1/frames as Server-Sent Events.
func (a *httpAPI) frames(w http.ResponseWriter, r *http.Request) {
	s := a.s
	f, err := parseFilter(r)
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	hello := shm.Message{Filter: &f, From: shm.FromLatest}
	from := r.URL.Query().Get("from")
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		from = id
		seq, err := strconv.ParseUint(id, 10, 64)
		if err != nil {
			httpError(w, http.StatusBadRequest, "Last-Event-ID %q: want a WAL sequence number", id)
			return
		}
		hello.From, hello.Seq = shm.FromSeq, seq+1
	} else {
		switch {
		case from == "" || from == "latest":
		case from == "earliest":
			hello.From = shm.FromEarliest
		case strings.HasPrefix(from, "cursor:"):
			httpError(w, http.StatusBadRequest, "from=%s: durable cursors need acks, which an event stream cannot send; resume with Last-Event-ID instead", from)
			return
		default:
			seq, err := strconv.ParseUint(from, 10, 64)
			if err != nil {
				httpError(w, http.StatusBadRequest, "from=%q: want earliest, latest or a WAL sequence number", from)
				return
			}
			hello.From, hello.Seq = shm.FromSeq, seq
		}
	}
	limit := uint64(0)
	if l := r.URL.Query().Get("limit"); l != "" {
		if limit, err = strconv.ParseUint(l, 10, 64); err != nil {
			httpError(w, http.StatusBadRequest, "limit=%q: want a number", l)
			return
		}
	}
	if f.Tag != "" {
		if _, err := matchGlobCheck(f.Tag); err != nil {
			httpError(w, http.StatusBadRequest, "tag glob %q: %v", f.Tag, err)
			return
		}
	}
	next, err := s.startSeq(&hello)
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if last := s.wal.LastSeq(); next > last+1 {
		httpError(w, http.StatusConflict, "start %d is beyond the WAL's last sequence number %d (was the WAL reset?): reconnect without Last-Event-ID, or from=earliest", next, last)
		return
	}
	if !s.trackHTTP() {
		httpError(w, http.StatusServiceUnavailable, "the sidecar is stopping; retry when it is back")
		return
	}
	defer s.feeders.Done()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Framebus-Start-Seq", strconv.FormatUint(next, 10))
	w.WriteHeader(http.StatusOK)
	rc.Flush()

	id := a.nextID.Add(1)
	sub := &subscriber{slot: -int(id), label: "http:" + strconv.FormatInt(id, 10), filter: f}
	sub.ctx, sub.cancel = context.WithCancel(r.Context())
	defer sub.cancel()
	sk := &sseSink{w: w, rc: rc, limit: limit, cancel: sub.cancel}
	sub.sink = sk
	sub.next.Store(next)
	sub.caughtUp.Store(time.Now().UnixNano())
	s.subs.add(sub)
	defer s.subs.remove(sub)
	s.log.Info("HTTP event stream opened", "subscriber", sub.label, "remote", r.RemoteAddr, "from_seq", next, "filter", filterString(f))
	kaDone := make(chan struct{})
	go func() {
		defer close(kaDone)
		sk.keepAlive(sub.ctx)
	}()
	defer func() {
		sub.cancel()
		<-kaDone // it writes to w: finish before the handler returns
	}()
	s.feed(sub, s.log.With("subscriber", sub.label))
	s.log.Info("HTTP event stream closed", "subscriber", sub.label, "delivered", sub.delivered.Load(), "lost", sub.lost.Load())
}

func matchGlobCheck(glob string) (bool, error) {
	return matchGlob(glob, "")
}

// sseSink buffers events and writes them to the HTTP client.
type sseSink struct {
	mu     sync.Mutex // buf and writes (keepAlive writes too)
	w      io.Writer
	rc     *http.ResponseController
	buf    []byte
	limit  uint64 // stop after this many events (0: no limit)
	sent   uint64
	cancel context.CancelFunc
	err    error
}

func (k *sseSink) put(seq uint64, f wal.Frame) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.buf) >= sseBufBytes || (k.limit > 0 && k.sent >= k.limit) {
		return false
	}
	n := len(k.buf)
	k.buf = append(k.buf, "id: "...)
	k.buf = strconv.AppendUint(k.buf, seq, 10)
	k.buf = append(k.buf, "\ndata: "...)
	var err error
	if k.buf, err = schema.AppendDeliveredJSON(k.buf, seq, schema.Kind(f.Kind), f.Data); err != nil {
		k.buf = k.buf[:n] // the WAL holds only verified frames; skip one that is not
		return true
	}
	k.buf = append(k.buf, "\n\n"...)
	k.sent++
	return true
}

func (k *sseSink) writeLocked() error {
	if k.err != nil {
		return k.err
	}
	if len(k.buf) == 0 {
		return nil
	}
	k.rc.SetWriteDeadline(time.Now().Add(httpWriteTimeout))
	if _, err := k.w.Write(k.buf); err != nil {
		k.err = err
		return err
	}
	k.buf = k.buf[:0]
	if err := k.rc.Flush(); err != nil {
		k.err = err
	}
	return k.err
}

func (k *sseSink) wait(ctx context.Context) error {
	k.mu.Lock()
	err := k.writeLocked()
	done := k.limit > 0 && k.sent >= k.limit
	k.mu.Unlock()
	if err == nil && done {
		k.cancel()
		return context.Canceled
	}
	return err
}

func (k *sseSink) flush(ctx context.Context) error { return k.wait(ctx) }

func (k *sseSink) signal() {}

func (k *sseSink) keepAlive(ctx context.Context) {
	t := time.NewTicker(sseKeepAlive)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		k.mu.Lock()
		if len(k.buf) == 0 {
			k.buf = append(k.buf, ": keepalive\n\n"...)
		}
		err := k.writeLocked()
		k.mu.Unlock()
		if err != nil {
			k.cancel()
			return
		}
	}
}

// commands serves POST /v1/commands: the body is one command in the JSON
// mapping (docs/json.md; "id" is ignored: the sidecar assigns it). The
// reply is the final ack's JSON, or with ?stream=1 every stage as a JSON
// line (application/x-ndjson). ?timeout=2s sets the deadline of a command
// that has none (default 30 s).
func (a *httpAPI) commands(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxCommandBody+1))
	if err != nil {
		httpError(w, http.StatusBadRequest, "reading the body: %v", err)
		return
	}
	if len(body) > maxCommandBody {
		httpError(w, http.StatusRequestEntityTooLarge, "command over %d bytes", maxCommandBody)
		return
	}
	kind, buf, err := schema.ParseJSON(body)
	if err == nil && kind != schema.KindCommand {
		err = fmt.Errorf("kind %q: POST /v1/commands takes a command", kind)
	}
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v (see docs/json.md for the command mapping)", err)
		return
	}
	if t := r.URL.Query().Get("timeout"); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d <= 0 {
			httpError(w, http.StatusBadRequest, "timeout=%q: want a duration such as 2s", t)
			return
		}
		var cmd schema.Command
		if err := schema.DecodeCommand(buf, &cmd); err == nil && cmd.DeadlineNs == 0 {
			cmd.DeadlineNs = time.Now().Add(d).UnixNano()
			buf = schema.NewEncoder(0).EncodeCommand(&cmd)
		}
	}
	stream := r.URL.Query().Get("stream") == "1"
	// Intermediate stages may be dropped for a client that does not keep
	// up; the final one has a slot of its own.
	stages := make(chan []byte, 8)
	final := make(chan []byte, 1)
	if _, err := a.s.router.submit(buf, func(ack []byte) {
		b := append([]byte(nil), ack...)
		if a := schema.RootCommandAck(b); schema.AckStage(a.Stage()) != schema.AckAccepted {
			final <- b
			return
		}
		select {
		case stages <- b:
		default:
		}
	}); err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	rc := http.NewResponseController(w)
	if stream {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		rc.Flush()
	}
	for {
		var ack []byte
		select {
		case <-r.Context().Done():
			return
		case ack = <-stages:
		case ack = <-final:
		}
		{
			a := schema.RootCommandAck(ack)
			final := schema.AckStage(a.Stage()) != schema.AckAccepted
			line, err := schema.AppendJSON(nil, schema.KindAck, ack)
			if err != nil {
				continue
			}
			line = append(line, '\n')
			if stream {
				w.Write(line)
				rc.Flush()
			} else if final {
				w.Header().Set("Content-Type", "application/json")
				w.Write(line)
			}
			if final {
				return
			}
		}
	}
}

// deleteCursor serves DELETE /v1/cursors/NAME.
func (a *httpAPI) deleteCursor(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s := a.s
	if _, ok := s.wal.Cursor(name); !ok {
		httpError(w, http.StatusNotFound, "no durable cursor %q (GET /v1/status lists them)", name)
		return
	}
	if s.subs.hasCursor(name) {
		httpError(w, http.StatusConflict, "cursor %q is in use by a subscription: close it first", name)
		return
	}
	s.wal.DeleteCursor(name)
	s.log.Info("durable cursor deleted", "cursor", name, "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "application/json")
	b, _ := json.Marshal(map[string]string{"deleted": name})
	w.Write(append(b, '\n'))
}

// Status is the JSON of GET /v1/status.
type Status struct {
	Name        string                    `json:"name"`
	Epoch       uint64                    `json:"epoch"`
	Preset      string                    `json:"preset"`
	Paused      bool                      `json:"paused"`
	Degraded    bool                      `json:"degraded"`
	WAL         StatusWAL                 `json:"wal"`
	Producers   []StatusProducer          `json:"producers"`
	Subscribers []StatusSubscriber        `json:"subscribers"`
	Cursors     map[string]wal.CursorInfo `json:"cursors"`
	Commands    StatusCommands            `json:"commands"`
	Uplink      *UplinkStatus             `json:"uplink,omitempty"` // nil when the uplink is off
}

// StatusWAL is the WAL part of Status.
type StatusWAL struct {
	Dir            string `json:"dir"`
	FirstSeq       uint64 `json:"first_seq"`
	LastSeq        uint64 `json:"last_seq"`
	DurableSeq     uint64 `json:"durable_seq"`
	StoredBytes    int64  `json:"stored_bytes"`
	FootprintBytes int64  `json:"footprint_bytes"`
	MaxBytes       int64  `json:"max_bytes"`
	RetentionHeld  bool   `json:"retention_held"`
}

// StatusProducer is one ingress ring.
type StatusProducer struct {
	Slot      int    `json:"slot"`
	Name      string `json:"producer"`
	Pid       int    `json:"pid"`
	State     string `json:"state"`
	RingBytes int    `json:"ring_bytes"`
	UsedBytes uint64 `json:"used_bytes"`
	Paused    bool   `json:"paused"`
	Published uint64 `json:"published"`
	Rejected  uint64 `json:"rejected"`
}

// StatusSubscriber is one subscription.
type StatusSubscriber struct {
	Name      string `json:"name"`
	Cursor    string `json:"cursor,omitempty"`
	Live      bool   `json:"live"`
	Filter    string `json:"filter"`
	NextSeq   uint64 `json:"next_seq"`
	LagFrames uint64 `json:"lag_frames"`
	Delivered uint64 `json:"delivered"`
	Lost      uint64 `json:"lost"`
	// Error is why it cannot read the WAL now (a damaged segment, an I/O
	// error); empty when it can.
	Error string `json:"error,omitempty"`
}

// StatusCommands is the command router's state.
type StatusCommands struct {
	InFlight int               `json:"in_flight"`
	Targets  map[string]string `json:"targets"` // target → producer serving it
}

func (a *httpAPI) status(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	b, _ := json.MarshalIndent(a.s.Status(), "", "  ")
	w.Write(append(b, '\n'))
}

// Status returns the bus's state (GET /v1/status).
func (s *Sidecar) Status() Status {
	flags := s.seg.Flags()
	st := s.wal.Stats()
	out := Status{Name: s.cfg.Name, Epoch: s.epoch, Preset: s.cfg.Preset, Paused: flags&shm.FlagPause != 0, Degraded: flags&shm.FlagDegraded != 0,
		WAL: StatusWAL{Dir: s.cfg.WALPath(), FirstSeq: s.wal.FirstSeq(), LastSeq: s.wal.LastSeq(), DurableSeq: s.wal.Durable(),
			StoredBytes: st.StoredBytes, FootprintBytes: st.FootprintBytes, MaxBytes: s.cfg.WALMaxBytes, RetentionHeld: st.RetentionHeld},
		Producers: []StatusProducer{}, Subscribers: []StatusSubscriber{}, Cursors: s.wal.Cursors()}
	for _, p := range s.snapshot() {
		out.Producers = append(out.Producers, StatusProducer{Slot: p.slot, Name: p.name, Pid: p.pid, State: stateName(p.getState()),
			RingBytes: p.ring.Capacity(), UsedBytes: p.ring.Used(), Paused: s.seg.RingFlags(p.slot)&shm.FlagPause != 0,
			Published: p.published.Load(), Rejected: p.rejected.Load()})
	}
	durable := s.wal.Durable()
	for _, sub := range s.subs.list() {
		top := durable
		if sub.live {
			top = s.wal.LastSeq()
		}
		ss := StatusSubscriber{Name: sub.label, Cursor: sub.cursor, Live: sub.live, Filter: filterString(sub.filter), NextSeq: sub.next.Load(),
			Delivered: sub.delivered.Load(), Lost: sub.lost.Load()}
		if ss.NextSeq <= top {
			ss.LagFrames = top - ss.NextSeq + 1
		}
		if e := sub.readErr.Load(); e != nil {
			ss.Error = *e
		}
		out.Subscribers = append(out.Subscribers, ss)
	}
	if s.uplink != nil {
		out.Uplink = s.uplink.status()
	}
	s.router.mu.Lock()
	out.Commands = StatusCommands{InFlight: len(s.router.inflight), Targets: map[string]string{}}
	for t, srv := range s.router.targets {
		out.Commands.Targets[t] = srv.p.name
	}
	s.router.mu.Unlock()
	return out
}
