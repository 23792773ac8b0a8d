package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/framebus/framebus/wal"
)

const walUsage = `Usage:
  framebus wal stats  --wal-dir DIR [--name N] [--json]   frames, bytes, sequence range, frames per producer
  framebus wal verify --wal-dir DIR [--name N]            check every segment's checksum and the sequence

DIR is the directory holding framebus.wal, or the sidecar's wal_dir (the WAL of
bus N is then DIR/N). Run them while the sidecar is stopped: the WAL file is
locked while it runs.
`

func walMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "stats" && args[0] != "verify") {
		fmt.Fprint(stderr, walUsage)
		return 2
	}
	fs := flag.NewFlagSet("framebus wal "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("wal-dir", os.Getenv("FRAMEBUS_WAL_DIR"), "WAL directory (see above)")
	name := fs.String("name", "default", "bus name, when --wal-dir is the sidecar's wal_dir")
	asJSON := fs.Bool("json", false, "print JSON (stats)")
	fs.Usage = func() { fmt.Fprint(stderr, walUsage); fs.PrintDefaults() }
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *dir == "" {
		fmt.Fprintln(stderr, "framebus wal: --wal-dir is required")
		return 2
	}
	d := *dir
	if _, err := os.Stat(filepath.Join(d, "framebus.wal")); err != nil {
		d = filepath.Join(d, *name)
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
	default:
		rep, err := wal.Verify(d)
		fmt.Fprintf(stdout, "WAL %s: %d segments, %d frames, %d bytes, sequence %d..%d\n", d, rep.Segments, rep.Frames, rep.Bytes, rep.FirstSeq, rep.LastSeq)
		for _, p := range rep.Problems {
			fmt.Fprintln(stdout, "  problem:", p)
		}
		if err != nil {
			fmt.Fprintln(stderr, "framebus wal verify:", err)
			return 1
		}
		fmt.Fprintln(stdout, "ok")
		return 0
	}
}
