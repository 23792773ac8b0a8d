package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/framebus/framebus/schema"
)

// collect returns an emit function that records what it is given.
func collect(frames *[]string) func(schema.Kind, []byte) error {
	return func(k schema.Kind, frame []byte) error {
		js, err := schema.AppendJSON(nil, k, frame)
		if err != nil {
			return err
		}
		*frames = append(*frames, string(js))
		return nil
	}
}

func TestReadJSONFrames(t *testing.T) {
	in := `{"wal_seq":9,"kind":"data","producer":"p","device":"d","epoch":0,"seq":1,"points":[{"tag":"t","value":1.5}]}

   {"kind":"command","id":3,"target":"drv","device":"d","command_kind":"READ","points":[{"tag":"t"}]}` + "\r\n" +
		`{"kind":"ack","id":3,"stage":"COMPLETED","message":"ok"}` // no final newline
	var got []string
	var warn bytes.Buffer
	res, err := readJSONFrames(context.Background(), strings.NewReader(in), false, &warn, collect(&got))
	if err != nil {
		t.Fatal(err)
	}
	if res.frames != 3 || res.bad != 0 || res.lines != 4 || len(got) != 3 {
		t.Fatalf("result %+v, frames %q", res, got)
	}
	if !strings.HasPrefix(got[0], `{"kind":"data","producer":"p"`) || !strings.HasPrefix(got[1], `{"kind":"command","id":3`) ||
		!strings.HasPrefix(got[2], `{"kind":"ack","id":3,"stage":"COMPLETED"`) {
		t.Fatalf("frames %q", got)
	}
	if warn.Len() != 0 {
		t.Fatalf("warnings %q", warn.String())
	}
}

func TestReadJSONFramesBadLine(t *testing.T) {
	in := "{}\n{}\n{\"kind\":\"ack\",\"stage\":\"DONE\"}\n{}\n"
	var got []string
	res, err := readJSONFrames(context.Background(), strings.NewReader(in), false, io.Discard, collect(&got))
	if err == nil || !strings.Contains(err.Error(), `line 3: schema: invalid frame JSON: stage: "DONE"`) || !errors.Is(err, schema.ErrJSON) {
		t.Fatalf("error %v", err)
	}
	if res.frames != 2 || len(got) != 2 {
		t.Fatalf("published %d (%d) before the bad line, want 2", res.frames, len(got))
	}
}

func TestReadJSONFramesSkipBad(t *testing.T) {
	var in strings.Builder
	for i := range 30 {
		if i%2 == 0 {
			fmt.Fprintf(&in, "{\"seq\":%d}\n", i)
		} else {
			fmt.Fprintf(&in, "not json %d\n", i)
		}
	}
	var got []string
	var warn bytes.Buffer
	res, err := readJSONFrames(context.Background(), strings.NewReader(in.String()), true, &warn, collect(&got))
	if err != nil {
		t.Fatal(err)
	}
	if res.frames != 15 || res.bad != 15 || len(got) != 15 {
		t.Fatalf("result %+v", res)
	}
	w := warn.String()
	if strings.Count(w, "skipped:") != maxBadShown || !strings.Contains(w, "line 2 skipped: schema: invalid frame JSON") ||
		!strings.Contains(w, "further bad lines are counted") {
		t.Fatalf("warnings:\n%s", w)
	}
}

func TestReadJSONFramesEmitError(t *testing.T) {
	boom := errors.New("ring gone")
	n := 0
	_, err := readJSONFrames(context.Background(), strings.NewReader("{}\n{}\n{}\n"), true, io.Discard, func(schema.Kind, []byte) error {
		if n++; n == 2 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "line 2: publish:") {
		t.Fatalf("error %v", err)
	}
}

func TestReadJSONFramesLongLine(t *testing.T) {
	defer func(n int) { maxJSONLine = n }(maxJSONLine)
	maxJSONLine = 1000
	long := `{"producer":"` + strings.Repeat("x", maxJSONLine) + `"}`
	_, err := readJSONFrames(context.Background(), strings.NewReader("{}\n"+long+"\n"), true, io.Discard, func(schema.Kind, []byte) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "line 2: reading stdin: longer than 1000 bytes") {
		t.Fatalf("error %v", err)
	}
}

// blockingReader never returns: stdin of an idle terminal.
type blockingReader struct{ c chan struct{} }

func (r blockingReader) Read([]byte) (int, error) { <-r.c; return 0, io.EOF }

func TestReadJSONFramesCancel(t *testing.T) {
	r := blockingReader{make(chan struct{})}
	defer close(r.c)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := readJSONFrames(ctx, r, false, io.Discard, func(schema.Kind, []byte) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v", err)
	}
}

func TestPublishStdinUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--stdin", "--count", "5"}, "--count describes synthetic frames: not with --stdin"},
		{[]string{"--stdin", "--points", "2", "--device", "x"}, "--points describes synthetic frames"},
		{[]string{"--skip-bad"}, "--skip-bad needs --stdin"},
		{[]string{"--stdin", "file.jsonl"}, `unexpected argument "file.jsonl"`},
	} {
		var out, errb bytes.Buffer
		if code := run(append([]string{"publish"}, tc.args...), &out, &errb); code != 2 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q, want 2 and %q", tc.args, code, errb.String(), tc.want)
		}
	}
}
