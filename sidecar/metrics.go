package sidecar

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
	"github.com/framebus/framebus/wal"
)

// metrics holds the sidecar's Prometheus metrics in a private registry.
// Counters the drain loop updates are ordinary client_golang metrics;
// everything that describes current state (rings, flags, the WAL) is read at
// scrape time by the collector below, so the hot path does not maintain it.
type metrics struct {
	s   *Sidecar
	reg *prometheus.Registry
	srv *http.Server

	rejected       prometheus.Counter
	corrupt        prometheus.Counter
	protocolErrors prometheus.Counter
	repairs        prometheus.Counter
	attaches       prometheus.Counter
	detaches       prometheus.Counter
	walErrors      prometheus.Counter
	walFlush       prometheus.Histogram
	batchSize      prometheus.Histogram
	batchSend      prometheus.Histogram
	batchFlush     prometheus.Histogram
	committed      prometheus.Counter
	committedBytes prometheus.Counter

	commands        prometheus.Counter
	commandsFinal   *prometheus.CounterVec
	commandLatency  prometheus.Histogram
	commandsExpired prometheus.Counter
	lateAcks        prometheus.Counter
}

func newMetrics(s *Sidecar) *metrics {
	m := &metrics{s: s, reg: prometheus.NewRegistry()}
	f := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		m.reg.MustRegister(c)
		return c
	}
	m.rejected = f("framebus_frames_rejected_total", "Frames rejected and not written: failed schema verification, an unknown record type, or larger than a quarter of max_memory_bytes.")
	m.corrupt = f("framebus_rings_corrupt_total", "Rings whose producer broke the record protocol and was detached.")
	m.protocolErrors = f("framebus_protocol_errors_total", "Malformed or unexpected control messages on the attach socket.")
	m.repairs = f("framebus_segment_repairs_total", "Header and ring directory words of the segment that another process overwrote and the sidecar restored.")
	m.attaches = f("framebus_attaches_total", "Driver attachments, including re-attachments after a restart.")
	m.detaches = f("framebus_detaches_total", "Rings freed after their driver left and they were drained.")
	m.walErrors = f("framebus_wal_commit_errors_total", "WAL commits that failed (each is retried; frames stay queued).")
	m.committed = f("framebus_wal_frames_total", "Frames committed to the WAL.")
	m.committedBytes = f("framebus_wal_written_bytes_total", "Frame bytes committed to the WAL.")
	h := func(name, help string, buckets []float64) prometheus.Histogram {
		x := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
		m.reg.MustRegister(x)
		return x
	}
	// Buckets as the seed's: WAL flush 0.1 ms … 100 ms, batch send 0.01 … 10 ms.
	m.walFlush = h("framebus_wal_flush_duration_seconds", "Duration of one WAL group commit, fsync included.",
		[]float64{0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1})
	m.batchSize = h("framebus_batch_size_frames", "Frames per drained batch appended to the WAL.",
		[]float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000})
	m.batchSend = h("framebus_batch_send_duration_seconds", "Time to append one drained batch to the WAL queue.",
		[]float64{0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01})
	// The seed's batch flush buckets: 0.01 … 25 ms.
	m.batchFlush = h("framebus_batch_flush_duration_seconds", "Time to drain one batch from a ring: poll, copy, verify and append to the WAL queue.",
		[]float64{0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025})
	m.commands = f("framebus_commands_total", "Commands received from requesters.")
	m.commandsExpired = f("framebus_commands_expired_total", "Commands the sidecar expired because no final ack came before their deadline.")
	m.lateAcks = f("framebus_command_late_acks_total", "Acks for commands no longer in flight (after EXPIRED or FAILED) or unknown.")
	m.commandsFinal = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "framebus_commands_finished_total",
		Help: "Commands by final stage (COMPLETED, REJECTED, EXPIRED, FAILED)."}, []string{"stage"})
	m.reg.MustRegister(m.commandsFinal)
	m.commandLatency = h("framebus_command_duration_seconds", "Time from a command's arrival to its final ack.",
		[]float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30})
	m.reg.MustRegister(stateCollector{s})
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observeCommand(stage schema.AckStage, d time.Duration) {
	m.commandsFinal.WithLabelValues(stage.String()).Inc()
	m.commandLatency.Observe(d.Seconds())
}

func (m *metrics) observeCommit(c wal.Commit) {
	m.walFlush.Observe(c.Duration.Seconds())
	m.committed.Add(float64(c.Frames))
	m.committedBytes.Add(float64(c.Bytes))
}

// serve starts the HTTP listener for /metrics, /healthz and /readyz.
func (m *metrics) serve(addr string) error {
	if addr == "" || addr == "off" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if m.s.seg.Flags()&(shm.FlagDegraded|shm.FlagShuttingDown) != 0 {
			http.Error(w, "degraded or shutting down", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	m.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.s.log.Error("metrics listener failed", "err", err)
		}
	}()
	return nil
}

func (m *metrics) close() {
	if m.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		m.srv.Shutdown(ctx)
	}
}

// stateCollector reads rings, flags and the WAL at scrape time.
type stateCollector struct{ s *Sidecar }

var (
	descRingUsed     = prometheus.NewDesc("framebus_ring_used_bytes", "Bytes of a ring between the sidecar's released position and the producer's tail.", []string{"producer", "slot"}, nil)
	descRingCap      = prometheus.NewDesc("framebus_ring_capacity_bytes", "Data capacity of a ring.", []string{"producer", "slot"}, nil)
	descPublished    = prometheus.NewDesc("framebus_frames_published_total", "Frames drained from a producer's ring into the WAL.", []string{"producer", "slot"}, nil)
	descDropped      = prometheus.NewDesc("framebus_frames_dropped_total", "Frames a driver dropped under its drop-newest policy, by reason, as counted by the driver in its ring.", []string{"producer", "slot", "reason"}, nil)
	descProdRejected = prometheus.NewDesc("framebus_producer_frames_rejected_total", "Frames of a producer that failed verification.", []string{"producer", "slot"}, nil)
	descProducers    = prometheus.NewDesc("framebus_producers", "Rings by state of their driver.", []string{"state"}, nil)
	descPaused       = prometheus.NewDesc("framebus_paused", "1 while the global PAUSE flag is raised.", nil, nil)
	descRingPaused   = prometheus.NewDesc("framebus_rings_paused", "Rings whose own PAUSE flag is raised.", nil, nil)
	descDegraded     = prometheus.NewDesc("framebus_degraded", "1 while WAL commits fail and frames are held in memory.", nil, nil)
	descBacklog      = prometheus.NewDesc("framebus_backlog_frames", "Frames appended to the WAL but not yet durable.", nil, nil)
	descBacklogBytes = prometheus.NewDesc("framebus_batch_memory_bytes", "Bytes of frames queued in memory for the WAL.", nil, nil)
	descDurable      = prometheus.NewDesc("framebus_wal_durable_sequence", "Highest WAL sequence committed (the durable watermark).", nil, nil)
	descLagFrames    = prometheus.NewDesc("framebus_durable_lag_frames", "Frames appended to the WAL but not yet committed (WAL sequence minus the durable watermark).", nil, nil)
	descLagSeconds   = prometheus.NewDesc("framebus_durable_lag_seconds", "While frames wait for a commit: time since the durable watermark last advanced; 0 when everything appended is durable.", nil, nil)
	descWALBytes     = prometheus.NewDesc("framebus_wal_bytes", "Frame bytes stored in the WAL after retention.", nil, nil)
	descSubLag       = prometheus.NewDesc("framebus_subscriber_lag_frames", "Committed frames a subscriber has not been handed yet (durable watermark minus its position).", []string{"subscriber"}, nil)
	descSubLagSec    = prometheus.NewDesc("framebus_subscriber_lag_seconds", "While a subscriber lags: time since it was last caught up with the durable watermark; 0 when caught up.", []string{"subscriber"}, nil)
	descSubDelivered = prometheus.NewDesc("framebus_subscriber_delivered_total", "Frames written to a subscriber's egress ring.", []string{"subscriber"}, nil)
	descSubLost      = prometheus.NewDesc("framebus_subscriber_lost_total", "Frames a subscriber will never receive: deleted by retention before it read them, or a live-only ring was full.", []string{"subscriber"}, nil)
	descUpConnected  = prometheus.NewDesc("framebus_uplink_connected", "1 while the uplink is connected to NATS.", nil, nil)
	descUpLag        = prometheus.NewDesc("framebus_uplink_lag_frames", "Durable frames not yet acknowledged by JetStream.", nil, nil)
	descUpLagSec     = prometheus.NewDesc("framebus_uplink_lag_seconds", "While the uplink lags: time since it was last caught up; 0 when caught up.", nil, nil)
	descUpPublished  = prometheus.NewDesc("framebus_uplink_published_total", "Frames published to JetStream, resends included.", nil, nil)
	descUpAcked      = prometheus.NewDesc("framebus_uplink_acked_total", "PubAcks received, duplicates included.", nil, nil)
	descUpDuplicates = prometheus.NewDesc("framebus_uplink_duplicates_total", "Resent frames JetStream's duplicate window dropped.", nil, nil)
	descUpErrors     = prometheus.NewDesc("framebus_uplink_errors_total", "Uplink errors: failed publishes and rounds, connection errors.", nil, nil)
	descCursorLost   = prometheus.NewDesc("framebus_cursor_lost_total", "Frames retention deleted before a durable cursor acked them (cursor_policy drop).", []string{"cursor"}, nil)
	// The WAL against its caps, for dashboards and alerts (deploy/).
	descWALFootprint = prometheus.NewDesc("framebus_wal_footprint_bytes", "Space the WAL's stored segments take in its file's pages: what retention keeps under wal_max_bytes.", nil, nil)
	descWALMax       = prometheus.NewDesc("framebus_wal_max_bytes", "The WAL's size cap (wal_max_bytes): retention deletes the oldest segments to keep framebus_wal_footprint_bytes under it.", nil, nil)
	descWALCursorMax = prometheus.NewDesc("framebus_wal_cursor_max_bytes", "With cursor_policy retain: the WAL footprint (cursor_max_bytes) at which unacked durable cursors make the sidecar raise PAUSE. Absent with cursor_policy drop.", nil, nil)
	descRetHeld      = prometheus.NewDesc("framebus_wal_retention_held", "1 while unacked durable cursors hold back retention (cursor_policy retain): the WAL grows past wal_max_bytes.", nil, nil)
	descRetDeleted   = prometheus.NewDesc("framebus_wal_retention_deleted_frames_total", "Frames retention deleted from the WAL (wal_max_bytes, wal_max_age) since the sidecar started.", nil, nil)
)

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRingUsed, descRingCap, descPublished, descDropped, descProdRejected, descProducers, descPaused,
		descRingPaused, descDegraded, descBacklog, descBacklogBytes, descDurable, descLagFrames, descLagSeconds, descWALBytes,
		descSubLag, descSubLagSec, descSubDelivered, descSubLost, descCursorLost,
		descWALFootprint, descWALMax, descWALCursorMax, descRetHeld, descRetDeleted,
		descUpConnected, descUpLag, descUpLagSec, descUpPublished, descUpAcked, descUpDuplicates, descUpErrors} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	states := map[string]float64{"attached": 0, "orphan": 0, "retiring": 0}
	paused := 0.0
	for _, p := range s.snapshot() {
		slot := strconv.Itoa(p.slot)
		ch <- prometheus.MustNewConstMetric(descRingUsed, prometheus.GaugeValue, float64(p.ring.Used()), p.name, slot)
		ch <- prometheus.MustNewConstMetric(descRingCap, prometheus.GaugeValue, float64(p.ring.Capacity()), p.name, slot)
		ch <- prometheus.MustNewConstMetric(descPublished, prometheus.CounterValue, float64(p.published.Load()), p.name, slot)
		ch <- prometheus.MustNewConstMetric(descProdRejected, prometheus.CounterValue, float64(p.rejected.Load()), p.name, slot)
		for _, r := range []shm.DropReason{shm.DropRingFull, shm.DropPaused} {
			ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(p.ring.Dropped(r)), p.name, slot, r.String())
		}
		states[stateName(p.getState())]++
		if s.seg.RingFlags(p.slot)&shm.FlagPause != 0 {
			paused++
		}
	}
	for st, n := range states {
		ch <- prometheus.MustNewConstMetric(descProducers, prometheus.GaugeValue, n, st)
	}
	flags := s.seg.Flags()
	ch <- prometheus.MustNewConstMetric(descPaused, prometheus.GaugeValue, b2f(flags&shm.FlagPause != 0))
	ch <- prometheus.MustNewConstMetric(descRingPaused, prometheus.GaugeValue, paused)
	ch <- prometheus.MustNewConstMetric(descDegraded, prometheus.GaugeValue, b2f(flags&shm.FlagDegraded != 0))
	frames, bytes := s.wal.Pending()
	ch <- prometheus.MustNewConstMetric(descBacklog, prometheus.GaugeValue, float64(frames))
	ch <- prometheus.MustNewConstMetric(descBacklogBytes, prometheus.GaugeValue, float64(bytes))
	durable, last := s.wal.Durable(), s.wal.LastSeq()
	ch <- prometheus.MustNewConstMetric(descDurable, prometheus.GaugeValue, float64(durable))
	lagSeconds := 0.0
	if last > durable {
		lagSeconds = time.Since(time.Unix(0, s.lastDurable.Load())).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(descLagFrames, prometheus.GaugeValue, float64(last-min(durable, last)))
	ch <- prometheus.MustNewConstMetric(descLagSeconds, prometheus.GaugeValue, lagSeconds)
	st := s.wal.Stats()
	ch <- prometheus.MustNewConstMetric(descWALBytes, prometheus.GaugeValue, float64(st.StoredBytes))
	ch <- prometheus.MustNewConstMetric(descWALFootprint, prometheus.GaugeValue, float64(st.FootprintBytes))
	ch <- prometheus.MustNewConstMetric(descWALMax, prometheus.GaugeValue, float64(s.cfg.WALMaxBytes))
	if s.cfg.CursorPolicy == "retain" {
		ch <- prometheus.MustNewConstMetric(descWALCursorMax, prometheus.GaugeValue, float64(s.cfg.CursorMaxBytes))
	}
	ch <- prometheus.MustNewConstMetric(descRetHeld, prometheus.GaugeValue, b2f(st.RetentionHeld))
	ch <- prometheus.MustNewConstMetric(descRetDeleted, prometheus.CounterValue, float64(st.RetainedFrames))
	top := durable
	for _, sub := range s.subs.list() {
		if sub.live {
			top = last
		}
		lag, lagSec := 0.0, 0.0
		if next := sub.next.Load(); next <= top {
			lag = float64(top - next + 1)
			lagSec = time.Since(time.Unix(0, sub.caughtUp.Load())).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(descSubLag, prometheus.GaugeValue, lag, sub.label)
		ch <- prometheus.MustNewConstMetric(descSubLagSec, prometheus.GaugeValue, lagSec, sub.label)
		ch <- prometheus.MustNewConstMetric(descSubDelivered, prometheus.CounterValue, float64(sub.delivered.Load()), sub.label)
		ch <- prometheus.MustNewConstMetric(descSubLost, prometheus.CounterValue, float64(sub.lost.Load()), sub.label)
		top = durable
	}
	if s.uplink != nil {
		u := s.uplink.status()
		ch <- prometheus.MustNewConstMetric(descUpConnected, prometheus.GaugeValue, b2f(u.Connected))
		ch <- prometheus.MustNewConstMetric(descUpLag, prometheus.GaugeValue, float64(u.LagFrames))
		ch <- prometheus.MustNewConstMetric(descUpLagSec, prometheus.GaugeValue, u.LagSeconds)
		ch <- prometheus.MustNewConstMetric(descUpPublished, prometheus.CounterValue, float64(u.Published))
		ch <- prometheus.MustNewConstMetric(descUpAcked, prometheus.CounterValue, float64(u.Acked))
		ch <- prometheus.MustNewConstMetric(descUpDuplicates, prometheus.CounterValue, float64(u.Duplicates))
		ch <- prometheus.MustNewConstMetric(descUpErrors, prometheus.CounterValue, float64(u.Errors))
	}
	for name, c := range s.wal.Cursors() {
		ch <- prometheus.MustNewConstMetric(descCursorLost, prometheus.CounterValue, float64(c.Lost), name)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
