// Command worker is relayd's echo worker: it answers request lines on stdin with the data
// uppercased with Unicode's full case mapping ("straße" becomes "STRASSE").
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"relayd/internal/casemap"
	"relayd/internal/cli"
	"relayd/ipc"
)

// version is the worker's version; the build may set it with -ldflags "-X main.version=…".
// When it is empty, --version prints the module version from the build info.
var version string

// maxRequestBytes bounds one request line. relayd caps a client's message at
// --max-message-bytes (1 MiB by default), and escaping can grow it up to sixfold; anything
// beyond this is a broken parent, not a message.
const maxRequestBytes = 64 << 20

// topicEcho is the only topic a worker serves.
const topicEcho = "echo"

// Environment variables relayd sets for every worker.
const (
	envAttempt = "RELAY_ATTEMPT" // attempt number of the message, counted from 1
	envFaults  = "RELAY_FAULTS"  // "1" when fault directives are obeyed
)

// go-plugin's magic cookie for relayd's plugins (package relayd/sdk/plugin, which the stdio
// worker does not import; TestPluginCookie checks they agree). With it in the environment, the
// worker serves go-plugin instead of the stdio protocol.
const (
	pluginCookieKey   = "RELAYD_PLUGIN"
	pluginCookieValue = "7f3c9a2e5b1d4e08-relayd-worker"
)

// pluginExecutable is the worker built with go-plugin (build tag goplugin), installed beside
// the worker.
const pluginExecutable = "worker-plugin"

// exitStatus is an error that ends the worker with that exit status and no message. Fault
// directives use it to exit on purpose.
type exitStatus int

func (s exitStatus) Error() string { return "exit status " + strconv.Itoa(int(s)) }

// main stays thin. It installs no signal handler: SIGTERM keeps its default action because the
// worker holds nothing worth cleaning up, and the worker is forked once per message, so every
// bit of start-up work counts.
func main() {
	err := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Environ())
	var status exitStatus
	switch {
	case errors.As(err, &status):
		os.Exit(int(status))
	case cli.IsUsage(err):
		fmt.Fprintf(os.Stderr, "worker: %v\n%s\n", err, cli.Hint("worker"))
		os.Exit(cli.ExitUsage)
	case err != nil:
		fmt.Fprintf(os.Stderr, "worker: %v\n", err)
		os.Exit(1)
	}
}

// run is the whole worker below main. environ is the process environment as KEY=VALUE pairs.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer, environ []string) error {
	fs := pflag.NewFlagSet("worker", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	delay := fs.Duration("delay", 100*time.Millisecond, "time each request takes before its reply, as the tutorial's worker sleeps")
	showVersion := fs.Bool("version", false, "print the version and exit")
	showHelp := fs.BoolP("help", "h", false, "print this help and exit")
	// grandchild-sleep turns the process into the grandchild that the !fork directive starts.
	grandchildSleep := fs.Duration("grandchild-sleep", 0, "sleep this long and exit (used by the !fork fault directive)")
	if err := fs.MarkHidden("grandchild-sleep"); err != nil {
		return err
	}
	usage := func() {
		fmt.Fprintf(stdout, `Usage: worker [--delay D] [--help] [--version]

worker is relayd's echo worker, which relayd forks for every message. It writes a ready line
{"ready":true,"protocol":%d,"pid":PID} to stdout, then answers each request line on stdin,
{"id":"…","topic":"echo","data":"text"}, after --delay with {"id":"…","data":"TEXT"} (full
Unicode uppercase: "straße" becomes "STRASSE", "ﬁ" becomes "FI"), and
exits 0 at the end of stdin. Logs go to stderr as JSON.

With RELAY_FAULTS=1 in its environment, data starting with "!" can be a fault directive
(RELAY_ATTEMPT is the attempt number !flaky counts); other data starting with "!" is data:
%s
With relayd's go-plugin magic cookie in its environment (RELAYD_PLUGIN, set by relayd for a
service with transport "grpc" or "netrpc"), it serves the same as a go-plugin plugin instead,
over the transport RELAYD_PLUGIN_TRANSPORT names, by executing worker-plugin from its own
directory: the worker built with go-plugin, which would slow the start of every stdio worker.

Flags:
%s`, ipc.ProtocolVersion, directivesHelp(), cli.FlagUsages(fs, 0))
	}
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		return &cli.UsageError{Err: err}
	}
	if *showHelp {
		usage()
		return nil
	}
	if fs.NArg() > 0 {
		return cli.Usagef("unexpected argument %q", fs.Arg(0))
	}
	if *showVersion {
		_, err := io.WriteString(stdout, cli.Version("worker", version)+"\n")
		return err
	}
	if *grandchildSleep > 0 {
		time.Sleep(*grandchildSleep)
		return nil
	}

	w := &worker{
		stdout:  stdout,
		out:     bufio.NewWriter(stdout),
		stderr:  stderr,
		delay:   *delay,
		environ: environ,
		faults:  lookupEnv(environ, envFaults) == "1",
		attempt: 1,
	}
	if n, err := strconv.Atoi(lookupEnv(environ, envAttempt)); err == nil {
		w.attempt = n
	}
	if lookupEnv(environ, pluginCookieKey) == pluginCookieValue {
		return servePlugin(w, args)
	}
	return w.serve(stdin)
}

// lookupEnv returns the value of key in environ, or "" when it is absent. Like getenv(3), the
// first of duplicate entries wins.
func lookupEnv(environ []string, key string) string {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// worker answers requests. It is used by one goroutine.
type worker struct {
	stdout  io.Writer     // the raw stdout; !fork hands it to the grandchild when it is a file
	out     *bufio.Writer // buffered stdout, flushed after every line
	stderr  io.Writer
	delay   time.Duration
	environ []string
	faults  bool // fault directives are obeyed (RELAY_FAULTS=1)
	attempt int  // RELAY_ATTEMPT, 1 when unset
}

// logLine writes one log line to stderr in hclog's JSON format ("@level", "@message",
// "@module", "@timestamp", then the fields). The worker writes it itself rather than through
// hclog: the worker is forked once per message, and hclog's package initialisation and size
// cost a fifth of its start-up (measured with BenchmarkStart), for a line it rarely writes.
func (w *worker) logLine(level, msg string, args ...any) {
	entry := map[string]any{
		"@level":     level,
		"@message":   msg,
		"@module":    "worker",
		"@timestamp": time.Now().Format("2006-01-02T15:04:05.000000Z07:00"),
	}
	for i := 0; i+1 < len(args); i += 2 {
		if k, ok := args[i].(string); ok {
			entry[k] = args[i+1]
		}
	}
	b, err := json.Marshal(entry)
	if err != nil {
		return
	}
	w.stderr.Write(append(b, '\n'))
}

// serve writes the ready line, then answers request lines until stdin ends.
func (w *worker) serve(stdin io.Reader) error {
	if err := w.writeRaw(readyLine(os.Getpid())); err != nil {
		return err
	}
	warmUp()
	// A small buffer: the worker starts once per message, and most requests are short.
	lines := ipc.NewLineReaderSize(stdin, maxRequestBytes, 4<<10)
	for {
		line, err := lines.ReadLine()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading request: %w", err)
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if err := w.handle(line); err != nil {
			return err
		}
	}
}

// handle answers one request line. A line that is not a request at all is an error that ends
// the worker: it has no id to answer, and a parent that writes such lines is not speaking the
// protocol. A well-formed request that cannot be served gets an error reply.
func (w *worker) handle(line []byte) error {
	var req ipc.WorkerRequest
	if err := json.Unmarshal(line, &req); err != nil {
		return fmt.Errorf("decoding request: %w", err)
	}
	if req.Topic != topicEcho {
		return w.replyCode(req.ID, ipc.CodeUnknownTopic, "unknown topic "+strconv.Quote(req.Topic)+" (the echo worker has one topic: echo)")
	}
	// json.Unmarshal would take null for an empty string, so look at the value itself.
	var text string
	if len(req.Data) == 0 || req.Data[0] != '"' || json.Unmarshal(req.Data, &text) != nil {
		return w.replyCode(req.ID, ipc.CodeBadRequest, "data of topic echo must be a JSON string")
	}

	// The delay stands for the work, so it comes before fault directives too.
	if w.delay > 0 {
		time.Sleep(w.delay)
	}
	if w.faults && strings.HasPrefix(text, "!") {
		if handled, err := w.fault(req.ID, text); handled {
			return err
		}
	}
	return w.replyText(req.ID, casemap.Upper(text))
}

// replyText answers request id with text as its data.
func (w *worker) replyText(id, text string) error {
	data, err := marshal(text)
	if err != nil {
		return fmt.Errorf("encoding reply: %w", err)
	}
	return w.writeLine(ipc.WorkerReply{ID: id, Data: data})
}

// marshal is json.Marshal without HTML escaping: json.Marshal writes each of < > & as a
// six-byte \u escape, so an answer of such text would be up to six times its request, and
// relayd bounds answers in bytes.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// replyError answers request id with an error of no particular code (worker_error).
func (w *worker) replyError(id, msg string) error {
	return w.replyCode(id, "", msg)
}

// replyCode answers request id with an error with a code.
func (w *worker) replyCode(id, code, msg string) error {
	return w.writeLine(ipc.WorkerReply{ID: id, Error: &ipc.WorkerError{Code: code, Message: msg}})
}

// writeLine writes v as one JSON line to stdout and flushes it.
// warmUp decodes and encodes a request and a reply once, so that the code doing it is paged
// in and its reflection caches are built before a request arrives. A spare worker — started
// ahead of its message — thus pays this before its message, not during it; a worker started
// for a message pays it once either way.
func warmUp() {
	var req ipc.WorkerRequest
	if json.Unmarshal([]byte(`{"id":"0","topic":"echo","data":"warm"}`), &req) == nil {
		data, _ := json.Marshal(casemap.Upper("warm"))
		json.Marshal(ipc.WorkerReply{ID: req.ID, Data: data})
	}
}

// readyLine is the worker's first line, {"ready":true,"protocol":1,"pid":PID}. It is built by
// hand: the ready line is on every message's critical path, and encoding it with
// encoding/json is the first use of reflection, which costs a tenth of the worker's start
// (measured with perf stat: page faults and task clock). TestReadyLine checks it matches
// json.Marshal of ipc.Ready.
func readyLine(pid int) []byte {
	b := append([]byte(`{"ready":true,"protocol":`), strconv.Itoa(ipc.ProtocolVersion)...)
	b = append(append(b, `,"pid":`...), strconv.Itoa(pid)...)
	return append(b, "}\n"...)
}

// writeRaw writes a complete line and flushes it.
func (w *worker) writeRaw(line []byte) error {
	if _, err := w.out.Write(line); err != nil {
		return fmt.Errorf("writing stdout: %w", err)
	}
	if err := w.out.Flush(); err != nil {
		return fmt.Errorf("writing stdout: %w", err)
	}
	return nil
}

func (w *worker) writeLine(v any) error {
	b, err := marshal(v)
	if err != nil {
		return fmt.Errorf("encoding line: %w", err)
	}
	b = append(b, '\n')
	if _, err := w.out.Write(b); err != nil {
		return fmt.Errorf("writing stdout: %w", err)
	}
	if err := w.out.Flush(); err != nil {
		return fmt.Errorf("writing stdout: %w", err)
	}
	return nil
}
