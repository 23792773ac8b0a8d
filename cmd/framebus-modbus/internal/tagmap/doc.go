// Package tagmap reads, checks and plans the tag map of framebus-modbus: the
// TOML file that says which Modbus TCP devices to poll and which registers
// become which tags (docs/modbus.md describes every field).
//
// # The file
//
//	[[device]]
//	name = "plc1"
//	address = "127.0.0.1:5020"
//	poll_interval = "500ms"
//
//	[[tag]]
//	device = "plc1"
//	name = "temperature"
//	kind = "input"
//	address = 0
//	type = "i16"
//	scale = 0.1
//
// Load decodes it, reports keys it does not know (a misspelt "scal" would
// otherwise silently mean scale 1), fills in defaults (EnsureDefaults) and
// checks it (Validate). Validate reports every problem at once, each one
// prefixed with the file, the line of its [[device]] or [[tag]] header and
// the tag or device it is about, so that one run fixes a whole map.
//
// # Values
//
// Modbus registers are 16-bit big-endian words (the protocol fixes the byte
// order); 32-bit types take two consecutive registers, high word first
// unless word_order = "low_first". Decode turns registers into a
// schema.Value: integers stay integers (u16/u32 as u64, i16/i32 as i64),
// f32 becomes f64, coils and discrete inputs bool. A tag with a scale or an
// offset publishes the engineering value raw*scale + offset as f64. When
// 1/scale is an integer (0.1, 0.01 …) the value is computed as
// raw / (1/scale), which is correctly rounded, so that 215 at scale 0.1 is
// 21.5 and not 21.500000000000004; an f32 is converted through its shortest
// decimal form, so that 0.1f is 0.1 and not 0.10000000149011612.
//
// Encode is the inverse for writes: it takes the engineering value, removes
// offset and scale, and checks that the raw value fits the type. A value
// for an unscaled integer tag must be integral; a scaled one is rounded to
// the nearest raw step (21.55 at scale 0.1 writes 216, and the readback says
// so). Values out of the type's range, NaN and infinities are refused with
// ErrValue: nothing is written.
//
// # Read plan
//
// Groups merges the tags of a device into as few read requests as the
// protocol allows: tags of the same kind whose registers touch or overlap
// (or lie at most max_gap registers apart) are read by one request of at
// most 125 registers (2000 coils or discrete inputs). Reading across a gap
// asks the device for registers nobody mapped, which many devices refuse
// with an exception, so max_gap is 0 unless the map says otherwise.
package tagmap
