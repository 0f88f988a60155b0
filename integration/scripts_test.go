package integration

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"relayd/ipc"
)

var update = flag.Bool("update", false, "rewrite the expected files of failing cmp commands in testdata/*.txtar")

// TestScripts runs every testdata/*.txtar script against the real binaries, which are on PATH.
//
// Each script gets, besides testscript's own environment:
//
//	RELAY_SOCKET  a fresh short socket path, which relayd and echo both use by default
//	SOCKDIR       the short directory it is in, for scripts that need more sockets
//	GODEBUG       execwait=2 unless set already, so that a leaked exec.Cmd panics
//	GORACE        atexit_sleep_ms=0 under -race unless set already
//
// and these commands besides testscript's own:
//
//	exitcode N program [args...]   run program like exec and require exit status N; its
//	                               stdout and stderr are then checked as after exec
//	waitsock [-timeout=D] [path]   wait (default 5s) until path ($RELAY_SOCKET) accepts connections
//	waitfile [-timeout=D] path     wait (default 5s) until path exists
//	signal -SIG program            send SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGKILL, SIGUSR1 or
//	                               SIGUSR2 to the background commands running program
//	waitstats [-timeout=D] K=N...  wait (default 10s) until relayd's stats (at $RELAY_SOCKET)
//	                               show each number K equal to N, e.g. messages=3 in_flight=1
//	sleep D                        pause the script
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:           "testdata",
		UpdateScripts: *update,
		Setup: func(e *testscript.Env) error {
			// $WORK is too deep for a Unix socket path.
			dir, err := os.MkdirTemp("", "rl")
			if err != nil {
				return err
			}
			e.Defer(func() { os.RemoveAll(dir) })
			e.Setenv("SOCKDIR", dir)
			e.Setenv("GODEBUG", os.Getenv("GODEBUG")) // execwait=2, set by TestMain.
			e.Setenv("RELAY_SOCKET", filepath.Join(dir, "relayd.sock"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exitcode":  cmdExitcode,
			"waitsock":  cmdWaitsock,
			"waitfile":  cmdWaitfile,
			"signal":    cmdSignal,
			"sleep":     cmdSleep,
			"waitstats": cmdWaitstats,
		},
	})
}

// cmdExitcode runs a program and checks its exit status, which exec cannot: echo's exit codes are
// part of its contract.
func cmdExitcode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exitcode N program [args...]")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	got := 0
	if err := ts.Exec(args[1], args[2:]...); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("running %s: %v", args[1], err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited with status %d, want %d", args[1], got, want)
	}
}

// timeoutArg splits an optional leading -timeout=D off args.
func timeoutArg(ts *testscript.TestScript, args []string) (time.Duration, []string) {
	if len(args) > 0 {
		if v, ok := strings.CutPrefix(args[0], "-timeout="); ok {
			d, err := time.ParseDuration(v)
			ts.Check(err)
			return d, args[1:]
		}
	}
	return 5 * time.Second, args
}

func cmdWaitsock(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! waitsock")
	}
	d, args := timeoutArg(ts, args)
	path := ts.Getenv("RELAY_SOCKET")
	switch len(args) {
	case 0:
	case 1:
		path = ts.MkAbs(args[0])
	default:
		ts.Fatalf("usage: waitsock [-timeout=D] [path]")
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	ts.Check(waitSocket(ctx, path))
}

func cmdWaitfile(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! waitfile")
	}
	d, args := timeoutArg(ts, args)
	if len(args) != 1 {
		ts.Fatalf("usage: waitfile [-timeout=D] path")
	}
	path := ts.MkAbs(args[0])
	for deadline := time.Now().Add(d); ; {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("%s did not appear within %v", args[0], d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cmdWaitstats waits for relayd to reach a state a script needs before its next step, such
// as every line of a pipe read and one message still running, instead of sleeping.
func cmdWaitstats(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! waitstats")
	}
	d, args := timeoutArg(ts, args)
	if d == 5*time.Second {
		d = 10 * time.Second
	}
	if len(args) == 0 {
		ts.Fatalf("usage: waitstats [-timeout=D] KEY=N...")
	}
	want := map[string]float64{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		n, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil {
			ts.Fatalf("waitstats: %q is not KEY=N", a)
		}
		want[k] = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var last string
	for {
		got, err := relayStats(ctx, ts.Getenv("RELAY_SOCKET"))
		if err == nil {
			last = fmt.Sprint(got)
			match := true
			for k, n := range want {
				if v, ok := got[k].(float64); !ok || v != n {
					match = false
				}
			}
			if match {
				return
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			ts.Fatalf("relayd's stats did not reach %v within %v; last: %s", want, d, last)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// relayStats asks relayd for its stats.
func relayStats(ctx context.Context, socket string) (map[string]any, error) {
	c, err := ipc.Dial(ctx, socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	call, err := c.Send("relay", "stats", nil)
	if err != nil {
		return nil, err
	}
	a, err := c.Wait(ctx, call)
	if err != nil {
		return nil, err
	}
	var s map[string]any
	return s, json.Unmarshal(a.Data, &s)
}

var signals = map[string]syscall.Signal{
	"TERM": syscall.SIGTERM,
	"INT":  syscall.SIGINT,
	"HUP":  syscall.SIGHUP,
	"QUIT": syscall.SIGQUIT,
	"KILL": syscall.SIGKILL,
	"USR1": syscall.SIGUSR1,
	"USR2": syscall.SIGUSR2,
}

// cmdSignal sends a signal to background commands by program name. testscript's kill only knows
// INT and KILL, and relayd's contract is about SIGTERM.
func cmdSignal(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! signal")
	}
	if len(args) != 2 || !strings.HasPrefix(args[0], "-") {
		ts.Fatalf("usage: signal -SIG program")
	}
	sig, ok := signals[strings.TrimPrefix(strings.TrimPrefix(args[0], "-"), "SIG")]
	if !ok {
		ts.Fatalf("unknown signal %s", args[0])
	}
	n := 0
	for _, cmd := range ts.BackgroundCmds() {
		if filepath.Base(cmd.Path) != args[1] {
			continue
		}
		ts.Check(cmd.Process.Signal(sig))
		n++
	}
	if n == 0 {
		ts.Fatalf("no background command runs %s", args[1])
	}
}

func cmdSleep(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: sleep D")
	}
	d, err := time.ParseDuration(args[0])
	ts.Check(err)
	time.Sleep(d)
}
