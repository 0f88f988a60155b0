package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"relayd/ipc"
)

// Options configures a Host.
type Options struct {
	// Name is the host's name in replies ("processes", as in the tutorial).
	Name string
	// Path is the worker executable; Args are passed to every worker.
	Path string
	Args []string
	// Env is the worker's whole environment. relayd builds it from scratch; RELAY_ATTEMPT is added
	// per job.
	Env []string
	// Limits are applied with prlimit after the worker starts and before its request is written.
	Limits []Rlimit
	// Credential, when set, starts workers as another user.
	Credential *syscall.Credential
	// KillGrace is the time between SIGTERM and SIGKILL when a worker is stopped, and how long
	// output of an exited worker is drained before its pipes are closed.
	KillGrace time.Duration
	// MaxLineBytes bounds a worker's protocol lines; StderrLineBytes caps forwarded stderr lines.
	MaxLineBytes    int
	StderrLineBytes int
	// Subreaper makes the calling process a child subreaper and kills and reaps every process a
	// worker leaves behind. Only one Host per process should set it.
	Subreaper bool
	// Spares is how many ready workers to keep waiting for a message, so that a message does
	// not wait for a fork. A spare serves first attempts only; retries get a fresh worker.
	Spares int
	// MaxRequests is how many messages one worker serves before it is replaced (PHP-FPM's
	// pm.max_requests); MaxIdle bounds how many such workers wait for more. Default 1: a fresh
	// worker per message.
	MaxRequests int
	MaxIdle     int
	// OnReady, if set, is told how long each worker took from fork to its ready line.
	OnReady func(time.Duration)
	Logger  hclog.Logger

	// Transport carries the protocol to each worker; nil means Stdio (NDJSON on stdin and
	// stdout) with MaxLineBytes.
	Transport Transport
	// Launch, if set, forks each worker in place of the Host's spawner threads: the pre-exec
	// stage of a sandbox. It gets the complete command (path, arguments, environment, process
	// group, Pdeathsig, credential, the transport's descriptors and stderr) and may change it,
	// then must call fork exactly once — from an OS thread it owns and keeps until release is
	// called, since Pdeathsig and any per-thread confinement follow the thread that forked —
	// and return fork's error. release, if not nil, is called once the worker is reaped (or at
	// once if the fork failed). An error fails the start as spawn_failed.
	Launch func(cmd *exec.Cmd, fork func() error) (release func(), err error)
}

// Job is one request for a worker process.
type Job struct {
	ID      string
	Topic   string
	Data    json.RawMessage
	Attempt int
	// Timeout bounds the job; at expiry its worker is stopped with ReasonTimeout. Zero: none.
	Timeout time.Duration
	// OnReply is called once, from the worker's own goroutine, when the worker answers.
	OnReply func(pid int, reply ipc.WorkerReply)
	// Tag is the caller's own; the Job comes back in its Event.
	Tag any
	// Timing is filled in by the Host as the job goes; read it after the job's Event.
	Timing Timing
	// Usage is what the job cost its worker, filled in before OnReply is called.
	Usage Usage
}

// Timing records when a job's steps happened, to explain a slow answer.
type Timing struct {
	Forked  time.Time // the worker was forked (for a spare, before the job existed)
	Ready   time.Time // its ready line arrived
	Written time.Time // the request was written to it
	Replied time.Time // its reply arrived
}

// Event reports the end of a job, the end of a worker process, or both at once (the usual
// case: one job per worker).
type Event struct {
	PID int
	// Job is the job that ended; nil when a worker ended with no job (a spare).
	Job *Job
	// Replied reports that Job got its reply.
	Replied bool
	// Exit is the worker's EXIT; nil when the worker lives on to serve another job.
	Exit *Exit
}

// Host owns worker processes: it starts them, talks the worker protocol with them, and reports
// each job's and each process's end as an Event. It is the tutorial's "processes" host.
type Host struct {
	opts    Options
	log     hclog.Logger
	events  chan Event
	spawnq  chan spawnRequest
	done    chan struct{}
	pool    pool
	workers sync.WaitGroup
	bg      sync.WaitGroup // spawner threads, the sweeper and the spare refiller
	spawned atomic.Uint64
	spec    atomic.Pointer[WorkerSpec]
	mu      sync.Mutex  // orders the refiller's forks before Close's wait
	closed  atomic.Bool // set under mu
	// stopping is set by Stop: every worker forked from then on is stopped as soon as it is
	// forked (checked in fork), so a worker between Spawn and fork cannot outlive a Stop.
	stopping atomic.Pointer[stopOrder]
}

// stopOrder is how Stop stops workers.
type stopOrder struct {
	reason Reason
	grace  time.Duration
}

// New starts a Host. Close releases it.
func New(opts Options) (*Host, error) {
	if opts.Name == "" {
		opts.Name = "processes"
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.MaxLineBytes <= 0 {
		opts.MaxLineBytes = 8 << 20
	}
	if opts.StderrLineBytes <= 0 {
		opts.StderrLineBytes = 4 << 10
	}
	if opts.MaxRequests < 1 {
		opts.MaxRequests = 1
	}
	if opts.Subreaper {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return nil, fmt.Errorf("becoming a child subreaper: %w", err)
		}
	}
	idleCap := opts.Spares
	if opts.MaxRequests > 1 {
		idleCap += max(opts.MaxIdle, 1)
	}
	if opts.Transport == nil {
		opts.Transport = Stdio{MaxLineBytes: opts.MaxLineBytes}
	}
	h := &Host{
		opts:   opts,
		log:    opts.Logger,
		events: make(chan Event, 1024),
		spawnq: make(chan spawnRequest),
		done:   make(chan struct{}),
	}
	h.pool = pool{h: h, spares: opts.Spares, cap: idleCap, refillc: make(chan struct{}, 1)}
	h.spec.Store(&WorkerSpec{Args: opts.Args, Env: opts.Env, Limits: opts.Limits, KillGrace: opts.KillGrace})
	// Pdeathsig fires when the thread that forked the child ends, not the process, so workers
	// are forked only from threads that live as long as the Host.
	n := max(runtime.GOMAXPROCS(0), 2)
	h.bg.Add(n)
	for range n {
		go h.spawner()
	}
	if opts.Subreaper {
		h.bg.Add(1)
		go h.sweeper()
	}
	if opts.Spares > 0 {
		h.bg.Add(1)
		go h.pool.refiller()
		h.pool.refill()
	}
	return h, nil
}

// WorkerSpec is what a Host may change about the workers it starts from now on.
type WorkerSpec struct {
	Args      []string
	Env       []string
	Limits    []Rlimit
	KillGrace time.Duration
}

// Reconfigure applies spec to workers started from now on (and KillGrace to every stop from
// now on); running workers keep what they were started with. Spares paused because one could
// not start are tried again: the new settings may be what they lacked.
func (h *Host) Reconfigure(spec WorkerSpec) {
	h.spec.Store(&spec)
	h.pool.resume()
}

func (h *Host) killGrace() time.Duration { return h.spec.Load().KillGrace }

// Name is the host's name, shown in replies as the worker's host.
func (h *Host) Name() string { return h.opts.Name }

// Events delivers one Event per job and per worker process. The owner must keep receiving
// until every job it spawned has been reported.
func (h *Host) Events() <-chan Event { return h.events }

// Spawned counts worker processes started so far.
func (h *Host) Spawned() uint64 { return h.spawned.Load() }

// Idle counts workers that are ready and wait for a job (spares included).
func (h *Host) Idle() int { return h.pool.len() }

// Spawn hands job to a worker and returns at once: to an idle one that is ready (a spare, or
// one that may serve more requests) if there is one and this is a first attempt, else to a
// freshly forked one. The job's end arrives as an Event, also when no worker could be started.
func (h *Host) Spawn(job *Job) {
	if job.Attempt <= 1 {
		for {
			w := h.pool.take()
			if w == nil {
				break
			}
			if w.assign(job) {
				return
			}
		}
	}
	h.workers.Add(1)
	go h.life(job, false)
}

// Stop stops every live worker with reason: SIGTERM to its process group, then SIGKILL after
// grace (at once when grace is zero). The Host is stopping from then on: a worker forked later
// (for a job spawned before or after) is stopped the same way as soon as it is forked, and no
// spare is forked again. The first Stop's reason and grace are the ones that last.
func (h *Host) Stop(reason Reason, grace time.Duration) {
	h.stopping.CompareAndSwap(nil, &stopOrder{reason: reason, grace: grace})
	for _, p := range trackedProcs() {
		if p.host == h {
			p.stop(reason, grace)
		}
	}
}

// Close kills any worker still alive, waits for every worker, spawner and sweeper goroutine to
// end, and reaps what the workers left behind. Events not yet received are discarded.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed.Load() {
		h.mu.Unlock()
		return nil
	}
	h.closed.Store(true)
	h.mu.Unlock()
	h.Stop(Reason{Kind: ReasonKilled}, 0)
	drained := make(chan struct{})
	go func() {
		for {
			select {
			case <-h.events:
			case <-drained:
				return
			}
		}
	}()
	h.workers.Wait()
	close(drained)
	close(h.done)
	close(h.spawnq)
	h.bg.Wait()
	return nil
}

// life is the life of one worker process: fork it, run its state machine, report its EXIT.
// job is its first job; a spare starts without one.
func (h *Host) life(job *Job, spare bool) {
	defer h.workers.Done()
	ex := &Exit{Started: time.Now(), ExitCode: -1}
	attempt := 1
	if job != nil {
		attempt = job.Attempt
	}
	p, conn, err := h.start(attempt)
	if err != nil {
		h.pool.spawnFailed(spare)
		ex.Reason = Reason{Kind: ReasonSpawnFailed, Errno: errnoOf(err)}
		ex.Err = err
		if p != nil {
			ex.PID = p.pid
			p.stop(ex.Reason, 0)
			p.wait()
			p.closePipes()
			conn.Close()
		}
		ex.Duration = time.Since(ex.Started)
		if spare {
			h.log.Warn("starting a spare worker", "error", err)
		}
		h.events <- Event{PID: ex.PID, Job: job, Exit: ex}
		return
	}
	ex.PID = p.pid
	newWorker(h, p, conn, ex, spare).run(job)
}

// start forks a worker, wires its transport and applies its limits. Where the process is
// forked: fork, in proc.go, on a spawner thread.
func (h *Host) start(attempt int) (*proc, Conn, error) {
	spec := h.spec.Load()
	cmd := exec.Command(h.opts.Path, spec.Args...)
	cmd.Env = append(slices.Clip(spec.Env), "RELAY_ATTEMPT="+strconv.Itoa(attempt))
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: h.opts.Credential,
	}
	p := &proc{host: h, cmd: cmd}
	conn, err := h.opts.Transport.Prepare(cmd)
	if err != nil {
		return nil, nil, fmt.Errorf("starting worker %q: %w", h.opts.Path, err)
	}
	var childErr *os.File
	if p.stderr, childErr, err = pipe(true); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("starting worker %q: %w", h.opts.Path, err)
	}
	cmd.Stderr = childErr
	if h.opts.Launch != nil {
		var release func()
		release, err = h.opts.Launch(cmd, func() error { return fork(p) })
		if release != nil && p.pid == 0 {
			release()
		} else {
			p.release = release
		}
	} else {
		done := make(chan error, 1)
		h.spawnq <- spawnRequest{p: p, done: done}
		err = <-done
	}
	childErr.Close()
	if err != nil && p.pid != 0 {
		// Forked, then failed: the caller stops and reaps it.
		conn.Forked(p.pid)
		h.spawned.Add(1)
		return p, conn, fmt.Errorf("starting worker %q: %w", h.opts.Path, err)
	}
	if err == nil && p.pid == 0 {
		err = errors.New("launch did not fork the worker")
	}
	if err != nil {
		conn.Close()
		p.closePipes()
		return nil, nil, fmt.Errorf("starting worker %q: %w", h.opts.Path, err)
	}
	h.spawned.Add(1)
	if err := conn.Forked(p.pid); err != nil {
		return p, conn, fmt.Errorf("connecting to worker %d: %w", p.pid, err)
	}
	if err := applyLimits(p.pid, spec.Limits); err != nil {
		return p, conn, fmt.Errorf("limiting worker %d: %w", p.pid, err)
	}
	return p, conn, nil
}

type spawnRequest struct {
	p    *proc
	done chan<- error
}

// spawner forks workers from a thread it never gives back, so that their Pdeathsig stays armed
// for the life of the Host.
func (h *Host) spawner() {
	defer h.bg.Done()
	runtime.LockOSThread()
	for req := range h.spawnq {
		req.done <- fork(req.p)
	}
	// The thread ends with this goroutine, and its workers are gone by now.
}

// drainGrace is how long output of an exited worker is read before its pipes are closed.
func (h *Host) drainGrace() time.Duration { return max(h.killGrace(), 100*time.Millisecond) }

// WorkerInfo describes a live worker process.
type WorkerInfo struct {
	PID     int
	Started time.Time
	State   State
	// Ready reports that its ready line has arrived.
	Ready bool
	// Job is the job it serves; nil for an idle worker.
	Job *Job
}

// Workers lists the live workers of this Host, oldest first.
func (h *Host) Workers() []WorkerInfo {
	var ws []WorkerInfo
	for _, p := range trackedProcs() {
		p.mu.Lock()
		w := p.w
		p.mu.Unlock()
		if p.host != h || w == nil {
			continue
		}
		ws = append(ws, w.info())
	}
	slices.SortFunc(ws, func(a, b WorkerInfo) int { return a.Started.Compare(b.Started) })
	return ws
}

func closeAll(files ...*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}

func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return 0
}
