//go:build amd64 || arm64

package shm

// storeRelease64 stores v at addr with release semantics: every write the
// caller made before it is visible to a process that loads v (with
// sync/atomic's Load). It is cheaper than sync/atomic's Store, which is
// sequentially consistent and on x86-64 a locked XCHG that stalls until the
// store buffer drains; that stall, once per record, was most of a producer's
// time. See Event.Wait for the one place that needed the stronger order.
//
//go:noescape
func storeRelease64(addr *uint64, v uint64)

// prefetchWrite asks the CPU to bring the cache line of addr into this core's
// cache in a writable state (PREFETCHW / PRFM PSTL1KEEP). It is a hint: it
// never faults and changes no memory.
//
//go:noescape
func prefetchWrite(addr *byte)

// storeRelease64x2 is storeRelease64(a, av) then storeRelease64(b, bv), in
// one call.
//
//go:noescape
func storeRelease64x2(a *uint64, av uint64, b *uint64, bv uint64)
