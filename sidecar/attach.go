package sidecar

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/framebus/framebus/shm"
)

// maxProtocolErrors is how many malformed messages a driver may send before
// it is disconnected.
const maxProtocolErrors = 16

func (s *Sidecar) acceptLoop() {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("accept failed", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.conns.Add(1)
		go s.serve(c)
	}
}

// serve runs one driver's connection: hello, welcome, then it waits for bye
// or for the socket to close, which is how the sidecar learns the driver is
// gone.
func (s *Sidecar) serve(c *net.UnixConn) {
	defer s.conns.Done()
	defer c.Close()
	cred, err := peerCred(c)
	if err != nil {
		s.log.Warn("cannot read peer credentials; closing", "err", err)
		return
	}
	log := s.log.With("pid", cred.Pid, "uid", cred.Uid)
	buf := make([]byte, shm.MaxMessageSize+1)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil {
		log.Warn("no hello from a connecting process", "err", err)
		return
	}
	hello, err := shm.DecodeMessage(buf[:n])
	if err != nil || hello.Op != shm.OpHello {
		if err == nil {
			err = fmt.Errorf("expected hello, got %q", hello.Op)
		}
		s.m.protocolErrors.Inc()
		log.Warn("bad hello", "err", err)
		s.reply(c, &shm.Message{Op: shm.OpError, Code: shm.CodeBadHello, Message: err.Error()})
		return
	}
	if hello.Version != shm.ProtocolVersion {
		msg := fmt.Sprintf("this sidecar speaks attach protocol %d, the client %d: use matching framebus releases", shm.ProtocolVersion, hello.Version)
		log.Warn("client of another protocol version refused", "producer", hello.Producer, "version", hello.Version)
		s.reply(c, &shm.Message{Op: shm.OpError, Code: shm.CodeVersion, Message: msg})
		return
	}
	if why := s.authorize(cred); why != "" {
		log.Warn("attach denied", "producer", hello.Producer, "reason", why)
		s.reply(c, &shm.Message{Op: shm.OpError, Code: shm.CodeDenied, Message: why})
		return
	}
	switch hello.Role {
	case "", shm.RoleProducer:
	case shm.RoleSubscriber, shm.RoleRequester:
		if !s.trackConn(c) {
			s.reply(c, &shm.Message{Op: shm.OpError, Code: shm.CodeShutdown, Message: "the sidecar is shutting down; retry when it is back"})
			return
		}
		defer s.untrackConn(c)
	}
	switch hello.Role {
	case "", shm.RoleProducer:
	case shm.RoleSubscriber:
		sub, code, err := s.attachSubscriber(cred, &hello, c)
		if err != nil {
			log.Warn("subscription refused", "code", code, "err", err)
			s.reply(c, &shm.Message{Op: shm.OpError, Code: code, Message: err.Error()})
			return
		}
		c.SetReadDeadline(time.Time{})
		if !s.reply(c, &shm.Message{Op: shm.OpWelcome, Version: shm.ProtocolVersion, Segment: s.seg.Path(), Slot: sub.slot,
			Generation: sub.gen, Epoch: s.epoch, RingBytes: sub.ring.Capacity(), Seq: sub.next.Load()}) {
			// Not yet in the set: nothing else writes its ring.
			if sub.cursor != "" {
				s.subs.releaseCursor(sub.cursor)
			}
			s.seg.FreeRing(sub.slot)
			return
		}
		s.serveSubscriber(sub, c, buf)
		return
	case shm.RoleRequester:
		c.SetReadDeadline(time.Time{})
		if !s.reply(c, &shm.Message{Op: shm.OpWelcome, Version: shm.ProtocolVersion, Epoch: s.epoch}) {
			return
		}
		s.serveRequester(c, buf, log)
		return
	default:
		log.Warn("unknown role", "role", hello.Role)
		s.reply(c, &shm.Message{Op: shm.OpError, Code: shm.CodeBadHello, Message: fmt.Sprintf("role %q: want producer, subscriber or requester", hello.Role)})
		return
	}
	p, code, err := s.attachProducer(cred, &hello, c)
	if err != nil {
		log.Warn("attach refused", "producer", hello.Producer, "code", code, "err", err)
		s.reply(c, &shm.Message{Op: shm.OpError, Code: code, Message: err.Error()})
		return
	}
	log = log.With("producer", p.name, "slot", p.slot)
	if !s.reply(c, &shm.Message{Op: shm.OpWelcome, Version: shm.ProtocolVersion, Segment: s.seg.Path(), Slot: p.slot,
		Generation: p.gen, ProducerID: p.id, Epoch: s.epoch, RingBytes: p.ring.Capacity()}) {
		// Unless the drain loop detached it meanwhile (retiring).
		p.state.CompareAndSwap(int32(stateAttached), int32(stateOrphan))
		p.conn.Store(nil)
		return
	}
	if hello.Resume != nil {
		log.Info("driver re-attached")
	} else {
		log.Info("driver attached", "ring_bytes", p.ring.Capacity())
	}
	s.m.attaches.Inc()
	c.SetReadDeadline(time.Time{})
	bad := 0
	for {
		n, err := c.Read(buf)
		if err != nil {
			break
		}
		m, err := shm.DecodeMessage(buf[:n])
		if err == nil && m.Op == shm.OpBye {
			log.Info("driver detached")
			p.conn.Store(nil)
			s.retire(p)
			return
		}
		if err == nil && m.Op == shm.OpServe {
			srv, err := s.router.serve(p, m.Targets)
			if err != nil {
				log.Warn("command registration refused", "err", err)
				s.reply(c, &shm.Message{Op: shm.OpError, Code: shm.CodeBadHello, Message: err.Error()})
				continue
			}
			log.Info("driver serves commands", "targets", strings.Join(srv.targets, ","), "command_slot", srv.slot)
			s.reply(c, &shm.Message{Op: shm.OpServing, Slot: srv.slot, Generation: srv.gen, RingBytes: commandRingBytes, Targets: srv.targets})
			continue
		}
		if err == nil {
			err = fmt.Errorf("unexpected %q", m.Op)
		}
		bad++
		s.m.protocolErrors.Inc()
		log.Warn("protocol error from driver", "err", err, "count", bad)
		if bad >= maxProtocolErrors {
			log.Error("too many protocol errors: disconnecting the driver (its ring is drained and freed)")
			s.reply(c, &shm.Message{Op: shm.OpError, Code: shm.CodeProtocol, Message: "too many malformed messages"})
			p.conn.Store(nil)
			s.retire(p)
			return
		}
	}
	p.conn.Store(nil)
	if p.getState() == stateAttached {
		if shm.ProcessAlive(p.pid, p.start) {
			// The socket went away but the process lives (it may still
			// write): keep draining until it re-attaches or dies. Not if
			// the drain loop has detached it meanwhile (retiring).
			if p.state.CompareAndSwap(int32(stateAttached), int32(stateOrphan)) {
				log.Warn("driver closed its socket without bye; keeping its ring until it exits")
			}
		} else {
			s.retire(p)
			log.Info("driver exited")
		}
	}
}

func (s *Sidecar) reply(c *net.UnixConn, m *shm.Message) bool {
	b, err := shm.EncodeMessage(m)
	if err != nil {
		return false
	}
	c.SetWriteDeadline(time.Now().Add(time.Second))
	_, err = c.Write(b)
	c.SetWriteDeadline(time.Time{})
	return err == nil
}

// notify sends a message to a driver without blocking the drain loop for
// long; a driver that does not read its socket misses notices. It reports
// whether the message went out.
func (s *Sidecar) notify(p *producer, m *shm.Message) bool {
	if c := p.conn.Load(); c != nil {
		b, err := shm.EncodeMessage(m)
		if err != nil {
			return false
		}
		c.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
		_, err = c.Write(b)
		return err == nil
	}
	return false
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	err = raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil {
		return nil, err
	}
	return cred, cerr
}

// authorize returns why a peer may not attach, or "" if it may: its uid is
// the sidecar's, or on the allow list, or it is a member of the group of the
// segment and the socket (Group, else the sidecar's primary group). These
// are the users the files' permissions admit (shm.SetAccess); checking again
// here also stops processes that bypass file permissions (root).
func (s *Sidecar) authorize(cred *unix.Ucred) string {
	uid := int(cred.Uid)
	if uid == s.uid || slices.Contains(s.cfg.AllowUIDs, uid) {
		return ""
	}
	if s.gid >= 0 && (int(cred.Gid) == s.gid || slices.Contains(supplementaryGroups(int(cred.Pid)), s.gid)) {
		return ""
	}
	return fmt.Sprintf("the sidecar of bus %q refused uid %d (pid %d): it admits its own uid %d, the uids in allow_uids %v and the members of group %s: "+
		"add uid %d to allow_uids (framebus run --allow-uids) or the user to that group (framebus run --group), or run the driver as uid %d",
		s.cfg.Name, uid, cred.Pid, s.uid, s.cfg.AllowUIDs, groupName(s.gid), uid, s.uid)
}

// groupName names a gid for messages: "gateway (gid 1002)", or the number.
func groupName(gid int) string {
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		return fmt.Sprintf("%s (gid %d)", g.Name, gid)
	}
	return "gid " + strconv.Itoa(gid)
}

// supplementaryGroups reads the Groups line of /proc/<pid>/status.
func supplementaryGroups(pid int) []int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
			var gs []int
			for _, f := range strings.Fields(rest) {
				if g, err := strconv.Atoi(f); err == nil {
					gs = append(gs, g)
				}
			}
			return gs
		}
	}
	return nil
}

// attachProducer gives a driver a new ring, or its old one back when it
// re-attaches after a sidecar restart.
func (s *Sidecar) attachProducer(cred *unix.Ucred, hello *shm.Message, c *net.UnixConn) (*producer, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.stopping {
		return nil, shm.CodeShutdown, errors.New("the sidecar is shutting down; retry when it is back")
	}
	if r := hello.Resume; r != nil {
		p := s.mu.producers[r.Slot]
		switch {
		case p == nil || p.gen != r.Generation:
			return nil, shm.CodeResume, fmt.Errorf("ring %d generation %d is not in this sidecar's segment (it was freed or the segment was recreated): dial again for a new ring", r.Slot, r.Generation)
		case p.pid != int(cred.Pid):
			return nil, shm.CodeResume, fmt.Errorf("ring %d belongs to pid %d, not %d", r.Slot, p.pid, cred.Pid)
		case p.getState() == stateAttached:
			return nil, shm.CodeResume, fmt.Errorf("ring %d is attached on another connection", r.Slot)
		case p.getState() == stateRetiring:
			return nil, shm.CodeResume, fmt.Errorf("ring %d is being retired", r.Slot)
		}
		p.conn.Store(c)
		p.setState(stateAttached)
		return p, "", nil
	}
	size := s.cfg.RingBytes
	if hello.RingBytes != 0 {
		size = hello.RingBytes
		if size < shm.MinRingCapacity || size > s.cfg.MaxRingBytes || size&(size-1) != 0 {
			return nil, shm.CodeBadHello, fmt.Errorf("ring_bytes %d must be a power of two between %d and %d (max_ring_bytes)", size, shm.MinRingCapacity, s.cfg.MaxRingBytes)
		}
	}
	name := hello.Producer
	if name == "" || len(name) > 64 || strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return nil, shm.CodeBadHello, fmt.Errorf("producer name %q must be 1..64 printable characters", name)
	}
	start, _ := shm.ProcessStart(int(cred.Pid))
	gen := s.epoch<<32 | uint64(s.mu.nextGen)
	slot, err := s.seg.AllocRing(shm.RingSpec{Kind: shm.KindIngressSPSC, Capacity: size, Notify: shm.NotifyDoorbell, Generation: gen,
		Owner: shm.Owner{Pid: int(cred.Pid), UID: cred.Uid, Start: start, Name: name}})
	if err != nil {
		return nil, shm.CodeNoRing, fmt.Errorf("no ring for this driver: %w (raise max_rings or the segment size, or use a smaller preset)", err)
	}
	s.mu.nextGen++
	ring, err := s.seg.Ring(slot)
	var cons *shm.Consumer
	if err == nil {
		cons, err = ring.Consumer()
	}
	if err != nil {
		s.seg.FreeRing(slot)
		return nil, shm.CodeNoRing, err
	}
	p := &producer{slot: slot, gen: gen, key: sourceKey(slot, gen), name: name, id: uint16(slot + 1), pid: int(cred.Pid), start: start,
		uid: cred.Uid, ring: ring, cons: cons}
	p.conn.Store(c)
	p.setState(stateAttached)
	s.mu.producers[slot] = p
	s.ringsVersion.Add(1)
	s.wake.Wake()
	return p, "", nil
}

// trackConn registers a subscriber's or requester's connection for
// Shutdown to close; false if the sidecar is stopping.
func (s *Sidecar) trackConn(c *net.UnixConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.stopping {
		return false
	}
	s.mu.conns[c] = true
	return true
}

func (s *Sidecar) untrackConn(c *net.UnixConn) {
	s.mu.Lock()
	delete(s.mu.conns, c)
	s.mu.Unlock()
}

// retire marks a driver gone and wakes the drain loop to drain and free its
// ring.
func (s *Sidecar) retire(p *producer) {
	p.setState(stateRetiring)
	s.wake.Wake()
}
