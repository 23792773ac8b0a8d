package sidecar

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/framebus/framebus/schema"
)

// FuzzFilter feeds arbitrary query strings to the HTTP filter parser and
// applies what it accepts to valid frames of every kind: no panic, and a
// filter with nothing set selects everything.
func FuzzFilter(f *testing.F) {
	for _, q := range []string{"", "producer=p&device=d&tag=a/*", "kind=data,ack&kind=command", "tag=[", "kind=bogus", "tag=%5B%5D%2A", "tag=a/[b-c]?"} {
		f.Add(q, uint8(0))
	}
	enc := schema.NewEncoder(0)
	pts := []schema.Point{{Tag: "a/b", Value: schema.F64(1)}, {Tag: "x", Value: schema.String("y")}}
	frames := []struct {
		kind schema.Kind
		buf  []byte
	}{
		{schema.KindData, append([]byte(nil), enc.EncodeData(&schema.DataFrame{Producer: "p", Device: "d", Points: pts})...)},
		{schema.KindCommand, append([]byte(nil), enc.EncodeCommand(&schema.Command{Target: "p", Device: "d", Points: pts})...)},
		{schema.KindAck, append([]byte(nil), enc.EncodeCommandAck(&schema.CommandAck{ID: 1, Readback: pts})...)},
	}
	f.Fuzz(func(t *testing.T, q string, which uint8) {
		vals, err := url.ParseQuery(q)
		if err != nil {
			return
		}
		r := &http.Request{URL: &url.URL{RawQuery: vals.Encode()}}
		flt, err := parseFilter(r)
		if err != nil {
			return
		}
		fr := frames[int(which)%len(frames)]
		got := matchFrame(&flt, fr.kind, fr.buf)
		if flt.Producer == "" && flt.Device == "" && flt.Tag == "" && len(flt.Kinds) == 0 && !got {
			t.Fatalf("an empty filter rejected a %s frame", fr.kind)
		}
	})
}
