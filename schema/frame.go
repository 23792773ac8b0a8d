package schema

import (
	"math"
	"strconv"
	"strings"
)

// Kind is the type of a frame. Its values are the ones the ring record
// header's uint16 type field carries; each kind also has its own 4-byte
// file identifier inside the buffer (see Identifier).
type Kind uint16

// Frame kinds. The numbers are part of the ring format: never renumber.
const (
	KindData    Kind = 1 // a DataFrame, identifier "FBDF"
	KindCommand Kind = 2 // a Command, identifier "FBCM"
	KindAck     Kind = 3 // a CommandAck, identifier "FBAK"
)

// File identifiers. Every frame begins with the FlatBuffers root offset and
// the identifier of its kind; this prefix is part of the wire format:
//
//	0                4                8
//	+----------------+----------------+--------------------------------+
//	| root uoffset   | identifier     | vtables, tables, strings and   |
//	| uint32 LE      | "FBDF" data    | vectors, reached from the root |
//	| (offset of the | "FBCM" command | table by offsets (see          |
//	|  root table)   | "FBAK" ack     | framebus.fbs)                  |
//	+----------------+----------------+--------------------------------+
//
// The buffer is not size-prefixed: its length is the ring record's.
const (
	IdentData    = "FBDF"
	IdentCommand = "FBCM"
	IdentAck     = "FBAK"
)

// Byte-slice copies of the identifiers for Builder.FinishWithFileIdentifier,
// which takes a []byte; package-level so that finishing does not allocate.
var (
	identData    = []byte(IdentData)
	identCommand = []byte(IdentCommand)
	identAck     = []byte(IdentAck)
)

// Identifier returns the file identifier of frames of kind k, or "" if k is
// not a known kind.
func (k Kind) Identifier() string {
	switch k {
	case KindData:
		return IdentData
	case KindCommand:
		return IdentCommand
	case KindAck:
		return IdentAck
	}
	return ""
}

// String returns "data", "command" or "ack" (the "kind" member of the JSON
// rendering), or "Kind(n)" for an unknown kind.
func (k Kind) String() string {
	switch k {
	case KindData:
		return "data"
	case KindCommand:
		return "command"
	case KindAck:
		return "ack"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Identify returns the kind named by buf's file identifier. It only looks at
// bytes 4..8: it does not verify the buffer.
func Identify(buf []byte) (Kind, bool) {
	if len(buf) < 8 {
		return 0, false
	}
	switch string(buf[4:8]) {
	case IdentData:
		return KindData, true
	case IdentCommand:
		return KindCommand, true
	case IdentAck:
		return KindAck, true
	}
	return 0, false
}

// Quality is the quality of a point's value (fb.Quality).
type Quality uint8

// Qualities. The zero value is QualityGood.
const (
	QualityGood      Quality = 0
	QualityUncertain Quality = 1
	QualityBad       Quality = 2
	QualityStale     Quality = 3
)

var qualityNames = [...]string{"GOOD", "UNCERTAIN", "BAD", "STALE"}

// String returns the schema name ("GOOD", "UNCERTAIN", "BAD", "STALE").
func (q Quality) String() string {
	if int(q) < len(qualityNames) {
		return qualityNames[q]
	}
	return "Quality(" + strconv.Itoa(int(q)) + ")"
}

// ValueType tells which of Value's fields holds the value (fb.ValueType).
type ValueType uint8

// Value types. The zero value is TypeNone: no value.
const (
	TypeNone   ValueType = 0
	TypeF64    ValueType = 1
	TypeI64    ValueType = 2
	TypeU64    ValueType = 3
	TypeBool   ValueType = 4
	TypeString ValueType = 5
	TypeBytes  ValueType = 6
)

var valueTypeNames = [...]string{"none", "f64", "i64", "u64", "bool", "string", "bytes"}

// String returns the name used by the JSON rendering: "none", "f64", "i64",
// "u64", "bool", "string" or "bytes".
func (t ValueType) String() string {
	if int(t) < len(valueTypeNames) {
		return valueTypeNames[t]
	}
	return "ValueType(" + strconv.Itoa(int(t)) + ")"
}

// IsNumeric reports whether values of type t live in Value.Num (and so can
// be rewritten in place by a DataTemplate).
func (t ValueType) IsNumeric() bool {
	return t >= TypeF64 && t <= TypeBool
}

// PointFlags is a set of per-point flags (fb.PointFlags).
type PointFlags uint8

// Point flags.
const (
	// FlagHistorical marks a value back-filled from a device's buffer rather
	// than read live.
	FlagHistorical PointFlags = 1 << 0
	// FlagTransient marks a value that is not to be persisted beyond the
	// live stream.
	FlagTransient PointFlags = 1 << 1

	// knownFlags is every flag this schema version defines.
	knownFlags = FlagHistorical | FlagTransient
)

var flagNames = [...]string{"historical", "transient"}

// String returns the set flags joined by "|" ("historical|transient"), ""
// for none; unknown bits are shown as "0x80".
func (f PointFlags) String() string {
	var sb strings.Builder
	for i, name := range flagNames {
		if f&(1<<i) != 0 {
			if sb.Len() > 0 {
				sb.WriteByte('|')
			}
			sb.WriteString(name)
		}
	}
	if rest := f &^ knownFlags; rest != 0 {
		if sb.Len() > 0 {
			sb.WriteByte('|')
		}
		sb.WriteString("0x")
		sb.WriteString(strconv.FormatUint(uint64(rest), 16))
	}
	return sb.String()
}

// CommandKind is what a Command asks for (fb.CommandKind).
type CommandKind uint8

// Command kinds. The zero value is CommandWrite.
const (
	CommandWrite   CommandKind = 0
	CommandRead    CommandKind = 1
	CommandControl CommandKind = 2
)

var commandKindNames = [...]string{"WRITE", "READ", "CONTROL"}

// String returns the schema name ("WRITE", "READ", "CONTROL").
func (k CommandKind) String() string {
	if int(k) < len(commandKindNames) {
		return commandKindNames[k]
	}
	return "CommandKind(" + strconv.Itoa(int(k)) + ")"
}

// AckStage is how far a command has got (fb.AckStage).
type AckStage uint8

// Acknowledgement stages. The zero value is AckAccepted.
const (
	AckAccepted  AckStage = 0
	AckCompleted AckStage = 1
	AckRejected  AckStage = 2
	AckExpired   AckStage = 3
	AckFailed    AckStage = 4
)

var ackStageNames = [...]string{"ACCEPTED", "COMPLETED", "REJECTED", "EXPIRED", "FAILED"}

// String returns the schema name ("ACCEPTED", "COMPLETED", …).
func (s AckStage) String() string {
	if int(s) < len(ackStageNames) {
		return ackStageNames[s]
	}
	return "AckStage(" + strconv.Itoa(int(s)) + ")"
}

// Value is a typed point value. Type says which field is meaningful; the
// others are ignored by the encoder and left zero by the decoder. Numeric
// types share Num so that a template can rewrite them in place:
//
//	TypeF64   Num = math.Float64bits(x)
//	TypeI64   Num = uint64(x) (two's complement)
//	TypeU64   Num = x
//	TypeBool  Num = 0 or 1
//
// The zero Value is TypeNone (no value).
type Value struct {
	Type  ValueType
	Num   uint64
	Str   string
	Bytes []byte
}

// F64 returns a TypeF64 Value.
func F64(x float64) Value { return Value{Type: TypeF64, Num: math.Float64bits(x)} }

// I64 returns a TypeI64 Value.
func I64(x int64) Value { return Value{Type: TypeI64, Num: uint64(x)} }

// U64 returns a TypeU64 Value.
func U64(x uint64) Value { return Value{Type: TypeU64, Num: x} }

// Bool returns a TypeBool Value.
func Bool(x bool) Value { return Value{Type: TypeBool, Num: boolNum(x)} }

// String returns a TypeString Value.
func String(s string) Value { return Value{Type: TypeString, Str: s} }

// Bytes returns a TypeBytes Value. The Value aliases b.
func Bytes(b []byte) Value { return Value{Type: TypeBytes, Bytes: b} }

// F64 returns Num read as a float64; meaningful when Type is TypeF64.
func (v Value) F64() float64 { return math.Float64frombits(v.Num) }

// I64 returns Num read as an int64; meaningful when Type is TypeI64.
func (v Value) I64() int64 { return int64(v.Num) }

// U64 returns Num; meaningful when Type is TypeU64.
func (v Value) U64() uint64 { return v.Num }

// Bool returns Num != 0; meaningful when Type is TypeBool.
func (v Value) Bool() bool { return v.Num != 0 }

// String formats v for humans and logs, e.g. "f64:1.5", "string:\"on\"".
// Use AppendJSON for a machine-readable rendering.
func (v Value) String() string {
	if v.Type == TypeNone {
		return "none"
	}
	s := v.Type.String() + ":"
	switch v.Type {
	case TypeF64:
		return s + strconv.FormatFloat(v.F64(), 'g', -1, 64)
	case TypeI64:
		return s + strconv.FormatInt(v.I64(), 10)
	case TypeU64:
		return s + strconv.FormatUint(v.Num, 10)
	case TypeBool:
		return s + strconv.FormatBool(v.Bool())
	case TypeString:
		return s + strconv.Quote(v.Str)
	case TypeBytes:
		return s + strconv.Quote(string(v.Bytes))
	}
	return s + strconv.FormatUint(v.Num, 10)
}

func boolNum(x bool) uint64 {
	if x {
		return 1
	}
	return 0
}

// Point is one tag's value at one instant: the Go form of fb.Point.
type Point struct {
	Tag     string
	Alias   uint64 // Sparkplug-style numeric alias; 0 = none
	Value   Value
	Quality Quality
	ErrCode uint32 // driver/protocol error code; 0 = none
	TsNs    int64  // source timestamp, Unix nanoseconds
	Flags   PointFlags
}

// DataFrame is the Go form of fb.DataFrame: readings published by a driver.
type DataFrame struct {
	Producer string // driver instance name
	Device   string
	Epoch    uint64 // producer epoch, bumped at every producer restart
	Seq      uint64 // producer sequence number within the epoch
	Points   []Point
}

// Command is the Go form of fb.Command: a request routed to a driver.
type Command struct {
	ID         uint64
	Target     string // driver that registered for it
	Device     string
	Kind       CommandKind
	Points     []Point // values to write (WRITE) or tags to read (READ)
	DeadlineNs int64   // Unix nanoseconds; the sidecar expires the command after it
	ReplyTo    string
}

// CommandAck is the Go form of fb.CommandAck: progress report for a Command.
type CommandAck struct {
	ID       uint64 // Command.ID
	Stage    AckStage
	Code     uint32 // driver/protocol status code; 0 = none
	Message  string
	Readback []Point
}
