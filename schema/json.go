package schema

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math"
	"strconv"
	"sync"

	"github.com/framebus/framebus/schema/fb"
)

// AppendJSON verifies buf as a frame of the given kind and appends its JSON
// rendering — one object, no trailing newline — to dst. On error dst is
// returned unchanged. The mapping is documented in the package
// documentation under "JSON rendering".
func AppendJSON(dst []byte, kind Kind, buf []byte) ([]byte, error) {
	if err := Verify(kind, buf); err != nil {
		return dst, err
	}
	switch kind {
	case KindData:
		v := RootDataFrame(buf)
		dst = append(dst, `{"kind":"data","producer":`...)
		dst = appendJSONString(dst, v.Producer())
		dst = append(dst, `,"device":`...)
		dst = appendJSONString(dst, v.Device())
		dst = append(dst, `,"epoch":`...)
		dst = strconv.AppendUint(dst, v.Epoch(), 10)
		dst = append(dst, `,"seq":`...)
		dst = strconv.AppendUint(dst, v.Seq(), 10)
		dst = append(dst, `,"points":`...)
		dst = appendJSONPoints(dst, v.PointsLength(), func(i int) (p fb.Point) { v.Points(&p, i); return p })
	case KindCommand:
		v := RootCommand(buf)
		dst = append(dst, `{"kind":"command","id":`...)
		dst = strconv.AppendUint(dst, v.Id(), 10)
		dst = append(dst, `,"target":`...)
		dst = appendJSONString(dst, v.Target())
		dst = append(dst, `,"device":`...)
		dst = appendJSONString(dst, v.Device())
		dst = append(dst, `,"command_kind":"`...)
		dst = append(dst, CommandKind(v.Kind()).String()...)
		dst = append(dst, `","deadline_ns":`...)
		dst = strconv.AppendInt(dst, v.DeadlineNs(), 10)
		dst = append(dst, `,"reply_to":`...)
		dst = appendJSONString(dst, v.ReplyTo())
		dst = append(dst, `,"points":`...)
		dst = appendJSONPoints(dst, v.PointsLength(), func(i int) (p fb.Point) { v.Points(&p, i); return p })
	case KindAck:
		v := RootCommandAck(buf)
		dst = append(dst, `{"kind":"ack","id":`...)
		dst = strconv.AppendUint(dst, v.Id(), 10)
		dst = append(dst, `,"stage":"`...)
		dst = append(dst, AckStage(v.Stage()).String()...)
		dst = append(dst, `","code":`...)
		dst = strconv.AppendUint(dst, uint64(v.Code()), 10)
		dst = append(dst, `,"message":`...)
		dst = appendJSONString(dst, v.Message())
		dst = append(dst, `,"readback":`...)
		dst = appendJSONPoints(dst, v.ReadbackLength(), func(i int) (p fb.Point) { v.Readback(&p, i); return p })
	}
	return append(dst, '}'), nil
}

// AppendDeliveredJSON is AppendJSON for a frame delivered from the WAL: the
// object starts with its WAL sequence number, {"wal_seq":N,"kind":…}. It is
// the line `framebus tail --json` prints and the data of an SSE event of
// GET /v1/frames.
func AppendDeliveredJSON(dst []byte, walSeq uint64, kind Kind, buf []byte) ([]byte, error) {
	n := len(dst)
	out, err := AppendJSON(dst, kind, buf)
	if err != nil {
		return dst, err
	}
	// out[n] is the object's '{': insert the sequence number after it.
	var pre [32]byte
	p := append(pre[:0], `"wal_seq":`...)
	p = strconv.AppendUint(p, walSeq, 10)
	p = append(p, ',')
	out = append(out, p...)
	copy(out[n+1+len(p):], out[n+1:len(out)-len(p)])
	copy(out[n+1:], p)
	return out, nil
}

// appendJSONPoints appends a JSON array of the n points that at returns.
func appendJSONPoints(dst []byte, n int, at func(int) fb.Point) []byte {
	dst = append(dst, '[')
	for i := 0; i < n; i++ {
		if i > 0 {
			dst = append(dst, ',')
		}
		p := at(i)
		dst = appendJSONPoint(dst, &p)
	}
	return append(dst, ']')
}

func appendJSONPoint(dst []byte, p *fb.Point) []byte {
	typ := ValueType(p.Vtype())
	dst = append(dst, `{"tag":`...)
	dst = appendJSONString(dst, p.Tag())
	dst = append(dst, `,"alias":`...)
	dst = strconv.AppendUint(dst, p.Alias(), 10)
	dst = append(dst, `,"type":"`...)
	dst = append(dst, typ.String()...)
	dst = append(dst, `","value":`...)
	switch typ {
	case TypeF64:
		dst = appendJSONFloat(dst, math.Float64frombits(p.Num()))
	case TypeI64:
		dst = strconv.AppendInt(dst, int64(p.Num()), 10)
	case TypeU64:
		dst = strconv.AppendUint(dst, p.Num(), 10)
	case TypeBool:
		dst = strconv.AppendBool(dst, p.Num() != 0)
	case TypeString:
		dst = appendJSONString(dst, p.Str())
	case TypeBytes:
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, p.BytesBytes())
		dst = append(dst, '"')
	default: // TypeNone; Verify admits no other value
		dst = append(dst, "null"...)
	}
	dst = append(dst, `,"quality":"`...)
	dst = append(dst, Quality(p.Quality()).String()...)
	dst = append(dst, `","err_code":`...)
	dst = strconv.AppendUint(dst, uint64(p.ErrCode()), 10)
	dst = append(dst, `,"ts_ns":`...)
	dst = strconv.AppendInt(dst, p.TsNs(), 10)
	dst = append(dst, `,"flags":[`...)
	flags := PointFlags(p.Flags())
	first := true
	for i, name := range flagNames {
		if flags&(1<<i) == 0 {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, '"')
		dst = append(dst, name...)
		dst = append(dst, '"')
	}
	return append(dst, "]}"...)
}

// appendJSONFloat appends x as a JSON number formatted the way encoding/json
// formats a float64, or as the string "NaN", "+Inf" or "-Inf", which JSON
// numbers cannot express.
func appendJSONFloat(dst []byte, x float64) []byte {
	switch {
	case math.IsNaN(x):
		return append(dst, `"NaN"`...)
	case math.IsInf(x, 1):
		return append(dst, `"+Inf"`...)
	case math.IsInf(x, -1):
		return append(dst, `"-Inf"`...)
	}
	// This is encoding/json's floatEncoder for 64-bit floats: shortest
	// representation, exponent form only for very small or large values,
	// and "e-07" shortened to "e-7".
	format := byte('f')
	if abs := math.Abs(x); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, x, format, -1, 64)
	if format == 'e' {
		if n := len(dst); n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst
}

// appendJSONString appends s as a JSON string. Escaping is left to
// encoding/json (without HTML escaping; invalid UTF-8 becomes U+FFFD), except
// that a string made only of printable ASCII other than '"' and '\\' — which
// encoding/json copies verbatim — is copied directly without a round trip
// through the encoder. TestAppendJSONStringMatchesEncodingJSON holds the two
// paths to the same output.
func appendJSONString(dst, s []byte) []byte {
	if isPlainASCII(s) {
		dst = append(dst, '"')
		dst = append(dst, s...)
		return append(dst, '"')
	}
	e := jsonEncoders.Get().(*jsonEncoder)
	defer jsonEncoders.Put(e)
	e.buf.Reset()
	// Encoding a string into a bytes.Buffer cannot fail.
	_ = e.enc.Encode(string(s))
	out := e.buf.Bytes()
	return append(dst, out[:len(out)-1]...) // drop Encode's trailing newline
}

// isPlainASCII reports whether every byte of s is printable ASCII other
// than '"' and '\\'.
func isPlainASCII(s []byte) bool {
	for _, c := range s {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

type jsonEncoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

var jsonEncoders = sync.Pool{New: func() any {
	e := new(jsonEncoder)
	e.enc = json.NewEncoder(&e.buf)
	e.enc.SetEscapeHTML(false)
	return e
}}
