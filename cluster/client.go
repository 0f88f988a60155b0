package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"

	"relayd/ipc"
)

// ClientOptions configure a Client.
type ClientOptions struct {
	ConnOptions
	// Durable sends requests through the durable stream instead of core request-reply.
	Durable bool
}

// Client sends requests to relayd nodes over NATS and matches their answers, with the same
// calls as ipc.Client: many requests may be in flight, each answered at most once. In durable
// mode a request may be answered twice (a node died after answering, before acking); the
// second answer is dropped and counted.
type Client struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	durable bool
	inbox   string // answers come to inbox.N for request N
	idBase  string // durable request ids are idBase.N
	sub     *nats.Subscription
	done    chan struct{}
	dups    atomic.Int64

	mu    sync.Mutex
	seq   int64
	calls map[int64]*pending // guarded by mu
}

type pending struct {
	call *ipc.Call
	to   string
	ch   chan ipc.Answer // holds the answer until Wait takes it
	// answered is set by the first answer; later ones are dropped. Guarded by Client.mu.
	answered bool
}

// Dial connects to NATS.
func Dial(ctx context.Context, o ClientOptions) (*Client, error) {
	if o.Name == "" {
		o.Name = "relay-echo"
	}
	c := &Client{durable: o.Durable, done: make(chan struct{}), calls: map[int64]*pending{}}
	type result struct {
		nc  *nats.Conn
		err error
	}
	res := make(chan result, 1)
	go func() {
		nc, err := connect(o.ConnOptions, nil, nats.MaxReconnects(60), nats.ClosedHandler(func(*nats.Conn) { close(c.done) }))
		res <- result{nc, err}
	}()
	var r result
	select {
	case r = <-res:
	case <-ctx.Done():
		go func() {
			if r := <-res; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, ctx.Err()
	}
	if r.err != nil {
		return nil, r.err
	}
	c.nc = r.nc
	c.inbox = nats.NewInbox()
	c.idBase = nuid.Next()
	sub, err := c.nc.Subscribe(c.inbox+".*", c.receive)
	if err != nil {
		c.nc.Close()
		return nil, fmt.Errorf("subscribing to answers: %w", err)
	}
	c.sub = sub
	if o.Durable {
		if c.js, err = jetstream.New(c.nc); err != nil {
			c.nc.Close()
			return nil, fmt.Errorf("opening JetStream: %w", err)
		}
	}
	return c, nil
}

// Send sends one request. Its answer comes through Wait. A name or topic that cannot be a
// subject token is answered bad_request without being sent.
func (c *Client) Send(to, topic string, data any) (*ipc.Call, error) {
	var payload []byte
	if data != nil {
		var err error
		if payload, err = json.Marshal(data); err != nil {
			return nil, fmt.Errorf("encoding data: %w", err)
		}
	}
	c.mu.Lock()
	c.seq++
	n := c.seq
	p := &pending{call: &ipc.Call{ID: n, Sent: time.Now()}, to: to, ch: make(chan ipc.Answer, 1)}
	c.calls[n] = p
	c.mu.Unlock()

	if !validToken(to) || !validToken(topic) {
		c.answer(n, errorAnswer(ipc.Errorf(ipc.CodeBadRequest, "name and topic must be letters, digits, - and _ to travel on NATS; got %q, %q", to, topic)))
		return p.call, nil
	}
	reply := c.inbox + "." + strconv.FormatInt(n, 10)
	if !c.durable {
		if err := c.nc.PublishMsg(&nats.Msg{Subject: SubjectPrefix + "." + to + "." + topic, Reply: reply, Data: payload}); err != nil {
			c.Forget(p.call)
			return nil, err
		}
		return p.call, nil
	}
	msg := nats.NewMsg(DurablePrefix + "." + to + "." + topic)
	msg.Data = payload
	msg.Header.Set(HeaderReply, reply)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.js.PublishMsg(ctx, msg, jetstream.WithMsgID(c.idBase+"."+strconv.FormatInt(n, 10)))
	switch {
	case errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse):
		c.answer(n, errorAnswer(ipc.Errorf(ipc.CodeUnavailable, "no durable request stream on NATS: no relayd node runs with --nats-durable")))
	case err != nil:
		c.Forget(p.call)
		return nil, fmt.Errorf("publishing durable request: %w", err)
	}
	return p.call, nil
}

func errorAnswer(e *ipc.Error) ipc.Answer {
	r := ipc.ErrorReply(nil, e)
	raw, _ := ipc.AppendFrame(nil, r)
	return ipc.Answer{Reply: r, Raw: raw[:len(raw)-1]}
}

// receive matches an answer to its request; a second answer to one request is dropped.
func (c *Client) receive(m *nats.Msg) {
	n, err := strconv.ParseInt(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:], 10, 64)
	if err != nil {
		return
	}
	c.mu.Lock()
	p := c.calls[n]
	c.mu.Unlock()
	if p == nil {
		c.dups.Add(1)
		return
	}
	var a ipc.Answer
	switch {
	case m.Header.Get("Status") == "503":
		a = errorAnswer(ipc.Errorf(ipc.CodeUnavailable, "no relayd node serves %q on NATS", p.to))
	default:
		if err := json.Unmarshal(m.Data, &a.Reply); err != nil || a.Topic == "" {
			code, desc := m.Header.Get(HeaderErrorCode), m.Header.Get(HeaderError)
			if code == "" {
				code, desc = ipc.CodeInternal, fmt.Sprintf("answer is not a relayd frame: %q", truncate(m.Data, 200))
			}
			a = errorAnswer(ipc.Errorf(code, "%s", desc))
		} else {
			a.Raw = m.Data
		}
	}
	c.answer(n, a)
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}

// answer hands a to request n's waiter, unless n has its answer already or was forgotten.
func (c *Client) answer(n int64, a ipc.Answer) {
	c.mu.Lock()
	p := c.calls[n]
	first := p != nil && !p.answered
	if first {
		p.answered = true
	}
	c.mu.Unlock()
	if !first {
		c.dups.Add(1)
		return
	}
	p.ch <- a
}

// Wait waits for call's answer until ctx ends. After a timeout the call may be waited for again
// or forgotten.
func (c *Client) Wait(ctx context.Context, call *ipc.Call) (ipc.Answer, error) {
	c.mu.Lock()
	p := c.calls[call.ID]
	c.mu.Unlock()
	if p == nil {
		return ipc.Answer{}, fmt.Errorf("request %d: %w", call.ID, ipc.ErrClosed)
	}
	select {
	case a := <-p.ch:
		c.Forget(call)
		return a, nil
	case <-ctx.Done():
		return ipc.Answer{}, ctx.Err()
	case <-c.done:
		select {
		case a := <-p.ch:
			c.Forget(call)
			return a, nil
		default:
		}
		return ipc.Answer{}, ipc.ErrClosed
	}
}

// Forget drops a call whose answer is no longer wanted.
func (c *Client) Forget(call *ipc.Call) {
	c.mu.Lock()
	delete(c.calls, call.ID)
	c.mu.Unlock()
}

// Duplicates counts answers dropped because their request was answered already.
func (c *Client) Duplicates() int64 { return c.dups.Load() }

// Done is closed when the connection has closed for good.
func (c *Client) Done() <-chan struct{} { return c.done }

// CloseWrite does nothing: NATS has no half-close, and each answer comes on its own.
func (c *Client) CloseWrite() error { return nil }

// Close closes the connection.
func (c *Client) Close() error {
	c.nc.Close()
	<-c.done
	return nil
}

// Conn is the client's NATS connection.
func (c *Client) Conn() *nats.Conn { return c.nc }

// NodeStats is one node's report for one name, from micro's $SRV.STATS discovery.
type NodeStats struct {
	// ID is the micro service instance's id; Node the relayd node's name.
	ID   string
	Node string
	// Micro is micro's own endpoint stats; Data relayd's counts, with the relay's status.
	Micro micro.EndpointStats
	Data  EndpointData
}

// gatherQuiet ends collecting pings once no node answered for this long after the first did:
// micro answers a ping itself, within a round trip.
const gatherQuiet = 300 * time.Millisecond

// Gather asks every node serving name for its stats through micro's discovery and returns them
// sorted by node. It pings first to learn which nodes there are (micro answers pings at once),
// then waits for each one's stats, which go through its relay, until wait has passed.
func (c *Client) Gather(ctx context.Context, name string, wait time.Duration) ([]NodeStats, error) {
	if !validToken(name) {
		return nil, fmt.Errorf("name %q cannot travel on NATS", name)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	ids := map[string]bool{}
	err := c.discover(ctx, micro.PingVerb, name, func(data []byte) bool {
		var p micro.Ping
		if json.Unmarshal(data, &p) == nil && p.ID != "" {
			ids[p.ID] = true
		}
		return false
	})
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	var out []NodeStats
	err = c.discover(ctx, micro.StatsVerb, name, func(data []byte) bool {
		var st micro.Stats
		if json.Unmarshal(data, &st) != nil || !ids[st.ID] {
			return false
		}
		delete(ids, st.ID)
		ns := NodeStats{ID: st.ID, Node: st.Metadata["node"]}
		for _, e := range st.Endpoints {
			if e != nil && e.Name == "messages" {
				ns.Micro = *e
				json.Unmarshal(e.Data, &ns.Data)
			}
		}
		out = append(out, ns)
		return len(ids) == 0
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b NodeStats) int { return strings.Compare(a.Node+a.ID, b.Node+b.ID) })
	return out, nil
}

// discover sends a discovery request ($SRV.VERB.NAME) and hands each answer to take until take
// says it has all, ctx ends, or, once some answered, none did for gatherQuiet (for pings) —
// stats wait for every node take expects until ctx ends. No responders is no answer.
func (c *Client) discover(ctx context.Context, verb micro.Verb, name string, take func([]byte) bool) error {
	subject, err := micro.ControlSubject(verb, name, "")
	if err != nil {
		return err
	}
	inbox := nats.NewInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if err := c.nc.PublishRequest(subject, inbox, nil); err != nil {
		return err
	}
	answered := false
	for {
		next, cancel := ctx, context.CancelFunc(func() {})
		if answered && verb == micro.PingVerb {
			next, cancel = context.WithTimeout(ctx, gatherQuiet)
		}
		m, err := sub.NextMsgWithContext(next)
		cancel()
		if err != nil || m.Header.Get("Status") == "503" {
			return nil
		}
		answered = true
		if take(m.Data) {
			return nil
		}
	}
}
