// Package upper is the go-plugin peer of relay-bench: the worker's uppercase echo served over
// hashicorp/go-plugin's gRPC transport.
package upper

import (
	"context"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"relayd/internal/casemap"
)

// Handshake is the go-plugin handshake shared by relay-bench and the plugin worker.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "RELAY_BENCH_PLUGIN",
	MagicCookieValue: "upper",
}

// Name is the name the plugin is dispensed under.
const Name = "upper"

// Upper is the plugin's interface: the worker's echo, uppercased.
type Upper interface {
	Upper(ctx context.Context, text string) (string, error)
}

// Impl is the plugin side of Upper: it sleeps Delay, then uppercases, as the worker does.
type Impl struct {
	Delay time.Duration
}

// Upper returns text uppercased after the delay.
func (u Impl) Upper(_ context.Context, text string) (string, error) {
	if u.Delay > 0 {
		time.Sleep(u.Delay)
	}
	return casemap.Upper(text), nil
}

// Plugin is the go-plugin glue for Upper over gRPC. Impl is set on the plugin side only.
type Plugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Upper
}

// GRPCServer registers the service on the plugin side.
func (p *Plugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	s.RegisterService(&serviceDesc, p.Impl)
	return nil
}

// GRPCClient returns the client side of Upper.
func (p *Plugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return client{c}, nil
}

// The service is described by hand, with the well-known StringValue message as request and
// reply, so that the bench needs no generated code: one unary method, /relaybench.Upper/Upper.
const methodUpper = "/relaybench.Upper/Upper"

var serviceDesc = grpc.ServiceDesc{
	ServiceName: "relaybench.Upper",
	HandlerType: (*Upper)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Upper", Handler: handleUpper}},
	Metadata:    "upper.proto",
}

func handleUpper(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(wrapperspb.StringValue)
	if err := dec(in); err != nil {
		return nil, err
	}
	call := func(ctx context.Context, req any) (any, error) {
		out, err := srv.(Upper).Upper(ctx, req.(*wrapperspb.StringValue).GetValue())
		if err != nil {
			return nil, err
		}
		return wrapperspb.String(out), nil
	}
	if interceptor == nil {
		return call(ctx, in)
	}
	return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: methodUpper}, call)
}

type client struct{ conn *grpc.ClientConn }

func (c client) Upper(ctx context.Context, text string) (string, error) {
	out := new(wrapperspb.StringValue)
	if err := c.conn.Invoke(ctx, methodUpper, wrapperspb.String(text), out); err != nil {
		return "", err
	}
	return out.GetValue(), nil
}
