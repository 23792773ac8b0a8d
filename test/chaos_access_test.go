package test

// Access control: who may attach to a bus and open its segment.
//
// The sidecar's user owns the segment and the attach socket; file_mode
// (0660) admits that user and the bus's group (group, else the sidecar's
// primary group), and a POSIX ACL gives each allow_uids entry the group's
// bits. The kernel enforces that at open(2) and connect(2); the sidecar
// checks SO_PEERCRED again at attach, which also stops processes that bypass
// file permissions (root). These tests create their own users and groups
// (fbt-<random>, removed at cleanup), run `framebus publish` and /bin/sh as
// those users (exec.Cmd's SysProcAttr.Credential), and check both the
// refusals and that admitted users' frames arrive exactly once. They need
// root; without it they skip.

import (
	"bufio"
	"crypto/rand"
	encbin "encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/framebus/framebus/sidecar"
)

// accUser is a user created for one test.
type accUser struct {
	name   string
	uid    int
	gid    int      // primary group
	groups []uint32 // every group, the primary one included
}

// attr runs a child process as u, with u's groups only.
func (u accUser) attr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: u.groups},
		Pdeathsig:  syscall.SIGKILL,
	}
}

// accRequireRoot skips the test unless it can create users and run
// processes as them.
func accRequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("access-control tests create users and groups and run processes as them: they need root (CI runs them as root)")
	}
	for _, c := range []string{"useradd", "userdel", "groupadd", "groupdel"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Skipf("access-control tests need %s (package passwd): %v", c, err)
		}
	}
}

func accName() string {
	b := make([]byte, 4)
	rand.Read(b)
	return "fbt-" + hex.EncodeToString(b)
}

// accAdmin runs useradd, groupadd ...; it retries while another process
// holds the lock of /etc/passwd or /etc/group.
func accAdmin(cmd string, args ...string) error {
	var err error
	for range 50 {
		var out []byte
		out, err = exec.Command(cmd, args...).CombinedOutput()
		if err == nil {
			return nil
		}
		err = fmt.Errorf("%s %s: %v: %s", cmd, strings.Join(args, " "), err, accTrim(out))
		if !strings.Contains(string(out), "lock") {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

func accTrim(b []byte) string { return strings.TrimSpace(string(b)) }

// accGroup creates a group; it is deleted when the test ends.
func accGroup(t testing.TB) (string, int) {
	t.Helper()
	name := accName()
	if err := accAdmin("groupadd", name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := accAdmin("groupdel", name); err != nil {
			t.Errorf("removing the test group: %v", err)
		}
	})
	g, err := user.LookupGroup(name)
	if err != nil {
		t.Fatal(err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	return name, gid
}

// accNewUser creates a user with a primary group of its own and the given
// supplementary groups; both are deleted when the test ends (after the
// test's processes, whose cleanups run first).
func accNewUser(t testing.TB, groups ...string) accUser {
	t.Helper()
	primary, gid := accGroup(t)
	name := accName()
	args := []string{"--no-create-home", "--no-user-group", "--gid", primary}
	if len(groups) > 0 {
		args = append(args, "--groups", strings.Join(groups, ","))
	}
	if err := accAdmin("useradd", append(args, name)...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := accAdmin("userdel", name); err != nil {
			t.Errorf("removing the test user: %v", err)
		}
	})
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	ids, err := u.GroupIds()
	if err != nil {
		t.Fatal(err)
	}
	au := accUser{name: name, uid: uid, gid: gid}
	for _, id := range ids {
		n, _ := strconv.Atoi(id)
		au.groups = append(au.groups, uint32(n))
	}
	return au
}

// accTraversable opens the directories above the bus's files for other
// users. t.TempDir() is 0700 (and so is the directory of the framebus
// binary TestMain built): another user could not even reach the segment
// or the socket, whatever their modes, and the tests would prove nothing.
// With the directories searchable (0711: no listing; shm and run 0755 as
// newBus makes them), only the files' own modes and ACLs decide.
func accTraversable(t testing.TB, b *bus) {
	t.Helper()
	base := filepath.Dir(b.shmDir) // the test's t.TempDir()
	for _, d := range []string{base, filepath.Dir(base), filepath.Dir(binary)} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{b.shmDir, b.runDir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for d := filepath.Dir(filepath.Dir(base)); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			t.Skipf("%s is not searchable by other users (mode %v): set TMPDIR to a directory that is", d, fi.Mode())
		}
		if d == "/" {
			break
		}
	}
}

// accStart starts a framebus subcommand with the given process attributes
// (another user, another network namespace); killed at cleanup, like start.
func accStart(t testing.TB, sys *syscall.SysProcAttr, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	p := &proc{cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = sys
	if err := cmd.Start(); err != nil {
		if sys.Cloneflags&syscall.CLONE_NEWNET != 0 && errors.Is(err, syscall.EPERM) {
			t.Skipf("cannot create a network namespace here (%v): the listener test needs one so that it binds the default ports without touching the host's", err)
		}
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("output of %v:\n%s", args, p.out.String())
		}
	})
	return p
}

// accSidecar starts `framebus run` for b with the given process attributes
// and waits until it serves, like b.startSidecar.
func accSidecar(t testing.TB, b *bus, sys *syscall.SysProcAttr) *proc {
	t.Helper()
	p := accStart(t, sys, b.runArgs()...)
	sock := filepath.Join(b.runDir, b.name+".sock")
	waitFor(t, 30*time.Second, "the sidecar to serve", func() bool {
		if p.exited() {
			t.Fatalf("sidecar exited: %v\n%s", p.err, p.out.String())
		}
		_, err := os.Stat(sock)
		return err == nil && strings.Contains(p.out.String(), "framebus sidecar running")
	})
	return p
}

// accPublish runs `framebus publish` as u and waits for it to exit.
func accPublish(t testing.TB, b *bus, u accUser, producer string, n int) (string, error) {
	t.Helper()
	p := accStart(t, u.attr(), "publish", "--name", b.name, "--run-dir", b.runDir, "--producer", producer, "--count", strconv.Itoa(n))
	err := p.wait(t, 2*time.Minute)
	return p.out.String(), err
}

// accOpen opens path as u, read-only or read-write (what mapping the
// segment needs), with /bin/sh: `exec 3<path` is open(O_RDONLY), `exec
// 3<>path` open(O_RDWR|O_CREAT), without truncating or writing.
func accOpen(t testing.TB, u accUser, path string, rw bool) (string, error) {
	t.Helper()
	redir := "<"
	if rw {
		redir = "<>"
	}
	cmd := exec.Command("/bin/sh", "-c", `exec 3`+redir+`"$1"`, "sh", path)
	cmd.SysProcAttr = u.attr()
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/bin:/bin"}
	out, err := cmd.CombinedOutput()
	return accTrim(out), err
}

// accDenied checks that u can neither read nor read-write path, with
// EACCES; it returns how many opens were refused.
func accDenied(t testing.TB, u accUser, path string) int {
	t.Helper()
	n := 0
	for _, rw := range []bool{false, true} {
		out, err := accOpen(t, u, path, rw)
		if err == nil || !strings.Contains(out, "Permission denied") {
			t.Errorf("uid %d opened %s (read-write %v): err %v, output %q; want Permission denied", u.uid, path, rw, err, out)
			continue
		}
		n++
	}
	return n
}

// accCanOpen checks that u can open path read-write.
func accCanOpen(t testing.TB, u accUser, path string) {
	t.Helper()
	if out, err := accOpen(t, u, path, true); err != nil {
		t.Errorf("uid %d cannot open %s read-write: %v: %s", u.uid, path, err, out)
	}
}

// accFile is what the kernel says about a file's access.
type accFile struct {
	mode    os.FileMode
	uid     int
	gid     int
	aclUIDs []int // ACL_USER entries; nil without an access ACL
	hasACL  bool
}

// accStat reads a file's mode, owner and access ACL (decoded here, not with
// the product's encoder: include/uapi/linux/posix_acl_xattr.h).
func accStat(t testing.TB, path string) accFile {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	f := accFile{mode: fi.Mode().Perm(), uid: int(st.Uid), gid: int(st.Gid)}
	buf := make([]byte, 4096)
	n, err := unix.Getxattr(path, "system.posix_acl_access", buf)
	if errors.Is(err, unix.ENODATA) {
		return f
	}
	if err != nil {
		t.Fatalf("getxattr %s: %v", path, err)
	}
	f.hasACL = true
	b := buf[:n]
	if len(b) < 4 || (len(b)-4)%8 != 0 || encbin.LittleEndian.Uint32(b) != 2 {
		t.Fatalf("%s: malformed access ACL %x", path, b)
	}
	for e := b[4:]; len(e) >= 8; e = e[8:] {
		if encbin.LittleEndian.Uint16(e) == 0x02 { // ACL_USER
			f.aclUIDs = append(f.aclUIDs, int(encbin.LittleEndian.Uint32(e[4:])))
		}
	}
	return f
}

// accWantFile checks a file's mode, group and ACL users.
func accWantFile(t testing.TB, path string, mode os.FileMode, gid int, aclUIDs []int) {
	t.Helper()
	f := accStat(t, path)
	if f.mode != mode || f.gid != gid || !slices.Equal(f.aclUIDs, aclUIDs) || f.hasACL != (len(aclUIDs) > 0) {
		t.Errorf("%s: mode %04o gid %d ACL users %v (ACL %v); want mode %04o gid %d ACL users %v",
			path, uint32(f.mode), f.gid, f.aclUIDs, f.hasACL, uint32(mode), gid, aclUIDs)
	}
}

// accLostDup counts the missing and the duplicated seqs of 0..n-1.
func accLostDup(seqs []uint64, n int) (lost, dup int) {
	seen := map[uint64]int{}
	for _, s := range seqs {
		seen[s]++
	}
	for i := range n {
		if seen[uint64(i)] == 0 {
			lost++
		}
	}
	for s, c := range seen {
		if s >= uint64(n) {
			dup += c
		} else if c > 1 {
			dup += c - 1
		}
	}
	return lost, dup
}

func accPaths(b *bus) (seg, sock string) {
	return filepath.Join(b.shmDir, "framebus-"+b.name), filepath.Join(b.runDir, b.name+".sock")
}

// accWantRefusal checks `framebus publish`'s refusal: it failed, says the
// sidecar refused, names the uid and says what to configure.
func accWantRefusal(t testing.TB, who string, out string, err error, uid int) bool {
	t.Helper()
	if err == nil {
		t.Errorf("%s: publish as uid %d succeeded; want a refusal:\n%s", who, uid, out)
		return false
	}
	ok := true
	for _, want := range []string{"sidecar refused", fmt.Sprintf("uid %d ", uid), "allow_uids", "group"} {
		if !strings.Contains(out, want) {
			t.Errorf("%s: the refusal does not say %q:\n%s", who, want, out)
			ok = false
		}
	}
	return ok
}

// TestChaosAccessOutsider: a user neither in allow_uids nor in the group
// cannot attach (a refusal that names its uid and the remedy) nor open the
// segment, and nothing of it reaches the WAL.
func TestChaosAccessOutsider(t *testing.T) {
	accRequireRoot(t)
	outsider := accNewUser(t)
	b := newBus(t, "--preset", "memory-optimized")
	accTraversable(t, b)
	sc := b.startSidecar()
	seg, sock := accPaths(b)
	// The default: mode 0660, the sidecar's primary group, no ACL.
	accWantFile(t, seg, 0o660, os.Getgid(), nil)
	accWantFile(t, sock, 0o660, os.Getgid(), nil)

	attempts := chaosCount(2, 20)
	refused := 0
	for i := range attempts {
		out, err := accPublish(t, b, outsider, fmt.Sprintf("outsider-%d", i), 10)
		if accWantRefusal(t, "outsider", out, err, outsider.uid) {
			refused++
		}
		refused += accDenied(t, outsider, seg)
	}
	panics := 0
	if sc.exited() {
		panics++
		t.Errorf("the sidecar exited: %v", sc.err)
	}
	sc.stop(t)
	for producer := range b.walFrames() {
		if strings.HasPrefix(producer, "outsider-") {
			t.Errorf("the WAL holds frames of %s", producer)
		}
	}
	report(t, Outcome{Fault: "attach and open as a user outside allow_uids and group", Injected: 3 * attempts, Panics: panics,
		Detail: fmt.Sprintf("%d/%d refused: publish with the uid and the remedy, open O_RDONLY and O_RDWR with EACCES; segment and socket 0660 and the sidecar's group", refused, 3*attempts)})
}

// TestChaosAccessPeerCred: root bypasses file modes, so only the sidecar's
// own SO_PEERCRED check stops it: a sidecar run by an unprivileged user
// refuses root's driver (and logs it), and accepts its own user's.
func TestChaosAccessPeerCred(t *testing.T) {
	accRequireRoot(t)
	owner := accNewUser(t)
	b := newBus(t, "--preset", "memory-optimized")
	accTraversable(t, b)
	for _, d := range []string{b.shmDir, b.runDir, b.walDir} {
		if err := os.Chown(d, owner.uid, owner.gid); err != nil {
			t.Fatal(err)
		}
	}
	sc := accSidecar(t, b, owner.attr())
	seg, _ := accPaths(b)
	accWantFile(t, seg, 0o660, owner.gid, nil)

	n := chaosCount(200, 5000)
	if out, err := accPublish(t, b, owner, "own", n); err != nil {
		t.Fatalf("the sidecar's own user cannot publish: %v\n%s", err, out)
	}
	attempts := chaosCount(2, 20)
	refused := 0
	for i := range attempts {
		p := b.publish(fmt.Sprintf("root-%d", i), 10) // as root
		err := p.wait(t, time.Minute)
		out := p.out.String()
		if accWantRefusal(t, "root", out, err, 0) && strings.Contains(out, fmt.Sprintf("run the driver as uid %d", owner.uid)) {
			refused++
		} else if err != nil {
			t.Errorf("root's refusal does not name the sidecar's uid %d:\n%s", owner.uid, out)
		}
	}
	if got := len(lines(sc.out.String(), "attach denied")); got != attempts || !strings.Contains(sc.out.String(), "uid=0 ") {
		t.Errorf("the sidecar logged %d denied attaches, want %d naming uid=0:\n%s", got, attempts, sc.out.String())
	}
	panics := 0
	if sc.exited() {
		panics++
	}
	sc.stop(t)
	got := b.walFrames()
	for producer := range got {
		if strings.HasPrefix(producer, "root-") {
			t.Errorf("the WAL holds frames of %s", producer)
		}
	}
	lost, dup := accLostDup(got["own"], n)
	report(t, Outcome{Fault: "attach as root to a sidecar run by another user (SO_PEERCRED)", Injected: attempts, Lost: lost, Duplicates: dup, Panics: panics,
		Detail: fmt.Sprintf("%d/%d refused by the sidecar and logged with uid=0; its own user's %d frames checked exactly once", refused, attempts, n)})
	checkExactlyOnce(t, got, "own", n)
}

// TestChaosAccessAllowUIDs: a uid in allow_uids that is not in the group
// attaches, through the ACL the sidecar puts on the segment and the socket,
// and its frames arrive exactly once; the outsider is still refused. Dropped
// from allow_uids, it loses access when the sidecar restarts, also to a
// segment the new sidecar adopts after a kill -9.
func TestChaosAccessAllowUIDs(t *testing.T) {
	accRequireRoot(t)
	allowed, outsider := accNewUser(t), accNewUser(t)
	b := newBus(t, "--preset", "memory-optimized", "--allow-uids", strconv.Itoa(allowed.uid))
	accTraversable(t, b)
	sc := b.startSidecar()
	seg, sock := accPaths(b)
	accWantFile(t, seg, 0o660, os.Getgid(), []int{allowed.uid})
	accWantFile(t, sock, 0o660, os.Getgid(), []int{allowed.uid})

	n := chaosCount(500, 20000)
	if out, err := accPublish(t, b, allowed, "allowed", n); err != nil {
		t.Fatalf("a uid in allow_uids cannot publish: %v\n%s", err, out)
	}
	accCanOpen(t, allowed, seg)
	out, err := accPublish(t, b, outsider, "outsider", 10)
	accWantRefusal(t, "outsider", out, err, outsider.uid)
	accDenied(t, outsider, seg)

	// Revoke: the sidecar dies (the segment stays, with its ACL) and
	// starts again without allow_uids.
	sc.cmd.Process.Kill()
	<-sc.done
	b.extra = []string{"--preset", "memory-optimized"}
	sc = b.startSidecar()
	if !strings.Contains(sc.out.String(), "adopted the segment") {
		t.Errorf("the restarted sidecar did not adopt the segment:\n%s", sc.out.String())
	}
	accWantFile(t, seg, 0o660, os.Getgid(), nil)
	accWantFile(t, sock, 0o660, os.Getgid(), nil)
	revoked := 0
	out, err = accPublish(t, b, allowed, "revoked", 10)
	if accWantRefusal(t, "revoked uid", out, err, allowed.uid) {
		revoked++
	}
	revoked += accDenied(t, allowed, seg)
	panics := 0
	if sc.exited() {
		panics++
	}
	sc.stop(t)
	got := b.walFrames()
	if len(got["outsider"])+len(got["revoked"]) != 0 {
		t.Errorf("the WAL holds frames of refused drivers: %d outsider, %d revoked", len(got["outsider"]), len(got["revoked"]))
	}
	lost, dup := accLostDup(got["allowed"], n)
	report(t, Outcome{Fault: "attach as a uid in allow_uids, not in the group", Injected: 1, Lost: lost, Duplicates: dup, Panics: panics,
		Detail: fmt.Sprintf("ACL on segment and socket grants it; %d frames checked exactly once; the outsider still refused", n)})
	report(t, Outcome{Fault: "uid dropped from allow_uids, sidecar kill -9 and restart", Injected: 3, Panics: panics,
		Detail: fmt.Sprintf("%d/3 refused (publish, open O_RDONLY, O_RDWR): the adopted segment's and the new socket's ACL are gone", revoked)})
	checkExactlyOnce(t, got, "allowed", n)
}

// TestChaosAccessGroup: a member of the configured group attaches and its
// frames arrive exactly once; the files belong to the group, with no ACL.
func TestChaosAccessGroup(t *testing.T) {
	accRequireRoot(t)
	group, gid := accGroup(t)
	member := accNewUser(t, group)
	b := newBus(t, "--preset", "memory-optimized", "--group", group)
	accTraversable(t, b)
	sc := b.startSidecar()
	seg, sock := accPaths(b)
	accWantFile(t, seg, 0o660, gid, nil)
	accWantFile(t, sock, 0o660, gid, nil)

	n := chaosCount(500, 20000)
	if out, err := accPublish(t, b, member, "member", n); err != nil {
		t.Fatalf("a member of group %s cannot publish: %v\n%s", group, err, out)
	}
	accCanOpen(t, member, seg)
	panics := 0
	if sc.exited() {
		panics++
	}
	sc.stop(t)
	got := b.walFrames()
	lost, dup := accLostDup(got["member"], n)
	report(t, Outcome{Fault: "attach as a member of the configured group", Injected: 1, Lost: lost, Duplicates: dup, Panics: panics,
		Detail: fmt.Sprintf("segment and socket 0660 group %s; %d frames checked exactly once", group, n)})
	checkExactlyOnce(t, got, "member", n)
}

// TestChaosAccessFileMode: file_mode sets the mode of the segment and the
// socket. Without group, the group is the sidecar's primary group, whose
// members may attach (a regression: the sidecar refused them although the
// files admitted them); file_mode 0600 locks them out. Invalid modes are
// refused at start with exit status 2.
func TestChaosAccessFileMode(t *testing.T) {
	accRequireRoot(t)
	group, gid := accGroup(t)
	member := accNewUser(t, group)
	b := newBus(t, "--preset", "memory-optimized")
	accTraversable(t, b)
	// The sidecar runs as root with primary group `group`.
	asRootInGroup := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 0, Gid: uint32(gid), Groups: []uint32{uint32(gid)}}, Pdeathsig: syscall.SIGKILL}
	seg, sock := accPaths(b)

	sc := accSidecar(t, b, asRootInGroup)
	accWantFile(t, seg, 0o660, gid, nil)
	accWantFile(t, sock, 0o660, gid, nil)
	n := chaosCount(300, 10000)
	if out, err := accPublish(t, b, member, "primary-group", n); err != nil {
		t.Errorf("a member of the sidecar's primary group cannot publish: %v\n%s", err, out)
	}
	panics := 0
	if sc.exited() {
		panics++
	}
	sc.stop(t)

	b.extra = []string{"--preset", "memory-optimized", "--file-mode", "0600"}
	sc = accSidecar(t, b, asRootInGroup)
	accWantFile(t, seg, 0o600, gid, nil)
	accWantFile(t, sock, 0o600, gid, nil)
	locked := 0
	out, err := accPublish(t, b, member, "locked-out", 10)
	if accWantRefusal(t, "file_mode 0600", out, err, member.uid) {
		locked++
	}
	locked += accDenied(t, member, seg)
	if sc.exited() {
		panics++
	}
	sc.stop(t)
	got := b.walFrames()
	if len(got["locked-out"]) != 0 {
		t.Errorf("the WAL holds %d frames of the locked-out driver", len(got["locked-out"]))
	}
	lost, dup := accLostDup(got["primary-group"], n)
	report(t, Outcome{Fault: "attach as a member of the sidecar's primary group (no group key)", Injected: 1, Lost: lost, Duplicates: dup, Panics: panics,
		Detail: fmt.Sprintf("admitted by file mode and SO_PEERCRED alike; %d frames checked exactly once", n)})
	report(t, Outcome{Fault: "file_mode 0600 locks the group out", Injected: 3, Panics: panics,
		Detail: fmt.Sprintf("%d/3 refused (publish, open O_RDONLY, O_RDWR); segment and socket 0600", locked)})
	checkExactlyOnce(t, got, "primary-group", n)

	// --print-config shows the key; bad values stop the sidecar at start.
	p := start(t, append(b.runArgs(), "--print-config", "--file-mode", "0o640")...)
	if err := p.wait(t, time.Minute); err != nil || !strings.Contains(p.out.String(), `file_mode = "0640"`) {
		t.Errorf("--print-config --file-mode 0o640: %v\n%s", err, p.out.String())
	}
	file := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(file, []byte("file_mode = 432\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		args []string
		want string
	}{
		{[]string{"--file-mode", "0666"}, "file_mode (0666) gives every local user access"},
		{[]string{"--file-mode", "0604"}, "file_mode (0604) gives every local user access"},
		{[]string{"--file-mode", "01660"}, "file_mode (1660) has bits beyond 0777"},
		{[]string{"--file-mode", "0460"}, "file_mode (0460) must give the owner (the sidecar) read and write"},
		{[]string{"--file-mode", "0600", "--group", group}, "file_mode (0600) does not give the group read and write"},
		{[]string{"--file-mode", "0640", "--allow-uids", "1234"}, "file_mode (0640) does not give the group read and write"},
		{[]string{"--file-mode", "rw-rw----"}, `"rw-rw----" is not an octal file mode`},
		{[]string{"--config", file}, "file_mode: 432 is not a quoted octal mode"},
	}
	rejected := 0
	procs := make([]*proc, len(bad))
	for i, c := range bad { // all at once: each is a process start, and they fail fast
		procs[i] = start(t, append(b.runArgs(), c.args...)...)
	}
	for i, c := range bad {
		p := procs[i]
		err := p.wait(t, time.Minute)
		if code := exitCode(err); code != 2 || !strings.Contains(p.out.String(), c.want) {
			t.Errorf("framebus run %v: exit status %d, want 2 and %q:\n%s", c.args, code, c.want, p.out.String())
			continue
		}
		rejected++
	}
	report(t, Outcome{Fault: "invalid file_mode at start", Injected: len(bad),
		Detail: fmt.Sprintf("%d/%d refused with exit status 2 and a message naming the rule", rejected, len(bad))})
}

// TestChaosAccessHTTPLoopback: with the default configuration /metrics and
// the HTTP API listen on 127.0.0.1 only; a non-loopback address is used only
// when configured, with a warning. The sidecar runs in a network namespace of
// its own, so that it can bind the default ports (and the wildcard address)
// without touching the host's; the listening sockets are read from
// /proc/<pid>/net/tcp{,6}, for the sidecar's own socket inodes.
func TestChaosAccessHTTPLoopback(t *testing.T) {
	accRequireRoot(t)
	netns := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	// Empty values mean the defaults; they override the harness's "off".
	b := newBus(t, "--preset", "memory-optimized", "--metrics-addr", "", "--http-addr", "")
	sc := accSidecar(t, b, netns)
	got := accListeners(t, sc.cmd.Process.Pid)
	want := []string{sidecar.DefaultMetricsAddr, sidecar.DefaultHTTPAddr}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("default listeners %v, want %v", got, want)
	}
	warned := lines(sc.out.String(), "not a loopback address")
	if len(warned) != 0 {
		t.Errorf("loopback listeners warned: %v", warned)
	}
	running := lines(sc.out.String(), "framebus sidecar running")
	if len(running) != 1 || !strings.Contains(running[0], "http="+sidecar.DefaultHTTPAddr) || !strings.Contains(running[0], "metrics="+sidecar.DefaultMetricsAddr) {
		t.Errorf("the start line does not name the listeners: %v", running)
	}
	panics := 0
	if sc.exited() {
		panics++
	}
	sc.stop(t)
	loopback := 0
	for _, a := range got {
		if host, _, _ := net.SplitHostPort(a); net.ParseIP(host).IsLoopback() {
			loopback++
		}
	}
	report(t, Outcome{Fault: "HTTP listeners with the default configuration", Injected: 2, Panics: panics,
		Detail: fmt.Sprintf("%d/%d listening sockets on loopback (%s); no warning", loopback, len(got), strings.Join(got, ", "))})

	b.extra = []string{"--preset", "memory-optimized", "--metrics-addr", "0.0.0.0:9464", "--http-addr", ":9465"}
	sc = accSidecar(t, b, netns)
	got = accListeners(t, sc.cmd.Process.Pid)
	// Go listens on a wildcard IPv4 address with a dual-stack IPv6 socket
	// where it can: [::] is the same exposure as 0.0.0.0.
	wildcard := 0
	for _, a := range got {
		if host, _, _ := net.SplitHostPort(a); net.ParseIP(host).IsUnspecified() {
			wildcard++
		}
	}
	if len(got) != 2 || wildcard != 2 || !strings.HasSuffix(got[0], ":9464") || !strings.HasSuffix(got[1], ":9465") {
		t.Errorf("explicit wildcard listeners %v, want 0.0.0.0 or [::] with ports 9464 and 9465", got)
	}
	warnings := 0
	for _, key := range []string{"metrics_addr", "http_addr"} {
		l := lines(sc.out.String(), key+" is not a loopback address")
		if len(l) != 1 || !strings.Contains(l[0], "level=WARN") {
			t.Errorf("want one warning for %s, got %v", key, l)
			continue
		}
		warnings++
	}
	if sc.exited() {
		panics++
	}
	sc.stop(t)
	report(t, Outcome{Fault: "HTTP listeners configured on all interfaces", Injected: 2, Panics: panics,
		Detail: fmt.Sprintf("accepted when explicit: %d/2 listening on all interfaces (%s); %d/2 warnings logged", wildcard, strings.Join(got, ", "), warnings)})
}

// accListeners returns the TCP addresses pid listens on, sorted, from
// /proc/<pid>/net/tcp and tcp6 (its network namespace's view), keeping the
// sockets whose inodes are among pid's file descriptors.
func accListeners(t testing.TB, pid int) []string {
	t.Helper()
	mine := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
			mine[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var out []string
	for _, file := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, file))
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6
		}
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || fs[3] != "0A" || !mine[fs[9]] { // 0A: LISTEN
				continue
			}
			out = append(out, accProcNetAddr(t, fs[1]))
		}
		f.Close()
	}
	slices.Sort(out)
	return out
}

// accProcNetAddr decodes a /proc/net/tcp address: the IP as 32-bit words in
// host (little-endian) byte order, then the port in hex.
func accProcNetAddr(t testing.TB, s string) string {
	t.Helper()
	hexIP, hexPort, ok := strings.Cut(s, ":")
	raw, err := hex.DecodeString(hexIP)
	port, perr := strconv.ParseUint(hexPort, 16, 16)
	if !ok || err != nil || perr != nil || len(raw)%4 != 0 {
		t.Fatalf("bad /proc/net/tcp address %q", s)
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		encbin.BigEndian.PutUint32(ip[i:], encbin.LittleEndian.Uint32(raw[i:]))
	}
	return net.JoinHostPort(ip.String(), strconv.FormatUint(port, 10))
}
