// Package schema defines the frames that cross framebus rings — DataFrame,
// Command and CommandAck — and everything needed to write, check and show
// them: allocation-free encoders, an in-place template for republishing the
// same tags, a verifier for untrusted buffers, zero-copy views and a JSON
// rendering for tools.
//
// # Design
//
// The wire format is FlatBuffers, defined in framebus.fbs; the code in
// package fb is generated from it by flatc and committed (see generate.go:
// `go generate ./schema`). Package schema wraps it with plain Go structs
// (DataFrame, Command, CommandAck, Point, Value) for producers and with
// views and verification for consumers. Nothing here depends on shm or on
// anything but the FlatBuffers runtime and the standard library.
//
// A buffer holds exactly one root table. Its kind is carried twice — by the
// ring record's uint16 type (KindData = 1, KindCommand = 2, KindAck = 3)
// and by the 4-byte FlatBuffers file identifier at bytes 4..8 ("FBDF",
// "FBCM", "FBAK") — and Verify requires the two to agree, so a frame of one
// kind is never read as another. Buffers are not size-prefixed: the ring
// record already carries the length.
//
// # Values
//
// A Point's value is stored in typed fields rather than a FlatBuffers union:
//
//	vtype  ValueType  NONE, F64, I64, U64, BOOL, STRING or BYTES
//	num    uint64     F64: IEEE-754 bits; I64: two's complement; U64; BOOL: 0|1
//	str    string     STRING
//	bytes  [ubyte]    BYTES
//
// A union would put a numeric value in a separate table whose position
// changes with its type; with typed fields every numeric value lives in
// the same 8-byte slot of the point's table, which is what lets a template
// rewrite it in place, and a reader needs no second table lookup. Fields
// that vtype does not select are ignored by readers; the encoder writes
// only the selected one. In Go, Value mirrors this layout: build one with
// F64, I64, U64, Bool, String or Bytes and read it with the methods of the
// same names (or the Str and Bytes fields).
//
// Fields equal to their zero value are not written (FlatBuffers defaults),
// so an absent string and an empty one are the same thing, and a point
// costs only the fields it uses.
//
// # Encoding
//
// An Encoder owns one flatbuffers.Builder and a scratch slice of offsets;
// Builder.Reset keeps their memory, and strings are copied straight into
// the buffer, so once the buffers have grown to the largest frame encoded,
// EncodeData, EncodeCommand and EncodeCommandAck allocate nothing. The
// frame they return aliases the Encoder and is valid until its next call;
// copy it into the ring slot (or use the Append methods).
//
// # The template path
//
// A driver that republishes the same tags every cycle can build a
// DataTemplate once with NewDataTemplate. It encodes a DataFrame in which
// every scalar — epoch, seq, and each point's vtype, num, quality,
// err_code, ts_ns and flags — is physically present even when zero, and
// records the absolute byte offset of each. SetSeq, SetF64, SetQuality,
// SetTs and the rest are then single little-endian stores at those
// offsets (plus the vtype byte for values), and CopyTo copies the finished
// frame into a ring slot: a 1-point frame costs a few tens of nanoseconds.
// Strings (producer, device, tags) and the number of points are fixed when
// the template is built; string and bytes values need an Encoder.
//
// # Verification
//
// The generated accessors trust every offset they read: on a corrupt buffer
// they panic (Go's bounds checks) or, when the slice has spare capacity,
// quietly read past its length. Frames come from other processes through
// shared memory, so every frame is checked by Verify before anything reads
// it. Verify is modelled on the C++ flatbuffers::Verifier and checks:
//
//   - the buffer is 8 bytes to 2 GiB - 1 long and its file identifier
//     matches the kind;
//   - the root offset points inside the buffer, past the identifier;
//   - every table is 4-aligned and inside the buffer; its soffset leads to
//     a 2-aligned vtable inside the buffer whose size is even and at least
//     4, and whose table size covers at least the soffset and fits the
//     buffer;
//   - every field the schema knows and the vtable lists lies inside its
//     table (not over the soffset) and is aligned to its size;
//   - every offset is non-zero and leads inside the buffer to a 4-aligned
//     length; every string's bytes and NUL terminator and every vector's
//     elements (length × element size, computed in 64 bits) fit the
//     buffer; every table in a vector of tables is verified in turn;
//   - enums hold values the schema defines and flags only defined bits.
//     Unknown values are rejected rather than passed on so that switch
//     statements downstream are total; the price is that the sidecar must
//     be upgraded before producers send a new enum value.
//   - tables nest at most Verifier.MaxDepth deep (default 64) and at most
//     Verifier.MaxTables table visits (default 1,000,000) are made, so a
//     hostile buffer can neither exhaust the stack nor make verification
//     take time out of proportion to its size.
//
// The guarantee: once Verify(kind, buf) returns nil, every accessor of the
// matching generated root table (obtained with fb.GetRootAs<Table>(buf, 0)
// or Root<Table>), and of every table reached from it, can be called on buf
// (vector accessors with indexes below the vector's length, Mutate methods
// included) without panicking or reading outside buf, as long as buf is not
// modified otherwise. The GetSizePrefixedRootAs functions do not apply:
// frames are not size-prefixed.
// The fuzz target FuzzVerify holds Verify to that by calling every accessor
// on every buffer it accepts.
//
// Verify does not check that strings are UTF-8 (Go strings need not be),
// that values not selected by vtype are zero, nor anything about the
// bytes between the objects it reaches. Vtable entries beyond the fields
// this schema defines (written with a newer schema) are ignored, as the
// generated code never reads them. Verify allocates nothing unless it
// fails; errors wrap one of the sentinels in errors.go with the path of
// the offending field, e.g. "DataFrame.points[3].tag", and its byte
// offset.
//
// ViewDataFrame, ViewCommand and ViewCommandAck verify and return a
// zero-copy fb view; RootDataFrame and friends skip the verification for
// buffers that have already passed it. DecodeDataFrame and friends verify
// and copy into the Go structs. Identify reads the kind from a buffer's
// file identifier, for tools that hold frames without their ring record.
//
// # JSON rendering
//
// AppendJSON renders a verified frame as one JSON object, for tools (tail,
// the HTTP API). Members always appear, in this order:
//
//	data     {"kind":"data","producer":S,"device":S,"epoch":U,"seq":U,"points":[P…]}
//	command  {"kind":"command","id":U,"target":S,"device":S,"command_kind":"WRITE"|"READ"|"CONTROL",
//	          "deadline_ns":I,"reply_to":S,"points":[P…]}
//	ack      {"kind":"ack","id":U,"stage":"ACCEPTED"|"COMPLETED"|"REJECTED"|"EXPIRED"|"FAILED",
//	          "code":U,"message":S,"readback":[P…]}
//	point P  {"tag":S,"alias":U,"type":T,"value":V,"quality":"GOOD"|"UNCERTAIN"|"BAD"|"STALE",
//	          "err_code":U,"ts_ns":I,"flags":["historical","transient"]}
//
// where S is a JSON string (escaped by encoding/json, without HTML
// escaping; invalid UTF-8 becomes U+FFFD), U and I are integers, and the
// value V depends on the type T:
//
//	"none"    null
//	"f64"     a number as encoding/json writes float64s; NaN and ±Inf,
//	          which JSON cannot express, as the strings "NaN", "+Inf", "-Inf"
//	"i64"     an integer
//	"u64"     an integer
//	"bool"    true or false
//	"string"  a string
//	"bytes"   a string: standard base64 with padding
//
// Integers are written exactly, as numbers; JavaScript and other readers
// that parse numbers as float64 lose precision above 2^53 (for ids, u64
// values, nanosecond timestamps far from now). "flags" lists set flags in
// bit order and is [] when none is set.
//
// # Concurrency
//
// An Encoder or a DataTemplate must be used by one goroutine at a time;
// give each producing goroutine its own. Verify, the View, Root and Decode
// functions and AppendJSON are safe for concurrent use, on distinct buffers
// or on the same unchanging buffer. Verifying a buffer that another process
// is still writing proves nothing: verify a private copy, or a ring slot
// that its producer has committed and will not touch again.
package schema
