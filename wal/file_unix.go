//go:build unix

package wal

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// lockFile takes bbolt's lock on f, as bbolt itself takes it (flock:
// exclusive for a writer, shared for a reader), waiting up to timeout; it
// fails with ErrLocked when another process holds it. The lock belongs to
// f's open file description, so bbolt, opening the database through the
// same *os.File, gets it again at once and keeps it: whatever is checked
// under it is what bbolt then opens.
func lockFile(f *os.File, exclusive bool, timeout time.Duration) error {
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("wal: lock %s: %w", f.Name(), err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s (waited %v)", ErrLocked, f.Name(), timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mapFile maps the first size bytes of f read-only, for the checks that
// read a file without bbolt (boltfile.go); size must be positive.
func mapFile(f *os.File, size int64) ([]byte, error) {
	b, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("wal: map %s: %w", f.Name(), err)
	}
	return b, nil
}

// unmapFile undoes mapFile.
func unmapFile(b []byte) error { return unix.Munmap(b) }
