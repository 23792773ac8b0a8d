package wal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/klauspost/compress/s2"
)

// Segment format. A segment is one bbolt value in the "segments" bucket,
// holding consecutive frames; its key is the WAL sequence number of its
// first frame, a big-endian uint64 (so bbolt's byte order is sequence
// order). This layout is part of the on-disk format: change it only with
// a new segVersion.
//
//	key:   first seq, uint64 big-endian (8 bytes)
//	value:
//	  0        4       5       6          8            12           16             24
//	  +--------+-------+-------+----------+------------+------------+--------------+
//	  | "FBWS" | vers  | flags | hdr size | count      | crc32c     | newest ns    |
//	  | magic  | u8 =1 | u8 0/1| u16 = 24 | u32 frames | u32        | i64 commit   |
//	  +--------+-------+-------+----------+------------+------------+--------------+
//	  | frame 0: len u32 | kind u16 | data [len]byte                               |
//	  | frame 1: len u32 | kind u16 | data [len]byte                               |
//	  | …  (count frames, back to back, no padding, filling the value exactly)     |
//	  +----------------------------------------------------------------------------+
//
// Integers in the value are little-endian. Frame i has sequence number
// key+i. "newest ns" is the commit time (Unix ns) of the segment's newest
// frame; MaxAge retention reads it. flags is 0 (the frame area is stored
// as drawn above) or flagS2 = 0x01: bytes 24..end are then s2.Encode (S2
// block format) of that frame area, at most maxDecodedLen bytes decoded;
// other bits are reserved and must be zero. Readers accept both in any
// mix. The CRC32C (Castagnoli) covers, in this order: the stored bytes
// 24..end (the compressed ones if flagS2), header bytes 0..12, header
// bytes 16..24, and the 8-byte key — so a value moved to another key fails
// its check too.
const (
	segMagic        = "FBWS"
	segVersion      = 1
	segHeaderSize   = 24
	entryHeaderSize = 6

	offMagic   = 0
	offVersion = 4
	offFlags   = 5
	offHdrSize = 6
	offCount   = 8
	offCRC     = 12
	offTime    = 16

	// flagS2 marks a value whose frame area is S2-compressed.
	flagS2 = 0x01
	// maxDecodedLen bounds the decoded frame area of a compressed value:
	// readers reject a larger declared length as corrupt (never trusting
	// lengths from disk), and the writer stores larger areas uncompressed.
	maxDecodedLen = 64 << 20

	// bboltValueOverhead is what bbolt adds to every value in a leaf page:
	// a 16-byte element header, the 8-byte key, and a share of the 16-byte
	// page header (half of it when two segments share a page). A segment
	// of SegmentBytes - bboltValueOverhead value bytes therefore fills its
	// share of a page exactly: two default segments per 16 KiB page.
	bboltValueOverhead = 32
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var le = binary.LittleEndian

// segmentCRC completes the checksum of a segment value v stored under key,
// given bodyCRC, the CRC32C of v[segHeaderSize:].
func segmentCRC(bodyCRC uint32, v []byte, key uint64) uint32 {
	crc := crc32.Update(bodyCRC, castagnoli, v[:offCRC])
	crc = crc32.Update(crc, castagnoli, v[offTime:segHeaderSize])
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], key)
	return crc32.Update(crc, castagnoli, k[:])
}

// writeHeader fills in the header of the segment value v stored under key
// with count frames whose frame area has CRC32C bodyCRC.
func writeHeader(v []byte, key uint64, count uint32, newestNs int64, bodyCRC uint32) {
	writeHeaderFlags(v, key, count, newestNs, bodyCRC, 0)
}

// writeHeaderFlags is writeHeader with the given flags; bodyCRC is then the
// CRC32C of the stored v[segHeaderSize:] (compressed if flags has flagS2).
func writeHeaderFlags(v []byte, key uint64, count uint32, newestNs int64, bodyCRC uint32, flags byte) {
	copy(v[offMagic:], segMagic)
	v[offVersion] = segVersion
	v[offFlags] = flags
	le.PutUint16(v[offHdrSize:], segHeaderSize)
	le.PutUint32(v[offCount:], count)
	le.PutUint64(v[offTime:], uint64(newestNs))
	le.PutUint32(v[offCRC:], segmentCRC(bodyCRC, v, key))
}

// segHeader is the decoded header of a stored segment.
type segHeader struct {
	count    uint32
	newestNs int64
	flags    byte
}

// corrupt returns an error wrapping ErrCorrupt for the segment at key.
func corrupt(key uint64, format string, args ...any) error {
	return fmt.Errorf("%w: segment %d: %s", ErrCorrupt, key, fmt.Sprintf(format, args...))
}

// parseSegment checks the header and the CRC32C of the segment value v
// stored under key. It does not walk the frames: walkSegment does.
func parseSegment(key uint64, v []byte) (segHeader, error) {
	if len(v) < segHeaderSize {
		return segHeader{}, corrupt(key, "value of %d bytes is shorter than the %d-byte header", len(v), segHeaderSize)
	}
	if string(v[offMagic:offMagic+4]) != segMagic {
		return segHeader{}, corrupt(key, "bad magic %q", v[offMagic:offMagic+4])
	}
	if v[offVersion] != segVersion {
		return segHeader{}, fmt.Errorf("%w: segment %d has version %d, this build reads %d", ErrVersion, key, v[offVersion], segVersion)
	}
	if v[offFlags]&^flagS2 != 0 {
		return segHeader{}, corrupt(key, "unknown flags %#x", v[offFlags])
	}
	if hs := le.Uint16(v[offHdrSize:]); hs != segHeaderSize {
		return segHeader{}, corrupt(key, "header size %d, want %d", hs, segHeaderSize)
	}
	h := segHeader{count: le.Uint32(v[offCount:]), newestNs: int64(le.Uint64(v[offTime:])), flags: v[offFlags]}
	if h.count == 0 {
		return segHeader{}, corrupt(key, "no frames")
	}
	want := le.Uint32(v[offCRC:])
	if got := segmentCRC(crc32.Checksum(v[segHeaderSize:], castagnoli), v, key); got != want {
		return segHeader{}, corrupt(key, "crc32c %#08x, header says %#08x", got, want)
	}
	return h, nil
}

// decodeSegment returns the segment value v (checked by parseSegment, which
// returned h) with its frame area as walkSegment reads it: v itself if it
// is stored uncompressed, else the header followed by the decompressed
// frame area, in *scratch (grown as needed and reused by the next call;
// scratch may be nil). The declared decoded length must cover count frame
// headers and be at most maxDecodedLen, else ErrCorrupt.
func decodeSegment(key uint64, v []byte, h segHeader, scratch *[]byte) ([]byte, error) {
	if h.flags&flagS2 == 0 {
		return v, nil
	}
	src := v[segHeaderSize:]
	n, err := s2.DecodedLen(src)
	if err != nil {
		return nil, corrupt(key, "compressed frame area: %v", err)
	}
	if n > maxDecodedLen || uint64(n) < uint64(h.count)*entryHeaderSize {
		return nil, corrupt(key, "compressed frame area declares %d bytes for %d frames (at most %d)", n, h.count, maxDecodedLen)
	}
	var buf []byte
	if scratch != nil {
		buf = *scratch
	}
	if cap(buf) < segHeaderSize+n {
		buf = make([]byte, segHeaderSize+n)
		if scratch != nil {
			*scratch = buf
		}
	}
	buf = buf[:segHeaderSize+n]
	copy(buf, v[:segHeaderSize])
	d, err := s2.Decode(buf[segHeaderSize:], src)
	if err != nil {
		return nil, corrupt(key, "compressed frame area: %v", err)
	}
	if len(d) != n || (n > 0 && &d[0] != &buf[segHeaderSize]) {
		return nil, corrupt(key, "compressed frame area decoded to %d bytes, declared %d", len(d), n)
	}
	return buf, nil
}

// walkSegment calls fn for every frame of the segment value v stored under
// key, whose header h parseSegment returned, in sequence order; a
// compressed v must have been through decodeSegment. It checks
// that the frames fill the value exactly and number h.count; fn's error
// stops the walk and is returned as it is.
func walkSegment(key uint64, v []byte, h segHeader, fn func(seq uint64, kind uint16, data []byte) error) error {
	off := segHeaderSize
	for i := uint32(0); i < h.count; i++ {
		if len(v)-off < entryHeaderSize {
			return corrupt(key, "frame %d of %d: header runs past the value's %d bytes", i, h.count, len(v))
		}
		n := int(le.Uint32(v[off:]))
		kind := le.Uint16(v[off+4:])
		off += entryHeaderSize
		if n > len(v)-off {
			return corrupt(key, "frame %d of %d: length %d runs past the value's %d bytes", i, h.count, n, len(v))
		}
		if fn != nil {
			if err := fn(key+uint64(i), kind, v[off:off+n:off+n]); err != nil {
				return err
			}
		}
		off += n
	}
	if off != len(v) {
		return corrupt(key, "%d bytes after the last of %d frames", len(v)-off, h.count)
	}
	return nil
}

// checkSegment parses and walks v and returns its frame count and the
// total length of its frames' data.
func checkSegment(key uint64, v []byte) (count uint32, dataBytes int64, err error) {
	return checkSegmentBuf(key, v, nil)
}

// checkSegmentBuf is checkSegment decompressing into *scratch (see
// decodeSegment); scratch may be nil.
func checkSegmentBuf(key uint64, v []byte, scratch *[]byte) (count uint32, dataBytes int64, err error) {
	h, err := parseSegment(key, v)
	if err != nil {
		return 0, 0, err
	}
	if v, err = decodeSegment(key, v, h, scratch); err != nil {
		return 0, 0, err
	}
	err = walkSegment(key, v, h, func(_ uint64, _ uint16, data []byte) error {
		dataBytes += int64(len(data))
		return nil
	})
	return h.count, dataBytes, err
}

// headerCount returns the count field of a segment value without checking
// it (0 if v is too short), for retention, which must not fail on a
// damaged segment it is about to delete anyway.
func headerCount(v []byte) uint32 {
	if len(v) < segHeaderSize {
		return 0
	}
	return le.Uint32(v[offCount:])
}

// headerNewest returns the newest-frame time of a segment value without
// checking it (0, i.e. "very old", if v is too short).
func headerNewest(v []byte) int64 {
	if len(v) < segHeaderSize {
		return 0
	}
	return int64(le.Uint64(v[offTime:]))
}

// putKey encodes a sequence number as a segment key.
func putKey(b []byte, seq uint64) { binary.BigEndian.PutUint64(b, seq) }

// keySeq decodes a segment key; ok is false if it is not 8 bytes.
func keySeq(k []byte) (seq uint64, ok bool) {
	if len(k) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(k), true
}
