package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/simonvetter/modbus"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/cmd/framebus-modbus/internal/tagmap"
	"github.com/framebus/framebus/schema"
)

// DefaultProducer is the producer name and command target when
// Config.Producer is empty.
const DefaultProducer = "modbus"

// Config describes a driver. Map is required; the other fields have
// defaults.
type Config struct {
	// Map is the tag map, validated (tagmap.Load does that). Required.
	Map *tagmap.Map
	// Producer is DataFrame.producer of every frame and the command target
	// the driver serves. Zero: DefaultProducer.
	Producer string
	// Epoch is DataFrame.epoch of every frame. Zero: the time New ran, in
	// Unix nanoseconds (a restarted driver has a larger one).
	Epoch uint64
	// Logger receives state changes (Info, Warn) and per-poll detail
	// (Debug). Zero: discard.
	Logger *slog.Logger
}

// EnsureDefaults fills in the zero fields that have defaults.
func (c *Config) EnsureDefaults() {
	if c.Producer == "" {
		c.Producer = DefaultProducer
	}
	if c.Epoch == 0 {
		c.Epoch = uint64(time.Now().UnixNano())
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// Validate reports every problem of c.
func (c *Config) Validate() error {
	var errs []error
	if c.Map == nil {
		errs = append(errs, fmt.Errorf("%w: Map is required", ErrConfig))
	} else if err := c.Map.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("%w: %w", ErrConfig, err))
	}
	if c.Producer == "" {
		errs = append(errs, fmt.Errorf("%w: Producer is empty", ErrConfig))
	}
	return errors.Join(errs...)
}

// Stats counts what a driver did, over all its devices.
type Stats struct {
	Frames  uint64 // frames published
	Bad     uint64 // of which every point was BAD (device offline)
	Dropped uint64 // poll frames the bus did not take in time (backpressure)
}

// Driver polls the devices of a tag map and executes commands for them.
type Driver struct {
	cfg    Config
	log    *slog.Logger
	devs   []*device
	byName map[string]*device

	frames, bad, dropped atomic.Uint64
}

// device is one Modbus TCP device and its connection.
type device struct {
	cfg    *tagmap.Device
	tags   []*tagmap.Tag
	index  map[string]int // tag name → index in tags and in the template
	groups []tagmap.Group
	tpl    *schema.DataTemplate // only the poll goroutine touches it
	seq    uint64               // only the poll goroutine touches it
	log    *slog.Logger

	// sem holds the connection: whoever has the slot may use mc and the
	// fields below it.
	sem         chan struct{}
	mc          *modbus.ModbusClient
	state       connState
	lastErr     error
	errCode     uint32
	failures    int // consecutive failures to get or keep a connection
	nextAttempt time.Time
	groupCode   []uint32 // per group: the exception of its last read, 0 if it worked

	droppedLogged bool // only the poll goroutine touches it
}

type connState int

const (
	stateNew connState = iota // never tried
	stateOnline
	stateOffline
)

// New builds a driver for cfg: a frame template and an unconnected Modbus
// client per device. It connects to nothing: Run does.
func New(cfg Config) (*Driver, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Driver{cfg: cfg, log: cfg.Logger, byName: map[string]*device{}}
	for i := range cfg.Map.Devices {
		dc := &cfg.Map.Devices[i]
		dev := &device{cfg: dc, tags: cfg.Map.TagsOf(dc.Name), index: map[string]int{}, sem: make(chan struct{}, 1),
			log: cfg.Logger.With("device", dc.Name, "address", dc.Address)}
		tt := make([]schema.TemplateTag, len(dev.tags))
		for j, t := range dev.tags {
			dev.index[t.Name] = j
			tt[j] = schema.TemplateTag{Tag: t.Name, Type: t.ValueType()}
		}
		dev.groups = tagmap.Groups(dev.tags, dc.MaxGap)
		dev.groupCode = make([]uint32, len(dev.groups))
		var err error
		if dev.tpl, err = schema.NewDataTemplate(cfg.Producer, dc.Name, tt); err != nil {
			return nil, fmt.Errorf("driver: device %s: %w", dc.Name, err)
		}
		dev.tpl.SetEpoch(cfg.Epoch)
		dev.mc, err = modbus.NewClient(&modbus.ClientConfiguration{
			URL:     "tcp://" + dc.Address,
			Timeout: dc.Timeout,
			Logger:  slog.NewLogLogger(dev.log.Handler(), slog.LevelDebug),
		})
		if err != nil {
			return nil, fmt.Errorf("driver: device %s: modbus client for %s: %w", dc.Name, dc.Address, err)
		}
		if err := dev.mc.SetUnitId(dc.Unit()); err != nil {
			return nil, fmt.Errorf("driver: device %s: unit id: %w", dc.Name, err)
		}
		d.devs = append(d.devs, dev)
		d.byName[dc.Name] = dev
	}
	return d, nil
}

// Stats returns the driver's counters.
func (d *Driver) Stats() Stats {
	return Stats{Frames: d.frames.Load(), Bad: d.bad.Load(), Dropped: d.dropped.Load()}
}

// Run polls every device and serves commands until ctx is done (it returns
// nil then) or publishing or serving fails for good: the publisher was
// closed or lost (client.ErrLost: the sidecar no longer knows it), or the
// sidecar refused to route the target to this driver (another driver serves
// it). It closes the Modbus connections before it returns; the publisher is
// the caller's to close. Run may be called once.
func (d *Driver) Run(ctx context.Context, pub *client.Publisher) error {
	parent := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, dev := range d.devs {
		wg.Go(func() {
			if err := d.pollLoop(ctx, dev, pub); err != nil {
				cancel(fmt.Errorf("device %s: %w", dev.cfg.Name, err))
			}
		})
	}
	wg.Go(func() {
		err := pub.ServeCommands(ctx, []string{d.cfg.Producer}, d.HandleCommand)
		if ctx.Err() == nil {
			if errors.Is(err, client.ErrRefused) {
				err = fmt.Errorf("%w (is another driver serving target %q? give this one another --producer)", err, d.cfg.Producer)
			}
			cancel(fmt.Errorf("serving commands: %w", err))
		}
	})
	d.log.Info("driver running", "producer", d.cfg.Producer, "devices", len(d.devs), "tags", len(d.cfg.Map.Tags))
	<-ctx.Done()
	wg.Wait()
	for _, dev := range d.devs {
		dev.sem <- struct{}{}
		dev.mc.Close()
		dev.state = stateOffline
		<-dev.sem
	}
	if parent.Err() != nil {
		return nil
	}
	return context.Cause(ctx)
}

// pollLoop polls dev every poll interval and publishes each poll's frame.
func (d *Driver) pollLoop(ctx context.Context, dev *device, pub *client.Publisher) error {
	t := time.NewTicker(dev.cfg.PollInterval)
	defer t.Stop()
	for {
		if ok, allBad := dev.poll(ctx); ok {
			if err := d.publish(ctx, dev, pub, allBad); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// publish publishes dev's template. A bus that does not take the frame
// within a poll interval (at least a second) drops it: the next poll has
// newer values. Only a closed or lost publisher is an error.
func (d *Driver) publish(ctx context.Context, dev *device, pub *client.Publisher, allBad bool) error {
	dev.tpl.SetSeq(dev.seq)
	pctx, cancel := context.WithTimeout(ctx, max(dev.cfg.PollInterval, time.Second))
	err := pub.Publish(pctx, dev.tpl.Bytes())
	cancel()
	switch {
	case err == nil:
		dev.seq++
		d.frames.Add(1)
		if allBad {
			d.bad.Add(1)
		}
		if dev.droppedLogged {
			dev.log.Info("the bus takes frames again")
			dev.droppedLogged = false
		}
		return nil
	case ctx.Err() != nil:
		return nil
	case errors.Is(err, client.ErrClosed), errors.Is(err, client.ErrLost):
		return fmt.Errorf("publish: %w", err)
	}
	d.dropped.Add(1)
	if !dev.droppedLogged {
		dev.log.Warn("the bus did not take a poll's frame in time; dropping polls until it does", "err", err)
		dev.droppedLogged = true
	}
	return nil
}

// lock takes dev's connection, waiting at most until ctx is done.
func (dev *device) lock(ctx context.Context) bool {
	select {
	case dev.sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (dev *device) unlock() { <-dev.sem }

// poll reads every tag into the template (or marks them BAD) and reports
// whether there is a frame to publish (ok) and whether the device is
// offline, every point BAD.
func (dev *device) poll(ctx context.Context) (ok, allBad bool) {
	if !dev.lock(ctx) {
		return false, false
	}
	defer dev.unlock()
	now := time.Now()
	if dev.state != stateOnline {
		if now.Before(dev.nextAttempt) {
			dev.markAllBad(now)
			return true, true
		}
		if err := dev.connect(); err != nil {
			dev.fail(err, now)
			dev.markAllBad(now)
			return true, true
		}
	}
	retried := false
	for gi := 0; gi < len(dev.groups); gi++ {
		g := dev.groups[gi]
		err := dev.readGroup(g)
		ts := time.Now().UnixNano()
		if err == nil {
			if dev.groupCode[gi] != 0 {
				dev.log.Info("read works again", "read", g.String())
				dev.groupCode[gi] = 0
			}
			for _, ti := range g.Tags {
				dev.tpl.SetQuality(ti, schema.QualityGood)
				dev.tpl.SetErrCode(ti, 0)
				dev.tpl.SetTs(ti, ts)
			}
			continue
		}
		if code, ok := exceptionCode(err); ok {
			if dev.groupCode[gi] != code {
				dev.log.Warn("the device refuses a read: its points are BAD", "read", g.String(), "exception", code, "err", err)
				dev.groupCode[gi] = code
			}
			for _, ti := range g.Tags {
				dev.setBad(ti, code, ts)
			}
			continue
		}
		if !retried && failureCode(err) == CodeOffline {
			// The connection was closed or reset (a device's idle
			// timeout, a restarted TCP stack): reopen it at once and
			// read again, rather than publish a poll of BAD points.
			retried = true
			dev.log.Debug("connection lost during a poll; reconnecting at once", "err", err)
			if err = dev.connect(); err == nil {
				gi--
				continue
			}
		}
		now = time.Now()
		dev.fail(err, now)
		dev.markAllBad(now)
		return true, true
	}
	return true, false
}

// readGroup reads one planned request and stores the decoded values in the
// template (without touching quality).
func (dev *device) readGroup(g tagmap.Group) error {
	switch g.Kind {
	case tagmap.Holding, tagmap.Input:
		rt := modbus.HOLDING_REGISTER
		if g.Kind == tagmap.Input {
			rt = modbus.INPUT_REGISTER
		}
		regs, err := dev.mc.ReadRegisters(g.Start, g.Count, rt)
		if err != nil {
			return err
		}
		for _, ti := range g.Tags {
			t := dev.tags[ti]
			off := t.Address - int(g.Start)
			setValue(dev.tpl, ti, t.Decode(regs[off:off+t.Words()]))
		}
	default:
		var bits []bool
		var err error
		if g.Kind == tagmap.Coil {
			bits, err = dev.mc.ReadCoils(g.Start, g.Count)
		} else {
			bits, err = dev.mc.ReadDiscreteInputs(g.Start, g.Count)
		}
		if err != nil {
			return err
		}
		for _, ti := range g.Tags {
			t := dev.tags[ti]
			setValue(dev.tpl, ti, t.DecodeBit(bits[t.Address-int(g.Start)]))
		}
	}
	return nil
}

// setValue stores a numeric value into point i of tpl.
func setValue(tpl *schema.DataTemplate, i int, v schema.Value) {
	switch v.Type {
	case schema.TypeF64:
		tpl.SetF64(i, v.F64())
	case schema.TypeI64:
		tpl.SetI64(i, v.I64())
	case schema.TypeU64:
		tpl.SetU64(i, v.U64())
	case schema.TypeBool:
		tpl.SetBool(i, v.Bool())
	default:
		tpl.SetNone(i)
	}
}

func (dev *device) setBad(i int, code uint32, ts int64) {
	dev.tpl.SetNone(i)
	dev.tpl.SetQuality(i, schema.QualityBad)
	dev.tpl.SetErrCode(i, code)
	dev.tpl.SetTs(i, ts)
}

// markAllBad marks every point BAD with the code of the device's failure.
func (dev *device) markAllBad(now time.Time) {
	for i := range dev.tags {
		dev.setBad(i, dev.errCode, now.UnixNano())
	}
}

// connect (re)opens the connection. dev.sem is held.
func (dev *device) connect() error {
	dev.mc.Close() // the previous connection's, if any; its error is moot
	if err := dev.mc.Open(); err != nil {
		return err
	}
	switch dev.state {
	case stateOffline:
		dev.log.Info("device online again", "after_failures", dev.failures, "was", dev.lastErr)
	case stateNew:
		dev.log.Info("device online")
	default:
		dev.log.Debug("reconnected")
	}
	dev.state, dev.failures, dev.lastErr, dev.errCode = stateOnline, 0, nil, 0
	return nil
}

// fail takes the device offline after err and schedules the next
// connection attempt. dev.sem is held.
func (dev *device) fail(err error, now time.Time) {
	dev.mc.Close()
	switch dev.state {
	case stateOnline:
		dev.log.Warn("device offline: publishing BAD points and reconnecting", "err", err)
	case stateNew:
		dev.log.Warn("device unreachable: publishing BAD points and retrying", "err", err)
	default:
		dev.log.Debug("reconnection failed", "err", err, "failures", dev.failures+1)
	}
	dev.state, dev.lastErr, dev.errCode = stateOffline, err, failureCode(err)
	dev.failures++
	// The first retry is at the next tick; then the wait doubles from the
	// poll interval up to reconnect_max.
	var wait time.Duration
	if dev.failures > 1 {
		wait = dev.cfg.PollInterval << min(dev.failures-2, 20)
		if dev.cfg.ReconnectMax > 0 {
			wait = min(wait, dev.cfg.ReconnectMax)
		}
	}
	dev.nextAttempt = now.Add(wait)
}
