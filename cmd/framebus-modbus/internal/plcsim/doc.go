// Package plcsim is a simulated PLC that speaks Modbus TCP: the device of
// framebus-modbus's demo and tests (`framebus-modbus sim`). The protocol is
// github.com/simonvetter/modbus's server; this package only supplies the
// register contents (its RequestHandler).
//
// # Registers
//
// Addresses are 0-based protocol addresses; the tag map
// cmd/framebus-modbus/examples/plc.toml describes exactly these.
//
//	table     address  type             name            behaviour
//	input     0        i16, 0.1 °C      temperature     21.5 ± 3.5 °C, a sine of period 60 s
//	input     1-2      u32, high first  counter         +1 every 100 ms since start
//	input     3        u16, rpm         pump_speed      follows the setpoint while pump_on (first-order lag, Tau)
//	input     4-5      f32, high first  flow            pump_speed × 0.05 l/min
//	holding   0        u16, rpm         speed_setpoint  writable, 0..3000; above: exception 3 (illegal data value)
//	holding   1        i16, 0.1 °C      temp_limit      writable; high_temp is set above it
//	holding   2-3      u32, low first   batch_size      writable
//	holding   10       u16              firmware        read-only: a write gets exception 2 (illegal data address)
//	coil      0        bool             pump_on         writable; off: the pump spins down
//	discrete  0        bool             high_temp       temperature > temp_limit
//	discrete  1        bool             running         pump_speed > 0
//
// Any other address gets exception 2 (illegal data address), as from a real
// PLC, unless Config.Extra names it: then it is plain memory, initially 0,
// writable if the tag map's tag is. A request that covers several addresses
// fails as a whole if one of them is missing or read-only; nothing is
// written then. Every unit id is answered.
//
// # Time
//
// The values that change are computed from the time of each request (the
// pump's lag integrates between requests), so an idle simulator uses no
// CPU. Writes are logged at level Info, one line per register or coil, with
// the old and the new value.
//
// # Concurrency
//
// The Modbus server serves each client connection on its own goroutine;
// the state is behind one mutex. Stop closes the listener and every client
// connection; Start listens again on the same address with the same state,
// which is how tests take the device offline and bring it back.
package plcsim
