package shm

import (
	"fmt"
	"testing"
)

// BenchmarkLocalClaimCommit is the producer's and consumer's CPU cost with
// no second core involved: one goroutine commits 256 records, then drains them.
func BenchmarkLocalClaimCommit(b *testing.B) {
	for _, batch := range []int{1, 64} {
		b.Run(fmt.Sprintf("size=128/batch=%d", batch), func(b *testing.B) {
			s := newSegment(b, 8<<20)
			r := newRing(b, s, KindIngressSPSC, 4<<20)
			p := mustProducer(b, r, 1)
			c := mustConsumer(b, r)
			src := make([]byte, 120)
			sizes := make([]int, batch)
			for i := range sizes {
				sizes[i] = 120
			}
			b.SetBytes(128)
			b.ResetTimer()
			for i := 0; i < b.N; {
				for k := 0; k < 256 && i < b.N; {
					if batch == 1 {
						cl, err := p.Claim(1, 120)
						if err != nil {
							b.Fatal(err)
						}
						copy(cl.Buf, src)
						p.Commit(cl)
						k++
						i++
						continue
					}
					bt, err := p.ClaimBatch(1, sizes)
					if err != nil {
						b.Fatal(err)
					}
					for j := 0; j < batch; j++ {
						copy(p.Next(&bt), src)
					}
					p.CommitBatch(&bt)
					k += batch
					i += batch
				}
				c.Poll(0, func(Record) {})
				c.Release(c.ReadPos())
			}
		})
	}
}
