package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
)

const tailUsage = `Usage: framebus tail [flags]

Subscribes to the bus and prints the frames that match, one line each: by
default a compact line for humans,

  WALSEQ data PRODUCER/DEVICE: TAG=VALUE QUALITY, ...
  WALSEQ command TARGET/DEVICE id=ID KIND: TAG=VALUE QUALITY, ...
  WALSEQ ack id=ID STAGE code=CODE "MESSAGE": TAG=VALUE QUALITY, ...

(strings quoted, bytes in hex, "err=N" after the quality when a point has an
error code), or with --json the frame's JSON object (docs/json.md), which
framebus publish --stdin reads back.

Without --follow it prints the frames available when it starts, from
--from (default earliest), and exits: after the frame at the WAL's durable
watermark when it started, at the first frame past it, or once no frame has
arrived for --idle. The idle period decides when a filter skips the frames
up to the watermark, as nothing else shows that the sidecar has caught up:
raise --idle for a selective filter on a large WAL. With --follow it prints
new frames (--from default latest) until interrupted (SIGINT or SIGTERM; exit
status 0). --limit stops after that many frames either way.

--from cursor:NAME reads through the named durable cursor: it starts right
after the last frame acknowledged on it (at the oldest frame the WAL holds
for a new cursor), acknowledges every --ack-every frames and, at exit, the
last frame printed, so that the next run resumes right after it. One
subscription per cursor at a time.

Frames the subscription will never see (retention deleted them before they
were read, or a --live ring was full) are reported on stderr at exit.

Flags:
`

// tailConfig is what `framebus tail` was asked to do.
type tailConfig struct {
	opts     client.SubscribeOptions
	filter   client.Filter
	from     client.From
	limit    uint64 // 0: no limit
	json     bool
	follow   bool
	ackEvery uint64 // cursor subscriptions
	idle     time.Duration
}

func tailMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("framebus tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c tailConfig
	var kinds kindsFlag
	fs.StringVar(&c.opts.Name, "name", "", "bus name (default $FRAMEBUS_NAME or \"default\")")
	fs.StringVar(&c.opts.RunDir, "run-dir", "", "sidecar socket directory (default: as the sidecar's)")
	from := fs.String("from", "", "where to start: earliest, latest, a WAL sequence number, or cursor:NAME (default earliest, with --follow or --live latest)")
	fs.StringVar(&c.filter.Producer, "producer", "", "only frames of this producer (data) or target (commands)")
	fs.StringVar(&c.filter.Device, "device", "", "only frames of this device")
	fs.StringVar(&c.filter.Tag, "tag", "", "only frames with a point whose tag matches this glob (path.Match: * ? [...])")
	fs.Var(&kinds, "kind", "only frames of these kinds: data, command, ack (repeat the flag or separate with commas)")
	fs.Uint64Var(&c.limit, "limit", 0, "stop after this many frames (0: no limit)")
	fs.BoolVar(&c.json, "json", false, "print each frame as one JSON object (docs/json.md)")
	fs.BoolVar(&c.follow, "follow", false, "keep printing new frames until interrupted")
	fs.BoolVar(&c.opts.Live, "live", false, "live-only: frames as the sidecar drains them, before they are durable; a full ring loses frames (starts at latest)")
	fs.Uint64Var(&c.ackEvery, "ack-every", 1000, "with --from cursor:NAME, acknowledge every this many frames (and at exit)")
	fs.DurationVar(&c.idle, "idle", 200*time.Millisecond, "without --follow, stop when no frame has arrived for this long")
	fs.Usage = func() { fmt.Fprint(stderr, tailUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *from == "" {
		*from = "earliest"
		if c.follow || c.opts.Live {
			*from = "latest"
		}
	}
	var err error
	c.from, err = parseFrom(*from)
	c.filter.Kinds = kinds
	if err == nil {
		err = c.check(set, fs.Args())
	}
	if err != nil {
		fmt.Fprintf(stderr, "framebus tail: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := tail(ctx, stdout, stderr, c); err != nil {
		fmt.Fprintln(stderr, "framebus tail:", err)
		return 1
	}
	return 0
}

// check reports the usage errors of c; set holds the flags given.
func (c *tailConfig) check(set map[string]bool, args []string) error {
	var errs []error
	if len(args) > 0 {
		errs = append(errs, fmt.Errorf("unexpected argument %q (filters are flags: --producer, --device, --tag, --kind)", args[0]))
	}
	cursor := isCursor(c.from)
	if c.opts.Live && c.from.String() != "latest" {
		errs = append(errs, fmt.Errorf("--live starts at latest: it cannot be combined with --from %s", c.from))
	}
	if set["ack-every"] && !cursor {
		errs = append(errs, errors.New("--ack-every needs --from cursor:NAME"))
	}
	if cursor && c.ackEvery == 0 {
		errs = append(errs, errors.New("--ack-every must be at least 1"))
	}
	if c.idle <= 0 {
		errs = append(errs, errors.New("--idle must be positive"))
	}
	return errors.Join(errs...)
}

// parseFrom parses --from: earliest, latest, a sequence number (also
// seq:N) or cursor:NAME.
func parseFrom(s string) (client.From, error) {
	switch {
	case s == "earliest":
		return client.Earliest(), nil
	case s == "latest":
		return client.Latest(), nil
	case strings.HasPrefix(s, "cursor:"):
		name := strings.TrimPrefix(s, "cursor:")
		if name == "" {
			return client.From{}, errors.New("--from cursor:NAME needs a name")
		}
		return client.Cursor(name), nil
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(s, "seq:"), 10, 64)
	if err != nil {
		return client.From{}, fmt.Errorf("--from %q: want earliest, latest, a WAL sequence number, or cursor:NAME", s)
	}
	return client.Seq(n), nil
}

func isCursor(f client.From) bool { return strings.HasPrefix(f.String(), "cursor:") }

// kindsFlag is --kind: repeatable, each a comma-separated list of kinds.
type kindsFlag []schema.Kind

func (k *kindsFlag) String() string {
	if k == nil {
		return ""
	}
	names := make([]string, len(*k))
	for i, kind := range *k {
		names[i] = kind.String()
	}
	return strings.Join(names, ",")
}

func (k *kindsFlag) Set(s string) error {
	for _, name := range strings.Split(s, ",") {
		var kind schema.Kind
		switch strings.TrimSpace(name) {
		case "data":
			kind = schema.KindData
		case "command":
			kind = schema.KindCommand
		case "ack":
			kind = schema.KindAck
		default:
			return fmt.Errorf("%q is not a frame kind: want data, command or ack", name)
		}
		if !slices.Contains(*k, kind) {
			*k = append(*k, kind)
		}
	}
	return nil
}

// tail subscribes and prints frames as c says; see tailUsage.
func tail(ctx context.Context, stdout, stderr io.Writer, c tailConfig) error {
	// until is the last sequence number to print without --follow: the
	// durable watermark when tail started.
	until := ^uint64(0)
	stopAtWatermark := !c.follow && !c.opts.Live
	if stopAtWatermark && c.from.String() != "latest" {
		w, err := durableWatermark(ctx, c.opts)
		if err != nil {
			return err
		}
		until = w
	}
	sub, err := client.Subscribe(ctx, c.filter, c.from, c.opts)
	if err != nil {
		return err
	}
	defer sub.Close()
	if stopAtWatermark && c.from.String() == "latest" {
		// A durable subscription from latest starts right after the
		// watermark: nothing is available now.
		until = sub.Start() - 1
	}
	out := bufio.NewWriterSize(stdout, 64<<10)
	cursor := isCursor(c.from)
	var (
		f        lineFormatter
		line     []byte
		printed  uint64
		last     uint64 // sequence number of the last frame printed
		acked    uint64 // last acknowledged on the cursor
		sinceAck uint64 // frames since
		bad      uint64
		gone     bool // the sidecar went away: no acks
		loopErr  error
	)
	// Next with a context already done only takes a frame that is there:
	// the output is flushed only before Next has to wait.
	nowait, cancel := context.WithCancel(context.Background())
	cancel()
	ack := func() error {
		if !cursor || last == acked {
			return nil
		}
		if err := out.Flush(); err != nil {
			return err
		}
		if err := sub.Ack(last); err != nil {
			return fmt.Errorf("acknowledge frame %d on the cursor: %w", last, err)
		}
		acked, sinceAck = last, 0
		return nil
	}
	// Without --follow, a start past the watermark has nothing to show.
	done := stopAtWatermark && sub.Start() > until
	for !done {
		if c.limit != 0 && printed >= c.limit {
			break
		}
		fr, err := sub.Next(nowait)
		if errors.Is(err, context.Canceled) && ctx.Err() == nil {
			if loopErr = out.Flush(); loopErr != nil {
				break
			}
			wctx, cancel := ctx, context.CancelFunc(func() {})
			if !c.follow {
				wctx, cancel = context.WithTimeout(ctx, c.idle)
			}
			fr, err = sub.Next(wctx)
			cancel()
		}
		if err != nil {
			switch {
			case ctx.Err() != nil: // interrupted
			case !c.follow && errors.Is(err, context.DeadlineExceeded): // idle: caught up
			case errors.Is(err, client.ErrLost):
				gone = true
				loopErr = fmt.Errorf("the sidecar went away (stopped or restarted) after WAL sequence %d: resume with --from %s", last, resumeFrom(c.from, last))
			default:
				loopErr = err
			}
			break
		}
		if fr.Seq > until {
			break
		}
		var ferr error
		line, ferr = f.appendFrame(line[:0], fr.Seq, fr.Kind, fr.Data, c.json)
		if ferr != nil {
			// The sidecar verified every frame it wrote: this one was
			// damaged in shared memory since.
			bad++
			fmt.Fprintf(stderr, "framebus tail: skipping frame %d: %v\n", fr.Seq, ferr)
		} else {
			line = append(line, '\n')
			if _, loopErr = out.Write(line); loopErr != nil {
				break
			}
			printed++
		}
		last = fr.Seq
		if sinceAck++; cursor && sinceAck >= c.ackEvery {
			if loopErr = ack(); loopErr != nil {
				break
			}
		}
		done = fr.Seq == until
	}
	if err := out.Flush(); err != nil && loopErr == nil {
		loopErr = err
	}
	if !gone {
		if err := ack(); err != nil && loopErr == nil {
			loopErr = err
		}
	}
	if n := sub.Lost(); n > 0 {
		fmt.Fprintf(stderr, "framebus tail: %d frames lost to this subscription (retention deleted them before they were read, or the live ring was full)\n", n)
	}
	if bad > 0 {
		fmt.Fprintf(stderr, "framebus tail: %d damaged frames skipped\n", bad)
	}
	return loopErr
}

// resumeFrom says how to resume a subscription that saw last.
func resumeFrom(from client.From, last uint64) string {
	if isCursor(from) {
		return from.String()
	}
	if last == 0 {
		return from.String()
	}
	return strconv.FormatUint(last+1, 10)
}

// durableWatermark returns the WAL's durable watermark: a subscription from
// latest starts right after it (the client API has no other way to ask).
// The probe asks for the smallest egress ring and is closed at once.
func durableWatermark(ctx context.Context, opts client.SubscribeOptions) (uint64, error) {
	opts.RingBytes = shm.MinRingCapacity
	opts.Live = false
	probe, err := client.Subscribe(ctx, client.Filter{}, client.Latest(), opts)
	if err != nil {
		return 0, err
	}
	w := probe.Start() - 1
	probe.Close()
	return w, nil
}

// lineFormatter renders delivered frames as tail prints them; it keeps
// decoding buffers between frames.
type lineFormatter struct {
	data schema.DataFrame
	cmd  schema.Command
	ack  schema.CommandAck
}

// appendFrame appends the line for one frame (without newline): its JSON
// object (schema.AppendDeliveredJSON) or the human form.
func (f *lineFormatter) appendFrame(dst []byte, seq uint64, kind schema.Kind, buf []byte, asJSON bool) ([]byte, error) {
	if asJSON {
		return schema.AppendDeliveredJSON(dst, seq, kind, buf)
	}
	n := len(dst)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, ' ')
	switch kind {
	case schema.KindData:
		if err := schema.DecodeDataFrame(buf, &f.data); err != nil {
			return dst[:n], err
		}
		d := &f.data
		dst = append(dst, "data "...)
		dst = appendHumanName(dst, d.Producer, nameSpecials)
		dst = append(dst, '/')
		dst = appendHumanName(dst, d.Device, nameSpecials)
		dst = appendHumanPoints(dst, d.Points)
	case schema.KindCommand:
		if err := schema.DecodeCommand(buf, &f.cmd); err != nil {
			return dst[:n], err
		}
		c := &f.cmd
		dst = append(dst, "command "...)
		dst = appendHumanName(dst, c.Target, nameSpecials)
		dst = append(dst, '/')
		dst = appendHumanName(dst, c.Device, nameSpecials)
		dst = append(dst, " id="...)
		dst = strconv.AppendUint(dst, c.ID, 10)
		dst = append(dst, ' ')
		dst = append(dst, c.Kind.String()...)
		dst = appendHumanPoints(dst, c.Points)
	case schema.KindAck:
		if err := schema.DecodeCommandAck(buf, &f.ack); err != nil {
			return dst[:n], err
		}
		dst = append(dst, "ack "...)
		dst = appendHumanAck(dst, &f.ack)
	default:
		return dst[:n], fmt.Errorf("%w: %d", schema.ErrUnknownKind, kind)
	}
	return dst, nil
}

// appendHumanAck appends "id=ID STAGE code=CODE "MESSAGE": POINTS".
func appendHumanAck(dst []byte, a *schema.CommandAck) []byte {
	dst = append(dst, "id="...)
	dst = strconv.AppendUint(dst, a.ID, 10)
	dst = append(dst, ' ')
	dst = append(dst, a.Stage.String()...)
	return appendAckRest(dst, a)
}

// appendAckRest appends " code=CODE "MESSAGE": POINTS".
func appendAckRest(dst []byte, a *schema.CommandAck) []byte {
	dst = append(dst, " code="...)
	dst = strconv.AppendUint(dst, uint64(a.Code), 10)
	dst = append(dst, ' ')
	dst = strconv.AppendQuote(dst, a.Message)
	return appendHumanPoints(dst, a.Readback)
}

// appendHumanPoints appends ": TAG=VALUE QUALITY, ..." (nothing for no
// points).
func appendHumanPoints(dst []byte, ps []schema.Point) []byte {
	for i := range ps {
		if i == 0 {
			dst = append(dst, ": "...)
		} else {
			dst = append(dst, ", "...)
		}
		p := &ps[i]
		dst = appendHumanName(dst, p.Tag, tagSpecials)
		dst = append(dst, '=')
		dst = appendHumanValue(dst, p.Value)
		dst = append(dst, ' ')
		dst = append(dst, p.Quality.String()...)
		if p.ErrCode != 0 {
			dst = append(dst, " err="...)
			dst = strconv.AppendUint(dst, uint64(p.ErrCode), 10)
		}
	}
	return dst
}

// humanBytesMax is how many bytes of a bytes value a human line shows.
const humanBytesMax = 32

// appendHumanValue appends v for a human line: numbers and bools as Go
// formats them, strings quoted, bytes in hex (0x…, the first humanBytesMax
// of them), "none" for no value.
func appendHumanValue(dst []byte, v schema.Value) []byte {
	switch v.Type {
	case schema.TypeF64:
		return strconv.AppendFloat(dst, v.F64(), 'g', -1, 64)
	case schema.TypeI64:
		return strconv.AppendInt(dst, v.I64(), 10)
	case schema.TypeU64:
		return strconv.AppendUint(dst, v.U64(), 10)
	case schema.TypeBool:
		return strconv.AppendBool(dst, v.Bool())
	case schema.TypeString:
		return strconv.AppendQuote(dst, v.Str)
	case schema.TypeBytes:
		dst = append(dst, "0x"...)
		dst = hex.AppendEncode(dst, v.Bytes[:min(len(v.Bytes), humanBytesMax)])
		if len(v.Bytes) > humanBytesMax {
			dst = fmt.Appendf(dst, "…(%d bytes)", len(v.Bytes))
		}
		return dst
	}
	return append(dst, "none"...)
}

// Characters that make a human line ambiguous, besides spaces and what is
// not printable: in a producer, device or target, and in a tag.
const (
	nameSpecials = `=,:/"`
	tagSpecials  = `=,"`
)

// appendHumanName appends a producer, device, target or tag as is, or
// quoted when it is empty or holds a space, a character of specials or
// anything not printable, which would make the line ambiguous.
func appendHumanName(dst []byte, s, specials string) []byte {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool {
		return r == ' ' || !unicode.IsPrint(r) || strings.ContainsRune(specials, r)
	}) {
		return strconv.AppendQuote(dst, s)
	}
	return append(dst, s...)
}
