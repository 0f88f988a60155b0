package sandbox

import (
	"fmt"
	"syscall"
	"unsafe"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// deniedCalls are system calls no worker needs, refused with EPERM (a clean error, not a
// kill): tracing and reading other processes, mounting, loading kernel code (modules, kexec,
// BPF), the kernel keyring, performance counters, io_uring (whose operations would go around a
// filter on socket(2)), joining or making namespaces, and the administrative calls that are
// privileged anyway. The list follows Docker's and systemd's @privileged, @mount, @module,
// @raw-io, @reboot, @swap, @clock, @obsolete and @debug groups.
var deniedCalls = []string{
	"ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
	"mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
	"fsmount", "fspick", "mount_setattr",
	"bpf", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
	"keyctl", "add_key", "request_key",
	"perf_event_open", "userfaultfd", "lookup_dcookie",
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	"setns", "unshare",
	"open_by_handle_at", "name_to_handle_at",
	"acct", "swapon", "swapoff", "reboot", "syslog", "quotactl", "vhangup",
	"iopl", "ioperm", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
	"personality", "uselib", "ustat", "sysfs", "fanotify_init",
}

// seccompProgram assembles the worker filter once: the deny-list, and, when network is off,
// socket(2) for any family but AF_UNIX. socketpair(2) makes only Unix pairs and needs no rule.
// A first check refuses system calls of another architecture (a 64-bit process can enter the
// 32-bit table through int 0x80), which a deny-list would otherwise let through.
func seccompProgram(network bool) (*syscall.SockFprog, error) {
	groups := []seccomp.SyscallGroup{{Names: deniedCalls, Action: seccomp.ActionErrno | seccomp.Action(unix.EPERM)}}
	if !network {
		groups = append(groups, seccomp.SyscallGroup{
			NamesWithCondtions: []seccomp.NameWithConditions{{
				Name:       "socket",
				Conditions: seccomp.ArgumentConditions{{Argument: 0, Operation: seccomp.NotEqual, Value: unix.AF_UNIX}},
			}},
			// What socket(2) says for a family the kernel does not have.
			Action: seccomp.ActionErrno | seccomp.Action(unix.EAFNOSUPPORT),
		})
	}
	policy := seccomp.Policy{DefaultAction: seccomp.ActionAllow, Syscalls: groups}
	insts, err := policy.Assemble()
	if err != nil {
		return nil, fmt.Errorf("assembling the seccomp filter: %w", err)
	}
	// insts begins by loading the architecture; check it before anything else.
	nativeArch, ok := auditArch()
	if ok {
		insts = append([]bpf.Instruction{
			bpf.LoadAbsolute{Off: 4, Size: 4}, // seccomp_data.arch
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: nativeArch, SkipTrue: 1},
			bpf.RetConstant{Val: uint32(seccomp.ActionErrno) | uint32(unix.ENOSYS)},
		}, insts...)
	}
	raw, err := bpf.Assemble(insts)
	if err != nil {
		return nil, fmt.Errorf("assembling the seccomp filter: %w", err)
	}
	filter := make([]syscall.SockFilter, len(raw))
	for i, in := range raw {
		filter[i] = syscall.SockFilter{Code: in.Op, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	return &syscall.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}, nil
}

// loadSeccomp installs prog on the calling OS thread only (no TSYNC): the thread a worker is
// forked from. no_new_privs must be set.
func loadSeccomp(prog *syscall.SockFprog) error {
	_, _, errno := syscall.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(prog)))
	if errno != 0 {
		return fmt.Errorf("seccomp: %w", errno)
	}
	return nil
}

// seccompAvailable reports whether the kernel takes seccomp filters.
func seccompAvailable() error {
	if !seccomp.Supported() {
		return fmt.Errorf("seccomp(2) is not available")
	}
	return nil
}
