package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"relayd/ipc"
)

// heldMsg is a durable request this node took from the stream and has not yet acked or handed
// back; the in-progress ticker keeps JetStream from redelivering it meanwhile.
type heldMsg struct {
	msg jetstream.Msg
}

// startDurable makes sure the stream and the shared consumer exist and starts pulling.
func (n *Node) startDurable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	js, err := jetstream.New(n.nc)
	if err != nil {
		return fmt.Errorf("opening JetStream: %w", err)
	}
	if _, err := js.Stream(ctx, Stream); errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, StreamConfig(n.opts.Replicas))
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			err = nil // Another node created it a moment ago.
		}
		if err != nil {
			return fmt.Errorf("creating stream %s: %w", Stream, err)
		}
		n.log.Info("created the durable request stream", "stream", Stream, "replicas", n.opts.Replicas)
	} else if err != nil {
		return fmt.Errorf("looking up stream %s (is JetStream enabled?): %w", Stream, err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, Stream, jetstream.ConsumerConfig{
		Durable:       Consumer,
		Description:   "relayd nodes: durable requests, acked once answered",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       n.opts.AckWait,
		MaxDeliver:    n.opts.MaxDeliver,
		MaxAckPending: 65536,
		MaxWaiting:    4096,
	})
	if err != nil {
		return fmt.Errorf("creating consumer %s on stream %s: %w", Consumer, Stream, err)
	}
	n.cons = cons
	n.slots = make(chan struct{}, n.opts.Slots)
	pullCtx, stop := context.WithCancel(context.Background())
	n.stopPull = stop
	n.background.Add(2)
	go func() { defer n.background.Done(); n.pull(pullCtx) }()
	go func() { defer n.background.Done(); n.keepAlive() }()
	return nil
}

// StreamConfig is the work-queue stream of durable requests, as a node creates it when it is
// missing. An operator may create it beforehand with other limits or replicas.
func StreamConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        Stream,
		Description: "relayd durable requests: subject " + DurablePrefix + ".NAME.TOPIC",
		Subjects:    []string{DurablePrefix + ".>"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    max(1, replicas),
		MaxAge:      streamMaxAge,
		Duplicates:  dupWindow,
	}
}

// pull takes durable requests while this node has free slots, so a busy node leaves messages
// in the stream for the others instead of queueing them.
func (n *Node) pull(ctx context.Context) {
	var failing time.Time
	for ctx.Err() == nil {
		select {
		case n.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		free := 1
		for free < cap(n.slots) {
			select {
			case n.slots <- struct{}{}:
				free++
				continue
			default:
			}
			break
		}
		fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		batch, err := n.cons.Fetch(free, jetstream.FetchContext(fctx))
		got := 0
		if err == nil {
			for m := range batch.Messages() {
				got++
				n.handleDurable(m)
			}
			err = batch.Error()
		}
		cancel()
		for range free - got {
			<-n.slots
		}
		if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			if failing.IsZero() || time.Since(failing) > 30*time.Second {
				n.log.Warn("nats: pulling durable requests", "error", err)
				failing = time.Now()
			}
			select {
			case <-time.After(250 * time.Millisecond):
			case <-ctx.Done():
			}
		} else if err == nil {
			failing = time.Time{}
		}
	}
}

// keepAlive sends in-progress acks for every held request three times per ack wait, so that
// JetStream redelivers only a dead node's requests. It runs until Close: requests held when the
// pull stopped are still being finished.
func (n *Node) keepAlive() {
	t := time.NewTicker(n.opts.AckWait / 3)
	defer t.Stop()
	for {
		select {
		case <-n.closeCh:
			return
		case <-t.C:
		}
		n.progress()
	}
}

func (n *Node) progress() {
	n.heldMu.Lock()
	held := make([]*heldMsg, 0, len(n.held))
	for h := range n.held {
		held = append(held, h)
	}
	n.heldMu.Unlock()
	for _, h := range held {
		h.msg.InProgress()
	}
}

func (n *Node) hold(h *heldMsg) {
	n.heldMu.Lock()
	n.held[h] = struct{}{}
	n.heldMu.Unlock()
}

func (n *Node) release(h *heldMsg) {
	n.heldMu.Lock()
	delete(n.held, h)
	n.heldMu.Unlock()
	<-n.slots
}

// handleDurable takes one durable request, which holds one slot until it is acked or handed back.
func (n *Node) handleDurable(m jetstream.Msg) {
	h := &heldMsg{msg: m}
	n.hold(h)
	accepted := time.Now()
	reply := m.Headers().Get(HeaderReply)
	id := m.Headers().Get(nats.MsgIdHdr)
	name, topic, ok := parseDurable(m.Subject())
	if !ok || reply == "" {
		n.log.Warn("dropping a durable request without a name, topic or reply subject", "subject", m.Subject())
		m.Term()
		n.release(h)
		return
	}
	if meta, err := m.Metadata(); err == nil && meta.NumDelivered > 1 {
		// Another node took it before and neither answered nor handed it back: it died, or
		// lost NATS for longer than the ack wait.
		n.log.Info("taking a redelivered durable request", "id", id, "delivery", meta.NumDelivered)
	}
	n.mu.Lock()
	s := n.services[name]
	n.mu.Unlock()
	if s != nil {
		s.inFlight.Add(1)
	}
	answer := func(r ipc.Reply) {
		if r.Error != nil && (r.Error.Code == ipc.CodeShuttingDown || r.Error.Code == ipc.CodeBusy) {
			// Not this node's to answer: hand it back for another node, at once when stopping.
			delay := time.Duration(0)
			if r.Error.Code == ipc.CodeBusy {
				delay = 100 * time.Millisecond
			}
			if s != nil {
				s.inFlight.Add(-1)
			}
			n.log.Debug("handing a durable request back", "id", id, "reason", r.Error.Code)
			m.NakWithDelay(delay)
			n.release(h)
			return
		}
		if s != nil {
			n.count(s, topic, r, time.Since(accepted))
		}
		out := nats.NewMsg(reply)
		out.Data = n.frame(r)
		out.Header.Set(HeaderMsgID, id)
		out.Header.Set(HeaderNode, n.opts.Node)
		if r.Error != nil {
			out.Header.Set(HeaderError, r.Error.Message)
			out.Header.Set(HeaderErrorCode, r.Error.Code)
		}
		// The answer goes out before the ack on the same connection, so the server sees the
		// answer first: a node that dies in between leaves a duplicate, never a loss.
		if err := n.nc.PublishMsg(out); err != nil {
			n.log.Warn("durable answer not sent; leaving the request for redelivery", "id", id, "error", err)
			n.release(h)
			return
		}
		m.Ack()
		n.release(h)
	}
	r, perr := request(name, topic, m.Data())
	if perr != nil {
		answer(ipc.ErrorReply(nil, perr))
		return
	}
	if id != "" {
		r.ID, _ = json.Marshal(id)
	}
	n.deliver(r, "nats-durable", answer)
}

// parseDurable splits relayd-durable.NAME.TOPIC.
func parseDurable(subject string) (name, topic string, ok bool) {
	rest, ok := strings.CutPrefix(subject, DurablePrefix+".")
	if !ok {
		return "", "", false
	}
	name, topic, ok = strings.Cut(rest, ".")
	return name, topic, ok && name != "" && topic != "" && !strings.Contains(topic, ".")
}
