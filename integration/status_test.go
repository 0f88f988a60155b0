package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"relayd/ipc"
)

// runEcho runs echo with args against socket and returns its stdout; it fails the test unless
// echo exits 0.
func runEcho(t *testing.T, socket string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "echo"), append([]string{"--socket", socket}, args...)...)
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("echo %s: %v; stderr:\n%s", strings.Join(args, " "), err, stderr.String())
	}
	if s := stderr.String(); s != "" {
		t.Errorf("echo %s wrote to stderr: %q", strings.Join(args, " "), s)
	}
	return stdout.String()
}

// statusRow is one line of echo --status's workers table.
type statusRow struct {
	pid                              int
	age, state, attempt, sender, msg string
}

// parseStatusTable reads the workers table of echo --status or --top output.
func parseStatusTable(t *testing.T, out string) []statusRow {
	t.Helper()
	var rows []statusRow
	in := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 6 && f[0] == "PID" && f[5] == "MESSAGE":
			in = true
		case in && len(f) == 6:
			pid, err := strconv.Atoi(f[0])
			if err != nil {
				t.Fatalf("workers table row %q: pid %q is not a number", line, f[0])
			}
			rows = append(rows, statusRow{pid, f[1], f[2], f[3], f[4], f[5]})
		default:
			in = false
		}
	}
	return rows
}

// TestEchoStatus runs echo --status while a slow message runs: its worker is listed busy with
// the message's sender and id, and the spare idle; --json gives the same as a frame.
func TestEchoStatus(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	// The message must still run after two echo processes started on a loaded machine.
	startRelayd(t, sock, "--worker-arg=--delay=6s", "--spares=1", "--stats-interval=0")

	c, err := ipc.Dial(t.Context(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	call, err := c.Send("relay", "echo", "slow")
	if err != nil {
		t.Fatal(err)
	}

	// The message takes a worker at once (the spare), and a new spare is started behind it.
	var out string
	var busy statusRow
	if !eventually(20*time.Second, func() bool {
		out = runEcho(t, sock, "--status")
		for _, r := range parseStatusTable(t, out) {
			if r.state == "busy" {
				busy = r
				return true
			}
		}
		return false
	}) {
		t.Fatalf("echo --status never listed a busy worker; last output:\n%s", out)
	}
	wantSender := fmt.Sprintf("pid=%d,", os.Getpid())
	if busy.attempt != "1" || !strings.Contains(busy.sender, wantSender) || busy.msg != strconv.FormatInt(call.ID, 10) {
		t.Errorf("busy row = %+v, want attempt 1, a sender with %q, message %d; output:\n%s", busy, wantSender, call.ID, out)
	}
	if !strings.HasPrefix(out, "names: relay\n") {
		t.Errorf("echo --status output starts %q, want the names first: %q", strings.SplitN(out, "\n", 2)[0], "names: relay")
	}
	if !strings.Contains(out, "\nstats: messages=1 ") || !strings.Contains(out, " in_flight=1 ") {
		t.Errorf("echo --status stats line missing or wrong, want messages=1 and in_flight=1:\n%s", out)
	}

	// --json prints the raw frame, which parses and lists the same worker.
	raw := runEcho(t, sock, "--status", "--json")
	var frame struct {
		Topic string `json:"topic"`
		Data  struct {
			Names   []string `json:"names"`
			Workers []struct {
				PID       int             `json:"pid"`
				State     string          `json:"state"`
				Attempt   int             `json:"attempt"`
				Sender    string          `json:"sender"`
				MessageID json.RawMessage `json:"message_id"`
			} `json:"workers"`
			Stats map[string]any `json:"stats"`
		} `json:"data"`
	}
	if err := json.Unmarshal([]byte(raw), &frame); err != nil {
		t.Fatalf("echo --status --json printed %q: %v", raw, err)
	}
	if frame.Topic != "status_response" || len(frame.Data.Names) != 1 || frame.Data.Names[0] != "relay" {
		t.Errorf("--json frame topic %q names %v, want status_response and [relay]", frame.Topic, frame.Data.Names)
	}
	found := false
	for _, w := range frame.Data.Workers {
		if w.PID == busy.pid {
			found = true
			if w.State != "busy" || w.Attempt != 1 || string(w.MessageID) != strconv.FormatInt(call.ID, 10) {
				t.Errorf("--json worker %d = %+v, want busy, attempt 1, message_id %d", w.PID, w, call.ID)
			}
		}
	}
	if !found {
		t.Errorf("--json lists no worker %d: %s", busy.pid, raw)
	}

	// The reply comes from the worker the table showed.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	a, err := c.Wait(ctx, call)
	if err != nil {
		t.Fatal(err)
	}
	if a.Worker == nil || a.Worker.PID != busy.pid {
		t.Errorf("reply %s came from another worker than the busy one, %d", a.Raw, busy.pid)
	}
}

// TestEchoTopSnapshots runs echo --top with stdout not a terminal: snapshots, --count of them a
// second apart, or status frames with --json.
func TestEchoTopSnapshots(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	startRelayd(t, sock, "--spares=1", "--stats-interval=0")
	// Wait for the spare, so that every snapshot has it.
	if !eventually(20*time.Second, func() bool { return stats(t, sock)["spares_ready"].(float64) == 1 }) {
		t.Fatal("the spare never became ready")
	}

	tests := []struct {
		name      string
		args      []string
		wantSnaps int
		minTime   time.Duration
	}{
		{"default one snapshot", []string{"--top"}, 1, 0},
		{"two snapshots", []string{"--top", "--count=2"}, 2, 900 * time.Millisecond},
		{"json frames", []string{"--top", "--json", "--count=2"}, 2, 900 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			out := runEcho(t, sock, tt.args...)
			if d := time.Since(start); d < tt.minTime {
				t.Errorf("echo %v took %v, want at least %v: snapshots are a second apart", tt.args, d, tt.minTime)
			}
			if slices.Contains(tt.args, "--json") {
				lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
				if len(lines) != tt.wantSnaps {
					t.Fatalf("got %d lines, want %d frames:\n%s", len(lines), tt.wantSnaps, out)
				}
				for _, l := range lines {
					var f struct {
						Topic string          `json:"topic"`
						Data  json.RawMessage `json:"data"`
					}
					if err := json.Unmarshal([]byte(l), &f); err != nil || f.Topic != "status_response" {
						t.Errorf("line %q: %v, want a status_response frame", l, err)
					}
				}
				return
			}
			if got := strings.Count(out, "\nstats: messages="); got != tt.wantSnaps {
				t.Errorf("got %d snapshots, want %d:\n%s", got, tt.wantSnaps, out)
			}
			if got := strings.Count(out, "relayd "+sock+" "); got != tt.wantSnaps {
				t.Errorf("got %d title lines naming %s, want %d:\n%s", got, sock, tt.wantSnaps, out)
			}
			rows := parseStatusTable(t, out)
			if len(rows) != tt.wantSnaps || rows[0].state != "idle" {
				t.Errorf("workers rows %+v, want the idle spare in each snapshot:\n%s", rows, out)
			}
		})
	}
}

// TestEchoTopTerminal runs the live view on a pseudo-terminal: it draws the workers, redraws
// once a second, says so when the relay goes away and keeps going, and q quits with status 0
// and the terminal restored.
func TestEchoTopTerminal(t *testing.T) {
	sock := filepath.Join(shortTempDir(t), "s")
	r := startRelayd(t, sock, "--spares=1", "--stats-interval=0")
	tm := startTerminal(t, []string{"RELAY_SOCKET=" + sock}, "--top")

	tm.expect("\x1b[?25l") // The cursor is hidden while the view runs.
	tm.expectRegexp(`PID +AGE +STATE +ATTEMPT +SENDER +MESSAGE`)
	tm.expectRegexp(`\r\n[0-9]+ +[0-9.]+s +idle +- +- +-`)
	// A second frame, drawn over the first from the top-left corner.
	tm.expect("\x1b[H")
	tm.expectRegexp(`stats: messages=0 `)

	r.stop(t)
	tm.expect("relay not available at " + sock)
	tm.expect("trying again")

	tm.send("q")
	tm.waitExit()
	if out := tm.output(); !strings.HasSuffix(out, "\x1b[?25h\r\n") {
		t.Errorf("output ends %q, want the cursor shown again and a new line", out[max(0, len(out)-40):])
	}
}

// TestEchoStatusNoRelay checks the exit status of --status and --top without a relay.
func TestEchoStatusNoRelay(t *testing.T) {
	missing := filepath.Join(shortTempDir(t), "none")
	for _, args := range [][]string{{"--status"}, {"--status", "--json"}, {"--top"}, {"--top", "--count=3"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cmd := exec.Command(filepath.Join(binDir, "echo"), append([]string{"--socket", missing}, args...)...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 3 {
				t.Errorf("echo %v: %v, want exit status 3; output %q", args, err, out)
			}
			if want := "echo: relay not available at " + missing; !strings.Contains(string(out), want) {
				t.Errorf("output %q, want %q", out, want)
			}
		})
	}
}
