package sidecar

import (
	"testing"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
)

func TestMatchFrame(t *testing.T) {
	enc := schema.NewEncoder(0)
	pts := []schema.Point{{Tag: "pump/speed", Value: schema.F64(1)}, {Tag: "pump/temp", Value: schema.F64(2)}}
	data := append([]byte(nil), enc.EncodeData(&schema.DataFrame{Producer: "modbus", Device: "pump", Points: pts})...)
	cmd := append([]byte(nil), enc.EncodeCommand(&schema.Command{Target: "modbus", Device: "pump", Points: pts[:1]})...)
	ack := append([]byte(nil), enc.EncodeCommandAck(&schema.CommandAck{ID: 7})...)
	for _, c := range []struct {
		f    shm.Filter
		kind schema.Kind
		buf  []byte
		want bool
	}{
		{shm.Filter{}, schema.KindData, data, true},
		{shm.Filter{}, schema.KindAck, ack, true},
		{shm.Filter{Producer: "modbus"}, schema.KindData, data, true},
		{shm.Filter{Producer: "opcua"}, schema.KindData, data, false},
		{shm.Filter{Producer: "modbus"}, schema.KindCommand, cmd, true}, // a command's target
		{shm.Filter{Producer: "modbus"}, schema.KindAck, ack, false},    // acks carry no producer
		{shm.Filter{Device: "pump"}, schema.KindData, data, true},
		{shm.Filter{Device: "valve"}, schema.KindData, data, false},
		{shm.Filter{Tag: "pump/t*"}, schema.KindData, data, true}, // any point
		{shm.Filter{Tag: "pump/t*"}, schema.KindCommand, cmd, false},
		{shm.Filter{Tag: "*"}, schema.KindData, data, false}, // * does not cross '/'
		{shm.Filter{Tag: "*/*"}, schema.KindData, data, true},
		{shm.Filter{Tag: "pump/*"}, schema.KindAck, ack, false}, // no readback points
		{shm.Filter{Kinds: []uint16{uint16(schema.KindAck)}}, schema.KindData, data, false},
		{shm.Filter{Kinds: []uint16{uint16(schema.KindData), uint16(schema.KindAck)}}, schema.KindAck, ack, true},
		{shm.Filter{Producer: "modbus", Device: "pump", Tag: "pump/speed", Kinds: []uint16{1}}, schema.KindData, data, true},
	} {
		if got := matchFrame(&c.f, c.kind, c.buf); got != c.want {
			t.Errorf("matchFrame(%+v, %s) = %v, want %v", c.f, c.kind, got, c.want)
		}
	}
}
