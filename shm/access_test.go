package shm

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSetAccess: mode, and the allowed uids as ACL_USER entries with the
// group's bits, in the order the kernel requires; without uids the ACL is
// removed (a uid dropped from allow_uids loses access).
func TestSetAccess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "framebus-acl")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := SetAccess(path, 0o660, -1, []int{1234, 1000, 1234})
	if errors.Is(err, ErrNoACL) {
		t.Skipf("no POSIX ACLs on %s: %v", filepath.Dir(path), err)
	}
	if err != nil {
		t.Fatal(err)
	}
	type entry struct {
		tag, perm uint16
		id        uint32
	}
	buf := make([]byte, 1024)
	n, err := unix.Getxattr(path, "system.posix_acl_access", buf)
	if err != nil {
		t.Fatal(err)
	}
	var got []entry
	le := binary.LittleEndian
	if le.Uint32(buf) != 2 {
		t.Fatalf("ACL version %d", le.Uint32(buf))
	}
	for b := buf[4:n]; len(b) >= 8; b = b[8:] {
		got = append(got, entry{le.Uint16(b), le.Uint16(b[2:]), le.Uint32(b[4:])})
	}
	const none = 0xFFFFFFFF
	want := []entry{{0x01, 6, none}, {0x02, 6, 1000}, {0x02, 6, 1234}, {0x04, 6, none}, {0x10, 6, none}, {0x20, 0, none}}
	if !slices.Equal(got, want) {
		t.Errorf("ACL %v, want %v", got, want)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o660 {
		t.Errorf("mode %v with the ACL, want 0660", fi.Mode())
	}

	if err := SetAccess(path, 0o600, -1, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Getxattr(path, "system.posix_acl_access", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("ACL still there without uids: %v", err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode())
	}
	if err := SetAccess(path, 0o1660, -1, nil); !errors.Is(err, ErrConfig) {
		t.Errorf("mode 01660: %v, want ErrConfig", err)
	}
}
