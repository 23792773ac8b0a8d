package schema

import (
	"bytes"
	"path"

	"github.com/framebus/framebus/schema/fb"
)

// Match reports whether a verified frame of kind k in buf has the given
// producer (a data frame's producer, a command's target), the given device,
// and a point whose tag matches the glob tag (path.Match syntax); an empty
// argument matches everything. An ack has no producer or device: it matches
// only with both empty, and its readback tags stand for its points. It is
// the one matcher of subscriptions, framebus tail and framebus wal dump.
func Match(k Kind, buf []byte, producer, device, tag string) bool {
	if producer == "" && device == "" && tag == "" {
		return true
	}
	var prod, dev []byte
	var n int
	var d fb.DataFrame
	var c fb.Command
	var a fb.CommandAck
	switch k {
	case KindData:
		d = RootDataFrame(buf)
		prod, dev, n = d.Producer(), d.Device(), d.PointsLength()
	case KindCommand:
		c = RootCommand(buf)
		prod, dev, n = c.Target(), c.Device(), c.PointsLength()
	case KindAck:
		a = RootCommandAck(buf)
		n = a.ReadbackLength()
	default:
		return false
	}
	if producer != "" && !bytes.Equal(prod, []byte(producer)) {
		return false
	}
	if device != "" && !bytes.Equal(dev, []byte(device)) {
		return false
	}
	if tag == "" {
		return true
	}
	var p fb.Point
	for i := 0; i < n; i++ {
		switch k {
		case KindData:
			d.Points(&p, i)
		case KindCommand:
			c.Points(&p, i)
		default:
			a.Readback(&p, i)
		}
		if ok, _ := path.Match(tag, string(p.Tag())); ok {
			return true
		}
	}
	return false
}
