// Package sdk writes relayd workers in Go: a Handler in, a worker out.
//
// A worker is a program relayd starts for a service's messages (one process per message by
// default). It speaks the worker protocol of docs/PROTOCOL.md on its standard input and
// output: a ready line first, then one reply line per request line, until its standard input
// ends, when it exits 0. Serve does all of that around a Handler, which answers one message:
//
//	func main() {
//		sdk.Run(func(req *sdk.Request) (json.RawMessage, error) {
//			var name string
//			if err := req.Decode(&name); err != nil {
//				return nil, err // bad_request, with the reason
//			}
//			return sdk.JSON("hello, " + name)
//		})
//	}
//
// A Handler's *Error reaches the client with its code (bad_request and unknown_topic as they
// are, any other as worker_error with the code in error.worker_code); any other error reaches
// it as worker_error with the error's text. Neither is retried: a worker that answers has not
// crashed. To end the worker without an answer (relayd then counts a crash, and may retry the
// message on a fresh worker), return Stop(err), exit, or panic.
//
// The package is small on purpose: a worker is forked per message, and its start is on every
// message's path, so it imports nothing but the standard library's JSON, I/O and strconv.
package sdk

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
)

// ProtocolVersion is the version of the worker protocol this package speaks, which the ready
// line carries.
const ProtocolVersion = 1

// Error codes a worker may answer with that reach the client as they are. Any other code
// reaches it as worker_error, with the code in error.worker_code.
const (
	CodeBadRequest   = "bad_request"
	CodeUnknownTopic = "unknown_topic"
)

// DefaultMaxRequestBytes bounds one request line unless Worker.MaxRequestBytes says otherwise.
// relayd bounds a client's message at 1 MiB by default; escaping can grow it up to sixfold.
const DefaultMaxRequestBytes = 64 << 20

// Request is one message for the worker.
type Request struct {
	// ID is relayd's id for the request; Serve puts it on the reply.
	ID string `json:"id"`
	// Topic is the client's topic (any but stats and status, which relayd answers itself).
	Topic string `json:"topic"`
	// Data is the client's data, one JSON value exactly as it was sent (null when none).
	Data json.RawMessage `json:"data"`
	// Attempt is the message's attempt, counted from 1: relayd retries a message whose
	// worker crashed on a fresh worker.
	Attempt int `json:"-"`
}

// Decode decodes the request's data into v, which must be a pointer. A value that does not fit
// v is a bad_request *Error saying why; so is null, unless v can hold it (a pointer, a map, a
// slice, an interface).
func (r *Request) Decode(v any) error {
	data := bytes.TrimSpace(r.Data)
	if len(data) == 0 || bytes.Equal(data, []byte("null")) {
		if !nullable(v) {
			return Errorf(CodeBadRequest, "topic %s wants data, got none", r.Topic)
		}
	}
	if err := json.Unmarshal(r.Data, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return Errorf(CodeBadRequest, "data of topic %s must be %s, not %s", r.Topic, kind(te.Type.Kind().String()), te.Value)
		}
		return Errorf(CodeBadRequest, "data of topic %s: %v", r.Topic, err)
	}
	return nil
}

func nullable(v any) bool {
	switch v.(type) {
	case *string, *bool, *int, *int64, *float64, *uint, *uint64:
		return false
	}
	return true
}

func kind(k string) string {
	switch k {
	case "string":
		return "a string"
	case "struct", "map":
		return "an object"
	case "slice", "array":
		return "an array"
	case "bool":
		return "true or false"
	}
	return "a number"
}

// Handler answers one request with data (one JSON value; nil means null) or an error.
type Handler func(req *Request) (json.RawMessage, error)

// Error is a worker's handled refusal, answered with a code.
type Error struct {
	Code    string `json:"code,omitempty"`
	Message string `json:"message"`
}

func (e *Error) Error() string {
	if e.Code == "" {
		return e.Message
	}
	return e.Code + ": " + e.Message
}

// Errorf returns an *Error with code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// stop wraps the error a Handler ends the worker with.
type stop struct{ err error }

func (s *stop) Error() string { return s.err.Error() }
func (s *stop) Unwrap() error { return s.err }

// Stop wraps err so that a Handler returning it ends the worker at once, without an answer:
// Serve returns err. relayd treats the message as a crash (and may retry it).
func Stop(err error) error { return &stop{err: err} }

// JSON encodes v as one JSON value, without escaping <, > and & (which would make an answer up
// to six times longer than its text).
func JSON(v any) (json.RawMessage, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Worker serves the worker protocol around a Handler. The zero values of its fields are the
// defaults for a worker that relayd starts.
type Worker struct {
	Handler Handler
	// In and Out are where requests come from and replies go: os.Stdin and os.Stdout when nil.
	// Nothing but protocol lines may be written to Out; logs go to standard error.
	In  io.Reader
	Out io.Writer
	// PID is the pid on the ready line: os.Getpid() when 0.
	PID int
	// Attempt is the attempt of the messages: RELAY_ATTEMPT from the environment when 0.
	Attempt int
	// MaxRequestBytes bounds a request line; DefaultMaxRequestBytes when 0.
	MaxRequestBytes int
	// OnReady, if set, runs after the ready line is written and before the first request is
	// read: a worker started ahead of its message (a spare) thus pays for it before the message.
	OnReady func()
}

// Serve writes the ready line, then answers each request line with the Handler until In ends,
// and returns nil. It returns an error when In or Out fails, when a line is not a request, and
// when the Handler returns Stop(err) (then err).
func (w *Worker) Serve() error {
	in, out := w.In, w.Out
	if in == nil {
		in = os.Stdin
	}
	if out == nil {
		out = os.Stdout
	}
	pid := w.PID
	if pid == 0 {
		pid = os.Getpid()
	}
	attempt := w.Attempt
	if attempt == 0 {
		attempt = 1
		if n, err := strconv.Atoi(os.Getenv("RELAY_ATTEMPT")); err == nil && n > 0 {
			attempt = n
		}
	}
	max := w.MaxRequestBytes
	if max <= 0 {
		max = DefaultMaxRequestBytes
	}
	// The ready line is built by hand: it is on every message's path, and encoding/json's
	// first use (reflection) costs a tenth of a small Go worker's start.
	ready := append([]byte(`{"ready":true,"protocol":`), strconv.Itoa(ProtocolVersion)...)
	ready = append(append(ready, `,"pid":`...), strconv.Itoa(pid)...)
	if _, err := out.Write(append(ready, "}\n"...)); err != nil {
		return fmt.Errorf("writing ready line: %w", err)
	}
	if w.OnReady != nil {
		w.OnReady()
	}
	// A small buffer: most requests are short, and the worker starts once per message.
	r := bufio.NewReaderSize(in, 4<<10)
	var line []byte
	for {
		var err error
		line, err = readLine(r, line[:0], max)
		if errors.Is(err, io.EOF) && len(line) == 0 {
			return nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("reading request: %w", err)
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if err := w.answer(out, line, attempt); err != nil {
			return err
		}
	}
}

// errTooLong reports a request line over MaxRequestBytes.
var errTooLong = errors.New("request line too long")

// readLine appends the next line, without its newline, to buf.
func readLine(r *bufio.Reader, buf []byte, max int) ([]byte, error) {
	for {
		frag, err := r.ReadSlice('\n')
		buf = append(buf, frag...)
		if len(buf) > max+1 {
			return buf[:0], errTooLong
		}
		switch {
		case err == nil:
			return buf[:len(buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return buf, err
		}
	}
}

// answer handles one request line and writes its reply line.
func (w *Worker) answer(out io.Writer, line []byte, attempt int) error {
	req := Request{Attempt: attempt}
	if err := json.Unmarshal(line, &req); err != nil {
		// With no id to answer, the parent is not speaking the protocol.
		return fmt.Errorf("decoding request: %w", err)
	}
	if len(req.Data) == 0 {
		req.Data = json.RawMessage("null")
	}
	data, herr := w.Handler(&req)
	var s *stop
	if errors.As(herr, &s) {
		return s.err
	}
	reply := struct {
		ID    string          `json:"id"`
		Data  json.RawMessage `json:"data,omitempty"`
		Error *Error          `json:"error,omitempty"`
	}{ID: req.ID}
	switch {
	case herr != nil:
		var e *Error
		if !errors.As(herr, &e) {
			e = &Error{Message: herr.Error()}
		}
		reply.Error = e
	case len(data) == 0:
		reply.Data = json.RawMessage("null")
	case !json.Valid(data):
		reply.Error = &Error{Message: "the worker's answer is not one JSON value"}
	default:
		reply.Data = data
	}
	b, err := JSON(reply)
	if err != nil {
		return fmt.Errorf("encoding reply: %w", err)
	}
	if _, err := out.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("writing reply: %w", err)
	}
	return nil
}

// Run serves h on standard input and output and returns when standard input ends. On an error
// it prints it to standard error and exits 1.
func Run(h Handler) {
	if err := (&Worker{Handler: h}).Serve(); err != nil {
		fmt.Fprintf(os.Stderr, "worker: %v\n", err)
		os.Exit(1)
	}
}
