package relay

import (
	"encoding/json"
	"sync/atomic"
	"time"

	"relayd/ipc"
)

// Message is one accepted request. From the moment a connection accepts it until it is
// answered, someone owns it: the relay's queue, a worker's job, a retry timer, or shutdown.
// Answer may be called any number of times; only the first call is sent, so every accepted
// message gets exactly one answer.
type Message struct {
	Req      ipc.Request
	Accepted time.Time
	// Sender describes who sent it (for status views); it is the connection's name.
	Sender string

	seq        uint64    // relay-assigned, the worker request id
	attempts   int       // owned by the relay loop
	dispatched time.Time // owned by the relay loop; when its last attempt was handed to the host
	reply      func(ipc.Reply)
	answered   atomic.Bool
}

// NewMessage wraps a decoded request; reply is called once with its answer.
func NewMessage(req ipc.Request, sender string, reply func(ipc.Reply)) *Message {
	return &Message{Req: req, Accepted: time.Now(), Sender: sender, reply: reply}
}

// Answer sends r as the message's answer unless it was answered already, and reports whether
// it did.
func (m *Message) Answer(r ipc.Reply) bool {
	if !m.answered.CompareAndSwap(false, true) {
		return false
	}
	r.ID = m.Req.ID
	m.reply(r)
	return true
}

// Fail answers with an error.
func (m *Message) Fail(err *ipc.Error) bool { return m.Answer(ipc.ErrorReply(nil, err)) }

// Answered reports whether the message has its answer.
func (m *Message) Answered() bool { return m.answered.Load() }

// respond answers with data on the request's response topic.
func (m *Message) respond(data any, worker *ipc.WorkerRef) bool {
	raw, err := json.Marshal(data)
	if err != nil {
		return m.Fail(ipc.Errorf(ipc.CodeInternal, "encoding reply: %v", err))
	}
	return m.Answer(ipc.Reply{Topic: ipc.ResponseTopic(m.Req.Topic), Data: raw, Worker: worker})
}
