package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"relayd/ipc"
	"relayd/supervisor"
)

// Name is the name the relay registers under, as in the tutorial's process.registry.register("relay").
const Name = "relay"

// Topics of the relay.
const (
	TopicEcho   = "echo"
	TopicStats  = "stats"
	TopicStatus = "status"
)

// Observer is told what the relay does, for metrics. Its methods must be quick and safe for
// concurrent use.
type Observer interface {
	// Answered is called once per answer: the service it went to ("" when the request named
	// none that is registered), the request's topic ("" when the line could not be read), the
	// error code ("" for a reply) and the time since the request was read.
	Answered(service, topic, code string, d time.Duration)
	// WorkerExited is called for every worker EXIT of a service with its reason and lifetime.
	WorkerExited(service, reason string, lifetime time.Duration)
	// Retried is called when a message of a service is scheduled for another attempt.
	Retried(service string)
}

// The default retry budget: retries stop after 50 net failures and stay stopped while more than
// about one attempt in eleven fails (each success earns back a tenth of a token).
const (
	DefaultRetryTokens = 100
	DefaultRetryRatio  = 0.1
)

// Config configures a Relay. Zero durations and counts mean "none" or "unlimited" only where
// noted; relayd fills in its documented defaults.
type Config struct {
	// Name is the service's registered name; "" means Name ("relay").
	Name string
	Host *supervisor.Host
	// MaxWorkers bounds concurrent worker processes; Queue bounds messages waiting for one.
	MaxWorkers int
	Queue      int
	// MessageTimeout bounds each attempt; KillGrace separates SIGTERM from SIGKILL.
	MessageTimeout time.Duration
	KillGrace      time.Duration
	// ShutdownTimeout is how long running workers may finish after the inbox closes.
	ShutdownTimeout time.Duration
	// MaxRestarts is how many times a message is retried after its worker fails.
	MaxRestarts int
	// Backoff spaces retries of one message; ProbeBackoff spaces attempts to start workers
	// again after the executable could not be started.
	Backoff      supervisor.Backoff
	ProbeBackoff supervisor.Backoff
	// Budget throttles retries across all messages.
	Budget *RetryBudget
	// StatsInterval is the stats reporter's period; OnStats, if set, also gets each report.
	StatsInterval time.Duration
	OnStats       func(Stats)
	// WatchdogInterval, if set, calls Watchdog from the relay's own loop at that period, so a
	// wedged loop stops the pings.
	WatchdogInterval time.Duration
	Watchdog         func()
	// Sandbox, if set, is how the workers are confined, for the status topic.
	Sandbox *ipc.SandboxStatus
	Logger  hclog.Logger
	// Rand returns numbers in [0, 1) for backoff jitter; nil uses math/rand/v2.
	Rand func() float64
	// Observer, if set, is told of exits and retries (answers are observed by the Server).
	Observer Observer
	// Names lists the registered names, for the status topic.
	Names func() []string
	// SlowThreshold, if set, logs every answer slower than it with where the time went.
	SlowThreshold time.Duration
}

// Relay is the relay process of the tutorial. Its loop, Run, selects over its inbox (messages
// from clients) and its events (EXIT events of its workers); it alone owns the queue and the
// retry timers.
type Relay struct {
	cfg      Config
	log      hclog.Logger
	inbox    chan *Message
	retries  chan *Message
	settings chan Settings
	retire   chan struct{} // closed by Retire
	started  chan struct{} // closed when Run has logged that the relay started
	done     chan struct{} // closed when Run returns
	stats    *counters

	// Owned by the Run loop.
	seq         uint64
	running     int
	queue       []*Message
	retryTimers map[*Message]*time.Timer
	draining    bool
	unavailable bool
	probeFails  int
	probeAt     time.Time
	spawnErr    string
	retired     bool // Retire was called: new messages are answered unknown_name
	released    bool // retired and drained: the host is closed
}

// New returns a relay; Run runs it.
func New(cfg Config) *Relay {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	if cfg.Budget == nil {
		cfg.Budget = NewRetryBudget(DefaultRetryTokens, DefaultRetryRatio)
	}
	if cfg.MaxWorkers <= 0 {
		cfg.MaxWorkers = 1
	}
	if cfg.Name == "" {
		cfg.Name = Name
	}
	return &Relay{
		cfg:         cfg,
		log:         cfg.Logger,
		inbox:       make(chan *Message, 256),
		retries:     make(chan *Message),
		settings:    make(chan Settings),
		retire:      make(chan struct{}),
		started:     make(chan struct{}),
		done:        make(chan struct{}),
		stats:       newCounters(),
		retryTimers: make(map[*Message]*time.Timer),
	}
}

// Name is the service's registered name.
func (r *Relay) Name() string { return r.cfg.Name }

// Started is closed once Run has begun and logged "relay started".
func (r *Relay) Started() <-chan struct{} { return r.started }

// Retire tells the relay that its name was removed: it answers messages that still reach it
// unknown_name, finishes what it holds (queued messages and retries included), then closes its
// host. Run still returns only after CloseInbox. Call it once.
func (r *Relay) Retire() { close(r.retire) }

// RetryTokens is what is left of the relay's retry budget, for metrics.
func (r *Relay) RetryTokens() float64 { return r.cfg.Budget.Tokens() }

// Inbox is where messages for the relay are delivered; it is what the registry maps "relay" to.
func (r *Relay) Inbox() chan<- *Message { return r.inbox }

// CloseInbox tells the relay that no more messages will come. Call it once, after every sender
// has stopped; Run then finishes what it holds and returns.
func (r *Relay) CloseInbox() { close(r.inbox) }

// Run is the relay's loop. It returns once the inbox is closed and every message it took is
// answered. Cancelling ctx kills every worker at once (the second signal).
func (r *Relay) Run(ctx context.Context) error {
	defer close(r.done)
	if sb := r.cfg.Sandbox; sb != nil {
		// What the kernel does not enforce is said at start, naming the mechanism.
		r.log.Info("relay started", "pid", os.Getpid(), "sandbox", sb.Mode, "enforced", strings.Join(sb.Enforced, ","))
		for _, m := range sb.Missing {
			r.log.Warn("worker sandbox: the kernel does not enforce a mechanism", "mechanism", m.Mechanism, "reason", m.Reason)
		}
	} else {
		r.log.Info("relay started", "pid", os.Getpid())
	}
	close(r.started)
	var reporter sync.WaitGroup
	stopStats := make(chan struct{})
	if r.cfg.StatsInterval > 0 {
		reporter.Add(1)
		go func() { defer reporter.Done(); r.statsReporter(stopStats) }()
	}
	defer func() { close(stopStats); reporter.Wait() }()

	var watchdog <-chan time.Time
	if r.cfg.WatchdogInterval > 0 && r.cfg.Watchdog != nil {
		t := time.NewTicker(r.cfg.WatchdogInterval)
		defer t.Stop()
		watchdog = t.C
	}
	inbox, events, hard, retire := r.inbox, r.cfg.Host.Events(), ctx.Done(), r.retire
	var shutdown <-chan time.Time
	for {
		select {
		case m, ok := <-inbox:
			if !ok {
				inbox = nil
				r.drain()
				if r.running > 0 && r.cfg.ShutdownTimeout > 0 {
					shutdown = time.After(r.cfg.ShutdownTimeout)
				}
				break
			}
			r.receive(m)
		case ex := <-events:
			r.exited(ex)
		case m := <-r.retries:
			delete(r.retryTimers, m)
			r.admit(m, true)
		case s := <-r.settings:
			r.apply(s)
		case <-retire:
			retire = nil
			r.retired = true
			r.log.Info("service removed; draining", "service", r.cfg.Name, "workers", r.running, "queued", len(r.queue))
		case <-watchdog:
			r.cfg.Watchdog()
		case <-shutdown:
			shutdown = nil
			r.log.Warn("shutdown timeout: stopping workers", "workers", r.running, "grace", r.cfg.KillGrace)
			r.cfg.Host.Stop(supervisor.Reason{Kind: supervisor.ReasonKilled}, r.cfg.KillGrace)
		case <-hard:
			hard = nil
			r.log.Warn("stopping every worker now", "workers", r.running)
			r.draining = true
			r.cfg.Host.Stop(supervisor.Reason{Kind: supervisor.ReasonKilled}, 0)
		}
		r.stats.setLoad(r.running, len(r.queue))
		if r.retired && !r.released && r.running == 0 && len(r.queue) == 0 && len(r.retryTimers) == 0 {
			// Nothing is left for its workers to do: stop its spares and its host's threads.
			r.released = true
			r.cfg.Host.Close()
			r.log.Info("service drained", "service", r.cfg.Name)
		}
		if inbox == nil && r.running == 0 && len(r.retryTimers) == 0 {
			return nil
		}
	}
}

// Settings are the parts of Config that can change while the relay runs.
type Settings struct {
	MaxWorkers, Queue, MaxRestarts                            int
	MessageTimeout, KillGrace, ShutdownTimeout, SlowThreshold time.Duration
}

// Reconfigure hands new settings to the relay's loop, which applies them to what it does from
// then on: running workers keep their deadlines. It returns once they are applied, or at once
// if the relay has stopped.
func (r *Relay) Reconfigure(s Settings) {
	select {
	case r.settings <- s:
	case <-r.done:
	}
}

func (r *Relay) apply(s Settings) {
	c := &r.cfg
	c.MaxWorkers, c.Queue, c.MaxRestarts = max(1, s.MaxWorkers), s.Queue, s.MaxRestarts
	c.MessageTimeout, c.KillGrace, c.ShutdownTimeout, c.SlowThreshold = s.MessageTimeout, s.KillGrace, s.ShutdownTimeout, s.SlowThreshold
	if r.unavailable {
		// A reload may be what the workers lacked (a mistyped argument, say): the next message
		// tries at once rather than after the backoff.
		r.probeAt = time.Now()
	}
	r.pump()
}

// receive handles one message from the inbox: the relay answers stats and status itself and
// hands every other topic, with its data as it came, to a worker.
func (r *Relay) receive(m *Message) {
	r.seq++
	m.seq = r.seq
	switch {
	case r.retired:
		m.Fail(ipc.Errorf(ipc.CodeUnknownName, "no process is registered as %q", r.cfg.Name))
	case m.Req.Topic == TopicStats:
		m.respond(r.Stats(), nil)
	case m.Req.Topic == TopicStatus:
		m.respond(r.Status(), nil)
	default:
		if len(m.Req.Data) == 0 {
			m.Req.Data = json.RawMessage("null") // No data reaches the worker as null.
		}
		r.stats.messages.Add(1)
		r.admit(m, false)
	}
}

// admit starts a worker for m if one may run now, queues it otherwise, or turns it away. A
// retry was admitted before, so it goes to the front of the queue and past its bound.
func (r *Relay) admit(m *Message, retry bool) {
	switch {
	case r.draining:
		m.Fail(ipc.Errorf(ipc.CodeShuttingDown, "relay is shutting down"))
	case r.unavailable && time.Now().Before(r.probeAt):
		m.Fail(ipc.Errorf(ipc.CodeUnavailable, "workers cannot be started (%s); next try in %s",
			r.spawnErr, time.Until(r.probeAt).Round(time.Millisecond)))
	case r.running < r.cfg.MaxWorkers:
		r.spawn(m)
	case retry:
		r.queue = append([]*Message{m}, r.queue...)
	case len(r.queue) < r.cfg.Queue:
		r.queue = append(r.queue, m)
	default:
		m.Fail(ipc.Errorf(ipc.CodeBusy, "all %d workers are busy and %d messages are queued", r.running, len(r.queue)))
	}
}

// spawn is the tutorial's process.spawn_monitored: the worker's reply goes straight to the
// sender, and its end comes back to this loop as an EXIT event.
func (r *Relay) spawn(m *Message) {
	m.attempts++
	m.dispatched = time.Now()
	r.running++
	host := r.cfg.Host.Name()
	attempt := m.attempts
	job := &supervisor.Job{
		ID:      strconv.FormatUint(m.seq, 10),
		Topic:   m.Req.Topic,
		Data:    m.Req.Data,
		Attempt: attempt,
		Timeout: r.cfg.MessageTimeout,
		Tag:     m,
	}
	job.OnReply = func(pid int, wr ipc.WorkerReply) {
		if wr.Error != nil {
			m.Fail(workerError(pid, wr.Error))
			return
		}
		u := job.Usage
		m.Answer(ipc.Reply{Topic: ipc.ResponseTopic(m.Req.Topic), Data: wr.Data, Worker: &ipc.WorkerRef{
			Host: host, PID: pid, Attempt: attempt,
			Usage: &ipc.Usage{WallUS: u.Wall.Microseconds(), CPUUS: u.CPU.Microseconds(), MaxRSSKiB: u.MaxRSS >> 10},
		}})
	}
	r.cfg.Host.Spawn(job)
}

// workerError is the client's error for a worker's error reply: bad_request and unknown_topic
// pass through, since they are the client's to fix; any other is worker_error, with the worker's
// own code, if it gave one, in worker_code.
func workerError(pid int, we *ipc.WorkerError) *ipc.Error {
	msg := we.Message
	if msg == "" {
		msg = fmt.Sprintf("worker %d answered an error without a message", pid)
	}
	switch we.Code {
	case ipc.CodeBadRequest, ipc.CodeUnknownTopic:
		return &ipc.Error{Code: we.Code, Message: msg}
	}
	return &ipc.Error{Code: ipc.CodeWorkerError, Message: msg, WorkerCode: we.Code}
}

// exited handles an event of the host: a worker's EXIT is logged; a job's end answers,
// retries or leaves its message.
func (r *Relay) exited(ev supervisor.Event) {
	if ex := ev.Exit; ex != nil {
		r.logExit(ex, ev.Job)
		if ex.CannotStart() {
			r.spawnFailed(ex)
		} else if ex.Ready && r.unavailable {
			r.unavailable = false
			r.log.Info("workers can be started again", "after_failures", r.probeFails)
			r.probeFails = 0
		}
	}
	if ev.Job == nil {
		return // A spare ended before it had a message.
	}
	r.running--
	m := ev.Job.Tag.(*Message)
	ex := ev.Exit
	if ev.Replied && r.cfg.SlowThreshold > 0 {
		r.logIfSlow(m, ev.Job)
	}
	switch {
	case ev.Replied || ex == nil:
		r.cfg.Budget.Success()
	case ex.Reason.Kind != supervisor.ReasonKilled:
		r.cfg.Budget.Failure()
	}
	switch {
	case m.Answered():
	case ex == nil:
		// Cannot happen: a worker that lives on has replied. Answer rather than lose it.
		m.Fail(ipc.Errorf(ipc.CodeInternal, "worker %d ended the job without a reply", ev.PID))
	case ex.Reason.Transient():
		// Out of descriptors, processes or memory for a moment: this message only.
		m.Fail(ipc.Errorf(ipc.CodeBusy, "no resources to start a worker now: %s", ex.Describe()))
	case ex.CannotStart():
		m.Fail(ipc.Errorf(ipc.CodeUnavailable, "%s", ex.Describe()))
	case ex.Reason.Kind == supervisor.ReasonTimeout:
		// The deadline the attempt ran under, which a reload since may have changed.
		m.Fail(ipc.Errorf(ipc.CodeTimeout, "worker %d did not answer within %s", ex.PID, ev.Job.Timeout))
	case ex.Reason.Kind == supervisor.ReasonKilled:
		m.Fail(ipc.Errorf(ipc.CodeShuttingDown, "relay is shutting down; worker %d was stopped", ex.PID))
	case m.attempts <= r.cfg.MaxRestarts && !r.draining && r.cfg.Budget.Allow():
		r.stats.restarts.Add(1)
		if r.cfg.Observer != nil {
			r.cfg.Observer.Retried(r.cfg.Name)
		}
		delay := r.cfg.Backoff.Delay(m.attempts, r.cfg.Rand)
		r.retryTimers[m] = time.AfterFunc(delay, func() { r.retries <- m })
	default:
		msg := ex.Describe() + "; " + plural(m.attempts, "attempt")
		if m.attempts <= r.cfg.MaxRestarts && !r.draining {
			msg += " (retries paused: too many workers failing)"
		}
		m.Fail(ipc.Errorf(ipc.CodeWorkerFailed, "%s", msg))
	}
	r.pump()
}

// logIfSlow logs a message answered later than SlowThreshold, with where its time went: in the
// queue (and retries), forking the worker, waiting for its ready line, and its work until the reply.
func (r *Relay) logIfSlow(m *Message, job *supervisor.Job) {
	tm := job.Timing
	total := tm.Replied.Sub(m.Accepted)
	if total < r.cfg.SlowThreshold {
		return
	}
	since := func(a, b time.Time) time.Duration { return max(0, a.Sub(b)).Round(time.Microsecond) }
	start := tm.Written
	if tm.Ready.After(start) {
		start = tm.Ready
	}
	fields := []any{"id", string(m.Req.ID), "sender", m.Sender, "total", total.Round(time.Microsecond),
		"queue", since(m.dispatched, m.Accepted), "attempts", m.attempts}
	if tm.Forked.After(m.dispatched) {
		fields = append(fields, "spawn", since(tm.Forked, m.dispatched), "ready", since(tm.Ready, tm.Forked))
	} else {
		fields = append(fields, "spawn", "spare")
	}
	fields = append(fields, "reply", since(tm.Replied, start))
	r.log.Warn("slow message", fields...)
}

// logExit logs a worker's EXIT event, as the tutorial's relay does.
func (r *Relay) logExit(ex *supervisor.Exit, job *supervisor.Job) {
	reason := ex.Reason.String()
	r.stats.exit(reason)
	if r.cfg.Observer != nil {
		r.cfg.Observer.WorkerExited(r.cfg.Name, reason, ex.Duration)
	}
	fields := []any{"from", ex.PID, "result", ex.Result(), "reason", reason,
		"duration", ex.Duration.Round(time.Microsecond)}
	if job != nil {
		fields = append(fields, "attempt", job.Attempt)
	}
	if ex.Served > 1 {
		fields = append(fields, "served", ex.Served)
	}
	if ex.PeakRSS > 0 {
		fields = append(fields, "peak_rss", ex.PeakRSS)
	}
	if !ex.Reason.Abnormal() {
		r.log.Info("worker exited", fields...)
		return
	}
	if ex.Err != nil {
		fields = append(fields, "error", ex.Err.Error())
	}
	if ex.LastWords != "" {
		fields = append(fields, "last_stderr", ex.LastWords)
	}
	r.log.Warn("worker exited", fields...)
}

// spawnFailed enters or extends the unavailable state: until probeAt, messages are answered
// unavailable without trying; the state is logged when it begins, not per message.
func (r *Relay) spawnFailed(ex *supervisor.Exit) {
	r.probeFails++
	delay := r.cfg.ProbeBackoff.Delay(r.probeFails, r.cfg.Rand)
	r.probeAt = time.Now().Add(delay)
	r.spawnErr = errText(ex.Err)
	if ex.Reason.Kind != supervisor.ReasonSpawnFailed {
		r.spawnErr = ex.Describe()
	}
	if !r.unavailable {
		r.unavailable = true
		r.log.Error("spawn failed", "error", r.spawnErr, "next_try", delay.Round(time.Millisecond))
	}
}

// pump starts queued messages while workers may run.
func (r *Relay) pump() {
	for r.running < r.cfg.MaxWorkers && len(r.queue) > 0 {
		m := r.queue[0]
		r.queue[0] = nil
		r.queue = r.queue[1:]
		r.admit(m, true)
	}
}

// drain begins shutdown: queued messages and pending retries are answered shutting_down;
// running workers may finish until ShutdownTimeout.
func (r *Relay) drain() {
	r.draining = true
	for _, m := range r.queue {
		m.Fail(ipc.Errorf(ipc.CodeShuttingDown, "relay is shutting down"))
	}
	r.queue = nil
	for m, t := range r.retryTimers {
		// A timer that already fired is on its way to r.retries; the loop answers it there.
		if t.Stop() {
			delete(r.retryTimers, m)
			m.Fail(ipc.Errorf(ipc.CodeShuttingDown, "relay is shutting down"))
		}
	}
	if r.running > 0 {
		r.log.Info("draining", "workers", r.running, "timeout", r.cfg.ShutdownTimeout)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}
