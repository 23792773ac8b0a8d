package shm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// ProcessStart returns the start time of process pid in clock ticks since
// boot (field 22 of /proc/<pid>/stat). Together with the pid it names a
// process unambiguously: a recycled pid has another start time.
func ProcessStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces or
	// parentheses itself; fields after the last ')' are plain numbers.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("shm: unexpected /proc/%d/stat", pid)
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 (state); starttime is field 22.
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("shm: unexpected /proc/%d/stat", pid)
	}
	return strconv.ParseUint(string(fields[idx]), 10, 64)
}

// ProcessAlive reports whether the process pid that started at start (as
// returned by ProcessStart; zero skips that check) still exists. A zombie
// counts as gone: it can no longer write to shared memory.
func ProcessAlive(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	if err := unix.Kill(pid, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return false
	}
	fields := bytes.Fields(b[i+1:])
	if len(fields) > 0 && (fields[0][0] == 'Z' || fields[0][0] == 'X') {
		return false
	}
	if start == 0 {
		return true
	}
	got, err := ProcessStart(pid)
	return err == nil && got == start
}
