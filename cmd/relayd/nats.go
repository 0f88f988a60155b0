package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"relayd/cluster"
	"relayd/relay"
)

// natsConfig is cluster mode's settings; url is empty when relayd serves its socket alone.
type natsConfig struct {
	url, creds, tlsCert, tlsKey, tlsCA string
	node                               string
	durable                            bool
	ackWait                            time.Duration
	replicas                           int
	pendingLimit                       int
}

// checkNATS checks cluster mode's settings.
func checkNATS(c *natsConfig) error {
	switch {
	case c.url == "" && (c.durable || c.creds != "" || c.tlsCert != "" || c.tlsKey != "" || c.tlsCA != "" || c.node != ""):
		return fmt.Errorf("the --nats-* flags need --nats URL")
	case c.ackWait < 300*time.Millisecond:
		return fmt.Errorf("--nats-ack-wait must be at least 300ms, not %v", c.ackWait)
	case c.replicas < 1 || c.replicas > 5:
		return fmt.Errorf("--nats-replicas must be 1 to 5, not %d", c.replicas)
	case c.pendingLimit < 1:
		return fmt.Errorf("--nats-pending-limit must be positive, not %d", c.pendingLimit)
	}
	if c.node == "" {
		host, err := os.Hostname()
		if err != nil {
			host = "relayd"
		}
		c.node = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	return nil
}

// startNATS starts cluster mode when --nats is given; it returns nil otherwise.
func startNATS(ctx context.Context, cfg *config, log hclog.Logger, ss *services, observer relay.Observer) (*cluster.Node, error) {
	c := cfg.nats
	if c.url == "" {
		return nil, nil
	}
	// A node pulls as many durable requests as its services may run at once, so a busy node
	// leaves the rest in the stream for the others.
	slots, restarts := 0, 0
	for _, s := range cfg.services {
		slots += s.maxWorkers
		restarts = max(restarts, s.maxRestarts)
	}
	return cluster.Start(ctx, cluster.Options{
		ConnOptions: cluster.ConnOptions{URL: c.url, Creds: c.creds, TLSCert: c.tlsCert, TLSKey: c.tlsKey, TLSCA: c.tlsCA},
		Node:        c.node,
		Version:     version,
		Names:       ss.names.Names,
		Lookup:      ss.names.Lookup,
		Durable:     c.durable,
		AckWait:     c.ackWait,
		// Each delivery may use every retry of --max-restarts on its node; two more deliveries
		// leave room for nodes that hand a request back while they stop.
		MaxDeliver:   restarts + 3,
		Replicas:     c.replicas,
		Slots:        slots,
		PendingLimit: c.pendingLimit,
		Observer:     observer,
		Logger:       log,
	})
}
