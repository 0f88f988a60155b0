package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
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
// ordinary echo. The diagnostic directives (!env, !fds, !rlimits, !net, !write, !scratch) reply with what they report,
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

// directive is one fault directive: its syntax, what it does and what relayd makes of it. The
// table below is the whole list; --help is written from it.
type directive struct {
	name string
	// arg names the one argument a directive takes, as --help shows it ("N", "DURATION");
	// empty for a directive that takes none.
	arg string
	// check validates the argument (nil: any); its error message is shown in the usage.
	check func(arg string) bool
	// does says what it does, and outcome what relayd sees, for --help.
	does, outcome string
	// act carries it out. It reports handled=false when the worker should go on to reply with
	// the data uppercased; when handled, err is what the worker ends with, nil to go on.
	act func(w *worker, c call) (handled bool, err error)
}

// call is one directive as a request carried it.
type call struct {
	id, data, name, arg string
}

// usage is the directive's syntax, e.g. "!exit N (0-255)".
func (d *directive) usage() string {
	if d.arg == "" {
		return d.name
	}
	return d.name + " " + d.arg
}

// intArg parses a non-negative integer argument.
func intArg(s string) (int, bool) {
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= 0
}

func isCount(s string) bool { _, ok := intArg(s); return ok }

// directives is every fault directive, in the order --help lists them.
var directives = []directive{
	{name: "!crash", does: "exit 1", outcome: "exit(1)",
		act: func(w *worker, c call) (bool, error) { w.injected(c.name); return true, exitStatus(1) }},
	{name: "!exit", arg: "N (0-255)", check: func(s string) bool { n, ok := intArg(s); return ok && n <= 255 },
		does: "exit N", outcome: "exit(N); protocol for 0",
		act: func(w *worker, c call) (bool, error) {
			n, _ := intArg(c.arg)
			w.injected(c.name, "status", n)
			return true, exitStatus(n)
		}},
	{name: "!panic", does: "panic", outcome: "exit(2), the trace logged whole",
		act: func(w *worker, c call) (bool, error) { w.injected(c.name); panic("fault injected: !panic") }},
	{name: "!segv", does: "die of a real SIGSEGV", outcome: "signal(SIGSEGV)",
		act: func(w *worker, c call) (bool, error) { w.injected(c.name); return true, dieOfSIGSEGV() }},
	{name: "!hang", does: "ignore SIGTERM, never answer", outcome: "timeout",
		act: func(w *worker, c call) (bool, error) {
			// SIGTERM is ignored before the log line, so that whoever sees the line (a
			// test that then stops relayd) knows a SIGTERM can no longer end the worker.
			signal.Ignore(syscall.SIGTERM)
			w.injected(c.name)
			for {
				time.Sleep(time.Hour)
			}
		}},
	{name: "!sleep", arg: "DURATION", check: func(s string) bool { _, err := time.ParseDuration(s); return err == nil },
		does: "wait, then answer", outcome: "the reply, or timeout",
		act: func(w *worker, c call) (bool, error) {
			d, _ := time.ParseDuration(c.arg)
			time.Sleep(d)
			return false, nil
		}},
	{name: "!oom", does: "allocate memory without end", outcome: "a memory limit's signal, or timeout",
		act: func(w *worker, c call) (bool, error) {
			w.injected(c.name)
			for {
				chunk := make([]byte, chunkSize)
				for i := 0; i < len(chunk); i += 4096 {
					chunk[i] = 1
				}
				oomChunks = append(oomChunks, chunk)
			}
		}},
	{name: "!spin", does: "spin at 100% CPU", outcome: "timeout, or the CPU limit's SIGKILL",
		act: func(w *worker, c call) (bool, error) {
			w.injected(c.name)
			//lint:ignore SA5002 spinning at 100% CPU is what !spin is for.
			for {
			}
		}},
	{name: "!fork", does: "leave a setsid process on stdout, answer", outcome: "the reply; the leftover reaped",
		act: func(w *worker, c call) (bool, error) {
			pid, err := w.forkGrandchild()
			if err != nil {
				return true, w.replyError(c.id, "!fork: "+err.Error())
			}
			w.injected(c.name, "grandchild", pid)
			return false, nil
		}},
	{name: "!garbage", does: "write a line that is not JSON, exit 0", outcome: "protocol",
		act: func(w *worker, c call) (bool, error) {
			w.injected(c.name)
			if _, err := w.out.WriteString(garbageLine); err != nil {
				return true, fmt.Errorf("writing stdout: %w", err)
			}
			if err := w.out.Flush(); err != nil {
				return true, fmt.Errorf("writing stdout: %w", err)
			}
			return true, exitStatus(0)
		}},
	{name: "!noreply", does: "exit 0 without answering", outcome: "protocol",
		act: func(w *worker, c call) (bool, error) { w.injected(c.name); return true, exitStatus(0) }},
	{name: "!flaky", arg: "N", check: isCount, does: "exit 1 on attempts 1 to N, then answer", outcome: "exit(1) N times, then the reply",
		act: func(w *worker, c call) (bool, error) {
			n, _ := intArg(c.arg)
			if w.attempt <= n {
				w.injected(c.name, "attempt", w.attempt, "fail_attempts", n)
				return true, exitStatus(1)
			}
			return false, nil
		}},
	{name: "!stderr", arg: "N", check: isCount, does: "write N lines to stderr, answer", outcome: "the reply; the lines logged",
		act: func(w *worker, c call) (bool, error) {
			n, _ := intArg(c.arg)
			if err := writeStderrLines(w.stderr, n); err != nil {
				return true, err
			}
			return false, nil
		}},
	{name: "!env", does: "answer with its environment", outcome: "the reply",
		act: func(w *worker, c call) (bool, error) {
			env := slices.Clone(w.environ)
			slices.Sort(env)
			return true, w.replyText(c.id, strings.Join(env, "\n"))
		}},
	{name: "!fds", does: "answer with its inherited descriptors", outcome: "the reply",
		act: func(w *worker, c call) (bool, error) {
			fds, err := inheritedFDs()
			if err != nil {
				return true, w.replyError(c.id, "!fds: "+err.Error())
			}
			return true, w.replyText(c.id, fds)
		}},
	{name: "!rlimits", does: "answer with its resource limits", outcome: "the reply",
		act: func(w *worker, c call) (bool, error) {
			limits, err := rlimits()
			if err != nil {
				return true, w.replyError(c.id, "!rlimits: "+err.Error())
			}
			return true, w.replyText(c.id, limits)
		}},
	{name: "!net", arg: "HOST:PORT", check: func(s string) bool { _, err := netip.ParseAddrPort(s); return err == nil },
		does: "connect to an IP address over TCP", outcome: "the reply: connected, or the error",
		act: func(w *worker, c call) (bool, error) { return true, w.replyText(c.id, tryConnect(c.arg)) }},
	{name: "!write", arg: "PATH", does: "create the file PATH", outcome: "the reply: written, or the error",
		act: func(w *worker, c call) (bool, error) { return true, w.replyText(c.id, tryCreate(c.arg)) }},
	{name: "!scratch", does: "write a file in $TMPDIR", outcome: "the reply: the path of $TMPDIR, or the error",
		act: func(w *worker, c call) (bool, error) {
			dir := lookupEnv(w.environ, "TMPDIR")
			if dir == "" {
				return true, w.replyText(c.id, "TMPDIR is not set")
			}
			if msg := tryCreate(filepath.Join(dir, "scratch-check")); msg != "written" {
				return true, w.replyText(c.id, msg)
			}
			return true, w.replyText(c.id, dir)
		}},
}

// tryConnect opens a TCP connection to addr, an IP address and port, and closes it; it returns
// "connected" or the error's text. It uses the system calls directly: the net package would
// grow the worker, which starts once per message, for a directive it rarely runs.
func tryConnect(addr string) string {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err.Error()
	}
	ip := ap.Addr().Unmap()
	family := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ip.As16()}
	if ip.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ip.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "socket: " + err.Error()
	}
	defer unix.Close(fd)
	// A send timeout bounds a blocking connect too.
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 5})
	if err := unix.Connect(fd, sa); err != nil {
		return "connect: " + err.Error()
	}
	return "connected"
}

// tryCreate creates (or truncates) the file at path and closes it; it returns "written" or the
// error's text.
func tryCreate(path string) string {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err.Error()
	}
	if err := f.Close(); err != nil {
		return err.Error()
	}
	return "written"
}

// directiveByName indexes directives.
var directiveByName = func() map[string]*directive {
	m := make(map[string]*directive, len(directives))
	for i := range directives {
		m[directives[i].name] = &directives[i]
	}
	return m
}()

// directivesHelp lists the directives for --help, one per line.
func directivesHelp() string {
	uw, dw := 0, 0
	for i := range directives {
		uw, dw = max(uw, len(directives[i].usage())), max(dw, len(directives[i].does))
	}
	var b strings.Builder
	fmt.Fprintf(&b, "  %-*s  %-*s  %s\n", uw, "DIRECTIVE", dw, "WHAT IT DOES", "WHAT RELAYD SEES")
	for i := range directives {
		d := &directives[i]
		fmt.Fprintf(&b, "  %-*s  %-*s  %s\n", uw, d.usage(), dw, d.does, d.outcome)
	}
	return b.String()
}

// fault carries out the fault directive in data for request id. It reports handled=false when
// the worker should go on to reply with data uppercased: for data naming no directive, and for
// the directives that end in an ordinary reply. When handled, err is what the worker ends with,
// nil to go on serving.
func (w *worker) fault(id, data string) (handled bool, err error) {
	fields := strings.Fields(data)
	d, ok := directiveByName[fields[0]]
	if !ok {
		return false, nil
	}
	c := call{id: id, data: data, name: d.name}
	wantArgs := 0
	if d.arg != "" {
		wantArgs = 1
	}
	if len(fields)-1 != wantArgs || (wantArgs == 1 && d.check != nil && !d.check(fields[1])) {
		return true, w.replyError(id, fmt.Sprintf("bad fault directive %q: want %s", data, d.usage()))
	}
	if wantArgs == 1 {
		c.arg = fields[1]
	}
	return d.act(w, c)
}

// injected logs that the worker is about to misbehave on purpose, so that relayd's log explains
// the exit, or for !fork the leftover process, that follows. Directives that only delay or
// diagnose (!sleep, !stderr, !env, !fds, !rlimits, !net, !write, !scratch) do not log: !stderr in particular writes
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
