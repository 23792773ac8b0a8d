package sidecar

import (
	"context"
	"testing"

	"github.com/framebus/framebus/client"
	"github.com/framebus/framebus/schema"
)

// BenchmarkIngestInProcess runs the sidecar and one publisher in this
// process (for profiling the whole path with -cpuprofile); the end-to-end
// benchmark with separate processes is test.BenchmarkEndToEnd.
func BenchmarkIngestInProcess(b *testing.B) {
	benchIngest(b, testConfig(b, "--preset", "high-throughput", "--ring-bytes", "33554432"))
}

func benchIngest(b *testing.B, cfg Config) {
	s, err := New(cfg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	ctx := context.Background()
	pub, err := client.Dial(ctx, client.Config{Name: cfg.Name, RunDir: cfg.RunDir, Producer: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	tpl, _ := schema.NewDataTemplate("bench", "sim", []schema.TemplateTag{{Tag: "sim/tag0", Type: schema.TypeF64}})
	b.SetBytes(int64(tpl.Len()))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tpl.SetSeq(uint64(i))
		tpl.SetF64(0, float64(i))
		if err := pub.Publish(ctx, tpl.Bytes()); err != nil {
			b.Fatal(err)
		}
	}
	if err := pub.WaitDurable(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
}
