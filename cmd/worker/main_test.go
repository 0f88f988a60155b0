package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"relayd/internal/testbin"
	"relayd/ipc"
)

// workerBin is the worker executable TestMain builds, the way the benchmark measures it.
var workerBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "worker-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// exec passes on every descriptor the parent holds without close-on-exec, not only the
	// ones the Cmd names: whatever the shell running go test leaked into this process would
	// reach the workers and show up in !fds. relayd has the same duty towards its workers.
	if err := closeOnExecAbove2(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	workerBin = filepath.Join(dir, "worker")
	if err := goBuild(workerBin, ".", ""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			return 1
		}
	}
	return code
}

// closeOnExecAbove2 sets close-on-exec on every descriptor of this process above 2.
func closeOnExecAbove2() error {
	names, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range names {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		// The descriptor ReadDir used is closed by now: EBADF is expected for it.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && err != unix.EBADF {
			return fmt.Errorf("setting close-on-exec on descriptor %d: %w", fd, err)
		}
	}
	return nil
}

// goBuild builds pkg (a path, relative to dir when dir is set) the way the Makefile builds the
// worker: static and stripped.
func goBuild(out, pkg, dir string) error {
	if dir != "" {
		pkg = filepath.Join(dir, pkg)
	}
	return testbin.Build(out, []string{"CGO_ENABLED=0"}, []string{"-ldflags=-s -w"}, pkg)
}

// faultEnv is a worker environment with fault injection on, as relayd --allow-fault-injection
// builds it for the given attempt.
func faultEnv(attempt int) []string {
	return []string{"RELAY_ATTEMPT=" + strconv.Itoa(attempt), "RELAY_FAULTS=1"}
}

// procConfig says how to start a worker. The zero value starts one with faults on, attempt 1,
// and --delay=0s.
type procConfig struct {
	env   []string
	args  []string
	extra []*os.File
}

// proc is a running worker with its stdio connected to the test.
type proc struct {
	t       *testing.T
	cmd     *exec.Cmd
	stdin   *os.File
	stdoutR *os.File
	stdout  *bufio.Reader
	stderrR *os.File

	done    chan struct{} // closed when Wait has returned
	waitErr error         // Wait's result, set before done is closed

	stderrDone chan struct{} // closed when stderr has reached EOF
	stderrMu   sync.Mutex
	stderr     bytes.Buffer // guarded by stderrMu
}

// start starts the worker. Its cleanup kills it if it is still running and waits for it and for
// the goroutines that watch it.
func start(t *testing.T, cfg procConfig) *proc {
	t.Helper()
	if cfg.env == nil {
		cfg.env = faultEnv(1)
	}
	if cfg.args == nil {
		cfg.args = []string{"--delay=0s"}
	}
	inR, inW := pipe(t)
	outR, outW := pipe(t)
	errR, errW := pipe(t)
	cmd := exec.Command(workerBin, cfg.args...)
	cmd.Env = cfg.env
	cmd.Dir = t.TempDir()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	cmd.ExtraFiles = cfg.extra
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting worker: %v", err)
	}
	for _, f := range []*os.File{inR, outW, errW} {
		f.Close()
	}
	// No core dumps from !segv, as relayd applies core size 0 to its workers. The worker
	// cannot crash before it reads a request, so setting the limit now is early enough.
	if err := unix.Prlimit(cmd.Process.Pid, unix.RLIMIT_CORE, &unix.Rlimit{}, nil); err != nil {
		t.Errorf("setting the core size limit: %v", err)
	}
	p := &proc{
		t: t, cmd: cmd, stdin: inW, stdoutR: outR, stdout: bufio.NewReader(outR), stderrR: errR,
		done: make(chan struct{}), stderrDone: make(chan struct{}),
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	go func() {
		defer close(p.stderrDone)
		buf := make([]byte, 4096)
		for {
			n, err := errR.Read(buf)
			p.stderrMu.Lock()
			p.stderr.Write(buf[:n])
			p.stderrMu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("killing worker: %v", err)
		}
		<-p.done
		// Closing the read end stops the stderr reader even if a leftover holds the pipe.
		errR.Close()
		<-p.stderrDone
		inW.Close()
		outR.Close()
	})
	return p
}

// pipe returns an os.Pipe whose ends are closed at cleanup (a second Close is harmless).
func pipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// pid is the worker's process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// readLine reads one stdout line, without its newline. It fails the test on a timeout.
func (p *proc) readLine() (string, error) {
	p.t.Helper()
	if err := p.stdoutR.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		p.t.Fatal(err)
	}
	line, err := p.stdout.ReadString('\n')
	if errors.Is(err, os.ErrDeadlineExceeded) {
		p.t.Fatalf("no line from the worker on stdout within 5s (so far %q)", line)
	}
	if err != nil {
		return line, err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// ready reads the ready line and checks it byte for byte.
func (p *proc) ready() {
	p.t.Helper()
	got, err := p.readLine()
	if err != nil {
		p.t.Fatalf("reading ready line: %v", err)
	}
	if want := `{"ready":true,"protocol":1,"pid":` + strconv.Itoa(p.pid()) + `}`; got != want {
		p.t.Fatalf("ready line = %q, want %q", got, want)
	}
}

// send writes one request line with the given data, any JSON value.
func (p *proc) send(id, topic string, data any) {
	p.t.Helper()
	raw, err := json.Marshal(data)
	if err != nil {
		p.t.Fatal(err)
	}
	p.sendLine(mustJSON(p.t, ipc.WorkerRequest{ID: id, Topic: topic, Data: raw}))
}

// sendLine writes line and a newline to the worker's stdin.
func (p *proc) sendLine(line string) {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		p.t.Fatalf("writing request: %v", err)
	}
}

// reply reads one stdout line and decodes it as a reply, rejecting unknown fields.
func (p *proc) reply() ipc.WorkerReply {
	p.t.Helper()
	line, err := p.readLine()
	if err != nil {
		p.t.Fatalf("reading reply: %v (after %q; stderr %q)", err, line, p.stderrSoFar())
	}
	dec := json.NewDecoder(strings.NewReader(line))
	dec.DisallowUnknownFields()
	var r ipc.WorkerReply
	if err := dec.Decode(&r); err != nil {
		p.t.Fatalf("reply %q: %v", line, err)
	}
	return r
}

// replyText reads a reply to request id and returns its data, which must be a string.
func (p *proc) replyText(id string) string {
	p.t.Helper()
	r := p.reply()
	if r.ID != id || r.Error != nil {
		p.t.Fatalf("reply = %+v, want data for id %q", r, id)
	}
	var s string
	if err := json.Unmarshal(r.Data, &s); err != nil {
		p.t.Fatalf("reply data %s is not a string: %v", r.Data, err)
	}
	return s
}

// wait closes stdin and returns the worker's wait status once it has exited.
func (p *proc) wait() syscall.WaitStatus {
	p.t.Helper()
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.t.Fatalf("worker did not exit within 5s of EOF on stdin")
	}
	var exitErr *exec.ExitError
	if p.waitErr != nil && !errors.As(p.waitErr, &exitErr) {
		p.t.Fatalf("waiting for worker: %v", p.waitErr)
	}
	return p.cmd.ProcessState.Sys().(syscall.WaitStatus)
}

// running reports whether the worker has not exited yet.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stderrSoFar returns what the worker has written to stderr up to now.
func (p *proc) stderrSoFar() string {
	p.stderrMu.Lock()
	defer p.stderrMu.Unlock()
	return p.stderr.String()
}

// stderrAll returns all the worker wrote to stderr; the worker must have exited.
func (p *proc) stderrAll() string {
	p.t.Helper()
	select {
	case <-p.stderrDone:
	case <-time.After(5 * time.Second):
		p.t.Fatalf("stderr still open 5s after the worker exited")
	}
	return p.stderrSoFar()
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// describe renders a wait status for messages.
func describe(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + unix.SignalName(ws.Signal())
	}
	return "exit status " + strconv.Itoa(ws.ExitStatus())
}

// TestEcho sends one request per worker and checks the reply, the exit and stderr.
func TestEcho(t *testing.T) {
	t.Parallel()
	const noExit = -1
	tests := []struct {
		name    string
		env     []string // nil: faults on, attempt 1
		topic   string   // "": echo
		data    any
		want    *string // the reply's data; nil: no reply, stdout ends
		wantErr string  // a substring of the error reply
		// The exit that follows EOF on stdin (or comes first): a status, or a signal.
		wantStatus int
		wantSignal syscall.Signal
		// wantStderr is a substring of stderr; wantStderrLines, if >= 0, its line count.
		wantStderr      string
		wantStderrLines int
	}{
		{name: "ascii", data: "hello world", want: ptr("HELLO WORLD"), wantStderrLines: 0},
		{name: "empty", data: "", want: ptr(""), wantStderrLines: 0},
		// Full case mapping: ß and the ligatures have no single-rune capital and become two letters.
		{name: "german", data: "straße", want: ptr("STRASSE"), wantStderrLines: -1},
		{name: "ligatures", data: "ﬁne ﬂour", want: ptr("FINE FLOUR"), wantStderrLines: -1},
		{name: "cyrillic", data: "привет", want: ptr("ПРИВЕТ"), wantStderrLines: -1},
		{name: "greek and accents", data: "καλημέρα café", want: ptr("ΚΑΛΗΜΈΡΑ CAFÉ"), wantStderrLines: -1},
		{name: "json specials", data: "a\"b\\c\n<&>", want: ptr("A\"B\\C\n<&>"), wantStderrLines: -1},
		{name: "number data", data: 42, wantErr: "must be a JSON string", wantStderrLines: 0},
		{name: "null data", data: nil, wantErr: "must be a JSON string", wantStderrLines: -1},
		{name: "object data", data: map[string]string{"a": "b"}, wantErr: "must be a JSON string", wantStderrLines: -1},
		{name: "unknown topic", topic: "stats", data: "x", wantErr: `unknown topic "stats"`, wantStderrLines: -1},

		{name: "crash", data: "!crash", wantStatus: 1,
			wantStderr: `"@message":"fault injected"`, wantStderrLines: 1},
		{name: "exit 7", data: "!exit 7", wantStatus: 7, wantStderrLines: -1},
		{name: "exit 0", data: "!exit 0", wantStatus: 0, wantStderrLines: -1},
		{name: "panic", data: "!panic", wantStatus: 2, wantStderr: "panic: fault injected: !panic", wantStderrLines: -1},
		{name: "segv", data: "!segv", wantStatus: noExit, wantSignal: syscall.SIGSEGV, wantStderrLines: -1},
		{name: "noreply", data: "!noreply", wantStatus: 0, wantStderrLines: -1},
		{name: "flaky fails on attempt 1", env: faultEnv(1), data: "!flaky 2", wantStatus: 1, wantStderrLines: -1},
		{name: "flaky fails on attempt 2", env: faultEnv(2), data: "!flaky 2", wantStatus: 1, wantStderrLines: -1},
		{name: "flaky passes on attempt 3", env: faultEnv(3), data: "!flaky 2", want: ptr("!FLAKY 2"), wantStderrLines: 0},
		{name: "flaky 0 never fails", data: "!flaky 0", want: ptr("!FLAKY 0"), wantStderrLines: -1},
		{name: "stderr 3", data: "!stderr 3", want: ptr("!STDERR 3"),
			wantStderr: "worker stderr line 3 of 3\n", wantStderrLines: 3},
		{name: "env", env: []string{"RELAY_FAULTS=1", "B=2", "RELAY_ATTEMPT=4", "A=x=y"}, data: "!env",
			want: ptr("A=x=y\nB=2\nRELAY_ATTEMPT=4\nRELAY_FAULTS=1"), wantStderrLines: 0},
		{name: "fds", data: "!fds", want: ptr("0 1 2"), wantStderrLines: 0},
		{name: "unknown directive is data", data: "!bogus arg", want: ptr("!BOGUS ARG"), wantStderrLines: 0},
		{name: "directive names are case-sensitive", data: "!CRASH", want: ptr("!CRASH"), wantStderrLines: -1},
		{name: "bang alone is data", data: "!", want: ptr("!"), wantStderrLines: -1},
		{name: "exit without status", data: "!exit", wantErr: `bad fault directive "!exit": want !exit N (0-255)`, wantStderrLines: -1},
		{name: "exit out of range", data: "!exit 256", wantErr: "bad fault directive", wantStderrLines: -1},
		{name: "sleep bad duration", data: "!sleep soon", wantErr: "want !sleep DURATION", wantStderrLines: -1},
		{name: "crash with argument", data: "!crash now", wantErr: "want !crash", wantStderrLines: -1},
		{name: "stderr negative", data: "!stderr -1", wantErr: "want !stderr N", wantStderrLines: -1},

		// Without RELAY_FAULTS=1 every directive is ordinary data.
		{name: "no faults: crash", env: []string{"RELAY_ATTEMPT=1"}, data: "!crash", want: ptr("!CRASH"), wantStderrLines: 0},
		{name: "no faults: segv", env: []string{}, data: "!segv", want: ptr("!SEGV"), wantStderrLines: 0},
		{name: "no faults: env", env: []string{"SECRET=1"}, data: "!env", want: ptr("!ENV"), wantStderrLines: -1},
		{name: "no faults: flaky", env: []string{"RELAY_FAULTS=0", "RELAY_ATTEMPT=1"}, data: "!flaky 5", want: ptr("!FLAKY 5"), wantStderrLines: -1},
		{name: "no faults: hang", env: []string{"RELAY_FAULTS=true"}, data: "!hang", want: ptr("!HANG"), wantStderrLines: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := start(t, procConfig{env: tt.env})
			p.ready()
			topic := tt.topic
			if topic == "" {
				topic = "echo"
			}
			p.send("req-1", topic, tt.data)
			switch {
			case tt.want != nil:
				if got := p.replyText("req-1"); got != *tt.want {
					t.Errorf("reply data = %q, want %q", got, *tt.want)
				}
			case tt.wantErr != "":
				r := p.reply()
				if r.ID != "req-1" || r.Data != nil || r.Error == nil || !strings.Contains(r.Error.Message, tt.wantErr) {
					t.Errorf("reply = %+v, want id req-1 and an error containing %q", r, tt.wantErr)
				}
			default:
				if line, err := p.readLine(); err != io.EOF {
					t.Errorf("stdout after the ready line: %q, %v; want EOF", line, err)
				}
			}
			ws := p.wait()
			switch {
			case tt.wantSignal != 0:
				if !ws.Signaled() || ws.Signal() != tt.wantSignal {
					t.Errorf("worker %s, want killed by %s", describe(ws), unix.SignalName(tt.wantSignal))
				}
			case !ws.Exited() || ws.ExitStatus() != tt.wantStatus:
				t.Errorf("worker %s, want exit status %d", describe(ws), tt.wantStatus)
			}
			stderr := p.stderrAll()
			if !strings.Contains(stderr, tt.wantStderr) {
				t.Errorf("stderr = %q, want it to contain %q", stderr, tt.wantStderr)
			}
			if n := strings.Count(stderr, "\n"); tt.wantStderrLines >= 0 && n != tt.wantStderrLines {
				t.Errorf("stderr has %d lines, want %d: %q", n, tt.wantStderrLines, stderr)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestFaultLog checks the log line a fault directive writes before the worker misbehaves.
func TestFaultLog(t *testing.T) {
	t.Parallel()
	p := start(t, procConfig{})
	p.ready()
	p.send("1", "echo", "!exit 3")
	if ws := p.wait(); ws.ExitStatus() != 3 {
		t.Fatalf("worker %s, want exit status 3", describe(ws))
	}
	var entry map[string]any
	stderr := p.stderrAll()
	if err := json.Unmarshal([]byte(stderr), &entry); err != nil {
		t.Fatalf("stderr %q is not one JSON log line: %v", stderr, err)
	}
	want := map[string]any{"@level": "info", "@module": "worker", "@message": "fault injected", "directive": "!exit", "status": 3.0}
	for k, v := range want {
		if entry[k] != v {
			t.Errorf("log entry %s = %v, want %v (entry %v)", k, entry[k], v, entry)
		}
	}
}

// TestGarbage checks that !garbage writes a line that is no protocol line, then exits 0.
func TestGarbage(t *testing.T) {
	t.Parallel()
	p := start(t, procConfig{})
	p.ready()
	p.send("1", "echo", "!garbage")
	got, err := p.readLine()
	if err != nil {
		t.Fatalf("reading garbage: %v", err)
	}
	if got != "this is not json" || json.Valid([]byte(got)) {
		t.Errorf("stdout line = %q, want %q, not JSON", got, "this is not json")
	}
	if line, err := p.readLine(); err != io.EOF {
		t.Errorf("after the garbage: %q, %v; want EOF", line, err)
	}
	if ws := p.wait(); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("worker %s, want exit status 0", describe(ws))
	}
}

// TestManyRequests serves several requests from one process, as relayd --max-requests does,
// including an error reply that must not end the worker.
func TestManyRequests(t *testing.T) {
	t.Parallel()
	p := start(t, procConfig{})
	p.ready()
	p.send("a", "echo", "first")
	if got := p.replyText("a"); got != "FIRST" {
		t.Errorf("first reply = %q, want %q", got, "FIRST")
	}
	p.send("b", "echo", 7)
	if r := p.reply(); r.ID != "b" || r.Error == nil {
		t.Errorf("second reply = %+v, want an error for id b", r)
	}
	p.send("c", "echo", "!sleep 1ms")
	if got := p.replyText("c"); got != "!SLEEP 1MS" {
		t.Errorf("third reply = %q, want %q", got, "!SLEEP 1MS")
	}
	// The last request has no newline: EOF ends the line.
	if _, err := io.WriteString(p.stdin, `{"id":"d","topic":"echo","data":"last"}`); err != nil {
		t.Fatal(err)
	}
	p.stdin.Close()
	if got := p.replyText("d"); got != "LAST" {
		t.Errorf("fourth reply = %q, want %q", got, "LAST")
	}
	if ws := p.wait(); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("worker %s, want exit status 0", describe(ws))
	}
}

// TestEOFBeforeRequest checks the worker exits 0 when stdin ends before any request.
func TestEOFBeforeRequest(t *testing.T) {
	t.Parallel()
	p := start(t, procConfig{})
	p.ready()
	if ws := p.wait(); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("worker %s, want exit status 0", describe(ws))
	}
	if line, err := p.readLine(); err != io.EOF {
		t.Errorf("stdout after the ready line: %q, %v; want EOF", line, err)
	}
	if got := p.stderrAll(); got != "" {
		t.Errorf("stderr = %q, want nothing", got)
	}
}

// TestBadRequestLine checks that a line that is not a request ends the worker with status 1.
func TestBadRequestLine(t *testing.T) {
	t.Parallel()
	p := start(t, procConfig{})
	p.ready()
	p.sendLine("not json")
	if ws := p.wait(); !ws.Exited() || ws.ExitStatus() != 1 {
		t.Errorf("worker %s, want exit status 1", describe(ws))
	}
	if got, want := p.stderrAll(), "worker: decoding request: "; !strings.HasPrefix(got, want) {
		t.Errorf("stderr = %q, want it to start with %q", got, want)
	}
}

// TestDelay checks that --delay holds the reply back.
func TestDelay(t *testing.T) {
	t.Parallel()
	const delay = 50 * time.Millisecond
	p := start(t, procConfig{args: []string{"--delay=" + delay.String()}})
	p.ready()
	for _, data := range []string{"slow", "!sleep 50ms"} {
		begin := time.Now()
		p.send("1", "echo", data)
		if got, want := p.replyText("1"), strings.ToUpper(data); got != want {
			t.Errorf("reply = %q, want %q", got, want)
		}
		min := delay
		if strings.HasPrefix(data, "!sleep") {
			min += 50 * time.Millisecond
		}
		if elapsed := time.Since(begin); elapsed < min {
			t.Errorf("reply to %q after %v, want at least %v", data, elapsed, min)
		}
	}
}

// TestFlags checks --help, --version and a bad flag.
func TestFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args       []string
		wantStatus int
		wantStdout string // substring
		wantStderr string // prefix
	}{
		{[]string{"--help"}, 0, "Usage: worker", ""},
		{[]string{"-h"}, 0, "--delay duration", ""},
		{[]string{"--version"}, 0, "worker ", ""},
		{[]string{"--help"}, 0, "\n      --version   ", ""},
		{[]string{"--delay=fast"}, 2, "", "worker: invalid argument \"fast\" for \"--delay\" flag"},
		{[]string{"--bogus"}, 2, "", "worker: unknown flag: --bogus\nRun 'worker --help' for usage.\n"},
		{[]string{"extra"}, 2, "", "worker: unexpected argument \"extra\"\nRun 'worker --help' for usage.\n"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(workerBin, tt.args...)
			cmd.Env = []string{}
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exitErr *exec.ExitError
			if err != nil && !errors.As(err, &exitErr) {
				t.Fatal(err)
			}
			if got := cmd.ProcessState.ExitCode(); got != tt.wantStatus {
				t.Errorf("exit status = %d, want %d (stderr %q)", got, tt.wantStatus, stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.wantStdout) {
				t.Errorf("stdout = %q, want it to contain %q", stdout.String(), tt.wantStdout)
			}
			if !strings.HasPrefix(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr = %q, want it to start with %q", stderr.String(), tt.wantStderr)
			}
			if strings.Contains(stdout.String(), "grandchild") {
				t.Errorf("stdout shows the hidden flag: %q", stdout.String())
			}
		})
	}
}

// TestRunInProcess drives run directly: the protocol path needs no process of its own.
func TestRunInProcess(t *testing.T) {
	t.Parallel()
	in := strings.NewReader(`{"id":"1","topic":"echo","data":"ok"}` + "\n" + `{"id":"2","topic":"echo","data":"!crash"}` + "\n")
	var out, errOut bytes.Buffer
	if err := run([]string{"--delay=0s"}, in, &out, &errOut, []string{"RELAY_FAULTS=1"}); err != exitStatus(1) {
		t.Fatalf("run = %v, want %v", err, exitStatus(1))
	}
	want := fmt.Sprintf(`{"ready":true,"protocol":1,"pid":%d}`+"\n"+`{"id":"1","data":"OK"}`+"\n", os.Getpid())
	if got := out.String(); got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
}

// TestReplyNotInflated checks that HTML characters are written as themselves: escaped, each
// would take six bytes, and an answer could be six times its request.
func TestReplyNotInflated(t *testing.T) {
	text := strings.Repeat("<&>", 100)
	b, err := marshal(ipc.WorkerReply{ID: "1", Data: json.RawMessage(`"` + text + `"`)})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"id":"1","data":"` + text + `"}`; string(b) != want {
		t.Errorf("reply = %q, want %q", b, want)
	}
}
