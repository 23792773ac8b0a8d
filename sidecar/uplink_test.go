package sidecar

import (
	"testing"

	"github.com/framebus/framebus/schema"
)

func TestUplinkSubject(t *testing.T) {
	enc := schema.NewEncoder(0)
	data := append([]byte(nil), enc.EncodeData(&schema.DataFrame{Producer: "mod.bus", Device: "pump 1"})...)
	cmd := append([]byte(nil), enc.EncodeCommand(&schema.Command{Target: "modbus", Device: ""})...)
	ack := append([]byte(nil), enc.EncodeCommandAck(&schema.CommandAck{ID: 1})...)
	for _, c := range []struct {
		tpl  string
		kind schema.Kind
		buf  []byte
		want string
	}{
		{"framebus.{gateway}.{producer}.{device}", schema.KindData, data, "framebus.gw1.mod_bus.pump_1"},
		{"framebus.{gateway}.{producer}.{device}", schema.KindCommand, cmd, "framebus.gw1.modbus._"},
		{"framebus.{gateway}.{producer}.{device}", schema.KindAck, ack, "framebus.gw1.sidecar.ack"},
		{"plant.{kind}.{gateway}", schema.KindData, data, "plant.data.gw1"},
		{"x.{unknown}.{device}", schema.KindData, data, "x.{unknown}.pump_1"},
		{"static", schema.KindData, data, "static"},
	} {
		u := &uplink{gateway: "gw1", subjParts: parseSubject(c.tpl)}
		if got := u.subject(c.kind, c.buf); got != c.want {
			t.Errorf("%q for %s: %q, want %q", c.tpl, c.kind, got, c.want)
		}
	}
}
