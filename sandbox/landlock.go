package sandbox

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Landlock access rights, by the ABI version that introduced them. relayd calls the three
// Landlock system calls itself rather than through go-landlock: go-landlock enforces a ruleset
// on every thread of the process (through libpsx, which with cgo wraps pthread_create), while
// relayd confines only the thread a worker is forked from. The best-effort downgrade follows
// go-landlock's table: what an older kernel does not know is left out, never refused.
const (
	fsReadOnly = unix.LANDLOCK_ACCESS_FS_EXECUTE | unix.LANDLOCK_ACCESS_FS_READ_FILE | unix.LANDLOCK_ACCESS_FS_READ_DIR
	// fsFileWrite are the rights that make sense on a file (not a directory) that may be written.
	fsFileWrite = unix.LANDLOCK_ACCESS_FS_WRITE_FILE | unix.LANDLOCK_ACCESS_FS_TRUNCATE
	fsV1        = (1 << 13) - 1 // execute … make_sym
	fsV2        = fsV1 | unix.LANDLOCK_ACCESS_FS_REFER
	fsV3        = fsV2 | unix.LANDLOCK_ACCESS_FS_TRUNCATE
	// fsWritable is what a worker may do beneath its scratch directory and writable paths:
	// everything but making device nodes, which would open a path to a disk.
	fsWritable = fsV3 &^ (unix.LANDLOCK_ACCESS_FS_MAKE_CHAR | unix.LANDLOCK_ACCESS_FS_MAKE_BLOCK)
	netTCP     = unix.LANDLOCK_ACCESS_NET_BIND_TCP | unix.LANDLOCK_ACCESS_NET_CONNECT_TCP
	scopeAll   = unix.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | unix.LANDLOCK_SCOPE_SIGNAL
)

// rulesetAttr is struct landlock_ruleset_attr up to the scoped field (ABI 6). The kernel takes
// a shorter struct from older programs, so its size is what ABI 6 and 7 define.
type rulesetAttr struct {
	handledFS  uint64
	handledNet uint64
	scoped     uint64
}

// landlockABI returns the kernel's Landlock ABI version, 0 when Landlock is missing or
// disabled.
func landlockABI() (int, error) {
	v, _, errno := syscall.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
	if errno != 0 {
		return 0, errno
	}
	return int(v), nil
}

// landlockRights is what a ruleset for ABI version abi handles: every file system right the ABI
// knows (device ioctls aside: a worker's stdio are pipes, and denying ioctls on /dev/null buys
// nothing), TCP bind and connect from ABI 4 when the network is off, and from ABI 6 signals and
// abstract Unix sockets scoped to the worker's own domain.
func landlockRights(abi int, network bool) rulesetAttr {
	var a rulesetAttr
	switch {
	case abi >= 3:
		a.handledFS = fsV3
	case abi == 2:
		a.handledFS = fsV2
	case abi == 1:
		a.handledFS = fsV1
	}
	if abi >= 4 && !network {
		a.handledNet = netTCP
	}
	if abi >= 6 {
		a.scoped = unix.LANDLOCK_SCOPE_SIGNAL
		if !network {
			a.scoped |= unix.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
		}
	}
	return a
}

// pathRule is an open path (O_PATH) beneath which a ruleset allows access.
type pathRule struct {
	fd     int
	dir    bool
	access uint64
}

// openRule opens path for a rule allowing access beneath it. A file gets only the rights that
// apply to files.
func openRule(path string, access uint64) (pathRule, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return pathRule{fd: -1}, fmt.Errorf("landlock rule for %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return pathRule{fd: -1}, fmt.Errorf("landlock rule for %s: %w", path, err)
	}
	r := pathRule{fd: fd, dir: st.Mode&unix.S_IFMT == unix.S_IFDIR, access: access}
	if !r.dir {
		// Directory rights on a file are EINVAL.
		r.access &= unix.LANDLOCK_ACCESS_FS_EXECUTE | unix.LANDLOCK_ACCESS_FS_READ_FILE | fsFileWrite
	}
	return r, nil
}

// newRuleset creates a Landlock ruleset handling attr that allows, beneath each rule's path,
// that rule's access (cut down to what attr handles). The caller closes the descriptor.
func newRuleset(attr rulesetAttr, rules []pathRule) (int, error) {
	fd, _, errno := syscall.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr), 0)
	if errno != 0 {
		return -1, fmt.Errorf("landlock_create_ruleset: %w", errno)
	}
	for _, r := range rules {
		access := r.access & attr.handledFS
		if access == 0 {
			continue
		}
		ra := unix.LandlockPathBeneathAttr{Allowed_access: access, Parent_fd: int32(r.fd)}
		_, _, errno := syscall.Syscall6(unix.SYS_LANDLOCK_ADD_RULE, fd, unix.LANDLOCK_RULE_PATH_BENEATH,
			uintptr(unsafe.Pointer(&ra)), 0, 0, 0)
		if errno != 0 {
			unix.Close(int(fd))
			return -1, fmt.Errorf("landlock_add_rule: %w", errno)
		}
	}
	return int(fd), nil
}

// restrictThread enforces ruleset on the calling OS thread, and so on every process it forks
// from now on. The caller has locked the goroutine to the thread and set no_new_privs.
func restrictThread(ruleset int) error {
	_, _, errno := syscall.Syscall(unix.SYS_LANDLOCK_RESTRICT_SELF, uintptr(ruleset), 0, 0)
	if errno != 0 {
		return fmt.Errorf("landlock_restrict_self: %w", errno)
	}
	return nil
}

// readOnlyRules are the rules of the read-only view: listing any directory, and reading and
// executing beneath every entry of / but /dev, where only the harmless devices are open (a
// worker running as root could otherwise read a disk). An entry of / made after relayd started
// stays unreadable to workers.
func readOnlyRules() ([]pathRule, error) {
	var rules []pathRule
	add := func(path string, access uint64) error {
		r, err := openRule(path, access)
		if err != nil {
			return err
		}
		rules = append(rules, r)
		return nil
	}
	fail := func(err error) ([]pathRule, error) {
		closeRules(rules)
		return nil, err
	}
	if err := add("/", unix.LANDLOCK_ACCESS_FS_READ_DIR); err != nil {
		return fail(err)
	}
	entries, err := os.ReadDir("/")
	if err != nil {
		return fail(err)
	}
	for _, e := range entries {
		if e.Name() == "dev" {
			continue
		}
		if err := add("/"+e.Name(), fsReadOnly); err != nil && !errors.Is(err, unix.ENOENT) {
			return fail(err)
		}
	}
	for _, dev := range []struct {
		path   string
		access uint64
	}{
		{"/dev/null", fsReadOnly | fsFileWrite}, {"/dev/zero", fsReadOnly | fsFileWrite},
		{"/dev/full", fsReadOnly | fsFileWrite}, {"/dev/random", fsReadOnly}, {"/dev/urandom", fsReadOnly},
	} {
		if err := add(dev.path, dev.access); err != nil && !errors.Is(err, unix.ENOENT) {
			return fail(err)
		}
	}
	return rules, nil
}

func closeRules(rules []pathRule) {
	for _, r := range rules {
		unix.Close(r.fd)
	}
}
