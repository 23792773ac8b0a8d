package schema

// This file mirrors framebus.fbs for the hand-written parts of the package:
// the vtable slot of every field (slot i lives at vtable offset 4+2i, in
// declaration order) and a description of every table that drives the
// verifier. TestLayoutMatchesSchema parses framebus.fbs and fails if the two
// drift apart, and the round-trip tests read what these slots wrote through
// the generated accessors.

// Point field slots.
const (
	slotPointTag = iota
	slotPointAlias
	slotPointVtype
	slotPointNum
	slotPointStr
	slotPointBytes
	slotPointQuality
	slotPointErrCode
	slotPointTsNs
	slotPointFlags
	numPointFields
)

// DataFrame field slots.
const (
	slotDataProducer = iota
	slotDataDevice
	slotDataEpoch
	slotDataSeq
	slotDataPoints
	numDataFields
)

// Command field slots.
const (
	slotCmdID = iota
	slotCmdTarget
	slotCmdDevice
	slotCmdKind
	slotCmdPoints
	slotCmdDeadlineNs
	slotCmdReplyTo
	numCmdFields
)

// CommandAck field slots.
const (
	slotAckID = iota
	slotAckStage
	slotAckCode
	slotAckMessage
	slotAckReadback
	numAckFields
)

// vtableOffset returns the vtable offset of field slot s.
func vtableOffset(s int) uint16 { return uint16(4 + 2*s) }

// fieldKind is what a field holds, as far as the verifier cares.
type fieldKind uint8

const (
	fieldScalar fieldKind = iota // inline scalar of size bytes, any value
	fieldEnum                    // inline ubyte enum; values 0..limit
	fieldFlags                   // inline ubyte bit flags; only bits in limit
	fieldString                  // uoffset to a string
	fieldBytes                   // uoffset to a [ubyte]
	fieldTables                  // uoffset to a vector of uoffsets to elem tables
)

// fieldDesc describes one field of a table.
type fieldDesc struct {
	name  string     // schema name, for error paths
	kind  fieldKind  //
	size  uint32     // inline size: the scalar's size, or 4 for offsets
	limit uint8      // fieldEnum: largest value; fieldFlags: mask of known bits
	elem  *tableDesc // fieldTables: the element table
}

// tableDesc describes a table; fields is indexed by slot.
type tableDesc struct {
	name   string
	fields []fieldDesc
}

func scalar(name string, size uint32) fieldDesc {
	return fieldDesc{name: name, kind: fieldScalar, size: size}
}
func enum(name string, last uint8) fieldDesc {
	return fieldDesc{name: name, kind: fieldEnum, size: 1, limit: last}
}
func str(name string) fieldDesc { return fieldDesc{name: name, kind: fieldString, size: 4} }
func tables(name string, elem *tableDesc) fieldDesc {
	return fieldDesc{name: name, kind: fieldTables, size: 4, elem: elem}
}

var pointTable = &tableDesc{
	name: "Point",
	fields: []fieldDesc{
		slotPointTag:     str("tag"),
		slotPointAlias:   scalar("alias", 8),
		slotPointVtype:   enum("vtype", uint8(TypeBytes)),
		slotPointNum:     scalar("num", 8),
		slotPointStr:     str("str"),
		slotPointBytes:   {name: "bytes", kind: fieldBytes, size: 4},
		slotPointQuality: enum("quality", uint8(QualityStale)),
		slotPointErrCode: scalar("err_code", 4),
		slotPointTsNs:    scalar("ts_ns", 8),
		slotPointFlags:   {name: "flags", kind: fieldFlags, size: 1, limit: uint8(knownFlags)},
	},
}

var dataFrameTable = &tableDesc{
	name: "DataFrame",
	fields: []fieldDesc{
		slotDataProducer: str("producer"),
		slotDataDevice:   str("device"),
		slotDataEpoch:    scalar("epoch", 8),
		slotDataSeq:      scalar("seq", 8),
		slotDataPoints:   tables("points", pointTable),
	},
}

var commandTable = &tableDesc{
	name: "Command",
	fields: []fieldDesc{
		slotCmdID:         scalar("id", 8),
		slotCmdTarget:     str("target"),
		slotCmdDevice:     str("device"),
		slotCmdKind:       enum("kind", uint8(CommandControl)),
		slotCmdPoints:     tables("points", pointTable),
		slotCmdDeadlineNs: scalar("deadline_ns", 8),
		slotCmdReplyTo:    str("reply_to"),
	},
}

var commandAckTable = &tableDesc{
	name: "CommandAck",
	fields: []fieldDesc{
		slotAckID:       scalar("id", 8),
		slotAckStage:    enum("stage", uint8(AckFailed)),
		slotAckCode:     scalar("code", 4),
		slotAckMessage:  str("message"),
		slotAckReadback: tables("readback", pointTable),
	},
}

// rootTable returns the root table and identifier of frames of kind k.
func rootTable(k Kind) (*tableDesc, string) {
	switch k {
	case KindData:
		return dataFrameTable, IdentData
	case KindCommand:
		return commandTable, IdentCommand
	case KindAck:
		return commandAckTable, IdentAck
	}
	return nil, ""
}
