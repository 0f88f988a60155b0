package plugin

import (
	"context"

	"relayd/sdk/plugin/pluginpb"
)

// GRPCServer serves a Worker as the gRPC service relayd.plugin.v1.Worker.
type GRPCServer struct {
	pluginpb.UnimplementedWorkerServer
	Impl Worker
}

// Handle answers one call with Impl; an error of Impl is an answer, not a failed call.
func (s *GRPCServer) Handle(ctx context.Context, req *pluginpb.HandleRequest) (*pluginpb.HandleResponse, error) {
	data, err := s.Impl.Handle(ctx, req.GetTopic(), req.GetData())
	if err != nil {
		e := asError(err)
		return &pluginpb.HandleResponse{Error: &pluginpb.Error{Code: e.Code, Message: e.Message}}, nil
	}
	return &pluginpb.HandleResponse{Data: data}, nil
}

// GRPCClient is a Worker that calls a plugin over gRPC. A failed call is returned as it is; an
// answer that is an error is returned as an *Error.
type GRPCClient struct {
	Client pluginpb.WorkerClient
}

// Handle calls the plugin.
func (c *GRPCClient) Handle(ctx context.Context, topic string, data []byte) ([]byte, error) {
	resp, err := c.Client.Handle(ctx, &pluginpb.HandleRequest{Topic: topic, Data: data})
	if err != nil {
		return nil, err
	}
	if e := resp.GetError(); e != nil {
		return nil, &Error{Code: e.GetCode(), Message: e.GetMessage()}
	}
	return resp.GetData(), nil
}
