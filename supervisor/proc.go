package supervisor

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// proc is one live worker process: what relayd does to the process itself — fork, signals,
// deadline, wait and reap, leftovers — whatever its transport. Its protocol and its state are
// its worker's (worker.go).
type proc struct {
	host   *Host
	cmd    *exec.Cmd
	pid    int
	stderr *os.File
	// release, if set, is Options.Launch's: called once the process is reaped.
	release func()

	mu       sync.Mutex
	w        *worker     // guarded by mu; set once its state machine runs
	started  time.Time   // guarded by mu
	deadline *time.Timer // guarded by mu; the current job's timeout
	reaped   bool        // guarded by mu; once set, the pid and its group may belong to someone else
	stopped  *Reason     // guarded by mu; why relayd stopped it, nil if it did not
	killTime *time.Timer // guarded by mu; the SIGKILL that follows a SIGTERM
}

// tracked holds every live worker of every Host in this process, by pid. A sweep treats any
// child not in it as left behind. fork holds the read lock from fork until the pid is recorded,
// so a sweep (write lock) never sees a worker that is not yet tracked.
var tracked struct {
	sync.RWMutex
	procs map[int]*proc
}

func fork(p *proc) error {
	tracked.RLock()
	defer tracked.RUnlock()
	if err := p.cmd.Start(); err != nil {
		return err
	}
	p.pid = p.cmd.Process.Pid
	p.started = time.Now()
	trackedMu.Lock()
	if tracked.procs == nil {
		tracked.procs = make(map[int]*proc)
	}
	tracked.procs[p.pid] = p
	trackedMu.Unlock()
	// Stop sets stopping before it lists the tracked workers, and this reads it after this
	// worker is listed: either Stop sees the worker or the worker sees the stop.
	if o := p.host.stopping.Load(); o != nil {
		p.stop(o.reason, o.grace)
	}
	return nil
}

// trackedMu orders writers of tracked.procs among the forks that share tracked's read lock.
var trackedMu sync.Mutex

func untrack(p *proc) {
	trackedMu.Lock()
	if tracked.procs[p.pid] == p {
		delete(tracked.procs, p.pid)
	}
	trackedMu.Unlock()
}

func trackedProcs() []*proc {
	trackedMu.Lock()
	defer trackedMu.Unlock()
	ps := make([]*proc, 0, len(tracked.procs))
	for _, p := range tracked.procs {
		ps = append(ps, p)
	}
	return ps
}

// wait blocks until the worker has exited, kills whatever is left in its process group while
// the zombie still holds the group's id, then reaps it.
func (p *proc) wait() syscall.WaitStatus {
	p.awaitExit()
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, p.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	ws := p.reap()
	if p.release != nil {
		p.release()
	}
	return ws
}

// reap kills what is left of the exited worker's group and reaps it.
func (p *proc) reap() syscall.WaitStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	killGroup(p.pid, syscall.SIGKILL)
	p.cmd.Wait()
	p.reaped = true
	if p.killTime != nil {
		p.killTime.Stop()
	}
	if p.deadline != nil {
		p.deadline.Stop()
	}
	untrack(p)
	if ps := p.cmd.ProcessState; ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
			return ws
		}
	}
	return 0
}

// awaitExit returns once the worker has exited, without reaping it. It waits on a pidfd through
// the runtime's poller, so a thousand live workers do not hold a thousand threads blocked in
// waitid; where pidfds are missing, the blocking waitid in wait does the waiting.
func (p *proc) awaitExit() {
	fd, err := unix.PidfdOpen(p.pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	rc.Read(func(fd uintptr) bool {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PIDFD, int(fd), &info, unix.WEXITED|unix.WNOWAIT|unix.WNOHANG, nil)
		// Without a state change WNOHANG leaves si_signo zero; any error ends the wait here too.
		return err != nil || info.Signo != 0
	})
}

// setDeadline arms the current job's timeout, or disarms it when d is zero. At expiry the
// process is stopped at once, from the timer (the worker's goroutine may be blocked writing to
// a worker that does not read), and fired is told.
func (p *proc) setDeadline(d time.Duration, fired chan<- struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.deadline != nil {
		p.deadline.Stop()
		p.deadline = nil
	}
	if d > 0 && !p.reaped {
		p.deadline = time.AfterFunc(d, func() {
			p.stop(Reason{Kind: ReasonTimeout}, p.host.killGrace())
			select {
			case fired <- struct{}{}:
			default:
			}
		})
	}
}

// stop signals the worker's process group: SIGTERM then SIGKILL after grace, or SIGKILL at once
// when grace is zero. The first reason given is the one its Exit reports.
func (p *proc) stop(reason Reason, grace time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reaped {
		return
	}
	if p.stopped == nil {
		p.stopped = &reason
	}
	if grace <= 0 {
		killGroup(p.pid, syscall.SIGKILL)
		return
	}
	killGroup(p.pid, syscall.SIGTERM)
	if p.killTime == nil {
		p.killTime = time.AfterFunc(grace, func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			if !p.reaped {
				killGroup(p.pid, syscall.SIGKILL)
			}
		})
	}
}

// stoppedFor reports why relayd stopped the worker, if it did and not for a protocol error
// (which classify reports with its own detail).
func (p *proc) stoppedFor() *Reason {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped == nil || p.stopped.Kind == ReasonProtocol {
		return nil
	}
	r := *p.stopped
	return &r
}

func (p *proc) closePipes() { closeAll(p.stderr) }

// killGroup signals the process group pgid. ESRCH means it is already gone.
func killGroup(pgid int, sig syscall.Signal) {
	if pgid > 0 {
		unix.Kill(-pgid, sig)
	}
}

// readProc reads a small /proc file into buf with plain system calls: os.ReadFile would also
// stat it and try to register it with the poller, a dozen calls where three do.
func readProc(path string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	return buf[:n], nil
}

// peakRSS returns the VmHWM of a live process in bytes, or 0.
func peakRSS(pid int) int64 {
	var buf [4096]byte
	b, err := readProc("/proc/"+strconv.Itoa(pid)+"/status", buf[:])
	if err != nil {
		return 0
	}
	_, rest, ok := bytes.Cut(b, []byte("VmHWM:"))
	if !ok {
		return 0
	}
	line, _, _ := bytes.Cut(rest, []byte("\n"))
	kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(string(line)), "kB")), 10, 64)
	if err != nil {
		return 0
	}
	return kb << 10
}

// sweeper is the backstop of the sweep that follows every worker's exit: once a second it
// looks at the children of every thread, and once more when the Host closes.
func (h *Host) sweeper() {
	defer h.bg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			h.sweep(true)
		case <-h.done:
			h.sweep(true)
			return
		}
	}
}

// sweep kills every child of this process that is not a tracked worker, then reaps it. Killing
// a leftover re-parents its own children here, so it repeats until none are found. full looks
// at every thread's children, not only the main thread's.
func (h *Host) sweep(full bool) {
	for range 64 {
		tracked.Lock()
		trackedMu.Lock()
		var left []int
		for _, pid := range children(full) {
			if _, ok := tracked.procs[pid]; !ok {
				unix.Kill(pid, syscall.SIGKILL)
				left = append(left, pid)
			}
		}
		trackedMu.Unlock()
		tracked.Unlock()
		if len(left) == 0 {
			return
		}
		for _, pid := range left {
			var ws unix.WaitStatus
			if _, err := unix.Wait4(pid, &ws, 0, nil); err == nil {
				h.log.Info("reaped leftover process", "pid", pid)
			}
		}
	}
}

// children lists the pids of this process's children: those of its main thread, where the
// kernel re-parents orphans to a subreaper, or with all, those of every thread (a child belongs
// to the thread that forked it).
func children(all bool) []int {
	tasks := []string{strconv.Itoa(os.Getpid())}
	if all {
		entries, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return nil
		}
		tasks = tasks[:0]
		for _, e := range entries {
			tasks = append(tasks, e.Name())
		}
	}
	var pids []int
	buf := make([]byte, 64<<10)
	for _, t := range tasks {
		b, err := readProc("/proc/self/task/"+t+"/children", buf)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
