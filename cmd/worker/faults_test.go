package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// waitFor polls cond until it holds, failing the test after 5 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// procStatus returns a field of /proc/PID/status, without its name.
func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return ""
}

// procStat holds the fields of /proc/PID/stat the tests look at.
type procStat struct {
	ppid, pgrp, session int
	cpuTicks            int // utime + stime, in clock ticks
}

func readProcStat(t *testing.T, pid int) procStat {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name in parentheses may hold spaces; the fields after it start with state.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	n := func(i int) int {
		v, err := strconv.Atoi(f[i])
		if err != nil {
			t.Fatalf("/proc/%d/stat field %d: %v", pid, i+3, err)
		}
		return v
	}
	return procStat{ppid: n(1), pgrp: n(2), session: n(3), cpuTicks: n(11) + n(12)}
}

// kill sends sig to the worker.
func (p *proc) kill(sig syscall.Signal) {
	p.t.Helper()
	if err := unix.Kill(p.pid(), sig); err != nil {
		p.t.Fatalf("sending %s: %v", unix.SignalName(sig), err)
	}
}

// wantKilled kills the worker with SIGKILL and checks that it died of it without replying.
func (p *proc) wantKilled() {
	p.t.Helper()
	p.kill(syscall.SIGKILL)
	if ws := p.wait(); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		p.t.Errorf("worker %s, want killed by SIGKILL", describe(ws))
	}
	if line, err := p.readLine(); err != io.EOF {
		p.t.Errorf("stdout: %q, %v; want EOF without a reply", line, err)
	}
}

// TestHang checks that !hang ignores SIGTERM, never replies, and dies of SIGKILL.
func TestHang(t *testing.T) {
	t.Parallel()
	p := start(t, procConfig{})
	p.ready()
	const termBit = 1 << (syscall.SIGTERM - 1)
	sigIgn := func() uint64 {
		v, err := strconv.ParseUint(procStatus(t, p.pid(), "SigIgn"), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if sigIgn()&termBit != 0 {
		t.Fatal("worker ignores SIGTERM before !hang")
	}
	p.send("1", "echo", "!hang")
	waitFor(t, "the worker to ignore SIGTERM", func() bool { return sigIgn()&termBit != 0 })
	p.kill(syscall.SIGTERM)
	select {
	case <-p.done:
		t.Fatalf("worker exited after SIGTERM: %v", p.waitErr)
	case <-time.After(300 * time.Millisecond):
	}
	p.wantKilled()
}

// TestOOM checks that !oom keeps allocating and touching memory until it is killed.
func TestOOM(t *testing.T) {
	t.Parallel()
	p := start(t, procConfig{})
	p.ready()
	p.send("1", "echo", "!oom")
	// Three chunks resident prove memory is both allocated and written to.
	const wantKiB = 3 * chunkSize >> 10
	rss := func() int {
		v, err := strconv.Atoi(strings.TrimSuffix(procStatus(t, p.pid(), "VmRSS"), " kB"))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	waitFor(t, fmt.Sprintf("VmRSS of %d kB", wantKiB), func() bool { return !p.running() || rss() >= wantKiB })
	if !p.running() {
		t.Fatalf("worker exited on its own: %v; stderr %q", p.waitErr, p.stderrSoFar())
	}
	p.wantKilled()
}

// TestSpin checks that !spin burns CPU until it is killed.
func TestSpin(t *testing.T) {
	t.Parallel()
	p := start(t, procConfig{})
	p.ready()
	p.send("1", "echo", "!spin")
	// Linux reports CPU time in USER_HZ ticks, 100 a second: 20 ticks are 200ms of CPU.
	const wantTicks = 20
	waitFor(t, "200ms of CPU time", func() bool { return !p.running() || readProcStat(t, p.pid()).cpuTicks >= wantTicks })
	if !p.running() {
		t.Fatalf("worker exited on its own: %v", p.waitErr)
	}
	p.wantKilled()
}

// TestFork checks that !fork replies and leaves a grandchild in a session of its own that holds
// the worker's stdout and stderr after the worker has exited.
func TestFork(t *testing.T) {
	t.Parallel()
	// As relayd does, become a subreaper, so that the grandchild is reparented to the test,
	// which can then reap it and prove it gone.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("becoming a subreaper: %v", err)
	}
	p := start(t, procConfig{})
	p.ready()
	p.send("1", "echo", "!fork")
	if got, want := p.replyText("1"), "!FORK"; got != want {
		t.Errorf("reply = %q, want %q", got, want)
	}

	gpid := findGrandchild(t)
	t.Cleanup(func() {
		// Only for a failed test; a passing one has reaped the grandchild already.
		if unix.Kill(gpid, syscall.SIGKILL) == nil {
			var ws unix.WaitStatus
			_, _ = unix.Wait4(gpid, &ws, 0, nil)
		}
	})
	worker, grandchild := readProcStat(t, p.pid()), readProcStat(t, gpid)
	if grandchild.ppid != p.pid() {
		t.Errorf("grandchild's parent = %d, want the worker %d", grandchild.ppid, p.pid())
	}
	if grandchild.session != gpid || grandchild.pgrp != gpid {
		t.Errorf("grandchild %d has session %d and group %d, want its own", gpid, grandchild.session, grandchild.pgrp)
	}
	if worker.session == grandchild.session {
		t.Errorf("worker and grandchild share session %d", worker.session)
	}
	stdoutPipe, stderrPipe := pipeName(t, p.stdoutR), pipeName(t, p.stderrR)
	for fd, want := range map[int]string{0: os.DevNull, 1: stdoutPipe, 2: stderrPipe} {
		if got, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", gpid, fd)); err != nil || got != want {
			t.Errorf("grandchild's fd %d is %q, %v; want %q", fd, got, err, want)
		}
	}

	if ws := p.wait(); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("worker %s, want exit status 0", describe(ws))
	}
	// The grandchild outlives the worker, now a child of the subreaper, still holding stdout.
	if got := readProcStat(t, gpid).ppid; got != os.Getpid() {
		t.Errorf("grandchild's parent after the worker exited = %d, want the test %d", got, os.Getpid())
	}
	if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/1", gpid)); got != stdoutPipe {
		t.Errorf("grandchild's stdout after the worker exited = %q, want %q", got, stdoutPipe)
	}

	if err := unix.Kill(gpid, syscall.SIGKILL); err != nil {
		t.Fatalf("killing grandchild: %v", err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(gpid, &ws, 0, nil); err != nil {
		t.Fatalf("reaping grandchild: %v", err)
	}
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("grandchild wait status %v, want killed by SIGKILL", ws)
	}
	// With the last writer gone, stdout reaches EOF.
	if line, err := p.readLine(); err != io.EOF {
		t.Errorf("stdout after the grandchild died: %q, %v; want EOF", line, err)
	}
}

// pipeName returns the name /proc/PID/fd shows for a descriptor of the pipe f is an end of.
func pipeName(t *testing.T, f *os.File) string {
	t.Helper()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("pipe:[%d]", st.Sys().(*syscall.Stat_t).Ino)
}

// findGrandchild returns the pid of the one process running this test's worker binary with
// --grandchild-sleep.
func findGrandchild(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var found []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue // gone already
		}
		argv := strings.Split(string(b), "\x00")
		if len(argv) >= 2 && argv[0] == workerBin && strings.HasPrefix(argv[1], "--grandchild-sleep=") {
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		t.Fatalf("found grandchildren %v, want one", found)
	}
	return found[0]
}

// TestFDs checks !fds with and without descriptors passed beyond stdio.
func TestFDs(t *testing.T) {
	t.Parallel()
	devNull := func() *os.File {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	tests := []struct {
		name  string
		extra []*os.File
		want  string
	}{
		{"stdio only", nil, "0 1 2"},
		{"one extra", []*os.File{devNull()}, "0 1 2 3"},
		{"two extra", []*os.File{devNull(), devNull()}, "0 1 2 3 4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := start(t, procConfig{extra: tt.extra})
			p.ready()
			p.send("1", "echo", "!fds")
			if got := p.replyText("1"); got != tt.want {
				t.Errorf("!fds = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestRlimits sets limits on the running worker and checks that !rlimits reports every limit
// as the kernel has it.
func TestRlimits(t *testing.T) {
	t.Parallel()
	p := start(t, procConfig{})
	p.ready()
	// Limits set with prlimit(2) after start-up are not raised by the Go runtime's start-up code.
	for res, lim := range map[int]unix.Rlimit{
		unix.RLIMIT_NOFILE: {Cur: 64, Max: 128},
		unix.RLIMIT_CORE:   {Cur: 0, Max: 0},
	} {
		if err := unix.Prlimit(p.pid(), res, &lim, nil); err != nil {
			t.Fatalf("setting limit %d: %v", res, err)
		}
	}
	p.send("1", "echo", "!rlimits")
	got := strings.Split(p.replyText("1"), "\n")

	names := []string{"as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
		"nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack"}
	if len(got) != len(names) {
		t.Fatalf("!rlimits has %d lines, want %d: %q", len(got), len(names), got)
	}
	format := func(v uint64) string {
		if v == unix.RLIM_INFINITY {
			return "unlimited"
		}
		return strconv.FormatUint(v, 10)
	}
	for i, r := range rlimitNames {
		if r.name != names[i] {
			t.Errorf("limit %d is %q, want %q", i, r.name, names[i])
		}
		var lim unix.Rlimit
		if err := unix.Prlimit(p.pid(), r.resource, nil, &lim); err != nil {
			t.Fatal(err)
		}
		if want := names[i] + " " + format(lim.Cur) + " " + format(lim.Max); got[i] != want {
			t.Errorf("line %d = %q, want %q", i, got[i], want)
		}
	}
	for _, want := range []string{"nofile 64 128", "core 0 0"} {
		if !strings.Contains(strings.Join(got, "\n")+"\n", want+"\n") {
			t.Errorf("!rlimits = %q, want a line %q", got, want)
		}
	}
}

// TestDirectiveTable checks that --help lists every directive with its syntax, and that every
// directive that takes an argument refuses to run without one, naming its syntax.
func TestDirectiveTable(t *testing.T) {
	var help bytes.Buffer
	if err := run([]string{"--help"}, strings.NewReader(""), &help, io.Discard, nil); err != nil {
		t.Fatal(err)
	}
	for i := range directives {
		d := &directives[i]
		if !strings.Contains(help.String(), "  "+d.usage()+" ") {
			t.Errorf("--help lacks %q:\n%s", d.usage(), help.String())
		}
		if d.does == "" || d.outcome == "" || d.act == nil {
			t.Errorf("%s: want what it does, what relayd sees and its action", d.name)
		}
		if d.arg == "" {
			continue
		}
		var out bytes.Buffer
		w := &worker{stdout: &out, out: bufio.NewWriter(&out), stderr: io.Discard, faults: true, attempt: 1}
		handled, err := w.fault("1", d.name)
		if !handled || err != nil || w.answerErr == nil || !strings.Contains(w.answerErr.Error(), "want "+d.usage()) {
			t.Errorf("%s without its argument: handled %v, err %v, answer %v; want an error answer naming %q", d.name, handled, err, w.answerErr, d.usage())
		}
	}
}

// TestSandboxProbes checks !net, !write and !scratch on an unconfined worker: each does what
// it says and reports it, and reports a failure as text.
func TestSandboxProbes(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	dir := t.TempDir()
	scratch := t.TempDir()
	p := start(t, procConfig{env: append(faultEnv(1), "TMPDIR="+scratch)})
	p.ready()
	tests := []struct {
		data, want string
	}{
		{"!net " + ln.Addr().String(), "connected"},
		{"!net " + closedAddr, "connect: connection refused"},
		{"!write " + filepath.Join(dir, "f"), "written"},
		{"!write " + filepath.Join(dir, "missing", "f"), "open " + filepath.Join(dir, "missing", "f") + ": no such file or directory"},
		{"!scratch", scratch},
	}
	for i, tt := range tests {
		id := strconv.Itoa(i)
		p.send(id, "echo", tt.data)
		if got := p.replyText(id); got != tt.want {
			t.Errorf("%s = %q, want %q", tt.data, got, tt.want)
		}
	}
	if _, err := os.Stat(filepath.Join(scratch, "scratch-check")); err != nil {
		t.Errorf("!scratch wrote no file: %v", err)
	}
}
