package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/framebus/framebus/wal"
)

// walCompactMain is `framebus wal compact`: wal.Compact, with a progress
// bar on a terminal, and the sizes before and after.
func walCompactMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("framebus wal compact", flag.ContinueOnError)
	dirFlag := walDirFlags(fs, stderr)
	keep := fs.Bool("keep-backup", false, "keep the old file as framebus.wal.bak-TIME beside the new one")
	if code, ok := parseWALFlags(fs, args, stderr); !ok {
		return code
	}
	d, ok := dirFlag.resolve(fs.Name(), stderr)
	if !ok {
		return 2
	}
	opts := wal.CompactOptions{KeepBackup: *keep}
	bar := newProgressBar(stderr)
	if bar != nil {
		opts.Progress = bar.compact
	}
	rep, err := wal.Compact(d, opts)
	bar.finish()
	if err != nil {
		fmt.Fprintln(stderr, "framebus wal compact:", err)
		if errors.Is(err, wal.ErrLocked) {
			fmt.Fprintln(stderr, "Compaction works offline: stop the sidecar of this WAL (and any other framebus wal command on it), compact, then start it again.")
		}
		return 1
	}
	v := rep.Verify
	fmt.Fprintf(stdout, "WAL %s: %s before, %s after\n", d, fmtBytes(float64(rep.BeforeBytes)), fmtBytes(float64(rep.AfterBytes)))
	fmt.Fprintf(stdout, "unchanged: %d segments, %d frames, sequence %d..%d, %d positions, %d cursors\n",
		v.Segments, v.Frames, v.FirstSeq, v.LastSeq, v.Positions, v.Cursors)
	if rep.Backup != "" {
		fmt.Fprintf(stdout, "the old file is kept as %s\n", rep.Backup)
	}
	return 0
}

// progressBar draws the progress of a long wal command on stderr. It is
// only shown when stderr is a terminal: newProgressBar returns nil
// otherwise, and every method of a nil *progressBar does nothing, so that
// scripts, logs and tests see no bar.
type progressBar struct {
	w     io.Writer
	bar   *progressbar.ProgressBar
	desc  string
	total int64
}

// newProgressBar returns a progress bar on stderr, or nil if stderr is not
// a terminal.
func newProgressBar(stderr io.Writer) *progressBar {
	if !isTerminalWriter(stderr) {
		return nil
	}
	return &progressBar{w: stderr}
}

// isTerminalWriter reports whether w is a file open on a terminal.
func isTerminalWriter(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && isTerminal(int(f.Fd()))
}

// set shows done of total for the step desc: a bar when total is
// positive, a spinner with the elapsed time otherwise. Another desc or
// total replaces the bar with a new one. unit is "bytes" (sizes shown in
// KiB, MiB…) or what a count counts ("frames").
func (p *progressBar) set(desc, unit string, done, total int64) {
	if p == nil {
		return
	}
	if total <= 0 {
		total = -1
	}
	if p.bar == nil || desc != p.desc || total != p.total {
		p.finish()
		opts := []progressbar.Option{
			progressbar.OptionSetWriter(p.w),
			progressbar.OptionSetDescription(desc),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100 * time.Millisecond),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionSpinnerType(14),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionSetRenderBlankState(true),
		}
		switch {
		case total < 0: // a spinner: no count
		case unit == "bytes":
			opts = append(opts, progressbar.OptionShowCount(), progressbar.OptionShowBytes(true), progressbar.OptionUseIECUnits(true))
		default:
			opts = append(opts, progressbar.OptionShowCount(), progressbar.OptionSetItsString(unit), progressbar.OptionShowIts())
		}
		p.bar = progressbar.NewOptions64(total, opts...)
		p.desc, p.total = desc, total
	}
	if total > 0 {
		p.bar.Set64(min(done, total))
	}
}

// finish clears the bar from the terminal.
func (p *progressBar) finish() {
	if p == nil || p.bar == nil {
		return
	}
	p.bar.Finish()
	p.bar = nil
}

// compact is a wal.CompactOptions.Progress.
func (p *progressBar) compact(c wal.CompactProgress) {
	switch {
	case c.Phase == wal.CompactVerify:
		p.set("verifying the WAL", "bytes", 0, 0)
	case c.Phase == wal.CompactCopy:
		p.set("writing the compacted copy", "bytes", c.Done, c.Total)
	case c.Total > 0:
		p.set("comparing the copy with the WAL", "bytes", c.Done, c.Total)
	default:
		p.set("verifying the copy", "bytes", 0, 0)
	}
}
