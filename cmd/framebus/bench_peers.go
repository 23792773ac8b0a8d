package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sys/unix"
)

// benchPeerArg is the hidden first argument of `framebus bench` that runs
// one side of a peer in a child process: `framebus bench internal-peer
// ROLE --socket PATH ...`.
const benchPeerArg = "internal-peer"

// The peer roles.
const (
	benchRoleWriter = "socket-writer" // writes frames, one write each
	benchRoleEcho   = "socket-echo"   // echoes fixed-size messages
)

// benchPeerMain runs a peer role in a child of framebus bench.
func benchPeerMain(args []string, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "framebus bench "+benchPeerArg+": want a role")
		return 2
	}
	role := args[0]
	fs := flag.NewFlagSet("framebus bench "+benchPeerArg+" "+role, flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("socket", "", "Unix socket to connect to")
	points := fs.Int("points", 1, "points per frame (writer)")
	count := fs.Int("count", 0, "frames to write (writer)")
	size := fs.Int("size", 0, "message size (echo)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	var err error
	switch role {
	case benchRoleWriter:
		err = benchSocketWriter(*sock, *points, *count)
	case benchRoleEcho:
		err = benchSocketEcho(*sock, *size)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(stderr, "framebus bench %s %s: %v\n", benchPeerArg, role, err)
		return 1
	}
	return 0
}

// benchSocketWriter connects to sock, waits for the reader's go byte,
// then writes count frames of points points with one write per frame,
// doing the same work per frame as framebus publish.
func benchSocketWriter(sock string, points, count int) error {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	tpl := benchTemplate(points)
	var goByte [1]byte
	if _, err := io.ReadFull(conn, goByte[:]); err != nil {
		return fmt.Errorf("waiting for the go byte: %w", err)
	}
	for seq := 0; seq < count; seq++ {
		fillSynthetic(tpl, uint64(seq), points)
		if _, err := conn.Write(tpl.Bytes()); err != nil {
			return fmt.Errorf("write %d: %w", seq, err)
		}
	}
	return nil
}

// benchSocketEcho connects to sock and sends back every size-byte message
// it reads, until the other side closes.
func benchSocketEcho(sock string, size int) error {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	buf := make([]byte, size)
	for {
		if _, err := io.ReadFull(conn, buf); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if _, err := conn.Write(buf); err != nil {
			return err
		}
	}
}

// benchPeerConn listens on a new Unix socket, starts the peer child role
// with args (and --socket) and returns its connection.
func (e *benchEnv) benchPeerConn(ctx context.Context, role string, args ...string) (net.Conn, *benchChild, error) {
	sock := filepath.Join(e.base, fmt.Sprintf("peer-%d.sock", time.Now().UnixNano()))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close() // removes the socket file; the connection stays
	c, err := e.start("the Unix socket peer ("+role+")", e.exe, append([]string{"bench", benchPeerArg, role, "--socket", sock}, args...)...)
	if err != nil {
		return nil, nil, err
	}
	ln.SetDeadline(time.Now().Add(30 * time.Second))
	conn, err := ln.Accept()
	if err != nil {
		c.kill()
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		return nil, nil, c.failed(fmt.Sprintf("did not connect (%v)", err))
	}
	return conn, c, nil
}

// socketThroughput is the Unix socket peer of the ingest scenario: a child
// process writes count frames of points points, one write per frame; this
// process reads 256 KiB at a time and counts them. frames/s is count over
// the go byte until the last byte is read.
func (e *benchEnv) socketThroughput(ctx context.Context, points, count int) (float64, error) {
	conn, c, err := e.benchPeerConn(ctx, benchRoleWriter, "--points", strconv.Itoa(points), "--count", strconv.Itoa(count))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	want := int64(count) * int64(benchFrameBytes(points))
	buf := make([]byte, 256<<10)
	conn.SetDeadline(time.Now().Add(5 * time.Minute))
	start := time.Now()
	if _, err := conn.Write([]byte{1}); err != nil {
		c.kill()
		return 0, c.failed(fmt.Sprintf("is gone (%v)", err))
	}
	var got int64
	for got < want {
		n, err := conn.Read(buf)
		got += int64(n)
		if err != nil {
			c.kill()
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			return 0, c.failed(fmt.Sprintf("sent %d of %d bytes (%v)", got, want, err))
		}
	}
	el := time.Since(start)
	if err := c.wait(ctx, 30*time.Second); err != nil {
		return 0, err
	}
	return float64(count) / el.Seconds(), nil
}

// pingPong is the peer of the live scenario: rounds round trips of a
// size-byte message to a child process that echoes it over a Unix stream
// socket. It returns p50 and p99 in µs (the first 100 rounds warm up).
func (e *benchEnv) pingPong(ctx context.Context, size, rounds int) ([2]float64, error) {
	conn, c, err := e.benchPeerConn(ctx, benchRoleEcho, "--size", strconv.Itoa(size))
	if err != nil {
		return [2]float64{}, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	msg := benchTemplate(1).Bytes()[:size]
	back := make([]byte, size)
	lats := make([]time.Duration, 0, rounds)
	conn.SetDeadline(time.Now().Add(5 * time.Minute))
	for i := -100; i < rounds; i++ {
		start := time.Now()
		if _, err := conn.Write(msg); err == nil {
			_, err = io.ReadFull(conn, back)
		}
		if err != nil {
			conn.Close()
			c.kill()
			if ctx.Err() != nil {
				return [2]float64{}, ctx.Err()
			}
			return [2]float64{}, c.failed(fmt.Sprintf("failed at round %d (%v)", i, err))
		}
		if i >= 0 {
			lats = append(lats, time.Since(start))
		}
	}
	conn.Close()
	if err := c.wait(ctx, 30*time.Second); err != nil {
		return [2]float64{}, err
	}
	return benchPercentiles(lats), nil
}

// benchDisk measures the disk's fsync'd sequential write bandwidth in dir
// (where the WALs are), as test/bench_test.go's peer=disk does: 1 MiB
// writes, fdatasync every 4 MiB and after the last. It returns MB/s (10⁶
// bytes a second).
func benchDisk(dir string, total int) (float64, error) {
	f, err := os.CreateTemp(dir, "disk-*.bin")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i * 31)
	}
	settle()
	start := time.Now()
	unsynced := 0
	for written := 0; written < total; {
		n, err := f.Write(chunk)
		if err != nil {
			return 0, fmt.Errorf("writing %s: %w", f.Name(), err)
		}
		written += n
		unsynced += n
		if unsynced >= 4<<20 || written >= total {
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				return 0, fmt.Errorf("fdatasync %s: %w", f.Name(), err)
			}
			unsynced = 0
		}
	}
	return float64(total) / time.Since(start).Seconds() / 1e6, nil
}

// benchJetStream is the JetStream peer: a nats-server child with JetStream
// (file store in the temporary directory) and a nats.go client in this
// process.
type benchJetStream struct {
	srv      *benchChild
	version  string
	nc       *nats.Conn
	js       jetstream.JetStream
	failed   atomic.Int64
	firstErr atomic.Value
}

// startJetStream starts `nats-server -a 127.0.0.1 -p PORT -js -sd DIR`.
func (e *benchEnv) startJetStream(ctx context.Context) (*benchJetStream, error) {
	j := &benchJetStream{version: "nats-server (version unknown)"}
	if out, err := exec.Command(e.natsServer, "--version").Output(); err == nil {
		j.version = strings.TrimSpace(string(out))
	}
	addr := freeAddr()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("no free port on 127.0.0.1")
	}
	store := filepath.Join(e.base, "jetstream")
	if j.srv, err = e.start("nats-server", e.natsServer, "-a", "127.0.0.1", "-p", port, "-js", "-sd", store); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(15 * time.Second); ; {
		if j.nc, err = nats.Connect("nats://"+addr, nats.MaxReconnects(0)); err == nil {
			break
		}
		if j.srv.exited() {
			return nil, j.srv.failed(fmt.Sprintf("exited at start (%v)", j.srv.err))
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			j.srv.kill()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, j.srv.failed(fmt.Sprintf("did not accept connections within 15s (%v)", err))
		}
		time.Sleep(50 * time.Millisecond)
	}
	j.js, err = jetstream.New(j.nc,
		jetstream.WithPublishAsyncMaxPending(benchJSPending),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			if j.failed.Add(1) == 1 {
				j.firstErr.Store(err)
			}
		}))
	if err != nil {
		j.close()
		return nil, err
	}
	return j, nil
}

func (j *benchJetStream) close() {
	if j.nc != nil {
		j.nc.Close()
	}
	if err := j.srv.stop(30 * time.Second); err != nil {
		j.srv.kill()
	}
}

// run publishes count frames of points points into a new file-stored
// stream with PublishAsync (at most benchJSPending outstanding), waits for
// every ack, checks the stream's count and deletes the stream. frames/s is
// count over the first publish until the last ack. The ack means stored,
// not fsync'd: nats-server syncs its file store in the background.
func (j *benchJetStream) run(ctx context.Context, points, count int) (float64, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if _, err := j.js.CreateStream(cctx, jetstream.StreamConfig{
		Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage, Retention: jetstream.LimitsPolicy, Replicas: 1,
	}); err != nil {
		return 0, fmt.Errorf("creating the stream: %w", err)
	}
	defer j.js.DeleteStream(context.Background(), "BENCH")
	j.failed.Store(0)
	tpl := benchTemplate(points)
	settle()
	start := time.Now()
	for seq := 0; seq < count; seq++ {
		// The same work per frame as framebus publish.
		fillSynthetic(tpl, uint64(seq), points)
		if _, err := j.js.PublishAsync("bench.data", tpl.Bytes()); err != nil {
			return 0, fmt.Errorf("PublishAsync of message %d: %w", seq, err)
		}
	}
	select {
	case <-j.js.PublishAsyncComplete():
	case <-cctx.Done():
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("%d acks outstanding after 5 minutes", j.js.PublishAsyncPending())
	}
	el := time.Since(start)
	if n := j.failed.Load(); n > 0 {
		return 0, fmt.Errorf("%d async publishes failed; the first: %v", n, j.firstErr.Load())
	}
	s, err := j.js.Stream(cctx, "BENCH")
	if err != nil {
		return 0, err
	}
	if got := s.CachedInfo().State.Msgs; got != uint64(count) {
		return 0, fmt.Errorf("the stream holds %d messages, want %d", got, count)
	}
	return float64(count) / el.Seconds(), nil
}
