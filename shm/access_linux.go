package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// Access control of the files a bus shares with other users: the segment
// and the sidecar's attach socket (connecting to a Unix socket needs write
// permission on its file, mapping the segment needs read and write).
//
// The sidecar's user owns both. The permission bits of mode admit the owner
// and one group; further users (the sidecar's allow_uids) are admitted by a
// POSIX access ACL that gives each of them the group's bits. The file
// permissions are the first gate, checked by the kernel; the sidecar checks
// the peer's credentials (SO_PEERCRED) again at attach, which also stops
// processes that bypass file permissions (root).
//
// The ACL is the system.posix_acl_access extended attribute, in the
// kernel's format (include/uapi/linux/posix_acl_xattr.h), little endian:
//
//	┌───────────────┬──────────────┬──────────────┬──────────────┬─────
//	│ version u32=2 │ entry (8 B)  │ entry (8 B)  │ entry (8 B)  │ …
//	└───────────────┴──────────────┴──────────────┴──────────────┴─────
//	entry: │ tag u16 │ perm u16 (rwx = 4|2|1) │ id u32 (uid for USER, else 0xFFFFFFFF) │
//
// Entries are sorted by tag, USER entries by uid, each uid once (the kernel
// refuses anything else with EINVAL): USER_OBJ (the owner's bits), USER per
// allowed uid, GROUP_OBJ (the group's bits), MASK (the most a USER or GROUP
// entry may grant: the group's bits), OTHER. With that mask, stat(2) still
// reports mode as given.
const (
	aclXattr       = "system.posix_acl_access"
	aclVersion     = 2
	aclUserObj     = 0x01
	aclUser        = 0x02
	aclGroupObj    = 0x04
	aclMask        = 0x10
	aclOther       = 0x20
	aclUndefinedID = 0xFFFFFFFF
	aclEntryBytes  = 8
	aclHeaderBytes = 4
	maxACLUsers    = 256 // ext4 keeps a file's extended attributes in one 4 KiB block
)

// SetAccess gives the file at path its access rules: mode's permission bits,
// the group gid (-1 leaves the group as it is) and the users uids, who get
// the group's permission bits through a POSIX access ACL. Without uids it
// removes any access ACL, so that a uid dropped from the list loses access
// on the next start (a process that mapped the segment already keeps its
// mapping until it exits). The caller must own the file, or be root.
//
// It fails with ErrNoACL (wrapped) if uids are given and the file system
// does not support POSIX ACLs.
func SetAccess(path string, mode fs.FileMode, gid int, uids []int) error {
	if mode&^fs.ModePerm != 0 {
		return fmt.Errorf("%w: mode %v has bits other than permissions", ErrConfig, mode)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			return fmt.Errorf("shm: give %s to group %d: %w (the file must be the sidecar's, and its user a member of the group, or root)", path, gid, err)
		}
	}
	// chmod first: on a file that still has an ACL from an earlier start
	// it sets the mask, which the new ACL (or its removal) then settles.
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("shm: chmod %s %04o: %w (the file must be the sidecar's: run it as the file's owner, or remove the file)", path, uint32(mode), err)
	}
	if len(uids) == 0 {
		err := unix.Removexattr(path, aclXattr)
		if err != nil && !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("shm: remove the access ACL of %s: %w", path, err)
		}
		return nil
	}
	acl, err := encodeACL(mode, uids)
	if err != nil {
		return err
	}
	if err := unix.Setxattr(path, aclXattr, acl, 0); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("%w: %s: allowed uids need an ACL on it: mount the file system with ACL support, or put those users in the group instead", ErrNoACL, path)
		}
		return fmt.Errorf("shm: set the access ACL of %s (uids %v): %w", path, uids, err)
	}
	return nil
}

// encodeACL builds the system.posix_acl_access value described above.
func encodeACL(mode fs.FileMode, uids []int) ([]byte, error) {
	ids := slices.Clone(uids)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if len(ids) > maxACLUsers {
		return nil, fmt.Errorf("%w: %d allowed uids, at most %d", ErrConfig, len(ids), maxACLUsers)
	}
	le := binary.LittleEndian
	b := make([]byte, 0, aclHeaderBytes+(len(ids)+4)*aclEntryBytes)
	b = le.AppendUint32(b, aclVersion)
	entry := func(tag uint16, perm fs.FileMode, id uint32) {
		b = le.AppendUint16(b, tag)
		b = le.AppendUint16(b, uint16(perm&7))
		b = le.AppendUint32(b, id)
	}
	group := mode >> 3 & 7
	entry(aclUserObj, mode>>6, aclUndefinedID)
	for _, u := range ids {
		if u < 0 || u >= aclUndefinedID {
			return nil, fmt.Errorf("%w: %d is not a uid", ErrConfig, u)
		}
		entry(aclUser, group, uint32(u))
	}
	entry(aclGroupObj, group, aclUndefinedID)
	entry(aclMask, group, aclUndefinedID)
	entry(aclOther, mode, aclUndefinedID)
	return b, nil
}
