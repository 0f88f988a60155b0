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
	Logger    hclog.Logger
}

// Job is one request for a worker process.
type Job struct {
	ID      string
	Topic   string
	Data    json.RawMessage
	Attempt int
	// Timeout bounds the worker's life; at expiry it is stopped with ReasonTimeout. Zero: none.
	Timeout time.Duration
	// OnReply is called once, from the worker's monitor goroutine, when the worker answers.
	OnReply func(pid int, reply ipc.WorkerReply)
	// Tag is the caller's own; the Job comes back in the Exit event.
	Tag any
}

// Host owns worker processes: it starts them, talks the worker protocol with them, and reports
// each one's end as an Exit on Events. It is the tutorial's "processes" host.
type Host struct {
	opts    Options
	log     hclog.Logger
	events  chan Exit
	spawnq  chan spawnRequest
	sweepc  chan struct{}
	done    chan struct{}
	workers sync.WaitGroup // one monitor per worker process
	bg      sync.WaitGroup // spawner threads and the sweeper
	spawned atomic.Uint64
	closed  atomic.Bool
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
	if opts.Subreaper {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return nil, fmt.Errorf("becoming a child subreaper: %w", err)
		}
	}
	h := &Host{
		opts:   opts,
		log:    opts.Logger,
		events: make(chan Exit, 1024),
		spawnq: make(chan spawnRequest),
		sweepc: make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
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
	return h, nil
}

// Name is the host's name, shown in replies as the worker's host.
func (h *Host) Name() string { return h.opts.Name }

// Events delivers one Exit per spawned job, in the order the workers ended. The owner must keep
// receiving until every job it spawned has been reported.
func (h *Host) Events() <-chan Exit { return h.events }

// Spawned counts worker processes started so far.
func (h *Host) Spawned() uint64 { return h.spawned.Load() }

// Spawn starts a monitored worker for job and returns at once; the worker's end arrives as an
// Exit on Events, also when it could not be started.
func (h *Host) Spawn(job *Job) {
	h.workers.Add(1)
	go h.run(job)
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
	if !h.closed.CompareAndSwap(false, true) {
		return nil
	}
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

// run is the life of one worker: start it, monitor it, report its Exit.
func (h *Host) run(job *Job) {
	defer h.workers.Done()
	ex := Exit{Job: job, Started: time.Now(), ExitCode: -1}
	p, err := h.start(job)
	if err != nil {
		ex.Reason = Reason{Kind: ReasonSpawnFailed, Errno: errnoOf(err)}
		ex.Err = err
		if p != nil {
			ex.PID = p.pid
			p.stop(ex.Reason, 0)
			p.reap()
			p.closePipes()
		}
		ex.Duration = time.Since(ex.Started)
		h.events <- ex
		return
	}
	ex.PID = p.pid
	h.monitor(p, job, &ex)
	ex.Duration = time.Since(ex.Started)
	h.events <- ex
}

// start forks the worker, applies its limits and writes its request. The request is written
// before the ready line arrives, which saves a round trip; the ready line is still checked.
func (h *Host) start(job *Job) (*proc, error) {
	cmd := exec.Command(h.opts.Path, h.opts.Args...)
	cmd.Env = append(slices.Clip(h.opts.Env), "RELAY_ATTEMPT="+strconv.Itoa(job.Attempt))
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: h.opts.Credential,
	}
	p := &proc{host: h, cmd: cmd}
	var child [3]*os.File
	var err error
	if child[0], p.stdin, err = os.Pipe(); err != nil {
		return nil, fmt.Errorf("starting worker %q: %w", h.opts.Path, err)
	}
	if p.stdout, child[1], err = os.Pipe(); err == nil {
		p.stderr, child[2], err = os.Pipe()
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
	if err := applyLimits(p.pid, h.opts.Limits); err != nil {
		return p, fmt.Errorf("limiting worker %d: %w", p.pid, err)
	}
	if job.Timeout > 0 {
		p.deadline = time.AfterFunc(job.Timeout, func() { p.stop(Reason{Kind: ReasonTimeout}, h.opts.KillGrace) })
	}
	return p, nil
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

// monitor talks the protocol with a started worker and watches it until it has exited and its
// output is drained.
func (h *Host) monitor(p *proc, job *Job, ex *Exit) {
	var aux sync.WaitGroup
	lines := make(chan lineOrErr, 4)
	aux.Add(3)
	go func() { defer aux.Done(); readLines(p.stdout, h.opts.MaxLineBytes, lines) }()
	go func() { defer aux.Done(); h.forwardStderr(p) }()
	waited := make(chan syscall.WaitStatus, 1)
	go func() { defer aux.Done(); waited <- p.wait(); h.triggerSweep() }()

	var protoErr error
	fail := func(err error) {
		if protoErr == nil {
			protoErr = err
			p.stop(Reason{Kind: ReasonProtocol}, 0)
		}
	}
	req, err := json.Marshal(ipc.WorkerRequest{ID: job.ID, Topic: job.Topic, Data: job.Data})
	if err == nil {
		_, err = p.stdin.Write(append(req, '\n'))
	}
	if err != nil {
		// EPIPE means it is gone already; its exit says why.
		p.stdin.Close()
		if !errors.Is(err, syscall.EPIPE) {
			fail(fmt.Errorf("writing request: %w", err))
		}
	}

	ready := false
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
				ready = true
			case ex.Replied:
				fail(fmt.Errorf("unexpected line after the reply: %q", clip(l.line, 80)))
			default:
				var r ipc.WorkerReply
				if err := json.Unmarshal(l.line, &r); err != nil {
					fail(fmt.Errorf("want a reply line, got %q", clip(l.line, 80)))
				} else if r.ID != job.ID {
					fail(fmt.Errorf("reply for id %q, want %q", r.ID, job.ID))
				} else if protoErr == nil {
					ex.Replied = true
					if job.OnReply != nil {
						job.OnReply(p.pid, r)
					}
					// The worker waits for more requests until stdin closes, so it is still
					// alive and its peak memory can be read.
					ex.PeakRSS = peakRSS(p.pid)
				}
				// One message per worker: closing stdin tells it to exit.
				p.stdin.Close()
			}
		case ws = <-waited:
			waited = nil
			if lines != nil {
				drain = time.After(max(h.opts.KillGrace, 100*time.Millisecond))
			}
		case <-drain:
			// Something the sweep could not reach still holds the pipe; stop reading it.
			p.stdout.Close()
		}
	}
	p.closePipes()
	aux.Wait()
	ex.classify(ws, p.stoppedFor(), protoErr)
}

type lineOrErr struct {
	line []byte
	err  error
}

func readLines(f *os.File, max int, out chan<- lineOrErr) {
	defer close(out)
	lr := ipc.NewLineReader(f, max)
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

// forwardStderr copies the worker's stderr into the log a line at a time, with its pid.
func (h *Host) forwardStderr(p *proc) {
	lr := ipc.NewLineReader(p.stderr, h.opts.StderrLineBytes)
	for {
		line, err := lr.ReadLine()
		switch {
		case err == nil:
			h.log.Info("worker stderr", "pid", p.pid, "line", string(line))
		case errors.Is(err, ipc.ErrTooLarge):
			h.log.Info("worker stderr", "pid", p.pid, "line", "(line over the length cap dropped)")
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
