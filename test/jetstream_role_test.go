package test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// The jetstream role: the test binary, re-executed, runs a JetStream
// server (the nats-server module, file store in $FRAMEBUS_TEST_JS_DIR) on
// a random 127.0.0.1 port, prints its URL on a line of its own and serves
// until its standard input closes. BenchmarkUplink uses it to put the
// server in a process of its own, as a deployment would, so that neither
// the sidecar nor the peer publisher shares a process with it.
const jsDirEnv = "FRAMEBUS_TEST_JS_DIR"

func init() { testRoles["jetstream"] = jetstreamMain }

func jetstreamMain() int {
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: os.Getenv(jsDirEnv)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		fmt.Fprintln(os.Stderr, "nats-server not ready after 10 s")
		return 1
	}
	fmt.Println(srv.ClientURL())
	io.Copy(io.Discard, os.Stdin) // until the parent closes it (or dies)
	srv.Shutdown()
	srv.WaitForShutdown()
	return 0
}

// startJetStreamProcess runs the jetstream role in a child process and
// returns its client URL and process id. The child is stopped when the test ends, killed
// if it does not stop within 10 s, and killed with the test process.
func startJetStreamProcess(tb testing.TB) (string, int) {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=jetstream", jsDirEnv+"="+filepath.Join(tb.TempDir(), "js"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	tb.Cleanup(func() {
		in.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	type result struct {
		line string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		got <- result{line, err}
	}()
	var r result
	select {
	case r = <-got:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		r = result{err: fmt.Errorf("no URL after 30 s")}
	}
	go func() { cmd.Wait(); close(done) }()
	if r.err != nil || !strings.HasPrefix(r.line, "nats://") {
		tb.Fatalf("the jetstream role did not print its URL: %q, %v", r.line, r.err)
	}
	return strings.TrimSpace(r.line), cmd.Process.Pid
}
