package schema

import "errors"

// Errors returned by Verify and by the functions that verify before they
// read (View*, Decode*, AppendJSON). Each is wrapped with the path of the
// offending field and its byte offset, e.g.
//
//	schema: bad string: DataFrame.points[3].tag at offset 120: 4000 bytes overrun the 96-byte buffer
//
// so test with errors.Is. Every one of them means that the producer wrote a
// frame that is not a valid framebus frame (or that the bytes were damaged on
// the way); the frame must be dropped and counted, never read.
var (
	// ErrUnknownKind means the Kind is not KindData, KindCommand or KindAck:
	// the ring record's type field is corrupt or the producer is newer than
	// this sidecar.
	ErrUnknownKind = errors.New("schema: unknown frame kind")

	// ErrTooShort means the buffer cannot even hold the root offset and the
	// file identifier (8 bytes).
	ErrTooShort = errors.New("schema: buffer too short for a frame")

	// ErrTooLarge means the buffer is larger than FlatBuffers can address
	// (2 GiB - 1).
	ErrTooLarge = errors.New("schema: buffer too large for a frame")

	// ErrWrongType means the buffer's file identifier is not the one of the
	// kind it was verified as: the producer wrote one kind of frame into a
	// record typed as another.
	ErrWrongType = errors.New("schema: file identifier does not match the frame kind")

	// ErrBadRoot means the root offset does not point at a table inside the
	// buffer.
	ErrBadRoot = errors.New("schema: bad root offset")

	// ErrBadVTable means a table's vtable is out of bounds or malformed, or
	// places a field outside its table.
	ErrBadVTable = errors.New("schema: bad vtable")

	// ErrOutOfBounds means an offset points outside the buffer.
	ErrOutOfBounds = errors.New("schema: offset out of bounds")

	// ErrMisaligned means a scalar, offset, vector or table is not aligned
	// to its size as FlatBuffers builders lay them out.
	ErrMisaligned = errors.New("schema: misaligned field")

	// ErrBadString means a string's length overruns the buffer or its NUL
	// terminator is missing.
	ErrBadString = errors.New("schema: bad string")

	// ErrBadVector means a vector's length overruns the buffer.
	ErrBadVector = errors.New("schema: bad vector")

	// ErrBadEnum means an enum field holds a value (or a flags field a bit)
	// that this version of the schema does not define. Upgrade the sidecar
	// before producers start sending new enum values.
	ErrBadEnum = errors.New("schema: enum value out of range")

	// ErrDepth means tables are nested deeper than Verifier.MaxDepth.
	ErrDepth = errors.New("schema: tables nested too deeply")

	// ErrTooManyTables means the buffer holds (or, through shared offsets,
	// visits) more tables than Verifier.MaxTables.
	ErrTooManyTables = errors.New("schema: too many tables")
)

// Errors returned by DataTemplate.
var (
	// ErrTemplateType means a TemplateTag asked for a string or bytes value:
	// template points are numeric; encode such frames with an Encoder.
	ErrTemplateType = errors.New("schema: template points must be numeric")

	// ErrShortBuffer means the destination passed to DataTemplate.CopyTo is
	// smaller than DataTemplate.Len.
	ErrShortBuffer = errors.New("schema: destination buffer too small for the frame")
)
