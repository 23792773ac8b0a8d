// Command framebus-modbus is framebus's Modbus TCP driver: it polls the
// devices of a tag map, publishes their values on the bus, and executes
// WRITE and READ commands as register writes and reads (package
// internal/driver; docs/modbus.md). `framebus-modbus sim` is a simulated
// PLC to try it against (package internal/plcsim), and `framebus-modbus
// check` validates a tag map and prints its read plan.
//
// The simulator is a subcommand of the driver's binary rather than a binary
// of its own: the demo and a first try need one program besides framebus,
// and the simulator is small.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/cmd/framebus-modbus/internal/driver"
	"github.com/framebus/framebus/cmd/framebus-modbus/internal/plcsim"
	"github.com/framebus/framebus/cmd/framebus-modbus/internal/tagmap"
)

// exampleMap is the tag map of the simulated PLC (sim --print-map).
//
//go:embed examples/plc.toml
var exampleMap string

// exampleAddress is the device address written in exampleMap.
const exampleAddress = "127.0.0.1:5020"

const usage = `framebus-modbus — Modbus TCP driver for the framebus bus

Usage:
  framebus-modbus [run] --map FILE [flags]
                        poll the devices of the tag map FILE, publish their values,
                        execute commands (framebus-modbus run -h)
  framebus-modbus sim [flags]
                        a simulated PLC on 127.0.0.1:5020 (framebus-modbus sim -h)
  framebus-modbus check --map FILE
                        validate a tag map and print the reads it plans
  framebus-modbus version
  framebus-modbus help

docs/modbus.md describes the tag map, the commands and the error codes.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return runMain(args[1:], stdout, stderr)
	case "sim":
		return simMain(args[1:], stdout, stderr)
	case "check":
		return checkMain(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "framebus-modbus", version())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	if strings.HasPrefix(args[0], "-") {
		return runMain(args, stdout, stderr)
	}
	fmt.Fprintf(stderr, "framebus-modbus: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// parse parses args into fs; it returns the exit status to return, or -1
// to go on.
func parse(fs *flag.FlagSet, args []string) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2
	}
	return -1
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

func runMain(args []string, _, stderr io.Writer) int {
	fs := flag.NewFlagSet("framebus-modbus run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg client.Config
	fs.StringVar(&cfg.Name, "name", "", "bus name (default $FRAMEBUS_NAME or \"default\")")
	fs.StringVar(&cfg.RunDir, "run-dir", "", "sidecar socket directory (default: as the sidecar's)")
	mapFile := fs.String("map", "", "the tag map: devices and tags to poll (required; docs/modbus.md)")
	producer := fs.String("producer", driver.DefaultProducer, "producer name in every frame, and the command target this driver serves")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: framebus-modbus [run] --map FILE [flags]

Polls the Modbus TCP devices of the tag map FILE, each at its poll_interval,
and publishes one frame per device and poll on the bus (producer --producer,
device and tag names from the map). A device that cannot be reached is
published with every point BAD once per poll interval while the driver
reconnects. Serves commands for target --producer: WRITE writes the points'
tags and answers COMPLETED with their readback, REJECTED for unknown or
read-only tags and values that do not fit, FAILED on Modbus exceptions or a
lost connection; READ reads tags. It waits for the sidecar if it is not up
yet, and stops on SIGINT or SIGTERM.

  framebus-modbus --map plc.toml
  framebus cmd --target modbus --device plc1 --set speed_setpoint=1500

Flags:
`)
		fs.PrintDefaults()
	}
	if code := parse(fs, args); code >= 0 {
		return code
	}
	if *mapFile == "" {
		fmt.Fprintln(stderr, "framebus-modbus: --map FILE is required (see cmd/framebus-modbus/examples/plc.toml and docs/modbus.md)")
		return 2
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		fmt.Fprintln(stderr, "framebus-modbus:", err)
		return 2
	}
	m, err := tagmap.Load(*mapFile)
	if err != nil {
		fmt.Fprintln(stderr, "framebus-modbus:", err)
		return 2
	}
	d, err := driver.New(driver.Config{Map: m, Producer: *producer, Logger: log})
	if err != nil {
		fmt.Fprintln(stderr, "framebus-modbus:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg.Producer = *producer
	cfg.Logger = log
	pub, err := dial(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil {
			return 0
		}
		fmt.Fprintln(stderr, "framebus-modbus:", err)
		return 1
	}
	err = d.Run(ctx, pub)
	pub.Close()
	st := d.Stats()
	log.Info("driver stopped", "frames", st.Frames, "bad_frames", st.Bad, "dropped", st.Dropped)
	if err != nil {
		fmt.Fprintln(stderr, "framebus-modbus:", err)
		return 1
	}
	return 0
}

// dial attaches to the sidecar, waiting for it (with backoff up to 5 s)
// while nobody listens on its socket; other refusals are final.
func dial(ctx context.Context, cfg client.Config, log *slog.Logger) (*client.Publisher, error) {
	wait := 100 * time.Millisecond
	logged := false
	for {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		pub, err := client.Dial(dctx, cfg)
		cancel()
		if err == nil {
			if logged {
				log.Info("attached to the sidecar")
			}
			return pub, nil
		}
		if !errors.Is(err, client.ErrNoSidecar) {
			return nil, err
		}
		if !logged {
			log.Warn("no sidecar yet: waiting for it (start it with framebus run)", "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

func simMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("framebus-modbus sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg plcsim.Config
	fs.StringVar(&cfg.Listen, "listen", plcsim.DefaultListen, "HOST:PORT to serve Modbus TCP on")
	mapFile := fs.String("map", "", "also serve the registers of every tag of this tag map, as plain memory (for trying a map of your own)")
	fs.DurationVar(&cfg.Tau, "tau", time.Second, "time constant of the pump speed following its setpoint")
	printMap := fs.Bool("print-map", false, "print the tag map of the simulated PLC, for --listen's address, and exit")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: framebus-modbus sim [flags]

A simulated PLC serving Modbus TCP: a temperature that follows a sine, a
counter, a pump whose speed follows its setpoint (holding register 0, at
most 3000 rpm: more gets exception 3), a read-only firmware register (a
write gets exception 2), coils and discrete inputs. It logs every write.
--print-map prints the tag map that describes it (the same as
cmd/framebus-modbus/examples/plc.toml); docs/modbus.md has the register
table. Stops on SIGINT or SIGTERM.

  framebus-modbus sim --print-map > plc.toml
  framebus-modbus sim &
  framebus-modbus --map plc.toml

Flags:
`)
		fs.PrintDefaults()
	}
	if code := parse(fs, args); code >= 0 {
		return code
	}
	if *printMap {
		fmt.Fprint(stdout, strings.ReplaceAll(exampleMap, `"`+exampleAddress+`"`, fmt.Sprintf("%q", cfg.Listen)))
		return 0
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		fmt.Fprintln(stderr, "framebus-modbus sim:", err)
		return 2
	}
	cfg.Logger = log
	if *mapFile != "" {
		if cfg.Extra, err = tagmap.Load(*mapFile); err != nil {
			fmt.Fprintln(stderr, "framebus-modbus sim:", err)
			return 2
		}
	}
	sim, err := plcsim.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "framebus-modbus sim:", err)
		return 2
	}
	if err := sim.Start(); err != nil {
		fmt.Fprintln(stderr, "framebus-modbus sim:", err)
		return 1
	}
	log.Info("simulated PLC serving Modbus TCP", "listen", sim.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	sim.Stop()
	log.Info("simulated PLC stopped", "writes", sim.Writes())
	return 0
}

func checkMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("framebus-modbus check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mapFile := fs.String("map", "", "the tag map to check (required)")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: framebus-modbus check --map FILE

Validates the tag map FILE, printing every problem with its line, or else
the read requests the driver will send for each device. Exit status 0 if the
map is valid, 1 if not.

Flags:
`)
		fs.PrintDefaults()
	}
	if code := parse(fs, args); code >= 0 {
		return code
	}
	if *mapFile == "" {
		fmt.Fprintln(stderr, "framebus-modbus check: --map FILE is required")
		return 2
	}
	m, err := tagmap.Load(*mapFile)
	if err != nil {
		fmt.Fprintln(stderr, "framebus-modbus check:", err)
		return 1
	}
	for i := range m.Devices {
		d := &m.Devices[i]
		tags := m.TagsOf(d.Name)
		groups := tagmap.Groups(tags, d.MaxGap)
		fmt.Fprintf(stdout, "device %s at %s, unit %d, every %v: %d tags in %d read requests\n", d.Name, d.Address, d.Unit(), d.PollInterval, len(tags), len(groups))
		for _, g := range groups {
			names := make([]string, len(g.Tags))
			for j, ti := range g.Tags {
				names[j] = tags[ti].Name
			}
			fmt.Fprintf(stdout, "  %-24s %s\n", g.String(), strings.Join(names, ", "))
		}
	}
	return 0
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return bi.Main.Version + " " + s.Value
			}
		}
		return bi.Main.Version
	}
	return "(unknown)"
}
