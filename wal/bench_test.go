package wal

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/framebus/framebus/schema"
)

// Results of the peers, for the ratios the WAL reports; BenchmarkDurableIngest
// runs them first, in the same process.
var (
	benchMu        sync.Mutex
	benchDiskMBps  float64
	benchNaiveFPS  float64
	benchFrameSize = 100
)

// BenchmarkDurableIngest measures durable ingest of 100-byte frames with
// fsync'd group commits (FlushInterval 5 ms, the high-throughput preset),
// next to two peers measured in the same run:
//
//   - peer=disk: the disk's fsync'd sequential bandwidth, 1 MiB writes to a
//     file in the same directory with fdatasync every 4 MiB or 5 ms;
//   - peer=naive-bbolt: one bbolt Update (and fsync) per frame, key = seq.
//
// The WAL's sub-benchmarks append batches of 64 frames (a drain batch) or
// single frames, as fast as Append accepts them (it refuses with
// ErrQueueFull when 64 MiB are pending: the benchmark then waits, as a
// paused producer would), and stop the clock when the last frame is
// durable. x-disk is the WAL's payload MB/s over the disk's, x-naive its
// frames/s over naive bbolt's.
//
// peer=wal/compress=s2 runs the same with Options.Compress. The 100-byte
// frames are a byte ramp with the loop index in front: far more
// compressible than real traffic. frames=template runs use encoded
// DataFrames of schema.NewDataTemplate with one point instead, seq, value
// and timestamp changing every frame, as a gateway sends them.
func BenchmarkDurableIngest(b *testing.B) {
	b.Run("peer=disk", benchDisk)
	b.Run("peer=naive-bbolt", benchNaiveBbolt)
	for _, batch := range []int{64, 1} {
		b.Run("peer=wal/batch="+strconv.Itoa(batch), func(b *testing.B) { benchWAL(b, batch, false, false) })
	}
	for _, batch := range []int{64, 1} {
		b.Run("peer=wal/compress=s2/batch="+strconv.Itoa(batch), func(b *testing.B) { benchWAL(b, batch, true, false) })
	}
	for _, c := range []bool{false, true} {
		name := "peer=wal/frames=template/batch=64"
		if c {
			name = "peer=wal/compress=s2/frames=template/batch=64"
		}
		b.Run(name, func(b *testing.B) { benchWAL(b, 64, c, true) })
	}
}

func benchWAL(b *testing.B, batch int, compress, template bool) {
	var commits, commitNs, commitFrames int64
	var mu sync.Mutex
	w, err := Open(Options{
		Dir:           b.TempDir(),
		FlushInterval: 5 * time.Millisecond,
		Compress:      compress,
		OnCommit: func(c Commit) {
			mu.Lock()
			commits++
			commitNs += int64(c.Duration)
			commitFrames += int64(c.Frames)
			mu.Unlock()
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	frameSize := benchFrameSize
	var tmpl *schema.DataTemplate
	if template {
		tmpl, err = schema.NewDataTemplate("modbus-1", "plc-17", []schema.TemplateTag{{Tag: "temperature", Alias: 17, Type: schema.TypeF64}})
		if err != nil {
			b.Fatal(err)
		}
		frameSize = tmpl.Len()
	}
	fs := make([]Frame, batch)
	for i := range fs {
		d := make([]byte, frameSize)
		for j := range d {
			d[j] = byte(j)
		}
		fs[i] = Frame{Kind: 1, Data: d}
	}
	b.SetBytes(int64(frameSize))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; {
		n := min(batch, b.N-i)
		if tmpl != nil {
			for j := range n {
				seq := uint64(i + j)
				tmpl.SetSeq(seq)
				tmpl.SetF64(0, 20+float64(seq%1000)*0.01)
				tmpl.SetTs(0, 1_700_000_000_000_000_000+int64(seq)*1_000_000)
				copy(fs[j].Data, tmpl.Bytes())
			}
		} else {
			for i := range n {
				binary.LittleEndian.PutUint64(fs[i].Data, uint64(i)) // a producer writes each frame
			}
		}
		_, err := w.Append(fs[:n]...)
		if errors.Is(err, ErrQueueFull) {
			time.Sleep(50 * time.Microsecond)
			continue
		}
		if err != nil {
			b.Fatal(err)
		}
		i += n
	}
	if err := w.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	fps := float64(b.N) / elapsed.Seconds()
	mbps := fps * float64(frameSize) / 1e6
	b.ReportMetric(fps, "frames/s")
	if st := w.Stats(); st.Commits > 0 {
		b.ReportMetric(float64(frameSize+entryHeaderSize)*float64(st.LastSeq)/float64(max(st.StoredBytes, 1)), "x-stored")
	}
	mu.Lock()
	if commits > 0 {
		b.ReportMetric(float64(commitNs)/float64(commits)/1e6, "ms/commit")
		b.ReportMetric(float64(commitFrames)/float64(commits), "frames/commit")
	}
	mu.Unlock()
	benchMu.Lock()
	if benchDiskMBps > 0 {
		b.ReportMetric(mbps/benchDiskMBps, "x-disk")
	}
	if benchNaiveFPS > 0 {
		b.ReportMetric(fps/benchNaiveFPS, "x-naive")
	}
	benchMu.Unlock()
}

// benchNaiveBbolt is the peer without group commit or segments: one
// Update per frame, key = sequence number, bbolt defaults.
func benchNaiveBbolt(b *testing.B) {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "naive.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	bucket := []byte("frames")
	data := make([]byte, benchFrameSize)
	b.SetBytes(int64(benchFrameSize))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		err := db.Update(func(tx *bolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists(bucket)
			if err != nil {
				return err
			}
			return bk.Put(binary.BigEndian.AppendUint64(nil, uint64(i+1)), data)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	fps := float64(b.N) / elapsed.Seconds()
	b.ReportMetric(fps, "frames/s")
	benchMu.Lock()
	benchNaiveFPS = fps
	benchMu.Unlock()
}

// benchDisk measures the disk's fsync'd sequential write bandwidth: one op
// is a 1 MiB write; fdatasync follows every 4 MiB or 5 ms.
func benchDisk(b *testing.B) {
	f, err := os.Create(filepath.Join(b.TempDir(), "disk.bin"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i * 31)
	}
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	start := time.Now()
	lastSync, unsynced := start, 0
	for i := 0; i < b.N; i++ {
		if _, err := f.Write(chunk); err != nil {
			b.Fatal(err)
		}
		unsynced += len(chunk)
		if unsynced >= 4<<20 || time.Since(lastSync) >= 5*time.Millisecond || i == b.N-1 {
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				b.Fatal(err)
			}
			lastSync, unsynced = time.Now(), 0
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	mbps := float64(b.N) * float64(len(chunk)) / 1e6 / elapsed.Seconds()
	b.ReportMetric(mbps, "disk-MB/s")
	benchMu.Lock()
	benchDiskMBps = mbps
	benchMu.Unlock()
}
