package plugin

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
)

// NewLogger returns the logger a plugin should log with: hclog JSON lines on its standard
// error, which relayd forwards into its own log as structured fields with the plugin's pid.
// Create it before Serve: go-plugin redirects os.Stderr once it serves.
func NewLogger(name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      hclog.Info,
		JSONFormat: true,
		Output:     os.Stderr,
	})
}

// Serve serves w as relayd's worker plugin over the transport relayd names in EnvTransport
// (gRPC when it is unset), until relayd stops it. It returns when relayd closes the plugin
// (go-plugin's controller); the program should then exit 0. SIGTERM is a graceful stop too:
// the call in progress finishes and its answer is sent, then the process exits 0 — go-plugin
// alone would die of the signal, which reads as a crash.
//
// A program that is not started by relayd (no magic cookie) gets go-plugin's message that it is
// a plugin, and exits 1.
func Serve(w Worker) {
	g := &guard{impl: w}
	g.idle = sync.NewCond(&g.mu)
	var grpcServer func([]grpc.ServerOption) *grpc.Server
	if os.Getenv(EnvTransport) != TransportNetRPC {
		grpcServer = func(opts []grpc.ServerOption) *grpc.Server {
			return goplugin.DefaultGRPCServer(append(opts, grpc.StatsHandler(g)))
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	go func() {
		<-sigs
		g.stop()
		os.Exit(0)
	}()
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         goplugin.PluginSet{Name: &Plugin{Impl: g}},
		GRPCServer:      grpcServer,
		Logger:          NewLogger("plugin"),
	})
}

// guard runs one call at a time and lets a SIGTERM wait for the call in progress. Over gRPC it
// is also the server's stats handler, so that it knows when an answer has been sent, not only
// computed; over net/rpc it knows only the latter, so an answer may be lost if SIGTERM comes
// between the two (relayd sends SIGTERM during a call only when it gives up on the call).
type guard struct {
	impl     Worker
	call     sync.Mutex // held for the whole of a Handle
	mu       sync.Mutex
	idle     *sync.Cond // signalled on mu when inflight drops to zero
	inflight int        // guarded by mu; gRPC calls of Handle begun and not ended
	stopping bool       // guarded by mu
}

func (g *guard) Handle(ctx context.Context, topic string, data []byte) ([]byte, error) {
	g.mu.Lock()
	stopping := g.stopping
	g.mu.Unlock()
	if stopping {
		return nil, &Error{Code: "shutting_down", Message: "the plugin is stopping"}
	}
	g.call.Lock()
	defer g.call.Unlock()
	return g.impl.Handle(ctx, topic, data)
}

// stop returns once no call is in progress and none can start.
func (g *guard) stop() {
	g.mu.Lock()
	g.stopping = true
	g.mu.Unlock()
	g.call.Lock() // Never released: the process exits.
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.inflight > 0 {
		g.idle.Wait()
	}
}

type rpcTag struct{}

// TagRPC marks the calls of the Worker service, so that HandleRPC counts only them (go-plugin's
// own streams live as long as the connection).
func (g *guard) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if info.FullMethodName == "/relayd.plugin.v1.Worker/Handle" {
		return context.WithValue(ctx, rpcTag{}, true)
	}
	return ctx
}

// HandleRPC counts a Handle call from its beginning to the end of its answer.
func (g *guard) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if ctx.Value(rpcTag{}) == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	switch s.(type) {
	case *stats.Begin:
		g.inflight++
	case *stats.End:
		g.inflight--
		if g.inflight == 0 {
			g.idle.Broadcast()
		}
	}
}

func (g *guard) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (g *guard) HandleConn(context.Context, stats.ConnStats)                       {}
