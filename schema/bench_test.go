package schema

import (
	"fmt"
	"testing"
)

var benchPoints = []int{1, 10}

// BenchmarkEncode measures producing one DataFrame into a ring-slot-sized
// destination: path=builder encodes the Go struct with an Encoder and copies
// the result; path=template updates seq and every point's value, quality
// and timestamp in a DataTemplate and copies the frame.
func BenchmarkEncode(b *testing.B) {
	for _, n := range benchPoints {
		b.Run(fmt.Sprintf("path=builder/points=%d", n), func(b *testing.B) {
			f := sampleData(n)
			var e Encoder
			dst := make([]byte, 0, 4096)
			b.SetBytes(int64(len(e.EncodeData(f))))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				f.Seq = uint64(i)
				for j := range f.Points {
					f.Points[j].Value = F64(float64(i))
					f.Points[j].TsNs = int64(i)
				}
				dst = append(dst[:0], e.EncodeData(f)...)
			}
			reportFrameRate(b)
		})
	}
	for _, n := range benchPoints {
		b.Run(fmt.Sprintf("path=template/points=%d", n), func(b *testing.B) {
			tags := make([]TemplateTag, n)
			for j, p := range samplePoints(n) {
				tags[j] = TemplateTag{Tag: p.Tag, Alias: p.Alias, Type: TypeF64}
			}
			t, err := NewDataTemplate("modbus-1", "plc-17", tags)
			if err != nil {
				b.Fatal(err)
			}
			dst := make([]byte, 4096)
			b.SetBytes(int64(t.Len()))
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				t.SetSeq(uint64(i))
				for j := range n {
					t.SetF64(j, float64(i))
					t.SetQuality(j, QualityGood)
					t.SetTs(j, int64(i))
				}
				if _, err := t.CopyTo(dst); err != nil {
					b.Fatal(err)
				}
			}
			reportFrameRate(b)
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	for _, n := range benchPoints {
		b.Run(fmt.Sprintf("points=%d", n), func(b *testing.B) {
			var e Encoder
			buf := e.AppendData(nil, sampleData(n))
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				if err := Verify(KindData, buf); err != nil {
					b.Fatal(err)
				}
			}
			reportFrameRate(b)
		})
	}
}

func BenchmarkJSON(b *testing.B) {
	for _, n := range benchPoints {
		b.Run(fmt.Sprintf("points=%d", n), func(b *testing.B) {
			var e Encoder
			buf := e.AppendData(nil, sampleData(n))
			dst := make([]byte, 0, 8192)
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if dst, err = AppendJSON(dst[:0], KindData, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// reportFrameRate reports frames per second of one goroutine, one frame per
// iteration.
func reportFrameRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
}
