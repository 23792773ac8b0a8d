// Command framebus is the framebus command line: the sidecar (`framebus
// run`), a synthetic or JSON-fed driver (publish), a subscriber that prints
// frames (tail), a command sender (cmd), offline WAL tools and the demo.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
)

const usage = `framebus — shared-memory message bus for multiprocess IoT gateways

Usage:
  framebus run [flags]      run the sidecar (framebus run -h for every setting)
  framebus stat [flags]     a live view of the bus, like top: rings, WAL,
                            subscribers, uplink (--once --json for scripts)
  framebus publish [flags]  publish synthetic frames as a driver and wait until durable
                            (--stdin: frames given as JSON lines, as tail --json prints)
  framebus tail [flags]     print the frames in the WAL that match a filter, or follow
                            them (framebus tail -h)
  framebus cmd [flags]      send a command to a driver and print its stages
                            (framebus cmd -h)
  framebus wal stats|dump|verify|compact|recover
                            inspect, dump or compact a WAL offline; rebuild a
                            damaged one (framebus wal help)
  framebus uplink status    the NATS JetStream uplink's state
  framebus demo [flags]     a sidecar and simulated drivers for 20 s, with live
                            throughput (framebus demo -h)
  framebus bench [flags]    run the standard benchmarks (ingest, latency, live) with
                            their peers; writes docs/bench.md and plots (framebus bench -h)
  framebus version         print the version
  framebus help            print this help

Environment:
  FRAMEBUS_CPUPROFILE=PREFIX  write a CPU profile of the command to
                              PREFIX.COMMAND.PID (for go tool pprof)
  FRAMEBUS_TRACE=PREFIX       write an execution trace of the command to
                              PREFIX.COMMAND.PID (for go tool trace)
`

func main() {
	os.Exit(profiled(os.Args[1:], os.Stdout, os.Stderr))
}

// profiled runs the command under a CPU profile when FRAMEBUS_CPUPROFILE
// names a file prefix, and under an execution trace when FRAMEBUS_TRACE
// does: each goes to PREFIX.COMMAND.PID (for `go tool pprof` and `go tool
// trace`), so that a sidecar and its drivers can be profiled in the same
// run.
func profiled(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return run(args, stdout, stderr)
	}
	type recorder struct {
		env   string
		start func(io.Writer) error
		stop  func()
	}
	var stops []func()
	for _, r := range []recorder{
		{"FRAMEBUS_CPUPROFILE", pprof.StartCPUProfile, pprof.StopCPUProfile},
		{"FRAMEBUS_TRACE", trace.Start, trace.Stop},
	} {
		prefix := os.Getenv(r.env)
		if prefix == "" {
			continue
		}
		f, err := os.Create(fmt.Sprintf("%s.%s.%d", prefix, args[0], os.Getpid()))
		if err == nil {
			if err = r.start(f); err != nil {
				f.Close()
			}
		}
		if err != nil {
			fmt.Fprintf(stderr, "framebus: %s: %v\n", r.env, err)
			for _, stop := range stops {
				stop()
			}
			return 1
		}
		stops = append(stops, func() {
			r.stop()
			if err := f.Close(); err != nil {
				fmt.Fprintf(stderr, "framebus: %s: %v\n", r.env, err)
			}
		})
	}
	code := run(args, stdout, stderr)
	for _, stop := range stops {
		stop()
	}
	return code
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return runMain(args[1:], stdout, stderr)
	case "stat":
		return statMain(args[1:], stdout, stderr)
	case "publish":
		return publishMain(args[1:], stdout, stderr)
	case "tail":
		return tailMain(args[1:], stdout, stderr)
	case "cmd":
		return cmdMain(args[1:], stdout, stderr)
	case "wal":
		return walMain(args[1:], stdout, stderr)
	case "uplink":
		return uplinkMain(args[1:], stdout, stderr)
	case "demo":
		return demoMain(args[1:], stdout, stderr)
	case "bench":
		return benchMain(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "framebus", version())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "framebus: unknown command %q\n\n%s", args[0], usage)
	return 2
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
