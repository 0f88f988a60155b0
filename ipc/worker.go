package ipc

import (
	"bytes"
	"encoding/json"
	"errors"
)

// ProtocolVersion is the worker protocol version relayd speaks; a worker's ready line must carry it.
const ProtocolVersion = 1

// Ready is the first line a worker writes: {"ready":true,"protocol":1,"pid":48213}.
type Ready struct {
	Ready    bool `json:"ready"`
	Protocol int  `json:"protocol"`
	PID      int  `json:"pid"`
}

// WorkerRequest is one line relayd writes to a worker's stdin.
type WorkerRequest struct {
	ID    string          `json:"id"`
	Topic string          `json:"topic"`
	Data  json.RawMessage `json:"data"`
}

// WorkerReply is a worker's answer to one WorkerRequest: Data on success, Error otherwise.
type WorkerReply struct {
	ID    string          `json:"id"`
	Data  json.RawMessage `json:"data,omitempty"`
	Error *WorkerError    `json:"error,omitempty"`
}

// WorkerError is a worker's error reply. On the wire it is either a string, the message alone,
// or an object {"code":"bad_request","message":"…"}; it is always written as the object.
type WorkerError struct {
	Code    string `json:"code,omitempty"`
	Message string `json:"message"`
}

// UnmarshalJSON reads either form of a worker's error.
func (e *WorkerError) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		*e = WorkerError{}
		return json.Unmarshal(b, &e.Message)
	}
	type plain WorkerError
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return errors.New("error must be a string or an object {\"code\":…,\"message\":…}")
	}
	*e = WorkerError(p)
	return nil
}
