package shm

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The attach protocol: a driver connects to the sidecar's Unix socket (a
// SOCK_SEQPACKET socket, "unixpacket" in Go, so every message is one packet)
// and the two exchange JSON control messages, at most MaxMessageSize bytes
// each. The socket stays open for the life of the attachment: its closing is
// how the sidecar learns that the driver is gone. Frames never travel over
// the socket; they go through the ring the sidecar hands out.
//
//	driver                                   sidecar
//	hello{version, producer, ring_bytes,  ─▶  checks SO_PEERCRED against the allow list,
//	      resume?}                             allocates (or, with resume, re-adopts) a ring
//	                                      ◀─  welcome{version, segment, slot, generation,
//	                                           producer_id, epoch, ring_bytes}  or  error{code, message}
//	                                      ◀─  rejected{count, reason}   (frames that failed verification)
//	serve{targets}                        ─▶  registers the driver for command targets,
//	                                           allocates its command ring (KindCommand)
//	                                      ◀─  serving{slot, generation, ring_bytes}  or  error
//	bye{}                                 ─▶  drains the ring, frees it, closes
//
// A subscriber says role "subscriber" in its hello, with a filter and a
// start; the sidecar allocates an egress ring (KindEgress) that it writes
// and the subscriber reads:
//
//	hello{version, role: subscriber,       ─▶  resolves the start, allocates the egress ring
//	      filter, from, seq?, cursor?, live?}
//	                                      ◀─  welcome{segment, slot, generation, ring_bytes,
//	                                           seq: the first sequence number it may deliver}
//	ack{seq}                              ─▶  (cursor subscriptions) the durable cursor has
//	                                           everything up to seq
//	                                      ◀─  lost{count, message}  frames the subscription
//	                                           will never see (retention, or a full live ring)
//	bye{}                                 ─▶  frees the egress ring, closes
//
// Every egress record is [seq uint64 little-endian][frame], its record type
// the frame's schema.Kind. A requester (role "requester") sends commands and
// receives their stages on the socket (commands are few; they do not need a
// ring):
//
//	command{frame: Command FlatBuffer}    ─▶  assigns the command's id, routes it to the
//	                                           driver serving its target
//	                                      ◀─  stage{frame: CommandAck}  per stage, until a
//	                                           final one (COMPLETED, REJECTED, EXPIRED, FAILED)
//
// Both sides ignore message fields they do not know, so that a newer peer
// can add fields without a version bump; an incompatible change bumps
// ProtocolVersion.

// ProtocolVersion is the attach protocol's version.
const ProtocolVersion = 1

// MaxMessageSize bounds one control message; larger packets are a protocol
// error.
const MaxMessageSize = 16 << 10

// Message operations.
const (
	OpHello    = "hello"
	OpWelcome  = "welcome"
	OpError    = "error"
	OpRejected = "rejected"
	OpBye      = "bye"
	OpServe    = "serve"   // driver → sidecar: the command targets it serves
	OpServing  = "serving" // sidecar → driver: its command ring
	OpAck      = "ack"     // subscriber → sidecar: advance the durable cursor
	OpLost     = "lost"    // sidecar → subscriber: frames it will never receive
	OpCommand  = "command" // requester → sidecar: a Command FlatBuffer
	OpStage    = "stage"   // sidecar → requester: a CommandAck FlatBuffer
)

// Roles of a connecting process (hello's role).
const (
	RoleProducer   = "producer" // the default: a driver that publishes
	RoleSubscriber = "subscriber"
	RoleRequester  = "requester"
)

// Subscription starts (hello's from).
const (
	FromLatest   = "latest"   // frames committed after the subscription starts
	FromEarliest = "earliest" // the oldest frame the WAL still holds
	FromSeq      = "seq"      // the frame with sequence number seq (or the oldest after it)
	FromCursor   = "cursor"   // right after the last frame acked on the named durable cursor
)

// Filter selects frames for a subscription; empty fields select everything.
// Producer and Device match exactly; Tag is a path.Match glob that a data
// frame matches when any of its points' tags does (commands and acks match
// on their points' tags too, and a frame without points matches only an
// empty Tag); Kinds lists schema kinds (1 data, 2 command, 3 ack).
type Filter struct {
	Producer string   `json:"producer,omitempty"`
	Device   string   `json:"device,omitempty"`
	Tag      string   `json:"tag,omitempty"`
	Kinds    []uint16 `json:"kinds,omitempty"`
}

// EgressHeaderSize is the sequence number before each frame in an egress
// record.
const EgressHeaderSize = 8

// Error codes of an OpError message.
const (
	CodeVersion   = "version"   // protocol version not supported
	CodeDenied    = "denied"    // credentials not on the allow list
	CodeBadHello  = "bad-hello" // malformed or out-of-range request
	CodeNoRing    = "no-ring"   // no directory slot or no room in the segment
	CodeResume    = "resume"    // the ring to resume is not this process's
	CodeShutdown  = "shutdown"  // the sidecar is stopping
	CodeProtocol  = "protocol"  // unexpected message
	CodeCorrupted = "corrupted" // the ring broke the record protocol: detached
	CodeCursor    = "cursor"    // a cursor subscription is already active, or the name is invalid
)

// Resume names the ring a driver already has, when it re-attaches to a
// restarted sidecar.
type Resume struct {
	Slot       int    `json:"slot"`
	Generation uint64 `json:"generation"`
}

// Message is every control message; Op says which fields matter.
type Message struct {
	Op      string `json:"op"`
	Version int    `json:"version,omitempty"`
	// hello
	Producer  string  `json:"producer,omitempty"`
	RingBytes int     `json:"ring_bytes,omitempty"` // hello: requested (0: the sidecar's default); welcome: granted
	Resume    *Resume `json:"resume,omitempty"`
	// welcome
	Segment    string `json:"segment,omitempty"` // path of the segment file
	Slot       int    `json:"slot,omitempty"`
	Generation uint64 `json:"generation,omitempty"`
	ProducerID uint16 `json:"producer_id,omitempty"`
	Epoch      uint64 `json:"epoch,omitempty"`
	// error, rejected, lost
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	Count   uint64 `json:"count,omitempty"`

	// hello: RoleProducer ("" too), RoleSubscriber or RoleRequester
	Role string `json:"role,omitempty"`
	// subscriber hello
	Filter *Filter `json:"filter,omitempty"`
	From   string  `json:"from,omitempty"`   // FromLatest ("" too), FromEarliest, FromSeq, FromCursor
	Cursor string  `json:"cursor,omitempty"` // FromCursor: the durable cursor's name
	Live   bool    `json:"live,omitempty"`   // live-only: frames as they are drained, before the WAL commit
	// hello (FromSeq): the first sequence number; welcome (subscriber):
	// the first it may deliver; ack: the last one processed
	Seq uint64 `json:"seq,omitempty"`
	// serve
	Targets []string `json:"targets,omitempty"`
	// command, stage: the FlatBuffer (base64 in the JSON)
	Frame []byte `json:"frame,omitempty"`
}

// ErrProtocol is wrapped by every decoding error of a control message.
var ErrProtocol = errors.New("shm: attach protocol error")

// EncodeMessage returns the wire form of m.
func EncodeMessage(m *Message) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("%w: message of %d bytes, at most %d", ErrProtocol, len(b), MaxMessageSize)
	}
	return b, nil
}

// DecodeMessage parses one packet. It rejects packets over MaxMessageSize,
// anything that is not a JSON object with a known op, and trailing data.
func DecodeMessage(b []byte) (Message, error) {
	var m Message
	if len(b) > MaxMessageSize {
		return m, fmt.Errorf("%w: message of %d bytes, at most %d", ErrProtocol, len(b), MaxMessageSize)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	switch m.Op {
	case OpHello, OpWelcome, OpError, OpRejected, OpBye, OpServe, OpServing, OpAck, OpLost, OpCommand, OpStage:
	default:
		return m, fmt.Errorf("%w: unknown op %q", ErrProtocol, m.Op)
	}
	return m, nil
}

// SocketPath returns the path of the sidecar's socket for bus name in runDir
// (zero values: DefaultRunDir and DefaultName).
func SocketPath(runDir, name string) string {
	if runDir == "" {
		runDir = DefaultRunDir(os.Getenv, os.Getuid())
	}
	if name == "" {
		name = DefaultName
	}
	return filepath.Join(runDir, name+".sock")
}

// DefaultRunDir is where the sidecar puts its socket when not told, and
// where drivers look for it: $FRAMEBUS_RUN_DIR if set, else the first entry
// of $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=), else
// $XDG_RUNTIME_DIR/framebus, else /run/framebus for root, else
// /tmp/framebus-<uid>. getenv is os.Getenv or a stand-in, uid the caller's. Drivers and the
// sidecar use this one rule, so that both find each other with no
// configuration.
func DefaultRunDir(getenv func(string) string, uid int) string {
	if d := getenv("FRAMEBUS_RUN_DIR"); d != "" {
		return d
	}
	if d, _, _ := strings.Cut(getenv("RUNTIME_DIRECTORY"), ":"); filepath.IsAbs(d) {
		return d
	}
	if d := getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(d) {
		return filepath.Join(d, "framebus")
	}
	if uid == 0 {
		return "/run/framebus"
	}
	return "/tmp/framebus-" + strconv.Itoa(uid)
}
