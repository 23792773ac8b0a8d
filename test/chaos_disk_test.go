package test

import (
	"bufio"
	"bytes"
	byteorder "encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/framebus/framebus/schema"
	"github.com/framebus/framebus/wal"
)

// Disk faults: the WAL on a small filesystem that fills up (a tmpfs grown
// by remounting it, an ext4 image on a loop device freed by deleting a
// file), and a WAL damaged between runs (truncated, bytes flipped). The
// I/O-error part, with errors injected into the WAL's commits of an
// in-process sidecar, is sidecar/chaos_io_test.go.

// diskRequireRoot skips t unless it can mount filesystems.
func diskRequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small filesystem for the WAL needs root (CI runs this as root)")
	}
}

// diskRun runs a command and returns its error with its output.
func diskRun(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// diskMount mounts a filesystem of sizeMiB, "tmpfs" or "ext4" (an image
// file in t.TempDir() on a loop device), on a new directory and unmounts
// it when t ends, failed or not. It skips t if mounting is not possible.
func diskMount(t testing.TB, kind string, sizeMiB int) string {
	t.Helper()
	base := t.TempDir()
	mnt := filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	switch kind {
	case "tmpfs":
		if err := diskRun("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%dm,mode=0755", sizeMiB), "framebus-test", mnt); err != nil {
			t.Skipf("cannot mount a tmpfs for the WAL: %v", err)
		}
	case "ext4":
		if _, err := exec.LookPath("mkfs.ext4"); err != nil {
			t.Skip("mkfs.ext4 is not installed (e2fsprogs)")
		}
		img := filepath.Join(base, "disk.img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, int64(sizeMiB)<<20); err != nil {
			t.Fatal(err)
		}
		if err := diskRun("mkfs.ext4", "-q", "-F", "-m", "0", img); err != nil {
			t.Skipf("cannot make an ext4 image: %v", err)
		}
		if err := diskRun("mount", "-t", "ext4", "-o", "loop", img, mnt); err != nil {
			t.Skipf("cannot mount an ext4 image on a loop device: %v", err)
		}
	default:
		t.Fatalf("unknown filesystem %q", kind)
	}
	t.Cleanup(func() {
		// The sidecar (killed by start's cleanup, registered later, so
		// run earlier) may still be closing its files.
		var err error
		for i := 0; i < 50; i++ {
			if err = diskRun("umount", mnt); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("unmount %s: %v; unmounting lazily", mnt, err)
		if err := diskRun("umount", "-l", mnt); err != nil {
			t.Errorf("lazy unmount: %v", err)
		}
	})
	return mnt
}

// diskFree returns the bytes free on the filesystem of path.
func diskFree(t testing.TB, path string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// diskMetrics scrapes the sidecar's /metrics: series (name and labels) →
// value.
func diskMetrics(addr string) (map[string]float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// diskSum adds up the series of metric name whose labels contain every
// one of sel (`producer="x"`).
func diskSum(m map[string]float64, name string, sel ...string) float64 {
	var s float64
outer:
	for k, v := range m {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		for _, l := range sel {
			if !strings.Contains(k, l) {
				continue outer
			}
		}
		s += v
	}
	return s
}

// diskFrame is a data frame as the WAL holds it.
type diskFrame struct {
	producer string
	seq      uint64
}

// diskWAL reads the WAL in dir (its sidecar stopped): WAL sequence →
// frame.
func diskWAL(t testing.TB, dir string) map[uint64]diskFrame {
	t.Helper()
	w, err := wal.Open(wal.Options{Dir: dir})
	if err != nil {
		t.Fatalf("open WAL: %v", err)
	}
	defer w.Close()
	out := map[uint64]diskFrame{}
	err = w.Iterate(1, func(seq uint64, f wal.Frame) error {
		if schema.Kind(f.Kind) != schema.KindData {
			return nil
		}
		df, err := schema.ViewDataFrame(f.Data)
		if err != nil {
			return fmt.Errorf("WAL seq %d: %w", seq, err)
		}
		out[seq] = diskFrame{string(df.Producer()), df.Seq()}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var diskPublished = regexp.MustCompile(`(?m)^published (\d+) frames \((\d+) dropped`)

// diskPublishResult parses `framebus publish`'s last line.
func diskPublishResult(t testing.TB, out string) (published, dropped uint64) {
	t.Helper()
	m := diskPublished.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no \"published N frames\" line in:\n%s", out)
	}
	published, _ = strconv.ParseUint(m[1], 10, 64)
	dropped, _ = strconv.ParseUint(m[2], 10, 64)
	return published, dropped
}

// diskCrashed reports whether a process's output shows a crash.
func diskCrashed(out string) bool {
	for _, s := range []string{"panic:", "fatal error:", "SIGBUS", "SIGSEGV", "DATA RACE"} {
		if strings.Contains(out, s) {
			return true
		}
	}
	return false
}

// diskFrameBytes is the size of the frames `framebus publish --points
// points` writes for producer.
func diskFrameBytes(t testing.TB, producer string, points int) int {
	tags := make([]schema.TemplateTag, points)
	for i := range tags {
		tags[i] = schema.TemplateTag{Tag: fmt.Sprintf("sim/tag%d", i), Type: schema.TypeF64}
	}
	tpl, err := schema.NewDataTemplate(producer, "sim", tags)
	if err != nil {
		t.Fatal(err)
	}
	return len(tpl.Bytes())
}

// TestChaosDiskFull runs the sidecar with its WAL on a small filesystem
// that fills up under load: the sidecar must raise DEGRADED (commits fail
// with ENOSPC), keep frames in its memory queue, raise PAUSE before that
// queue overflows (drivers with the block policy then wait, their frames
// in their rings; a drop-newest driver drops and counts), and, once space
// is freed, commit everything by itself: every frame in the WAL exactly
// once, `framebus wal verify` clean. The quick run fills each filesystem
// once (an ext4 image; -chaos.full adds a tmpfs), -chaos.full several
// times. A last part keeps
// wal_max_bytes below the filesystem: retention must then keep the disk
// from filling at all.
func TestChaosDiskFull(t *testing.T) {
	diskRequireRoot(t)
	cycles := chaosCount(1, 3)
	// The quick run takes the ext4 image (a real disk's filesystem); the
	// full one the tmpfs as well.
	if *chaosFull {
		t.Run("tmpfs", func(t *testing.T) { diskFullRun(t, "tmpfs", cycles) })
	}
	t.Run("ext4", func(t *testing.T) { diskFullRun(t, "ext4", cycles) })
	t.Run("retention-fits", diskRetentionFits)
}

// diskFullRun fills the filesystem cycles times.
func diskFullRun(t testing.TB, kind string, cycles int) {
	const (
		stepMiB  = 8 // room for the WAL per cycle
		points   = 16
		memBytes = 1 << 20
	)
	var mnt string
	var ballast []string // ext4: files taking the room of the later cycles
	if kind == "tmpfs" {
		mnt = diskMount(t, "tmpfs", stepMiB)
	} else {
		// Room for every frame once the ballast is gone.
		mnt = diskMount(t, "ext4", stepMiB*cycles*2+48)
		// Leave stepMiB free: the rest is ballast, one file per later
		// cycle and one for the slack, deleted to free space.
		free := diskFree(t, mnt)
		for i := 0; i < cycles; i++ {
			n := int64(stepMiB) << 20
			if i == cycles-1 {
				n = free - int64(stepMiB)<<20 - int64(cycles-1)*int64(stepMiB)<<20
			}
			p := filepath.Join(mnt, fmt.Sprintf("ballast-%d", i))
			diskBallast(t, p, n)
			ballast = append(ballast, p)
		}
	}
	metrics := freeAddr(t)
	b := newBus(t, "--metrics-addr", metrics, "--wal-compression", "none", "--max-memory-bytes", strconv.Itoa(memBytes),
		"--ring-bytes", "1MiB", "--max-rings", "8", "--wal-flush-ms", "5")
	b.walDir = mnt
	sc := b.startSidecar()
	if !strings.Contains(sc.out.String(), "wal_max_bytes is more than the WAL's filesystem") {
		t.Errorf("the sidecar did not warn that wal_max_bytes (8GiB) does not fit the %d MiB filesystem:\n%s", stepMiB, sc.out.String())
	}

	// Enough frames to fill every cycle's room with some to spare.
	const blockers = 2
	frame := diskFrameBytes(t, "diskfull-block-0", points) + 6
	perDriver := (cycles*stepMiB<<20)*5/4/frame/blockers + 2000
	var drivers []*proc
	for i := 0; i < blockers; i++ {
		drivers = append(drivers, b.publish(fmt.Sprintf("diskfull-block-%d", i), perDriver, "--points", strconv.Itoa(points)))
	}
	const dropCount = 8000
	dropper := b.publish("diskfull-drop", dropCount, "--points", "4", "--policy", "drop-newest", "--rate", "2000")

	scrape := func() map[string]float64 {
		m, err := diskMetrics(metrics)
		if err != nil {
			t.Fatalf("scrape %s: %v\n%s", metrics, err, sc.out.String())
		}
		return m
	}
	var stalls, overflows int
	var commitErrors float64
	var droppedSeen float64
	for c := 0; c < cycles; c++ {
		waitFor(t, 90*time.Second, fmt.Sprintf("cycle %d: DEGRADED (the filesystem full)", c), func() bool {
			return scrape()["framebus_degraded"] == 1 || sc.exited()
		})
		waitFor(t, 60*time.Second, fmt.Sprintf("cycle %d: PAUSE", c), func() bool {
			return scrape()["framebus_paused"] == 1 || sc.exited()
		})
		if sc.exited() {
			t.Fatalf("the sidecar exited on a full disk:\n%s", sc.out.String())
		}
		// Paused: the blocked drivers stop; nothing more reaches the WAL
		// queue, which stays within its bound.
		time.Sleep(300 * time.Millisecond)
		m1 := scrape()
		time.Sleep(time.Second)
		m2 := scrape()
		if m2["framebus_degraded"] != 1 || m2["framebus_paused"] != 1 {
			t.Fatalf("cycle %d: DEGRADED or PAUSE cleared while the disk is full", c)
		}
		for i := 0; i < blockers; i++ {
			// Per driver: a driver that finished has no series any more.
			sel := fmt.Sprintf(`producer="diskfull-block-%d"`, i)
			if p1, p2 := diskSum(m1, "framebus_frames_published_total", sel), diskSum(m2, "framebus_frames_published_total", sel); p2 != p1 {
				t.Errorf("cycle %d: %v frames of diskfull-block-%d reached the WAL queue while it was paused", c, p2-p1, i)
			}
		}
		if v := m2["framebus_batch_memory_bytes"]; v > memBytes {
			overflows++
			t.Errorf("cycle %d: framebus_batch_memory_bytes = %v, over max_memory_bytes %d", c, v, memBytes)
		}
		if m2["framebus_wal_commit_errors_total"] == 0 {
			t.Errorf("cycle %d: no commit failed, yet DEGRADED is up", c)
		}
		for _, d := range drivers {
			if d.exited() {
				t.Fatalf("cycle %d: a blocking driver finished while the disk was full: %v\n%s", c, d.err, d.out.String())
			}
		}
		droppedSeen = max(droppedSeen, diskSum(m2, "framebus_frames_dropped_total"))
		commitErrors = m2["framebus_wal_commit_errors_total"]

		// Free space: grow the tmpfs, or delete a ballast file.
		if kind == "tmpfs" {
			size := stepMiB * (c + 2)
			if c == cycles-1 {
				size = stepMiB*cycles*2 + 64
			}
			if err := diskRun("mount", "-o", fmt.Sprintf("remount,size=%dm", size), mnt); err != nil {
				t.Fatal(err)
			}
		} else {
			if c == cycles-1 {
				for _, p := range ballast {
					os.Remove(p)
				}
			} else if err := os.Remove(ballast[c]); err != nil {
				t.Fatal(err)
			}
		}
		if c < cycles-1 {
			// The sidecar commits again by itself, and fills the new room.
			durable := m2["framebus_wal_durable_sequence"]
			waitFor(t, 60*time.Second, fmt.Sprintf("cycle %d: commits again after freeing space", c), func() bool {
				return scrape()["framebus_wal_durable_sequence"] > durable
			})
		}
	}
	waitFor(t, 60*time.Second, "DEGRADED and PAUSE cleared after freeing space", func() bool {
		m := scrape()
		return m["framebus_degraded"] == 0 && m["framebus_paused"] == 0
	})
	for _, d := range drivers {
		if err := d.wait(t, 2*time.Minute); err != nil {
			stalls++
			t.Errorf("driver: %v\n%s", err, d.out.String())
		}
	}
	if err := dropper.wait(t, 2*time.Minute); err != nil {
		stalls++
		t.Errorf("drop-newest driver: %v\n%s", err, dropper.out.String())
	}
	sc.stop(t)
	panics := 0
	if diskCrashed(sc.out.String()) {
		panics++
	}

	got := b.walFrames()
	lost, dups := 0, 0
	for i := 0; i < blockers; i++ {
		name := fmt.Sprintf("diskfull-block-%d", i)
		l, d := diskCount(got[name], uint64(perDriver))
		lost += l
		dups += d
		checkExactlyOnce(t, got, name, perDriver)
	}
	published, dropped := diskPublishResult(t, dropper.out.String())
	if published+dropped != dropCount {
		t.Errorf("drop-newest driver: %d published + %d dropped, want %d", published, dropped, dropCount)
	}
	seqs := got["diskfull-drop"]
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			dups++
			t.Errorf("drop-newest driver: WAL holds frame %d after %d", seqs[i], seqs[i-1])
		}
	}
	if uint64(len(seqs)) != published {
		lost += int(published) - len(seqs)
		t.Errorf("drop-newest driver: %d frames in the WAL, it published %d (and dropped %d)", len(seqs), published, dropped)
	}
	if dropped > 0 && droppedSeen == 0 {
		t.Errorf("the driver dropped %d frames, framebus_frames_dropped_total never counted them", dropped)
	}
	if out, err := exec.Command(binary, "wal", "verify", "--wal-dir", b.walDir, "--name", b.name).CombinedOutput(); err != nil {
		t.Errorf("framebus wal verify after the disk filled: %v\n%s", err, out)
	}
	fault := map[string]string{
		"tmpfs": fmt.Sprintf("disk full: WAL on a %d MiB tmpfs, freed by remounting it larger", stepMiB),
		"ext4":  fmt.Sprintf("disk full: WAL on an ext4 image on a loop device (%d MiB free), freed by deleting a file", stepMiB),
	}[kind]
	report(t, Outcome{Fault: fault, Injected: cycles, Lost: lost + overflows, Duplicates: dups, Panics: panics, Stalls: stalls,
		Detail: fmt.Sprintf("%d failed commits (ENOSPC); DEGRADED then PAUSE each time, blocked drivers held, memory queue <= %d B; recovered by itself; %d+%d frames exactly once, drop-newest %d published/%d dropped (all counted); wal verify ok",
			int(commitErrors), memBytes, perDriver, perDriver, published, dropped)})
}

// diskCount returns how many of frames 0..n-1 seqs lacks, and how many
// extra copies it has.
func diskCount(seqs []uint64, n uint64) (lost, dups int) {
	seen := make(map[uint64]int, len(seqs))
	for _, s := range seqs {
		seen[s]++
	}
	for i := uint64(0); i < n; i++ {
		if seen[i] == 0 {
			lost++
		}
	}
	for _, c := range seen {
		if c > 1 {
			dups += c - 1
		}
	}
	return lost, dups
}

// diskBallast writes a file of n bytes and syncs it, taking the room.
func diskBallast(t testing.TB, path string, n int64) {
	t.Helper()
	if n <= 0 {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:k]); err != nil {
			t.Fatalf("ballast %s: %v", path, err)
		}
		n -= k
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// diskRetentionFits: wal_max_bytes well below the filesystem's size keeps
// the WAL from filling it: retention deletes the oldest segments, the
// sidecar never degrades, and what remains of each driver's frames is the
// newest ones, each once.
func diskRetentionFits(t *testing.T) {
	const fsMiB = 6
	mnt := diskMount(t, "tmpfs", fsMiB)
	metrics := freeAddr(t)
	b := newBus(t, "--metrics-addr", metrics, "--wal-compression", "none", "--wal-max-bytes", "2MiB",
		"--ring-bytes", "1MiB", "--max-rings", "8", "--wal-flush-ms", "5")
	b.walDir = mnt
	sc := b.startSidecar()
	if strings.Contains(sc.out.String(), "wal_max_bytes is more than the WAL's filesystem") {
		t.Errorf("the sidecar warned although wal_max_bytes (2MiB) fits the %d MiB filesystem", fsMiB)
	}
	const points = 16
	frame := diskFrameBytes(t, "fits", points) + 6
	per := chaosCount(2, 6) * fsMiB << 20 / frame
	d := b.publish("fits", per, "--points", strconv.Itoa(points), "--rate", "20000")
	path := filepath.Join(b.walPath(), wal.FileName)
	var peak int64
	degraded := 0
	for !d.exited() {
		m, err := diskMetrics(metrics)
		if err != nil {
			t.Fatal(err)
		}
		if m["framebus_degraded"] != 0 || m["framebus_wal_commit_errors_total"] != 0 {
			degraded++
		}
		var st syscall.Stat_t
		if syscall.Stat(path, &st) == nil {
			peak = max(peak, st.Blocks*512)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := d.wait(t, time.Minute); err != nil {
		t.Fatalf("driver: %v\n%s", err, d.out.String())
	}
	sc.stop(t)
	if degraded > 0 {
		t.Errorf("the sidecar degraded (commits failed) %d times although retention should keep the WAL below the filesystem", degraded)
	}
	if peak > fsMiB<<20 {
		t.Errorf("the WAL file took %d bytes of the %d MiB filesystem", peak, fsMiB)
	}
	seqs := b.walFrames()["fits"]
	if len(seqs) == 0 || seqs[len(seqs)-1] != uint64(per-1) || uint64(len(seqs)) == uint64(per) {
		t.Fatalf("retention kept %d frames ending at %v, want the newest ones, up to %d, and not all %d", len(seqs), seqs[max(len(seqs)-1, 0):], per-1, per)
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Fatalf("retained frames are not the newest in order: %d after %d", seqs[i], seqs[i-1])
		}
	}
	if out, err := exec.Command(binary, "wal", "verify", "--wal-dir", b.walDir, "--name", b.name).CombinedOutput(); err != nil {
		t.Errorf("framebus wal verify: %v\n%s", err, out)
	}
	t.Logf("%d frames of about %d bytes through a 2 MiB WAL on a %d MiB tmpfs: the file's blocks peaked at %d bytes; %d frames retained", per, frame, fsMiB, peak, len(seqs))
}

// TestChaosCorruptWAL damages the WAL file of a stopped sidecar, as a disk
// or a careless copy would, and checks the whole chain: `framebus wal
// verify` exits 1 naming the damage; `framebus run` refuses to start
// (status 3) saying what is wrong and how to recover, or, for a damaged
// older segment, which the start does not read, starts and reports it
// when a subscriber reads it; `framebus run --wal-recover` moves the file
// aside, keeps every intact segment and starts; every frame it kept has
// its old WAL sequence number, what it dropped is what it logged, no frame
// is twice, new frames never reuse a number, and verify is clean again.
// Truncations: a few bytes into the last page in use, mid-page, at a page
// boundary, and in the unused tail (harmless). Flips: a segment value, a
// branch page of the segments bucket, the newer meta page.
func TestChaosCorruptWAL(t *testing.T) {
	b := newBus(t, "--ring-bytes", "1MiB", "--max-rings", "8")
	sc := b.startSidecar()
	const n = 5000
	d1 := b.publish("corrupt-a", n, "--points", "4")
	d2 := b.publish("corrupt-b", n, "--points", "4")
	for _, d := range []*proc{d1, d2} {
		if err := d.wait(t, 2*time.Minute); err != nil {
			t.Fatalf("driver: %v\n%s", err, d.out.String())
		}
	}
	// Kill the sidecar, as a crash would: its segment (and the durable
	// watermark in it) stays for the next one.
	time.Sleep(300 * time.Millisecond)
	sc.cmd.Process.Kill()
	sc.wait(t, 30*time.Second)

	walFile := filepath.Join(b.walPath(), wal.FileName)
	segFile := filepath.Join(b.shmDir, "framebus-"+b.name)
	orig, err := os.ReadFile(walFile)
	if err != nil {
		t.Fatal(err)
	}
	origSeg, err := os.ReadFile(segFile)
	if err != nil {
		t.Fatalf("the killed sidecar's segment: %v", err)
	}
	before := diskWAL(t, b.walPath())
	if len(before) != 2*n {
		t.Fatalf("the WAL holds %d frames before any damage, want %d", len(before), 2*n)
	}
	var maxSeq uint64
	for s := range before {
		maxSeq = max(maxSeq, s)
	}
	lay := diskLayout(t, walFile)

	type damage struct {
		name     string
		truncate bool
		apply    func(b []byte) []byte
		want     string // in verify's and run's messages
		startsOK bool   // the start does not notice (an older segment)
		harmless bool   // nothing is damaged
	}
	ps := lay.pageSize
	cases := []damage{
		{name: "flip-segment", apply: func(f []byte) []byte { return diskFlipAll(t, f, lay.midValue) }, want: fmt.Sprintf("segment %d", lay.midKey), startsOK: true},
		{name: "flip-branch", apply: func(f []byte) []byte {
			f[lay.root*ps+16+3*16+8] ^= 0x40 // element 3's page number
			return f
		}, want: fmt.Sprintf("page %d", lay.root)},
		{name: "truncate-mid-page", truncate: true, apply: func(f []byte) []byte { return f[:lay.used/2/ps*ps+ps/2+5] }, want: "truncated"},
	}
	if *chaosFull {
		cases = append(cases,
			damage{name: "truncate-slack", truncate: true, apply: func(f []byte) []byte { return f[:lay.used+(int64(len(f))-lay.used)/2] }, harmless: true},
			damage{name: "flip-meta", apply: func(f []byte) []byte {
				f[lay.newerMeta*ps+16+20] ^= 0x01
				return f
			}, want: fmt.Sprintf("meta page %d is damaged", lay.newerMeta)},
			damage{name: "truncate-few-bytes", truncate: true, apply: func(f []byte) []byte { return f[:lay.used-3] }, want: "truncated"},
			damage{name: "truncate-page-boundary", truncate: true, apply: func(f []byte) []byte { return f[:lay.used*3/4/ps*ps] }, want: "truncated"},
		)
	}

	type tally struct {
		injected, lost, dups, panics, stalls, dropped int
		names                                         []string
	}
	var flips, truncs tally
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tl := &flips
			if c.truncate {
				tl = &truncs
			}
			tl.injected++
			tl.names = append(tl.names, c.name)
			if err := os.WriteFile(walFile, c.apply(bytes.Clone(orig)), 0o640); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(segFile, origSeg, 0o660); err != nil {
				t.Fatal(err)
			}
			for _, f := range diskAside(t, b.walPath()) {
				os.Remove(f)
			}
			v := start(t, "wal", "verify", "--wal-dir", b.walDir, "--name", b.name)
			err := v.wait(t, time.Minute)
			if diskCrashed(v.out.String()) {
				tl.panics++
				t.Errorf("framebus wal verify crashed:\n%s", v.out.String())
			}
			if c.harmless {
				if err != nil {
					t.Errorf("verify of a WAL cut in its unused tail: %v\n%s", err, v.out.String())
				}
				s := b.startSidecar()
				s.stop(t)
				if after := diskWAL(t, b.walPath()); len(after) != len(before) {
					tl.lost += len(before) - len(after)
					t.Errorf("after a harmless truncation the WAL holds %d frames, want %d", len(after), len(before))
				}
				return
			}
			if exitCode(err) != 1 || !strings.Contains(v.out.String(), c.want) {
				t.Errorf("framebus wal verify: exit %d, want 1 and a problem naming %q:\n%s", exitCode(err), c.want, v.out.String())
			}
			if c.startsOK {
				diskReadDamaged(t, b, lay)
			} else {
				r := start(t, b.runArgs()...)
				err := r.wait(t, time.Minute)
				out := r.out.String()
				switch {
				case diskCrashed(out) || exitCode(err) == 2:
					tl.panics++
					t.Errorf("framebus run on a damaged WAL crashed (exit %d):\n%s", exitCode(err), out)
				case exitCode(err) != 3:
					t.Errorf("framebus run on a damaged WAL: exit %d, want 3:\n%s", exitCode(err), out)
				}
				for _, want := range []string{"is damaged", c.want, "framebus wal verify", "--wal-recover", "move the damaged file aside"} {
					if !strings.Contains(out, want) {
						t.Errorf("framebus run's refusal lacks %q:\n%s", want, out)
					}
				}
			}

			// Recover: start with --wal-recover.
			rec := start(t, append(b.runArgs(), "--wal-recover")...)
			waitFor(t, time.Minute, "the sidecar started with --wal-recover", func() bool {
				return strings.Contains(rec.out.String(), "framebus sidecar running") || rec.exited()
			})
			if rec.exited() {
				tl.stalls++
				t.Fatalf("framebus run --wal-recover exited: %v\n%s", rec.err, rec.out.String())
			}
			out := rec.out.String()
			if !strings.Contains(out, "WAL recovered") || len(diskAside(t, b.walPath())) != 1 {
				t.Errorf("no recovery logged, or no damaged file kept aside:\n%s", out)
			}
			dropped := diskDropped(out)
			after := fmt.Sprintf("after-%d", i)
			d := b.publish(after, 500)
			if err := d.wait(t, time.Minute); err != nil {
				tl.stalls++
				t.Fatalf("publishing after the recovery: %v\n%s", err, d.out.String())
			}
			rec.stop(t)
			if diskCrashed(rec.out.String()) {
				tl.panics++
			}
			if out, err := exec.Command(binary, "wal", "verify", "--wal-dir", b.walDir, "--name", b.name).CombinedOutput(); err != nil {
				t.Errorf("framebus wal verify after the recovery: %v\n%s", err, out)
			}
			now := diskWAL(t, b.walPath())
			seen := map[diskFrame]bool{}
			kept := 0
			for seq, f := range now {
				if seen[f] {
					tl.dups++
					t.Errorf("frame %v is in the recovered WAL twice", f)
				}
				seen[f] = true
				if f.producer == after {
					if seq <= maxSeq {
						tl.dups++
						t.Errorf("new frame %v got WAL sequence number %d, which the damaged WAL had used (up to %d)", f, seq, maxSeq)
					}
					continue
				}
				if old, ok := before[seq]; !ok || old != f {
					tl.dups++
					t.Errorf("WAL sequence %d holds %v after the recovery, %v before", seq, f, old)
				}
				kept++
			}
			lost := 0
			for seq := range before {
				if _, ok := now[seq]; ok {
					continue
				}
				if !dropped.has(seq) {
					lost++
				} else {
					tl.dropped++
				}
			}
			if lost > 0 {
				t.Errorf("%d frames are missing that the recovery did not report dropped (it logged %v)", lost, dropped)
			}
			for j := 0; j < 500; j++ {
				if !seen[diskFrame{after, uint64(j)}] {
					lost++
					t.Errorf("frame %d published after the recovery is not in the WAL", j)
				}
			}
			tl.lost += lost
			if c.name == "flip-segment" {
				// Exactly the damaged segment's frames are gone.
				for seq := lay.midKey; seq < lay.midNext; seq++ {
					if _, ok := now[seq]; ok {
						t.Errorf("frame %d of the damaged segment is still there", seq)
					}
				}
				if kept != len(before)-int(lay.midNext-lay.midKey) {
					t.Errorf("kept %d frames, want all but the damaged segment's %d", kept, lay.midNext-lay.midKey)
				}
			}
			if c.name == "flip-branch" && kept != len(before) {
				t.Errorf("kept %d frames of %d: a damaged branch page loses no segment", kept, len(before))
			}
			t.Logf("%s: kept %d of %d frames, dropped %v", c.name, kept, len(before), dropped)
		})
	}
	// The offline tool does what --wal-recover does.
	t.Run("offline-recover", func(t *testing.T) {
		if err := os.WriteFile(walFile, diskFlipAll(t, bytes.Clone(orig), lay.midValue), 0o640); err != nil {
			t.Fatal(err)
		}
		for _, f := range diskAside(t, b.walPath()) {
			os.Remove(f)
		}
		out, err := exec.Command(binary, "wal", "recover", "--wal-dir", b.walDir, "--name", b.name).CombinedOutput()
		want := fmt.Sprintf("dropped: frames %d to %d: segment %d is damaged", lay.midKey, lay.midNext-1, lay.midKey)
		if err != nil || !strings.Contains(string(out), want) || !strings.Contains(string(out), "the damaged file is now") || len(diskAside(t, b.walPath())) != 1 {
			t.Fatalf("framebus wal recover: %v, want %q and the damaged file kept:\n%s", err, want, out)
		}
		if out, err := exec.Command(binary, "wal", "verify", "--wal-dir", b.walDir, "--name", b.name).CombinedOutput(); err != nil ||
			!strings.Contains(string(out), fmt.Sprintf("%d frames recorded as lost", lay.midNext-lay.midKey)) {
			t.Errorf("framebus wal verify after framebus wal recover: %v\n%s", err, out)
		}
		if out, err := exec.Command(binary, "wal", "recover", "--wal-dir", b.walDir, "--name", b.name).CombinedOutput(); err != nil ||
			!strings.Contains(string(out), "nothing is damaged") {
			t.Errorf("a second framebus wal recover: %v\n%s", err, out)
		}
		if now := diskWAL(t, b.walPath()); len(now) != len(before)-int(lay.midNext-lay.midKey) {
			t.Errorf("after framebus wal recover the WAL holds %d frames, want %d", len(now), len(before)-int(lay.midNext-lay.midKey))
		}
	})
	report(t, Outcome{Fault: "WAL truncated between runs", Injected: truncs.injected, Lost: truncs.lost, Duplicates: truncs.dups,
		Panics: truncs.panics, Stalls: truncs.stalls,
		Detail: fmt.Sprintf("%s: verify exit 1 and run exit 3 naming the damage and the fix%s; --wal-recover started, kept every frame outside the %d it logged as dropped, each at its old WAL seq, no duplicate, new frames never reuse a number; verify clean after",
			strings.Join(truncs.names, ", "), map[bool]string{true: " (a cut in the unused tail: nothing lost, starts)"}[slices.Contains(truncs.names, "truncate-slack")], truncs.dropped)})
	report(t, Outcome{Fault: "WAL bytes flipped between runs", Injected: flips.injected, Lost: flips.lost, Duplicates: flips.dups,
		Panics: flips.panics, Stalls: flips.stalls,
		Detail: fmt.Sprintf("%s: verify exit 1; run exit 3 naming the damage and the fix (an older segment: starts, a subscriber stops before it, logged); --wal-recover kept every frame outside the %d it logged as dropped (a damaged branch page: none dropped), each at its old WAL seq, no duplicate; verify clean after",
			strings.Join(flips.names, ", "), flips.dropped)})
}

// diskWALLayout is where things are in a sound WAL file.
type diskWALLayout struct {
	pageSize  int64
	used      int64 // bytes below the high-water mark
	root      int64 // the segments bucket's root page (a branch page)
	newerMeta int64 // the meta page of the last transaction
	midKey    uint64
	midNext   uint64 // the key after midKey
	midValue  []byte // the value of segment midKey
}

func diskLayout(t testing.TB, path string) diskWALLayout {
	t.Helper()
	db, err := bolt.Open(path, 0, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var l diskWALLayout
	err = db.View(func(tx *bolt.Tx) error {
		l.pageSize = int64(tx.DB().Info().PageSize)
		l.used = tx.Size()
		sb := tx.Bucket([]byte("segments"))
		l.root = int64(sb.Root())
		var keys [][]byte
		sb.ForEach(func(k, _ []byte) error {
			keys = append(keys, bytes.Clone(k))
			return nil
		})
		if len(keys) < 10 {
			return fmt.Errorf("only %d segments", len(keys))
		}
		mid := len(keys) / 2
		l.midKey, l.midNext = byteorder.BigEndian.Uint64(keys[mid]), byteorder.BigEndian.Uint64(keys[mid+1])
		l.midValue = bytes.Clone(sb.Get(keys[mid]))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if f[l.root*l.pageSize+8] != 0x01 {
		t.Fatalf("the segments root page %d is not a branch page", l.root)
	}
	// The meta pages' transaction ids (bbolt's layout, little-endian).
	tx0 := byteorder.LittleEndian.Uint64(f[16+48:])
	tx1 := byteorder.LittleEndian.Uint64(f[l.pageSize+16+48:])
	if tx1 > tx0 {
		l.newerMeta = 1
	}
	return l
}

// diskFlipAll flips a byte in the middle of every copy of v in f (a page
// freed by a later commit may hold an identical copy).
func diskFlipAll(t testing.TB, f, v []byte) []byte {
	n := 0
	for i := 0; ; {
		j := bytes.Index(f[i:], v)
		if j < 0 {
			break
		}
		f[i+j+len(v)/2] ^= 0x10
		i += j + 1
		n++
	}
	if n == 0 {
		t.Fatal("segment value not found in the file")
	}
	return f
}

// diskAside lists the damaged files recoveries moved aside in dir.
func diskAside(t testing.TB, dir string) []string {
	m, err := filepath.Glob(filepath.Join(dir, wal.FileName+".damaged-*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// diskRanges are the ranges of WAL sequence numbers a recovery logged as
// dropped; 0 is an open end.
type diskRanges [][2]uint64

func (r diskRanges) has(seq uint64) bool {
	for _, x := range r {
		if (x[0] == 0 || seq >= x[0]) && (x[1] == 0 || seq <= x[1]) {
			return true
		}
	}
	return false
}

var diskDroppedLine = regexp.MustCompile(`msg="WAL recovery dropped frames" first_seq=(\d+) last_seq=(\d+)`)

func diskDropped(out string) diskRanges {
	var r diskRanges
	for _, m := range diskDroppedLine.FindAllStringSubmatch(out, -1) {
		a, _ := strconv.ParseUint(m[1], 10, 64)
		b, _ := strconv.ParseUint(m[2], 10, 64)
		r = append(r, [2]uint64{a, b})
	}
	return r
}

// diskReadDamaged starts the sidecar on a WAL whose older segment midKey
// is damaged: the start does not read it, so it starts; a subscriber
// reading from the earliest frame gets every frame before the damaged
// segment and no further, the sidecar logs the damage once with the fix,
// and /v1/status shows it on the subscriber.
func diskReadDamaged(t testing.TB, b *bus, lay diskWALLayout) {
	t.Helper()
	addr := freeAddr(t)
	js := startJetStream(t)
	extra := b.extra
	b.extra = append(append([]string(nil), extra...), "--http-addr", addr, "--uplink-nats-servers", js.ClientURL(), "--uplink-nats-create-stream")
	defer func() { b.extra = extra }()
	s := b.startSidecar()
	stopped := false
	defer func() {
		if !stopped { // a failed check: the next case needs the WAL
			s.cmd.Process.Kill()
			s.wait(t, time.Minute)
		}
	}()
	tail := b.tail("--from", "earliest", "--idle", "4s")
	waitFor(t, 30*time.Second, "the subscriber's error in /v1/status", func() bool {
		resp, err := http.Get("http://" + addr + "/v1/status")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st struct {
			Subscribers []struct{ Error string }
		}
		if json.NewDecoder(resp.Body).Decode(&st) != nil {
			return false
		}
		for _, sub := range st.Subscribers {
			if strings.Contains(sub.Error, fmt.Sprintf("segment %d", lay.midKey)) {
				return true
			}
		}
		return false
	})
	if err := tail.wait(t, time.Minute); err != nil {
		t.Fatalf("tail: %v\n%s", err, tail.out.String())
	}
	seqs := tailSeqs(t, tail.out.String())
	if len(seqs) == 0 || seqs[len(seqs)-1] != lay.midKey-1 {
		last := uint64(0)
		if len(seqs) > 0 {
			last = seqs[len(seqs)-1]
		}
		t.Errorf("a subscriber from the earliest frame got %d frames up to %d, want them up to %d, before the damaged segment", len(seqs), last, lay.midKey-1)
	}
	waitFor(t, 30*time.Second, "the sidecar to log the damaged segment", func() bool {
		return strings.Contains(s.out.String(), fmt.Sprintf("segment %d", lay.midKey)) && strings.Contains(s.out.String(), "corrupt")
	})
	// The uplink forwards every frame before the damaged segment, says
	// why it stops in its status, logs it once, and its retries send
	// nothing again: its position reaches the segment.
	waitStream(t, js.ClientURL(), "FRAMEBUS", lay.midKey-1, time.Minute)
	waitFor(t, 30*time.Second, "the uplink's error in /v1/status and its position before the damaged segment", func() bool {
		u := uplinkStatus(t, addr)
		e, _ := u["last_error"].(string)
		pos, _ := u["position"].(float64)
		return strings.Contains(e, fmt.Sprintf("segment %d", lay.midKey)) && uint64(pos) == lay.midKey-1
	})
	// The feeder retried every second while the tail waited 4 s idle, the
	// uplink after each backoff: one log line each, with the fix, not one
	// per retry.
	out := s.out.String()
	for _, who := range []string{"a subscriber stops before a damaged WAL segment", "uplink stops before a damaged WAL segment"} {
		if n := strings.Count(out, who); n != 1 {
			t.Errorf("%q logged %d times, want once:\n%s", who, n, out)
		}
	}
	if n := strings.Count(out, "--wal-recover"); n != 2 {
		t.Errorf("the log names --wal-recover %d times, want in both lines:\n%s", n, out)
	}
	u := uplinkStatus(t, addr)
	if pub, _ := u["published"].(float64); uint64(pub) != lay.midKey-1 || u["duplicates"].(float64) != 0 {
		t.Errorf("the uplink published %v frames (%v duplicates) for %d before the damaged segment: its retries sent frames again", u["published"], u["duplicates"], lay.midKey-1)
	}
	stopped = true
	s.stop(t)
}
