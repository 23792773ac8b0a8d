package schema

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	flatbuffers "github.com/google/flatbuffers/go"
)

// Helpers that find things in a valid buffer, for corrupting them.

func rootAt(buf []byte) uint32 { return le.Uint32(buf) }

func vtableAt(buf []byte, tab uint32) uint32 {
	return uint32(int64(tab) - int64(int32(le.Uint32(buf[tab:]))))
}

// slotAt returns where the vtable entry of slot lives.
func slotAt(buf []byte, tab uint32, slot int) uint32 {
	return vtableAt(buf, tab) + uint32(vtableOffset(slot))
}

// fieldAt returns the absolute position of a present field.
func fieldAt(tb testing.TB, buf []byte, tab uint32, slot int) uint32 {
	tb.Helper()
	fo := binary.LittleEndian.Uint16(buf[slotAt(buf, tab, slot):])
	if fo == 0 {
		tb.Fatalf("slot %d of table at %d absent", slot, tab)
	}
	return tab + uint32(fo)
}

// deref follows the uoffset at at.
func deref(buf []byte, at uint32) uint32 { return at + le.Uint32(buf[at:]) }

func put32(buf []byte, at uint32, x uint32) { le.PutUint32(buf[at:], x) }
func put16(buf []byte, at uint32, x uint16) { le.PutUint16(buf[at:], x) }

// TestVerifyHandBuilt checks the smallest valid frame, written out by hand,
// and the layout it documents.
func TestVerifyHandBuilt(t *testing.T) {
	buf := []byte{
		12, 0, 0, 0, // root uoffset: table at 12
		'F', 'B', 'D', 'F', // file identifier
		4, 0, 4, 0, // vtable at 8: 4 bytes long, table 4 bytes long, no fields
		4, 0, 0, 0, // table at 12: soffset 4 -> vtable at 12-4 = 8
	}
	mustNil(t, VerifyDataFrame(buf))
	checkAccepted(t, KindData, buf)
	var f DataFrame
	mustNil(t, DecodeDataFrame(buf, &f))
	mustEqual(t, f, DataFrame{})

	// The same bytes are a valid empty Command once the identifier says so.
	cmd := append([]byte(nil), buf...)
	copy(cmd[4:], IdentCommand)
	mustNil(t, VerifyCommand(cmd))
	if err := VerifyDataFrame(cmd); !errors.Is(err, ErrWrongType) {
		t.Fatalf("Command verified as DataFrame: %v", err)
	}
}

// corruptible is a DataFrame with every field of the frame and of its one
// point present.
func corruptible() *DataFrame {
	return &DataFrame{
		Producer: "prod", Device: "dev", Epoch: 1, Seq: 2,
		Points: []Point{{
			Tag: "tag", Alias: 3, Value: Bytes([]byte{1, 2, 3}), Quality: QualityBad,
			ErrCode: 4, TsNs: 5, Flags: FlagHistorical,
		}},
	}
}

func TestVerifyRejects(t *testing.T) {
	var e Encoder
	base := e.AppendData(nil, corruptible())
	mustNil(t, VerifyDataFrame(base))
	root := rootAt(base)
	point := deref(base, deref(base, fieldAt(t, base, root, slotDataPoints))+4)

	type tc struct {
		name   string
		kind   Kind
		mutate func(t testing.TB, b []byte) []byte
		want   error
		path   string // substring of the error message, if not ""
	}
	tcs := []tc{
		{"empty", KindData, func(t testing.TB, b []byte) []byte { return nil }, ErrTooShort, ""},
		{"7 bytes", KindData, func(t testing.TB, b []byte) []byte { return b[:7] }, ErrTooShort, ""},
		{"kind 0", 0, nil, ErrUnknownKind, ""},
		{"kind 4", 4, nil, ErrUnknownKind, ""},
		{"identifier", KindData, func(t testing.TB, b []byte) []byte { copy(b[4:], "FBXX"); return b }, ErrWrongType, `"FBXX"`},
		{"data as command", KindCommand, nil, ErrWrongType, ""},
		{"data as ack", KindAck, nil, ErrWrongType, ""},
		{"root 0", KindData, func(t testing.TB, b []byte) []byte { put32(b, 0, 0); return b }, ErrBadRoot, ""},
		{"root in identifier", KindData, func(t testing.TB, b []byte) []byte { put32(b, 0, 4); return b }, ErrBadRoot, ""},
		{"root misaligned", KindData, func(t testing.TB, b []byte) []byte { put32(b, 0, root+2); return b }, ErrBadRoot, ""},
		{"root past end", KindData, func(t testing.TB, b []byte) []byte { put32(b, 0, uint32(len(b))); return b }, ErrBadRoot, ""},
		{"root 2^32-4", KindData, func(t testing.TB, b []byte) []byte { put32(b, 0, 1<<32-4); return b }, ErrBadRoot, ""},
		{"vtable before start", KindData, func(t testing.TB, b []byte) []byte { put32(b, root, root+2); return b }, ErrBadVTable, "DataFrame at"},
		{"vtable past end", KindData, func(t testing.TB, b []byte) []byte { put32(b, root, uint32(-int32(len(b)))); return b }, ErrBadVTable, ""},
		{"vtable soffset min", KindData, func(t testing.TB, b []byte) []byte { put32(b, root, 1<<31); return b }, ErrBadVTable, ""},
		{"vtable misaligned", KindData, func(t testing.TB, b []byte) []byte { put32(b, root, le.Uint32(b[root:])+1); return b }, ErrMisaligned, ""},
		{"vtable size odd", KindData, func(t testing.TB, b []byte) []byte { put16(b, vtableAt(b, root), 5); return b }, ErrBadVTable, ""},
		{"vtable size 2", KindData, func(t testing.TB, b []byte) []byte { put16(b, vtableAt(b, root), 2); return b }, ErrBadVTable, ""},
		{"vtable size huge", KindData, func(t testing.TB, b []byte) []byte { put16(b, vtableAt(b, root), 0xfffe); return b }, ErrBadVTable, ""},
		{"table size 2", KindData, func(t testing.TB, b []byte) []byte { put16(b, vtableAt(b, root)+2, 2); return b }, ErrBadVTable, ""},
		{"table size huge", KindData, func(t testing.TB, b []byte) []byte { put16(b, vtableAt(b, root)+2, 0xfff0); return b }, ErrBadVTable, ""},
		{"field over soffset", KindData, func(t testing.TB, b []byte) []byte { put16(b, slotAt(b, root, slotDataSeq), 2); return b }, ErrBadVTable, "DataFrame.seq"},
		{"field past table", KindData, func(t testing.TB, b []byte) []byte {
			tsize := le.Uint16(b[vtableAt(b, root)+2:])
			put16(b, slotAt(b, root, slotDataEpoch), tsize-4)
			return b
		}, ErrBadVTable, "DataFrame.epoch"},
		{"field misaligned", KindData, func(t testing.TB, b []byte) []byte {
			fo := le.Uint16(b[slotAt(b, root, slotDataSeq):])
			put16(b, slotAt(b, root, slotDataSeq), fo-4)
			if (root+uint32(fo)-4)%8 == 0 {
				put16(b, slotAt(b, root, slotDataSeq), fo-2)
			}
			return b
		}, ErrMisaligned, "DataFrame.seq"},
		{"string offset 0", KindData, func(t testing.TB, b []byte) []byte { put32(b, fieldAt(t, b, root, slotDataProducer), 0); return b }, ErrOutOfBounds, "DataFrame.producer"},
		{"string offset past end", KindData, func(t testing.TB, b []byte) []byte {
			at := fieldAt(t, b, root, slotDataProducer)
			put32(b, at, uint32(len(b))-at)
			return b
		}, ErrOutOfBounds, "DataFrame.producer"},
		{"string offset wraps", KindData, func(t testing.TB, b []byte) []byte {
			put32(b, fieldAt(t, b, root, slotDataProducer), 0xffff_fffc)
			return b
		}, ErrOutOfBounds, ""},
		{"string misaligned", KindData, func(t testing.TB, b []byte) []byte {
			at := fieldAt(t, b, root, slotDataDevice)
			put32(b, at, le.Uint32(b[at:])+1)
			return b
		}, ErrMisaligned, "DataFrame.device"},
		{"string length huge", KindData, func(t testing.TB, b []byte) []byte {
			put32(b, deref(b, fieldAt(t, b, root, slotDataProducer)), 0xffff_ffff)
			return b
		}, ErrBadString, "DataFrame.producer"},
		{"string without NUL", KindData, func(t testing.TB, b []byte) []byte {
			s := deref(b, fieldAt(t, b, root, slotDataProducer))
			b[s+4+le.Uint32(b[s:])] = 'x'
			return b
		}, ErrBadString, "no NUL"},
		{"string NUL past end", KindData, func(t testing.TB, b []byte) []byte {
			s := deref(b, fieldAt(t, b, root, slotDataProducer))
			put32(b, s, uint32(len(b))-s-4)
			return b
		}, ErrBadString, ""},
		{"vector length huge", KindData, func(t testing.TB, b []byte) []byte {
			put32(b, deref(b, fieldAt(t, b, root, slotDataPoints)), 0xffff_ffff)
			return b
		}, ErrBadVector, "DataFrame.points at"},
		{"vector length 2^30", KindData, func(t testing.TB, b []byte) []byte {
			put32(b, deref(b, fieldAt(t, b, root, slotDataPoints)), 1<<30)
			return b
		}, ErrBadVector, ""},
		{"element offset 0", KindData, func(t testing.TB, b []byte) []byte {
			put32(b, deref(b, fieldAt(t, b, root, slotDataPoints))+4, 0)
			return b
		}, ErrOutOfBounds, "DataFrame.points[0] at"},
		{"element past end", KindData, func(t testing.TB, b []byte) []byte {
			e := deref(b, fieldAt(t, b, root, slotDataPoints)) + 4
			put32(b, e, uint32(len(b))-e)
			return b
		}, ErrOutOfBounds, "DataFrame.points[0] at"},
		{"element misaligned", KindData, func(t testing.TB, b []byte) []byte {
			e := deref(b, fieldAt(t, b, root, slotDataPoints)) + 4
			put32(b, e, le.Uint32(b[e:])+2)
			return b
		}, ErrMisaligned, "DataFrame.points[0] at"},
		{"point vtable", KindData, func(t testing.TB, b []byte) []byte { put16(b, vtableAt(b, point), 3); return b }, ErrBadVTable, "DataFrame.points[0] at"},
		{"point tag", KindData, func(t testing.TB, b []byte) []byte {
			put32(b, deref(b, fieldAt(t, b, point, slotPointTag)), 1000)
			return b
		}, ErrBadString, "DataFrame.points[0].tag"},
		{"point bytes", KindData, func(t testing.TB, b []byte) []byte {
			put32(b, deref(b, fieldAt(t, b, point, slotPointBytes)), 1000)
			return b
		}, ErrBadVector, "DataFrame.points[0].bytes"},
		{"point quality", KindData, func(t testing.TB, b []byte) []byte { b[fieldAt(t, b, point, slotPointQuality)] = 4; return b }, ErrBadEnum, "DataFrame.points[0].quality"},
		{"point vtype", KindData, func(t testing.TB, b []byte) []byte { b[fieldAt(t, b, point, slotPointVtype)] = 7; return b }, ErrBadEnum, "DataFrame.points[0].vtype"},
		{"point flags", KindData, func(t testing.TB, b []byte) []byte { b[fieldAt(t, b, point, slotPointFlags)] = 0x05; return b }, ErrBadEnum, "DataFrame.points[0].flags"},
		{"point flags high bit", KindData, func(t testing.TB, b []byte) []byte { b[fieldAt(t, b, point, slotPointFlags)] = 0x80; return b }, ErrBadEnum, ""},
	}
	for _, c := range tcs {
		t.Run(c.name, func(t *testing.T) {
			buf := append([]byte(nil), base...)
			if c.mutate != nil {
				buf = c.mutate(t, buf)
			}
			err := Verify(c.kind, buf[:len(buf):len(buf)])
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			checkRejected(t, err)
			if !strings.Contains(err.Error(), c.path) {
				t.Fatalf("error %q does not mention %q", err, c.path)
			}
		})
	}
}

func TestVerifyRejectsEnums(t *testing.T) {
	var e Encoder
	cmd := e.AppendCommand(nil, &Command{ID: 1, Kind: CommandControl})
	cmd[fieldAt(t, cmd, rootAt(cmd), slotCmdKind)] = 3
	if err := VerifyCommand(cmd); !errors.Is(err, ErrBadEnum) || !strings.Contains(err.Error(), "Command.kind") {
		t.Errorf("Command.kind = 3: %v", err)
	}
	ack := e.AppendCommandAck(nil, &CommandAck{Stage: AckFailed, Readback: []Point{{Quality: QualityStale}}})
	ack[fieldAt(t, ack, rootAt(ack), slotAckStage)] = 5
	if err := VerifyCommandAck(ack); !errors.Is(err, ErrBadEnum) || !strings.Contains(err.Error(), "CommandAck.stage") {
		t.Errorf("CommandAck.stage = 5: %v", err)
	}
}

func TestVerifierLimits(t *testing.T) {
	var e Encoder
	buf := e.EncodeData(sampleData(3)) // 4 tables, 2 deep
	for _, tc := range []struct {
		v    Verifier
		want error
	}{
		{Verifier{}, nil},
		{Verifier{MaxDepth: 2, MaxTables: 4}, nil},
		{Verifier{MaxDepth: 1}, ErrDepth},
		{Verifier{MaxTables: 3}, ErrTooManyTables},
		{Verifier{MaxDepth: -1, MaxTables: -1}, nil}, // negative: defaults
	} {
		if err := tc.v.Verify(KindData, buf); !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
			t.Errorf("%+v: err = %v, want %v", tc.v, err, tc.want)
		}
	}
	// The root alone is 1 deep and 1 table.
	mustNil(t, Verifier{MaxDepth: 1, MaxTables: 1}.Verify(KindData, e.EncodeData(&DataFrame{Seq: 1})))
}

// TestVerifySharedTables builds a legal buffer in which every element of a
// large points vector is the same table: the visits, not the distinct
// tables, count against MaxTables, so such a buffer cannot make
// verification do more work than the limit allows.
func TestVerifySharedTables(t *testing.T) {
	const n = 5000
	b := flatbuffers.NewBuilder(0)
	tag := b.CreateString("shared")
	b.StartObject(numPointFields)
	b.PrependUOffsetTSlot(slotPointTag, tag, 0)
	pt := b.EndObject()
	offs := make([]flatbuffers.UOffsetT, n)
	for i := range offs {
		offs[i] = pt
	}
	vec := b.CreateVectorOfTables(offs)
	b.StartObject(numDataFields)
	b.PrependUOffsetTSlot(slotDataPoints, vec, 0)
	b.FinishWithFileIdentifier(b.EndObject(), identData)
	buf := b.FinishedBytes()

	mustNil(t, VerifyDataFrame(buf))
	var f DataFrame
	mustNil(t, DecodeDataFrame(buf, &f))
	if len(f.Points) != n || f.Points[n-1].Tag != "shared" {
		t.Fatalf("decoded %d points", len(f.Points))
	}
	if err := (Verifier{MaxTables: n}).Verify(KindData, buf); !errors.Is(err, ErrTooManyTables) {
		t.Fatalf("MaxTables %d: err = %v, want ErrTooManyTables", n, err)
	}
}

// TestVerifyUnknownFields accepts a table written by a newer schema, with
// vtable entries past the fields this one knows.
func TestVerifyUnknownFields(t *testing.T) {
	b := flatbuffers.NewBuilder(0)
	b.StartObject(numDataFields + 2)
	b.PrependUint64Slot(slotDataSeq, 7, 0)
	b.PrependUint32Slot(numDataFields+1, 0xffff_ffff, 0) // unknown field
	b.FinishWithFileIdentifier(b.EndObject(), identData)
	buf := b.FinishedBytes()
	mustNil(t, VerifyDataFrame(buf))
	checkAccepted(t, KindData, buf)
}

func TestVerifyErrorMessage(t *testing.T) {
	var e Encoder
	buf := e.AppendData(nil, sampleData(3))
	pv := deref(buf, fieldAt(t, buf, rootAt(buf), slotDataPoints))
	p2 := deref(buf, pv+4+2*4)
	s := deref(buf, fieldAt(t, buf, p2, slotPointTag))
	put32(buf, s, 4000)
	err := VerifyDataFrame(buf)
	want := "schema: bad string: DataFrame.points[2].tag at offset "
	if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "4000 bytes and NUL overrun the") {
		t.Fatalf("error %q, want it to start %q", err, want)
	}
}

// TestVerifyTruncated verifies every prefix of valid frames: each must be
// rejected unless only trailing padding was cut, in which case it must read
// exactly like the whole frame.
func TestVerifyTruncated(t *testing.T) {
	for _, f := range sampleFrames() {
		whole, err := AppendJSON(nil, f.kind, f.buf)
		mustNil(t, err)
		accepted := 0
		for n := range len(f.buf) {
			buf := f.buf[:n:n] // no capacity past n: reads beyond it panic
			err := Verify(f.kind, buf)
			if err != nil {
				checkRejected(t, err)
				continue
			}
			accepted++
			checkAccepted(t, f.kind, buf)
			if got, _ := AppendJSON(nil, f.kind, buf); string(got) != string(whole) {
				t.Fatalf("%s cut to %d bytes verifies but reads %s, not %s", f.name, n, got, whole)
			}
		}
		if accepted > 7 {
			t.Errorf("%s: %d truncations accepted; only alignment padding (< 8 bytes) may be cut", f.name, accepted)
		}
	}
}

// TestVerifyByteFlips flips bits in every byte of valid frames: Verify must
// either reject the result with one of its errors or accept a buffer that
// every accessor can read.
func TestVerifyByteFlips(t *testing.T) {
	for _, f := range sampleFrames() {
		var accepted, rejected int
		for i := range f.buf {
			for _, mask := range []byte{0x01, 0x10, 0x80, 0xff} {
				buf := append([]byte(nil), f.buf...)
				buf[i] ^= mask
				buf = buf[:len(buf):len(buf)]
				if err := Verify(f.kind, buf); err != nil {
					checkRejected(t, err)
					rejected++
					continue
				}
				accepted++
				checkAccepted(t, f.kind, buf)
			}
		}
		t.Logf("%s: %d flips accepted, %d rejected", f.name, accepted, rejected)
		if rejected == 0 {
			t.Errorf("%s: no flip rejected", f.name)
		}
	}
}

func TestVerifyAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's instrumentation allocates")
	}
	for _, f := range sampleFrames() {
		if a := testing.AllocsPerRun(100, func() {
			if err := Verify(f.kind, f.buf); err != nil {
				t.Fatal(err)
			}
		}); a != 0 {
			t.Errorf("%s: Verify %v allocs/op, want 0", f.name, a)
		}
	}
}

func TestViews(t *testing.T) {
	var e Encoder
	data := e.AppendData(nil, sampleData(2))
	cmd := e.AppendCommand(nil, sampleCommand())
	ack := e.AppendCommandAck(nil, sampleAck())

	df, err := ViewDataFrame(data)
	mustNil(t, err)
	if string(df.Producer()) != "modbus-1" || df.PointsLength() != 2 {
		t.Errorf("ViewDataFrame: producer %q, %d points", df.Producer(), df.PointsLength())
	}
	c, err := ViewCommand(cmd)
	mustNil(t, err)
	if c.Id() != sampleCommand().ID || string(c.ReplyTo()) != "app/hmi-3" {
		t.Errorf("ViewCommand: id %x, reply_to %q", c.Id(), c.ReplyTo())
	}
	a, err := ViewCommandAck(ack)
	mustNil(t, err)
	if a.Code() != 503 || a.ReadbackLength() != len(everyValue()) {
		t.Errorf("ViewCommandAck: code %d, %d readback", a.Code(), a.ReadbackLength())
	}

	// Every view and decoder refuses a frame of another kind.
	if _, err := ViewDataFrame(cmd); !errors.Is(err, ErrWrongType) {
		t.Errorf("ViewDataFrame(command): %v", err)
	}
	if _, err := ViewCommand(ack); !errors.Is(err, ErrWrongType) {
		t.Errorf("ViewCommand(ack): %v", err)
	}
	if _, err := ViewCommandAck(data); !errors.Is(err, ErrWrongType) {
		t.Errorf("ViewCommandAck(data): %v", err)
	}
	if err := DecodeDataFrame(ack, new(DataFrame)); !errors.Is(err, ErrWrongType) {
		t.Errorf("DecodeDataFrame(ack): %v", err)
	}
	if err := DecodeCommand(data, new(Command)); !errors.Is(err, ErrWrongType) {
		t.Errorf("DecodeCommand(data): %v", err)
	}
	if err := DecodeCommandAck(cmd, new(CommandAck)); !errors.Is(err, ErrWrongType) {
		t.Errorf("DecodeCommandAck(cmd): %v", err)
	}
}

// TestDecodeReusesPoints checks that decoding into a frame reuses its points
// slice and copies everything out of the buffer.
func TestDecodeReusesPoints(t *testing.T) {
	var e Encoder
	buf := e.AppendData(nil, &DataFrame{Points: []Point{{Tag: "t", Value: Bytes([]byte("abc"))}}})
	f := DataFrame{Points: make([]Point, 0, 4)}
	backing := &f.Points[:1][0]
	mustNil(t, DecodeDataFrame(buf, &f))
	if &f.Points[0] != backing {
		t.Error("Decode did not reuse the points slice")
	}
	for i := range buf {
		buf[i] = 0
	}
	if f.Points[0].Tag != "t" || string(f.Points[0].Value.Bytes) != "abc" {
		t.Errorf("decoded frame aliases the buffer: %+v", f.Points[0])
	}
}
