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
//	bye{}                                 ─▶  drains the ring, frees it, closes
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
)

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
	// error, rejected
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	Count   uint64 `json:"count,omitempty"`
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
	case OpHello, OpWelcome, OpError, OpRejected, OpBye:
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
