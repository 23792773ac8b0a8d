package schema

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
)

// ErrJSON is wrapped by every error of ParseJSON: the input is not a frame
// in the JSON rendering (see the package documentation, "JSON rendering").
// The error text names the offending member, e.g.
//
//	schema: invalid frame JSON: points[2].value: "abc" is not an i64 (an integer)
var ErrJSON = errors.New("schema: invalid frame JSON")

// ParseJSON is the inverse of AppendJSON and AppendDeliveredJSON: it parses
// one JSON object in the rendering documented under "JSON rendering" and
// returns its kind and the encoded frame, a new slice the caller owns.
// AppendJSON of the result reproduces the input when the input is itself
// AppendJSON's output.
//
// It is lenient where that loses nothing and strict everywhere else:
//
//   - "wal_seq" is accepted and ignored (a frame gets its sequence number
//     from the WAL it is written to);
//   - "kind" may be omitted for a data frame;
//   - any other member may be omitted and is then zero: the empty string,
//     0, [] — and "WRITE" for "command_kind", "ACCEPTED" for "stage",
//     "GOOD" for "quality";
//   - a point's "type" may be omitted: a non-null value then picks it —
//     true/false bool, a string string, an integer i64 (u64 above the
//     int64 range), any other number f64 — so bytes and the f64 strings
//     "NaN", "+Inf", "-Inf" need an explicit type;
//   - members of another kind ("stage" in a data frame), unknown members,
//     values that do not fit their type (a fraction for i64, a negative
//     u64, an out-of-range float), unknown enum names, invalid base64
//     and trailing data are errors that wrap ErrJSON.
//
// Member names match case-insensitively, as with encoding/json; enum names
// must be spelled as AppendJSON writes them.
func ParseJSON(line []byte) (Kind, []byte, error) {
	trimmed := bytes.TrimSpace(line)
	if len(trimmed) == 0 {
		return 0, nil, fmt.Errorf("%w: empty input", ErrJSON)
	}
	if trimmed[0] != '{' {
		return 0, nil, fmt.Errorf("%w: not a JSON object", ErrJSON)
	}
	// The first pass checks the syntax (trailing data included) and reads
	// the kind; the second decodes the members of that kind only.
	var probe struct {
		Kind string `json:"kind"`
	}
	if err := json.Unmarshal(trimmed, &probe); err != nil {
		return 0, nil, jsonError(err)
	}
	e := parseEncoders.Get().(*Encoder)
	defer parseEncoders.Put(e)
	switch probe.Kind {
	case "", "data":
		var j jsonData
		if err := decodeStrict(trimmed, &j); err != nil {
			return 0, nil, err
		}
		f := DataFrame{Producer: j.Producer, Device: j.Device, Epoch: j.Epoch, Seq: j.Seq}
		var err error
		if f.Points, err = parsePoints("points", j.Points); err != nil {
			return 0, nil, err
		}
		return KindData, e.AppendData(nil, &f), nil
	case "command":
		var j jsonCommand
		if err := decodeStrict(trimmed, &j); err != nil {
			return 0, nil, err
		}
		c := Command{ID: j.ID, Target: j.Target, Device: j.Device, DeadlineNs: j.DeadlineNs, ReplyTo: j.ReplyTo}
		k, ok := enumByName(commandKindNames[:], j.CommandKind, "WRITE")
		if !ok {
			return 0, nil, fmt.Errorf("%w: command_kind: %q is not one of WRITE, READ, CONTROL", ErrJSON, j.CommandKind)
		}
		c.Kind = CommandKind(k)
		var err error
		if c.Points, err = parsePoints("points", j.Points); err != nil {
			return 0, nil, err
		}
		return KindCommand, e.AppendCommand(nil, &c), nil
	case "ack":
		var j jsonAck
		if err := decodeStrict(trimmed, &j); err != nil {
			return 0, nil, err
		}
		a := CommandAck{ID: j.ID, Code: j.Code, Message: j.Message}
		s, ok := enumByName(ackStageNames[:], j.Stage, "ACCEPTED")
		if !ok {
			return 0, nil, fmt.Errorf("%w: stage: %q is not one of ACCEPTED, COMPLETED, REJECTED, EXPIRED, FAILED", ErrJSON, j.Stage)
		}
		a.Stage = AckStage(s)
		var err error
		if a.Readback, err = parsePoints("readback", j.Readback); err != nil {
			return 0, nil, err
		}
		return KindAck, e.AppendCommandAck(nil, &a), nil
	}
	return 0, nil, fmt.Errorf("%w: kind: %q is not one of data, command, ack", ErrJSON, probe.Kind)
}

// The intermediate forms of the three frames. Every struct carries the
// members common to all ("wal_seq", "kind") so that DisallowUnknownFields
// rejects exactly the members of other kinds and misspellings.
type (
	jsonData struct {
		WalSeq   json.RawMessage `json:"wal_seq"`
		Kind     string          `json:"kind"`
		Producer string          `json:"producer"`
		Device   string          `json:"device"`
		Epoch    uint64          `json:"epoch"`
		Seq      uint64          `json:"seq"`
		Points   []jsonPoint     `json:"points"`
	}
	jsonCommand struct {
		WalSeq      json.RawMessage `json:"wal_seq"`
		Kind        string          `json:"kind"`
		ID          uint64          `json:"id"`
		Target      string          `json:"target"`
		Device      string          `json:"device"`
		CommandKind string          `json:"command_kind"`
		DeadlineNs  int64           `json:"deadline_ns"`
		ReplyTo     string          `json:"reply_to"`
		Points      []jsonPoint     `json:"points"`
	}
	jsonAck struct {
		WalSeq   json.RawMessage `json:"wal_seq"`
		Kind     string          `json:"kind"`
		ID       uint64          `json:"id"`
		Stage    string          `json:"stage"`
		Code     uint32          `json:"code"`
		Message  string          `json:"message"`
		Readback []jsonPoint     `json:"readback"`
	}
	jsonPoint struct {
		Tag     string          `json:"tag"`
		Alias   uint64          `json:"alias"`
		Type    string          `json:"type"`
		Value   json.RawMessage `json:"value"`
		Quality string          `json:"quality"`
		ErrCode uint32          `json:"err_code"`
		TsNs    int64           `json:"ts_ns"`
		Flags   []string        `json:"flags"`
	}
)

// parseEncoders keeps ParseJSON from growing a new builder for every line.
var parseEncoders = sync.Pool{New: func() any { return NewEncoder(0) }}

// decodeStrict decodes the (already syntax-checked) object into v,
// rejecting members v does not have.
func decodeStrict(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return jsonError(err)
	}
	return nil
}

// jsonError turns an encoding/json error into one wrapping ErrJSON that
// names the member, where encoding/json tells which.
func jsonError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("%w: %s: %s does not fit a %s", ErrJSON, te.Field, te.Value, te.Type)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("%w: at byte %d: %v", ErrJSON, se.Offset, err)
	}
	return fmt.Errorf("%w: %v", ErrJSON, err)
}

// enumByName returns the index of name in names; "" selects def.
func enumByName(names []string, name, def string) (int, bool) {
	if name == "" {
		name = def
	}
	for i, n := range names {
		if n == name {
			return i, true
		}
	}
	return 0, false
}

func parsePoints(member string, js []jsonPoint) ([]Point, error) {
	if len(js) == 0 {
		return nil, nil
	}
	ps := make([]Point, len(js))
	for i := range js {
		at := member + "[" + strconv.Itoa(i) + "]"
		j := &js[i]
		p := &ps[i]
		p.Tag, p.Alias, p.ErrCode, p.TsNs = j.Tag, j.Alias, j.ErrCode, j.TsNs
		q, ok := enumByName(qualityNames[:], j.Quality, "GOOD")
		if !ok {
			return nil, fmt.Errorf("%w: %s.quality: %q is not one of GOOD, UNCERTAIN, BAD, STALE", ErrJSON, at, j.Quality)
		}
		p.Quality = Quality(q)
		for _, name := range j.Flags {
			f, ok := enumByName(flagNames[:], name, "")
			if !ok {
				return nil, fmt.Errorf("%w: %s.flags: %q is not one of historical, transient", ErrJSON, at, name)
			}
			p.Flags |= 1 << f
		}
		var err error
		if p.Value, err = parseValue(j.Type, j.Value); err != nil {
			return nil, fmt.Errorf("%w: %s.%v", ErrJSON, at, err)
		}
	}
	return ps, nil
}

// parseValue parses a point's value of the named type; an empty type is
// inferred from the value. Its errors name the member ("value: …") and are
// wrapped by the caller.
func parseValue(typ string, raw json.RawMessage) (Value, error) {
	raw = bytes.TrimSpace(raw)
	isNull := len(raw) == 0 || string(raw) == "null"
	if typ == "" {
		switch {
		case isNull:
			return Value{}, nil
		case raw[0] == '"':
			typ = "string"
		case raw[0] == 't' || raw[0] == 'f':
			typ = "bool"
		case bytes.ContainsAny(raw, ".eE"):
			typ = "f64"
		case raw[0] == '-':
			typ = "i64"
		default:
			if _, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
				typ = "i64"
			} else {
				typ = "u64"
			}
		}
	}
	t, ok := enumByName(valueTypeNames[:], typ, "")
	if !ok {
		return Value{}, fmt.Errorf("type: %q is not one of none, f64, i64, u64, bool, string, bytes", typ)
	}
	vt := ValueType(t)
	if isNull {
		if vt == TypeNone {
			return Value{}, nil
		}
		return Value{}, fmt.Errorf("value: null (or missing) for type %s: give a value, or type none", vt)
	}
	bad := func(want string) (Value, error) {
		return Value{}, fmt.Errorf("value: %s is not %s", truncate(raw), want)
	}
	isNumber := raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9')
	switch vt {
	case TypeNone:
		return bad("null (type none)")
	case TypeF64:
		if raw[0] == '"' {
			switch string(raw) {
			case `"NaN"`:
				return F64(math.NaN()), nil
			case `"+Inf"`:
				return F64(math.Inf(1)), nil
			case `"-Inf"`:
				return F64(math.Inf(-1)), nil
			}
		}
		if !isNumber {
			return bad(`an f64 (a number, or "NaN", "+Inf", "-Inf")`)
		}
		x, err := strconv.ParseFloat(string(raw), 64)
		if err != nil {
			return bad("an f64 (out of the float64 range)")
		}
		return F64(x), nil
	case TypeI64:
		x, err := strconv.ParseInt(string(raw), 10, 64)
		if !isNumber || err != nil {
			return bad("an i64 (an integer from -9223372036854775808 to 9223372036854775807)")
		}
		return I64(x), nil
	case TypeU64:
		x, err := strconv.ParseUint(string(raw), 10, 64)
		if !isNumber || err != nil {
			return bad("a u64 (an integer from 0 to 18446744073709551615)")
		}
		return U64(x), nil
	case TypeBool:
		switch string(raw) {
		case "true":
			return Bool(true), nil
		case "false":
			return Bool(false), nil
		}
		return bad("a bool (true or false)")
	case TypeString:
		var s string
		if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
			return bad("a string")
		}
		return String(s), nil
	default: // TypeBytes
		var s string
		if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
			return bad("bytes (a string in standard base64 with padding)")
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return bad("bytes in standard base64 with padding (" + err.Error() + ")")
		}
		return Bytes(b), nil
	}
}

// truncate returns raw for an error message, shortened if long.
func truncate(raw []byte) string {
	const limit = 40
	if len(raw) <= limit {
		return string(raw)
	}
	return string(raw[:limit]) + "…"
}
