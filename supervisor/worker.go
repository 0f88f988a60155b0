package supervisor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"relayd/ipc"
	"relayd/sandbox"
)

// State is where a worker process is in its life. Every state and every move between them is
// in this file: a worker moves only by worker.to, called from worker.handle, which the worker's
// own goroutine runs for each event — its ready frame, a reply, a job assigned, its deadline,
// the end of its output, its wait status.
//
//	starting ──ready──▶ idle ◀──reply (may serve more)── busy
//	    │                 └──────job assigned──────────▶ │
//	    └──ready, with the job it was forked for────────▶ │
//	starting, busy ──protocol error, deadline, told to exit, exit──▶ draining ──▶ exited
//	idle ──exit──▶ draining
type State uint8

// The states of a worker.
const (
	// StateStarting: forked, its ready frame has not arrived. A worker forked for a job
	// already has the job's request (written at once, which saves a round trip).
	StateStarting State = iota
	// StateIdle: ready and without a job — a spare, or a reused worker between jobs. Only an
	// idle worker is in the pool that Spawn takes from.
	StateIdle
	// StateBusy: serving a job whose reply has not arrived.
	StateBusy
	// StateDraining: takes no more jobs — told to exit (stdin closed), stopped (deadline,
	// protocol error, Host.Stop) or already exited — and its exit or the end of its output is
	// awaited.
	StateDraining
	// StateExited: its exit is observed and its output drained; its EXIT is reported.
	StateExited
)

var stateNames = [...]string{"starting", "idle", "busy", "draining", "exited"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", s)
}

// transitions lists, for each state, the states a worker may move to from it.
var transitions = [...][]State{
	StateStarting: {StateIdle, StateBusy, StateDraining},
	StateIdle:     {StateBusy, StateDraining},
	StateBusy:     {StateIdle, StateDraining},
	StateDraining: {StateExited},
	StateExited:   nil,
}

// canMove reports whether a worker may move from one state to another.
func canMove(from, to State) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// eventKind says what happened to a worker.
type eventKind uint8

const (
	evFrame     eventKind = iota // a frame arrived (ready or reply, decoded by the state)
	evBadFrame                   // the transport could not read a frame (too long, say)
	evJob                        // Spawn handed an idle worker a job
	evDeadline                   // the job's deadline passed; the process is being stopped
	evOutputEnd                  // the transport's output ended
	evExit                       // the process exited and was reaped; ws is its wait status
)

type event struct {
	kind  eventKind
	frame Frame
	err   error
	job   *Job
	ws    syscall.WaitStatus
}

// worker is one worker process and the state machine of its life. Its goroutine (run) alone
// moves it between states: it reads the worker's frames itself, so a frame costs no hand-over
// between goroutines, and learns of a job, its deadline and its exit from channels the
// assigning Spawn, the deadline timer and the waiter send on. Besides it, a worker has a
// goroutine that forwards its stderr and one that waits for its exit: three in all.
type worker struct {
	h    *Host
	p    *proc
	conn Conn
	ex   *Exit

	exits    chan syscall.WaitStatus // from the waiter (capacity 1)
	deadline chan struct{}           // the job's deadline fired (capacity 1)
	jobs     chan *Job               // a job handed to it while idle (capacity 1)
	// drainLate closes the transport if its output has not ended a grace after the exit:
	// something the sweep could not reach still holds it. Set by the waiter before it sends
	// on exits.
	drainLate *time.Timer

	// Owned by the worker's goroutine.
	spare       bool // started without a job, and not yet taken or told to go
	unready     bool // a spare the pool counts as starting
	job         *Job // the job it serves or served last; nil before its first
	replied     bool // job got its reply
	told        bool // its stdin was closed: it is to exit and owes nothing more
	readyAt     time.Time
	cpuUsed     time.Duration // its CPU time at its last reply, for the next job's Usage
	protoErr    error
	waited      bool
	ws          syscall.WaitStatus
	outputEnded bool

	mu    sync.Mutex
	state State // guarded by mu; written only by to
	ready bool  // guarded by mu; its ready frame arrived
	cur   *Job  // guarded by mu; the job it serves, for Host.Workers
	dead  bool  // guarded by mu; set on leaving idle for draining: it takes no more jobs
}

func newWorker(h *Host, p *proc, conn Conn, ex *Exit, spare bool) *worker {
	w := &worker{
		h: h, p: p, conn: conn, ex: ex, spare: spare, unready: spare,
		exits:    make(chan syscall.WaitStatus, 1),
		deadline: make(chan struct{}, 1),
		jobs:     make(chan *Job, 1),
	}
	p.mu.Lock()
	p.w = w
	p.mu.Unlock()
	return w
}

// to moves the worker to state s, tells the pool, and does nothing if it is there already.
func (w *worker) to(s State) {
	w.mu.Lock()
	from := w.state
	if from == s {
		w.mu.Unlock()
		return
	}
	if !canMove(from, s) {
		w.mu.Unlock()
		panic(fmt.Sprintf("worker %d: no transition from %s to %s", w.p.pid, from, s))
	}
	w.state = s
	if s == StateDraining {
		w.dead = true
	}
	w.mu.Unlock()
	w.h.pool.observe(w, from, s)
}

// owes says which frame the worker is to send next.
func (w *worker) owes() owed {
	switch {
	case !w.ex.Ready:
		return owesReady
	case w.job != nil && !w.replied:
		return owesReply
	}
	return owesNothing
}

// run is the worker's goroutine: it talks the protocol with the started worker, handles its
// events until it has exited and its output is drained, and reports its EXIT. job is the job
// it was forked for; nil for a spare.
func (w *worker) run(job *Job) {
	var aux sync.WaitGroup
	aux.Add(2)
	stderrDone := make(chan struct{})
	var lastWords string // written before stderrDone is closed, read after aux.Wait
	go func() { defer aux.Done(); defer close(stderrDone); lastWords = w.h.forwardStderr(w.p) }()
	go func() {
		defer aux.Done()
		ws := w.p.wait()
		// What the worker left behind was re-parented here as it exited: kill and reap it
		// now, which also ends any hold a leftover has on the worker's pipes.
		if w.h.opts.Subreaper {
			w.h.sweep(false)
		}
		w.drainLate = time.AfterFunc(w.h.drainGrace(), func() { w.conn.Close() })
		w.exits <- ws
	}()

	if job != nil {
		w.job = job
		w.setCur(job)
		w.send(job) // Before the ready line: it saves a round trip; the ready line is still checked.
	}
	for w.state != StateExited {
		w.handle(w.next())
	}

	// A job handed over as the worker died is reported with the worker's EXIT.
	select {
	case j := <-w.jobs:
		w.job, w.replied = j, false
	default:
	}
	// Its last words on stderr are still in the pipe: read them before closing it, unless
	// something the sweep could not reach keeps it open.
	select {
	case <-stderrDone:
	case <-time.After(w.h.drainGrace()):
	}
	w.p.closePipes()
	w.conn.Close()
	aux.Wait()
	w.drainLate.Stop()
	ex := w.ex
	ex.Replied = w.replied
	// A worker that exits 0 owes a reply if it had a job it did not answer, or if it went
	// before it was told to and had served nothing (a spare that quit on its own).
	owed := (w.job != nil && !w.replied) || (w.job == nil && ex.Served == 0 && !w.told)
	ex.classify(w.ws, w.p.stoppedFor(), w.protoErr, owed)
	ex.lastWords(lastWords)
	ex.Duration = time.Since(ex.Started)
	w.h.events <- Event{PID: w.p.pid, Job: w.job, Replied: w.replied, Exit: ex}
}

// next waits for the worker's next event. An idle worker waits for a job or its exit; any
// other reads its next frame, and once its output has ended waits for its exit. A deadline
// that fired meanwhile comes next: the timer stops the process itself, so the frame it may
// still have sent, or the end of its output, is never held up by it.
func (w *worker) next() event {
	select {
	case <-w.deadline:
		return event{kind: evDeadline}
	default:
	}
	switch {
	case w.state == StateIdle:
		select {
		case j := <-w.jobs:
			return event{kind: evJob, job: j}
		case ws := <-w.exits:
			return event{kind: evExit, ws: ws}
		}
	case w.outputEnded:
		select {
		case ws := <-w.exits:
			return event{kind: evExit, ws: ws}
		case <-w.deadline:
			return event{kind: evDeadline}
		}
	}
	f, err := w.conn.Recv()
	switch {
	case err == nil:
		return event{kind: evFrame, frame: f}
	case errors.Is(err, io.EOF), errors.Is(err, os.ErrClosed):
		return event{kind: evOutputEnd}
	}
	return event{kind: evBadFrame, err: err}
}

// handle is the state machine: it applies one event.
func (w *worker) handle(ev event) {
	switch ev.kind {
	case evFrame:
		w.onFrame(ev.frame)
	case evBadFrame:
		w.fail(ev.err)
	case evJob:
		w.job, w.replied = ev.job, false
		w.setCur(ev.job)
		w.to(StateBusy)
		w.send(ev.job)
	case evDeadline:
		if w.state == StateStarting || w.state == StateBusy {
			w.to(StateDraining)
		}
	case evOutputEnd:
		w.outputEnded = true
	case evExit:
		w.waited, w.ws = true, ev.ws
		w.to(StateDraining)
	}
	if w.waited && w.outputEnded {
		w.to(StateExited)
	}
}

// onFrame handles a frame according to what the worker owes.
func (w *worker) onFrame(f Frame) {
	want := w.owes()
	id := ""
	if w.job != nil {
		id = w.job.ID
	}
	_, reply, err := decodeFrame(f, want, id)
	if err != nil {
		w.fail(err)
		return
	}
	if w.protoErr != nil {
		return // It is being stopped; what it says no longer counts.
	}
	switch want {
	case owesReady:
		w.readyAt = time.Now()
		w.ex.Ready = true
		w.mu.Lock()
		w.ready = true
		w.mu.Unlock()
		if w.job != nil {
			w.job.Timing.Ready = w.readyAt
		}
		if w.h.opts.OnReady != nil {
			w.h.opts.OnReady(time.Since(w.ex.Started))
		}
		if w.state == StateDraining {
			return // Stopped (its deadline) before it got this far.
		}
		if w.job != nil {
			w.to(StateBusy)
			return
		}
		if !w.h.pool.putIdle(w) {
			w.spare = false // No room for another idle worker: it goes, and is not replaced.
			w.tell()
			return
		}
		w.to(StateIdle)
	case owesReply:
		w.p.setDeadline(0, nil)
		job := w.job
		job.Timing.Replied = time.Now()
		w.replied = true
		w.ex.Served++
		w.cpuUsed = measure(w.p.pid, job, w.cpuUsed)
		// A worker that serves more goes back to the pool before its answer leaves, so that
		// the sender's next message finds it there rather than forking another. Its next
		// request is written only once this reply is handled.
		reused := false
		if w.state == StateBusy && w.ex.Served < w.h.opts.MaxRequests {
			w.setCur(nil)
			reused = w.h.pool.putIdle(w)
		}
		if job.OnReply != nil {
			job.OnReply(w.p.pid, reply)
		}
		if reused {
			// No descendant outlives its message: the worker lives on for the next one, what
			// it started for this one does not. Those re-parented to relayd are swept.
			sandbox.KillDescendants(w.p.pid)
			if w.h.opts.Subreaper {
				w.h.sweep(false)
			}
			w.h.events <- Event{PID: w.p.pid, Job: job, Replied: true}
			w.job, w.replied = nil, false
			w.to(StateIdle)
			return
		}
		// The worker waits for more requests until stdin closes, so it is still alive and
		// its peak memory can be read; measure has just read it for the reply's usage.
		w.ex.PeakRSS = job.Usage.MaxRSS
		if w.ex.PeakRSS == 0 {
			w.ex.PeakRSS = peakRSS(w.p.pid)
		}
		w.tell()
	}
}

// send writes a job's request and arms its deadline.
func (w *worker) send(j *Job) {
	if j.Timeout > 0 {
		w.p.setDeadline(j.Timeout, w.deadline)
	}
	j.Timing.Forked, j.Timing.Ready = w.p.started, w.readyAt
	err := w.conn.Send(ipc.WorkerRequest{ID: j.ID, Topic: j.Topic, Data: j.Data})
	j.Timing.Written = time.Now()
	// EPIPE means it is gone already; its exit says why.
	if err != nil && !errors.Is(err, syscall.EPIPE) {
		w.fail(fmt.Errorf("writing request: %w", err))
	}
}

// tell closes the worker's stdin: it is to exit, and owes nothing more.
func (w *worker) tell() {
	w.told = true
	w.conn.CloseSend()
	w.to(StateDraining)
}

// fail records the first protocol error and stops the worker for it.
func (w *worker) fail(err error) {
	if w.protoErr != nil {
		return
	}
	w.protoErr = err
	w.p.stop(Reason{Kind: ReasonProtocol}, 0)
	w.to(StateDraining)
}

// assign hands job to an idle worker, and reports false if it takes no more jobs.
func (w *worker) assign(job *Job) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dead {
		return false
	}
	w.cur = job
	w.jobs <- job
	return true
}

func (w *worker) setCur(j *Job) {
	w.mu.Lock()
	w.cur = j
	w.mu.Unlock()
}

// info describes the worker for Host.Workers.
func (w *worker) info() WorkerInfo {
	w.mu.Lock()
	defer w.mu.Unlock()
	return WorkerInfo{PID: w.p.pid, Started: w.p.started, State: w.state, Job: w.cur,
		Ready: w.ready}
}
