package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// freeAddr returns a free 127.0.0.1 port.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// sseEvent is one Server-Sent Event.
type sseEvent struct {
	id   string
	data string
}

// readEvents reads up to n events from an event stream.
func readEvents(t testing.TB, body io.Reader, n int) []sseEvent {
	t.Helper()
	var evs []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for len(evs) < n && sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.data != "" {
				evs = append(evs, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			cur.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			cur.data = strings.TrimPrefix(line, "data: ")
		}
	}
	return evs
}

// TestHTTPFrames: GET /v1/frames end to end with a real HTTP client, resume
// by Last-Event-ID, and 4xx with a JSON body for malformed requests.
func TestHTTPFrames(t *testing.T) {
	addr := freeAddr(t)
	b := newBus(t)
	b.extra = append(b.extra, "--http-addr", addr)
	sc := b.startSidecar()
	defer sc.stop(t)
	pub := b.publish("P", 1000, "--points", "2")
	if err := pub.wait(t, time.Minute); err != nil {
		t.Fatalf("publish: %v\n%s", err, pub.out.String())
	}
	base := "http://" + addr

	get := func(url string, hdr map[string]string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := get(base+"/v1/frames?from=earliest&producer=P", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /v1/frames: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	evs := readEvents(t, resp.Body, 300)
	resp.Body.Close()
	if len(evs) != 300 {
		t.Fatalf("read %d events, want 300", len(evs))
	}
	for i, ev := range evs {
		var f struct {
			WALSeq   uint64 `json:"wal_seq"`
			Kind     string `json:"kind"`
			Producer string `json:"producer"`
			Seq      uint64 `json:"seq"`
			Points   []json.RawMessage
		}
		if err := json.Unmarshal([]byte(ev.data), &f); err != nil {
			t.Fatalf("event %d: data is not JSON: %v: %s", i, err, ev.data)
		}
		if ev.id != strconv.FormatUint(f.WALSeq, 10) || f.Kind != "data" || f.Producer != "P" || f.Seq != uint64(i) || len(f.Points) != 2 {
			t.Fatalf("event %d: id %s, %+v", i, ev.id, f)
		}
	}
	// Resume after the last event read.
	last, _ := strconv.ParseUint(evs[len(evs)-1].id, 10, 64)
	resp = get(base+"/v1/frames?producer=P", map[string]string{"Last-Event-ID": evs[len(evs)-1].id})
	more := readEvents(t, resp.Body, 700)
	resp.Body.Close()
	if len(more) != 700 || more[0].id != strconv.FormatUint(last+1, 10) {
		t.Fatalf("resume after %d: %d events, first id %q", last, len(more), more[0].id)
	}
	// ?limit ends the stream.
	resp = get(base+"/v1/frames?from=earliest&limit=10", nil)
	all, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || strings.Count(string(all), "\ndata: ") != 10 {
		t.Fatalf("limit=10: %v, body:\n%s", err, all)
	}

	for _, bad := range []struct{ method, path, body string }{
		{"GET", "/v1/frames?kind=bogus", ""},
		{"GET", "/v1/frames?from=yesterday", ""},
		{"GET", "/v1/frames?tag=[", ""},
		{"GET", "/v1/frames?from=cursor:x", ""},
		{"GET", "/v1/frames?limit=-1", ""},
		{"POST", "/v1/commands", "not json"},
		{"POST", "/v1/commands", `{"kind":"data","producer":"x"}`},
		{"POST", "/v1/commands?timeout=forever", `{"kind":"command","target":"t"}`},
	} {
		req, _ := http.NewRequest(bad.method, base+bad.path, strings.NewReader(bad.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e struct{ Error string }
		if resp.StatusCode < 400 || resp.StatusCode > 499 || json.Unmarshal(body, &e) != nil || e.Error == "" {
			t.Errorf("%s %s %q: %s %s; want 4xx with a JSON error", bad.method, bad.path, bad.body, resp.Status, body)
		}
	}

	resp = get(base+"/v1/status", nil)
	var st struct {
		Name string
		WAL  struct {
			DurableSeq uint64 `json:"durable_seq"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if st.Name != b.name || st.WAL.DurableSeq < 1000 {
		t.Fatalf("status: %+v", st)
	}
	_ = fmt.Sprint
}
