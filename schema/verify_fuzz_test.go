package schema

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzVerify feeds arbitrary bytes to Verify as a frame of an arbitrary
// kind (unknown kinds included). Whatever it rejects must be rejected with
// one of its sentinel errors; whatever it accepts must be readable by every
// generated accessor (walkAll, without recover: a panic fails the fuzz),
// decodable, renderable as JSON and re-encodable to the same frame
// (checkAccepted).
//
// The seed corpus is testdata/fuzz/FuzzVerify: seed-* files are written by
// TestFuzzSeeds -update-fuzz-seeds; other files are inputs the fuzzer found,
// kept as regression tests.
func FuzzVerify(f *testing.F) {
	f.Fuzz(func(t *testing.T, kind byte, data []byte) {
		// An exact-capacity private copy: an accessor reading past len
		// panics instead of reading spare capacity, and the fuzzer's own
		// input is never written (walkAll's Mutate calls store the values
		// already there, but even so).
		buf := make([]byte, len(data))
		copy(buf, data)
		k := Kind(kind)
		if err := Verify(k, buf); err != nil {
			checkRejected(t, err)
			return
		}
		checkAccepted(t, k, buf)
	})
}

var updateFuzzSeeds = flag.Bool("update-fuzz-seeds", false, "rewrite testdata/fuzz/FuzzVerify/seed-*")

// fuzzSeeds returns the seed corpus: valid frames of every kind, the same
// frames under the wrong kind, and damaged copies that exercise each of the
// verifier's checks.
func fuzzSeeds(tb testing.TB) map[string]struct {
	kind Kind
	buf  []byte
} {
	type seed = struct {
		kind Kind
		buf  []byte
	}
	seeds := map[string]seed{}
	for _, f := range sampleFrames() {
		seeds["valid-"+f.name] = seed{f.kind, f.buf}
	}
	var e Encoder
	data := e.AppendData(nil, corruptible())
	cmd := e.AppendCommand(nil, sampleCommand())
	ack := e.AppendCommandAck(nil, sampleAck())
	seeds["wrongkind-data-as-command"] = seed{KindCommand, data}
	seeds["wrongkind-ack-as-data"] = seed{KindData, ack}
	seeds["unknownkind"] = seed{0, cmd}
	seeds["truncated-data"] = seed{KindData, data[:len(data)/2]}
	seeds["truncated-ack"] = seed{KindAck, ack[:len(ack)-12]}
	seeds["short"] = seed{KindData, data[:7]}
	damage := func(name string, kind Kind, src []byte, at int, b ...byte) {
		buf := append([]byte(nil), src...)
		copy(buf[at:], b)
		seeds["damaged-"+name] = seed{kind, buf}
	}
	root := int(rootAt(data))
	damage("root", KindData, data, 0, 0xff, 0xff, 0, 0)
	damage("soffset", KindData, data, root, 0x01, 0x00, 0x00, 0x80)
	damage("vtable-size", KindData, data, int(vtableAt(data, uint32(root))), 0x03)
	damage("cmd-middle", KindCommand, cmd, len(cmd)/2, 0xff, 0xff, 0xff, 0x7f)
	readback := deref(ack, fieldAt(tb, ack, rootAt(ack), slotAckReadback))
	damage("ack-readback-length", KindAck, ack, int(readback), 0xff, 0xff, 0xff, 0x0f)
	return seeds
}

func fuzzSeedFile(kind Kind, buf []byte) []byte {
	return fmt.Appendf(nil, "go test fuzz v1\nbyte(%q)\n[]byte(%q)\n", byte(kind), buf)
}

// TestFuzzSeeds checks that the committed seed corpus is what fuzzSeeds
// produces (rewrite it with -update-fuzz-seeds after changing the encoder or
// the schema) and that every valid seed verifies while every damaged one is
// rejected.
func TestFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzVerify")
	seeds := fuzzSeeds(t)
	if *updateFuzzSeeds {
		old, _ := filepath.Glob(filepath.Join(dir, "seed-*"))
		for _, p := range old {
			mustNil(t, os.Remove(p))
		}
		mustNil(t, os.MkdirAll(dir, 0o755))
		for name, s := range seeds {
			mustNil(t, os.WriteFile(filepath.Join(dir, "seed-"+name), fuzzSeedFile(s.kind, s.buf), 0o644))
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, "seed-*"))
	mustNil(t, err)
	if len(files) != len(seeds) {
		t.Fatalf("%s holds %d seed files, fuzzSeeds makes %d: run go test ./schema -run TestFuzzSeeds -update-fuzz-seeds", dir, len(files), len(seeds))
	}
	for name, s := range seeds {
		got, err := os.ReadFile(filepath.Join(dir, "seed-"+name))
		if err != nil || !bytes.Equal(got, fuzzSeedFile(s.kind, s.buf)) {
			t.Fatalf("seed %s is stale or missing (%v): run go test ./schema -run TestFuzzSeeds -update-fuzz-seeds", name, err)
		}
		err = Verify(s.kind, s.buf)
		if valid := strings.HasPrefix(name, "valid-"); valid != (err == nil) {
			t.Errorf("seed %s: Verify = %v", name, err)
		}
	}
}
