package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
)

const cmdUsage = `Usage: framebus cmd --target T --device D --set TAG=VALUE ... [flags]

Sends a Command to the driver serving target T and prints every stage the
sidecar reports, one line each as it arrives,

  STAGE id=ID code=CODE "MESSAGE": TAG=VALUE QUALITY, ...   (readback points)

or with --json the ack's JSON object (docs/json.md). The command's deadline
is --timeout from now: past it the sidecar expires the command (EXPIRED), and
cmd waits a second more for that stage. The exit status is 0 if the final
stage is COMPLETED and 1 otherwise (REJECTED, EXPIRED, FAILED, or no final
stage at all).

With --repeat N it sends the command N times, --parallel at a time, and
prints one summary line: how many ended in each stage, the ids seen more
than once (none expected), and the round-trip latency p50/p99/max from send
to final stage; the exit status is 0 if all were COMPLETED.

VALUE is read as a bool (true, false), else an integer (i64; u64 above the
int64 range), else a decimal number (f64), else a string. A prefix forces the
type: f64:1.5, i64:-3, u64:7, bool:true, str:42 (the string "42"), bytes:AAE=
(standard base64). For --kind read, --set TAG (without a value) names a tag
to read.

Flags:
`

// expiryGrace is how long cmd waits past the command's deadline for the
// EXPIRED stage.
const expiryGrace = time.Second

func cmdMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("framebus cmd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var opts client.CommandOptions
	fs.StringVar(&opts.Name, "name", "", "bus name (default $FRAMEBUS_NAME or \"default\")")
	fs.StringVar(&opts.RunDir, "run-dir", "", "sidecar socket directory (default: as the sidecar's)")
	target := fs.String("target", "", "the command target a driver serves (required)")
	device := fs.String("device", "", "device the command is for (required)")
	var sets setFlag
	fs.Var(&sets, "set", "TAG=VALUE to write, or TAG to read (repeatable; see above for VALUE)")
	kind := fs.String("kind", "write", "command kind: write, read or control")
	timeout := fs.Duration("timeout", 2*time.Second, "the command's deadline, from now")
	asJSON := fs.Bool("json", false, "print each stage as the ack's JSON object")
	repeat := fs.Int("repeat", 1, "send the command this many times (each with its own deadline) and print a summary instead of the stages")
	parallel := fs.Int("parallel", 1, "with --repeat: commands in flight at once")
	fs.Usage = func() { fmt.Fprint(stderr, cmdUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cmd, err := buildCommand(*target, *device, *kind, sets, *timeout, fs.Args())
	if err != nil {
		fmt.Fprintf(stderr, "framebus cmd: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *repeat < 1 || *parallel < 1 || *parallel > 4096 {
		fmt.Fprintln(stderr, "framebus cmd: --repeat must be at least 1 and --parallel 1..4096")
		return 2
	}
	if *repeat > 1 {
		return cmdRepeat(ctx, stdout, stderr, cmd, opts, *timeout, *repeat, *parallel)
	}
	// The command's deadline is --timeout from now; the wait lasts a little
	// longer, so that the sidecar's EXPIRED, issued at the deadline, is seen.
	deadline := time.Now().Add(*timeout)
	cmd.DeadlineNs = deadline.UnixNano()
	ctx, cancel := context.WithDeadline(ctx, deadline.Add(expiryGrace))
	defer cancel()
	var last *schema.CommandAck
	var line []byte
	opts.OnStage = func(a schema.CommandAck) {
		last = &a
		var ferr error
		if line, ferr = appendStage(line[:0], &a, *asJSON); ferr != nil {
			fmt.Fprintf(stderr, "framebus cmd: stage %v: %v\n", a.Stage, ferr)
			return
		}
		stdout.Write(append(line, '\n'))
	}
	final, err := client.SendCommand(ctx, cmd, opts)
	switch {
	case err == nil && final.Stage == schema.AckCompleted:
		return 0
	case err == nil:
		fmt.Fprintf(stderr, "framebus cmd: command %d ended %v (code %d): %s\n", final.ID, final.Stage, final.Code, final.Message)
	case errors.Is(err, context.DeadlineExceeded):
		if last != nil {
			fmt.Fprintf(stderr, "framebus cmd: no final stage within %v; the last was %v (command %d)\n", *timeout+expiryGrace, last.Stage, last.ID)
		} else {
			fmt.Fprintf(stderr, "framebus cmd: no stage within %v\n", *timeout+expiryGrace)
		}
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stderr, "framebus cmd: interrupted before the final stage: the command may still run")
	default:
		fmt.Fprintln(stderr, "framebus cmd:", err)
	}
	return 1
}

// buildCommand checks the flags of `framebus cmd` and returns the Command
// they describe (its ID is the sidecar's to assign; the caller sets the
// deadline).
func buildCommand(target, device, kind string, sets []schema.Point, timeout time.Duration, args []string) (*schema.Command, error) {
	var errs []error
	if len(args) > 0 {
		errs = append(errs, fmt.Errorf("unexpected argument %q (points are given with --set TAG=VALUE)", args[0]))
	}
	if target == "" {
		errs = append(errs, errors.New("--target is required"))
	}
	if device == "" {
		errs = append(errs, errors.New("--device is required"))
	}
	if timeout <= 0 {
		errs = append(errs, errors.New("--timeout must be positive"))
	}
	k, ok := map[string]schema.CommandKind{"write": schema.CommandWrite, "read": schema.CommandRead, "control": schema.CommandControl}[kind]
	if !ok {
		errs = append(errs, fmt.Errorf("--kind %q: want write, read or control", kind))
	}
	if ok && k == schema.CommandWrite {
		if len(sets) == 0 {
			errs = append(errs, errors.New("--kind write needs at least one --set TAG=VALUE"))
		}
		for _, p := range sets {
			if p.Value.Type == schema.TypeNone {
				errs = append(errs, fmt.Errorf("--set %s: a write needs a value (TAG=VALUE)", p.Tag))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &schema.Command{Target: target, Device: device, Kind: k, Points: sets}, nil
}

// setFlag is --set: repeatable TAG=VALUE (or TAG alone, no value).
type setFlag []schema.Point

func (s *setFlag) String() string {
	if s == nil {
		return ""
	}
	parts := make([]string, len(*s))
	for i, p := range *s {
		parts[i] = p.Tag + "=" + p.Value.String()
	}
	return strings.Join(parts, " ")
}

func (s *setFlag) Set(arg string) error {
	p, err := parseSet(arg)
	if err != nil {
		return err
	}
	*s = append(*s, p)
	return nil
}

// parseSet parses TAG=VALUE (see cmdUsage for how VALUE is typed) or TAG
// alone (a point without a value).
func parseSet(arg string) (schema.Point, error) {
	tag, text, hasValue := strings.Cut(arg, "=")
	if tag == "" {
		return schema.Point{}, fmt.Errorf("%q: want TAG=VALUE with a non-empty TAG", arg)
	}
	if !hasValue {
		return schema.Point{Tag: tag}, nil
	}
	v, err := parseValue(text)
	if err != nil {
		return schema.Point{}, fmt.Errorf("%s: %v", arg, err)
	}
	return schema.Point{Tag: tag, Value: v}, nil
}

// parseValue types a --set value; see cmdUsage.
func parseValue(text string) (schema.Value, error) {
	if typ, rest, ok := strings.Cut(text, ":"); ok {
		switch typ {
		case "f64":
			x, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				return schema.Value{}, fmt.Errorf("%q is not a float64", rest)
			}
			return schema.F64(x), nil
		case "i64":
			x, err := strconv.ParseInt(rest, 10, 64)
			if err != nil {
				return schema.Value{}, fmt.Errorf("%q is not an integer from %d to %d", rest, math.MinInt64, math.MaxInt64)
			}
			return schema.I64(x), nil
		case "u64":
			x, err := strconv.ParseUint(rest, 10, 64)
			if err != nil {
				return schema.Value{}, fmt.Errorf("%q is not an integer from 0 to %d", rest, uint64(math.MaxUint64))
			}
			return schema.U64(x), nil
		case "bool":
			x, err := strconv.ParseBool(rest)
			if err != nil {
				return schema.Value{}, fmt.Errorf("%q is not a bool (true or false)", rest)
			}
			return schema.Bool(x), nil
		case "str":
			return schema.String(rest), nil
		case "bytes":
			b, err := base64.StdEncoding.DecodeString(rest)
			if err != nil {
				return schema.Value{}, fmt.Errorf("%q is not standard base64: %v", rest, err)
			}
			return schema.Bytes(b), nil
		}
		// Any other prefix is part of a string ("http://…", "12:30").
	}
	switch text {
	case "true":
		return schema.Bool(true), nil
	case "false":
		return schema.Bool(false), nil
	}
	if x, err := strconv.ParseInt(text, 10, 64); err == nil {
		return schema.I64(x), nil
	}
	if x, err := strconv.ParseUint(text, 10, 64); err == nil {
		return schema.U64(x), nil
	}
	if isDecimal(text) {
		if x, err := strconv.ParseFloat(text, 64); err == nil {
			return schema.F64(x), nil
		}
	}
	return schema.String(text), nil
}

// isDecimal reports whether s looks like a decimal number: a sign, digits,
// a point, an exponent — so that "NaN", "Inf", "0x10" and "1_000" stay
// strings unless typed with f64:.
func isDecimal(s string) bool {
	digits := false
	for i, r := range s {
		switch {
		case r >= '0' && r <= '9':
			digits = true
		case r == '.' || r == 'e' || r == 'E':
		case (r == '+' || r == '-') && (i == 0 || s[i-1] == 'e' || s[i-1] == 'E'):
		default:
			return false
		}
	}
	return digits
}

// appendStage appends the line printed for one stage: the ack's JSON object,
// or "STAGE id=ID code=CODE "MESSAGE": READBACK".
func appendStage(dst []byte, a *schema.CommandAck, asJSON bool) ([]byte, error) {
	if asJSON {
		var e schema.Encoder
		return schema.AppendJSON(dst, schema.KindAck, e.EncodeCommandAck(a))
	}
	dst = append(dst, a.Stage.String()...)
	dst = append(dst, " id="...)
	dst = strconv.AppendUint(dst, a.ID, 10)
	return appendAckRest(dst, a), nil
}

// cmdRepeat is `framebus cmd --repeat N --parallel P`.
func cmdRepeat(ctx context.Context, stdout, stderr io.Writer, cmd *schema.Command, opts client.CommandOptions, timeout time.Duration, n, parallel int) int {
	type result struct {
		ack schema.CommandAck
		err error
		rtt time.Duration
	}
	jobs := make(chan struct{})
	results := make(chan result, parallel)
	var wg sync.WaitGroup
	for w := 0; w < parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				c := *cmd
				deadline := time.Now().Add(timeout)
				c.DeadlineNs = deadline.UnixNano()
				cctx, cancel := context.WithDeadline(ctx, deadline.Add(expiryGrace))
				start := time.Now()
				ack, err := client.SendCommand(cctx, &c, opts)
				cancel()
				results <- result{ack, err, time.Since(start)}
			}
		}()
	}
	go func() {
		defer close(jobs)
		for i := 0; i < n; i++ {
			select {
			case jobs <- struct{}{}:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { wg.Wait(); close(results) }()
	stages := map[string]int{}
	seen := map[uint64]int{}
	var rtts []time.Duration
	var firstErr error
	errs, dup := 0, 0
	for r := range results {
		if r.err != nil {
			errs++
			if firstErr == nil {
				firstErr = r.err
			}
			continue
		}
		stages[r.ack.Stage.String()]++
		if seen[r.ack.ID]++; seen[r.ack.ID] == 2 {
			dup++
		}
		rtts = append(rtts, r.rtt)
	}
	slices.Sort(rtts)
	pct := func(q float64) time.Duration {
		if len(rtts) == 0 {
			return 0
		}
		return rtts[min(len(rtts)-1, int(q*float64(len(rtts))))]
	}
	var parts []string
	for _, st := range []schema.AckStage{schema.AckCompleted, schema.AckRejected, schema.AckExpired, schema.AckFailed} {
		parts = append(parts, fmt.Sprintf("%s %d", st, stages[st.String()]))
	}
	fmt.Fprintf(stdout, "commands %d: %s, errors %d, duplicate ids %d; round trip p50 %v p99 %v max %v\n",
		n, strings.Join(parts, " "), errs, dup, pct(0.5).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), pct(1).Round(time.Microsecond))
	if firstErr != nil {
		fmt.Fprintln(stderr, "framebus cmd: first error:", firstErr)
	}
	if stages["COMPLETED"] == n && dup == 0 {
		return 0
	}
	return 1
}
