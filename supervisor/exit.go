package supervisor

import (
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Reason classifies how a worker ended. Its String form is the stable text used in logs, in
// error replies and in metrics: normal, exit(N), signal(SIGSEGV), timeout, killed,
// spawn_failed(ENOENT), protocol.
type Reason struct {
	Kind   ReasonKind
	Code   int            // exit status, for ReasonExit
	Signal syscall.Signal // for ReasonSignal
	Errno  syscall.Errno  // for ReasonSpawnFailed, 0 when the error had none
}

// ReasonKind is the class of a Reason.
type ReasonKind uint8

// The kinds of Reason.
const (
	ReasonNormal      ReasonKind = iota // replied and exited 0
	ReasonExit                          // exited with a non-zero status
	ReasonSignal                        // killed by a signal it did not get from relayd
	ReasonTimeout                       // relayd stopped it at --message-timeout
	ReasonKilled                        // relayd stopped it for another reason (shutdown)
	ReasonSpawnFailed                   // the executable could not be started
	ReasonProtocol                      // a missing, malformed or unexpected protocol line
)

func (r Reason) String() string {
	switch r.Kind {
	case ReasonNormal:
		return "normal"
	case ReasonExit:
		return fmt.Sprintf("exit(%d)", r.Code)
	case ReasonSignal:
		return "signal(" + SignalName(r.Signal) + ")"
	case ReasonTimeout:
		return "timeout"
	case ReasonKilled:
		return "killed"
	case ReasonSpawnFailed:
		if r.Errno != 0 {
			return "spawn_failed(" + unix.ErrnoName(r.Errno) + ")"
		}
		return "spawn_failed"
	case ReasonProtocol:
		return "protocol"
	}
	return "unknown"
}

// Abnormal reports whether a worker that ended this way failed its message.
func (r Reason) Abnormal() bool { return r.Kind != ReasonNormal }

// SignalName returns the conventional name of sig, such as SIGSEGV.
func SignalName(sig syscall.Signal) string {
	if n := unix.SignalName(sig); n != "" {
		return n
	}
	return fmt.Sprintf("SIG%d", int(sig))
}

// Exit is the EXIT event of one worker process: everything relayd learnt about its life.
type Exit struct {
	PID      int
	Started  time.Time
	Duration time.Duration

	// ExitCode is the exit status, or -1 when the process was killed by a signal or never ran.
	ExitCode   int
	Signal     syscall.Signal
	CoreDumped bool

	Reason Reason
	// Ready reports that its ready frame arrived: it got as far as serving.
	Ready bool
	// Replied reports whether the worker answered the request it had when it ended.
	Replied bool
	// Served counts the requests it answered.
	Served int
	// PeakRSS is the worker's VmHWM in bytes, read from /proc while it was alive; 0 if unknown.
	PeakRSS int64
	// Err says what went wrong, for spawn and protocol failures.
	Err error
	// LastWords is the last line the worker wrote to stderr before it died on its own (a
	// non-zero status, a signal relayd did not send): the headline of a Go
	// crash report ("fatal error: runtime: out of memory"), the last line of a Python
	// traceback, the message of a JSON log line. Empty when it said nothing, or when relayd
	// stopped it or it ended normally.
	LastWords string
	// OutOfMemory reports that its last words tell of a memory-limit death, so that it is told
	// apart from a crash of the same exit status (a Go panic also exits 2).
	OutOfMemory bool
}

// lastWords records the worker's last stderr line when it died abnormally on its own.
func (e *Exit) lastWords(words string) {
	switch e.Reason.Kind {
	case ReasonExit, ReasonSignal:
		e.LastWords = words
		e.OutOfMemory = words != "" && saysOutOfMemory(words)
	}
}

// CannotStart reports a worker that could not get to its ready frame on its own: its
// executable could not be started, or it exited, died or broke the protocol before its ready
// frame without relayd stopping it (a deadline or a shutdown). Such a worker says nothing about
// its message and everything about its command line or installation, so it is answered
// unavailable rather than retried.
func (e *Exit) CannotStart() bool {
	switch e.Reason.Kind {
	case ReasonSpawnFailed:
		return !e.Reason.Transient()
	case ReasonTimeout, ReasonKilled:
		return false
	}
	return !e.Ready
}

// Transient reports a spawn failure for want of a resource that may be free again in a
// moment — descriptors (EMFILE, ENFILE), processes or memory (EAGAIN, ENOMEM) — as opposed to a
// worker that cannot be started at all.
func (r Reason) Transient() bool {
	if r.Kind != ReasonSpawnFailed {
		return false
	}
	switch r.Errno {
	case unix.EMFILE, unix.ENFILE, unix.EAGAIN, unix.ENOMEM:
		return true
	}
	return false
}

// Result describes the exit as a sentence, e.g. "killed by signal SIGSEGV", "exited with status
// 1" or "ran out of memory (exited with status 2)".
func (e *Exit) Result() string {
	switch {
	case e.Reason.Kind == ReasonSpawnFailed:
		return "could not be started: " + errString(e.Err)
	case e.OutOfMemory:
		e := *e
		e.OutOfMemory = false
		return "ran out of memory (" + e.Result() + ")"
	case e.Signal != 0:
		s := "killed by signal " + SignalName(e.Signal)
		if e.CoreDumped {
			s += " (core dumped)"
		}
		return s
	default:
		return fmt.Sprintf("exited with status %d", e.ExitCode)
	}
}

// Describe explains an abnormal end for the sender, e.g. "worker 48213 killed by signal
// SIGSEGV", with the worker's last words when it left some: "worker 48213 exited with status 2:
// panic: boom".
func (e *Exit) Describe() string {
	d := e.describe()
	if e.Reason.Kind != ReasonSpawnFailed && e.CannotStart() {
		d += " before its ready line"
	}
	if e.LastWords != "" {
		d += ": " + e.LastWords
	}
	return d
}

func (e *Exit) describe() string {
	switch e.Reason.Kind {
	case ReasonSpawnFailed:
		return "worker " + e.Result()
	case ReasonProtocol:
		return fmt.Sprintf("worker %d broke the protocol: %s (%s)", e.PID, errString(e.Err), e.Result())
	case ReasonTimeout:
		return fmt.Sprintf("worker %d did not answer in time and was stopped (%s)", e.PID, e.Result())
	}
	return fmt.Sprintf("worker %d %s", e.PID, e.Result())
}

func errString(err error) string {
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}

// classify fills in the exit's status fields and reason from the wait status. stopped is the
// reason relayd itself stopped the worker for (timeout or killed), if it did; protoErr is the
// malformed line relayd saw, if any; owedReply says the worker still owed a reply (it had a job
// it did not answer — whether or not it served others before — or went on its own before
// serving anything). The first that applies wins: stopped, protocol, signal, non-zero status,
// no reply, normal.
func (e *Exit) classify(ws syscall.WaitStatus, stopped *Reason, protoErr error, owedReply bool) {
	e.ExitCode = -1
	switch {
	case ws.Exited():
		e.ExitCode = ws.ExitStatus()
	case ws.Signaled():
		e.Signal = ws.Signal()
		e.CoreDumped = ws.CoreDump()
	}
	switch {
	case stopped != nil:
		e.Reason = *stopped
	case protoErr != nil:
		e.Reason, e.Err = Reason{Kind: ReasonProtocol}, protoErr
	case e.Signal != 0:
		e.Reason = Reason{Kind: ReasonSignal, Signal: e.Signal}
	case e.ExitCode != 0:
		e.Reason = Reason{Kind: ReasonExit, Code: e.ExitCode}
	case owedReply:
		e.Reason, e.Err = Reason{Kind: ReasonProtocol}, ErrNoReply
	default:
		e.Reason = Reason{Kind: ReasonNormal}
	}
}
