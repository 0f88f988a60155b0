package plugin

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/rpc"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/yamux"
	"google.golang.org/grpc/grpclog"
)

// RPCConn is a host's side of a go-plugin net/rpc connection to a plugin: go-plugin's wire
// protocol (a yamux session with a control stream, the plugin's stdout and stderr streams, and
// the dispensed plugin on a brokered stream), with yamux's complaints sent to a logger. The
// client in go-plugin builds its yamux session with the default configuration, which writes
// them to the host's standard error past any logger.
type RPCConn struct {
	session *yamux.Session
	control *rpc.Client
	worker  *rpc.Client
	std     [2]net.Conn
	copies  sync.WaitGroup
}

// NewRPCConn speaks go-plugin's net/rpc protocol on conn, dispenses the worker and returns the
// connection. Close releases it.
func NewRPCConn(conn net.Conn, logger hclog.Logger) (*RPCConn, error) {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = nil
	cfg.Logger = logger.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})
	session, err := yamux.Client(conn, cfg)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("starting yamux: %w", err)
	}
	c := &RPCConn{session: session}
	fail := func(what string, err error) (*RPCConn, error) {
		c.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	control, err := session.Open()
	if err != nil {
		return fail("opening the control stream", err)
	}
	c.control = rpc.NewClient(control)
	for i := range c.std {
		if c.std[i], err = session.Open(); err != nil {
			return fail("opening a stdio stream", err)
		}
		// What the plugin writes to its redirected stdout and stderr is not relayd's business
		// (its logs arrive on its real standard error), but the streams must be read.
		c.copies.Add(1)
		go func(s net.Conn) { defer c.copies.Done(); io.Copy(io.Discard, s) }(c.std[i])
	}
	var id uint32
	if err := c.control.Call("Dispenser.Dispense", Name, &id); err != nil {
		return fail("dispensing the worker", err)
	}
	stream, err := session.OpenStream()
	if err != nil {
		return fail("opening the worker stream", err)
	}
	// go-plugin's broker: the opener names the dispensed id, the plugin acknowledges with it.
	var ack uint32
	if err := binary.Write(stream, binary.LittleEndian, id); err != nil {
		stream.Close()
		return fail("opening the worker stream", err)
	}
	if err := binary.Read(stream, binary.LittleEndian, &ack); err != nil || ack != id {
		stream.Close()
		if err == nil {
			err = fmt.Errorf("acknowledged stream %d, want %d", ack, id)
		}
		return fail("opening the worker stream", err)
	}
	c.worker = rpc.NewClient(stream)
	return c, nil
}

// Worker returns the dispensed worker.
func (c *RPCConn) Worker() Worker { return &RPCClient{Client: c.worker} }

// Quit asks the plugin to stop serving, which ends a plugin served by go-plugin, and waits for
// its answer until ctx is done. A plugin that exits before its answer arrives has quit too.
func (c *RPCConn) Quit(ctx context.Context) error {
	var empty struct{}
	call := c.control.Go("Control.Quit", true, &empty, make(chan *rpc.Call, 1))
	var err error
	select {
	case <-call.Done:
		err = call.Error
	case <-ctx.Done():
		return ctx.Err()
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, rpc.ErrShutdown) || errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// Close closes the connection and waits for its goroutines.
func (c *RPCConn) Close() error {
	if c.worker != nil {
		c.worker.Close()
	}
	if c.control != nil {
		c.control.Close()
	}
	err := c.session.Close()
	c.copies.Wait()
	return err
}

var grpcLoggerOnce sync.Once

// SetGRPCLogger sends gRPC's own log, which goes to standard error by default, to logger: its
// errors as warnings, its warnings and information at debug level (a plugin that exits makes
// gRPC warn of connections it cannot make again, which relayd's EXIT event already explains).
// Call it before any gRPC connection is made; later calls do nothing.
func SetGRPCLogger(logger hclog.Logger) {
	grpcLoggerOnce.Do(func() {
		debug := logger.StandardWriter(&hclog.StandardLoggerOptions{ForceLevel: hclog.Debug})
		warn := logger.StandardWriter(&hclog.StandardLoggerOptions{ForceLevel: hclog.Warn})
		grpclog.SetLoggerV2(grpclog.NewLoggerV2(debug, debug, warn))
	})
}
