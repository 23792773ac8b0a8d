package wal

import (
	"errors"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// An Iterate read transaction is renewed after this many segments or this
// long, so that a slow reader neither pins freed pages (which would make
// the file grow past the retention bound) nor delays a remap for long.
const (
	iterChunkSegments = 256
	iterChunkTime     = 10 * time.Millisecond
)

// Iterate calls fn for every committed frame with sequence number >= from,
// in order, up to the durable watermark at the time of the call. f.Data
// points into the file's memory map and is valid only during the call: copy
// it to keep it. fn's error stops the iteration and is returned as it is;
// a segment that fails its CRC32C or framing stops it with ErrCorrupt.
//
// Frames are read in read transactions of up to 256 segments, so fn may
// take its time; if retention deletes frames between two of them, the
// iteration continues at the new FirstSeq (the caller sees the gap in the
// sequence numbers). From 0 or 1, or below FirstSeq, it starts at
// FirstSeq; beyond the watermark it calls nothing.
func (w *WAL) Iterate(from uint64, fn func(seq uint64, f Frame) error) error {
	next := max(from, 1)
	end := w.durable.Load()
	var scratch []byte // decompressed segments, reused
	for {
		if w.isClosed() {
			return ErrClosed
		}
		if next > end {
			return nil
		}
		var done bool
		err := w.db.View(func(tx *bolt.Tx) error {
			var err error
			done, err = iterChunk(tx, &next, end, &scratch, fn)
			return err
		})
		if errors.Is(err, berrors.ErrDatabaseNotOpen) {
			return ErrClosed
		}
		if err != nil || done {
			return err
		}
	}
}

// iterChunk delivers frames from *next up to end within one read
// transaction, advancing *next; done reports that no frame is left.
func iterChunk(tx *bolt.Tx, next *uint64, end uint64, scratch *[]byte, fn func(uint64, Frame) error) (done bool, err error) {
	c := tx.Bucket(bucketSegments).Cursor()
	k, v := seekSegment(c, *next)
	start := time.Now()
	for segs := 0; k != nil; k, v = c.Next() {
		key, ok := keySeq(k)
		if !ok {
			return false, corrupt(0, "key of %d bytes, want 8", len(k))
		}
		if key > end {
			return true, nil
		}
		h, err := parseSegment(key, v)
		if err != nil {
			return false, err
		}
		if key+uint64(h.count) > *next {
			if v, err = decodeSegment(key, v, h, scratch); err != nil {
				return false, err
			}
			from := *next
			err := walkSegment(key, v, h, func(seq uint64, kind uint16, data []byte) error {
				if seq < from || seq > end {
					return nil
				}
				if err := fn(seq, Frame{Kind: kind, Data: data}); err != nil {
					return err
				}
				*next = seq + 1
				return nil
			})
			if err != nil {
				return false, err
			}
			*next = max(*next, min(key+uint64(h.count), end+1))
		}
		if *next > end {
			return true, nil
		}
		if segs++; segs >= iterChunkSegments || time.Since(start) >= iterChunkTime {
			return false, nil
		}
	}
	return true, nil
}

// seekSegment positions c on the segment that holds seq: the last one
// whose key is <= seq, or the first one if seq precedes them all.
func seekSegment(c *bolt.Cursor, seq uint64) (k, v []byte) {
	var key [8]byte
	putKey(key[:], seq)
	k, v = c.Seek(key[:])
	if k == nil {
		return c.Last()
	}
	if s, _ := keySeq(k); s > seq {
		if pk, pv := c.Prev(); pk != nil {
			return pk, pv
		}
		return c.First()
	}
	return k, v
}
