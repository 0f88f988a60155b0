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
	"relayd/sdk"
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

	// The answer a fault directive gave the current request, for answer to return.
	answerData json.RawMessage
	answerErr  error
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

// serve answers requests on stdin with the worker SDK until stdin ends.
func (w *worker) serve(stdin io.Reader) error {
	return (&sdk.Worker{
		Handler:         w.answer,
		In:              stdin,
		Out:             w.stdout,
		Attempt:         w.attempt,
		MaxRequestBytes: maxRequestBytes,
		OnReady:         warmUp,
	}).Serve()
}

// answer answers one request: the data uppercased, after --delay. Data that is not a string is
// bad_request, a topic other than echo unknown_topic; a fault directive may answer otherwise,
// or end the worker (sdk.Stop).
func (w *worker) answer(req *sdk.Request) (json.RawMessage, error) {
	w.answerData, w.answerErr = nil, nil
	if req.Topic != topicEcho {
		return nil, sdk.Errorf(sdk.CodeUnknownTopic, "unknown topic %q (the echo worker has one topic: echo)", req.Topic)
	}
	// json.Unmarshal would take null for an empty string, so look at the value itself.
	var text string
	if len(req.Data) == 0 || req.Data[0] != '"' || json.Unmarshal(req.Data, &text) != nil {
		return nil, sdk.Errorf(sdk.CodeBadRequest, "data of topic echo must be a JSON string")
	}

	// The delay stands for the work, so it comes before fault directives too.
	if w.delay > 0 {
		time.Sleep(w.delay)
	}
	if w.faults && strings.HasPrefix(text, "!") {
		if handled, err := w.fault(req.ID, text); handled {
			if err != nil {
				return nil, sdk.Stop(err)
			}
			return w.answerData, w.answerErr
		}
	}
	return marshal(casemap.Upper(text))
}

// replyText makes text the answer to the current request (id is the request's; a fault
// directive answers the request it came in).
func (w *worker) replyText(id, text string) error {
	data, err := marshal(text)
	if err != nil {
		return fmt.Errorf("encoding reply: %w", err)
	}
	w.answerData, w.answerErr = data, nil
	return nil
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

// replyError makes an error of no particular code (worker_error) the answer to the current
// request.
func (w *worker) replyError(id, msg string) error {
	return w.replyCode(id, "", msg)
}

// replyCode makes an error with a code the answer to the current request.
func (w *worker) replyCode(id, code, msg string) error {
	w.answerData, w.answerErr = nil, &sdk.Error{Code: code, Message: msg}
	return nil
}

// warmUp decodes and encodes a request and a reply once, so that the code doing it is paged
// in and its reflection caches are built before a request arrives. A spare worker — started
// ahead of its message — thus pays this before its message, not during it; a worker started
// for a message pays it once either way.
func warmUp() {
	var req sdk.Request
	if json.Unmarshal([]byte(`{"id":"0","topic":"echo","data":"warm"}`), &req) == nil {
		data, _ := marshal(casemap.Upper("warm"))
		marshal(struct {
			ID   string          `json:"id"`
			Data json.RawMessage `json:"data"`
		}{req.ID, data})
	}
}
