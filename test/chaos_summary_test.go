package test

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
)

// chaosFull selects the full fault counts of `make chaos` (for instance 50
// sidecar kills and 200 driver kills); without it the TestChaos* tests run
// their quick part, which `make test` includes.
var chaosFull = flag.Bool("chaos.full", false, "run the full fault counts (make chaos) instead of the quick ones (make test)")

// chaosCount picks the quick or the full count of a fault.
func chaosCount(quick, full int) int {
	if *chaosFull {
		return full
	}
	return quick
}

// Outcome is the result of one kind of injected fault, printed as one
// summary line by report. Lost, Duplicates, Panics and Stalls must all be
// zero for the fault to pass; Detail says what was checked.
type Outcome struct {
	Fault      string // what was injected, e.g. "kill -9 sidecar under load"
	Injected   int    // how often
	Lost       int    // frames acknowledged (durable or accepted) but missing
	Duplicates int    // frames stored more than once
	Panics     int    // panics or crashes of a process that must survive
	Stalls     int    // rings, subscribers or requests that stopped progressing
	Detail     string // what else was checked, in a few words
}

var summaryMu sync.Mutex

// report prints o as one line to stdout (go test shows it with -v, as
// `make chaos` runs it, or when the package fails) and fails t if any count
// is not zero.
// The lines start with "CHAOS " so that they can be collected:
//
//	CHAOS fault="kill -9 sidecar under load" injected=50 lost=0 dup=0 panics=0 stalls=0 ok detail="..."
func report(t testing.TB, o Outcome) {
	t.Helper()
	ok := o.Lost == 0 && o.Duplicates == 0 && o.Panics == 0 && o.Stalls == 0 && o.Injected > 0
	verdict := "ok"
	if !ok {
		verdict = "FAIL"
	}
	line := fmt.Sprintf("CHAOS fault=%q injected=%d lost=%d dup=%d panics=%d stalls=%d %s detail=%q\n",
		o.Fault, o.Injected, o.Lost, o.Duplicates, o.Panics, o.Stalls, verdict, strings.TrimSpace(o.Detail))
	summaryMu.Lock()
	fmt.Fprint(os.Stdout, line)
	summaryMu.Unlock()
	if !ok {
		t.Errorf("%s", strings.TrimSpace(line))
	}
}
