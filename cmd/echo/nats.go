package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"relayd/cluster"
	"relayd/ipc"
)

// conn is echo's connection to relayd: its Unix socket (ipc.Client) or NATS (cluster.Client),
// which take the same calls.
type conn interface {
	Send(to, topic string, data any) (*ipc.Call, error)
	Wait(ctx context.Context, call *ipc.Call) (ipc.Answer, error)
	CloseWrite() error
	Close() error
	Done() <-chan struct{}
}

// natsOptions say how to reach relayd nodes on NATS instead of the socket.
type natsOptions struct {
	url, creds, tlsCert, tlsKey, tlsCA string
	durable                            bool
}

// durableTimeout is how long one-shot and pipe mode wait for a durable request's answer by
// default: room for a redelivery after a node's crash.
const durableTimeout = 30 * time.Second

// gatherWait bounds how long --stats and --status wait for every node's report.
const gatherWait = 2 * time.Second

func addNATSFlags(fs *pflag.FlagSet, n *natsOptions) {
	fs.StringVar(&n.url, "nats", "", "talk to relayd nodes on NATS at this `url` (several separated by commas) instead of the socket")
	fs.BoolVar(&n.durable, "nats-durable", false, "with --nats: send durable requests, which survive a node's crash (one-shot and pipe mode then wait 30s by default)")
	fs.StringVar(&n.creds, "nats-creds", "", "NATS credentials `file`")
	fs.StringVar(&n.tlsCert, "nats-tls-cert", "", "client certificate `file` for NATS over TLS (with --nats-tls-key)")
	fs.StringVar(&n.tlsKey, "nats-tls-key", "", "key `file` of --nats-tls-cert")
	fs.StringVar(&n.tlsCA, "nats-tls-ca", "", "CA certificate `file` that verifies the NATS servers")
}

// checkNATS checks the NATS flags against the mode and sets the durable default timeout.
func checkNATS(fs *pflag.FlagSet, o *options, repl bool) error {
	n := o.nats
	switch {
	case n.url == "" && (n.durable || n.creds != "" || n.tlsCert != "" || n.tlsKey != "" || n.tlsCA != ""):
		return exitf(exitUsage, "the --nats-* flags need --nats URL")
	case n.url != "" && fs.Changed("socket"):
		return exitf(exitUsage, "--socket and --nats exclude each other")
	}
	if n.durable && !fs.Changed("timeout") && !repl && !o.stats && !o.status && !o.top {
		o.timeout = durableTimeout
	}
	return nil
}

// dialNATS connects to NATS. Its error is the exit-3 message.
func dialNATS(ctx context.Context, o options) (conn, error) {
	ctx, cancel := context.WithTimeout(ctx, max(o.timeout, 5*time.Second))
	defer cancel()
	n := o.nats
	c, err := cluster.Dial(ctx, cluster.ClientOptions{
		ConnOptions: cluster.ConnOptions{URL: n.url, Creds: n.creds, TLSCert: n.tlsCert, TLSKey: n.tlsKey, TLSCA: n.tlsCA},
		Durable:     n.durable,
	})
	if err != nil {
		return nil, exitf(exitUnavailable, "relay not available on NATS at %s: %v", n.url, err)
	}
	return c, nil
}

// nodeReport is one line of --stats or --status --json through NATS.
type nodeReport struct {
	Node string          `json:"node"`
	ID   string          `json:"id"`
	Data json.RawMessage `json:"data"`
}

// gather prints every node's stats (status false) or status for --to, as discovery's $SRV.STATS
// reports them: with --json one line per node, else a block per node.
func gather(ctx context.Context, o options, status bool, stdout io.Writer) error {
	c, err := dialNATS(ctx, o)
	if err != nil {
		return err
	}
	defer c.Close()
	nodes, err := c.(*cluster.Client).Gather(ctx, o.to, min(o.timeout, gatherWait))
	if err != nil {
		return exitf(exitUnavailable, "asking the nodes on NATS: %v", err)
	}
	if len(nodes) == 0 {
		return exitf(exitUnavailable, "no relayd node serves %q on NATS", o.to)
	}
	var b strings.Builder
	for i, n := range nodes {
		st := n.Data.Status
		if st == nil {
			st = &ipc.Status{}
		}
		var data any = st.Stats
		if status {
			data = st
		}
		raw, err := json.Marshal(data)
		if err != nil {
			return err
		}
		if o.json {
			line, _ := json.Marshal(nodeReport{Node: n.Node, ID: n.ID, Data: raw})
			fmt.Fprintf(&b, "%s\n", line)
			continue
		}
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "node %s (answered %d, errors %d, in flight %d)\n", clean(n.Node), n.Data.Answered, n.Data.Errors, n.Data.InFlight)
		if status {
			if err := writeStatus(&b, *st); err != nil {
				return err
			}
		} else if err := writeStats(&b, raw); err != nil {
			return err
		}
	}
	_, err = io.WriteString(stdout, b.String())
	return err
}

// natsStatuses is --top's poll through NATS: every node's status for --to, each shown as the
// service NAME@NODE.
func (p *poller) natsStatuses(ctx context.Context) ([]ipc.Answer, error) {
	if p.c == nil {
		c, err := dial(ctx, p.o)
		if err != nil {
			return nil, err
		}
		p.c = c
	}
	nodes, err := p.c.(*cluster.Client).Gather(ctx, p.o.to, min(p.o.timeout, gatherWait))
	switch {
	case ctx.Err() != nil:
		return nil, errInterrupted
	case err != nil:
		return nil, exitf(exitUnavailable, "asking the nodes on NATS: %v", err)
	case len(nodes) == 0:
		return nil, exitf(exitUnavailable, "no relayd node serves %q on NATS", p.o.to)
	}
	var answers []ipc.Answer
	for _, n := range nodes {
		if n.Data.Status == nil {
			continue
		}
		st := *n.Data.Status
		if st.Service == "" {
			st.Service = p.o.to
		}
		st.Service += "@" + n.Node
		data, err := json.Marshal(st)
		if err != nil {
			return nil, err
		}
		r := ipc.Reply{Topic: ipc.ResponseTopic(topicStatus), Data: data}
		raw, err := ipc.AppendFrame(nil, r)
		if err != nil {
			return nil, err
		}
		answers = append(answers, ipc.Answer{Reply: r, Raw: raw[:len(raw)-1]})
	}
	if len(answers) == 0 {
		return nil, exitf(exitUnavailable, "no node on NATS reported its status")
	}
	return answers, nil
}
