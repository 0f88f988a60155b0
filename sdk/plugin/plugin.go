// Package plugin is the plugin interface of relayd's go-plugin transport: the worker protocol's
// one call as a Go interface, served by hashicorp/go-plugin over net/rpc or gRPC.
//
// A plugin author writes a Worker and calls Serve from main:
//
//	func main() { plugin.Serve(myWorker{}) }
//
// relayd runs such a program as a service with transport "netrpc" or "grpc". The gRPC service
// is sdk/plugin/pluginpb/worker.proto, so plugins in other languages can implement it too.
package plugin

import (
	"context"
	"net/rpc"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"relayd/sdk/plugin/pluginpb"
)

// The handshake between relayd and its plugins. go-plugin refuses to serve unless the magic
// cookie is in the environment, and relayd refuses a plugin of another protocol version.
const (
	ProtocolVersion  = 1
	MagicCookieKey   = "RELAYD_PLUGIN"
	MagicCookieValue = "7f3c9a2e5b1d4e08-relayd-worker"
)

// Name is the name the worker is dispensed under.
const Name = "worker"

// EnvTransport is the environment variable in which relayd names the transport the service is
// configured with, TransportGRPC or TransportNetRPC. Serve serves that one; a go-plugin plugin
// that does not use Serve must pick the same one, or relayd refuses it at the handshake.
const EnvTransport = "RELAYD_PLUGIN_TRANSPORT"

// The transports, as a service's transport key names them.
const (
	TransportGRPC   = "grpc"
	TransportNetRPC = "netrpc"
)

// Handshake is the go-plugin handshake configuration of relayd's plugins.
var Handshake = goplugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   MagicCookieKey,
	MagicCookieValue: MagicCookieValue,
}

// Worker is the plugin interface: the worker protocol's one call. Handle answers one message of
// topic with data (one JSON value) by data of its own (one JSON value), or by an error. An
// *Error reaches the client with its code; any other error reaches it as worker_error with the
// error's text. Calls come one at a time.
type Worker interface {
	Handle(ctx context.Context, topic string, data []byte) ([]byte, error)
}

// Error is a handled refusal: a Worker's answer that is an error, never retried. A Code of
// bad_request or unknown_topic reaches the client as that code; any other reaches it as
// worker_error, with Code in error.worker_code.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string {
	if e.Code == "" {
		return e.Message
	}
	return e.Code + ": " + e.Message
}

// asError returns err as an *Error, wrapping any other error as one without a code.
func asError(err error) *Error {
	if e, ok := err.(*Error); ok {
		return e
	}
	return &Error{Message: err.Error()}
}

// Plugin is the go-plugin glue of Worker, for both transports. Impl is set in the plugin only.
type Plugin struct {
	Impl Worker
}

// PluginSet returns the plugins a go-plugin client of relayd's plugins dispenses.
func PluginSet() goplugin.PluginSet { return goplugin.PluginSet{Name: &Plugin{}} }

// Server returns the net/rpc server of Impl.
func (p *Plugin) Server(*goplugin.MuxBroker) (any, error) { return &RPCServer{Impl: p.Impl}, nil }

// Client returns a Worker that calls the plugin over net/rpc.
func (p *Plugin) Client(_ *goplugin.MuxBroker, c *rpc.Client) (any, error) {
	return &RPCClient{Client: c}, nil
}

// GRPCServer registers the gRPC server of Impl.
func (p *Plugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	pluginpb.RegisterWorkerServer(s, &GRPCServer{Impl: p.Impl})
	return nil
}

// GRPCClient returns a Worker that calls the plugin over gRPC.
func (p *Plugin) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &GRPCClient{Client: pluginpb.NewWorkerClient(c)}, nil
}

var (
	_ goplugin.Plugin     = (*Plugin)(nil)
	_ goplugin.GRPCPlugin = (*Plugin)(nil)
)
