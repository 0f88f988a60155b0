package supervisor

import (
	"bytes"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Usage is what one message cost its worker, as an AWS Lambda REPORT line gives it per
// invocation. It is read from /proc when the reply arrives, while the worker still waits on its
// stdin, so the process is there to be read.
type Usage struct {
	// Wall is the time from writing the request to reading its reply.
	Wall time.Duration
	// CPU is the CPU time the worker used for the message: since its fork for its first
	// message (its start is part of the cost), since its previous reply for a reused worker.
	CPU time.Duration
	// MaxRSS is the worker's peak resident set in bytes so far (VmHWM): a reused worker's peak
	// may come from an earlier message. 0 when it could not be read.
	MaxRSS int64
}

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ, 100 on every Linux
// architecture Go supports).
const clockTick = 10 * time.Millisecond

// cpuTime returns the CPU time of a live process, or -1. It reads the process's CPU-time clock
// (clock_gettime of the clock clock_getcpuclockid(3) names): one system call, in nanoseconds,
// threads that have ended included. Where that fails it falls back to /proc: the larger of the
// user plus system time of /proc/PID/stat, which counts in clock ticks of 10 ms (too coarse for
// a worker that runs a millisecond) but includes threads that have ended, and the sum of its
// threads' run times in /proc/PID/task/*/schedstat, in nanoseconds. The clock is preferred
// because every /proc file of a worker that relayd opens leaves dentries that the kernel must
// walk and drop when the worker is reaped, which on a busy machine is the dearest part of
// relayd's work per message.
func cpuTime(pid int) time.Duration {
	var ts unix.Timespec
	// A pid the clock id cannot hold (Linux pids stay below 2^22) goes to /proc, to fail there.
	if pid > 0 && pid < 1<<28 && unix.ClockGettime(processCPUClock(pid), &ts) == nil {
		return time.Duration(ts.Nano())
	}
	ticks := statCPU(pid)
	return max(ticks, schedCPU(pid))
}

// processCPUClock is the clock id of the CPU time of process pid, as the C library's
// clock_getcpuclockid computes it: the kernel's MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED).
func processCPUClock(pid int) int32 {
	const cpuclockSched = 2
	return int32(^pid)<<3 | cpuclockSched
}

// schedCPU sums the time on CPU of every live thread of pid from schedstat, or returns -1.
func schedCPU(pid int) time.Duration {
	dir := "/proc/" + strconv.Itoa(pid) + "/task/"
	f, err := os.Open(dir)
	if err != nil {
		return -1
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return -1
	}
	var total time.Duration
	var buf [128]byte
	for _, n := range names {
		b, err := readProc(dir+n+"/schedstat", buf[:])
		if err != nil {
			continue // The thread ended; stat counts it.
		}
		first, _, _ := bytes.Cut(bytes.TrimSpace(b), []byte(" "))
		ns, err := strconv.ParseInt(string(first), 10, 64)
		if err != nil {
			return -1
		}
		total += time.Duration(ns)
	}
	return total
}

// statCPU returns the user plus system CPU time of pid from /proc/PID/stat, or -1.
func statCPU(pid int) time.Duration {
	var buf [1024]byte
	b, err := readProc("/proc/"+strconv.Itoa(pid)+"/stat", buf[:])
	if err != nil {
		return -1
	}
	// The command name may hold spaces and parentheses; the fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 of proc(5) (state); utime and stime are fields 14 and 15.
	if len(fields) < 13 {
		return -1
	}
	utime, err1 := strconv.ParseInt(string(fields[11]), 10, 64)
	stime, err2 := strconv.ParseInt(string(fields[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(utime+stime) * clockTick
}

// measure fills in job's Usage as its reply arrives. cpuBefore is the CPU time the worker had
// used when its previous reply arrived (0 for its first message); it returns the CPU time now,
// for the next one.
func measure(pid int, job *Job, cpuBefore time.Duration) time.Duration {
	now := cpuTime(pid)
	job.Usage = Usage{Wall: max(0, job.Timing.Replied.Sub(job.Timing.Written)), MaxRSS: peakRSS(pid)}
	if now >= 0 {
		job.Usage.CPU = max(0, now-cpuBefore)
	}
	return max(now, 0)
}
