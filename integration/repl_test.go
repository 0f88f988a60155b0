package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// expectTimeout bounds every wait for terminal output: generous, since echo and relayd run
// under the race detector on a loaded machine; a test that passes never waits for it.
const expectTimeout = 20 * time.Second

// sgr matches any ANSI colour or attribute sequence.
var sgr = regexp.MustCompile(`\x1b\[[0-9;]*m`)

// terminal is echo running on a pseudo-terminal, as a user at a real terminal runs it.
type terminal struct {
	t    *testing.T
	ptmx *os.File
	cmd  *exec.Cmd

	mu   sync.Mutex
	out  []byte        // guarded by mu; everything echo wrote
	seen int           // guarded by mu; how much of out expect has consumed
	more chan struct{} // signalled after each read

	readDone chan struct{}
	exited   chan struct{}
	waitErr  error // set before exited is closed
}

// startTerminal runs echo with args on a new 80x24 pseudo-terminal (stdin, stdout and stderr)
// with the given environment on top of PATH. At the end of the test echo is killed if it is still
// running, and the terminal is closed.
func startTerminal(t *testing.T, env []string, args ...string) *terminal {
	t.Helper()
	return startTerminalSize(t, &pty.Winsize{Rows: 24, Cols: 80}, env, args...)
}

// startTerminalSize is startTerminal with a window size; a zero size is what a terminal that
// does not know its size reports.
func startTerminalSize(t *testing.T, size *pty.Winsize, env []string, args ...string) *terminal {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "echo"), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "TERM=xterm", "GORACE=" + os.Getenv("GORACE"), "GODEBUG=" + os.Getenv("GODEBUG")}, env...)
	ptmx, err := pty.StartWithSize(cmd, size)
	if err != nil {
		t.Fatal(err)
	}
	tm := &terminal{
		t: t, ptmx: ptmx, cmd: cmd,
		more:     make(chan struct{}, 1),
		readDone: make(chan struct{}),
		exited:   make(chan struct{}),
	}
	go tm.read()
	go func() {
		tm.waitErr = cmd.Wait()
		close(tm.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-tm.exited:
		default:
			cmd.Process.Kill()
			<-tm.exited
		}
		ptmx.Close()
		<-tm.readDone
	})
	return tm
}

// read collects the terminal's output until the terminal is closed or echo has gone.
func (tm *terminal) read() {
	defer close(tm.readDone)
	buf := make([]byte, 4096)
	for {
		n, err := tm.ptmx.Read(buf)
		tm.mu.Lock()
		tm.out = append(tm.out, buf[:n]...)
		tm.mu.Unlock()
		select {
		case tm.more <- struct{}{}:
		default:
		}
		if err != nil {
			return // EIO once echo has exited and closed its side.
		}
	}
}

// expect waits until the output not yet consumed contains want, and consumes it.
func (tm *terminal) expect(want string) {
	tm.t.Helper()
	tm.expectFunc(strconv.Quote(want), func(s string) int {
		if i := strings.Index(s, want); i >= 0 {
			return i + len(want)
		}
		return -1
	})
}

// expectRegexp waits until the output not yet consumed matches re, and consumes up to the
// match's end.
func (tm *terminal) expectRegexp(re string) {
	tm.t.Helper()
	rx := regexp.MustCompile(re)
	tm.expectFunc("/"+re+"/", func(s string) int {
		if loc := rx.FindStringIndex(s); loc != nil {
			return loc[1]
		}
		return -1
	})
}

func (tm *terminal) expectFunc(what string, find func(string) int) {
	tm.t.Helper()
	deadline := time.After(expectTimeout)
	for {
		tm.mu.Lock()
		rest := string(tm.out[tm.seen:])
		if end := find(rest); end >= 0 {
			tm.seen += end
			tm.mu.Unlock()
			return
		}
		tm.mu.Unlock()
		select {
		case <-tm.more:
		case <-deadline:
			tm.t.Fatalf("terminal output: no %s within %v; got after the last match:\n%q", what, expectTimeout, rest)
		}
	}
}

// output is everything echo has written so far.
func (tm *terminal) output() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return string(tm.out)
}

// pending is the output not yet consumed by expect.
func (tm *terminal) pending() string {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return string(tm.out[tm.seen:])
}

// send types s.
func (tm *terminal) send(s string) {
	tm.t.Helper()
	if _, err := tm.ptmx.WriteString(s); err != nil {
		tm.t.Fatal(err)
	}
}

// waitExit waits for echo to exit and requires status 0 and the terminal restored to cooked mode.
func (tm *terminal) waitExit() {
	tm.t.Helper()
	select {
	case <-tm.exited:
	case <-time.After(expectTimeout):
		tm.t.Fatalf("echo still running %v after it was told to quit; output:\n%q", expectTimeout, tm.output())
	}
	// Its last output may still be on its way through the pty: read to the end.
	select {
	case <-tm.readDone:
	case <-time.After(expectTimeout):
	}
	if tm.waitErr != nil {
		tm.t.Errorf("echo exited: %v, want status 0; output:\n%q", tm.waitErr, tm.output())
	}
	termios, err := unix.IoctlGetTermios(int(tm.ptmx.Fd()), unix.TCGETS)
	if err != nil {
		tm.t.Fatal(err)
	}
	if termios.Lflag&unix.ECHO == 0 || termios.Lflag&unix.ICANON == 0 {
		tm.t.Errorf("terminal left in raw mode: lflag %#x, want ECHO and ICANON set", termios.Lflag)
	}
}

// waitCooked waits until echo has put the terminal out of raw mode (ISIG set, so that ^C is a
// SIGINT), as it does while an answer is awaited.
func (tm *terminal) waitCooked() {
	tm.t.Helper()
	raw, _ := tm.ptmx.SyscallConn()
	cooked := func() bool {
		var lflag uint32
		raw.Control(func(fd uintptr) {
			if termios, err := unix.IoctlGetTermios(int(fd), unix.TCGETS); err == nil {
				lflag = termios.Lflag
			}
		})
		return lflag&unix.ISIG != 0
	}
	deadline := time.Now().Add(expectTimeout)
	for !cooked() {
		if time.Now().After(deadline) {
			tm.t.Fatalf("terminal still in raw mode %v after the request was sent; output:\n%q", expectTimeout, tm.output())
		}
		time.Sleep(10 * time.Millisecond) // Polling the terminal's mode: nothing signals it.
	}
}

// The tutorial's colours.
const (
	reset  = "\x1b[0m"
	dim    = "\x1b[2m"
	green  = "\x1b[32m"
	yellow = "\x1b[33m"
	cyan   = "\x1b[36m"
)

// TestREPL drives echo's REPL through a pseudo-terminal against a real relayd, checking the
// tutorial's words and colours.
func TestREPL(t *testing.T) {
	dir := shortTempDir(t)
	socket := filepath.Join(dir, "relayd.sock")
	// The Ctrl+C case leaves a 10s answer in flight: a short drain keeps the stop at the end
	// within its bound.
	startRelayd(t, socket, "--allow-fault-injection", "--shutdown-timeout=1s")
	env := []string{"RELAY_SOCKET=" + socket}

	t.Run("reply in colour, history, goodbye on an empty line", func(t *testing.T) {
		t.Parallel()
		tm := startTerminal(t, env)
		tm.expect(cyan + "Echo Client" + reset + "\r\n")
		tm.expect(dim + "Type messages to echo. Ctrl+C to exit.\r\n" + reset + "\r\n")
		tm.expect(yellow + "> " + reset)
		tm.send("hello world\r")
		tm.expect(green + "  HELLO WORLD" + reset + "\r\n")
		tm.expectRegexp(`^` + regexp.QuoteMeta(dim) + `  from worker: \{processes\|[1-9][0-9]*\}` + regexp.QuoteMeta(reset) + "\r\n")
		tm.expect(yellow + "> " + reset)

		// Up arrow brings the last line back; Enter sends it again.
		tm.send("\x1b[A\r")
		tm.expect(green + "  HELLO WORLD" + reset)
		tm.expect(yellow + "> " + reset)

		tm.send("\r")
		tm.expect("\r\n\r\nGoodbye!\r\n")
		tm.waitExit()
	})

	t.Run("--usage adds the attempt and the worker's cost, dimmed", func(t *testing.T) {
		t.Parallel()
		tm := startTerminal(t, env, "--usage")
		tm.expect(yellow + "> " + reset)
		tm.send("!flaky 1\r")
		tm.expect(green + "  !FLAKY 1" + reset + "\r\n")
		tm.expectRegexp(`^` + regexp.QuoteMeta(dim) + `  from worker: \{processes\|[1-9][0-9]*\} attempt 2, wall [0-9.]+[µm]?s, cpu [0-9.]+[µm]?s, max rss [0-9]+\.[0-9] MiB` + regexp.QuoteMeta(reset) + "\r\n")
		tm.send("\x04")
		tm.expect("\r\nGoodbye!\r\n")
		tm.waitExit()
	})

	t.Run("line editing on a terminal without a size", func(t *testing.T) {
		t.Parallel()
		tm := startTerminalSize(t, &pty.Winsize{}, env)
		tm.expect(yellow + "> " + reset)
		// Backspace, then two steps left and an insertion: "abc" → "ab" → "abd" → "aXbd".
		tm.send("abc\x7fd\x1b[D\x1b[DX\r")
		tm.expect(green + "  AXBD" + reset + "\r\n")
		tm.expect(yellow + "> " + reset)
		tm.send("\x04")
		tm.expect("\r\nGoodbye!\r\n")
		tm.waitExit()
	})

	t.Run("NO_COLOR, Unicode, goodbye on Ctrl+D", func(t *testing.T) {
		t.Parallel()
		tm := startTerminal(t, append(env, "NO_COLOR=1"))
		tm.expect("Echo Client\r\nType messages to echo. Ctrl+C to exit.\r\n\r\n> ")
		tm.send("grüne, мир\r")
		tm.expectRegexp("\r\n  GRÜNE, МИР\r\n  from worker: \\{processes\\|[0-9]+\\}\r\n> ")
		tm.send("\x04") // Ctrl+D at the prompt just printed.
		tm.expect("\r\nGoodbye!\r\n")
		tm.waitExit()
		if got := sgr.FindAllString(tm.output(), -1); got != nil {
			t.Errorf("colour sequences with NO_COLOR=1: %q; output:\n%q", got, tm.output())
		}
	})

	t.Run("timeout, and a late answer shown as late, not taken for the next one", func(t *testing.T) {
		t.Parallel()
		tm := startTerminal(t, env, "--timeout=1s")
		tm.expect(yellow + "> " + reset)
		tm.send("!sleep 3s\r")
		tm.expect(dim + "  timeout (no answer within 1s; relayd may still be working on it: its answer will show here)" + reset + "\r\n")
		tm.expect(yellow + "> " + reset)
		// The late answer comes while the prompt waits: it names its message.
		tm.expect(green + `  late answer to "!sleep 3s": !SLEEP 3S` + reset + "\r\n")
		tm.expect(yellow + "> " + reset)
		tm.send("next\r")
		// On a loaded machine "next" may miss its second as well; either way it is not taken
		// for the answer to the message before it.
		tm.expectRegexp(regexp.QuoteMeta(green) + `  (late answer to "next": )?NEXT` + regexp.QuoteMeta(reset))
		tm.expect(yellow + "> " + reset)
		tm.send("\x03") // Ctrl+C at the prompt.
		tm.expect("\r\nGoodbye!\r\n")
		tm.waitExit()
		if n := strings.Count(tm.output(), "SLEEP"); n != 1 {
			t.Errorf("the late answer was shown %d times, want once; output:\n%q", n, tm.output())
		}
	})

	t.Run("Ctrl+C while an answer is awaited", func(t *testing.T) {
		t.Parallel()
		// The answer takes 10s, twice what the quit may take on a loaded machine, so that a
		// quit in time cannot be echo having waited for it.
		tm := startTerminal(t, env, "--timeout=1m")
		tm.expect(yellow + "> " + reset)
		tm.send("!sleep 10s\r")
		tm.expect("!sleep 10s\r\n")
		tm.waitCooked() // ^C is a SIGINT only once echo has left raw mode.
		start := time.Now()
		tm.send("\x03")
		tm.expect("\r\nGoodbye!\r\n")
		tm.waitExit()
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("echo took %v to quit after Ctrl+C, want well under the 10s the answer takes", d)
		}
	})

	t.Run("error reply", func(t *testing.T) {
		t.Parallel()
		tm := startTerminal(t, env, "--to", "nosuch")
		tm.expect(yellow + "> " + reset)
		tm.send("hello\r")
		tm.expectRegexp(regexp.QuoteMeta(dim+"  error: unknown_name: ") + `[^\x1b]+` + regexp.QuoteMeta(reset) + "\r\n")
		tm.expect(yellow + "> " + reset)
		tm.send("\r")
		tm.expect("Goodbye!")
		tm.waitExit()
	})

	t.Run("SIGTERM at the prompt", func(t *testing.T) {
		t.Parallel()
		tm := startTerminal(t, env)
		tm.expect(yellow + "> " + reset)
		if err := tm.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		tm.expect("\r\nGoodbye!\r\n")
		tm.waitExit()
	})
}

// TestREPLRelayComesAndGoes checks that the REPL goes on without a relay, reaches one that
// starts later, and dials again when the relay it was connected to is replaced.
func TestREPLRelayComesAndGoes(t *testing.T) {
	t.Parallel()
	socket := filepath.Join(shortTempDir(t), "relayd.sock")
	tm := startTerminal(t, []string{"RELAY_SOCKET=" + socket})
	tm.expect(yellow + "> " + reset)
	tm.send("hello\r")
	tm.expect(dim + "  error: relay not available" + reset + "\r\n")
	tm.expect(yellow + "> " + reset)
	tm.send("again\r")
	tm.expect(dim + "  error: relay not available" + reset + "\r\n")
	tm.expect(yellow + "> " + reset)

	first := startRelayd(t, socket)
	tm.send("now\r")
	tm.expect(green + "  NOW" + reset + "\r\n")
	tm.expect(yellow + "> " + reset)

	first.stop(t)
	tm.send("gone\r")
	tm.expect(dim + "  error: relay not available" + reset + "\r\n")
	tm.expect(yellow + "> " + reset)

	startRelayd(t, socket)
	tm.send("back\r")
	tm.expect(green + "  BACK" + reset + "\r\n")
	tm.expect(yellow + "> " + reset)
	tm.send("\r")
	tm.expect("Goodbye!")
	tm.waitExit()
	if rest := strings.TrimSpace(tm.pending()); rest != "" {
		t.Errorf("output after Goodbye!: %q", rest)
	}
}
