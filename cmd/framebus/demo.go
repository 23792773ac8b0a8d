package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/shm"
)

// demoProducerCmd is the hidden subcommand the demo starts its producers with.
const demoProducerCmd = "__demo-producer"

func demoMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("framebus demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	producers := fs.Int("producers", 3, "number of producer processes")
	duration := fs.Duration("duration", 10*time.Second, "how long to run (0: until interrupted)")
	points := fs.Int("points", 8, "points per frame")
	ringSize := fs.Int("ring-size", 4<<20, "ring capacity per producer in bytes (a power of two)")
	dir := fs.String("shm-dir", shm.DefaultDir, "directory of the segment file")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: framebus demo [flags]

Creates a shared-memory segment with one ring per producer, starts producer
processes that publish DataFrames (template path: encode once, then rewrite
values and timestamps in place), and consumes them in this process: every
frame is copied out of the ring, verified and checked for gaps. Prints the
rate every second and a summary at the end; removes the segment on exit.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *producers < 1 || *producers > 32 || *points < 1 || *points > 1000 {
		fmt.Fprintln(stderr, "framebus demo: --producers must be 1..32 and --points 1..1000")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	if err := demo(ctx, stdout, *dir, *producers, *points, *ringSize); err != nil {
		fmt.Fprintln(stderr, "framebus demo:", err)
		return 1
	}
	return 0
}

func demo(ctx context.Context, out io.Writer, dir string, producers, points, ringSize int) error {
	name := "demo-" + strconv.Itoa(os.Getpid())
	seg, err := shm.Create(shm.Config{
		Name: name, Dir: dir, MaxRings: producers,
		Size: int64(shm.HeaderSize + 64<<10 + producers*(ringSize+64<<10)),
	}, 1)
	if err != nil {
		return err
	}
	defer func() {
		seg.Close()
		seg.Remove()
	}()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	rings := make([]*shm.Ring, producers)
	cmds := make([]*exec.Cmd, producers)
	for i := range rings {
		slot, err := seg.AllocRing(shm.RingSpec{Kind: shm.KindIngressSPSC, Capacity: ringSize,
			Owner: shm.Owner{Name: fmt.Sprintf("demo-producer-%d", i+1)}})
		if err != nil {
			return err
		}
		if rings[i], err = seg.Ring(slot); err != nil {
			return err
		}
		cmd := exec.Command(exe, demoProducerCmd, dir, name, strconv.Itoa(slot), strconv.Itoa(i+1), strconv.Itoa(points))
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return err
		}
		cmds[i] = cmd
	}
	defer func() {
		for _, c := range cmds {
			if c != nil {
				c.Process.Signal(syscall.SIGTERM)
				c.Wait()
			}
		}
	}()
	fmt.Fprintf(out, "framebus demo: segment %s, %d producer processes, %d points per frame, %d KiB ring each\n",
		seg.Path(), producers, points, ringSize>>10)
	fmt.Fprintln(out, "  time   frames/s      MB/s   points/s   verified  gaps  ring fill")

	cons := make([]*shm.Consumer, producers)
	for i, r := range rings {
		if cons[i], err = r.Consumer(); err != nil {
			return err
		}
	}
	next := make([]uint64, producers)
	var frames, bytes, lastFrames, lastBytes, bad, gaps uint64
	var sample []byte
	copyBuf := make([]byte, 0, 64<<10)
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	ready := func() bool {
		for _, c := range cons {
			if c.Ready() {
				return true
			}
		}
		return ctx.Err() != nil
	}
	report := func(now time.Time, dt float64) {
		df, db := frames-lastFrames, bytes-lastBytes
		lastFrames, lastBytes = frames, bytes
		var fill uint64
		for _, r := range rings {
			fill = max(fill, r.Used()*100/uint64(r.Capacity()))
		}
		fmt.Fprintf(out, "%5.0fs %10.0f %9.1f %10.0f %10d %5d %8d%%\n", now.Sub(start).Seconds(),
			float64(df)/dt, float64(db)/dt/1e6, float64(df)*float64(points)/dt, frames, gaps, fill)
	}
	last := start
	for ctx.Err() == nil {
		n := 0
		for i, c := range cons {
			k, err := c.Poll(4096, func(rec shm.Record) {
				// Copy before verifying: the producer could change the
				// bytes in place after the check.
				copyBuf = append(copyBuf[:0], rec.Payload...)
				f, err := schema.ViewDataFrame(copyBuf)
				if err != nil {
					bad++
					return
				}
				if s := f.Seq(); s != next[i] {
					gaps++
					next[i] = s
				}
				next[i]++
				frames++
				bytes += uint64(len(rec.Payload))
				if sample == nil {
					sample = append([]byte(nil), copyBuf...)
				}
			})
			if err != nil {
				return err
			}
			if err := c.Release(c.ReadPos()); err != nil {
				return err
			}
			n += k
		}
		select {
		case now := <-tick.C:
			report(now, now.Sub(last).Seconds())
			last = now
		default:
		}
		if n == 0 {
			wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			seg.Doorbell().Wait(wctx, shm.DefaultSpin, ready)
			cancel()
		}
	}
	el := time.Since(start).Seconds()
	fmt.Fprintf(out, "\n%d frames (%d points) in %.1fs: %.0f frames/s average; %d failed verification, %d sequence gaps\n",
		frames, frames*uint64(points), el, float64(frames)/el, bad, gaps)
	if sample != nil {
		js, err := schema.AppendJSON(nil, schema.KindData, sample)
		if err == nil {
			fmt.Fprintf(out, "first frame as JSON: %s\n", js)
		}
	}
	if bad != 0 || gaps != 0 {
		return fmt.Errorf("%d frames failed verification and %d sequence gaps", bad, gaps)
	}
	return nil
}

// demoProducerMain publishes frames into one ring until SIGTERM.
func demoProducerMain(args []string, stderr io.Writer) int {
	if len(args) != 5 {
		fmt.Fprintln(stderr, "internal command: dir name slot id points")
		return 2
	}
	slot, _ := strconv.Atoi(args[2])
	id, _ := strconv.Atoi(args[3])
	points, _ := strconv.Atoi(args[4])
	if err := demoProduce(args[0], args[1], slot, uint16(id), points); err != nil {
		fmt.Fprintf(stderr, "demo producer %d: %v\n", id, err)
		return 1
	}
	return 0
}

func demoProduce(dir, name string, slot int, id uint16, points int) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	seg, err := shm.Open(dir, name)
	if err != nil {
		return err
	}
	defer seg.Close()
	ring, err := seg.Ring(slot)
	if err != nil {
		return err
	}
	p, err := ring.Producer(id)
	if err != nil {
		return err
	}
	tags := make([]schema.TemplateTag, points)
	for i := range tags {
		tags[i] = schema.TemplateTag{Tag: fmt.Sprintf("plc%d/holding/%d", id, 40001+i), Type: schema.TypeF64}
	}
	tpl, err := schema.NewDataTemplate(fmt.Sprintf("demo-producer-%d", id), fmt.Sprintf("plc%d", id), tags)
	if err != nil {
		return err
	}
	tpl.SetEpoch(seg.Epoch())
	for seq := uint64(0); ctx.Err() == nil; seq++ {
		tpl.SetSeq(seq)
		now := time.Now().UnixNano()
		for i := 0; i < points; i++ {
			tpl.SetF64(i, math.Sin(float64(seq)/1000+float64(i)))
			tpl.SetTs(i, now)
		}
		for {
			cl, err := p.Claim(uint16(schema.KindData), tpl.Len())
			if errors.Is(err, shm.ErrFull) {
				wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
				p.WaitSpace(wctx, tpl.Len(), shm.DefaultSpin)
				cancel()
				if ctx.Err() != nil {
					return nil
				}
				continue
			}
			if err != nil {
				return err
			}
			tpl.CopyTo(cl.Buf)
			p.Commit(cl)
			break
		}
	}
	return nil
}
