//go:build !amd64 && !arm64

package shm

import "sync/atomic"

// storeRelease64 falls back to a sequentially consistent store, which is
// stronger than needed.
func storeRelease64(addr *uint64, v uint64) { atomic.StoreUint64(addr, v) }

// prefetchWrite is a no-op where no prefetch instruction is wired up.
func prefetchWrite(addr *byte) {}

func storeRelease64x2(a *uint64, av uint64, b *uint64, bv uint64) {
	atomic.StoreUint64(a, av)
	atomic.StoreUint64(b, bv)
}
