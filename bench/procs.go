package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// server is a long-lived process the bench started: a relayd or an s6-ipcserver.
type server struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	strict  bool // it must exit 0 after SIGTERM

	done    chan struct{} // closed when its Wait has returned
	waitErr error         // set before done is closed

	stopOnce sync.Once
	stopErr  error
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// exited reports whether the process has ended.
func (s *server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits for the exit, and sends SIGKILL if it has not come within grace.
func (s *server) stop(grace time.Duration) error {
	s.stopOnce.Do(func() {
		if !s.exited() {
			s.cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-s.done:
		case <-time.After(grace):
			s.cmd.Process.Kill()
			<-s.done
			s.stopErr = fmt.Errorf("%s did not exit within %v of SIGTERM%s", s.name, grace, s.logTail())
			return
		}
		if s.strict && s.waitErr != nil {
			s.stopErr = fmt.Errorf("%s: %v after SIGTERM%s", s.name, s.waitErr, s.logTail())
		}
	})
	return s.stopErr
}

// logTail returns the last lines of the server's log, for error messages.
func (s *server) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return "\n" + s.name + " log:\n  " + strings.Join(lines, "\n  ")
}

// serverSet owns every server the bench started, so that each is stopped and waited for.
type serverSet struct {
	mu   sync.Mutex
	list []*server // guarded by mu; the ones not yet stopped by stopAll
	all  []*server // guarded by mu; every one started
}

// logs summarizes what the servers wrote to their logs: relayd runs at --log-level=warn, so
// any line there is worth a look.
func (ss *serverSet) logs() []string {
	ss.mu.Lock()
	all := ss.all
	ss.mu.Unlock()
	var notes []string
	for _, s := range all {
		b, err := os.ReadFile(s.logPath)
		if err != nil || len(b) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		note := fmt.Sprintf("%s logged %d lines", s.name, len(lines))
		for i, l := range lines {
			if i == 3 {
				note += "; …"
				break
			}
			if len(l) > 200 {
				l = l[:200] + "…"
			}
			note += "; `" + strings.ReplaceAll(l, "`", "'") + "`"
		}
		notes = append(notes, note)
	}
	return notes
}

// start starts cmd with its stderr (and stdout, unless set) in a log file under dir.
func (ss *serverSet) start(name, dir string, cmd *exec.Cmd, strict bool) (*server, error) {
	logPath := filepath.Join(dir, name+".log")
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd.Stderr = log
	if cmd.Stdout == nil {
		cmd.Stdout = log
	}
	// If the bench is killed outright, its servers go too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	s := &server{name: name, cmd: cmd, logPath: logPath, strict: strict, done: make(chan struct{})}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	ss.mu.Lock()
	ss.list = append(ss.list, s)
	ss.all = append(ss.all, s)
	ss.mu.Unlock()
	return s, nil
}

// stopAll stops every server still running, the last started first.
func (ss *serverSet) stopAll() error {
	ss.mu.Lock()
	list := ss.list
	ss.list = nil
	ss.mu.Unlock()
	var errs []error
	for i := len(list) - 1; i >= 0; i-- {
		errs = append(errs, list[i].stop(20*time.Second))
	}
	return errors.Join(errs...)
}

// statusKB reads a "Key:   123 kB" field of /proc/<pid>/status.
func statusKB(pid int, key string) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	_, rest, ok := bytes.Cut(b, []byte("\n"+key+":"))
	if !ok {
		return 0, fmt.Errorf("no %s in /proc/%d/status", key, pid)
	}
	line, _, _ := bytes.Cut(rest, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) == 0 {
		return 0, fmt.Errorf("bad %s in /proc/%d/status", key, pid)
	}
	return strconv.ParseInt(f[0], 10, 64)
}

// usage is the work a process has done so far.
type usage struct {
	// cpu is its own CPU time, threads that have ended included: utime and stime of
	// /proc/PID/stat, in clock ticks. The sum of its live threads' schedstat would be finer, but
	// it loses the whole time of every thread that ends between two readings, and relayd's
	// sandbox forks each worker from a thread of its own that ends with the worker.
	cpu      time.Duration
	children time.Duration // CPU time of the children it has reaped (clock ticks)
	live     time.Duration // CPU time so far of its live children (schedstat): long-lived workers
	// threadCS are the context switches, voluntary and not, of each live thread by id. A thread
	// that ended since the last reading takes its switches with it.
	threadCS map[int]int64
	cs       int64 // set by sub: the switches between two readings
}

// sub returns the work done between reading v and reading u. Context switches are counted per
// thread, so that a thread that ended in between takes away only its own last switches, not
// all it ever made.
func (u usage) sub(v usage) usage {
	d := usage{cpu: u.cpu - v.cpu, children: u.children - v.children, live: u.live - v.live}
	for tid, n := range u.threadCS {
		d.cs += n - v.threadCS[tid]
	}
	return d
}

// clockTick is USER_HZ, the unit of the CPU times in /proc/<pid>/stat; it is 100 on Linux.
const clockTick = 10 * time.Millisecond

// readUsage reads a live process's usage from /proc. Threads that have ended are not counted
// in cpu and cs; Go keeps its threads, so that matters little. A child's CPU time counts in live
// while it runs and in children once reaped, so a difference of two readings holds the work
// of the children alive at either reading too (relayd --max-requests and --spares keep
// workers).
//
// The reading must be one consistent snapshot, or the difference of two can go negative: a
// child reaped between reading the parent's cutime and listing its live children is in neither
// sum, and a zombie's threads are gone from /proc while its time is not yet in cutime. So the
// reading is taken again while cutime moved under it or a child is a zombie (about to be
// reaped); a few tries settle it.
func readUsage(pid int) usage {
	var u usage
	for range 50 {
		var stable bool
		if u, stable = readUsageOnce(pid); stable {
			break
		}
		time.Sleep(100 * time.Microsecond)
	}
	return u
}

// readUsageOnce reads pid's usage and reports whether the reading is consistent: cutime did
// not change while the live children were listed, and none of them was a zombie.
func readUsageOnce(pid int) (u usage, stable bool) {
	dir := "/proc/" + strconv.Itoa(pid)
	before, ok := reapedCPU(dir)
	if !ok {
		return u, true
	}
	u.children = before
	u.cpu = ownCPU(dir)
	u.threadCS = make(map[int]int64)
	stable = true
	tasks, _ := os.ReadDir(dir + "/task")
	for _, t := range tasks {
		tid, _ := strconv.Atoi(t.Name())
		if b, err := os.ReadFile(dir + "/task/" + t.Name() + "/children"); err == nil {
			for _, c := range strings.Fields(string(b)) {
				cpid, err := strconv.Atoi(c)
				if err != nil {
					continue
				}
				if procState(cpid) == 'Z' {
					stable = false
				}
				u.live += threadsCPU(cpid)
			}
		}
		if b, err := os.ReadFile(dir + "/task/" + t.Name() + "/status"); err == nil {
			for _, key := range []string{"\nvoluntary_ctxt_switches:", "\nnonvoluntary_ctxt_switches:"} {
				if _, rest, ok := bytes.Cut(b, []byte(key)); ok {
					line, _, _ := bytes.Cut(rest, []byte("\n"))
					n, _ := strconv.ParseInt(strings.TrimSpace(string(line)), 10, 64)
					u.threadCS[tid] += n
				}
			}
		}
	}
	if after, _ := reapedCPU(dir); after != before {
		stable = false
	}
	return u, stable
}

// reapedCPU is the CPU time of the reaped children of the process whose /proc directory is
// dir: its cutime and cstime.
func reapedCPU(dir string) (time.Duration, bool) {
	f := statFields(dir)
	if len(f) <= 14 {
		return 0, false
	}
	// Fields after the command: state is field 3, cutime 16, cstime 17.
	cu, _ := strconv.ParseInt(f[13], 10, 64)
	cs, _ := strconv.ParseInt(f[14], 10, 64)
	return time.Duration(cu+cs) * clockTick, true
}

// ownCPU is the CPU time of every thread, live or ended, of the process whose /proc directory
// is dir: its utime and stime.
func ownCPU(dir string) time.Duration {
	f := statFields(dir)
	if len(f) <= 12 {
		return 0
	}
	// Fields after the command: state is field 3, utime 14, stime 15.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * clockTick
}

// procState is the state letter of process pid (R, S, Z, …), or 0 when it is gone.
func procState(pid int) byte {
	f := statFields("/proc/" + strconv.Itoa(pid))
	if len(f) == 0 || f[0] == "" {
		return 0
	}
	return f[0][0]
}

// statFields are the fields of dir/stat after the command name: the state first.
func statFields(dir string) []string {
	b, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// taskCPU is the run time of one thread, from its schedstat.
func taskCPU(taskDir string) time.Duration {
	b, err := os.ReadFile(taskDir + "/schedstat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	ns, _ := strconv.ParseInt(f[0], 10, 64)
	return time.Duration(ns)
}

// threadsCPU is the CPU time so far of every live thread of process pid, or 0 if it is gone.
func threadsCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	tasks, _ := os.ReadDir(dir)
	var d time.Duration
	for _, t := range tasks {
		d += taskCPU(dir + t.Name())
	}
	return d
}

// selfUsage is the CPU time of the bench itself and of the children it has reaped.
func selfUsage() (self, children time.Duration) {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru)
	children = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return self, children
}

// machine describes where the bench ran.
type machine struct {
	nproc      int
	cpu        string
	kernel     string
	goVersion  string
	loadBefore string
	loadAfter  string
}

func readMachine() machine {
	m := machine{nproc: runtime.NumCPU(), goVersion: runtime.Version(), loadBefore: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
