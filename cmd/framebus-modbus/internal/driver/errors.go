package driver

import (
	"errors"

	"github.com/simonvetter/modbus"
)

var (
	// ErrConfig means Config is unusable; the error says which field.
	ErrConfig = errors.New("driver: invalid configuration")
)

// Error codes: Point.err_code of BAD points and CommandAck.code. Codes
// 1..255 are the Modbus exception codes the device answered with (1 illegal
// function, 2 illegal data address, 3 illegal data value, 4 server device
// failure, 6 busy, 10 and 11 gateway problems); the driver's own start at
// 0x100.
const (
	CodeUnknownTag  uint32 = 0x100 // REJECTED: unknown device or tag
	CodeReadOnly    uint32 = 0x101 // REJECTED: the tag is not writable
	CodeBadValue    uint32 = 0x102 // REJECTED: the value does not fit the tag (type, range)
	CodeUnsupported uint32 = 0x103 // REJECTED: a command kind the driver does not execute, or no points
	CodeOffline     uint32 = 0x200 // no connection: refused, reset, closed
	CodeTimeout     uint32 = 0x201 // the device did not answer within its timeout
	CodeProtocol    uint32 = 0x202 // the device's answer was malformed
	CodeDeadline    uint32 = 0x203 // FAILED: the command's deadline passed before the driver could act
)

// exceptions maps the Modbus client's exception errors to their codes.
var exceptions = []struct {
	err  error
	code uint32
}{
	{modbus.ErrIllegalFunction, 0x01},
	{modbus.ErrIllegalDataAddress, 0x02},
	{modbus.ErrIllegalDataValue, 0x03},
	{modbus.ErrServerDeviceFailure, 0x04},
	{modbus.ErrAcknowledge, 0x05},
	{modbus.ErrServerDeviceBusy, 0x06},
	{modbus.ErrMemoryParityError, 0x08},
	{modbus.ErrGWPathUnavailable, 0x0a},
	{modbus.ErrGWTargetFailedToRespond, 0x0b},
}

// exceptionCode returns the Modbus exception code err stands for: the
// device answered and refused the request, the connection is fine.
func exceptionCode(err error) (uint32, bool) {
	for _, e := range exceptions {
		if errors.Is(err, e.err) {
			return e.code, true
		}
	}
	return 0, false
}

// failureCode classifies an error that is not an exception: it takes the
// device offline.
func failureCode(err error) uint32 {
	switch {
	case errors.Is(err, modbus.ErrRequestTimedOut):
		return CodeTimeout
	case errors.Is(err, modbus.ErrProtocolError), errors.Is(err, modbus.ErrBadUnitId),
		errors.Is(err, modbus.ErrBadTransactionId), errors.Is(err, modbus.ErrUnknownProtocolId),
		errors.Is(err, modbus.ErrShortFrame), errors.Is(err, modbus.ErrBadCRC):
		return CodeProtocol
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return CodeTimeout
	}
	return CodeOffline
}
