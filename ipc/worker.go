package ipc

import "encoding/json"

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
	Error string          `json:"error,omitempty"`
}
