package cluster

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/nats-io/nats.go"
)

// Subjects, headers and names of the wire contract. They are part of the product's contract:
// append only.
const (
	// SubjectPrefix starts every core request subject: relayd.NAME.TOPIC.
	SubjectPrefix = "relayd"
	// QueueGroup is the queue group every node's endpoints join, so one node answers each request.
	QueueGroup = "relayd"
	// DurablePrefix starts every durable request subject: relayd-durable.NAME.TOPIC. It differs
	// from SubjectPrefix so that the stream never captures a core request.
	DurablePrefix = "relayd-durable"
	// Stream is the JetStream work-queue stream of durable requests; Consumer is the one durable
	// pull consumer every node shares.
	Stream   = "RELAYD"
	Consumer = "relayd"

	// HeaderReply names the subject a durable request's answer is published to.
	HeaderReply = "Relayd-Reply"
	// HeaderMsgID carries a durable request's id on its answer; the request carries it in
	// JetStream's Nats-Msg-Id, which also suppresses duplicate publishes.
	HeaderMsgID = "Relayd-Msg-Id"
	// HeaderNode names the node that answered.
	HeaderNode = "Relayd-Node"
	// HeaderError and HeaderErrorCode are micro's error headers; the code is the contract's code.
	HeaderError     = "Nats-Service-Error"
	HeaderErrorCode = "Nats-Service-Error-Code"
)

// ConnOptions say how to reach NATS.
type ConnOptions struct {
	// URL is one NATS URL or several separated by commas.
	URL string
	// Creds is a credentials file (JWT and NKey seed), as nats-server's operator mode issues.
	Creds string
	// TLSCert and TLSKey are a client certificate and its key; TLSCA verifies the servers.
	TLSCert, TLSKey, TLSCA string
	// Name is the connection's name, shown by the server's monitoring.
	Name string
}

// connect opens a connection that reconnects for ever: a NATS server restart or a network
// blip must not end a node, and the client library buffers what is published meanwhile.
func connect(o ConnOptions, log hclog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	if strings.TrimSpace(o.URL) == "" {
		return nil, errors.New("no NATS URL")
	}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.Timeout(5 * time.Second),
	}
	if log != nil {
		opts = append(opts,
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err != nil {
					log.Warn("nats: disconnected; reconnecting", "error", err)
				}
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) {
				log.Info("nats: reconnected", "server", nc.ConnectedUrlRedacted())
			}),
			nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
				subject := ""
				if sub != nil {
					subject = sub.Subject
				}
				if errors.Is(err, nats.ErrSlowConsumer) {
					log.Warn("nats: slow consumer; messages were dropped and their senders time out", "subject", subject)
					return
				}
				log.Warn("nats: asynchronous error", "subject", subject, "error", err)
			}),
		)
	}
	if o.Creds != "" {
		opts = append(opts, nats.UserCredentials(o.Creds))
	}
	if o.TLSCert != "" || o.TLSKey != "" {
		if o.TLSCert == "" || o.TLSKey == "" {
			return nil, errors.New("a TLS client certificate needs both its certificate and its key")
		}
		opts = append(opts, nats.ClientCert(o.TLSCert, o.TLSKey))
	}
	if o.TLSCA != "" {
		opts = append(opts, nats.RootCAs(o.TLSCA))
	}
	opts = append(opts, extra...)
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", o.URL, err)
	}
	return nc, nil
}

// validToken reports whether s can be one token of a subject and a micro service name: letters,
// digits, dashes and underscores.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}
