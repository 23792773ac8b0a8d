package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/framebus/framebus/wal"
)

const walUsage = `Usage:
  framebus wal stats   --wal-dir DIR [--name N] [--json]  frames, bytes, sequence range, frames per producer
  framebus wal dump    --wal-dir DIR [--name N] [--from SEQ] [--to SEQ] [--limit K]
                       [--producer P] [--device D] [--tag GLOB] [--kind data|command|ack]
                                                          print the frames, in order, one JSON object a
                                                          line, as framebus tail --json does (docs/json.md)
  framebus wal verify  --wal-dir DIR [--name N]           check every page, every segment's checksum and
                                                          the sequence; exit status 1 if anything is damaged
  framebus wal compact --wal-dir DIR [--name N] [--keep-backup]
                                                          rewrite the file with only what it holds (bbolt
                                                          files never shrink by themselves); refuses a
                                                          damaged WAL; --keep-backup keeps the old file as
                                                          framebus.wal.bak-TIME
  framebus wal recover --wal-dir DIR [--name N]           if the WAL is damaged, move the file aside and
                                                          rebuild it from every intact segment (what
                                                          framebus run --wal-recover does at start)

DIR is the directory holding framebus.wal, or the sidecar's wal_dir (the WAL of
bus N is then DIR/N). Run them while the sidecar is stopped: the WAL file is
locked while it runs (framebus tail reads a running bus). dump, verify and
compact draw a progress bar on stderr when it is a terminal. docs/wal-tools.md
describes the tools, docs/wal-recovery.md damage and recovery.
`

func walMain(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
		fmt.Fprint(stdout, walUsage)
		return 0
	}
	if len(args) == 0 || !slices.Contains([]string{"stats", "dump", "verify", "compact", "recover"}, args[0]) {
		fmt.Fprint(stderr, walUsage)
		return 2
	}
	switch args[0] {
	case "dump":
		return walDumpMain(args[1:], stdout, stderr)
	case "compact":
		return walCompactMain(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("framebus wal "+args[0], flag.ContinueOnError)
	dirFlag := walDirFlags(fs, stderr)
	asJSON := fs.Bool("json", false, "print JSON (stats)")
	if code, ok := parseWALFlags(fs, args[1:], stderr); !ok {
		return code
	}
	d, ok := dirFlag.resolve("framebus wal "+args[0], stderr)
	if !ok {
		return 2
	}
	switch args[0] {
	case "stats":
		st, err := wal.ReadStats(d)
		if err != nil {
			fmt.Fprintln(stderr, "framebus wal stats:", err)
			return 1
		}
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			enc.Encode(st)
			return 0
		}
		fmt.Fprintf(stdout, "WAL %s\nframes %d, bytes %d, sequence %d..%d\n", d, st.Frames, st.Bytes, st.FirstSeq, st.LastSeq)
		names := make([]string, 0, len(st.Producers))
		for n := range st.Producers {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(stdout, "  %-32s %d frames\n", n, st.Producers[n].Frames)
		}
		return 0
	case "recover":
		return walRecover(d, stdout, stderr)
	default:
		bar := newProgressBar(stderr)
		var progress func(done, total uint64)
		if bar != nil {
			bar.set("checking the pages", "frames", 0, 0)
			progress = func(done, total uint64) { bar.set("checking the segments", "frames", int64(done), int64(total)) }
		}
		rep, err := wal.VerifyProgress(d, progress)
		bar.finish()
		fmt.Fprintf(stdout, "WAL %s: %d segments, %d frames, %d bytes, sequence %d..%d\n", d, rep.Segments, rep.Frames, rep.Bytes, rep.FirstSeq, rep.LastSeq)
		if rep.Lost > 0 {
			fmt.Fprintf(stdout, "  %d frames recorded as lost by a recovery (their sequence numbers are never used again)\n", rep.Lost)
		}
		for _, p := range rep.Problems {
			fmt.Fprintln(stdout, "  problem:", p)
		}
		if err != nil {
			fmt.Fprintln(stderr, "framebus wal verify:", err)
			if errors.Is(err, wal.ErrCorrupt) {
				fmt.Fprintln(stderr, "To keep every intact segment and move the damaged file aside: framebus wal recover, or framebus run --wal-recover (docs/wal-recovery.md).")
			}
			return 1
		}
		fmt.Fprintln(stdout, "ok")
		return 0
	}
}

// walDir is the --wal-dir and --name flags of the wal commands.
type walDir struct{ dir, name *string }

// walDirFlags defines --wal-dir and --name on fs, and its usage text.
func walDirFlags(fs *flag.FlagSet, stderr io.Writer) walDir {
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, walUsage, "\nFlags of ", fs.Name(), ":\n"); fs.PrintDefaults() }
	return walDir{
		dir:  fs.String("wal-dir", os.Getenv("FRAMEBUS_WAL_DIR"), "WAL directory (see above; default $FRAMEBUS_WAL_DIR)"),
		name: fs.String("name", "default", "bus name, when --wal-dir is the sidecar's wal_dir"),
	}
}

// parseWALFlags parses args into fs; ok false means: return code (0
// after -h, 2 after a usage error, which it reported).
func parseWALFlags(fs *flag.FlagSet, args []string, stderr io.Writer) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q (see -h)\n", fs.Name(), fs.Arg(0))
		return 2, false
	}
	return 0, true
}

// resolve returns the directory of the WAL file: --wal-dir if it holds
// framebus.wal, else --wal-dir/--name (the sidecar's layout). ok is false
// (reported) without --wal-dir.
func (w walDir) resolve(cmd string, stderr io.Writer) (dir string, ok bool) {
	if *w.dir == "" {
		fmt.Fprintln(stderr, cmd+": --wal-dir is required")
		return "", false
	}
	dir = *w.dir
	if _, err := os.Stat(filepath.Join(dir, wal.FileName)); err != nil {
		dir = filepath.Join(dir, *w.name)
	}
	return dir, true
}

// walRecover is `framebus wal recover`: wal.Recover and its report.
func walRecover(dir string, stdout, stderr io.Writer) int {
	rep, err := wal.Recover(dir, wal.RecoverOptions{})
	if err != nil {
		fmt.Fprintln(stderr, "framebus wal recover:", err)
		return 1
	}
	if !rep.Damaged {
		fmt.Fprintf(stdout, "WAL %s: nothing is damaged; nothing changed\n", dir)
		return 0
	}
	fmt.Fprintf(stdout, "WAL %s was damaged (read %s):\n", dir, rep.Meta)
	for _, p := range rep.Problems {
		fmt.Fprintln(stdout, "  problem:", p)
	}
	fmt.Fprintf(stdout, "the damaged file is now %s\n", rep.MovedTo)
	fmt.Fprintf(stdout, "kept %d segments, %d frames, sequence %d..%d (%d segments rescued from pages the tree no longer reached)\n",
		rep.KeptSegments, rep.KeptFrames, rep.FirstSeq, rep.LastSeq, rep.Rescued)
	for _, d := range rep.Dropped {
		fmt.Fprintln(stdout, "  dropped:", d)
	}
	fmt.Fprintf(stdout, "kept %d positions (%d dropped), %d cursors (%d dropped); the next frame gets sequence number %d\n",
		rep.Positions, rep.PositionsDropped, rep.Cursors, rep.CursorsDropped, rep.NextSeq)
	if rep.NewIdentity {
		fmt.Fprintln(stdout, "the WAL has a new creation time: how far the damaged WAL went is unknown, so its frame ids (creation time and sequence number) start anew")
	}
	return 0
}
