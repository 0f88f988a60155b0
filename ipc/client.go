package ipc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// Error codes carried by error replies. They are part of the wire contract: append only.
const (
	CodeBadRequest   = "bad_request"
	CodeTooLarge     = "too_large"
	CodeUnknownName  = "unknown_name"
	CodeUnknownTopic = "unknown_topic"
	CodeBusy         = "busy"
	CodeTimeout      = "timeout"
	CodeWorkerFailed = "worker_failed"
	CodeUnavailable  = "unavailable"
	CodeShuttingDown = "shutting_down"
	CodeForbidden    = "forbidden"
	CodeInternal     = "internal"
	// CodeWorkerError is a worker's own error reply: a handled refusal, never retried.
	CodeWorkerError = "worker_error"
)

// TopicError is the topic of every failure reply.
const TopicError = "error"

// MaxIDBytes bounds the encoded size of a request id.
const MaxIDBytes = 128

// Request is one client frame: {"id":1,"to":"relay","topic":"echo","data":"hello"}.
type Request struct {
	// ID is echoed back verbatim; it is a JSON number or string, or empty.
	ID    json.RawMessage `json:"id,omitempty"`
	To    string          `json:"to"`
	Topic string          `json:"topic"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// WorkerRef names the worker process that produced a reply.
type WorkerRef struct {
	Host string `json:"host"`
	PID  int    `json:"pid"`
	// Node names the relayd node that ran the worker, in answers that came through NATS.
	Node string `json:"node,omitempty"`
	// Attempt is the attempt that answered, counted from 1.
	Attempt int `json:"attempt,omitempty"`
	// Usage is what the message cost the worker.
	Usage *Usage `json:"usage,omitempty"`
}

// Usage is what one message cost its worker, as a Lambda REPORT line gives it: the time from
// the request to the reply, the worker's CPU time for it (since its start for a fresh worker)
// and its peak resident memory so far.
type Usage struct {
	WallUS    int64 `json:"wall_us"`
	CPUUS     int64 `json:"cpu_us"`
	MaxRSSKiB int64 `json:"max_rss_kib"`
}

// Reply is one answer frame. Exactly one of Data (with Topic "<topic>_response") or Error (with
// Topic "error") is set.
type Reply struct {
	ID     json.RawMessage `json:"id,omitempty"`
	Topic  string          `json:"topic"`
	Data   json.RawMessage `json:"data,omitempty"`
	Worker *WorkerRef      `json:"worker,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Error is the body of an error reply, with one of the stable Code* values.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// WorkerCode is the worker's own code of a worker_error, when it gave one.
	WorkerCode string `json:"worker_code,omitempty"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns an *Error with the given code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ResponseTopic is the topic of a successful reply to a request on topic.
func ResponseTopic(topic string) string { return topic + "_response" }

// ErrorReply builds the error frame answering a request with the given id.
func ErrorReply(id json.RawMessage, err *Error) Reply {
	return Reply{ID: id, Topic: TopicError, Error: err}
}

// rawRequest defers typing every field so that a request with a bad field still yields its id.
type rawRequest struct {
	ID    json.RawMessage `json:"id"`
	To    json.RawMessage `json:"to"`
	Topic json.RawMessage `json:"topic"`
	Data  json.RawMessage `json:"data"`
}

// DecodeRequest parses and validates one request line (without its newline). On failure it
// returns a bad_request *Error and, when it could be read, the request's id so the error can
// carry it.
//
// A request must be valid UTF-8 throughout (RFC 8259 section 8.1): encoding/json would pass
// invalid bytes of an id through verbatim, making the answer invalid JSON, and replace those
// of a string with U+FFFD, changing the data without a word. Such a request is bad_request,
// and its id is returned only if the id itself is valid, so invalid bytes are never echoed.
func DecodeRequest(line []byte) (Request, *Error) {
	var raw rawRequest
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return Request{}, Errorf(CodeBadRequest, "request is not a JSON object")
	}
	if err := json.Unmarshal(line, &raw); err != nil {
		return Request{}, Errorf(CodeBadRequest, "request is not valid JSON: %v", err)
	}
	req := Request{Data: raw.Data}
	if id := raw.ID; len(id) > 0 && !bytes.Equal(id, []byte("null")) {
		switch {
		case len(id) > MaxIDBytes:
			return req, Errorf(CodeBadRequest, "id is longer than %d bytes", MaxIDBytes)
		case !utf8.Valid(id):
			return req, Errorf(CodeBadRequest, "request is not valid UTF-8 (in its id)")
		case id[0] == '"' || id[0] == '-' || (id[0] >= '0' && id[0] <= '9'):
			req.ID = id
		default:
			return req, Errorf(CodeBadRequest, "id must be a number or a string")
		}
	}
	if !utf8.Valid(line) {
		return req, Errorf(CodeBadRequest, "request is not valid UTF-8 (RFC 8259 section 8.1)")
	}
	var err *Error
	if req.To, err = stringField("to", raw.To); err != nil {
		return req, err
	}
	if req.Topic, err = stringField("topic", raw.Topic); err != nil {
		return req, err
	}
	return req, nil
}

func stringField(name string, v json.RawMessage) (string, *Error) {
	if len(v) == 0 || bytes.Equal(v, []byte("null")) {
		return "", Errorf(CodeBadRequest, "missing field %q", name)
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", Errorf(CodeBadRequest, "field %q must be a string", name)
	}
	if s == "" {
		return "", Errorf(CodeBadRequest, "field %q is empty", name)
	}
	return s, nil
}

// AppendFrame appends v as one JSON line to b. HTML characters are not escaped, so an id comes
// back exactly as it was sent.
func AppendFrame(b []byte, v any) ([]byte, error) {
	buf := bytes.NewBuffer(b)
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return b, err
	}
	return buf.Bytes(), nil
}

// SniffID returns the id of a request from the start of its line when "id" is the line's first
// key, as it is in frames written by echo and by most encoders. It lets an answer to a line
// that is too large to read whole still name its request; nil when the id cannot be seen.
func SniffID(head []byte) json.RawMessage {
	dec := json.NewDecoder(bytes.NewReader(head))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	if t, err := dec.Token(); err != nil || t != "id" {
		return nil
	}
	start := dec.InputOffset()
	switch t, err := dec.Token(); t.(type) {
	case json.Number, string:
		if err != nil {
			return nil
		}
		raw := bytes.TrimLeft(head[start:dec.InputOffset()], " \t\r\n:")
		if len(raw) == 0 || len(raw) > MaxIDBytes || !json.Valid(raw) || !utf8.Valid(raw) {
			return nil
		}
		// A number cut off by the end of head could be longer: require what follows it.
		if rest := bytes.TrimLeft(head[dec.InputOffset():], " \t\r\n"); len(rest) == 0 {
			return nil
		}
		return bytes.Clone(raw)
	}
	return nil
}
