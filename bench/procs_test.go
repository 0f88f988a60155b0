package main

import (
	"io"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMain lets the test binary stand in for a worker: with RELAY_BENCH_BURN=D it burns D of
// CPU time, then, with RELAY_BENCH_HOLD=1, waits for the end of its stdin and burns D again.
func TestMain(m *testing.M) {
	if d, err := time.ParseDuration(os.Getenv("RELAY_BENCH_BURN")); err == nil {
		burn(d)
		if os.Getenv("RELAY_BENCH_HOLD") == "1" {
			io.Copy(io.Discard, os.Stdin)
			burn(d)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// burn spins until the process has used d more of CPU time.
func burn(d time.Duration) {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	for end := cpu() + d; cpu() < end; {
	}
}

// burner starts the test binary as a child that burns d of CPU time; hold keeps it alive,
// after that, until its stdin is closed (a spare worker waiting for its message).
func burner(t *testing.T, d time.Duration, hold bool) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = []string{"RELAY_BENCH_BURN=" + d.String()}
	if hold {
		cmd.Env = append(cmd.Env, "RELAY_BENCH_HOLD=1")
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, stdin
}

func cpuOf(cmd *exec.Cmd) time.Duration {
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// TestChildrenCPU checks the accounting of a server's children's CPU time, with the test
// process as the server: children reaped between two readings, and children alive at one
// reading and reaped before the next, as relayd's spares are. Every difference of two readings
// must be what the children used in between, never negative; cutime counts in clock ticks, so
// each reading may be up to two ticks short.
func TestChildrenCPU(t *testing.T) {
	const d = 30 * time.Millisecond
	const slack = 2 * clockTick
	children := func(u usage) time.Duration { return u.children + u.live }
	self := os.Getpid()

	u0 := readUsage(self)
	var reaped []*exec.Cmd
	for range 3 {
		cmd, stdin := burner(t, d, false)
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
		reaped = append(reaped, cmd)
	}
	type spare struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
	}
	var spares []spare
	for range 3 {
		cmd, stdin := burner(t, d, true)
		spares = append(spares, spare{cmd, stdin})
	}
	t.Cleanup(func() {
		for _, s := range spares {
			s.stdin.Close()
			s.cmd.Wait()
		}
	})
	// Wait until the spares have burnt their first share: each is then blocked on stdin.
	deadline := time.Now().Add(30 * time.Second)
	for _, s := range spares {
		for threadsCPU(s.cmd.Process.Pid) < d {
			if time.Now().After(deadline) {
				t.Fatalf("spare %d did not burn %v within 30s", s.cmd.Process.Pid, d)
			}
			time.Sleep(time.Millisecond)
		}
	}
	u1 := readUsage(self)
	for _, s := range spares {
		s.stdin.Close()
		if err := s.cmd.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	u2 := readUsage(self)

	var sumReaped, sumSpares time.Duration
	for _, c := range reaped {
		sumReaped += cpuOf(c)
	}
	for _, s := range spares {
		sumSpares += cpuOf(s.cmd)
	}
	check := func(name string, got, want time.Duration) {
		t.Helper()
		if got < want-slack || got > want+slack {
			t.Errorf("%s: children's CPU %v, want %v ± %v", name, got, want, slack)
		}
	}
	// Between u0 and u1: three children reaped, three spares alive with half their work done.
	if delta := children(u1) - children(u0); delta < 0 {
		t.Errorf("children's CPU went down from %v to %v", children(u0), children(u1))
	}
	check("first interval", children(u1)-children(u0), sumReaped+u1.live)
	// Between u1 and u2 the spares did their second half and were reaped: their CPU moves from
	// live to children, and only the second half counts.
	if u2.live != 0 {
		t.Errorf("live children's CPU %v after every child was reaped, want 0", u2.live)
	}
	check("second interval", children(u2)-children(u1), sumSpares-u1.live)
	check("whole", children(u2)-children(u0), sumReaped+sumSpares)
}

// TestReadUsageZombie checks that a reading with a zombie child, whose CPU time is in neither
// /proc's live threads nor cutime, is reported as inconsistent, and that it is once the child
// is reaped.
func TestReadUsageZombie(t *testing.T) {
	cmd, stdin := burner(t, time.Millisecond, false)
	stdin.Close()
	deadline := time.Now().Add(30 * time.Second)
	for procState(cmd.Process.Pid) != 'Z' {
		if time.Now().After(deadline) {
			cmd.Wait()
			t.Fatalf("child %d did not exit within 30s", cmd.Process.Pid)
		}
		time.Sleep(time.Millisecond)
	}
	if _, stable := readUsageOnce(os.Getpid()); stable {
		t.Error("a reading with a zombie child is consistent, want inconsistent")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, stable := readUsageOnce(os.Getpid()); !stable {
		t.Error("a reading without children is inconsistent")
	}
}

// TestOwnCPU checks that the CPU time of threads that ended between two readings counts: relayd's
// sandbox forks every worker from a thread of its own, which ends with the worker.
func TestOwnCPU(t *testing.T) {
	const d = 40 * time.Millisecond
	self := os.Getpid()
	u0 := readUsage(self)
	// Each goroutine keeps its thread locked to the end, so the thread ends with it.
	var wg sync.WaitGroup
	var burnt [3]time.Duration
	for i := range burnt {
		wg.Go(func() {
			runtime.LockOSThread()
			start := threadCPU()
			for threadCPU()-start < d {
			}
			burnt[i] = threadCPU() - start
		})
	}
	wg.Wait()
	u1 := readUsage(self)
	var sum time.Duration
	for _, b := range burnt {
		sum += b
	}
	if got := u1.sub(u0).cpu; got < sum-2*clockTick {
		t.Errorf("own CPU grew by %v while threads that then ended burnt %v", got, sum)
	}
}

// threadCPU is the calling thread's CPU time.
func threadCPU() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}
