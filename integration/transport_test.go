package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"relayd/ipc"
)

// transports are the three ways relayd talks to workers; the echo worker serves all three.
var transports = []string{"stdio", "grpc", "netrpc"}

// transportCase is one message of the end-to-end suite and the answer it must get.
type transportCase struct {
	data  any
	stall bool // sent to the relayd with the short message timeout
	// want is the reply's data; when code is set, the error's code, and msg a part of its
	// message.
	want, code, msg string
	// contains, if set, replaces want: the reply's data must contain each.
	contains []string
}

// TestTransports runs the same end-to-end suite over each transport: replies, error replies,
// every fault directive that ends a message, the deadline, exact EXIT reasons in the error and
// the log, the worker's log as structured fields, no descendant left behind, and the drain at
// SIGTERM.
func TestTransports(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			// Deadlines are tested on a relayd of their own with a short message timeout, so that
			// the rest get a long one on a busy machine. (Two relayds rather than two services:
			// each keeps to one service.)
			dir := shortTempDir(t)
			common := []string{"--transport=" + tr, "--allow-fault-injection", "--worker-arg=--delay=0s",
				"--max-restarts=0", "--kill-grace=300ms", "--max-workers=20"}
			r := startRelayd(t, filepath.Join(dir, "s"), append(common, "--message-timeout=60s",
				"--shutdown-timeout=60s", "--worker-rlimit-data=256MiB")...)
			stall := startRelayd(t, filepath.Join(dir, "stall"), append(common, "--message-timeout=2s")...)
			cases := []transportCase{
				{data: "hello", want: "HELLO"},
				{data: "straße", want: "STRASSE"},
				{data: 42, code: "bad_request", msg: "must be a JSON string"},
				{data: "!exit 3", code: "worker_failed", msg: "exited with status 3"},
				{data: "!crash", code: "worker_failed", msg: "exited with status 1"},
				{data: "!flaky 1", code: "worker_failed", msg: "exited with status 1"},
				{data: "!panic", code: "worker_failed", msg: "exited with status 2"},
				{data: "!segv", code: "worker_failed", msg: "killed by signal SIGSEGV"},
				{data: "!oom", code: "worker_failed", msg: "ran out of memory"},
				{data: "!garbage", code: "worker_failed", msg: "broke the protocol"},
				{data: "!noreply", code: "worker_failed", msg: "exited without a reply"},
				{data: "!hang", stall: true, code: "timeout", msg: "did not answer within 2s"},
				{data: "!spin", stall: true, code: "timeout", msg: "did not answer within 2s"},
				{data: "!sleep 10ms", want: "!SLEEP 10MS"},
				{data: "!stderr 3", want: "!STDERR 3"},
				{data: "!fork", want: "!FORK"},
				{data: "!fds", want: "0 1 2"},
				{data: "!rlimits", contains: []string{"core 0 0", "nofile 64 64"}},
				{data: "!env", contains: []string{"RELAY_FAULTS=1", "RELAY_ATTEMPT=1"}},
			}
			if tr != "stdio" {
				// The plugin is told its transport, and go-plugin's variables are all it gets
				// besides relayd's scratch environment.
				cases[len(cases)-1].contains = append(cases[len(cases)-1].contains,
					"RELAYD_PLUGIN_TRANSPORT="+tr, "RELAYD_PLUGIN=", "PLUGIN_PROTOCOL_VERSIONS=1")
			}
			c, err := ipc.Dial(t.Context(), r.socket)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			cs, err := ipc.Dial(t.Context(), stall.socket)
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			// Every message at once: the slow ones (deadlines) overlap.
			calls := make([]*ipc.Call, len(cases))
			for i, tc := range cases {
				cc := c
				if tc.stall {
					cc = cs
				}
				if calls[i], err = cc.Send("relay", "echo", tc.data); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
			defer cancel()
			for i, tc := range cases {
				cc, rr := c, r
				if tc.stall {
					cc, rr = cs, stall
				}
				a, err := cc.Wait(ctx, calls[i])
				if err != nil {
					t.Fatalf("%v: %v; relayd's log:\n%s", tc.data, err, rr.log)
				}
				checkAnswer(t, tc, a)
			}

			// The EXIT events give the exact status, and a worker's hclog JSON arrives as fields.
			log := r.log.String() + stall.log.String()
			for _, want := range []string{`reason="exit(3)"`, `reason="signal(SIGSEGV)"`, `reason=timeout`,
				`reason=protocol`, `fault injected: pid=`, `directive="!segv"`} {
				if !strings.Contains(log, want) {
					t.Errorf("relayd's log lacks %s", want)
				}
			}
			if strings.Contains(log, `line="{\"@level\"`) {
				t.Errorf("relayd's log holds a worker's JSON log line as a string")
			}
			// Nothing reaches relayd's stderr past its logger: no line in the standard log
			// package's format, which yamux and gRPC use by default.
			if m := regexp.MustCompile(`(?m)^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d .*$`).FindString(log); m != "" {
				t.Errorf("relayd's stderr has a line that bypassed its logger: %s", m)
			}
			// Nothing a worker started (the !fork grandchild, in a session of its own) outlives
			// its message.
			pid := r.cmd.Process.Pid
			if !eventually(10*time.Second, func() bool { return len(descendants(pid)) == 0 }) {
				t.Errorf("relayd's descendants after every answer: %v, want none", descendants(pid))
			}

			// SIGTERM drains: a message in progress is still answered, then relayd exits 0.
			call, err := c.Send("relay", "echo", "!sleep 300ms")
			if err != nil {
				t.Fatal(err)
			}
			if !eventually(20*time.Second, func() bool { return len(descendants(pid)) > 0 }) {
				t.Fatal("no worker started for the message")
			}
			r.cmd.Process.Signal(syscall.SIGTERM)
			a, err := c.Wait(ctx, call)
			if err != nil {
				t.Fatalf("the message in progress at SIGTERM: %v", err)
			}
			checkAnswer(t, transportCase{want: "!SLEEP 300MS"}, a)
			r.stop(t)
		})
	}
}

func checkAnswer(t *testing.T, tc transportCase, a ipc.Answer) {
	t.Helper()
	if tc.code != "" {
		if a.Error == nil || a.Error.Code != tc.code || !strings.Contains(a.Error.Message, tc.msg) {
			t.Errorf("%v: answer %s, want error %s with %q", tc.data, a.Raw, tc.code, tc.msg)
		}
		return
	}
	var got string
	if a.Error != nil || json.Unmarshal(a.Data, &got) != nil {
		t.Errorf("%v: answer %s, want a reply", tc.data, a.Raw)
		return
	}
	if tc.contains != nil {
		for _, w := range tc.contains {
			if !strings.Contains(got, w) {
				t.Errorf("%v: reply %q lacks %q", tc.data, got, w)
			}
		}
		return
	}
	if got != tc.want {
		t.Errorf("%v: reply %q, want %q", tc.data, got, tc.want)
	}
}

// TestPluginsReused runs go-plugin workers that serve many messages (--max-requests):
// one process answers several, and a SIGTERM from outside is a graceful stop (exit status 0,
// reason normal), not a crash.
func TestPluginsReused(t *testing.T) {
	for _, tr := range []string{"grpc", "netrpc"} {
		t.Run(tr, func(t *testing.T) {
			dir := shortTempDir(t)
			r := startRelayd(t, filepath.Join(dir, "s"), "--transport="+tr, "--worker-arg=--delay=0s",
				"--max-requests=100", "--max-workers=1")
			pids := map[int]bool{}
			for i := range 5 {
				a := askTo(t, r.socket, "relay", fmt.Sprintf("m%d", i))
				if a.Error != nil {
					t.Fatalf("answer %s", a.Raw)
				}
				pids[a.Worker.PID] = true
			}
			if len(pids) != 1 {
				t.Errorf("5 messages were served by %d processes, want 1 reused", len(pids))
			}
			for pid := range pids {
				syscall.Kill(pid, syscall.SIGTERM)
				want := fmt.Sprintf(`worker exited: from=%d result="exited with status 0" reason=normal`, pid)
				if !eventually(20*time.Second, func() bool { return strings.Contains(r.log.String(), want) }) {
					t.Errorf("relayd's log lacks %q after SIGTERM to the plugin; log:\n%s", want, r.log)
				}
			}
		})
	}
}

// TestPluginSpares keeps go-plugin workers started and past their handshake (--spares): each
// message is answered by one of them.
func TestPluginSpares(t *testing.T) {
	for _, tr := range []string{"grpc", "netrpc"} {
		t.Run(tr, func(t *testing.T) {
			dir := shortTempDir(t)
			r := startRelayd(t, filepath.Join(dir, "s"), "--transport="+tr, "--worker-arg=--delay=0s", "--spares=2")
			for i := range 4 {
				checkAnswer(t, transportCase{data: fmt.Sprintf("spare %d", i), want: fmt.Sprintf("SPARE %d", i)},
					askTo(t, r.socket, "relay", fmt.Sprintf("spare %d", i)))
			}
			if log := r.log.String(); strings.Contains(log, "reason=protocol") || strings.Contains(log, "starting a spare") {
				t.Errorf("a spare failed; relayd's log:\n%s", log)
			}
		})
	}
}

// TestPluginHandshake checks plugins that never complete go-plugin's handshake: one that prints
// something else first, and one that prints half a line and hangs. Each is stopped within
// --plugin-start-timeout and the answer names what it printed.
func TestPluginHandshake(t *testing.T) {
	dir := shortTempDir(t)
	for _, c := range []struct{ name, script string }{
		{"chatty", "echo 'hello from the plugin'\nexec sleep 60\n"},
		{"silent", "printf 'loading'\nexec sleep 60\n"},
	} {
		path := filepath.Join(dir, c.name)
		if err := os.WriteFile(path, []byte("#!/bin/sh\n"+c.script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct{ name, want string }{
		{"chatty", `bad go-plugin handshake line "hello from the plugin"`},
		{"silent", `no go-plugin handshake line within 1s (stdout so far: "loading")`},
	} {
		r := startRelayd(t, filepath.Join(dir, c.name+".sock"), "--worker="+filepath.Join(dir, c.name),
			"--transport=grpc", "--plugin-start-timeout=1s", "--max-restarts=0")
		// A worker that never gets as far as serving says nothing about the message and
		// everything about the service: unavailable, as for any worker before its ready line.
		a := askTo(t, r.socket, "relay", "hello")
		if a.Error == nil || a.Error.Code != "unavailable" || !strings.Contains(a.Error.Message, c.want) {
			t.Errorf("%s: answer %s, want unavailable naming %s", c.name, a.Raw, c.want)
		}
		pid := r.cmd.Process.Pid
		if !eventually(10*time.Second, func() bool { return len(descendants(pid)) == 0 }) {
			t.Errorf("%s: relayd's descendants: %v, want none (the plugin's sleep included)", c.name, descendants(pid))
		}
	}
}

// python is the interpreter the Python example plugin names.
const python = "/usr/bin/python3"

// TestPythonPlugin serves the Python example plugin (gRPC, no go-plugin) through relayd: per
// message, reused, without go-plugin's controller, in which case relayd stops it with SIGTERM at
// once instead of waiting two seconds to kill it, and on a TCP port of its own.
func TestPythonPlugin(t *testing.T) {
	if out, err := exec.Command(python, "-c", "import grpc, google.protobuf").CombinedOutput(); err != nil {
		t.Skipf("the Python plugin needs %s with grpcio and protobuf (Debian: python3-grpcio python3-protobuf): %v %s", python, err, out)
	}
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "examples", "python-plugin", "plugin.py")
	for _, c := range []struct {
		name string
		args []string
		// perMessage: each message has a plugin of its own, told to stop after its answer.
		perMessage bool
		serving    string // how its hclog line must reach relayd's log
	}{
		{"unix", nil, true, `worker: serving: pid=\d+ module=python-plugin address=/\S+/plugin.sock network=unix`},
		{"reused", []string{"--max-requests=10"}, false, `worker: serving: pid=\d+ module=python-plugin address=/\S+/plugin.sock network=unix`},
		{"no-controller", []string{"--worker-arg=--without-controller"}, true, `worker: serving: pid=\d+ module=python-plugin`},
		{"tcp", []string{"--worker-arg=--tcp", "--worker-network"}, true, `worker: serving: pid=\d+ module=python-plugin address=127.0.0.1:\d+ network=tcp`},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := shortTempDir(t)
			r := startRelayd(t, filepath.Join(dir, "s"), append([]string{"--worker=" + script, "--transport=grpc",
				"--message-timeout=60s"}, c.args...)...)
			for _, tc := range []transportCase{
				{data: "héllo", want: "HÉLLO"},
				{data: 42, code: "bad_request", msg: "must be a JSON string"},
			} {
				checkAnswer(t, tc, askTo(t, r.socket, "relay", tc.data))
			}
			if c.perMessage {
				// Each plugin was told to stop and exited 0: none was killed, with or without a
				// controller.
				normal := func() int { return strings.Count(r.log.String(), `result="exited with status 0" reason=normal`) }
				if !eventually(20*time.Second, func() bool { return normal() >= 2 }) {
					t.Errorf("%d plugins exited 0 normally, want 2; relayd's log:\n%s", normal(), r.log)
				}
			}
			log := r.log.String()
			if strings.Contains(log, "SIGKILL") || strings.Contains(log, "reason=protocol") {
				t.Errorf("a Python plugin was killed or broke the protocol; relayd's log:\n%s", log)
			}
			if !regexp.MustCompile(c.serving).MatchString(log) {
				t.Errorf("the plugin's hclog line is not in relayd's log as fields (want %s); log:\n%s", c.serving, log)
			}
		})
	}
}
