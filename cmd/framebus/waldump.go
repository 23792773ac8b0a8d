package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path"
	"slices"
	"syscall"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/wal"
)

// errDumpLimit stops the iteration at --limit.
var errDumpLimit = errors.New("limit reached")

// walDumpMain is `framebus wal dump`: the frames of a stopped bus's WAL as
// JSON lines, the lines of `framebus tail --json`.
func walDumpMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("framebus wal dump", flag.ContinueOnError)
	dirFlag := walDirFlags(fs, stderr)
	var (
		opts   wal.IterateOptions
		filter client.Filter
		kinds  kindsFlag
		limit  uint64
	)
	fs.Uint64Var(&opts.From, "from", 0, "first WAL sequence number (0: the oldest frame stored)")
	fs.Uint64Var(&opts.To, "to", 0, "last WAL sequence number, included (0: the newest frame)")
	fs.Uint64Var(&limit, "limit", 0, "stop after printing this many frames (0: no limit)")
	fs.StringVar(&filter.Producer, "producer", "", "only frames of this producer (data) or target (commands)")
	fs.StringVar(&filter.Device, "device", "", "only frames of this device")
	fs.StringVar(&filter.Tag, "tag", "", "only frames with a point whose tag matches this glob (path.Match: * ? [...])")
	fs.Var(&kinds, "kind", "only frames of these kinds: data, command, ack (repeat the flag or separate with commas)")
	if code, ok := parseWALFlags(fs, args, stderr); !ok {
		return code
	}
	filter.Kinds = kinds
	if opts.To != 0 && opts.From > opts.To {
		fmt.Fprintf(stderr, "framebus wal dump: --from %d is after --to %d\n", opts.From, opts.To)
		return 2
	}
	if _, err := path.Match(filter.Tag, ""); err != nil {
		fmt.Fprintf(stderr, "framebus wal dump: --tag %q: %v\n", filter.Tag, err)
		return 2
	}
	d, ok := dirFlag.resolve(fs.Name(), stderr)
	if !ok {
		return 2
	}

	// A closed stdout (| head) must end the dump quietly: with SIGPIPE
	// notified, a write to it fails with EPIPE instead of killing the
	// process.
	sigpipe := make(chan os.Signal, 1)
	signal.Notify(sigpipe, syscall.SIGPIPE)
	defer signal.Stop(sigpipe)

	// The bar shows how far into the sequence range the dump is: only
	// when the frames go to a file or a pipe, and stderr is a terminal.
	var bar *progressBar
	if !isTerminalWriter(stdout) {
		bar = newProgressBar(stderr)
	}
	if bar != nil {
		opts.Progress = func(done, total uint64) { bar.set("reading the WAL", "frames", int64(done), int64(total)) }
	}

	out := bufio.NewWriterSize(stdout, 64<<10)
	var (
		f        lineFormatter
		line     []byte
		printed  uint64
		bad      uint64
		writeErr error
	)
	decode := filter.Producer != "" || filter.Device != "" || filter.Tag != ""
	err := wal.IterateFile(d, opts, func(seq uint64, fr wal.Frame) error {
		kind := schema.Kind(fr.Kind)
		if len(filter.Kinds) > 0 && !slices.Contains(filter.Kinds, kind) {
			return nil
		}
		if decode {
			if err := schema.Verify(kind, fr.Data); err != nil {
				bad++
				fmt.Fprintf(stderr, "framebus wal dump: skipping frame %d: %v\n", seq, err)
				return nil
			}
			if !matchFilter(&filter, kind, fr.Data) {
				return nil
			}
		}
		var ferr error
		line, ferr = f.appendFrame(line[:0], seq, kind, fr.Data, true)
		if ferr != nil {
			bad++
			fmt.Fprintf(stderr, "framebus wal dump: skipping frame %d: %v\n", seq, ferr)
			return nil
		}
		line = append(line, '\n')
		if _, writeErr = out.Write(line); writeErr != nil {
			return writeErr
		}
		if printed++; limit != 0 && printed >= limit {
			return errDumpLimit
		}
		return nil
	})
	if ferr := out.Flush(); writeErr == nil {
		writeErr = ferr
	}
	bar.finish()
	if errors.Is(writeErr, syscall.EPIPE) {
		return 0 // the reader has all it wanted
	}
	if writeErr != nil {
		fmt.Fprintln(stderr, "framebus wal dump: write:", writeErr)
		return 1
	}
	if err != nil && !errors.Is(err, errDumpLimit) {
		fmt.Fprintln(stderr, "framebus wal dump:", err)
		switch {
		case errors.Is(err, wal.ErrLocked):
			fmt.Fprintln(stderr, "The WAL is locked while its sidecar runs: stop the sidecar, or read the running bus with `framebus tail --json --from SEQ` (framebus tail -h).")
		case errors.Is(err, wal.ErrCorrupt):
			fmt.Fprintf(stderr, "The frames before the damage were printed. See what is damaged with `framebus wal verify --wal-dir %s`; `framebus wal recover` keeps every intact segment (docs/wal-recovery.md).\n", d)
		}
		return 1
	}
	if bad > 0 {
		fmt.Fprintf(stderr, "framebus wal dump: %d frames skipped: they fail the schema check (framebus wal stats counts them as invalid)\n", bad)
		return 1
	}
	return 0
}

// matchFilter applies a tail/dump filter to a verified frame.
func matchFilter(f *client.Filter, kind schema.Kind, buf []byte) bool {
	if len(f.Kinds) > 0 && !slices.Contains(f.Kinds, kind) {
		return false
	}
	return schema.Match(kind, buf, f.Producer, f.Device, f.Tag)
}
