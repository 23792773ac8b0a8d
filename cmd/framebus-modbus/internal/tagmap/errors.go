package tagmap

import "errors"

var (
	// ErrInvalid means the tag map breaks a rule; the error lists every
	// problem, each with its file, line and tag or device.
	ErrInvalid = errors.New("tagmap: invalid tag map")

	// ErrValue means a value cannot be written to a tag: wrong type, not an
	// integer for an integer tag, out of the type's range, NaN or infinite.
	// The error says which and what the tag holds.
	ErrValue = errors.New("tagmap: value does not fit the tag")
)
