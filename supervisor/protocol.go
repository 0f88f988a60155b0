package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"

	"relayd/ipc"
)

// ErrNoReply reports a worker that exited 0 without answering its request.
var ErrNoReply = errors.New("exited without a reply")

// owed is the frame a worker owes next, which decides how its next frame is read.
type owed uint8

const (
	owesReady   owed = iota // its ready line
	owesReply               // the reply to the job it has
	owesNothing             // nothing: it is idle, or it answered its last job
)

// decodeFrame reads a frame from a worker that owes want, for the job with id wantID. It is a
// pure function: the worker's state machine turns its result into an event. An error is a
// protocol error and its text says what was wrong.
func decodeFrame(f Frame, want owed, wantID string) (ipc.Ready, ipc.WorkerReply, error) {
	switch want {
	case owesReady:
		r, err := decodeReady(f)
		return r, ipc.WorkerReply{}, err
	case owesReply:
		r, err := decodeReply(f, wantID)
		return ipc.Ready{}, r, err
	}
	return ipc.Ready{}, ipc.WorkerReply{}, fmt.Errorf("unexpected line: %q", frameText(f))
}

// decodeReady checks a worker's first frame: a ready line of the protocol version relayd speaks.
func decodeReady(f Frame) (ipc.Ready, error) {
	var r ipc.Ready
	switch {
	case f.Ready != nil:
		r = *f.Ready
	case f.Line == nil || json.Unmarshal(f.Line, &r) != nil:
		return r, fmt.Errorf("want a ready line, got %q", frameText(f))
	}
	if !r.Ready {
		return r, fmt.Errorf("want a ready line, got %q", frameText(f))
	}
	if r.Protocol != ipc.ProtocolVersion {
		return r, fmt.Errorf("worker speaks protocol %d, want %d", r.Protocol, ipc.ProtocolVersion)
	}
	return r, nil
}

// decodeReply checks a reply to the request with id wantID.
func decodeReply(f Frame, wantID string) (ipc.WorkerReply, error) {
	var r ipc.WorkerReply
	switch {
	case f.Reply != nil:
		r = *f.Reply
	case f.Line == nil || json.Unmarshal(f.Line, &r) != nil:
		return r, fmt.Errorf("want a reply line, got %q", frameText(f))
	}
	if r.ID != wantID {
		return r, fmt.Errorf("reply for id %q, want %q", r.ID, wantID)
	}
	return r, nil
}

// frameText is a frame as a short text for an error message.
func frameText(f Frame) string {
	switch {
	case f.Line != nil:
		return clip(f.Line, 80)
	case f.Ready != nil:
		return fmt.Sprintf("%+v", *f.Ready)
	case f.Reply != nil:
		return fmt.Sprintf("reply for id %q", f.Reply.ID)
	}
	return ""
}

func clip(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}
