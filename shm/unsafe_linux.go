package shm

// This is the only file of package shm that imports unsafe. Every helper here
// turns a byte offset inside a mapped segment into a typed atomic pointer.
//
// Why this is sound:
//   - The mapping is created by mmap and never moves or shrinks while a
//     Segment is open (Close unmaps it only after every user is told to stop;
//     a Producer or Consumer must not be used after its Segment is closed).
//     The memory is not Go heap memory, so the garbage collector neither moves
//     nor scans it, and holding a pointer into it is like holding a pointer
//     into C memory.
//   - Every caller passes an offset that it has bounds-checked against
//     len(mem) and that is a multiple of the word's size; the helpers check
//     again and panic on a programming error instead of touching memory
//     outside the mapping. The mapping itself is page aligned, so an aligned
//     offset is an aligned address, as the sync/atomic types require.
//   - sync/atomic operations on shared memory are the same machine
//     instructions whichever process performs them, so they order memory
//     between processes exactly as they do between goroutines.

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// u64At returns the 8-byte word at mem[off:off+8] as an atomic.Uint64.
func u64At(mem []byte, off int) *atomic.Uint64 {
	if off < 0 || off%8 != 0 || off+8 > len(mem) {
		panic("shm: misaligned or out-of-range 64-bit word")
	}
	return (*atomic.Uint64)(unsafe.Pointer(&mem[off]))
}

// rawU64At returns the 8-byte word at mem[off:off+8] as a *uint64, for
// storeRelease64 (an assembly store) and atomic loads of the same word.
func rawU64At(mem []byte, off int) *uint64 {
	if off < 0 || off%8 != 0 || off+8 > len(mem) {
		panic("shm: misaligned or out-of-range 64-bit word")
	}
	return (*uint64)(unsafe.Pointer(&mem[off]))
}

// u32At returns the 4-byte word at mem[off:off+4] as an atomic.Uint32.
func u32At(mem []byte, off int) *atomic.Uint32 {
	if off < 0 || off%4 != 0 || off+4 > len(mem) {
		panic("shm: misaligned or out-of-range 32-bit word")
	}
	return (*atomic.Uint32)(unsafe.Pointer(&mem[off]))
}

// localWord returns 8 bytes of Go heap memory, 8-byte aligned, for an Event
// used only inside this process (NewLocalEvent). Go's collector does not move
// heap objects, and the returned slice keeps the word alive.
func localWord() []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(new(uint64))), 8)
}

// Futex operations. The segment is shared between processes, so these use the
// shared (not FUTEX_PRIVATE_FLAG) variants: the kernel keys the wait queue by
// the backing page, which every process mapping the file agrees on.
const (
	futexWait = 0 // FUTEX_WAIT
	futexWake = 1 // FUTEX_WAKE
)

// futexWaitOn sleeps while the 32-bit word at mem[off] equals val, for at most
// d (d <= 0 waits without a timeout). Spurious returns are normal; callers
// re-check their condition. The word's address is only handed to the kernel
// for the duration of the call, while the mapping is held open.
func futexWaitOn(mem []byte, off int, val uint32, d time.Duration) {
	w := u32At(mem, off)
	var tsp unsafe.Pointer
	var ts unix.Timespec
	if d > 0 {
		ts = unix.NsecToTimespec(int64(d))
		tsp = unsafe.Pointer(&ts)
	}
	// EAGAIN (value changed), EINTR and ETIMEDOUT all mean "look again".
	_, _, _ = unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWait, uintptr(val), uintptr(tsp), 0, 0)
}

// futexWakeAll wakes every process sleeping on the 32-bit word at mem[off].
func futexWakeAll(mem []byte, off int) {
	w := u32At(mem, off)
	_, _, _ = unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWake, uintptr(1<<31-1), 0, 0, 0)
}
