package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"relayd/ipc"
	"relayd/relay"
)

// Defaults of the node's options.
const (
	DefaultAckWait      = 5 * time.Second
	DefaultPendingLimit = 65536
	// streamMaxAge bounds how long a durable request waits in the stream for a node; a client
	// has long given up by then.
	streamMaxAge = time.Hour
	// dupWindow is how long JetStream remembers a message id to drop a second publish of it.
	dupWindow = 2 * time.Minute
)

// Options configure a Node.
type Options struct {
	ConnOptions
	// Node names this node in answers (the worker's "node" and the Relayd-Node header) and in
	// discovery's metadata.
	Node string
	// Version is relayd's version, as micro's discovery shows it (semantic versioning).
	Version string
	// Names lists the registered names; Sync serves each on NATS.
	Names func() []string
	// Lookup resolves a name to the inbox of its relay.
	Lookup func(name string) (chan<- *relay.Message, bool)
	// Observer, if set, is told of every answer sent on NATS, as the socket server tells it of
	// the socket's.
	Observer relay.Observer
	// PendingLimit bounds the core requests one subscription buffers before NATS reports a slow
	// consumer and drops more.
	PendingLimit int

	// Durable also serves durable requests from the JetStream work-queue stream.
	Durable bool
	// AckWait is how long JetStream waits for an ack before it redelivers to another node; a
	// node sends in-progress acks while a worker runs, so only a dead node's messages wait.
	AckWait time.Duration
	// MaxDeliver bounds how often one durable request is delivered (0: no bound).
	MaxDeliver int
	// Replicas is the stream's replica count when this node creates it.
	Replicas int
	// Slots bounds the durable requests this node holds at once.
	Slots int

	Logger hclog.Logger
}

// Node is one relayd's presence on NATS.
type Node struct {
	opts      Options
	log       hclog.Logger
	nc        *nats.Conn
	version   string
	closed    chan struct{} // closed by the connection's closed handler
	closeCh   chan struct{} // closed when Close begins
	closeOnce sync.Once

	mu       sync.Mutex
	services map[string]*service // guarded by mu
	skipped  map[string]bool     // names that cannot be subjects, warned about once; guarded by mu

	// gate orders hand-offs to relay inboxes before StopTaking: a handler holds it shared
	// while it sends, StopTaking takes it to set stopped, so no message reaches an inbox after.
	gate    sync.RWMutex
	stopped bool // guarded by gate

	// Durable mode.
	cons       jetstream.Consumer
	slots      chan struct{}
	stopPull   context.CancelFunc
	background sync.WaitGroup // the pull loop and the in-progress ticker
	heldMu     sync.Mutex
	held       map[*heldMsg]struct{} // guarded by heldMu
}

// service is one registered name served on NATS, with the counts discovery reports.
type service struct {
	name string
	svc  micro.Service

	answered atomic.Uint64
	inFlight atomic.Int64
	mu       sync.Mutex
	errors   map[string]uint64 // by code; guarded by mu
	last     string            // guarded by mu
	total    time.Duration     // guarded by mu
}

// EndpointData is what a node reports in micro's stats for one name, in the endpoint's "data".
// micro measures processing time around its handler, which only hands a request to the relay;
// these are the real counts, from the request's arrival to its answer.
type EndpointData struct {
	Node              string            `json:"node"`
	Durable           bool              `json:"durable"`
	Answered          uint64            `json:"answered"`
	Errors            uint64            `json:"errors"`
	ErrorsByCode      map[string]uint64 `json:"errors_by_code,omitempty"`
	LastError         string            `json:"last_error,omitempty"`
	InFlight          int64             `json:"in_flight"`
	AverageAnswerTime time.Duration     `json:"average_answer_time"`
	Status            *ipc.Status       `json:"status,omitempty"`
}

var semver = regexp.MustCompile(`^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// Start connects to NATS, prepares the durable stream if asked, and serves every registered
// name. Call StopTaking, then, once every message it handed over is answered, Close.
func Start(ctx context.Context, opts Options) (*Node, error) {
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.PendingLimit <= 0 {
		opts.PendingLimit = DefaultPendingLimit
	}
	if opts.AckWait <= 0 {
		opts.AckWait = DefaultAckWait
	}
	if opts.Slots <= 0 {
		opts.Slots = 1
	}
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	if opts.Name == "" {
		opts.Name = "relayd " + opts.Node
	}
	n := &Node{
		opts: opts, log: opts.Logger.Named("nats"), version: strings.TrimPrefix(opts.Version, "v"),
		closed: make(chan struct{}), closeCh: make(chan struct{}), services: map[string]*service{}, skipped: map[string]bool{},
		held: map[*heldMsg]struct{}{},
	}
	if !semver.MatchString(n.version) {
		n.version = "0.0.0-" + sanitize(n.version)
	}
	nc, err := connect(opts.ConnOptions, n.log, nats.ClosedHandler(func(*nats.Conn) { close(n.closed) }), nats.DrainTimeout(2*time.Second))
	if err != nil {
		return nil, err
	}
	n.nc = nc
	if opts.Durable {
		if err := n.startDurable(ctx); err != nil {
			nc.Close()
			return nil, err
		}
	}
	n.Sync()
	// A round trip makes sure the server has every subscription before relayd says it serves.
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		n.log.Warn("nats: flushing subscriptions", "error", err)
	}
	n.log.Info("serving on NATS", "server", nc.ConnectedUrlRedacted(), "node", opts.Node, "durable", opts.Durable)
	return n, nil
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "devel"
	}
	return b.String()
}

// Sync serves every registered name on NATS and stops serving names no longer registered.
// relayd calls it at start and after a reload.
func (n *Node) Sync() {
	names := n.opts.Names()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.gate.RLock()
	stopped := n.stopped
	n.gate.RUnlock()
	if stopped {
		return
	}
	want := map[string]bool{}
	for _, name := range names {
		want[name] = true
		if _, ok := n.services[name]; ok {
			continue
		}
		if !validToken(name) {
			if !n.skipped[name] {
				n.skipped[name] = true
				n.log.Warn("name not served on NATS: a subject token takes only letters, digits, - and _", "name", name)
			}
			continue
		}
		s, err := n.addService(name)
		if err != nil {
			n.log.Error("serving name on NATS", "name", name, "error", err)
			continue
		}
		n.services[name] = s
	}
	for name, s := range n.services {
		if !want[name] {
			if err := s.svc.Stop(); err != nil {
				n.log.Warn("stopping NATS service", "name", name, "error", err)
			}
			delete(n.services, name)
		}
	}
}

func (n *Node) addService(name string) (*service, error) {
	s := &service{name: name, errors: map[string]uint64{}}
	svc, err := micro.AddService(n.nc, micro.Config{
		Name:        name,
		Version:     n.version,
		Description: fmt.Sprintf("relayd: messages to %q, subject %s.%s.TOPIC", name, SubjectPrefix, name),
		Metadata:    map[string]string{"node": n.opts.Node, "durable": fmt.Sprint(n.opts.Durable)},
		QueueGroup:  QueueGroup,
		StatsHandler: func(*micro.Endpoint) any {
			return n.endpointData(s)
		},
	})
	if err != nil {
		return nil, err
	}
	s.svc = svc
	err = svc.AddEndpoint("messages", micro.HandlerFunc(func(req micro.Request) { n.handleCore(s, req) }),
		micro.WithEndpointSubject(SubjectPrefix+"."+name+".*"),
		micro.WithEndpointQueueGroup(QueueGroup),
		micro.WithEndpointPendingLimits(n.opts.PendingLimit, 64<<20))
	if err != nil {
		svc.Stop()
		return nil, err
	}
	return s, nil
}

func (n *Node) endpointData(s *service) EndpointData {
	s.mu.Lock()
	d := EndpointData{Node: n.opts.Node, Durable: n.opts.Durable, ErrorsByCode: maps.Clone(s.errors), LastError: s.last}
	for _, c := range s.errors {
		d.Errors += c
	}
	total := s.total
	s.mu.Unlock()
	d.Answered = s.answered.Load()
	d.InFlight = s.inFlight.Load()
	if d.Answered > 0 {
		d.AverageAnswerTime = total / time.Duration(d.Answered)
	}
	d.Status = n.status(s.name)
	return d
}

// status asks name's relay for its status through its inbox, as a client would, so that it is
// read by the relay's own loop.
func (n *Node) status(name string) *ipc.Status {
	ch := make(chan ipc.Reply, 1)
	n.deliver(ipc.Request{To: name, Topic: "status"}, "nats discovery", func(r ipc.Reply) { ch <- r })
	select {
	case r := <-ch:
		var st ipc.Status
		if r.Error == nil && json.Unmarshal(r.Data, &st) == nil {
			return &st
		}
	case <-time.After(2 * time.Second):
	}
	return nil
}

// count records an answer of s to a request on topic.
func (n *Node) count(s *service, topic string, r ipc.Reply, took time.Duration) {
	if o := n.opts.Observer; o != nil {
		code := ""
		if r.Error != nil {
			code = r.Error.Code
		}
		o.Answered(s.name, topic, code, took)
	}
	s.inFlight.Add(-1)
	s.answered.Add(1)
	s.mu.Lock()
	s.total += took
	if r.Error != nil {
		s.errors[r.Error.Code]++
		s.last = r.Error.Code + ": " + r.Error.Message
	}
	s.mu.Unlock()
}

// request turns a NATS payload into a relay request: the payload is the message's data, a JSON
// value, or nothing.
func request(name, topic string, data []byte) (ipc.Request, *ipc.Error) {
	req := ipc.Request{To: name, Topic: topic}
	if len(strings.TrimSpace(string(data))) == 0 {
		return req, nil
	}
	if !json.Valid(data) {
		return req, ipc.Errorf(ipc.CodeBadRequest, "the payload must be the message's data as one JSON value, such as \"hello\"")
	}
	req.Data = json.RawMessage(data)
	return req, nil
}

// frame encodes an answer as it goes on NATS: the socket's frame without the id, the worker
// naming this node.
func (n *Node) frame(r ipc.Reply) []byte {
	r.ID = nil
	if r.Worker != nil {
		w := *r.Worker
		w.Node = n.opts.Node
		r.Worker = &w
	}
	b, err := ipc.AppendFrame(nil, r)
	if err != nil {
		b, _ = ipc.AppendFrame(nil, ipc.ErrorReply(nil, ipc.Errorf(ipc.CodeInternal, "encoding answer: %v", err)))
	}
	return b[:len(b)-1]
}

// handleCore takes one core request. micro calls it for one request at a time per
// subscription, so it only hands the message to the relay; the relay answers it from its own
// loop, and a node serves as many messages at once as its relay allows.
func (n *Node) handleCore(s *service, req micro.Request) {
	accepted := time.Now()
	s.inFlight.Add(1)
	topic := strings.TrimPrefix(req.Subject(), SubjectPrefix+"."+s.name+".")
	answer := func(r ipc.Reply) {
		n.count(s, topic, r, time.Since(accepted))
		hdr := micro.Headers{HeaderNode: []string{n.opts.Node}}
		body := n.frame(r)
		var err error
		if r.Error != nil {
			desc := r.Error.Message
			if desc == "" {
				desc = r.Error.Code
			}
			err = req.Error(r.Error.Code, desc, body, micro.WithHeaders(hdr))
		} else {
			err = req.Respond(body, micro.WithHeaders(hdr))
		}
		if err != nil {
			n.log.Debug("answer not sent", "subject", req.Subject(), "error", err)
		}
	}
	r, perr := request(s.name, topic, req.Data())
	if perr != nil {
		answer(ipc.ErrorReply(nil, perr))
		return
	}
	n.deliver(r, "nats", answer)
}

// deliver hands a request to its relay with answer as its reply, or answers it at once when
// the name is gone or the node is stopping.
func (n *Node) deliver(r ipc.Request, sender string, answer func(ipc.Reply)) {
	n.gate.RLock()
	defer n.gate.RUnlock()
	if n.stopped {
		answer(ipc.ErrorReply(nil, ipc.Errorf(ipc.CodeShuttingDown, "relay is shutting down")))
		return
	}
	inbox, ok := n.opts.Lookup(r.To)
	if !ok {
		answer(ipc.ErrorReply(nil, ipc.Errorf(ipc.CodeUnknownName, "no process is registered as %q", r.To)))
		return
	}
	inbox <- relay.NewMessage(r, sender, answer)
}

// StopTaking stops taking messages from NATS: the names leave discovery, their subscriptions
// and the durable pull end. Messages already handed to a relay are still answered. It returns
// once no message can reach a relay's inbox from NATS any more.
func (n *Node) StopTaking() {
	n.mu.Lock()
	for name, s := range n.services {
		if err := s.svc.Stop(); err != nil {
			n.log.Warn("stopping NATS service", "name", name, "error", err)
		}
		delete(n.services, name)
	}
	n.mu.Unlock()
	if n.stopPull != nil {
		n.stopPull()
	}
	n.gate.Lock()
	n.stopped = true
	n.gate.Unlock()
}

// Close ends the node after its relays have answered everything: the in-progress acks stop,
// and the connection drains, so every answer and ack is sent before it closes.
func (n *Node) Close() error {
	n.closeOnce.Do(func() { close(n.closeCh) })
	n.StopTaking()
	n.background.Wait()
	err := n.nc.Drain()
	if err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		n.nc.Close()
	}
	select {
	case <-n.closed:
	case <-time.After(5 * time.Second):
		n.nc.Close()
		<-n.closed
	}
	return nil
}

// Conn is the node's NATS connection.
func (n *Node) Conn() *nats.Conn { return n.nc }
