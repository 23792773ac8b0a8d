package shm

import (
	"context"
	"runtime"
	"sync/atomic"
	"time"
)

// Event is an eventcount in shared memory: a 32-bit sequence that is the
// futex word and a 32-bit count of sleepers. It lets a waiter sleep in the
// kernel while a signaller pays nothing (one shared load) when nobody sleeps.
//
// Protocol:
//
//	waiter:    s := seq; waiters++; if cond() { waiters--; done }; futex_wait(seq, s); waiters--
//	signaller: publish data; if waiters != 0 { seq++; futex_wake(seq) }
//
// With sequentially consistent publication, either the signaller sees the
// waiter's increment and wakes it (the seq change makes a futex_wait that has
// not started yet return at once), or the waiter's re-check of cond sees the
// data. Producers publish with cheaper release stores, so the waiter's first
// sleep is bounded by firstSleep (see Wait).
type Event struct {
	mem     []byte
	off     int            // offset of the event's 8 bytes in mem
	waiters *atomic.Uint32 // the waiter count, at off+evWaiters
}

func newEvent(mem []byte, off int) Event {
	return Event{mem: mem, off: off, waiters: u32At(mem, off+evWaiters)}
}

// Signal wakes every sleeper, and costs one load when there is none.
func (e *Event) Signal() {
	if e.waiters.Load() != 0 {
		e.Wake()
	}
}

// Wake bumps the sequence and wakes every sleeper unconditionally.
func (e Event) Wake() {
	u32At(e.mem, e.off+evSeq).Add(1)
	futexWakeAll(e.mem, e.off+evSeq)
}

// Waiters returns the number of sleepers (for tests and metrics).
func (e Event) Waiters() uint32 { return u32At(e.mem, e.off+evWaiters).Load() }

// firstSleep bounds a waiter's first sleep; see Wait.
const firstSleep = time.Millisecond

// DefaultSpin is how long Wait spins before it sleeps in the kernel: long
// enough to catch a producer that commits again within a few microseconds,
// short enough that an idle consumer costs nothing measurable.
const DefaultSpin = 20 * time.Microsecond

// Wait returns when cond() is true (true), or when ctx is done (false). It
// spins for up to spin checking cond, then sleeps on the futex until a
// Signal. cond must be cheap and must not block.
func (e Event) Wait(ctx context.Context, spin time.Duration, cond func() bool) bool {
	if cond() {
		return true
	}
	if spin > 0 {
		start := time.Now()
		for i := 1; ; i++ {
			if cond() {
				return true
			}
			if i%64 == 0 {
				if time.Since(start) >= spin {
					break
				}
				runtime.Gosched()
			}
		}
	}
	seq := u32At(e.mem, e.off+evSeq)
	waiters := u32At(e.mem, e.off+evWaiters)
	var stop func() bool
	var woke chan struct{} // closed when the cancellation wake-up has run
	first := true
	defer func() {
		if stop != nil && !stop() {
			// The wake-up has started: let it finish, so that it never
			// touches the mapping after Wait returned (the caller may
			// unmap it).
			<-woke
		}
	}()
	for {
		if ctx.Err() != nil {
			return cond()
		}
		s := seq.Load()
		waiters.Add(1)
		if cond() {
			waiters.Add(^uint32(0))
			return true
		}
		if stop == nil && ctx.Done() != nil {
			// Cancellation wakes us like a Signal would; the seq bump
			// closes the window between the check above and the sleep.
			woke = make(chan struct{})
			stop = context.AfterFunc(ctx, func() { e.Wake(); close(woke) })
		}
		var d time.Duration
		if dl, ok := ctx.Deadline(); ok {
			if d = time.Until(dl); d <= 0 {
				waiters.Add(^uint32(0))
				return cond()
			}
		}
		if first {
			// Producers publish with release stores: a commit may still
			// have been in a store buffer when its producer read a zero
			// waiter count. Look again after a short sleep; by then it
			// is visible, and every later producer sees our count.
			first = false
			if d == 0 || d > firstSleep {
				d = firstSleep
			}
		}
		futexWaitOn(e.mem, e.off+evSeq, s, d)
		waiters.Add(^uint32(0))
		if cond() {
			return true
		}
	}
}

// NewLocalEvent returns an Event in this process's own memory, for one
// goroutine to sleep on until another signals it, without a Go channel or
// timer: its sleep is a futex wait with a precise timeout (see WaitFor).
func NewLocalEvent() Event {
	// 8-byte aligned: the words are accessed atomically.
	return newEvent(localWord(), 0)
}

// WaitFor returns when cond() is true (true), or after d (cond() then).
// It does not spin, and it allocates nothing: it suits a short, bounded
// pause that a Signal may cut short. The signaller must publish what cond
// reads with a sequentially consistent store (sync/atomic) before Signal.
func (e Event) WaitFor(d time.Duration, cond func() bool) bool {
	seq := u32At(e.mem, e.off+evSeq)
	deadline := time.Now().Add(d)
	for {
		s := seq.Load()
		e.waiters.Add(1)
		if cond() {
			e.waiters.Add(^uint32(0))
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			e.waiters.Add(^uint32(0))
			return false
		}
		futexWaitOn(e.mem, e.off+evSeq, s, left)
		e.waiters.Add(^uint32(0))
	}
}
