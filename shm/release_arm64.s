#include "textflag.h"

// func storeRelease64(addr *uint64, v uint64)
//
// STLR: a store-release. Earlier loads and stores are visible before it, and a
// later LDAR (sync/atomic's Load) is not reordered before it.
TEXT ·storeRelease64(SB), NOSPLIT, $0-16
	MOVD addr+0(FP), R0
	MOVD v+8(FP), R1
	STLR R1, (R0)
	RET

// func prefetchWrite(addr *byte)
TEXT ·prefetchWrite(SB), NOSPLIT, $0-8
	MOVD addr+0(FP), R0
	PRFM (R0), PSTL1KEEP
	RET

// func storeRelease64x2(a *uint64, av uint64, b *uint64, bv uint64)
TEXT ·storeRelease64x2(SB), NOSPLIT, $0-32
	MOVD a+0(FP), R0
	MOVD av+8(FP), R1
	MOVD b+16(FP), R2
	MOVD bv+24(FP), R3
	STLR R1, (R0)
	STLR R3, (R2)
	RET
