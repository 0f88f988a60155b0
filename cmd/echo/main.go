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
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"relayd/ipc"
)

// Exit codes, as DESIGN.md fixes them.
const (
	exitOK          = 0
	exitReplyError  = 1
	exitUsage       = 2
	exitUnavailable = 3
	exitTimeout     = 4
)

// version is set at build time with -ldflags "-X main.version=…"; otherwise the module version
// from the build info is used.
var version string

const usageHead = `Usage: echo [flags] [message ...]

Sends messages to relayd over its Unix socket and prints the answers.

  echo                  on a terminal: an interactive REPL (an empty line, Ctrl+D or Ctrl+C quits)
  echo hello world      sends one message, the arguments joined by spaces; prints HELLO WORLD
  cmd | echo            sends each input line as a message, pipelined on one connection, and
                        prints one line per input line, in input order
  echo --stats          prints the relay's counters as sorted "name value" lines

Put -- before a message that starts with a dash. Installed as relay-echo so that it never
shadows the shell's echo.

In pipe mode a line that fails prints an empty line on stdout (with --json, an error reply
prints its frame) and "echo: line N: reason" on stderr, and newlines inside an answer print as
\n, so that output lines stay aligned with input lines.

Exit status: 0 every message answered; 1 an error reply; 2 usage; 3 relay not available (or the
connection to it lost); 4 no answer within --timeout; 130 interrupted by SIGINT or SIGTERM before
every answer came (the REPL exits 0). When lines fail differently the worst wins: 3, then 4,
then 1, since an unanswered message's fate is unknown and an error reply's is not.

Colours are used only when stdout is a terminal and NO_COLOR is not set.

Flags:
`

// options are the parsed flags.
type options struct {
	socket  string
	timeout time.Duration
	json    bool
	stats   bool
	to      string
	topic   string
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
		fmt.Fprintf(stderr, "echo: %v\n", err)
		return exitReplyError
	}
	if ee.err != nil {
		fmt.Fprintf(stderr, "echo: %v\n", ee.err)
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
	fs.StringVar(&o.to, "to", "relay", "the registered `name` to send messages to")
	fs.StringVar(&o.topic, "topic", "echo", "the `topic` of each message")
	showVersion := fs.Bool("version", false, "print the version and exit")

	switch err := fs.Parse(args); {
	case errors.Is(err, pflag.ErrHelp):
		fmt.Fprint(stdout, usageHead+fs.FlagUsages())
		return nil
	case err != nil:
		return exitf(exitUsage, "%v\nRun 'echo --help' for usage.", err)
	}
	switch {
	case *showVersion:
		fmt.Fprintf(stdout, "echo %s\n", buildVersion())
		return nil
	case o.timeout <= 0:
		return exitf(exitUsage, "--timeout must be positive, not %v", o.timeout)
	case o.to == "" || o.topic == "":
		return exitf(exitUsage, "--to and --topic must not be empty")
	case o.stats && fs.NArg() > 0:
		return exitf(exitUsage, "--stats takes no message arguments")
	}
	getenv := func(k string) string { v, _ := lookupEnv(k); return v }
	o.socket = ipc.ResolveSocket(o.socket, getenv)
	color := paint(useColor(stdout, lookupEnv))

	switch {
	case o.stats:
		return stats(ctx, o, stdout)
	case fs.NArg() > 0:
		return oneShot(ctx, o, strings.Join(fs.Args(), " "), stdout)
	case isTerminal(stdin) && isTerminal(stdout):
		return repl(ctx, o, stdin.(*os.File), stdout.(*os.File), color)
	default:
		return pipe(ctx, o, stdin, stdout, stderr)
	}
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

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
