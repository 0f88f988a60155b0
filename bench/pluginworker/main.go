// Command pluginworker is the go-plugin peer of relay-bench: the worker's uppercase echo served
// through hashicorp/go-plugin over gRPC. relay-bench starts one per message, as a naive reading
// of the design card would.
package main

import (
	"fmt"
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/spf13/pflag"

	"relayd/bench/internal/upper"
)

func main() {
	fs := pflag.NewFlagSet("pluginworker", pflag.ContinueOnError)
	delay := fs.Duration("delay", 0, "time each request takes before its reply")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == pflag.ErrHelp {
			return
		}
		fmt.Fprintf(os.Stderr, "pluginworker: %v\n", err)
		os.Exit(2)
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: upper.Handshake,
		Plugins:         plugin.PluginSet{upper.Name: &upper.Plugin{Impl: upper.Impl{Delay: *delay}}},
		GRPCServer:      plugin.DefaultGRPCServer,
		// Quiet, like the stdio worker: its log lines would otherwise be parsed by the client.
		Logger: hclog.NewNullLogger(),
	})
}
