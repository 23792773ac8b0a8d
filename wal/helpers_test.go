package wal

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
	"time"
)

// openTest opens a WAL in o.Dir (a new temporary directory if empty) and
// closes it when the test ends.
func openTest(tb testing.TB, o Options) *WAL {
	tb.Helper()
	if o.Dir == "" {
		o.Dir = tb.TempDir()
	}
	w, err := Open(o)
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { w.Close() })
	return w
}

// crash stops the writer without committing what is queued and closes the
// bbolt file, as if the process had died: what was not committed is lost.
func (w *WAL) crash() { _ = w.close(false) }

// frameFor returns the frame the tests append as sequence number seq: its
// kind and size vary with seq (0 to 299 bytes, every 97th frame 3000), and
// its bytes encode seq, so that any frame can be checked on its own.
func frameFor(seq uint64) Frame {
	n := int(seq*37) % 300
	if seq%97 == 0 {
		n = 3000
	}
	d := make([]byte, n)
	for i := range d {
		d[i] = byte(seq>>uint(8*(i%8))) ^ byte(i)
	}
	if n >= 8 {
		binary.LittleEndian.PutUint64(d, seq)
	}
	return Frame{Kind: uint16(1 + seq%3), Data: d}
}

// checkFrame fails the test if f is not frameFor(seq).
func checkFrame(tb testing.TB, seq uint64, f Frame) {
	tb.Helper()
	want := frameFor(seq)
	if f.Kind != want.Kind || !bytes.Equal(f.Data, want.Data) {
		tb.Fatalf("frame %d: kind %d, %d bytes; want kind %d, %d bytes", seq, f.Kind, len(f.Data), want.Kind, len(want.Data))
	}
}

// appendRange appends frameFor(from) … frameFor(to) in batches of up to 50.
func appendRange(tb testing.TB, w *WAL, from, to uint64) {
	tb.Helper()
	var fs []Frame
	for seq := from; seq <= to; seq++ {
		fs = append(fs, frameFor(seq))
		if len(fs) == 50 || seq == to {
			last, err := w.Append(fs...)
			if err != nil {
				tb.Fatalf("Append up to %d: %v", seq, err)
			}
			if last != seq {
				tb.Fatalf("Append returned last seq %d, want %d", last, seq)
			}
			fs = fs[:0]
		}
	}
}

// flush flushes w with a generous deadline.
func flush(tb testing.TB, w *WAL) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Flush(ctx); err != nil {
		tb.Fatalf("Flush: %v", err)
	}
}

// seqs iterates w from from and returns the sequence numbers seen, checking
// every frame's content.
func seqs(tb testing.TB, w *WAL, from uint64) []uint64 {
	tb.Helper()
	var got []uint64
	err := w.Iterate(from, func(seq uint64, f Frame) error {
		checkFrame(tb, seq, f)
		got = append(got, seq)
		return nil
	})
	if err != nil {
		tb.Fatalf("Iterate(%d): %v", from, err)
	}
	return got
}

// checkSeqs fails the test unless got is exactly from, from+1, …, to.
func checkSeqs(tb testing.TB, got []uint64, from, to uint64) {
	tb.Helper()
	if from > to {
		if len(got) != 0 {
			tb.Fatalf("got %d frames (%d…), want none", len(got), got[0])
		}
		return
	}
	if uint64(len(got)) != to-from+1 {
		tb.Fatalf("got %d frames, want %d (%d to %d)", len(got), to-from+1, from, to)
	}
	for i, s := range got {
		if s != from+uint64(i) {
			tb.Fatalf("frame %d has seq %d, want %d", i, s, from+uint64(i))
		}
	}
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
