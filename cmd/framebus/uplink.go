package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/framebus/framebus/sidecar"
)

const uplinkUsage = `Usage: framebus uplink status [--http-addr HOST:PORT] [--json]

Prints the state of the sidecar's NATS JetStream uplink, from its HTTP API
(GET /v1/status): connected or not, how far JetStream has acknowledged the
WAL (position, lag in frames and seconds), what was published, acknowledged,
dropped as duplicates, and the last error. The exit status is 1 if the
uplink is off or not connected.

Flags:
`

func uplinkMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "status" {
		fmt.Fprint(stderr, uplinkUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return 0
		}
		return 2
	}
	fs := flag.NewFlagSet("framebus uplink status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("http-addr", sidecar.DefaultHTTPAddr, "the sidecar's http_addr")
	asJSON := fs.Bool("json", false, "print the uplink section of /v1/status as JSON")
	fs.Usage = func() { fmt.Fprint(stderr, uplinkUsage); fs.PrintDefaults() }
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+*addr+"/v1/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "framebus uplink status: %v (is the sidecar running with http_addr %s?)\n", err, *addr)
		return 1
	}
	defer resp.Body.Close()
	var st sidecar.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		fmt.Fprintf(stderr, "framebus uplink status: reading /v1/status: %v\n", err)
		return 1
	}
	u := st.Uplink
	if *asJSON {
		b, _ := json.MarshalIndent(u, "", "  ")
		fmt.Fprintln(stdout, string(b))
	} else if u == nil {
		fmt.Fprintln(stdout, "uplink: off (set uplink.nats.servers)")
	} else {
		state := "connected"
		if !u.Connected {
			state = "NOT connected"
		}
		fmt.Fprintf(stdout, "uplink: %s to %s, stream %s\n", state, u.Servers, u.Stream)
		fmt.Fprintf(stdout, "position: WAL seq %d acknowledged; lag %d frames, %.1f s\n", u.Position, u.LagFrames, u.LagSeconds)
		fmt.Fprintf(stdout, "published %d, acked %d, duplicates dropped %d, errors %d\n", u.Published, u.Acked, u.Duplicates, u.Errors)
		if u.LastError != "" {
			fmt.Fprintf(stdout, "last error: %s\n", u.LastError)
		}
	}
	if u == nil || !u.Connected {
		return 1
	}
	return 0
}
