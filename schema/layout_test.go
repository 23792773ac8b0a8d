package schema

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/framebus/framebus/schema/fb"
)

// fbsSchema is what TestLayoutMatchesSchema reads from framebus.fbs.
type fbsSchema struct {
	enums  map[string][]string // enum name -> value names in order
	flags  map[string]bool     // enum name -> is bit_flags
	tables map[string][][2]string
}

var (
	fbsComment = regexp.MustCompile(`//[^\n]*`)
	fbsEnum    = regexp.MustCompile(`enum\s+(\w+)\s*:\s*\w+\s*(\(bit_flags\))?\s*\{([^}]*)\}`)
	fbsTable   = regexp.MustCompile(`table\s+(\w+)\s*\{([^}]*)\}`)
	fbsField   = regexp.MustCompile(`^(\w+)\s*:\s*([\w\[\]]+)`)
)

func parseFBS(tb testing.TB) fbsSchema {
	tb.Helper()
	src, err := os.ReadFile("framebus.fbs")
	if err != nil {
		tb.Fatal(err)
	}
	text := fbsComment.ReplaceAllString(string(src), "")
	s := fbsSchema{enums: map[string][]string{}, flags: map[string]bool{}, tables: map[string][][2]string{}}
	for _, m := range fbsEnum.FindAllStringSubmatch(text, -1) {
		for _, v := range strings.Split(m[3], ",") {
			if name, _, _ := strings.Cut(strings.TrimSpace(v), "="); strings.TrimSpace(name) != "" {
				s.enums[m[1]] = append(s.enums[m[1]], strings.TrimSpace(name))
			}
		}
		s.flags[m[1]] = m[2] != ""
	}
	for _, m := range fbsTable.FindAllStringSubmatch(text, -1) {
		for _, f := range strings.Split(m[2], ";") {
			if fm := fbsField.FindStringSubmatch(strings.TrimSpace(f)); fm != nil {
				s.tables[m[1]] = append(s.tables[m[1]], [2]string{fm[1], fm[2]})
			}
		}
	}
	return s
}

// TestLayoutMatchesSchema checks layout.go's slots and table descriptions
// against framebus.fbs.
func TestLayoutMatchesSchema(t *testing.T) {
	s := parseFBS(t)
	descs := []*tableDesc{pointTable, dataFrameTable, commandTable, commandAckTable}
	if len(s.tables) != len(descs) {
		t.Fatalf("framebus.fbs has %d tables, layout.go describes %d", len(s.tables), len(descs))
	}
	counts := map[string]int{"Point": numPointFields, "DataFrame": numDataFields, "Command": numCmdFields, "CommandAck": numAckFields}
	for _, d := range descs {
		fields := s.tables[d.name]
		if len(fields) != len(d.fields) || counts[d.name] != len(fields) {
			t.Fatalf("%s: framebus.fbs has %d fields, layout.go %d (slot count %d)", d.name, len(fields), len(d.fields), counts[d.name])
		}
		for i, f := range fields {
			name, typ := f[0], f[1]
			fd := d.fields[i]
			if fd.name != name {
				t.Errorf("%s slot %d: framebus.fbs has %q, layout.go %q", d.name, i, name, fd.name)
			}
			want := fieldDesc{name: name}
			switch {
			case typ == "string":
				want.kind, want.size = fieldString, 4
			case typ == "[ubyte]":
				want.kind, want.size = fieldBytes, 4
			case strings.HasPrefix(typ, "["):
				want.kind, want.size = fieldTables, 4
				if fd.elem == nil || "["+fd.elem.name+"]" != typ {
					t.Errorf("%s.%s: element table does not match %s", d.name, name, typ)
				}
				want.elem = fd.elem
			case typ == "uint64" || typ == "int64":
				want.kind, want.size = fieldScalar, 8
			case typ == "uint32":
				want.kind, want.size = fieldScalar, 4
			case s.flags[typ]:
				want.kind, want.size, want.limit = fieldFlags, 1, uint8(1<<len(s.enums[typ])-1)
			case s.enums[typ] != nil:
				want.kind, want.size, want.limit = fieldEnum, 1, uint8(len(s.enums[typ])-1)
			default:
				t.Fatalf("%s.%s: type %s unknown to this test", d.name, name, typ)
			}
			if fd != want {
				t.Errorf("%s.%s (%s): layout.go has %+v, want %+v", d.name, name, typ, fd, want)
			}
		}
	}
}

// TestEnumsMatchSchema checks the Go enums' names and values against
// framebus.fbs and the generated code.
func TestEnumsMatchSchema(t *testing.T) {
	s := parseFBS(t)
	check := func(enum string, names []string, generated map[uint8]string, goName func(int) string) {
		t.Helper()
		if len(s.enums[enum]) != len(names) || len(generated) != len(names) {
			t.Fatalf("%s: framebus.fbs has %d values, generated code %d, package schema %d",
				enum, len(s.enums[enum]), len(generated), len(names))
		}
		for i, name := range s.enums[enum] {
			key := uint8(i)
			if s.flags[enum] {
				key = 1 << i
			}
			if generated[key] != name {
				t.Errorf("%s value %d: generated %q, schema %q", enum, key, generated[key], name)
			}
			if got := goName(int(key)); !strings.EqualFold(got, name) {
				t.Errorf("%s value %d: package schema calls it %q, schema %q", enum, key, got, name)
			}
		}
	}
	check("Quality", qualityNames[:], convert(fb.EnumNamesQuality), func(v int) string { return Quality(v).String() })
	check("ValueType", valueTypeNames[:], convert(fb.EnumNamesValueType), func(v int) string { return ValueType(v).String() })
	check("PointFlags", flagNames[:], convert(fb.EnumNamesPointFlags), func(v int) string { return PointFlags(v).String() })
	check("CommandKind", commandKindNames[:], convert(fb.EnumNamesCommandKind), func(v int) string { return CommandKind(v).String() })
	check("AckStage", ackStageNames[:], convert(fb.EnumNamesAckStage), func(v int) string { return AckStage(v).String() })
}

func convert[E ~uint8](m map[E]string) map[uint8]string {
	out := make(map[uint8]string, len(m))
	for k, v := range m {
		out[uint8(k)] = v
	}
	return out
}

func TestEnumStrings(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{Quality(4).String(), "Quality(4)"},
		{ValueType(7).String(), "ValueType(7)"},
		{CommandKind(3).String(), "CommandKind(3)"},
		{AckStage(5).String(), "AckStage(5)"},
		{PointFlags(0).String(), ""},
		{(FlagHistorical | FlagTransient).String(), "historical|transient"},
		{(FlagTransient | 0x80).String(), "transient|0x80"},
		{PointFlags(0x84).String(), "0x84"},
		{Kind(9).String(), "Kind(9)"},
		{KindAck.String(), "ack"},
		{Kind(0).Identifier(), ""},
		{KindCommand.Identifier(), "FBCM"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestIdentify(t *testing.T) {
	for _, f := range sampleFrames() {
		if k, ok := Identify(f.buf); !ok || k != f.kind {
			t.Errorf("%s: Identify = %v, %v; want %v", f.name, k, ok, f.kind)
		}
	}
	for _, buf := range [][]byte{nil, []byte("1234FBD"), []byte("1234FBXX")} {
		if k, ok := Identify(buf); ok {
			t.Errorf("Identify(%q) = %v, want not ok", buf, k)
		}
	}
}
