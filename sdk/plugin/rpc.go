package plugin

import (
	"context"
	"net/rpc"
)

// HandleArgs and HandleReply are the net/rpc call Plugin.Handle, gob-encoded. Err set is an
// answer that is an error.
type HandleArgs struct {
	Topic string
	Data  []byte
}

// HandleReply is the answer of Plugin.Handle.
type HandleReply struct {
	Data []byte
	Err  *Error
}

// RPCServer serves a Worker over net/rpc as the service Plugin.
type RPCServer struct {
	Impl Worker
}

// Handle answers one call with Impl; an error of Impl is an answer, not a failed call.
func (s *RPCServer) Handle(args HandleArgs, reply *HandleReply) error {
	data, err := s.Impl.Handle(context.Background(), args.Topic, args.Data)
	if err != nil {
		reply.Err = asError(err)
		return nil
	}
	reply.Data = data
	return nil
}

// RPCClient is a Worker that calls a plugin over net/rpc. A failed call is returned as it is; an
// answer that is an error is returned as an *Error.
type RPCClient struct {
	Client *rpc.Client
}

// Handle calls the plugin. Cancelling ctx abandons the call (net/rpc cannot cancel it).
func (c *RPCClient) Handle(ctx context.Context, topic string, data []byte) ([]byte, error) {
	var reply HandleReply
	call := c.Client.Go("Plugin.Handle", HandleArgs{Topic: topic, Data: data}, &reply, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if call.Error != nil {
		return nil, call.Error
	}
	if reply.Err != nil {
		return nil, reply.Err
	}
	return reply.Data, nil
}
