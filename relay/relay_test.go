package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/go-hclog"

	"relayd/internal/testbin"
	"relayd/ipc"
	"relayd/supervisor"
)

// harness runs a real relay over a real Host of real worker processes.
type harness struct {
	t      *testing.T
	relay  *Relay
	host   *supervisor.Host
	cancel context.CancelFunc
	done   chan error
	logs   *testbin.SyncBuffer
}

func startRelay(t *testing.T, hopts supervisor.Options, cfg Config) *harness {
	t.Helper()
	logs := &testbin.SyncBuffer{}
	log := hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Debug})
	if hopts.Path == "" {
		hopts.Path = workerBin
	}
	if hopts.Args == nil {
		hopts.Args = []string{"--delay=0s"}
	}
	if hopts.Env == nil {
		hopts.Env = []string{"RELAY_FAULTS=1"}
	}
	if hopts.KillGrace == 0 {
		hopts.KillGrace = 100 * time.Millisecond
	}
	hopts.Logger = log
	host, err := supervisor.New(hopts)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Host = host
	cfg.Logger = log
	cfg.Rand = func() float64 { return 0 }
	if cfg.MaxWorkers == 0 {
		cfg.MaxWorkers = 8
	}
	if cfg.Queue == 0 {
		cfg.Queue = 64
	}
	if cfg.Backoff.Initial == 0 {
		cfg.Backoff = supervisor.Backoff{Initial: 10 * time.Millisecond, Max: time.Second, Multiplier: 2}
	}
	if cfg.ProbeBackoff.Initial == 0 {
		cfg.ProbeBackoff = supervisor.Backoff{Initial: time.Minute, Max: time.Minute}
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, relay: New(cfg), host: host, cancel: cancel, done: make(chan error, 1), logs: logs}
	go func() { h.done <- h.relay.Run(ctx) }()
	t.Cleanup(func() { h.stop() })
	return h
}

// stop closes the inbox, waits for Run and closes the host. It is safe to call twice.
func (h *harness) stop() {
	if h.done == nil {
		return
	}
	h.relay.CloseInbox()
	select {
	case <-h.done:
	case <-time.After(15 * time.Second):
		h.t.Error("relay did not stop within 15s")
	}
	h.done = nil
	h.cancel()
	h.host.Close()
}

// waitBusy waits until n workers have a job, so that a test can act while messages run.
func (h *harness) waitBusy(n int) {
	h.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		busy := 0
		for _, w := range h.host.Workers() {
			if w.Job != nil {
				busy++
			}
		}
		if busy >= n {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%d of %d workers busy after 15s", busy, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// send delivers one message and returns a channel with its answers (there must be exactly one).
func (h *harness) send(topic, data string) <-chan ipc.Reply {
	answers := make(chan ipc.Reply, 2)
	raw, _ := json.Marshal(data)
	h.relay.Inbox() <- NewMessage(ipc.Request{To: Name, Topic: topic, Data: raw}, "test", func(r ipc.Reply) { answers <- r })
	return answers
}

func waitAnswer(t *testing.T, answers <-chan ipc.Reply) ipc.Reply {
	t.Helper()
	select {
	case r := <-answers:
		return r
	case <-time.After(15 * time.Second):
		t.Fatal("no answer within 15s")
	}
	panic("unreachable")
}

func code(r ipc.Reply) string {
	if r.Error == nil {
		return ""
	}
	return r.Error.Code
}

func TestAnswers(t *testing.T) {
	tests := []struct {
		data, wantCode, wantData, wantMsg string
	}{
		{data: "hello world", wantData: `"HELLO WORLD"`},
		// The worker's last stderr line (its log line of the fault) says what it died of.
		{data: "!crash", wantCode: ipc.CodeWorkerFailed, wantMsg: "exited with status 1: fault injected directive=!crash; 3 attempts"},
		{data: "!segv", wantCode: ipc.CodeWorkerFailed, wantMsg: "killed by signal SIGSEGV: fault injected directive=!segv; 3 attempts"},
		{data: "!panic", wantCode: ipc.CodeWorkerFailed, wantMsg: "exited with status 2: panic: fault injected: !panic; 3 attempts"},
		{data: "!garbage", wantCode: ipc.CodeWorkerFailed, wantMsg: "broke the protocol"},
		{data: "!noreply", wantCode: ipc.CodeWorkerFailed, wantMsg: "exited without a reply"},
		{data: "!flaky 2", wantData: `"!FLAKY 2"`},
		{data: "!hang", wantCode: ipc.CodeTimeout, wantMsg: "did not answer within 300ms"},
	}
	h := startRelay(t, supervisor.Options{}, Config{MaxRestarts: 2, MessageTimeout: 300 * time.Millisecond, Budget: NewRetryBudget(1000, 1)})
	for _, tt := range tests {
		t.Run(tt.data, func(t *testing.T) {
			answers := h.send(TopicEcho, tt.data)
			r := waitAnswer(t, answers)
			if got := code(r); got != tt.wantCode {
				t.Fatalf("code = %q, want %q (answer %+v %v)", got, tt.wantCode, r, r.Error)
			}
			if tt.wantData != "" {
				if got := string(r.Data); got != tt.wantData {
					t.Errorf("data = %s, want %s", got, tt.wantData)
				}
				if r.Worker == nil || r.Worker.Host != "processes" || r.Worker.PID <= 0 {
					t.Errorf("worker = %+v, want host processes and a pid", r.Worker)
				}
				if r.Topic != "echo_response" {
					t.Errorf("topic = %q, want echo_response", r.Topic)
				}
			}
			if tt.wantMsg != "" && !strings.Contains(r.Error.Message, tt.wantMsg) {
				t.Errorf("message = %q, want it to contain %q", r.Error.Message, tt.wantMsg)
			}
		})
	}
	h.stop()
	if s := h.relay.Stats(); s.Messages != uint64(len(tests)) || s.InFlight != 0 {
		t.Errorf("stats = %+v, want %d messages and none in flight", s, len(tests))
	}
}

// TestBadMessages checks that the relay forwards any topic and data to the worker, which
// refuses what it cannot serve: its bad_request and unknown_topic reach the client as they are,
// any other error as worker_error with the worker's code, and none is retried.
func TestBadMessages(t *testing.T) {
	h := startRelay(t, supervisor.Options{}, Config{})
	tests := []struct {
		topic, data string
		raw         string
		wantCode    string
	}{
		{topic: "nosuch", data: "x", wantCode: ipc.CodeUnknownTopic},
		{topic: TopicEcho, raw: `42`, wantCode: ipc.CodeBadRequest},
		{topic: TopicEcho, raw: ``, wantCode: ipc.CodeBadRequest},
		{topic: TopicEcho, raw: `null`, wantCode: ipc.CodeBadRequest},
		{topic: TopicEcho, raw: `["x"]`, wantCode: ipc.CodeBadRequest},
		{topic: TopicEcho, data: "!exit", wantCode: ipc.CodeWorkerError},
	}
	for _, tt := range tests {
		answers := make(chan ipc.Reply, 2)
		req := ipc.Request{To: Name, Topic: tt.topic, Data: json.RawMessage(tt.raw)}
		if tt.raw == "" && tt.data != "" {
			req.Data, _ = json.Marshal(tt.data)
		}
		h.relay.Inbox() <- NewMessage(req, "test", func(r ipc.Reply) { answers <- r })
		if got := code(waitAnswer(t, answers)); got != tt.wantCode {
			t.Errorf("topic %q data %q: code = %q, want %q", tt.topic, tt.raw, got, tt.wantCode)
		}
	}
	if n := h.host.Spawned(); n != uint64(len(tests)) {
		t.Errorf("%d workers spawned for %d messages, want one each (no retries)", n, len(tests))
	}
}

func TestBusyWhenQueueFull(t *testing.T) {
	h := startRelay(t, supervisor.Options{Args: []string{"--delay=300ms"}}, Config{MaxWorkers: 1, Queue: 1})
	first, second, third := h.send(TopicEcho, "a"), h.send(TopicEcho, "b"), h.send(TopicEcho, "c")
	if got := code(waitAnswer(t, third)); got != ipc.CodeBusy {
		t.Errorf("third message: code = %q, want busy", got)
	}
	for _, a := range []<-chan ipc.Reply{first, second} {
		if r := waitAnswer(t, a); r.Error != nil {
			t.Errorf("queued message failed: %v", r.Error)
		}
	}
}

func TestUnavailableIsLoggedOnce(t *testing.T) {
	h := startRelay(t, supervisor.Options{Path: filepath.Join(t.TempDir(), "missing")}, Config{})
	for i := range 5 {
		r := waitAnswer(t, h.send(TopicEcho, "x"))
		if got := code(r); got != ipc.CodeUnavailable {
			t.Fatalf("message %d: code = %q, want unavailable", i, got)
		}
	}
	h.stop()
	if n := strings.Count(h.logs.String(), "spawn failed"); n != 1 {
		t.Errorf("logged %q %d times, want once for the change of state:\n%s", "spawn failed", n, h.logs)
	}
	if n := h.relay.Stats().Exits["spawn_failed(ENOENT)"]; n != 1 {
		t.Errorf("%d spawn attempts, want 1: the rest are answered without trying until the probe is due", n)
	}
}

func TestRetryBudgetStopsCrashStorm(t *testing.T) {
	h := startRelay(t, supervisor.Options{}, Config{MaxWorkers: 1, MaxRestarts: 2, Budget: NewRetryBudget(10, 0.1)})
	var paused int
	for range 10 {
		r := waitAnswer(t, h.send(TopicEcho, "!crash"))
		if code(r) != ipc.CodeWorkerFailed {
			t.Fatalf("code = %q, want worker_failed", code(r))
		}
		if strings.Contains(r.Error.Message, "retries paused") {
			paused++
		}
	}
	s := h.relay.Stats()
	// Five failures spend half the budget: retries stop there, first attempts go on.
	if s.Restarts >= 10 || paused == 0 {
		t.Errorf("restarts = %d, paused answers = %d; want the budget to stop retries early", s.Restarts, paused)
	}
	if got, want := s.Exits["exit(1)"], 10+s.Restarts; got != want {
		t.Errorf("exits = %d, want one per first attempt plus one per restart = %d", got, want)
	}
}

func TestDrainAnswersEverything(t *testing.T) {
	h := startRelay(t, supervisor.Options{Args: []string{"--delay=200ms"}}, Config{MaxWorkers: 1, Queue: 8, ShutdownTimeout: 5 * time.Second})
	running := h.send(TopicEcho, "first")
	h.waitBusy(1)
	queued := []<-chan ipc.Reply{h.send(TopicEcho, "second"), h.send(TopicEcho, "third")}
	h.stop()
	if r := waitAnswer(t, running); r.Error != nil || string(r.Data) != `"FIRST"` {
		t.Errorf("running message: %+v %v, want its reply", r, r.Error)
	}
	for _, a := range queued {
		if got := code(waitAnswer(t, a)); got != ipc.CodeShuttingDown {
			t.Errorf("queued message: code = %q, want shutting_down", got)
		}
	}
}

func TestShutdownTimeoutStopsWorkers(t *testing.T) {
	h := startRelay(t, supervisor.Options{}, Config{ShutdownTimeout: 200 * time.Millisecond, MessageTimeout: time.Minute})
	answers := h.send(TopicEcho, "!hang")
	h.waitBusy(1)
	start := time.Now()
	h.stop()
	if got := code(waitAnswer(t, answers)); got != ipc.CodeShuttingDown {
		t.Errorf("code = %q, want shutting_down", got)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %v with a 200ms timeout and 100ms grace", d)
	}
}

// TestRetryBackoffTiming runs the relay in a synctest bubble. Real workers run while fake time
// stands still, so the fake time between a message and its answer is exactly the backoff.
func TestRetryBackoffTiming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		host, err := supervisor.New(supervisor.Options{Path: workerBin, Args: []string{"--delay=0s"}, Env: []string{"RELAY_FAULTS=1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer host.Close()
		r := New(Config{Host: host, MaxWorkers: 4, Queue: 4, MaxRestarts: 3, Rand: func() float64 { return 0 }, Budget: NewRetryBudget(1000, 1),
			Backoff: supervisor.Backoff{Initial: 100 * time.Millisecond, Max: 250 * time.Millisecond, Multiplier: 2}})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error)
		go func() { done <- r.Run(ctx) }()

		tests := []struct {
			data     string
			wantCode string
			want     time.Duration
		}{
			{"!flaky 1", "", 100 * time.Millisecond},
			{"!flaky 3", "", 100*time.Millisecond + 200*time.Millisecond + 250*time.Millisecond},
			{"!crash", ipc.CodeWorkerFailed, 550 * time.Millisecond},
		}
		for _, tt := range tests {
			answers := make(chan ipc.Reply, 2)
			raw, _ := json.Marshal(tt.data)
			start := time.Now()
			r.Inbox() <- NewMessage(ipc.Request{To: Name, Topic: TopicEcho, Data: raw}, "test", func(a ipc.Reply) { answers <- a })
			var a ipc.Reply
			select {
			case a = <-answers:
			case <-time.After(time.Hour):
				// Fake time moves only while nothing in the bubble runs, so this fires only
				// when the relay is stuck, not while a real worker is busy.
				t.Fatalf("%s: no answer: the relay is stuck", tt.data)
			}
			if got := code(a); got != tt.wantCode {
				t.Errorf("%s: code = %q, want %q", tt.data, got, tt.wantCode)
			}
			if got := time.Since(start); got != tt.want {
				t.Errorf("%s: answered after %v of backoff, want %v", tt.data, got, tt.want)
			}
		}
		r.CloseInbox()
		select {
		case <-done:
		case <-time.After(time.Hour):
			t.Fatal("the relay did not stop")
		}
	})
}

func TestSlowMessagesAreExplained(t *testing.T) {
	h := startRelay(t, supervisor.Options{Args: []string{"--delay=150ms"}}, Config{SlowThreshold: 100 * time.Millisecond})
	if r := waitAnswer(t, h.send(TopicEcho, "slow")); r.Error != nil {
		t.Fatal(r.Error)
	}
	h.stop()
	log := h.logs.String()
	if !strings.Contains(log, "slow message") {
		t.Fatalf("no slow message logged:\n%s", log)
	}
	for _, field := range []string{"total=", "queue=", "spawn=", "ready=", "reply="} {
		if !strings.Contains(log, field) {
			t.Errorf("slow message log lacks %q:\n%s", field, log)
		}
	}
	// The reply took at least the worker's 150ms delay (more on a loaded machine).
	m := regexp.MustCompile(`reply=([0-9.]+)(ms|s)\b`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no reply duration in the log:\n%s", log)
	}
	d, _ := time.ParseDuration(m[1] + m[2])
	if d < 150*time.Millisecond {
		t.Errorf("reply = %v, want at least the worker's 150ms delay:\n%s", d, log)
	}
}

// TestWorkerThatCannotGetReadyIsUnavailable runs a worker that exits before its ready line (a
// bad argument): like a missing executable, that is unavailable, logged once, not retried.
func TestWorkerThatCannotGetReadyIsUnavailable(t *testing.T) {
	h := startRelay(t, supervisor.Options{Args: []string{"--bogus"}}, Config{MaxRestarts: 2})
	for i := range 5 {
		r := waitAnswer(t, h.send(TopicEcho, "x"))
		if got := code(r); got != ipc.CodeUnavailable {
			t.Fatalf("message %d: code = %q (%v), want unavailable", i, got, r.Error)
		}
		if i == 0 && !strings.Contains(r.Error.Message, "before its ready line") {
			t.Errorf("message = %q, want the reason", r.Error.Message)
		}
	}
	if n := h.host.Spawned(); n != 1 {
		t.Errorf("%d workers forked, want 1: no retries, and the rest answered at once", n)
	}
	// A reload that fixes the arguments is tried at the next message, not after the backoff.
	h.host.Reconfigure(supervisor.WorkerSpec{Args: []string{"--delay=0s"}, KillGrace: 100 * time.Millisecond})
	h.relay.Reconfigure(Settings{MaxWorkers: 8, Queue: 64, MaxRestarts: 2})
	if r := waitAnswer(t, h.send(TopicEcho, "x")); r.Error != nil {
		t.Errorf("after a reload with good arguments: %v, want the reply", r.Error)
	}
	h.stop()
	if n := strings.Count(h.logs.String(), "spawn failed"); n != 1 {
		t.Errorf("logged %q %d times, want once:\n%s", "spawn failed", n, h.logs)
	}
	if !strings.Contains(h.logs.String(), "workers can be started again") {
		t.Errorf("the end of the unavailable state was not logged:\n%s", h.logs)
	}
}

// TestTransientSpawnFailureIsBusy fails forks with EMFILE: that message is busy, and the relay
// does not turn unavailable.
func TestTransientSpawnFailureIsBusy(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	h := startRelay(t, supervisor.Options{Launch: func(_ *exec.Cmd, fork func() error) (func(), error) {
		if fail.Load() {
			return nil, fmt.Errorf("making a pipe: %w", syscall.EMFILE)
		}
		return nil, fork()
	}}, Config{})
	r := waitAnswer(t, h.send(TopicEcho, "x"))
	if got := code(r); got != ipc.CodeBusy || !strings.Contains(r.Error.Message, "too many open files") {
		t.Fatalf("code = %q (%v), want busy naming the shortage", got, r.Error)
	}
	fail.Store(false)
	if r := waitAnswer(t, h.send(TopicEcho, "y")); r.Error != nil {
		t.Fatalf("next message: %v, want its reply (no unavailable state)", r.Error)
	}
}

// TestTimeoutQuotesItsDeadline reloads a longer message timeout while a message runs under the
// old one: its answer quotes the deadline it ran under.
func TestTimeoutQuotesItsDeadline(t *testing.T) {
	h := startRelay(t, supervisor.Options{}, Config{MessageTimeout: 300 * time.Millisecond})
	answers := h.send(TopicEcho, "!hang")
	h.waitBusy(1)
	h.relay.Reconfigure(Settings{MaxWorkers: 8, Queue: 64, MessageTimeout: time.Minute})
	var r ipc.Reply
	select {
	case r = <-answers:
	case <-time.After(5 * time.Second):
		t.Fatalf("no answer:\n%s", h.logs)
	}
	if got := code(r); got != ipc.CodeTimeout || !strings.Contains(r.Error.Message, "within 300ms") {
		t.Errorf("answer = %q %v, want timeout quoting 300ms\n%s", got, r.Error, h.logs)
	}
}
