package supervisor

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"relayd/internal/testbin"
	"relayd/ipc"
)

// script writes an executable shell script that stands in for a worker with exact behaviour.
func script(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "w.sh")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

const readyLine = `echo '{"ready":true,"protocol":1,"pid":'$$'}'`

func newHost(t *testing.T, opts Options) *Host {
	t.Helper()
	if opts.KillGrace == 0 {
		opts.KillGrace = 200 * time.Millisecond
	}
	h, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// spawnOne runs one job and returns its Exit and the reply, if any.
func spawnOne(t *testing.T, h *Host, job *Job) (Exit, *ipc.WorkerReply) {
	t.Helper()
	var mu sync.Mutex
	var reply *ipc.WorkerReply
	job.OnReply = func(pid int, r ipc.WorkerReply) {
		mu.Lock()
		reply = &r
		mu.Unlock()
	}
	h.Spawn(job)
	select {
	case ev := <-h.Events():
		mu.Lock()
		defer mu.Unlock()
		if ev.Exit == nil {
			t.Fatalf("event without an EXIT: %+v", ev)
		}
		return *ev.Exit, reply
	case <-time.After(10 * time.Second):
		t.Fatal("no EXIT event within 10s")
	}
	panic("unreachable")
}

func TestExitEvents(t *testing.T) {
	tests := []struct {
		name       string
		path       string
		args       []string
		timeout    time.Duration
		wantReason string
		wantCode   int
		wantSignal syscall.Signal
		wantReply  bool
		wantErr    error
	}{
		{name: "normal", path: workerBin, args: []string{"--delay=0s"}, wantReason: "normal", wantCode: 0, wantReply: true},
		{name: "exit status", path: script(t, readyLine+"\nexit 3"), wantReason: "exit(3)", wantCode: 3},
		{name: "signal", path: script(t, readyLine+"\nkill -SEGV $$"), wantReason: "signal(SIGSEGV)", wantCode: -1, wantSignal: syscall.SIGSEGV},
		{name: "no reply", path: script(t, readyLine+"\nexit 0"), wantReason: "protocol", wantCode: 0, wantErr: ErrNoReply},
		{name: "garbage ready line", path: script(t, "echo hello\nexec sleep 5"), wantReason: "protocol", wantCode: -1, wantSignal: syscall.SIGKILL},
		{name: "wrong protocol version", path: script(t, `echo '{"ready":true,"protocol":2,"pid":1}'; read x; sleep 5`), wantReason: "protocol", wantCode: -1, wantSignal: syscall.SIGKILL},
		{name: "reply for another id", path: script(t, readyLine+"\n"+`echo '{"id":"nope","data":"X"}'`+"\nexec sleep 5"), wantReason: "protocol", wantCode: -1, wantSignal: syscall.SIGKILL},
		{name: "timeout", path: script(t, readyLine+"\nexec sleep 30"), timeout: 100 * time.Millisecond, wantReason: "timeout", wantCode: -1, wantSignal: syscall.SIGTERM},
		{name: "timeout ignoring SIGTERM", path: script(t, "trap '' TERM\n"+readyLine+"\nsleep 30"), timeout: 100 * time.Millisecond, wantReason: "timeout", wantCode: -1, wantSignal: syscall.SIGKILL},
		{name: "spawn failed", path: filepath.Join(t.TempDir(), "missing"), wantReason: "spawn_failed(ENOENT)", wantCode: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHost(t, Options{Path: tt.path, Args: tt.args})
			ex, reply := spawnOne(t, h, &Job{ID: "7", Topic: "echo", Data: json.RawMessage(`"héllo"`), Attempt: 1, Timeout: tt.timeout})
			if got := ex.Reason.String(); got != tt.wantReason {
				t.Errorf("reason = %q, want %q (exit %+v, err %v)", got, tt.wantReason, ex, ex.Err)
			}
			if ex.ExitCode != tt.wantCode || ex.Signal != tt.wantSignal {
				t.Errorf("exit code, signal = %d, %v; want %d, %v", ex.ExitCode, ex.Signal, tt.wantCode, tt.wantSignal)
			}
			if got := reply != nil; got != tt.wantReply || ex.Replied != tt.wantReply {
				t.Errorf("replied = %v (event says %v), want %v", got, ex.Replied, tt.wantReply)
			}
			if tt.wantErr != nil && !errors.Is(ex.Err, tt.wantErr) {
				t.Errorf("err = %v, want %v", ex.Err, tt.wantErr)
			}
			if tt.wantReason == "spawn_failed(ENOENT)" {
				if ex.PID != 0 {
					t.Errorf("pid = %d for a worker that never started", ex.PID)
				}
				return
			}
			if ex.PID <= 0 {
				t.Fatalf("pid = %d", ex.PID)
			}
			if err := unix.Kill(ex.PID, 0); !errors.Is(err, unix.ESRCH) {
				t.Errorf("worker %d still exists after its EXIT event (kill 0: %v)", ex.PID, err)
			}
			if reply != nil {
				if got, want := string(reply.Data), `"HÉLLO"`; got != want {
					t.Errorf("reply = %s, want %s", got, want)
				}
				if ex.PeakRSS <= 0 {
					t.Errorf("peak RSS = %d, want > 0 for a worker that replied", ex.PeakRSS)
				}
			}
		})
	}
}

func TestPipelinedJobsGetDistinctWorkers(t *testing.T) {
	h := newHost(t, Options{Path: workerBin, Args: []string{"--delay=50ms"}})
	var mu sync.Mutex
	replied := map[int]string{}
	for i := range 3 {
		h.Spawn(&Job{ID: strconv.Itoa(i), Topic: "echo", Data: json.RawMessage(`"m` + strconv.Itoa(i) + `"`), Attempt: 1,
			OnReply: func(pid int, r ipc.WorkerReply) { mu.Lock(); replied[pid] = string(r.Data); mu.Unlock() }})
	}
	exited := map[int]bool{}
	for range 3 {
		ex := recvEvent(t, h, 10*time.Second, "a worker's EXIT").Exit
		if ex.Reason.Kind != ReasonNormal {
			t.Errorf("worker %d ended %s: %v", ex.PID, ex.Reason, ex.Err)
		}
		exited[ex.PID] = true
	}
	mu.Lock()
	defer mu.Unlock()
	if len(replied) != 3 || len(exited) != 3 {
		t.Fatalf("replies from %d pids, exits of %d pids; want 3 and 3", len(replied), len(exited))
	}
	for pid := range replied {
		if !exited[pid] {
			t.Errorf("pid %d replied but has no EXIT event", pid)
		}
		if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
			t.Errorf("worker %d still exists", pid)
		}
	}
}

// TestLeftoversAreReaped checks that what a worker leaves behind — a child in its process
// group and a grandchild in a session of its own — is killed and reaped once it exits.
func TestLeftoversAreReaped(t *testing.T) {
	pids := filepath.Join(t.TempDir(), "pids")
	body := readyLine + `
sleep 60 & echo $! >> ` + pids + `
setsid sleep 61 > /dev/null 2>&1 & echo $! >> ` + pids + `
read req
echo '{"id":"1","data":"ok"}'
`
	h := newHost(t, Options{Path: script(t, body), Subreaper: true})
	ex, reply := spawnOne(t, h, &Job{ID: "1", Topic: "echo", Data: json.RawMessage(`"x"`), Attempt: 1})
	if reply == nil || ex.Reason.Kind != ReasonNormal {
		t.Fatalf("exit = %s (%v), reply %v", ex.Reason, ex.Err, reply)
	}
	b, err := os.ReadFile(pids)
	if err != nil {
		t.Fatal(err)
	}
	left := strings.Fields(string(b))
	if len(left) != 2 {
		t.Fatalf("script recorded %q, want two pids", left)
	}
	// The sweep after the worker's exit must find them, not the once-a-second full sweep.
	deadline := time.Now().Add(500 * time.Millisecond)
	for _, s := range left {
		pid, _ := strconv.Atoi(s)
		for unix.Kill(pid, 0) == nil && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
			t.Errorf("leftover %d still exists (or is an unreaped zombie) 500ms after its worker exited", pid)
		}
	}
}

func TestStopKillsWorkers(t *testing.T) {
	h := newHost(t, Options{Path: script(t, "trap '' TERM\n"+readyLine+"\nsleep 30"), KillGrace: 100 * time.Millisecond})
	for i := range 3 {
		h.Spawn(&Job{ID: strconv.Itoa(i), Topic: "echo", Data: json.RawMessage(`"x"`), Attempt: 1})
	}
	// The workers ignore SIGTERM once their trap is set, which is before their ready line.
	waitFor(t, "three ready workers", func() bool {
		ws := h.Workers()
		return len(ws) == 3 && ws[0].Ready && ws[1].Ready && ws[2].Ready
	})
	start := time.Now()
	h.Stop(Reason{Kind: ReasonKilled}, 100*time.Millisecond)
	for range 3 {
		ex := recvEvent(t, h, 10*time.Second, "a stopped worker's EXIT").Exit
		if got, want := ex.Reason.String(), "killed"; got != want {
			t.Errorf("reason = %q, want %q", got, want)
		}
		if ex.Signal != syscall.SIGKILL {
			t.Errorf("signal = %v, want SIGKILL after the grace period (SIGTERM is ignored)", ex.Signal)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stopping took %v", d)
	}
}

func TestAttemptReachesWorker(t *testing.T) {
	h := newHost(t, Options{Path: script(t, readyLine+"\nread req\n"+`echo '{"id":"1","data":"'$RELAY_ATTEMPT'"}'`)})
	_, reply := spawnOne(t, h, &Job{ID: "1", Topic: "echo", Data: json.RawMessage(`"x"`), Attempt: 3})
	if reply == nil || string(reply.Data) != `"3"` {
		t.Fatalf("reply = %v, want data 3 from RELAY_ATTEMPT", reply)
	}
}

func TestBackoff(t *testing.T) {
	b := Backoff{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond, Multiplier: 2, Jitter: 0.5}
	tests := []struct {
		n    int
		rnd  float64
		want time.Duration
	}{
		{1, 0, 10 * time.Millisecond},
		{2, 0, 20 * time.Millisecond},
		{4, 0, 80 * time.Millisecond},
		{5, 0, 100 * time.Millisecond},
		{50, 0, 100 * time.Millisecond},
		{2, 0.999999, 10 * time.Millisecond},
		{3, 0.5, 30 * time.Millisecond},
	}
	for _, tt := range tests {
		got := b.Delay(tt.n, func() float64 { return tt.rnd }).Round(time.Millisecond)
		if got != tt.want {
			t.Errorf("Delay(%d, rnd %v) = %v, want %v", tt.n, tt.rnd, got, tt.want)
		}
	}
}

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

func TestSpares(t *testing.T) {
	h := newHost(t, Options{Path: workerBin, Args: []string{"--delay=0s"}, Spares: 2})
	waitFor(t, "two spares", func() bool { return h.Idle() == 2 })
	if got := h.Spawned(); got != 2 {
		t.Fatalf("spawned %d before any job, want the 2 spares", got)
	}
	ex, reply := spawnOne(t, h, &Job{ID: "1", Topic: "echo", Data: json.RawMessage(`"spare"`), Attempt: 1})
	if reply == nil || ex.Reason.Kind != ReasonNormal {
		t.Fatalf("job on a spare: %s, %v", ex.Reason, ex.Err)
	}
	waitFor(t, "the spare to be replaced", func() bool { return h.Idle() == 2 && h.Spawned() == 3 })

	// A retry never goes to a spare: its worker must see RELAY_ATTEMPT=2.
	before := h.Spawned()
	spawnOne(t, h, &Job{ID: "2", Topic: "echo", Data: json.RawMessage(`"retry"`), Attempt: 2})
	if got := h.Spawned(); got != before+1 {
		t.Errorf("a retry spawned %d workers, want 1 fresh one", got-before)
	}

	// A spare that dies while it waits is an EXIT event like any other, and is replaced.
	waitFor(t, "two spares again", func() bool { return h.Idle() == 2 })
	before = h.Spawned()
	var victim int
	for _, p := range trackedProcs() {
		if p.host == h {
			victim = p.pid
			break
		}
	}
	if err := unix.Kill(victim, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev := recvEvent(t, h, 10*time.Second, "the killed spare's EXIT")
	if ev.Job != nil || ev.Exit == nil || ev.Exit.Signal != unix.SIGKILL || ev.PID != victim {
		t.Fatalf("event for a killed spare = %+v, want an EXIT without a job", ev)
	}
	waitFor(t, "the dead spare to be replaced", func() bool { return h.Idle() == 2 && h.Spawned() == before+1 })
}

func TestMaxRequests(t *testing.T) {
	h := newHost(t, Options{Path: workerBin, Args: []string{"--delay=0s"}, MaxRequests: 3, MaxIdle: 1})
	var pids []int
	for i := range 4 {
		var pid int
		job := &Job{ID: strconv.Itoa(i), Topic: "echo", Data: json.RawMessage(`"x"`), Attempt: 1,
			OnReply: func(p int, r ipc.WorkerReply) { pid = p }}
		h.Spawn(job)
		ev := recvEvent(t, h, 10*time.Second, "the job's end")
		if ev.Job != job || !ev.Replied {
			t.Fatalf("job %d: event %+v", i, ev)
		}
		// The third job is the worker's last: its event carries the EXIT.
		if wantExit := i == 2; (ev.Exit != nil) != wantExit {
			t.Errorf("job %d: exit = %+v, want one only after the third job", i, ev.Exit)
		}
		if ev.Exit != nil && (ev.Exit.Reason.Kind != ReasonNormal || ev.Exit.Served != 3) {
			t.Errorf("exit after three jobs = %s, served %d; want normal, 3", ev.Exit.Reason, ev.Exit.Served)
		}
		pids = append(pids, pid)
	}
	if pids[0] != pids[1] || pids[1] != pids[2] || pids[3] == pids[0] {
		t.Errorf("pids = %v, want one worker for three jobs and a new one for the fourth", pids)
	}
}

func TestStderrForwarding(t *testing.T) {
	tests := []struct {
		name, body string
		check      func(t *testing.T, log string)
	}{
		{
			name: "lines with pid",
			body: "echo one >&2; echo two >&2",
			check: func(t *testing.T, log string) {
				if n := strings.Count(log, "worker stderr"); n != 2 || !strings.Contains(log, "line=one") || !strings.Contains(log, "pid=") {
					t.Errorf("want two forwarded lines with the pid, got:\n%s", log)
				}
			},
		},
		{
			name: "flood is rate limited and counted",
			body: "i=0; while [ $i -lt 500 ]; do echo line $i >&2; i=$((i+1)); done",
			check: func(t *testing.T, log string) {
				n := strings.Count(log, "[INFO]  worker stderr:")
				if n < 100 || n > 150 {
					t.Errorf("forwarded %d of 500 lines, want about the burst of 100", n)
				}
				if !strings.Contains(log, "worker stderr lines dropped") || !strings.Contains(log, fmt.Sprintf("dropped=%d", 500-n)) {
					t.Errorf("want the drop counted (%d):\n%s", 500-n, log[max(0, len(log)-400):])
				}
			},
		},
		{
			name: "long line is capped",
			body: "head -c 10000 /dev/zero | tr '\\\\0' x >&2; echo >&2",
			check: func(t *testing.T, log string) {
				if !strings.Contains(log, "(cut)") || strings.Contains(log, strings.Repeat("x", 4097)) {
					t.Errorf("want the line cut at 4 KiB:\n%.300s", log)
				}
			},
		},
		{
			name: "panic trace kept whole",
			body: "printf 'panic: boom\\n\\ngoroutine 1 [running]:\\nmain.main()\\n\\t/src/main.go:5 +0x1d\\n' >&2",
			check: func(t *testing.T, log string) {
				if strings.Count(log, "worker crash report") != 1 || !strings.Contains(log, "main.main()") || !strings.Contains(log, "panic: boom") {
					t.Errorf("want one crash report with the whole trace:\n%s", log)
				}
				if strings.Contains(log, "worker stderr:") {
					t.Errorf("trace lines were also forwarded one by one:\n%s", log)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf testbin.SyncBuffer
			log := hclog.New(&hclog.LoggerOptions{Output: &buf, DisableTime: true})
			h := newHost(t, Options{Path: script(t, tt.body+"\n"+readyLine+"\nread req\n"+`echo '{"id":"1","data":"ok"}'`), Logger: log})
			spawnOne(t, h, &Job{ID: "1", Topic: "echo", Data: json.RawMessage(`"x"`), Attempt: 1})
			tt.check(t, buf.String())
		})
	}
}

// TestSparesComeBack starts a Host whose worker is missing, so its spares fail; once the worker
// is there and a message starts one, the spares are refilled.
func TestSparesComeBack(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "worker")
	h := newHost(t, Options{Path: path, Args: []string{"--delay=0s"}, Spares: 2})
	for range 2 {
		if ev := recvEvent(t, h, 10*time.Second, "a spare failing to start"); ev.Exit == nil || ev.Exit.Reason.Kind != ReasonSpawnFailed {
			t.Fatalf("event %+v, want a spare that could not start", ev)
		}
	}
	if err := os.Symlink(workerBin, path); err != nil {
		t.Fatal(err)
	}
	if _, reply := spawnOne(t, h, &Job{ID: "1", Topic: "echo", Data: json.RawMessage(`"back"`), Attempt: 1}); reply == nil {
		t.Fatal("no reply once the worker exists")
	}
	waitFor(t, "the spares to come back", func() bool { return h.Idle() == 2 })
}

// TestCPUTime checks that the CPU time read from /proc grows with work done, in steps finer
// than the 10 ms clock tick of /proc/PID/stat.
func TestCPUTime(t *testing.T) {
	pid := os.Getpid()
	before := cpuTime(pid)
	if before < 0 {
		t.Fatal("cannot read this process's CPU time")
	}
	// Spin until the kernel has counted at least a millisecond more; on a loaded machine that
	// may take a while of wall time, so the bound is generous.
	deadline := time.Now().Add(10 * time.Second)
	var after time.Duration
	for after = cpuTime(pid); after-before < time.Millisecond; after = cpuTime(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("CPU time grew by %v in 10s of spinning, want at least 1ms", after-before)
		}
		for i := 0; i < 100000; i++ {
			_ = i * i
		}
	}
	if d := after - before; d > time.Second {
		t.Errorf("CPU time grew by %v while spinning for about a millisecond", d)
	}
	if got := statCPU(pid); got < 0 || got > after+10*time.Millisecond {
		t.Errorf("statCPU = %v, want between 0 and %v", got, after)
	}
	if cpuTime(1<<30) != -1 {
		t.Error("cpuTime of no process, want -1")
	}
}

// TestCPUTimeOfChild checks cpuTime of another process against what the kernel reports when
// it is reaped: a shell that counts for a while, says so, and waits while it is read.
func TestCPUTimeOfChild(t *testing.T) {
	cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done; echo counted; read x; exit 0")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	// The read ends when the shell has counted, or fails when it dies; the test's own timeout
	// bounds it otherwise.
	if _, err := bufio.NewReader(stdout).ReadString('\n'); err != nil {
		t.Fatalf("reading the child's line: %v", err)
	}
	read := cpuTime(cmd.Process.Pid)
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	reaped := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	if read <= 0 || read > reaped+time.Millisecond || reaped-read > 5*time.Millisecond {
		t.Errorf("cpuTime read %v as the child waited; rusage says %v at its end", read, reaped)
	}
}
