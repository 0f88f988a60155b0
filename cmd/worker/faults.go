package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Fault directives, obeyed only with RELAY_FAULTS=1 (relayd --allow-fault-injection). They let
// tests make a real worker process misbehave in every way relayd must survive.
//
// Replies: directives that end in a normal reply (!sleep, !stderr, !fork and !flaky once it
// passes) echo the directive itself uppercased, like any other data, so a relayd test sees an
// ordinary echo. The diagnostic directives (!env, !fds, !rlimits) reply with what they report,
// not uppercased. Data that starts with "!" but names no directive is ordinary data. A known
// directive with a malformed argument gets an error reply rather than a guess.

// chunkSize is what !oom allocates and touches per step.
const chunkSize = 64 << 20

// grandchildSleep is how long the process started by !fork lives.
const grandchildSleep = 60 * time.Second

// garbageLine is what !garbage writes instead of a protocol line.
const garbageLine = "this is not json\n"

// oomChunks keeps !oom's memory reachable so that the collector cannot free it.
var oomChunks [][]byte

// nilByte is always nil; !segv writes through it.
var nilByte *byte

// fault carries out the fault directive in data for request id. It reports handled=false when
// the worker should go on to reply with data uppercased: for data naming no directive, and for
// the directives that end in an ordinary reply. When handled, err is what the worker ends with,
// nil to go on serving.
func (w *worker) fault(id, data string) (handled bool, err error) {
	fields := strings.Fields(data)
	name, args := fields[0], fields[1:]
	usage, ok := directiveUsage[name]
	if !ok {
		return false, nil
	}
	bad := func() (bool, error) {
		return true, w.replyError(id, fmt.Sprintf("bad fault directive %q: want %s", data, usage))
	}
	// arg parses the one argument of a directive that takes one.
	arg := func() (int, bool) {
		if len(args) != 1 {
			return 0, false
		}
		n, err := strconv.Atoi(args[0])
		return n, err == nil && n >= 0
	}
	if !strings.Contains(usage, " ") && len(args) != 0 {
		return bad()
	}

	switch name {
	case "!crash":
		w.injected(name)
		return true, exitStatus(1)

	case "!exit":
		n, ok := arg()
		if !ok || n > 255 {
			return bad()
		}
		w.injected(name, "status", n)
		return true, exitStatus(n)

	case "!panic":
		w.injected(name)
		panic("fault injected: !panic")

	case "!segv":
		w.injected(name)
		return true, dieOfSIGSEGV()

	case "!hang":
		w.injected(name)
		signal.Ignore(syscall.SIGTERM)
		for {
			time.Sleep(time.Hour)
		}

	case "!sleep":
		if len(args) != 1 {
			return bad()
		}
		d, err := time.ParseDuration(args[0])
		if err != nil {
			return bad()
		}
		time.Sleep(d)
		return false, nil

	case "!oom":
		w.injected(name)
		for {
			chunk := make([]byte, chunkSize)
			for i := 0; i < len(chunk); i += 4096 {
				chunk[i] = 1
			}
			oomChunks = append(oomChunks, chunk)
		}

	case "!spin":
		w.injected(name)
		//lint:ignore SA5002 spinning at 100% CPU is what !spin is for.
		for {
		}

	case "!fork":
		pid, err := w.forkGrandchild()
		if err != nil {
			return true, w.replyError(id, "!fork: "+err.Error())
		}
		w.injected(name, "grandchild", pid)
		return false, nil

	case "!garbage":
		w.injected(name)
		if _, err := w.out.WriteString(garbageLine); err != nil {
			return true, fmt.Errorf("writing stdout: %w", err)
		}
		if err := w.out.Flush(); err != nil {
			return true, fmt.Errorf("writing stdout: %w", err)
		}
		return true, exitStatus(0)

	case "!noreply":
		w.injected(name)
		return true, exitStatus(0)

	case "!flaky":
		n, ok := arg()
		if !ok {
			return bad()
		}
		if w.attempt <= n {
			w.injected(name, "attempt", w.attempt, "fail_attempts", n)
			return true, exitStatus(1)
		}
		return false, nil

	case "!stderr":
		n, ok := arg()
		if !ok {
			return bad()
		}
		if err := writeStderrLines(w.stderr, n); err != nil {
			return true, err
		}
		return false, nil

	case "!env":
		env := slices.Clone(w.environ)
		slices.Sort(env)
		return true, w.replyText(id, strings.Join(env, "\n"))

	case "!fds":
		fds, err := inheritedFDs()
		if err != nil {
			return true, w.replyError(id, "!fds: "+err.Error())
		}
		return true, w.replyText(id, fds)

	case "!rlimits":
		limits, err := rlimits()
		if err != nil {
			return true, w.replyError(id, "!rlimits: "+err.Error())
		}
		return true, w.replyText(id, limits)
	}
	return false, nil
}

// directiveUsage lists every directive with its syntax; a directive without arguments is a
// single word.
var directiveUsage = map[string]string{
	"!crash":   "!crash",
	"!exit":    "!exit N (0-255)",
	"!panic":   "!panic",
	"!segv":    "!segv",
	"!hang":    "!hang",
	"!sleep":   "!sleep DURATION",
	"!oom":     "!oom",
	"!spin":    "!spin",
	"!fork":    "!fork",
	"!garbage": "!garbage",
	"!noreply": "!noreply",
	"!flaky":   "!flaky N",
	"!stderr":  "!stderr N",
	"!env":     "!env",
	"!fds":     "!fds",
	"!rlimits": "!rlimits",
}

// injected logs that the worker is about to misbehave on purpose, so that relayd's log explains
// the exit, or for !fork the leftover process, that follows. Directives that only delay or
// diagnose (!sleep, !stderr, !env, !fds, !rlimits) do not log: !stderr in particular writes
// exactly the lines it was asked for.
func (w *worker) injected(directive string, args ...any) {
	w.logLine("info", "fault injected", append([]any{"directive", directive}, args...)...)
}

// dieOfSIGSEGV kills the process with a real SIGSEGV, as a crashing C program dies. The Go
// runtime catches SIGSEGV and turns a fault into a panic (exit status 2), and signal.Reset
// keeps the runtime's handler for synchronous signals; so it puts back the default action with
// a raw rt_sigaction and then faults. It returns only if that failed.
func dieOfSIGSEGV() error {
	// A kernel struct sigaction of all zeros: handler SIG_DFL, no flags, empty mask. It is
	// larger than the kernel's on every architecture.
	var dfl [8]uint64
	const sigsetBytes = 8
	_, _, errno := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(syscall.SIGSEGV),
		uintptr(unsafe.Pointer(&dfl)), 0, sigsetBytes, 0, 0)
	if errno != 0 {
		return fmt.Errorf("!segv: resetting the SIGSEGV handler: %w", errno)
	}
	runtime.LockOSThread()
	*nilByte = 1
	// Not reached when the write faulted. Should it not have, send the signal instead.
	if err := unix.Kill(os.Getpid(), unix.SIGSEGV); err != nil {
		return fmt.Errorf("!segv: %w", err)
	}
	time.Sleep(time.Second)
	return errors.New("!segv: still alive after SIGSEGV")
}

// forkGrandchild starts the worker's own executable as a grandchild in a new session that
// sleeps for grandchildSleep, and returns its pid without waiting for it.
//
// The grandchild deliberately inherits the worker's stdout and stderr (stdin is /dev/null):
// after the worker exits, a leftover still holds the write ends of relayd's pipes, so relayd
// reading them to EOF would wait the full minute unless it kills the worker's leftovers, which
// a new session puts outside the worker's process group.
func (w *worker) forkGrandchild() (int, error) {
	exe, err := os.Executable()
	if err != nil {
		return 0, err
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devNull.Close()
	stdout, stderr := fileOr(w.stdout, devNull), fileOr(w.stderr, devNull)
	p, err := os.StartProcess(exe, []string{exe, "--grandchild-sleep=" + grandchildSleep.String()}, &os.ProcAttr{
		Env:   w.environ,
		Files: []*os.File{devNull, stdout, stderr},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return 0, err
	}
	pid := p.Pid
	// The worker never waits for the grandchild: once the worker is gone it is relayd's (as
	// subreaper) or init's to reap.
	if err := p.Release(); err != nil {
		return 0, err
	}
	return pid, nil
}

// fileOr returns w when it is an *os.File, else alt.
func fileOr(w io.Writer, alt *os.File) *os.File {
	if f, ok := w.(*os.File); ok {
		return f
	}
	return alt
}

// writeStderrLines writes n numbered lines of plain text to stderr.
func writeStderrLines(stderr io.Writer, n int) error {
	bw := bufio.NewWriter(stderr)
	var b []byte
	for i := 1; i <= n; i++ {
		b = append(b[:0], "worker stderr line "...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, " of "...)
		b = strconv.AppendInt(b, int64(n), 10)
		b = append(b, '\n')
		if _, err := bw.Write(b); err != nil {
			return fmt.Errorf("writing stderr: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing stderr: %w", err)
	}
	return nil
}

// inheritedFDs lists, ascending and space-separated, the descriptors the process inherited:
// those open without close-on-exec. Go opens its own descriptors with close-on-exec, so they
// are left out, as is the one reading /proc/self/fd.
func inheritedFDs() (string, error) {
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		return "", err
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return "", err
	}
	self := int(dir.Fd())
	var fds []int
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || fd == self {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue
		}
		fds = append(fds, fd)
	}
	slices.Sort(fds)
	var b []byte
	for i, fd := range fds {
		if i > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendInt(b, int64(fd), 10)
	}
	return string(b), nil
}

// rlimitNames are the resource limits !rlimits reports, named and ordered as prlimit(1) lists
// them.
var rlimitNames = []struct {
	name     string
	resource int
}{
	{"as", unix.RLIMIT_AS},
	{"core", unix.RLIMIT_CORE},
	{"cpu", unix.RLIMIT_CPU},
	{"data", unix.RLIMIT_DATA},
	{"fsize", unix.RLIMIT_FSIZE},
	{"locks", unix.RLIMIT_LOCKS},
	{"memlock", unix.RLIMIT_MEMLOCK},
	{"msgqueue", unix.RLIMIT_MSGQUEUE},
	{"nice", unix.RLIMIT_NICE},
	{"nofile", unix.RLIMIT_NOFILE},
	{"nproc", unix.RLIMIT_NPROC},
	{"rss", unix.RLIMIT_RSS},
	{"rtprio", unix.RLIMIT_RTPRIO},
	{"rttime", unix.RLIMIT_RTTIME},
	{"sigpending", unix.RLIMIT_SIGPENDING},
	{"stack", unix.RLIMIT_STACK},
}

// rlimits reports the process's resource limits as lines "NAME SOFT HARD", in the kernel's
// units (bytes, seconds, microseconds for rttime), "unlimited" for RLIM_INFINITY.
//
// The soft nofile limit is the one in force now. The Go runtime raises its own soft nofile
// limit to hard-1 at start-up when it was lower (package syscall), so a limit the parent set
// before exec with soft < hard-1 shows up raised; a limit set with soft == hard, or set on the
// running worker with prlimit(2), shows up as set.
func rlimits() (string, error) {
	var b []byte
	for _, r := range rlimitNames {
		var lim unix.Rlimit
		if err := unix.Prlimit(0, r.resource, nil, &lim); err != nil {
			return "", fmt.Errorf("getting %s limit: %w", r.name, err)
		}
		if len(b) > 0 {
			b = append(b, '\n')
		}
		b = append(b, r.name...)
		b = appendLimit(append(b, ' '), lim.Cur)
		b = appendLimit(append(b, ' '), lim.Max)
	}
	return string(b), nil
}

// appendLimit appends one limit value as prlimit(1) prints it.
func appendLimit(b []byte, v uint64) []byte {
	if v == unix.RLIM_INFINITY {
		return append(b, "unlimited"...)
	}
	return strconv.AppendUint(b, v, 10)
}
