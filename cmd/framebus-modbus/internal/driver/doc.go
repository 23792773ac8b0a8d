// Package driver is the Modbus TCP protocol driver behind framebus-modbus:
// it polls the devices of a tag map (package tagmap) with
// github.com/simonvetter/modbus's client, publishes their values on the bus
// through the client package, and executes the commands the bus routes to
// it as register writes.
//
// # Polling
//
// Run starts one goroutine per device. Each one polls at the device's
// poll_interval (a tick that comes while a poll is still running is
// skipped), reads the tags with the requests tagmap.Groups plans, and
// publishes one DataFrame per poll: a schema.DataTemplate built once per
// device, whose values, qualities, error codes and timestamps are rewritten
// in place, and whose seq counts the device's frames. Every point's ts_ns is
// the time its read request was answered. The producer is Config.Producer,
// the epoch the driver's start time in Unix nanoseconds.
//
// A connection that the device closed or reset since the last request (an
// idle timeout, a restarted TCP stack) is reopened at once and the poll
// goes on, once per poll, without a BAD frame.
//
// A read request that the device answers with an exception (e.g. 2, illegal
// data address: the map names a register the device does not have) makes
// only the points of that request BAD, with err_code the exception code; the
// device stays online. Any other failure — connection refused or reset,
// a timeout, a malformed answer — takes the device offline: the connection
// is closed, and while the device is offline the driver publishes a frame
// with every point BAD (no value, err_code CodeOffline, CodeTimeout or
// CodeProtocol) once per poll interval, so that consumers see the outage
// and its length. It reconnects at the next tick, then with a backoff that
// starts at poll_interval and doubles up to reconnect_max. Each change of
// state (online, offline, a request refused or working again) is logged
// once, not at every poll.
//
// # Commands
//
// The driver serves commands for the target Config.Producer
// (client.Publisher.ServeCommands, which publishes ACCEPTED first).
// HandleCommand executes WRITE and READ commands for one device
// (Command.device):
//
//   - it first checks every point, and REJECTs the command, writing
//     nothing, if any point names an unknown tag (CodeUnknownTag), a tag
//     that is not writable ("read-only", CodeReadOnly), or a value that
//     does not fit the tag's type after scaling (CodeBadValue, see
//     tagmap.Tag.Encode); the message lists every problem;
//   - then it writes the points in order (FC 5 for a coil, FC 6 for one
//     register, FC 16 for two) and reads every written tag back: COMPLETED,
//     with the readback points as the device now reports them;
//   - a Modbus exception ends the command FAILED with the exception code as
//     ack code and its name in the message (the points before it were
//     written; the message names them); a device that is offline, or a
//     connection lost during the command, is FAILED with CodeOffline,
//     CodeTimeout or CodeProtocol.
//
// A READ command reads the named tags and returns them as readback.
// CONTROL commands are REJECTED (CodeUnsupported).
//
// # Deadlines
//
// The command's context carries its deadline. The driver waits for the
// device's connection (a poll may hold it) at most until then, and does not
// start a write — nor the next one of a multi-point command — once it has
// passed (FAILED, CodeDeadline). A request already sent is bounded by the
// device's timeout, not by the deadline: the Modbus client cannot abandon a
// request half way without losing the connection's framing.
//
// # Concurrency
//
// A device's connection is used by its poll goroutine and by commands, one
// at a time (a one-slot semaphore that a command can stop waiting for at
// its deadline). Commands are executed one at a time, in order
// (ServeCommands' contract). Connecting takes at most 5 s (the Modbus
// client's dial timeout) during which the device's poll goroutine waits.
package driver
