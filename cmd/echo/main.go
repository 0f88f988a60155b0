// Command echo is relayd's client: a REPL on a terminal, one message from its arguments, or one
// message per line of its standard input.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"relayd/internal/cli"
	"relayd/ipc"
)

// Exit codes: part of echo's contract, listed in its --help.
const (
	exitOK          = 0
	exitReplyError  = 1
	exitUsage       = cli.ExitUsage
	exitUnavailable = 3
	exitTimeout     = 4
)

// version is set at build time with -ldflags "-X main.version=…"; otherwise the module version
// from the build info is used.
var version string

// progName is the name echo was invoked as, for its usage, its hints and its messages: the
// installed client is relay-echo, and "Run 'echo --help'" would run the shell's echo.
var progName = "echo"

// modes are the ways to run echo, as its help lists them: the command line (after the
// program's name) and what it does.
var modes = []struct{ cmd, what string }{
	{"", "on a terminal: an interactive REPL (an empty line, Ctrl+D or Ctrl+C quits)"},
	{"hello world", "sends one message, the arguments joined by spaces; prints HELLO WORLD"},
	{"|", "sends each input line as a message, pipelined on one connection, and\nprints one line per input line, in input order"},
	{"--stats", "prints the relay's counters as sorted \"name value\" lines"},
	{"--status", "prints the registered names, a table of the live workers (PID, AGE,\nSTATE busy, idle or starting, ATTEMPT, SENDER connection, MESSAGE id) and a\nstats line; with --json the reply frame"},
	{"--top", "on a terminal, a live view of the stats and workers that refreshes once\na second, like top (q or Ctrl+C quits; the last frame stays); otherwise\n--count snapshots a second apart (default 1), or with --json one status\nframe a line"},
	{"--nats URL", "any of these through relayd nodes on NATS instead of the socket: the\nREPL names the node that answered; --stats, --status and --top show every\nnode's (--top as one service NAME@NODE per node); --nats-durable sends\nrequests that survive a node's crash"},
}

// usageHead is the help above the flags, in the words of the name echo was invoked as.
func usageHead(name string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: %s [flags] [message ...]\n\nSends messages to relayd over its Unix socket and prints the answers.\n\n", name)
	cmds := make([]string, len(modes))
	width := 0
	for i, m := range modes {
		switch m.cmd {
		case "":
			cmds[i] = name
		case "|":
			cmds[i] = "cmd | " + name
		default:
			cmds[i] = name + " " + m.cmd
		}
		width = max(width, len(cmds[i]))
	}
	for i, m := range modes {
		indent := strings.Repeat(" ", width+4)
		fmt.Fprintf(&b, "  %-*s  %s\n", width, cmds[i], strings.ReplaceAll(m.what, "\n", "\n"+indent))
	}
	fmt.Fprintf(&b, `
Put -- before a message that starts with a dash. Installed as relay-echo so that it never
shadows the shell's echo.

In pipe mode a line that fails prints an empty line on stdout (with --json, an error reply
prints its frame) and "%[1]s: line N: reason" on stderr, and newlines inside an answer print as
\n, so that output lines stay aligned with input lines.

Exit status: 0 every message answered; 1 an error reply; 2 usage; 3 relay not available (or the
connection to it lost); 4 no answer within --timeout; 130 interrupted by SIGINT or SIGTERM before
every answer came (the REPL and --top exit 0). When lines fail differently the worst wins: 3,
then 4, then 1, since an unanswered message's fate is unknown and an error reply's is not. The
live --top view shows a lost relay and keeps trying; --top snapshots stop with its exit status.

Colours are used only when stdout is a terminal and NO_COLOR is not set.

Flags:
`, name)
	return b.String()
}

// options are the parsed flags.
type options struct {
	socket  string
	timeout time.Duration
	json    bool
	stats   bool
	status  bool
	top     bool
	count   int
	to      string
	topic   string
	nats    natsOptions
	usage   bool
	// every is set when --to was not given: --status and --top show every service.
	every bool
}

// where names what echo talks to, for its messages: the socket's path or the NATS URL.
func (o options) where() string {
	if o.nats.url != "" {
		return "NATS " + o.nats.url
	}
	return o.socket
}

// exitError carries an exit code. A nil err means the message was already printed.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

func exitf(code int, format string, args ...any) error {
	return &exitError{code: code, err: fmt.Errorf(format, args...)}
}

// env looks up an environment variable; os.LookupEnv in production.
type env func(key string) (string, bool)

func main() {
	progName = filepath.Base(os.Args[0])
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.LookupEnv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode prints err, if it has a message, and returns the process's exit code.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if !errors.As(err, &ee) {
		fmt.Fprintf(stderr, "%s: %v\n", progName, err)
		return exitReplyError
	}
	if ee.err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", progName, ee.err)
	}
	if ee.code == exitUsage {
		fmt.Fprintln(stderr, cli.Hint(progName))
	}
	return ee.code
}

// run is echo without the process around it: it parses args and runs the mode they and the
// terminals select.
func run(ctx context.Context, args []string, lookupEnv env, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("echo", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SortFlags = false
	var o options
	fs.StringVar(&o.socket, "socket", "", "relayd's socket `path` (default $"+ipc.SocketEnv+", else "+ipc.DefaultSocket+")")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Second, "how long to wait for each answer, counted from when its request is sent")
	fs.BoolVar(&o.json, "json", false, "print reply frames as JSON lines")
	fs.BoolVar(&o.stats, "stats", false, `ask the relay for its counters (topic "stats") and print them`)
	fs.BoolVar(&o.status, "status", false, `ask the relay for its names and live workers (topic "status") and print them as a table`)
	fs.BoolVar(&o.top, "top", false, "show the relay's stats and workers once a second: live on a terminal, else --count snapshots")
	fs.IntVar(&o.count, "count", 0, "with --top: stop after `N` refreshes (0: until q, Ctrl+C or SIGTERM; default 0 on a terminal, 1 otherwise)")
	fs.StringVar(&o.to, "to", "relay", "the registered `name` to send messages to")
	fs.StringVar(&o.topic, "topic", "echo", "the `topic` of each message")
	addNATSFlags(fs, &o.nats)
	fs.BoolVar(&o.usage, "usage", false, `in the REPL, add the attempt and what the message cost its worker (wall and CPU time, peak memory) to the "from worker" line; --json shows it always`)
	showVersion := fs.Bool("version", false, "print the version and exit")

	switch err := fs.Parse(args); {
	case errors.Is(err, pflag.ErrHelp):
		fmt.Fprint(stdout, usageHead(progName)+cli.FlagUsages(fs, 0))
		return nil
	case err != nil:
		return &exitError{code: exitUsage, err: err}
	}
	switch {
	case *showVersion:
		fmt.Fprintln(stdout, cli.Version(progName, version))
		return nil
	case o.timeout <= 0:
		return exitf(exitUsage, "--timeout must be positive, not %v", o.timeout)
	case o.to == "" || o.topic == "":
		return exitf(exitUsage, "--to and --topic must not be empty")
	case countTrue(o.stats, o.status, o.top) > 1:
		return exitf(exitUsage, "--stats, --status and --top exclude each other")
	case o.stats && fs.NArg() > 0:
		return exitf(exitUsage, "--stats takes no message arguments")
	case o.status && fs.NArg() > 0:
		return exitf(exitUsage, "--status takes no message arguments")
	case o.top && fs.NArg() > 0:
		return exitf(exitUsage, "--top takes no message arguments")
	case fs.Changed("count") && !o.top:
		return exitf(exitUsage, "--count goes with --top")
	case o.count < 0:
		return exitf(exitUsage, "--count must not be negative, not %d", o.count)
	}
	if err := checkNATS(fs, &o, fs.NArg() == 0 && !o.stats && !o.status && isTerminal(stdin) && isTerminal(stdout)); err != nil {
		return err
	}
	if o.top && !fs.Changed("count") && (o.json || !isTerminal(stdout)) {
		o.count = 1
	}
	o.every = !fs.Changed("to")
	getenv := func(k string) string { v, _ := lookupEnv(k); return v }
	o.socket = ipc.ResolveSocket(o.socket, getenv)
	color := paint(useColor(stdout, lookupEnv))

	switch {
	case o.stats:
		return stats(ctx, o, stdout)
	case o.status:
		return status(ctx, o, stdout)
	case o.top:
		return top(ctx, o, stdin, stdout)
	case fs.NArg() > 0:
		return oneShot(ctx, o, strings.Join(fs.Args(), " "), stdout)
	case isTerminal(stdin) && isTerminal(stdout):
		return repl(ctx, o, stdin.(*os.File), stdout.(*os.File), color)
	default:
		return pipe(ctx, o, stdin, stdout, stderr)
	}
}

func countTrue(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// useColor reports whether output to stdout gets colours: only on a terminal, and never with
// NO_COLOR in the environment, whatever its value.
func useColor(stdout io.Writer, lookupEnv env) bool {
	_, noColor := lookupEnv("NO_COLOR")
	return isTerminal(stdout) && !noColor
}

// isTerminal reports whether f is an *os.File open on a terminal.
func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	return ok && term.IsTerminal(int(file.Fd()))
}
