#include "textflag.h"

// func storeRelease64(addr *uint64, v uint64)
//
// A plain MOV: x86-64 never reorders a store with earlier loads or stores
// (TSO), and the call is opaque to the compiler, so every earlier write of the
// caller is visible before this one. Unlike sync/atomic's Store (XCHG), it
// does not wait for the store buffer to drain.
TEXT ·storeRelease64(SB), NOSPLIT, $0-16
	MOVQ addr+0(FP), AX
	MOVQ v+8(FP), BX
	MOVQ BX, 0(AX)
	RET

// func prefetchWrite(addr *byte)
TEXT ·prefetchWrite(SB), NOSPLIT, $0-8
	MOVQ addr+0(FP), AX
	BYTE $0x0F; BYTE $0x0D; BYTE $0x08 // PREFETCHW (AX)
	RET

// func storeRelease64x2(a *uint64, av uint64, b *uint64, bv uint64)
//
// Two release stores in order: av at a, then bv at b.
TEXT ·storeRelease64x2(SB), NOSPLIT, $0-32
	MOVQ a+0(FP), AX
	MOVQ av+8(FP), BX
	MOVQ b+16(FP), CX
	MOVQ bv+24(FP), DX
	MOVQ BX, 0(AX)
	MOVQ DX, 0(CX)
	RET
