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

// ErrNoReply reports a worker that exited 0 without answering its request.
var ErrNoReply = errors.New("exited without a reply")

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
}

// Job is one request for a worker process.
type Job struct {
	ID      string
	Topic   string
	Data    json.RawMessage
	Attempt int
	// Timeout bounds the job; at expiry its worker is stopped with ReasonTimeout. Zero: none.
	Timeout time.Duration
	// OnReply is called once, from the worker's monitor goroutine, when the worker answers.
	OnReply func(pid int, reply ipc.WorkerReply)
	// Tag is the caller's own; the Job comes back in its Event.
	Tag any
	// Timing is filled in by the Host as the job goes; read it after the job's Event.
	Timing Timing
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
	opts     Options
	log      hclog.Logger
	events   chan Event
	spawnq   chan spawnRequest
	refillc  chan struct{}
	done     chan struct{}
	idle     idlePool
	starting atomic.Int64 // spares forked and not yet ready (or dead)
	workers  sync.WaitGroup
	bg       sync.WaitGroup // spawner threads, the sweeper and the spare refiller
	spawned  atomic.Uint64
	spec     atomic.Pointer[WorkerSpec]
	mu       sync.Mutex  // orders the refiller's forks before Close's wait
	closed   atomic.Bool // set under mu
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
	h := &Host{
		opts:    opts,
		log:     opts.Logger,
		events:  make(chan Event, 1024),
		spawnq:  make(chan spawnRequest),
		refillc: make(chan struct{}, 1),
		done:    make(chan struct{}),
		idle:    idlePool{cap: idleCap},
	}
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
		go h.refiller()
		h.refill()
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
// now on); running workers keep what they were started with.
func (h *Host) Reconfigure(spec WorkerSpec) { h.spec.Store(&spec) }

func (h *Host) killGrace() time.Duration { return h.spec.Load().KillGrace }

// Name is the host's name, shown in replies as the worker's host.
func (h *Host) Name() string { return h.opts.Name }

// Events delivers one Event per job and per worker process. The owner must keep receiving
// until every job it spawned has been reported.
func (h *Host) Events() <-chan Event { return h.events }

// Spawned counts worker processes started so far.
func (h *Host) Spawned() uint64 { return h.spawned.Load() }

// Idle counts workers that are ready and wait for a job (spares included).
func (h *Host) Idle() int { return h.idle.len() }

// Spawn hands job to a worker and returns at once: to an idle one that is ready (a spare, or
// one that may serve more requests) if there is one and this is a first attempt, else to a
// freshly forked one. The job's end arrives as an Event, also when no worker could be started.
func (h *Host) Spawn(job *Job) {
	if job.Attempt <= 1 {
		for {
			p := h.idle.take()
			if p == nil {
				break
			}
			// A spare's replacement is forked after its reply, not now: on a small machine the
			// fork would compete with this message for the CPU.
			if p.assign(job) {
				return
			}
		}
	}
	h.workers.Add(1)
	go h.life(job, false)
}

// Stop stops every live worker with reason: SIGTERM to its process group, then SIGKILL after
// grace (at once when grace is zero).
func (h *Host) Stop(reason Reason, grace time.Duration) {
	for _, p := range trackedProcs() {
		if p.host == h {
			p.stop(reason, grace)
		}
	}
}

// Close kills any worker still alive, waits for every monitor, spawner and sweeper goroutine to
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

// refill asks the refiller to top up the spares.
func (h *Host) refill() {
	select {
	case h.refillc <- struct{}{}:
	default:
	}
}

// refiller keeps Spares workers ready, forking the missing ones concurrently (the spawner
// threads bound how many fork at once).
func (h *Host) refiller() {
	defer h.bg.Done()
	for {
		select {
		case <-h.done:
			return
		case <-h.refillc:
		}
		h.mu.Lock()
		for missing := h.opts.Spares - h.idle.len() - int(h.starting.Load()); missing > 0 && !h.closed.Load(); missing-- {
			h.starting.Add(1)
			h.workers.Add(1)
			go h.life(nil, true)
		}
		h.mu.Unlock()
	}
}

// life is the life of one worker process: start it, give it its jobs, report their ends and
// its EXIT. job is its first job; a spare starts without one.
func (h *Host) life(job *Job, spare bool) {
	defer h.workers.Done()
	ex := &Exit{Started: time.Now(), ExitCode: -1}
	attempt := 1
	if job != nil {
		attempt = job.Attempt
	}
	p, err := h.start(attempt)
	if err != nil {
		if spare {
			h.starting.Add(-1)
		}
		ex.Reason = Reason{Kind: ReasonSpawnFailed, Errno: errnoOf(err)}
		ex.Err = err
		if p != nil {
			ex.PID = p.pid
			p.stop(ex.Reason, 0)
			p.wait()
			p.closePipes()
		}
		ex.Duration = time.Since(ex.Started)
		if spare {
			h.log.Warn("starting a spare worker", "error", err)
		}
		h.events <- Event{PID: ex.PID, Job: job, Exit: ex}
		return
	}
	p.spare, p.unready = spare, spare
	ex.PID = p.pid
	h.monitor(p, job, ex)
	if p.unready {
		h.starting.Add(-1) // It died before it was ready.
	}
	if p.spare {
		h.refill() // A spare died waiting: replace it.
	}
}

// start forks a worker and applies its limits.
func (h *Host) start(attempt int) (*proc, error) {
	spec := h.spec.Load()
	cmd := exec.Command(h.opts.Path, spec.Args...)
	cmd.Env = append(slices.Clip(spec.Env), "RELAY_ATTEMPT="+strconv.Itoa(attempt))
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: h.opts.Credential,
	}
	p := &proc{host: h, cmd: cmd, jobs: make(chan *Job, 1)}
	var child [3]*os.File
	var err error
	if p.stdin, child[0], err = pipe(false); err != nil {
		return nil, fmt.Errorf("starting worker %q: %w", h.opts.Path, err)
	}
	if p.stdout, child[1], err = pipe(true); err == nil {
		p.stderr, child[2], err = pipe(true)
	}
	if err != nil {
		closeAll(child[:]...)
		p.closePipes()
		return nil, fmt.Errorf("starting worker %q: %w", h.opts.Path, err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = child[0], child[1], child[2]
	done := make(chan error, 1)
	h.spawnq <- spawnRequest{p: p, done: done}
	err = <-done
	closeAll(child[:]...)
	if err != nil {
		p.closePipes()
		return nil, fmt.Errorf("starting worker %q: %w", h.opts.Path, err)
	}
	h.spawned.Add(1)
	if err := applyLimits(p.pid, spec.Limits); err != nil {
		return p, fmt.Errorf("limiting worker %d: %w", p.pid, err)
	}
	return p, nil
}

// pipe makes a pipe for a worker's stdin (parentReads false) or stdout or stderr. The parent's
// end is non-blocking and served by the runtime's poller; the child's end stays blocking, as
// programs expect of their standard descriptors, and is never registered with the poller
// (os.Pipe would register both ends, and exec would then make the child's blocking again).
func pipe(parentReads bool) (parent, child *os.File, err error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, err
	}
	pfd, cfd := fds[1], fds[0]
	if parentReads {
		pfd, cfd = fds[0], fds[1]
	}
	if err := unix.SetNonblock(pfd, true); err != nil {
		unix.Close(pfd)
		unix.Close(cfd)
		return nil, nil, err
	}
	return os.NewFile(uintptr(pfd), "worker-pipe"), os.NewFile(uintptr(cfd), "worker-pipe"), nil
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

// monitor talks the protocol with a started worker: it writes each job's request (the first
// one at once, before the ready line arrives, which saves a round trip; the ready line is still
// checked), hands each reply to its job, and watches the worker until it has exited and its
// output is drained. It reports every job's end and finally the worker's EXIT.
func (h *Host) monitor(p *proc, job *Job, ex *Exit) {
	var aux sync.WaitGroup
	lines := make(chan lineOrErr, 4)
	aux.Add(3)
	go func() { defer aux.Done(); readLines(p.stdout, h.opts.MaxLineBytes, lines) }()
	stderrDone := make(chan struct{})
	go func() { defer aux.Done(); defer close(stderrDone); h.forwardStderr(p) }()
	waited := make(chan syscall.WaitStatus, 1)
	go func() {
		defer aux.Done()
		ws := p.wait()
		// What the worker left behind was re-parented here as it exited: kill and reap it
		// now, which also ends any hold a leftover has on the worker's pipes.
		if h.opts.Subreaper {
			h.sweep(false)
		}
		waited <- ws
	}()

	var protoErr error
	fail := func(err error) {
		if protoErr == nil {
			protoErr = err
			p.stop(Reason{Kind: ReasonProtocol}, 0)
		}
	}
	cur, replied := job, false
	var readyAt time.Time
	p.setJob(cur)
	send := func(j *Job) {
		if j.Timeout > 0 {
			p.setDeadline(j.Timeout)
		}
		j.Timing.Forked, j.Timing.Ready = p.started, readyAt
		req, err := json.Marshal(ipc.WorkerRequest{ID: j.ID, Topic: j.Topic, Data: j.Data})
		if err == nil {
			_, err = p.stdin.Write(append(req, '\n'))
		}
		j.Timing.Written = time.Now()
		// EPIPE means it is gone already; its exit says why.
		if err != nil && !errors.Is(err, syscall.EPIPE) {
			fail(fmt.Errorf("writing request: %w", err))
		}
	}
	if cur != nil {
		send(cur)
	}

	ready, retired := false, false
	jobs := p.jobs
	var ws syscall.WaitStatus
	var drain <-chan time.Time
	for lines != nil || waited != nil {
		select {
		case l, ok := <-lines:
			if !ok {
				lines = nil
				continue
			}
			switch {
			case l.err != nil:
				fail(fmt.Errorf("reading output: %w", l.err))
			case !ready:
				var r ipc.Ready
				if err := json.Unmarshal(l.line, &r); err != nil || !r.Ready {
					fail(fmt.Errorf("want a ready line, got %q", clip(l.line, 80)))
				} else if r.Protocol != ipc.ProtocolVersion {
					fail(fmt.Errorf("worker speaks protocol %d, want %d", r.Protocol, ipc.ProtocolVersion))
				}
				ready, readyAt = true, time.Now()
				p.setReady()
				if cur != nil {
					cur.Timing.Ready = readyAt
				}
				if h.opts.OnReady != nil && protoErr == nil {
					h.opts.OnReady(time.Since(ex.Started))
				}
				// A new spare joins the pool before it stops counting as starting, so that the
				// refiller never sees it in neither and forks one too many.
				if cur == nil && protoErr == nil && !h.putIdle(p) {
					retired = true
					p.stdin.Close() // No room for another idle worker: retire it.
				}
				if p.unready {
					p.unready = false
					h.starting.Add(-1)
				}
				// A worker that starts proves workers can start: top the spares up, in case
				// they ran out while they could not.
				if h.opts.Spares > 0 && protoErr == nil {
					h.refill()
				}
			case cur == nil || replied:
				fail(fmt.Errorf("unexpected line: %q", clip(l.line, 80)))
			default:
				var r ipc.WorkerReply
				if err := json.Unmarshal(l.line, &r); err != nil {
					fail(fmt.Errorf("want a reply line, got %q", clip(l.line, 80)))
					break
				} else if r.ID != cur.ID {
					fail(fmt.Errorf("reply for id %q, want %q", r.ID, cur.ID))
					break
				}
				if protoErr != nil {
					break
				}
				p.setDeadline(0)
				cur.Timing.Replied = time.Now()
				replied = true
				ex.Served++
				if cur.OnReply != nil {
					cur.OnReply(p.pid, r)
				}
				if p.spare {
					p.spare = false
					h.refill()
				}
				if ex.Served < h.opts.MaxRequests && h.putIdle(p) {
					h.events <- Event{PID: p.pid, Job: cur, Replied: true}
					cur, replied = nil, false
					p.setJob(nil)
					break
				}
				// The worker waits for more requests until stdin closes, so it is still
				// alive and its peak memory can be read.
				ex.PeakRSS = peakRSS(p.pid)
				p.stdin.Close()
			}
		case j := <-jobs:
			cur, replied = j, false
			p.setJob(j)
			send(j)
		case ws = <-waited:
			waited = nil
			jobs = nil
			if lines != nil {
				drain = time.After(max(h.killGrace(), 100*time.Millisecond))
			}
		case <-drain:
			// Something the sweep could not reach still holds the pipe; stop reading it.
			p.stdout.Close()
		}
	}
	// A job handed over as the worker died is reported with the worker's EXIT.
	h.idle.remove(p)
	if j := p.retire(); j != nil && cur == nil {
		cur, replied = j, false
	}
	// Its last words on stderr are still in the pipe: read them before closing it, unless
	// something the sweep could not reach keeps it open.
	select {
	case <-stderrDone:
	case <-time.After(max(h.killGrace(), 100*time.Millisecond)):
	}
	p.closePipes()
	aux.Wait()
	ex.Replied = replied
	ex.classify(ws, p.stoppedFor(), protoErr)
	if retired && ex.Reason.Kind == ReasonProtocol && errors.Is(ex.Err, ErrNoReply) {
		// Told to go before it had a job, it owed no reply.
		ex.Reason, ex.Err = Reason{Kind: ReasonNormal}, nil
	}
	ex.Duration = time.Since(ex.Started)
	h.events <- Event{PID: p.pid, Job: cur, Replied: replied, Exit: ex}
}

// WorkerInfo describes a live worker process.
type WorkerInfo struct {
	PID     int
	Started time.Time
	// Ready reports that its ready line has arrived.
	Ready bool
	// Job is the job it serves; nil for an idle worker.
	Job *Job
}

// Workers lists the live workers of this Host, oldest first.
func (h *Host) Workers() []WorkerInfo {
	var ws []WorkerInfo
	for _, p := range trackedProcs() {
		if p.host != h {
			continue
		}
		p.mu.Lock()
		ws = append(ws, WorkerInfo{PID: p.pid, Started: p.started, Job: p.job, Ready: p.ready})
		p.mu.Unlock()
	}
	slices.SortFunc(ws, func(a, b WorkerInfo) int { return a.Started.Compare(b.Started) })
	return ws
}

// putIdle offers a ready worker without a job to Spawn, and reports whether there was room.
func (h *Host) putIdle(p *proc) bool {
	return !h.closed.Load() && h.idle.put(p)
}

// idlePool holds workers that are ready and have no job: spares, and workers that may serve
// more requests (MaxRequests > 1). A worker that dies leaves it at once.
type idlePool struct {
	mu    sync.Mutex
	cap   int
	procs []*proc // guarded by mu; the most recently idle last
}

func (ip *idlePool) put(p *proc) bool {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	if len(ip.procs) >= ip.cap {
		return false
	}
	ip.procs = append(ip.procs, p)
	return true
}

// take returns the most recently idle worker, whose pages are the likeliest to be warm.
func (ip *idlePool) take() *proc {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	n := len(ip.procs)
	if n == 0 {
		return nil
	}
	p := ip.procs[n-1]
	ip.procs[n-1] = nil
	ip.procs = ip.procs[:n-1]
	return p
}

func (ip *idlePool) remove(p *proc) {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	if i := slices.Index(ip.procs, p); i >= 0 {
		ip.procs = slices.Delete(ip.procs, i, i+1)
	}
}

func (ip *idlePool) len() int {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	return len(ip.procs)
}

type lineOrErr struct {
	line []byte
	err  error
}

func readLines(f *os.File, max int, out chan<- lineOrErr) {
	defer close(out)
	// Replies are small; a long one is assembled from several reads.
	lr := ipc.NewLineReaderSize(f, max, 4<<10)
	for {
		line, err := lr.ReadLine()
		switch {
		case err == nil:
			out <- lineOrErr{line: slices.Clone(line)}
		case errors.Is(err, ipc.ErrTooLarge):
			out <- lineOrErr{err: fmt.Errorf("line longer than %d bytes", max)}
		default:
			return
		}
	}
}

func clip(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
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
