package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"relayd/internal/testbin"
	"relayd/ipc"
)

// recvEvent returns the next event of h, or fails the test after timeout.
func recvEvent(t *testing.T, h *Host, timeout time.Duration, what string) Event {
	t.Helper()
	select {
	case ev := <-h.Events():
		return ev
	case <-time.After(timeout):
		t.Fatalf("no event within %v: want %s", timeout, what)
	}
	panic("unreachable")
}

func TestDecodeFrame(t *testing.T) {
	line := func(s string) Frame { return Frame{Line: []byte(s)} }
	tests := []struct {
		name    string
		frame   Frame
		want    owed
		id      string
		wantErr string // "" for none
		wantPID int
		wantRep string
	}{
		{name: "ready", frame: line(`{"ready":true,"protocol":1,"pid":7}`), want: owesReady, wantPID: 7},
		{name: "ready, decoded by its transport", frame: Frame{Ready: &ipc.Ready{Ready: true, Protocol: 1, PID: 8}}, want: owesReady, wantPID: 8},
		{name: "not json instead of ready", frame: line(`hello`), want: owesReady, wantErr: `want a ready line, got "hello"`},
		{name: "ready false", frame: line(`{"ready":false,"protocol":1}`), want: owesReady, wantErr: "want a ready line"},
		{name: "reply instead of ready", frame: line(`{"id":"1","data":"X"}`), want: owesReady, wantErr: "want a ready line"},
		{name: "wrong protocol", frame: line(`{"ready":true,"protocol":2}`), want: owesReady, wantErr: "worker speaks protocol 2, want 1"},
		{name: "reply", frame: line(`{"id":"1","data":"X"}`), want: owesReply, id: "1", wantRep: `"X"`},
		{name: "reply, decoded by its transport", frame: Frame{Reply: &ipc.WorkerReply{ID: "1", Data: json.RawMessage(`"Y"`)}}, want: owesReply, id: "1", wantRep: `"Y"`},
		{name: "reply for another id", frame: line(`{"id":"2","data":"X"}`), want: owesReply, id: "1", wantErr: `reply for id "2", want "1"`},
		{name: "garbage instead of reply", frame: line(`this is not json`), want: owesReply, id: "1", wantErr: `want a reply line, got "this is not json"`},
		{name: "line when nothing is owed", frame: line(`{"id":"1","data":"X"}`), want: owesNothing, wantErr: "unexpected line"},
		{name: "long garbage is clipped", frame: line(strings.Repeat("x", 200)), want: owesReply, id: "1", wantErr: strings.Repeat("x", 80) + "…"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ready, reply, err := decodeFrame(tt.frame, tt.want, tt.id)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if ready.PID != tt.wantPID || string(reply.Data) != tt.wantRep {
				t.Errorf("ready pid %d, reply %s; want %d, %s", ready.PID, reply.Data, tt.wantPID, tt.wantRep)
			}
		})
	}
}

func TestTransitions(t *testing.T) {
	// Every state but exited is left for draining; nothing leaves exited; nothing goes back
	// to starting.
	for from := StateStarting; from <= StateExited; from++ {
		if got, want := canMove(from, StateDraining), from < StateDraining; got != want {
			t.Errorf("%s -> draining allowed = %v, want %v", from, got, want)
		}
		if canMove(from, StateStarting) {
			t.Errorf("%s -> starting allowed", from)
		}
		if from == StateExited && len(transitions[from]) > 0 {
			t.Errorf("exited has transitions %v", transitions[from])
		}
	}
	if canMove(StateStarting, StateExited) || !canMove(StateBusy, StateIdle) || !canMove(StateStarting, StateBusy) {
		t.Error("transition table changed: update the diagram in worker.go and docs/SUPERVISION.md")
	}
}

// TestSparesThatCannotStartDoNotLoop starts spares whose worker exits before its ready line
// (a bad argument): they must be forked once each, not again and again, and logged once; new
// settings that work bring them back.
func TestSparesThatCannotStartDoNotLoop(t *testing.T) {
	var buf testbin.SyncBuffer
	log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Warn})
	h := newHost(t, Options{Path: workerBin, Args: []string{"--bogus"}, Spares: 2, Logger: log})
	for range 2 {
		ev := recvEvent(t, h, 10*time.Second, "a spare exiting on its bad argument")
		if ev.Exit == nil || ev.Job != nil || ev.Exit.Reason.Kind != ReasonExit || ev.Exit.Ready || !ev.Exit.CannotStart() {
			t.Fatalf("event %+v, want a spare that exited non-zero before its ready line", ev.Exit)
		}
	}
	// Forking again would be at once; half a second of quiet on a loaded machine is plenty.
	select {
	case ev := <-h.Events():
		t.Fatalf("spare forked again after failing to start: %+v (%d forks)", ev.Exit, h.Spawned())
	case <-time.After(500 * time.Millisecond):
	}
	if n := h.Spawned(); n != 2 {
		t.Errorf("%d forks, want the 2 spares once", n)
	}
	if n := strings.Count(buf.String(), "spare workers paused"); n != 1 {
		t.Errorf("logged the pause %d times, want once:\n%s", n, buf.String())
	}
	h.Reconfigure(WorkerSpec{Args: []string{"--delay=0s"}, KillGrace: 200 * time.Millisecond})
	waitFor(t, "the spares to start with the new arguments", func() bool { return h.Idle() == 2 })
}

// TestStopCatchesWorkersBeingForked stops the Host right after spawning: workers that were
// between Spawn and their fork must be stopped too, not live on.
func TestStopCatchesWorkersBeingForked(t *testing.T) {
	const n = 16
	h := newHost(t, Options{Path: script(t, "trap '' TERM\n"+readyLine+"\nexec sleep 30"), KillGrace: 100 * time.Millisecond})
	for i := range n {
		h.Spawn(&Job{ID: strconv.Itoa(i), Topic: "echo", Data: json.RawMessage(`"x"`), Attempt: 1})
	}
	h.Stop(Reason{Kind: ReasonKilled}, 100*time.Millisecond)
	for i := range n {
		ev := recvEvent(t, h, 10*time.Second, fmt.Sprintf("EXIT %d of %d (a worker forked after Stop lives on for 30s)", i+1, n))
		if got := ev.Exit.Reason.String(); got != "killed" && got != "spawn_failed" {
			t.Errorf("reason = %q, want killed", got)
		}
	}
	// A job spawned after Stop is stopped as soon as its worker is forked.
	h.Spawn(&Job{ID: "late", Topic: "echo", Data: json.RawMessage(`"x"`), Attempt: 1})
	if ev := recvEvent(t, h, 10*time.Second, "the EXIT of a worker forked after Stop"); ev.Exit.Reason.Kind != ReasonKilled {
		t.Errorf("late worker: reason = %s, want killed", ev.Exit.Reason)
	}
}

// TestReusedWorkerExitingMidJob checks that a worker serving its second job that exits 0
// without answering broke the protocol, like a fresh one.
func TestReusedWorkerExitingMidJob(t *testing.T) {
	h := newHost(t, Options{Path: workerBin, Args: []string{"--delay=0s"}, Env: []string{"RELAY_FAULTS=1"}, MaxRequests: 3, MaxIdle: 1})
	h.Spawn(&Job{ID: "1", Topic: "echo", Data: json.RawMessage(`"x"`), Attempt: 1})
	if ev := recvEvent(t, h, 10*time.Second, "the first job's end"); !ev.Replied || ev.Exit != nil {
		t.Fatalf("first job: %+v, want a reply and a worker that lives on", ev)
	}
	h.Spawn(&Job{ID: "2", Topic: "echo", Data: json.RawMessage(`"!noreply"`), Attempt: 1})
	ev := recvEvent(t, h, 10*time.Second, "the EXIT of the worker that quit mid-job")
	if ev.Exit == nil || ev.Replied || ev.Job == nil || ev.Job.ID != "2" {
		t.Fatalf("event %+v, want job 2 unanswered with the worker's EXIT", ev)
	}
	if got := ev.Exit.Reason.String(); got != "protocol" || !errors.Is(ev.Exit.Err, ErrNoReply) || ev.Exit.Served != 1 {
		t.Errorf("reason = %s (%v), served %d; want protocol (exited without a reply), 1", got, ev.Exit.Err, ev.Exit.Served)
	}
}

// TestLaunch runs the worker through a pre-exec stage of the caller's, as a sandbox does: it
// edits the command, forks from a thread of its own and gets it back after the reap. A start it
// fails is spawn_failed.
func TestLaunch(t *testing.T) {
	wrapper := script(t, `export WRAPPED=yes; exec "$@"`)
	released := make(chan struct{}, 1)
	h := newHost(t, Options{Path: workerBin, Args: []string{"--delay=0s"}, Env: []string{"RELAY_FAULTS=1"},
		Launch: func(cmd *exec.Cmd, fork func() error) (func(), error) {
			cmd.Args = append([]string{wrapper, cmd.Path}, cmd.Args[1:]...)
			cmd.Path = wrapper
			forked := make(chan error)
			release := make(chan struct{})
			go func() {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				forked <- fork()
				<-release
			}()
			return func() { close(release); released <- struct{}{} }, <-forked
		}})
	ex, reply := spawnOne(t, h, &Job{ID: "1", Topic: "echo", Data: json.RawMessage(`"!env"`), Attempt: 1})
	if reply == nil || !strings.Contains(string(reply.Data), "WRAPPED=yes") {
		t.Fatalf("reply = %v (exit %s %v), want the wrapper's environment", reply, ex.Reason, ex.Err)
	}
	select {
	case <-released:
	default:
		t.Error("the launch's thread was not released by the time of the EXIT")
	}

	h = newHost(t, Options{Path: workerBin, Launch: func(*exec.Cmd, func() error) (func(), error) {
		return nil, fmt.Errorf("no room: %w", syscall.EMFILE)
	}})
	ex, _ = spawnOne(t, h, &Job{ID: "1", Topic: "echo", Data: json.RawMessage(`"x"`), Attempt: 1})
	if got := ex.Reason.String(); got != "spawn_failed(EMFILE)" || !ex.Reason.Transient() || ex.CannotStart() {
		t.Errorf("reason = %s (transient %v, cannot start %v), want a transient spawn_failed(EMFILE)", got, ex.Reason.Transient(), ex.CannotStart())
	}
}

// TestReusedWorkerIsIdleBeforeItsAnswerLeaves sends the next message from the reply callback,
// as a client does on reading its answer: a worker that serves more must take it, not a fork.
func TestReusedWorkerIsIdleBeforeItsAnswerLeaves(t *testing.T) {
	h := newHost(t, Options{Path: workerBin, Args: []string{"--delay=0s"}, MaxRequests: 3, MaxIdle: 1})
	pids := make(chan int, 2)
	second := &Job{ID: "2", Topic: "echo", Data: json.RawMessage(`"b"`), Attempt: 1,
		OnReply: func(pid int, _ ipc.WorkerReply) { pids <- pid }}
	h.Spawn(&Job{ID: "1", Topic: "echo", Data: json.RawMessage(`"a"`), Attempt: 1,
		OnReply: func(pid int, _ ipc.WorkerReply) { pids <- pid; h.Spawn(second) }})
	for range 2 {
		recvEvent(t, h, 10*time.Second, "a job's end")
	}
	first, next := <-pids, <-pids
	if first != next || h.Spawned() != 1 {
		t.Errorf("jobs answered by %d then %d, %d forks; want one worker for both", first, next, h.Spawned())
	}
}
