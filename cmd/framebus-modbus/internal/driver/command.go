package driver

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/simonvetter/modbus"

	"github.com/framebus/framebus/cmd/framebus-modbus/internal/tagmap"
	"github.com/framebus/framebus/schema"
)

// op is one point of a command, checked.
type op struct {
	tag  *tagmap.Tag
	regs []uint16 // registers to write (holding)
	bit  bool     // state to write (coil)
}

// HandleCommand executes one command (a client.CommandHandler; see the
// package doc for what it does and answers). ctx carries the command's
// deadline.
func (d *Driver) HandleCommand(ctx context.Context, cmd *schema.Command) schema.CommandAck {
	if cmd.Kind != schema.CommandWrite && cmd.Kind != schema.CommandRead {
		return reject(CodeUnsupported, "command kind %s is not supported: framebus-modbus executes WRITE and READ", cmd.Kind)
	}
	dev := d.byName[cmd.Device]
	if dev == nil {
		return reject(CodeUnknownTag, "unknown device %q: this driver serves %s", cmd.Device, strings.Join(d.cfg.Map.DeviceNames(), ", "))
	}
	if len(cmd.Points) == 0 {
		return reject(CodeUnsupported, "the command names no points")
	}
	ops, code, problems := dev.check(cmd)
	if len(problems) > 0 {
		return reject(code, "%s", strings.Join(problems, "; "))
	}
	if !dev.lock(ctx) {
		return fail(CodeDeadline, "the deadline passed while the device's connection was busy: nothing written")
	}
	defer dev.unlock()
	if dev.state != stateOnline {
		if dev.lastErr == nil {
			return fail(CodeOffline, "device %q is not connected yet: nothing written", cmd.Device)
		}
		return fail(dev.errCode, "device %q is offline (%v): nothing written", cmd.Device, dev.lastErr)
	}
	verb := "read"
	if cmd.Kind == schema.CommandWrite {
		verb = "wrote"
		for i, o := range ops {
			if ctx.Err() != nil {
				return fail(CodeDeadline, "the deadline passed before %s could be written%s", tagNames(ops[i:]), writtenNote(ops[:i]))
			}
			if err := dev.write(o); err != nil {
				if code, ok := exceptionCode(err); ok {
					dev.log.Info("the device refused a write", "tag", o.tag.Name, "exception", code, "err", err)
					return fail(code, "tag %q: the device refused the write: modbus exception %d (%v)%s", o.tag.Name, code, err, writtenNote(ops[:i]))
				}
				dev.fail(err, time.Now())
				return fail(dev.errCode, "tag %q: %v: the connection was lost, the write may or may not have been applied%s", o.tag.Name, err, writtenNote(ops[:i]))
			}
			dev.log.Debug("written", "tag", o.tag.Name, "registers", o.regs, "bit", o.bit)
		}
	}
	ack := schema.CommandAck{Stage: schema.AckCompleted, Readback: make([]schema.Point, len(ops))}
	ack.Message = fmt.Sprintf("%s %d tag%s", verb, len(ops), plural(len(ops)))
	if ctx.Err() != nil && cmd.Kind == schema.CommandWrite {
		ack.Readback = nil
		ack.Message += "; no readback: the deadline passed"
		return ack
	}
	for i, o := range ops {
		p := &ack.Readback[i]
		p.Tag = o.tag.Name
		v, err := dev.readTag(o.tag)
		p.TsNs = time.Now().UnixNano()
		if err == nil {
			p.Value = v
			continue
		}
		p.Quality = schema.QualityBad
		if code, ok := exceptionCode(err); ok {
			p.ErrCode = code
		} else {
			dev.fail(err, time.Now())
			p.ErrCode = dev.errCode
		}
		if cmd.Kind == schema.CommandRead {
			ack.Stage = schema.AckFailed
			ack.Code = p.ErrCode
			ack.Message = fmt.Sprintf("tag %q: %v", o.tag.Name, err)
			return ack
		}
		ack.Message += fmt.Sprintf("; readback of %q failed: %v", o.tag.Name, err)
		if dev.state != stateOnline {
			ack.Readback = ack.Readback[:i+1]
			break
		}
	}
	return ack
}

// check resolves and encodes every point of cmd; it returns the operations,
// or the code of the first problem and every problem.
func (dev *device) check(cmd *schema.Command) ([]op, uint32, []string) {
	var (
		ops      []op
		problems []string
		code     uint32
	)
	problem := func(c uint32, format string, args ...any) {
		if code == 0 {
			code = c
		}
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	seen := map[string]bool{}
	for _, p := range cmd.Points {
		i, ok := dev.index[p.Tag]
		if !ok {
			problem(CodeUnknownTag, "unknown tag %q on device %q", p.Tag, dev.cfg.Name)
			continue
		}
		if seen[p.Tag] {
			problem(CodeBadValue, "tag %q is named twice", p.Tag)
			continue
		}
		seen[p.Tag] = true
		t := dev.tags[i]
		o := op{tag: t}
		if cmd.Kind == schema.CommandWrite {
			var err error
			switch {
			case !t.Writable || (t.Kind != tagmap.Holding && t.Kind != tagmap.Coil): // Validate allows writable only for these
				problem(CodeReadOnly, "tag %q is read-only (the tag map does not make it writable)", p.Tag)
				continue
			case t.Kind == tagmap.Coil:
				o.bit, err = t.EncodeBit(p.Value)
			default:
				o.regs, err = t.Encode(p.Value)
			}
			if err != nil {
				problem(CodeBadValue, "%s", strings.TrimPrefix(err.Error(), tagmap.ErrValue.Error()+": "))
				continue
			}
		}
		ops = append(ops, o)
	}
	return ops, code, problems
}

// write performs one write. dev.sem is held.
func (dev *device) write(o op) error {
	switch {
	case o.tag.Kind == tagmap.Coil:
		return dev.mc.WriteCoil(uint16(o.tag.Address), o.bit)
	case len(o.regs) == 1:
		return dev.mc.WriteRegister(uint16(o.tag.Address), o.regs[0])
	}
	return dev.mc.WriteRegisters(uint16(o.tag.Address), o.regs)
}

// readTag reads one tag. dev.sem is held.
func (dev *device) readTag(t *tagmap.Tag) (schema.Value, error) {
	switch t.Kind {
	case tagmap.Coil, tagmap.Discrete:
		var bits []bool
		var err error
		if t.Kind == tagmap.Coil {
			bits, err = dev.mc.ReadCoils(uint16(t.Address), 1)
		} else {
			bits, err = dev.mc.ReadDiscreteInputs(uint16(t.Address), 1)
		}
		if err != nil {
			return schema.Value{}, err
		}
		return t.DecodeBit(bits[0]), nil
	}
	rt := modbus.HOLDING_REGISTER
	if t.Kind == tagmap.Input {
		rt = modbus.INPUT_REGISTER
	}
	regs, err := dev.mc.ReadRegisters(uint16(t.Address), uint16(t.Words()), rt)
	if err != nil {
		return schema.Value{}, err
	}
	return t.Decode(regs), nil
}

func reject(code uint32, format string, args ...any) schema.CommandAck {
	return schema.CommandAck{Stage: schema.AckRejected, Code: code, Message: fmt.Sprintf(format, args...)}
}

func fail(code uint32, format string, args ...any) schema.CommandAck {
	return schema.CommandAck{Stage: schema.AckFailed, Code: code, Message: fmt.Sprintf(format, args...)}
}

// writtenNote says which tags were written before a failure.
func writtenNote(done []op) string {
	if len(done) == 0 {
		return " (nothing written)"
	}
	return " (written before it: " + tagNames(done) + ")"
}

func tagNames(ops []op) string {
	n := make([]string, len(ops))
	for i, o := range ops {
		n[i] = o.tag.Name
	}
	return strings.Join(n, ", ")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
