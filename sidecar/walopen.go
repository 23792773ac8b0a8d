package sidecar

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/framebus/framebus/shm"
	"github.com/framebus/framebus/wal"
)

// WAL damage at start. wal.Open checks the file's structure (both bbolt
// meta pages, the file's length, every page of the tree) and the last
// segment; a damaged file stops the start with an error wrapping
// wal.ErrCorrupt that says what to do (`framebus run` exits with status 3).
// A damaged older segment passes that check (checking every segment's
// CRC would read the whole file at every start): it is found when a
// subscriber, the uplink or `framebus wal verify` reads it.
//
// With wal_recover the sidecar first runs wal.Recover, which reads the
// whole file, every segment's CRC included, and, only if something is
// damaged, moves the file aside and rebuilds the WAL from every intact
// segment; docs/wal-recovery.md is the operator's guide.

// openWAL opens the bus's WAL in dir, recovering it first if wal_recover
// is set.
func (s *Sidecar) openWAL(dir string, hooks *wal.Hooks) (*wal.WAL, error) {
	cfg := s.cfg
	if cfg.WALRecover {
		if err := s.recoverWAL(dir); err != nil {
			return nil, err
		}
	}
	s.warnWALSpace(dir)
	w, err := wal.Open(wal.Options{
		Dir:           dir,
		FlushInterval: cfg.WALFlush.Duration,
		MaxBytes:      cfg.WALMaxBytes,
		MaxAge:        cfg.WALMaxAge.Duration,
		// Commit early at a quarter of the memory bound, so that the
		// byte trigger fires well before the queue is full.
		MaxBatchBytes:  int(max(cfg.MaxMemoryBytes/4, 64<<10)),
		MaxMemoryBytes: cfg.MaxMemoryBytes,
		Compress:       cfg.WALCompression == "s2",
		CursorPolicy:   cfg.CursorPolicy,
		OnCursorLost:   s.onCursorLost,
		OnCommit:       s.onCommit,
		OnError:        s.onWALError,
		Hooks:          hooks,
	})
	switch {
	case errors.Is(err, wal.ErrCorrupt):
		return nil, fmt.Errorf("sidecar: the WAL in %s is damaged: %w\n"+
			"Run `framebus wal verify --wal-dir %s` for details, or start with --wal-recover (FRAMEBUS_WAL_RECOVER=true) "+
			"to keep every intact segment and move the damaged file aside (see docs/wal-recovery.md)", dir, err, dir)
	case err != nil:
		return nil, fmt.Errorf("sidecar: open WAL in %s: %w", dir, err)
	}
	return w, nil
}

// recoverWAL runs wal.Recover on dir and logs what it found and did.
func (s *Sidecar) recoverWAL(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, wal.FileName)); errors.Is(err, os.ErrNotExist) {
		return nil // a new WAL
	}
	// The durable watermark the last sidecar left in the segment (if it is
	// still there) is a sequence number known to be committed.
	var watermark uint64
	if seg, err := shm.Open(s.cfg.ShmDir, s.cfg.Name); err == nil {
		watermark = seg.Durable()
		seg.Close()
	}
	s.log.Info("wal_recover: checking every page and segment of the WAL", "dir", dir, "known_durable", watermark)
	rep, err := wal.Recover(dir, wal.RecoverOptions{MinLastSeq: watermark})
	if err != nil {
		return fmt.Errorf("sidecar: recover the WAL in %s: %w", dir, err)
	}
	if !rep.Damaged {
		s.log.Info("wal_recover: the WAL is sound; nothing to recover", "dir", dir)
		return nil
	}
	for i, p := range rep.Problems {
		if i == 20 {
			s.log.Warn("WAL damage found: more problems (framebus wal verify on the damaged file lists them)", "more", len(rep.Problems)-i)
			break
		}
		s.log.Warn("WAL damage found", "problem", p)
	}
	var dropped uint64
	for _, d := range rep.Dropped {
		if d.First > 0 && d.Last >= d.First {
			dropped += d.Last - d.First + 1
		}
		s.log.Error("WAL recovery dropped frames", "first_seq", d.First, "last_seq", d.Last, "reason", d.Reason)
	}
	s.log.Warn("WAL recovered: rebuilt from every intact segment; the damaged file is kept",
		"damaged_file", rep.MovedTo, "read", rep.Meta, "kept_segments", rep.KeptSegments, "kept_frames", rep.KeptFrames,
		"first_seq", rep.FirstSeq, "last_seq", rep.LastSeq, "rescued_segments", rep.Rescued, "damaged_segments", rep.DroppedSegments,
		"dropped_frames_known", dropped, "next_seq", rep.NextSeq, "new_identity", rep.NewIdentity,
		"positions", rep.Positions, "positions_dropped", rep.PositionsDropped, "cursors", rep.Cursors, "cursors_dropped", rep.CursorsDropped)
	if rep.PositionsDropped > 0 {
		s.log.Warn("WAL recovery lost ring positions: those rings are drained again from what they still hold; frames committed but not yet released may be stored twice")
	}
	return nil
}

// warnWALSpace warns when wal_max_bytes is more than the WAL's filesystem
// can hold: the disk then fills before retention acts, and the sidecar
// runs DEGRADED (frames held in memory, then in the rings) until space is
// freed.
func (s *Sidecar) warnWALSpace(dir string) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return
	}
	var used int64
	if fi, err := os.Stat(filepath.Join(dir, wal.FileName)); err == nil {
		used = fi.Size()
	}
	avail := int64(st.Bavail)*int64(st.Bsize) + used
	// The file takes wal_max_bytes, its branch pages and bbolt's growth
	// step (wal package doc: about 6 % together), and the pages of the two
	// commits in flight, each of which may hold a whole ring's batch
	// (measured: 3.4 MB for wal_max_bytes 2MiB and 1MiB rings).
	if need := s.cfg.WALMaxBytes + s.cfg.WALMaxBytes/16 + 2*int64(s.cfg.RingBytes); need > avail {
		s.log.Warn("wal_max_bytes is more than the WAL's filesystem has room for: the disk will fill before retention deletes anything, and the sidecar will then hold frames in memory and pause producers (DEGRADED) until space is freed; lower wal_max_bytes",
			"wal_max_bytes", s.cfg.WALMaxBytes, "need_bytes", need, "room_bytes", avail, "dir", dir)
	}
}
