package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/creack/pty"
	"go.uber.org/goleak"

	"relayd/ipc"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// envOf returns a lookup function over the given KEY=VALUE pairs.
func envOf(kv ...string) env {
	m := make(map[string]string)
	for _, s := range kv {
		k, v, _ := strings.Cut(s, "=")
		m[k] = v
	}
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// TestRunWithoutRelay covers everything run decides before an answer is needed: usage, help,
// version, and a relay that is not there. The paths with a relay are in ../../integration, which
// runs the real relayd.
func TestRunWithoutRelay(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.sock")
	tests := []struct {
		name       string
		args       []string
		env        []string
		stdin      string
		wantCode   int
		wantStdout string // substring; "" means stdout must be empty
		wantStderr string // substring; "" means stderr must be empty
	}{
		{name: "help", args: []string{"--help"}, wantCode: exitOK, wantStdout: "Usage: echo [flags] [message ...]"},
		{name: "-h", args: []string{"-h"}, wantCode: exitOK, wantStdout: "--timeout duration"},
		{name: "version", args: []string{"--version"}, wantCode: exitOK, wantStdout: "echo "},
		{name: "unknown flag", args: []string{"--bogus"}, wantCode: exitUsage, wantStderr: "echo: unknown flag: --bogus\nRun 'echo --help' for usage.\n"},
		{name: "bad duration", args: []string{"--timeout=soon", "hi"}, wantCode: exitUsage, wantStderr: `invalid argument "soon" for "--timeout"`},
		{name: "zero timeout", args: []string{"--timeout=0s", "hi"}, wantCode: exitUsage, wantStderr: "echo: --timeout must be positive, not 0s\nRun 'echo --help' for usage.\n"},
		{name: "help without boolean noise", args: []string{"--help"}, wantCode: exitOK, wantStdout: "\n      --json "},
		{name: "negative timeout", args: []string{"--timeout=-1s", "hi"}, wantCode: exitUsage, wantStderr: "must be positive"},
		{name: "empty --to", args: []string{"--to=", "hi"}, wantCode: exitUsage, wantStderr: "--to and --topic must not be empty"},
		{name: "stats with a message", args: []string{"--stats", "hi"}, wantCode: exitUsage, wantStderr: "--stats takes no message arguments"},
		{
			name: "one-shot, socket from flag", args: []string{"--socket", missing, "hello", "world"},
			wantCode: exitUnavailable, wantStderr: "echo: relay not available at " + missing + ": no such file or directory\n",
		},
		{
			name: "one-shot, socket from RELAY_SOCKET", args: []string{"hello"}, env: []string{"RELAY_SOCKET=" + missing},
			wantCode: exitUnavailable, wantStderr: "relay not available at " + missing + ":",
		},
		{
			name: "flag wins over RELAY_SOCKET", args: []string{"--socket", missing + "2", "hello"}, env: []string{"RELAY_SOCKET=" + missing},
			wantCode: exitUnavailable, wantStderr: "relay not available at " + missing + "2:",
		},
		{
			name: "pipe", stdin: "one\ntwo\n", env: []string{"RELAY_SOCKET=" + missing},
			wantCode: exitUnavailable, wantStderr: "relay not available at " + missing + ":",
		},
		{
			name: "stats", args: []string{"--stats"}, env: []string{"RELAY_SOCKET=" + missing},
			wantCode: exitUnavailable, wantStderr: "relay not available at " + missing + ":",
		},
		{name: "status with a message", args: []string{"--status", "hi"}, wantCode: exitUsage, wantStderr: "--status takes no message arguments"},
		{name: "top with a message", args: []string{"--top", "hi"}, wantCode: exitUsage, wantStderr: "--top takes no message arguments"},
		{name: "status and top", args: []string{"--status", "--top"}, wantCode: exitUsage, wantStderr: "--stats, --status and --top exclude each other"},
		{name: "stats and status", args: []string{"--stats", "--status"}, wantCode: exitUsage, wantStderr: "exclude each other"},
		{name: "count without top", args: []string{"--count=2", "--status"}, wantCode: exitUsage, wantStderr: "--count goes with --top"},
		{name: "durable without nats", args: []string{"--nats-durable", "hi"}, wantCode: exitUsage, wantStderr: "the --nats-* flags need --nats URL"},
		{name: "socket and nats", args: []string{"--socket=/x", "--nats=nats://127.0.0.1:1", "hi"}, wantCode: exitUsage, wantStderr: "--socket and --nats exclude each other"},
		{name: "negative count", args: []string{"--top", "--count=-1"}, wantCode: exitUsage, wantStderr: "--count must not be negative, not -1"},
		{
			name: "status", args: []string{"--status"}, env: []string{"RELAY_SOCKET=" + missing},
			wantCode: exitUnavailable, wantStderr: "echo: relay not available at " + missing + ": no such file or directory\n",
		},
		{
			name: "status json", args: []string{"--status", "--json"}, env: []string{"RELAY_SOCKET=" + missing},
			wantCode: exitUnavailable, wantStderr: "relay not available at " + missing + ":",
		},
		{
			name: "top snapshots", args: []string{"--top", "--count=5"}, env: []string{"RELAY_SOCKET=" + missing},
			wantCode: exitUnavailable, wantStderr: "relay not available at " + missing + ":",
		},
		{name: "help shows status and top", args: []string{"--help"}, wantCode: exitOK, wantStdout: "echo --top        on a terminal, a live view"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), tt.args, envOf(tt.env...), strings.NewReader(tt.stdin), &stdout, &stderr)
			if got := exitCode(err, &stderr); got != tt.wantCode {
				t.Errorf("exit code = %d, want %d (err %v)", got, tt.wantCode, err)
			}
			check := func(name, got, want string) {
				t.Helper()
				if want == "" && got != "" {
					t.Errorf("%s = %q, want it empty", name, got)
				}
				if !strings.Contains(got, want) {
					t.Errorf("%s = %q, want it to contain %q", name, got, want)
				}
			}
			check("stdout", stdout.String(), tt.wantStdout)
			check("stderr", stderr.String(), tt.wantStderr)
		})
	}
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantCode   int
		wantStderr string
	}{
		{"nil", nil, exitOK, ""},
		{"plain error", errors.New("reading input: boom"), exitReplyError, "echo: reading input: boom\n"},
		{"error reply", &exitError{code: exitReplyError, err: ipc.Errorf(ipc.CodeUnknownName, "no %q", "x")}, exitReplyError, "echo: unknown_name: no \"x\"\n"},
		{"timeout", exitf(exitTimeout, "timeout after %v", "2s"), exitTimeout, "echo: timeout after 2s\n"},
		{"already reported", &exitError{code: exitTimeout}, exitTimeout, ""},
		{"interrupted", errInterrupted, exitInterrupted, "echo: interrupted\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if got := exitCode(tt.err, &stderr); got != tt.wantCode {
				t.Errorf("exitCode(%v) = %d, want %d", tt.err, got, tt.wantCode)
			}
			if got := stderr.String(); got != tt.wantStderr {
				t.Errorf("stderr = %q, want %q", got, tt.wantStderr)
			}
		})
	}
}

func TestWorse(t *testing.T) {
	tests := []struct {
		a, b, want int
	}{
		{exitOK, exitOK, exitOK},
		{exitOK, exitReplyError, exitReplyError},
		{exitReplyError, exitOK, exitReplyError},
		{exitReplyError, exitTimeout, exitTimeout},
		{exitTimeout, exitReplyError, exitTimeout},
		{exitTimeout, exitUnavailable, exitUnavailable},
		{exitUnavailable, exitReplyError, exitUnavailable},
	}
	for _, tt := range tests {
		if got := worse(tt.a, tt.b); got != tt.want {
			t.Errorf("worse(%d, %d) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestDataText(t *testing.T) {
	tests := []struct {
		name, data, want string
	}{
		{"string", `"HELLO WORLD"`, "HELLO WORLD"},
		{"escaped string", `"A\"B\u00e9\n"`, "A\"Bé\n"},
		{"number", `42`, "42"},
		{"object compacted", `{ "a": [1, 2] }`, `{"a":[1,2]}`},
		{"null", `null`, "null"},
		{"absent", ``, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := dataText(json.RawMessage(tt.data)); got != tt.want {
				t.Errorf("dataText(%s) = %q, want %q", tt.data, got, tt.want)
			}
		})
	}
}

func TestWriteStats(t *testing.T) {
	tests := []struct {
		name, data, want string
	}{
		{
			name: "sorted and flattened",
			data: `{"workers_spawned":3,"messages":3,"exits":{"signal":1,"normal":2},"uptime_seconds":1.5,"version":"v1"}`,
			want: "exits.normal 2\nexits.signal 1\nmessages 3\nuptime_seconds 1.5\nversion v1\nworkers_spawned 3\n",
		},
		{"empty nested object", `{"exits":{}}`, "exits {}\n"},
		{"array and null", `{"a":[1,2],"b":null}`, "a [1,2]\nb null\n"},
		{"not an object", `[1,2]`, "[1,2]\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeStats(&b, json.RawMessage(tt.data)); err != nil {
				t.Fatal(err)
			}
			if got := b.String(); got != tt.want {
				t.Errorf("writeStats(%s) printed\n%s\nwant\n%s", tt.data, got, tt.want)
			}
		})
	}
}

func TestPaint(t *testing.T) {
	tests := []struct {
		name string
		f    func(paint, string) string
		want string
	}{
		{"dim", paint.dim, "\x1b[2mx\x1b[0m"},
		{"green", paint.green, "\x1b[32mx\x1b[0m"},
		{"yellow", paint.yellow, "\x1b[33mx\x1b[0m"},
		{"cyan", paint.cyan, "\x1b[36mx\x1b[0m"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.f(true, "x"); got != tt.want {
				t.Errorf("on: %q, want %q", got, tt.want)
			}
			if got := tt.f(false, "x"); got != "x" {
				t.Errorf("off: %q, want %q", got, "x")
			}
		})
	}
}

// TestUseColor checks the colour decision: only a terminal on stdout, and never with NO_COLOR in
// the environment, whatever its value.
func TestUseColor(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()

	tests := []struct {
		name   string
		stdout io.Writer
		env    []string
		want   bool
	}{
		{"terminal", tty, nil, true},
		{"terminal, NO_COLOR=1", tty, []string{"NO_COLOR=1"}, false},
		{"terminal, NO_COLOR=0", tty, []string{"NO_COLOR=0"}, false},
		{"terminal, NO_COLOR empty", tty, []string{"NO_COLOR="}, false},
		{"pipe", w, nil, false},
		{"buffer", &bytes.Buffer{}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := useColor(tt.stdout, envOf(tt.env...)); got != tt.want {
				t.Errorf("useColor = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestInvokedName checks that usage, hints and messages use the name echo was invoked as: the
// installed client is relay-echo, and a hint to run "echo --help" would run the shell's echo.
func TestInvokedName(t *testing.T) {
	old := progName
	progName = "relay-echo"
	t.Cleanup(func() { progName = old })

	var stdout, stderr bytes.Buffer
	if err := run(t.Context(), []string{"--help"}, envOf(), strings.NewReader(""), &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Usage: relay-echo [flags]", "\n  relay-echo --stats  ", "\n  cmd | relay-echo  "} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("help = %q, want it to contain %q", stdout.String(), want)
		}
	}
	stderr.Reset()
	err := run(t.Context(), []string{"--bogus"}, envOf(), strings.NewReader(""), io.Discard, &stderr)
	if got, want := exitCode(err, &stderr), exitUsage; got != want {
		t.Errorf("exit code = %d, want %d", got, want)
	}
	if got, want := stderr.String(), "relay-echo: unknown flag: --bogus\nRun 'relay-echo --help' for usage.\n"; got != want {
		t.Errorf("stderr = %q, want %q", got, want)
	}
}
